package pool

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/amlpool/amlpool/internal/clock"
)

// The errors Acquire returns; the root package exports them as its own.
var (
	ErrNoCapacity = errors.New("amlpool: no endpoint has a free slot")
	ErrClosed     = errors.New("amlpool: client closed")
)

// Config is a Pool's settings, fixed at New.
type Config struct {
	Clock clock.Clock
	Rand  func() uint64 // safe for concurrent use
	// Balance says how a pick chooses among the Set's endpoints; for
	// Custom, Pick does.
	Balance Balance
	Pick    Picker
	// EjectAfter is how many failures in a row eject an endpoint; 0 turns
	// ejection off (endpoint faults then eject nothing either).
	EjectAfter int
	// EjectFor is how long a first ejection lasts; at most a day (the
	// root package checks), so that 10 × EjectFor + 20 % fits a Duration.
	EjectFor time.Duration
	// Adaptive lets each endpoint's limit move between 1 and its cap (aimd).
	Adaptive bool
	// TrackLatency keeps each endpoint's latency estimate (peakEWMA), which
	// PickLatency and a custom Picker's Set.Latency read. Without it the
	// estimate stays zero and a release does not pay for it.
	TrackLatency bool
	// MaxWaiting bounds the line: at most this many calls wait, and a call
	// that finds it full sheds one of lower priority or fails with ErrShed
	// (priority.go). 0: no bound.
	MaxWaiting int
	// Aging is how long a waiting call waits before it ranks one priority
	// higher (priority.go). 0 means DefaultAging.
	Aging time.Duration
}

// Pool is the live endpoints, those draining, and the line of calls
// waiting for a slot. It is safe for concurrent use.
type Pool struct {
	cfg   Config
	set   atomic.Pointer[Set]
	epoch time.Time     // pool time zero, for Nanotime
	done  chan struct{} // closed by Close
	wake  chan struct{} // tells Run that a deadline was set

	// nwait counts calls in the line or about to enter it. A release reads
	// it after freeing its slot; a caller raises it before looking for a
	// free slot under mu. So either the caller sees the free slot or the
	// releaser sees the caller (both are sequentially consistent atomics).
	nwait atomic.Int32

	// mu guards the line (its queues, the waiters' links and arrivals),
	// closed and shedding.
	mu       sync.Mutex
	queues   [numPriorities]queue // a FIFO per priority, lowest first
	arrivals uint64               // calls that joined the line: the order of ties
	closed   bool
	shedding bool // calls were shed since the line was last empty
	// queued, when not nil, is closed once a call is left waiting in the
	// line (Queued).
	queued chan struct{}

	shed [numPriorities]atomic.Int64 // calls shed, by priority

	// smu guards what spans endpoints or fields: every endpoint's health
	// record and phase changes with the current Set's counts, Set swaps,
	// and draining. When both are held, mu is taken first.
	smu      sync.Mutex
	draining []*Endpoint // removed endpoints with calls in flight
	stamped  time.Time   // the Since of the endpoints the last Update made (stamp)
	admitted atomic.Bool // an endpoint held back was let in: Run serves the line

	// OnQueue, when set, is called each time a call joins the line (a test
	// hook).
	OnQueue func()
}

// New returns a Pool of the endpoints specs describes. The caller has
// checked the specs (names unique, caps positive). Run must be started for
// ejections and cool-downs to end.
func New(cfg Config, specs []Spec) *Pool {
	if cfg.Balance == Custom && cfg.Pick == nil {
		cfg.Balance = Random
	}
	if cfg.Aging <= 0 {
		cfg.Aging = DefaultAging
	}
	p := &Pool{cfg: cfg, epoch: cfg.Clock.Now(), done: make(chan struct{}), wake: make(chan struct{}, 1)}
	p.stamped = p.epoch.Round(0)
	eps := make([]*Endpoint, len(specs))
	for i := range specs {
		eps[i] = newEndpoint(&specs[i], p.stamped)
	}
	p.set.Store(p.newSet(eps))
	return p
}

// Set returns the live endpoints.
func (p *Pool) Set() *Set { return p.set.Load() }

// Endpoints returns the live endpoints, in order, then the draining ones.
func (p *Pool) Endpoints() []*Endpoint {
	p.smu.Lock()
	defer p.smu.Unlock()
	return append(slices.Clip(p.set.Load().Eps), p.draining...)
}

// Nanotime returns the pool's monotonic time in nanoseconds: cheap to store
// in an atomic, unlike a time.Time. LatencyAware reads it on every pick, so
// with the real clock it reads only the monotonic clock (time.Since), which
// costs a quarter of time.Now.
func (p *Pool) Nanotime() int64 {
	if p.cfg.Clock == clock.Real {
		return int64(time.Since(p.epoch))
	}
	return p.NanotimeAt(p.cfg.Clock.Now())
}

// NanotimeAt returns t in pool time.
func (p *Pool) NanotimeAt(t time.Time) int64 { return int64(t.Sub(p.epoch)) }

// Change is what Update did to one endpoint.
type Change struct {
	Name   string
	Kind   ChangeKind
	OldMax int // for Recapped
	NewMax int
	// OldTier and NewTier are the endpoint's tiers, for Retiered; NewTier
	// also for Added.
	OldTier, NewTier int
}

// ChangeKind is the kind of a Change.
type ChangeKind uint8

const (
	Added ChangeKind = iota
	Removed
	Recapped // a new cap
	Rekeyed  // new keys
	Retiered // a new tier
)

// Update replaces the live endpoints with those specs describes, as one
// atomic change, and returns what changed. Endpoints are matched by name: a
// kept endpoint (same name, same URL) keeps its state, calls in flight
// included, and takes its new cap, keys and tier; a name with another URL is a
// new endpoint, and the old one drains. A removed endpoint takes no new
// attempt once Update has returned; its calls in flight finish, and it
// stays in Endpoints until the last one has. A new endpoint for the URL of
// one draining under another name (a rename) is held back, with a limit of
// 0, until that one's last call ends. Calls waiting in line see the new Set
// at once. Concurrent Updates are serialised; the last one wins.
func (p *Pool) Update(specs []Spec) []Change {
	p.smu.Lock()
	since := p.stampLocked()
	old := p.set.Load()
	byName := make(map[string]*Endpoint, len(old.Eps))
	for _, e := range old.Eps {
		byName[e.name] = e
	}
	var changes []Change
	var fresh []*Endpoint
	eps := make([]*Endpoint, len(specs))
	for i := range specs {
		sp := &specs[i]
		e := byName[sp.Name]
		if e == nil || e.url != sp.URL.String() {
			if e = p.reviveLocked(sp); e == nil {
				e = newEndpoint(sp, since)
				fresh = append(fresh, e)
			}
			eps[i] = e
			changes = append(changes, Change{Name: sp.Name, Kind: Added, NewMax: sp.Max, NewTier: sp.Tier})
			continue
		}
		delete(byName, sp.Name)
		eps[i] = e
		if old := e.Max(); old != sp.Max {
			e.setMax(int32(sp.Max), p.cfg.Adaptive)
			changes = append(changes, Change{Name: sp.Name, Kind: Recapped, OldMax: old, NewMax: sp.Max})
		}
		// The new Auth always (its headers may differ); but the same keys
		// keep their state, so that a 401 in flight for one of them still
		// counts (Unauthorized compares keys).
		if a := e.auth.Swap(sp.Auth); !a.sameKeys(sp.Auth) {
			p.forgiveLocked(e)
			changes = append(changes, Change{Name: sp.Name, Kind: Rekeyed})
		}
		// Picks go by the tiers of the Set stored below: a kept endpoint
		// changes tier with it.
		if old := e.Tier(); old != sp.Tier {
			e.tier.Store(int32(sp.Tier))
			changes = append(changes, Change{Name: sp.Name, Kind: Retiered, OldTier: old, NewTier: sp.Tier})
		}
	}
	for _, e := range old.Eps {
		if byName[e.name] != e {
			continue // kept
		}
		e.removed.Store(true)
		// The mark in the slots word stops every take from here on, and
		// reads the slots held, for good: no take adds to them. After
		// the flag: a release that brings in-flight to zero and sees the
		// flag takes the endpoint out of draining, under smu.
		if e.slots.Or(goneBit)&heldMask > 0 {
			p.draining = append(p.draining, e)
		}
		changes = append(changes, Change{Name: e.name, Kind: Removed, OldMax: e.Max()})
	}
	// A new endpoint for the URL of one still draining under another name
	// (a rename) waits for its calls to end: the server counts both
	// together. Not yet in any Set, it takes no call before this.
	for _, e := range fresh {
		if i := slices.IndexFunc(p.draining, func(d *Endpoint) bool { return d.url == e.url }); i >= 0 {
			p.draining[i].heir = e
			e.heldBack = true
			e.limit.Store(0)
		}
	}
	p.set.Store(p.newSet(eps))
	p.smu.Unlock()
	p.signal() // a forgiven endpoint's probe, if any
	p.kick()   // new endpoints and higher caps serve waiting calls at once
	return changes
}

// stampLocked returns the Since of the endpoints an Update makes: now, by
// the Pool's clock, or a nanosecond after the last one when the clock has
// not moved on since (a coarse or fake clock, or a wall clock set back).
// So no two endpoints of one name share a Since, and a Since tells the
// lives of a name apart. Stamps carry no monotonic reading: they compare
// with == too.
func (p *Pool) stampLocked() time.Time {
	t := p.cfg.Clock.Now().Round(0)
	if !t.After(p.stamped) {
		t = p.stamped.Add(time.Nanosecond)
	}
	p.stamped = t
	return t
}

// reviveLocked returns the draining endpoint sp describes (same name, same
// URL), live again with sp's cap and keys, or nil when none is draining. A
// second endpoint for the same URL beside the draining one would let both
// fill its cap at once.
func (p *Pool) reviveLocked(sp *Spec) *Endpoint {
	i := slices.IndexFunc(p.draining, func(e *Endpoint) bool { return e.name == sp.Name && e.url == sp.URL.String() })
	if i < 0 {
		return nil
	}
	e := p.draining[i]
	p.draining = slices.Delete(p.draining, i, i+1)
	e.heir = nil // removed by this Update if it waits: no other names the URL
	e.removed.Store(false)
	e.slots.And(^uint64(goneBit))
	e.tier.Store(int32(sp.Tier))
	if e.Max() != sp.Max {
		e.setMax(int32(sp.Max), p.cfg.Adaptive)
	}
	if a := e.auth.Swap(sp.Auth); !a.sameKeys(sp.Auth) {
		p.forgiveLocked(e)
	}
	return e
}

// Result sorts what an attempt came to, as far as its endpoint's state
// cares.
type Result uint8

const (
	// OK: the endpoint answered as it should.
	OK Result = iota
	// Rejected: the endpoint answered, and the request was at fault (a
	// 400, say): the endpoint is alive.
	Rejected
	// Full: the endpoint was at its cap (a throttle).
	Full
	// Limited: the endpoint turned the call away for its rate (a 429 that
	// is not a throttle, such as an online endpoint's 429 Rate-limited):
	// it answered, and is neither sick nor full. It counts neither way
	// towards ejection, and a probe that meets it tells nothing; a delay
	// hint it came with (Report.CoolDown) holds the endpoint back all the
	// same, and an adaptive limit is cut as for a throttle (aimd).
	Limited
	// Failed: a transient failure, which counts towards ejection.
	Failed
	// Fault: the endpoint cannot serve anyone (a rejected key, no access,
	// no such endpoint): ejected at once.
	Fault
	// KeyRejected: a 401 for a key the endpoint has since replaced or has
	// a second one for: it says nothing of the endpoint's health.
	KeyRejected
	// Cancelled: the call's ctx ended first.
	Cancelled
	// Abandoned: a hedged copy cancelled because the other answered first.
	Abandoned
	// Unsent: the slot was given back without sending anything.
	Unsent
)

// Report is what one attempt came to.
type Report struct {
	Result   Result
	Start    time.Time     // when the request was sent
	Latency  time.Duration // until its reply ended or it failed
	CoolDown time.Duration // hold the endpoint back this long (a capped Retry-After); 0: no
}

// Effects is what a Report changed.
type Effects struct {
	// Ejected is how long the report ejected the endpoint for; 0 if it did
	// not. Ejections is then its ejections in a row.
	Ejected   time.Duration
	Ejections int
	// Panic: the ejection left half or more of the endpoints out, so all
	// of them take calls again; Out of Of are out.
	Panic   bool
	Out, Of int
	// Readmitted: the report, a probe's, put the endpoint back in rotation.
	Readmitted bool
	// Recovered: the report proved the endpoint alive after failures, and
	// its count of failures in a row started again.
	Recovered bool
	// Limit is the endpoint's new limit, when the report moved it; else 0.
	Limit int32
}

// Release gives slot back once its attempt has ended as r says, updates the
// endpoint's counters, latency estimate, adaptive limit and health, serves
// waiting calls, and writes what changed to fx unless fx is nil. Call it
// exactly once per slot.
//
// fx is written in place, not returned: a returned Effects is spilled to
// the stack field by field and copied in 16-byte words, a store-forwarding
// stall that cost about 5 ns of a 40 ns acquire and release.
func (p *Pool) Release(slot Slot, r *Report, fx *Effects) {
	e := slot.Ep
	if fx == nil {
		fx = new(Effects) // on the stack: nothing keeps it
	} else {
		*fx = Effects{}
	}
	kick := false
	if r.Result == Unsent {
		p.unsend(slot)
		kick = true
	} else {
		e.count(r.Result)
		if p.cfg.TrackLatency {
			end := p.NanotimeAt(r.Start.Add(r.Latency))
			e.lat.observe(end, float64(r.Latency), r.Result != OK)
		}
		if p.cfg.Adaptive {
			if fx.Limit = e.adapt(r.Result, r.Start, r.Latency); fx.Limit != 0 && r.Result == OK {
				kick = true // the new slot may serve a waiting call
			}
		}
		if slot.Probe || r.Result != OK || r.CoolDown != 0 || e.health.fails.Load() != 0 {
			kick = p.observe(e, r, slot.Probe, fx) || kick
		}
	}
	if r.Result != Unsent {
		p.giveBack(e)
	}
	if kick || p.nwait.Load() > 0 {
		p.kick()
	}
}

// unsend gives back a slot whose attempt was never sent. When it was the
// endpoint's probe, the next call probes instead (also when the endpoint
// was removed meanwhile: it may be added back). Like giveBack, it does
// not serve waiting calls.
func (p *Pool) unsend(slot Slot) {
	if slot.Probe {
		p.smu.Lock()
		p.unprobeLocked(slot.Ep)
		p.smu.Unlock()
	}
	p.untake(slot.Ep)
}

// giveBack returns a slot of e. It does not serve waiting calls: its
// callers do, or hold the line's lock already.
func (p *Pool) giveBack(e *Endpoint) {
	// The slots held now, plus one, is 0 when more were given back than
	// held; 1 when none are. Small enough to inline into Release.
	if (e.slots.Add(^uint64(0))+1)&heldMask <= 1 {
		p.emptied(e)
	}
}

// untake gives back a slot of e that no attempt used (an attempt never
// sent, a take undone): it counts as no attempt. Like giveBack, it does
// not serve waiting calls. (The two differ in their delta only; one
// helper for both costs 81 of the inliner's budget of 80.)
func (p *Pool) untake(e *Endpoint) {
	if (e.slots.Add(^uint64(oneTake-1))+1)&heldMask <= 1 {
		p.emptied(e)
	}
}

// emptied follows a giveBack or untake that left e with no slot held, or
// with more given back than held: a bug, caught here when the count still
// shows it (it wrapped to heldMask) as it always does when it happens alone.
func (p *Pool) emptied(e *Endpoint) {
	if e.held() == heldMask {
		panic("amlpool: released more than held")
	}
	if e.removed.Load() {
		p.smu.Lock()
		// Still removed, with no slot held, under smu: Updates may have
		// brought e back, given it calls and removed it again since the
		// slot went back, and its last call is then still to end. Once
		// removed, e takes no slot (goneBit) until an Update revives it.
		if !e.removed.Load() || e.held() != 0 {
			p.smu.Unlock()
			return
		}
		if i := slices.Index(p.draining, e); i >= 0 {
			p.draining = slices.Delete(p.draining, i, i+1)
		}
		heir := e.heir
		if heir != nil {
			e.heir = nil
			heir.letIn()
		}
		p.smu.Unlock()
		if heir != nil {
			// Release serves the line next when calls wait; an untake may
			// hold the line's lock, so Run serves it too.
			p.admitted.Store(true)
			p.signal()
		}
	}
}

// Close fails every waiting Acquire with ErrClosed, and every later one that
// finds no free slot (a free slot is still taken without a look at Close:
// the Client refuses calls once closed), and stops Run.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.done)
	}
}

// Done is closed by Close.
func (p *Pool) Done() <-chan struct{} { return p.done }
