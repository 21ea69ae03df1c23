package redislimit

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/amlpool/amlpool"
)

// Health across replicas. A Limiter is an amlpool.HealthSharer: each Client
// that uses it reports what its attempts show of an endpoint, and the
// Limiter passes it on, through the same Redis, to every other replica's
// Client, which applies it as if seen itself.
//
// State (a cool-down, an ejection, a readmission) is written to one hash per
// endpoint and announced on the health channel in the same script, so a
// replica hears of it within one notification; its tick reads the hashes of
// its endpoints too, so one that missed the notification (a dropped
// subscription) catches up within one tick. Failures and recoveries, which
// only count towards an ejection, are announced and not stored.
//
// An ejection has an owner: the replica whose report wrote it. Only the
// owner probes the endpoint when the ejection ends; the others keep it out
// for a probe grace longer, and the owner's readmission (or its next, longer
// ejection) reaches them before that. If it never comes (the owner died),
// each probes for itself after the grace. Of two replicas that eject at
// once, the first write wins and the second hears that it does not own the
// ejection.
//
// Versions: each write of an endpoint's hash takes a version above the last
// one and above the Redis clock in µs, and a replica applies only news
// newer than what it applied, so a tick's older read never undoes a newer
// notification.

// health kinds on the wire.
const (
	wireFailed     = "f"
	wireRecovered  = "r"
	wireCoolDown   = "c"
	wireEjected    = "e"
	wireReadmitted = "a"
)

// healthLink is one Client's connection to the Limiter's shared health.
type healthLink struct {
	l     *Limiter
	apply func(amlpool.HealthEvent)

	// mu is held while apply runs, so that once Close has set closed no
	// apply runs or starts.
	mu     sync.Mutex
	closed bool
	eps    []amlpool.LimitedEndpoint // the Client's live endpoints; guarded by Limiter.hmu
}

// healthReport is a report waiting to be written, and the link it came from.
type healthReport struct {
	from *healthLink
	ev   amlpool.HealthEvent
}

var _ amlpool.HealthSharer = (*Limiter)(nil)

// ShareHealth implements amlpool.HealthSharer. Without sharing (WithoutHealth)
// the link does nothing.
func (l *Limiter) ShareHealth(endpoints []amlpool.LimitedEndpoint, apply func(amlpool.HealthEvent)) amlpool.HealthLink {
	hl := &healthLink{l: l, apply: apply}
	if !l.cfg.health {
		hl.closed = true
		return hl
	}
	hl.SetEndpoints(endpoints)
	l.hmu.Lock()
	l.links = append(l.links, hl)
	l.hmu.Unlock()
	return hl
}

// Report implements amlpool.HealthLink: it queues ev for the writer and
// returns at once. Failures in a row on one endpoint are counted together;
// past maxQueued reports waiting, new ones are dropped.
func (hl *healthLink) Report(ev amlpool.HealthEvent) {
	l := hl.l
	if !l.cfg.health {
		return
	}
	l.hmu.Lock()
	q := l.hq
	switch n := len(q); {
	case n > 0 && ev.Kind == amlpool.HealthFailed && q[n-1].ev.Kind == amlpool.HealthFailed &&
		q[n-1].ev.ID == ev.ID && q[n-1].from == hl:
		q[n-1].ev.Failures += ev.Failures
	case n < maxQueued:
		l.hq = append(q, healthReport{hl, ev})
	}
	l.hmu.Unlock()
	select {
	case l.hwake <- struct{}{}:
	default:
	}
}

// maxQueued bounds the reports waiting to be written.
const maxQueued = 1024

// SetEndpoints implements amlpool.HealthLink.
func (hl *healthLink) SetEndpoints(eps []amlpool.LimitedEndpoint) {
	l := hl.l
	if !l.cfg.health {
		return
	}
	l.mu.Lock()
	l.endpointsLocked(eps) // known, so that the tick reads their health
	l.mu.Unlock()
	l.hmu.Lock()
	hl.eps = append([]amlpool.LimitedEndpoint(nil), eps...)
	l.hmu.Unlock()
}

// Close implements amlpool.HealthLink.
func (hl *healthLink) Close() {
	l := hl.l
	l.hmu.Lock()
	for i, o := range l.links {
		if o == hl {
			l.links = append(l.links[:i:i], l.links[i+1:]...)
			break
		}
	}
	l.hmu.Unlock()
	hl.mu.Lock()
	hl.closed = true
	hl.mu.Unlock()
}

// deliver gives ev to hl's Client, unless hl is closed.
func (hl *healthLink) deliver(ev amlpool.HealthEvent) {
	hl.mu.Lock()
	defer hl.mu.Unlock()
	if !hl.closed {
		hl.apply(ev)
	}
}

// broadcast gives ev to every link but skip.
func (l *Limiter) broadcast(ev amlpool.HealthEvent, skip *healthLink) {
	l.hmu.Lock()
	links := append([]*healthLink(nil), l.links...)
	l.hmu.Unlock()
	for _, hl := range links {
		if hl != skip {
			hl.deliver(ev)
		}
	}
}

// probeGrace is how much longer than its owner a replica keeps an ejected
// endpoint out, waiting for the owner's probe: three ticks, the time after
// which a replica that stopped is no longer counted.
func (l *Limiter) probeGrace() time.Duration { return l.memberTTL() }

// writeHealth is the goroutine that writes the reports of this process's
// Clients to Redis, one round trip each, and passes each on to the other
// Clients of this process at once.
func (l *Limiter) writeHealth() {
	defer l.wg.Done()
	for {
		select {
		case <-l.done:
			return
		case <-l.hwake:
		}
		l.hmu.Lock()
		q := l.hq
		l.hq = nil
		l.hmu.Unlock()
		for _, r := range q {
			if l.bg.Err() != nil {
				return
			}
			l.broadcast(r.ev, r.from) // same process: no owner question
			if !l.inFallback() {
				l.writeReport(r)
			}
		}
	}
}

// writeReport writes one report to Redis and announces it.
func (l *Limiter) writeReport(r healthReport) {
	ev := r.ev
	l.mu.Lock()
	ep := l.eps[ev.ID]
	l.mu.Unlock()
	if ep == nil {
		return // not an endpoint this process shares
	}
	var kind string
	var ms int64
	switch ev.Kind {
	case amlpool.HealthFailed:
		kind, ms = wireFailed, int64(ev.Failures)
	case amlpool.HealthRecovered:
		kind = wireRecovered
	case amlpool.HealthCoolDown:
		kind, ms = wireCoolDown, max(ev.For.Milliseconds(), 1)
	case amlpool.HealthEjected:
		kind, ms = wireEjected, max(ev.For.Milliseconds(), 1)
	case amlpool.HealthReadmitted:
		kind = wireReadmitted
	default:
		return
	}
	fault := 0
	if ev.Fault {
		fault = 1
	}
	rid := l.proc + "." + strconv.FormatUint(l.seq.Add(1), 36)
	res, err := l.eval(l.bg, healthScript, []string{ep.health, l.keys.done(l.proc)},
		[]any{l.proc, kind, ep.id, ms, fault, l.keys.health, l.memberTTL().Milliseconds(), rid,
			l.doneTTL().Milliseconds()})
	if err != nil {
		if l.bg.Err() == nil {
			l.failed(err)
		}
		return
	}
	v, rest, owner, ok := parseHealthReply(res)
	if !ok {
		l.failed(fmt.Errorf("redislimit: health script: unexpected reply %v", res))
		return
	}
	if v > 0 {
		l.mu.Lock()
		ep.applied = max(ep.applied, v)
		l.mu.Unlock()
	}
	if kind == wireEjected && owner != l.proc {
		// Another replica ejected it first and probes it: wait for its
		// probe, as the other replicas do.
		l.broadcast(amlpool.HealthEvent{ID: ev.ID, Kind: amlpool.HealthEjected,
			For: time.Duration(rest)*time.Millisecond + l.probeGrace(), Fault: ev.Fault}, nil)
	}
}

func parseHealthReply(res any) (v, rest int64, owner string, ok bool) {
	r, isList := res.([]any)
	if !isList || len(r) != 3 {
		return 0, 0, "", false
	}
	v, ok1 := r[0].(int64)
	rest, ok2 := r[1].(int64)
	owner, ok3 := r[2].(string)
	return v, rest, owner, ok1 && ok2 && ok3
}

// heard applies one announcement from the health channel:
// "<process>|<kind>|<endpoint id>|<n>|<fault>|<version>".
func (l *Limiter) heard(payload string) {
	f := strings.Split(payload, "|")
	if len(f) != 6 || f[0] == l.proc {
		return // malformed, or our own
	}
	n, err1 := strconv.ParseInt(f[3], 10, 64)
	v, err2 := strconv.ParseInt(f[5], 10, 64)
	if err1 != nil || err2 != nil {
		return
	}
	ev := amlpool.HealthEvent{ID: f[2], Fault: f[4] == "1"}
	switch f[1] {
	case wireFailed:
		ev.Kind, ev.Failures = amlpool.HealthFailed, int(n)
	case wireRecovered:
		ev.Kind = amlpool.HealthRecovered
	case wireCoolDown:
		ev.Kind, ev.For = amlpool.HealthCoolDown, time.Duration(n)*time.Millisecond
	case wireEjected:
		ev.Kind, ev.For = amlpool.HealthEjected, time.Duration(n)*time.Millisecond+l.probeGrace()
	case wireReadmitted:
		ev.Kind = amlpool.HealthReadmitted
	default:
		return
	}
	if v > 0 && !l.newer(ev.ID, v) {
		return
	}
	l.broadcast(ev, nil)
}

// newer reports whether version v of endpoint id's health is newer than
// what was applied, and if so records it as applied.
func (l *Limiter) newer(id string, v int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ep := l.eps[id]
	if ep == nil || v <= ep.applied {
		return false
	}
	ep.applied = v
	return true
}

// caughtUp applies what the tick read of the endpoints' health: any state
// newer than what was applied, as the announcement would have brought it.
// Each record is {endpoint id, version, cool-down ms left, ejection ms left,
// fault, owner, last kind}.
func (l *Limiter) caughtUp(records []any) {
	for _, rec := range records {
		r, ok := rec.([]any)
		if !ok || len(r) != 7 {
			continue
		}
		id, _ := r[0].(string)
		v, _ := r[1].(int64)
		cool, _ := r[2].(int64)
		ej, _ := r[3].(int64)
		fault, _ := r[4].(int64)
		owner, _ := r[5].(string)
		last, _ := r[6].(string)
		if v <= 0 || !l.newer(id, v) {
			continue
		}
		if cool > 0 {
			l.broadcast(amlpool.HealthEvent{ID: id, Kind: amlpool.HealthCoolDown, For: time.Duration(cool) * time.Millisecond}, nil)
		}
		switch {
		case ej > 0 && owner != l.proc:
			l.broadcast(amlpool.HealthEvent{ID: id, Kind: amlpool.HealthEjected,
				For: time.Duration(ej)*time.Millisecond + l.probeGrace(), Fault: fault == 1}, nil)
		case ej == 0 && last == wireReadmitted:
			l.broadcast(amlpool.HealthEvent{ID: id, Kind: amlpool.HealthReadmitted}, nil)
		}
	}
}

// linkedLocked reports whether a Client's live endpoints include ep. The
// caller holds hmu.
func (l *Limiter) linkedLocked(ep *endpoint) bool {
	for _, hl := range l.links {
		for _, e := range hl.eps {
			if e.ID == ep.id {
				return true
			}
		}
	}
	return false
}
