package amlpool

import (
	"sync"
	"time"
)

// The adaptive limit's constants. They are not options: the simulation in
// sim_test.go (10 replicas sharing 5 endpoints of 20 slots) is what chose
// them, and a knob nobody can tune without such a simulation helps nobody.
//
// With N clients sharing an endpoint of cap C, each settles near C/N and
// the sum of their limits saws up and down just below C. Throttles per call
// then come to about N·increase / ((1 − backoff)·C): the increase sets how
// fast the sum climbs back into the cap, the backoff how far one throttle
// sends it down. Goodput loses about (1 − backoff) / 2N. The simulation at
// N = 10, C = 20 gives 0.5 % throttles and 93 % of capacity with these
// values, against 1.4 % and 90 % with (0.5, 1/64), and 3 % with Netflix's
// 0.9 backoff.
const (
	// adaptiveBackoff multiplies an endpoint's limit on a throttle.
	adaptiveBackoff = 0.7
	// adaptiveIncrease is added to an endpoint's limit on each success while
	// its limit is in use (a power of two, so sums stay exact). Growth is
	// thus exponential in time, e-folding every 256 calls' latencies: a
	// lone client cut from 20 to 14 slots regains them in about 4.5 s at
	// 50 ms a call.
	adaptiveIncrease = 1.0 / 256
)

// adaptive keeps every endpoint's limit between 1 and its configured cap by
// AIMD: a 503 throttle cuts the limit by 30 % (the endpoint was full
// although this Client had a free slot there, so others share it); each
// success while at least half the limit is in use adds 1/256 of a slot.
// Clients sharing endpoints thus settle on shares whose sum sits just under
// each endpoint's cap, without talking to each other.
type adaptive struct {
	p      *pool
	limits []aimdLimit // one per endpoint
}

// aimdLimit is one endpoint's adaptive limit. The endpoint's limit field
// holds its integer part, which is what take enforces.
type aimdLimit struct {
	mu  sync.Mutex // guards the fields below
	cur float64    // 1 ≤ cur ≤ the endpoint's max
	cut time.Time  // when cur was last lowered
}

func newAdaptive(p *pool) *adaptive {
	a := &adaptive{p: p, limits: make([]aimdLimit, len(p.eps))}
	for i, ep := range p.eps {
		a.limits[i].cur = float64(ep.max)
	}
	return a
}

func (a *adaptive) attemptDone(o *outcome) {
	ep := o.ep
	l := &a.limits[ep.idx]
	switch {
	case o.throttled:
		l.mu.Lock()
		// A throttle for an attempt sent before the last cut tells of the
		// old limit, already dealt with: one cut per round trip, as TCP
		// reacts once per window, or a burst of throttles would drive the
		// limit to 1.
		if o.start.Before(l.cut) {
			l.mu.Unlock()
			return
		}
		l.cur = max(1, l.cur*adaptiveBackoff)
		l.cut = o.start.Add(o.latency)
		n := int32(l.cur)
		ep.limit.Store(n)
		l.mu.Unlock()
		o.newLimit = n
	case o.err == nil:
		// Grow only while the limit is what holds this Client back (at
		// least half of it in use, as Netflix's AIMD does); otherwise an
		// idle Client would creep back to the cap and throttle when busy.
		if 2*(ep.inFlight.Load()+1) < ep.limit.Load() {
			return
		}
		l.mu.Lock()
		if l.cur >= float64(ep.max) {
			l.mu.Unlock()
			return
		}
		old := int32(l.cur)
		l.cur = min(float64(ep.max), l.cur+adaptiveIncrease)
		n := int32(l.cur)
		if n != old {
			ep.limit.Store(n)
		}
		l.mu.Unlock()
		if n != old {
			o.newLimit = n
			// The new slot may serve a waiting call. Reading nwait after
			// storing the limit pairs with acquire as release does.
			if a.p.nwait.Load() > 0 {
				a.p.kick()
			}
		}
	}
}
