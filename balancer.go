package amlpool

import (
	"time"

	"github.com/amlpool/amlpool/internal/pool"
)

// Balancer chooses the endpoint for each attempt of a call, among those the
// call may use that have a free slot. The Client then takes that slot; if
// another call took it first, the Client asks again. With endpoints in
// several tiers (Endpoint.Tier) it chooses within one tier at a time,
// lowest first: a higher tier is asked only when the lower ones have no
// free slot for the call, or when Pick answers -1 for them.
//
// Pick must not block or do I/O, and must be safe for concurrent use. It
// returns an index into the Candidates, or -1 when none has a free slot.
//
// A Pick that panics panics the call it was picking for, with the same
// value, in the goroutine that made the call (that of Do or Score; for
// ScoreRows, the worker sending the chunk, so the program ends), and no
// other. For a call waiting in line, the pick may
// run in the goroutine of another call whose release freed a slot: that
// call goes on as usual, the freed slot goes to the next call in line, and
// the waiting call panics once it wakes (its stack trace then shows the
// wait, not Pick). The Client stays usable: no slot stays held and no call
// stays in line for the panic.
type Balancer interface {
	Pick(s Candidates) int
}

// Candidates is a Balancer's view of the live endpoints of one tier for one
// attempt. Index i is the i-th endpoint of that tier in the order given to
// New, or to the last SetEndpoints; with every endpoint in one tier (all
// Tier 0, the default), the i-th endpoint given. It is valid only during
// the Pick call.
type Candidates struct {
	s *pool.Set
	x pool.Exclusion
}

// Len returns the number of endpoints of the tier, usable or not.
func (s Candidates) Len() int { return len(s.s.Eps) }

// Tier returns the tier of the endpoints (Endpoint.Tier).
func (s Candidates) Tier() int { return s.s.Tier() }

// Free returns how many calls endpoint i could take now: zero when it is
// full or when this call may not use it (already tried, ejected, cooling down).
func (s Candidates) Free(i int) int { return s.s.Free(&s.x, i) }

// InFlight returns the number of calls endpoint i is serving now.
func (s Candidates) InFlight(i int) int { return s.s.Eps[i].InFlight() }

// Limit returns endpoint i's current cap on calls in flight.
func (s Candidates) Limit(i int) int { return s.s.Eps[i].Limit() }

// Latency returns endpoint i's latency estimate: a moving average of its
// recent attempts that jumps at once to a slower one (Peak-EWMA) and, between
// attempts, decays toward zero with a 10 s time constant, so an endpoint that
// stopped being picked for being slow gets tried again. Failed attempts can
// raise it, never lower it. Zero means no attempt yet (or none for hours).
func (s Candidates) Latency(i int) time.Duration { return time.Duration(s.s.Latency(i)) }

// Rand returns a uniformly random number from the Client's source, which is
// safe for concurrent use.
func (s Candidates) Rand() uint64 { return s.s.Rand() }

// Random returns the default Balancer: each call goes to a free slot drawn
// uniformly from all free slots, so an endpoint's chance is proportional to
// its free slots. Equal caps give equal shares; a 200-slot endpoint beside
// 20-slot ones gets ten times their share. This is the service's own advice
// ("randomly distribute your load across all of them") done with caps in view.
func Random() Balancer { return randomBalancer{} }

// LeastLoaded returns a Balancer that uses the power of two choices (P2C): it
// draws two different endpoints at random and sends the call to the one with
// the lower share of its limit in use (in-flight ÷ limit); an endpoint with no
// free slot or that the call may not use never wins. This is Envoy's
// least_request and Finagle's default. Compared with Random it evens out load
// across endpoints of different speeds or caps, without ever looking at more
// than two of them: a pick is O(1) whatever the number of endpoints. Only when
// three draws in a row find both endpoints unusable (most are full or
// excluded) does it scan, from a random start, for the first two usable ones.
func LeastLoaded() Balancer { return leastLoaded{} }

// LatencyAware returns a Balancer that uses P2C on the expected cost of a
// call: an endpoint's latency estimate (see Candidates.Latency) times its
// in-flight calls plus one, as Finagle's and Linkerd's Peak-EWMA balancers do.
// A slow endpoint gets few calls; because its estimate decays when it is not
// picked, it is probed again now and then and, once it has recovered, wins
// back its share. An endpoint with no estimate yet is tried first while idle
// and avoided while its first call is out. A pick is O(1) like LeastLoaded's.
func LatencyAware() Balancer { return latencyAware{} }

type (
	randomBalancer struct{}
	leastLoaded    struct{}
	latencyAware   struct{}
)

var (
	_ Balancer = randomBalancer{}
	_ Balancer = leastLoaded{}
	_ Balancer = latencyAware{}
)

func (randomBalancer) Pick(s Candidates) int { return pool.PickRandom(s.s, &s.x) }
func (leastLoaded) Pick(s Candidates) int    { return pool.PickLeastLoaded(s.s, &s.x) }
func (latencyAware) Pick(s Candidates) int   { return pool.PickLatency(s.s, &s.x) }

// picker returns how the pool picks for b. The built-in balancers' picks run
// directly, without building Candidates or calling through the interface.
func picker(b Balancer) (pool.Balance, pool.Picker) {
	switch b.(type) {
	case randomBalancer:
		return pool.Random, nil
	case leastLoaded:
		return pool.LeastLoaded, nil
	case latencyAware:
		return pool.Latency, nil
	}
	return pool.Custom, func(s *pool.Set, x pool.Exclusion) int { return b.Pick(Candidates{s: s, x: x}) }
}
