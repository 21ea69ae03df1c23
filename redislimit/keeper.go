package redislimit

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"
)

// The keeper is one goroutine per Limiter that runs a tick every renew
// interval (or every probe interval in fallback). A tick is one script: the
// process's heartbeat (which gives the replica count), its limits (so
// disagreeing replicas show up) and the renewal of leases of calls that run
// long. In fallback a tick is the probe: when it succeeds, every lease still
// held (those taken locally included) is registered in Redis, even past the
// limit, before the Limiter goes back to Redis. The fleet then counts every
// call really in flight, and new acquires wait until the count drains.

func (l *Limiter) keep() {
	defer l.wg.Done()
	d := time.Duration(0) // first tick at once: learn the replica count
	for {
		t := l.cfg.clock.NewTimer(d)
		for fired := false; !fired; {
			select {
			case <-l.done:
				t.Stop()
				return
			case <-l.retry:
				// A fallback began: probe from now on. Unless a tick has
				// ended it already (the signal came while this goroutine
				// was about to tick): the renew interval stands, or the
				// heartbeat and leases could expire before the next tick.
				// A timer that fired meanwhile ticks at once.
				if l.inFallback() && t.Stop() {
					t = l.cfg.clock.NewTimer(l.cfg.probe)
				}
			case <-t.C():
				fired = true
			}
		}
		l.tick()
		d = l.cfg.renew
		if l.inFallback() {
			d = l.cfg.probe
		}
	}
}

func (l *Limiter) inFallback() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fallback
}

// tick runs the tick script once and applies its reply.
func (l *Limiter) tick() {
	now := l.cfg.clock.Now()
	keys := []string{l.keys.members, l.keys.limits, l.keys.grants, l.keys.done(l.proc)}
	args := []any{l.proc, l.cfg.ttl.Milliseconds(), l.memberTTL().Milliseconds()}

	l.mu.Lock()
	recovering := l.fallback
	l.forgetLocked(now)
	eps := slices.SortedFunc(maps.Values(l.eps), func(a, b *endpoint) int { return cmpString(a.id, b.id) })
	if l.cfg.health {
		args = append(args, len(eps))
		for _, ep := range eps {
			keys = append(keys, ep.health)
			args = append(args, ep.id)
		}
	} else {
		args = append(args, 0)
	}
	args = append(args, len(eps))
	for _, ep := range eps {
		args = append(args, limitMember(ep.id, int(ep.limit.Load()), l.proc))
	}
	var batch []*lease
	var renewed []*endpoint // those whose lease sets the tick renews, in order
	for _, ep := range eps {
		var ids []any
		for _, ls := range ep.held {
			// Every lease, however recent: one that a failover to a replica
			// lost (written to the old primary, not yet copied) is back
			// within a tick.
			ids = append(ids, ls.id)
			batch = append(batch, ls)
			ls.sent = true
		}
		if len(ids) > 0 {
			keys = append(keys, ep.key)
			args = append(append(args, len(ids)), ids...)
			renewed = append(renewed, ep)
		}
	}
	l.mu.Unlock()

	res, err := l.eval(l.bg, tickScript, keys, args)
	if err != nil {
		// Redis may have run it, its reply lost.
		l.mu.Lock()
		for _, ls := range batch {
			if ls.released && ls.ep.held[ls.id] == nil {
				l.readdedLocked(ls)
			}
		}
		l.mu.Unlock()
		if l.bg.Err() == nil {
			l.failed(err)
		}
		return
	}
	if l.cfg.onTick != nil {
		l.cfg.onTick(false)
		defer l.cfg.onTick(true)
	}
	reply, err := parseTick(res)
	if err != nil {
		l.failed(err)
		return
	}
	replicas, limits, missing := reply.replicas, reply.limits, reply.missing
	// Health news this process may have missed.
	l.caughtUp(reply.health)
	l.mu.Lock()
	before := l.replicas
	if reply.gone && l.ticked {
		// Redis lost this process's heartbeat: it restarted, or failed
		// over, however few round trips of ours failed meanwhile. Before
		// the grants below: they keep to the share from now on.
		l.rejoinLocked(now, before)
	}
	l.mu.Unlock()
	// Grants whose announcement this process missed (a dropped
	// subscription): taken now, once.
	for _, g := range reply.grants {
		if key, id, ok := splitGrant(g); ok {
			l.granted(key, id)
		}
	}

	var stale []removal
	var mismatches []string
	l.mu.Lock()
	l.ticked = true
	l.replicas = max(1, replicas)
	l.forgetSeenLocked(now)
	// An endpoint with more leases than its cap (leases written back after
	// an outage or a failover, lost ones re-registered) takes no handoff
	// until the count is down: each lease freed goes back to Redis.
	for i, ep := range renewed {
		if i < len(reply.counts) {
			ep.over = reply.counts[i] > ep.limit.Load()
		}
	}
	for _, ls := range batch {
		if ls.released {
			// Released while the tick ran. Handed on, or kept and taken
			// again: the same lease, now another call's. Else the tick may
			// have added it back (readdedLocked).
			cur := ls.ep.held[ls.id]
			if cur == nil {
				l.readdedLocked(ls)
				continue
			}
			ls = cur
		}
		if missing[ls.id] && ls.remote && !ls.lost {
			ls.lost = true
			l.lost.Add(1)
		}
		if ls.remote {
			l.renewals.Add(1)
		}
		ls.remote, ls.renewed = true, now
	}
	seen := limitsByEndpoint(limits)
	for _, ep := range eps {
		s := seen[ep.id]
		if len(s) < 2 {
			s = nil
		}
		if !slices.Equal(s, ep.seen) {
			ep.seen = s
			if s != nil {
				mismatches = append(mismatches, ep.name, fmt.Sprint(s))
			}
		}
	}
	// Redis answers: the leases whose deletion failed, or whose acquire's
	// reply was lost, go now, not when they expire. One failed round trip
	// does not put the Limiter in fallback, and its lease would otherwise
	// hold a slot of the fleet's, unused, for a whole TTL.
	stale = append(stale, l.pending...)
	l.pending = nil
	if recovering {
		l.fallback = false
		// The others come back at their own probes: until then their
		// shares are outside Redis (rejoinLimitsLocked). After a return
		// cut short, the count before that outage still stands.
		l.rejoinLocked(now, before)
	} else if !now.Before(l.rejoin) {
		l.rejoinReplicas = 0 // counted after the rejoin window
	}
	l.mu.Unlock()

	for i := 0; i < len(mismatches); i += 2 {
		l.mismatches.Add(1)
		l.cfg.logger.Warn("redislimit: replicas disagree on an endpoint's MaxConcurrentCalls",
			"pool", l.cfg.pool, "endpoint", mismatches[i], "limits", mismatches[i+1])
	}
	if len(stale) > 0 {
		l.removeAll(l.bg, stale)
	}
	if recovering {
		l.cfg.logger.Info("redislimit: Redis is back; caps are shared again", "pool", l.cfg.pool)
		if l.unregistered() {
			// Leases taken locally after this tick read the held ones:
			// register them now, not a renew interval later.
			l.tick()
		}
		l.kickAll()
	}
}

// readdedLocked deals with ls, in a tick's batch and released while the
// tick ran: the tick may have added it back to Redis after the release's
// script deleted it. Still being released, that round trip decides whether
// it stays (kept) or goes again (marked); else it joins the deletions that
// wait for Redis, done at once by a tick that reached it.
func (l *Limiter) readdedLocked(ls *lease) {
	if _, ok := l.releasing[ls.id]; ok {
		l.releasing[ls.id] = true
		return
	}
	l.pending = appendPending(l.pending, removal{ls.ep.key, ls.id})
}

// forgetLocked drops the endpoints this process no longer uses: no lease
// held, no call waiting for one, no Client's live endpoint (SetEndpoints
// removed it), not asked for in three ticks. Its limit is no longer
// announced and its health no longer read; a call that asks for it again
// brings it back, and so does a lease that an acquire under way since
// before takes on it (liveLocked).
func (l *Limiter) forgetLocked(now time.Time) {
	l.hmu.Lock()
	defer l.hmu.Unlock()
	for id, ep := range l.eps {
		if len(ep.held) > 0 || now.Sub(ep.used) < l.memberTTL() || l.linkedLocked(ep) || l.awaitedLocked(ep) {
			continue
		}
		delete(l.eps, id)
		delete(l.byKey, ep.key)
		delete(l.hints, ep)
	}
}

// awaitedLocked reports whether a waiting call may use ep.
func (l *Limiter) awaitedLocked(ep *endpoint) bool {
	for _, w := range l.waiters {
		if slices.Contains(w.cands, ep) {
			return true
		}
	}
	return false
}

// unregistered reports whether a held lease is not in Redis yet.
func (l *Limiter) unregistered() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ep := range l.eps {
		for _, ls := range ep.held {
			if !ls.remote {
				return true
			}
		}
	}
	return false
}

// memberTTL is how long a heartbeat counts: three ticks.
func (l *Limiter) memberTTL() time.Duration { return 3 * l.cfg.renew }

// doneTTL is how long Redis keeps a mark of a release or health report in
// this process's done set, and its goodbye after Close. go-redis sends a
// command again only within the round trip's deadline, WithTimeout after
// the first send (it sleeps its backoff, and takes a connection, under the
// context): a copy that Redis runs within a TTL of its sending finds the
// mark of the first run. A script sent before the goodbye, and run after
// it within a TTL of its sending, finds the goodbye: Close says goodbye
// once every round trip of the Limiter's has returned, its client done
// with it.
//
// The deletion of an acquire's lease id (removeScript) leaves the same
// mark, so that a run of the acquire after the deletion takes nothing.
// The deletion is queued only once the client is done with the acquire
// (exec's failed): a client that ignores ctx deadlines may send it after
// the Limiter gave up on it, for as long as its own timeouts let a write
// under way go on, which no TTL chosen here could bound. Queued then,
// the mark comes after every copy was sent, and outlives each copy's run
// within a TTL of its sending.
func (l *Limiter) doneTTL() time.Duration { return l.cfg.ttl + l.cfg.timeout }

// tickReply is what the tick script answered.
type tickReply struct {
	replicas int
	limits   []string
	missing  map[string]bool
	grants   []string
	health   []any
	counts   []int64 // leases in each lease set renewed, in the order sent
	gone     bool    // the process's heartbeat was not in Redis (expired or lost)
}

func parseTick(res any) (tickReply, error) {
	var t tickReply
	r, ok := res.([]any)
	if !ok || len(r) != 7 {
		return t, fmt.Errorf("redislimit: tick script: unexpected reply %v", res)
	}
	n, ok1 := r[0].(int64)
	ls, ok2 := r[1].([]any)
	ms, ok3 := r[2].([]any)
	gs, ok4 := r[3].([]any)
	health, ok5 := r[4].([]any)
	cs, ok6 := r[5].([]any)
	gone, ok7 := r[6].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 || !ok7 {
		return t, fmt.Errorf("redislimit: tick script: unexpected reply %v", res)
	}
	t.replicas, t.health, t.gone = int(n), health, gone == 1
	for _, v := range cs {
		c, _ := v.(int64)
		t.counts = append(t.counts, c)
	}
	var grants []string
	for _, v := range gs {
		if s, ok := v.(string); ok {
			grants = append(grants, s)
		}
	}
	t.grants = grants
	for _, v := range ls {
		if s, ok := v.(string); ok {
			t.limits = append(t.limits, s)
		}
	}
	t.missing = make(map[string]bool, len(ms))
	for _, v := range ms {
		if s, ok := v.(string); ok {
			t.missing[s] = true
		}
	}
	return t, nil
}

// limitsByEndpoint groups the announced limits: endpoint id -> sorted
// distinct limits.
func limitsByEndpoint(members []string) map[string][]int {
	out := make(map[string][]int)
	for _, m := range members {
		id, n, ok := parseLimitMember(m)
		if ok && !slices.Contains(out[id], n) {
			out[id] = append(out[id], n)
		}
	}
	for _, s := range out {
		slices.Sort(s)
	}
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// The Limiter gives up on Redis when at least tripAfter round trips in a
// row have failed over at least tripAfter-1 timeouts, each within two
// timeouts and the longest backoff of the one before. One slow reply on a
// loaded host is not an outage, nor is a burst of calls that all time out at
// once while their connections are dialled, nor an old failure followed by a
// blip: a failure tells nothing of Redis after it, and one further apart
// than the waiting calls' retries (a backoff and a round trip, which may
// overrun its timeout a little) starts the count again. A real outage meets
// the bounds within about three timeouts.
const tripAfter = 3

// failed counts a failed Redis round trip and reports whether the Limiter
// is in fallback now.
func (l *Limiter) failed(err error) bool {
	now := l.cfg.clock.Now().UnixNano()
	if last := l.lastFailure.Swap(now); last != 0 && time.Duration(now-last) > 2*l.cfg.timeout+l.cfg.maxBackoff {
		// Redis may have answered between the two: count from this one.
		// (failingSince stays set: a round trip failed since the last
		// success, which the next success must know, exec.)
		l.streak.Store(0)
		l.failingSince.Store(now)
	}
	l.failingSince.CompareAndSwap(0, now)
	since := l.failingSince.Load()
	if l.streak.Add(1) >= tripAfter && since != 0 && time.Duration(now-since) >= (tripAfter-1)*l.cfg.timeout {
		l.trip(err)
	}
	return l.inFallback()
}

// trip switches to the failure mode.
func (l *Limiter) trip(err error) {
	l.mu.Lock()
	if l.fallback || l.closed {
		l.mu.Unlock()
		return
	}
	l.fallback = true
	replicas := l.replicas
	l.mu.Unlock()
	l.fallbacks.Add(1)
	l.cfg.logger.Warn("redislimit: Redis unavailable; caps fall back to the failure mode",
		"pool", l.cfg.pool, "mode", l.cfg.mode.String(), "replicas", replicas, "err", err)
	select {
	case l.retry <- struct{}{}:
	default:
	}
	l.kickAll()
}

// removeAll deletes leases from Redis in one round trip (removeScript),
// best effort: what fails is tried again at the next tick that reaches
// Redis, or expires within the TTL. Each lease id stays marked for a TTL
// plus the timeout, so that an acquire that took none yet and that Redis
// runs after this takes none then either.
func (l *Limiter) removeAll(ctx context.Context, rs []removal) {
	keys := make([]string, 1, 1+len(rs))
	keys[0] = l.keys.done(l.proc)
	args := make([]any, 1, 1+len(rs))
	args[0] = l.doneTTL().Milliseconds()
	for _, r := range rs {
		keys = append(keys, r.key)
		args = append(args, r.id)
	}
	_, err := l.eval(ctx, removeScript, keys, args)
	if err != nil {
		// Try again once Redis is back, or at Close.
		l.mu.Lock()
		for _, r := range rs {
			l.pending = appendPending(l.pending, r)
		}
		l.mu.Unlock()
	}
}
