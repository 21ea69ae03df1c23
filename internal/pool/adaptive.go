package pool

import (
	"sync"
	"time"
)

// The adaptive limit's constants. They are not options: a simulation of 10
// replicas sharing 5 endpoints of 20 slots (the root package's sim_test.go)
// is what chose them, and a knob nobody can tune without such a simulation
// helps nobody.
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
	// adaptiveBackoff multiplies an endpoint's limit on a throttle or a
	// rate limit.
	adaptiveBackoff = 0.7
	// adaptiveIncrease is added to an endpoint's limit on each success while
	// its limit is in use (a power of two, so sums stay exact). Growth is
	// thus exponential in time, e-folding every 256 calls' latencies: a
	// lone client cut from 20 to 14 slots regains them in about 4.5 s at
	// 50 ms a call.
	adaptiveIncrease = 1.0 / 256
)

// aimd is one endpoint's adaptive limit (Config.Adaptive): between 1 and
// its cap by AIMD. A throttle cuts it by 30 % (the endpoint was full
// although this Client had a free slot there, so others share it), and so
// does a rate limit (Limited: the endpoint took more requests than it
// serves in a second, and fewer calls in flight send fewer a second); each
// success while at least half the limit is in use adds 1/256 of a slot.
// Clients sharing endpoints thus settle on shares whose sum sits just under
// each endpoint's cap, without talking to each other. The endpoint's limit
// holds the integer part, which is what take enforces.
type aimd struct {
	mu  sync.Mutex // guards the fields below and every store to the endpoint's limit while adaptive
	cur float64    // 1 ≤ cur ≤ the endpoint's max
	cut time.Time  // when cur was last lowered
}

// adapt moves e's adaptive limit after an attempt that started at start,
// took latency, and came to r; the slot is still held. It returns the new
// limit when the integer part moved, else 0.
func (e *Endpoint) adapt(r Result, start time.Time, latency time.Duration) int32 {
	a := &e.aimd
	switch r {
	case Full, Limited:
		a.mu.Lock()
		defer a.mu.Unlock()
		// A throttle or rate limit for an attempt sent before the last cut
		// tells of the old limit, already dealt with: one cut per round
		// trip, as TCP reacts once per window, or a burst of them would
		// drive the limit to 1.
		if start.Before(a.cut) {
			return 0
		}
		a.cur = max(1, a.cur*adaptiveBackoff)
		a.cut = start.Add(latency)
		n := int32(a.cur)
		e.limit.Store(n)
		return n
	case OK:
		// Grow only while the limit is what holds this Client back (at
		// least half of it in use, this attempt's slot included, as
		// Netflix's AIMD does); otherwise an idle Client would creep back to
		// the cap and throttle when busy.
		if 2*e.held() < e.limit.Load() {
			return 0
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		top := float64(e.max.Load())
		if a.cur >= top {
			return 0
		}
		old := int32(a.cur)
		a.cur = min(top, a.cur+adaptiveIncrease)
		if n := int32(a.cur); n != old {
			e.limit.Store(n)
			return n
		}
	}
	return 0
}

// setMax gives e a new cap. Without an adaptive limit the limit is the cap.
// With one, a limit that stood at the old cap moves to the new one, and a
// limit cut below it keeps its value under the new cap: the cut says others
// share the endpoint, which a new cap does not change. An endpoint held
// back keeps its limit of 0 until it is let in (letIn). The caller holds
// Pool.smu.
func (e *Endpoint) setMax(n int32, adaptive bool) {
	a := &e.aimd
	a.mu.Lock()
	defer a.mu.Unlock()
	old := e.max.Swap(n)
	if !adaptive || a.cur >= float64(old) {
		a.cur = float64(n)
	} else {
		a.cur = min(a.cur, float64(n))
	}
	if !e.heldBack {
		e.limit.Store(int32(a.cur))
	}
}

// letIn gives an endpoint held back its limit. The caller holds Pool.smu.
func (e *Endpoint) letIn() {
	a := &e.aimd
	a.mu.Lock()
	defer a.mu.Unlock()
	e.heldBack = false
	e.limit.Store(int32(a.cur))
}
