package amlpool

import (
	"math"
	"time"
)

// Balancer chooses the endpoint for each attempt of a call, among those the
// call may use that have a free slot. The Client then takes that slot; if
// another call took it first, the Client asks again.
//
// Pick must not block or do I/O, and must be safe for concurrent use. It
// returns an index into the Candidates, or -1 when none has a free slot.
type Balancer interface {
	Pick(s Candidates) int
}

// Candidates is a Balancer's view of the endpoints for one attempt. Index i is
// the i-th endpoint given to New. It is valid only during the Pick call.
type Candidates struct {
	p *pool
	x exclusion
}

// Len returns the number of endpoints, usable or not.
func (s Candidates) Len() int { return len(s.p.eps) }

// Free returns how many calls endpoint i could take now: zero when it is
// full or when this call may not use it (already tried, ejected, cooling down).
func (s Candidates) Free(i int) int {
	ep := s.p.eps[i]
	if !s.p.usable(&s.x, ep) {
		return 0
	}
	if f := ep.limit.Load() - ep.inFlight.Load(); f > 0 {
		return int(f)
	}
	return 0
}

// InFlight returns the number of calls endpoint i is serving now.
func (s Candidates) InFlight(i int) int { return int(s.p.eps[i].inFlight.Load()) }

// Limit returns endpoint i's current cap on calls in flight.
func (s Candidates) Limit(i int) int { return int(s.p.eps[i].limit.Load()) }

// Latency returns endpoint i's latency estimate: a moving average of its
// recent attempts that jumps at once to a slower one (Peak-EWMA) and, between
// attempts, decays toward zero with a 10 s time constant, so an endpoint that
// stopped being picked for being slow gets tried again. Failed attempts can
// raise it, never lower it. Zero means no attempt yet (or none for hours).
func (s Candidates) Latency(i int) time.Duration {
	return time.Duration(s.p.eps[i].lat.at(s.p.nanotime()))
}

// Rand returns a uniformly random number from the Client's source, which is
// safe for concurrent use.
func (s Candidates) Rand() uint64 { return s.p.rand() }

// Random returns the default Balancer: each call goes to a free slot drawn
// uniformly from all free slots, so an endpoint's chance is proportional to
// its free slots. Equal caps give equal shares; a 200-slot endpoint beside
// 20-slot ones gets ten times their share. This is the service's own advice
// ("randomly distribute your load across all of them") done with caps in view.
func Random() Balancer { return randomBalancer{} }

type randomBalancer struct{}

var _ Balancer = randomBalancer{}

// rejectionDraws is how many slots Pick draws by cap before it counts the free
// slots of every endpoint. Each draw costs O(log E); at light load the first
// one is almost always free. Eight draws all miss 0.4 % of the time with half
// the slots busy (three missed 12.5 % of the time, and at 1000 endpoints the
// count then cost ten times all the draws).
const rejectionDraws = 8

func (randomBalancer) Pick(s Candidates) int { return s.p.pickRandom(&s.x) }

// pickRandom is Random's pick; the pool calls it directly, without building
// Candidates, on its hot path.
func (p *pool) pickRandom(x *exclusion) int {
	// Draw a slot uniformly among all configured slots; treat the first
	// free(i) slots of endpoint i as the free ones. Accepted draws are then
	// uniform over free slots.
	for range rejectionDraws {
		i, off := p.slot(bounded(p.rand(), uint32(p.total)))
		if ep := p.eps[i]; off < ep.limit.Load()-ep.inFlight.Load() && p.usable(x, ep) {
			return i
		}
	}
	s := Candidates{p: p, x: *x}
	total := 0
	for i := range p.eps {
		total += s.Free(i)
	}
	if total == 0 {
		return -1
	}
	r := int(bounded(p.rand(), uint32(total)))
	last := -1
	for i := range p.eps {
		f := s.Free(i)
		if f == 0 {
			continue
		}
		if r < f {
			return i
		}
		r -= f
		last = i
	}
	return last // slots were taken while counting; the last one seen free
}

// bounded maps a random 64-bit number to [0, n) with a multiply and a shift
// instead of a division (Lemire's method; the bias for n < 2³¹ is below 2⁻³²).
func bounded(r uint64, n uint32) uint32 { return uint32((r >> 32) * uint64(n) >> 32) }

// slot returns the endpoint that slot r of all configured slots belongs to
// and r's offset among that endpoint's slots: a table lookup, or a binary
// search for pools too large for a table.
func (p *pool) slot(r uint32) (int, int32) {
	if p.slots != nil {
		s := p.slots[r]
		return int(s >> 8), int32(s & 0xff)
	}
	i := searchCum(p.cum, int32(r))
	return i, int32(r) - (p.cum[i] - p.eps[i].max)
}

// searchCum returns the first i with cum[i] > r.
func searchCum(cum []int32, r int32) int {
	lo, hi := 0, len(cum)-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if cum[mid] > r {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

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
	leastLoaded  struct{}
	latencyAware struct{}
)

var (
	_ Balancer = leastLoaded{}
	_ Balancer = latencyAware{}
)

// p2cDraws is how many pairs P2C draws before it scans every endpoint. With
// half the endpoints usable, three pairs all miss 1.6 % of the time.
const p2cDraws = 3

func (leastLoaded) Pick(s Candidates) int { return pickP2C(s, lessLoaded) }

func (latencyAware) Pick(s Candidates) int { return pickP2C(s, lessCostly) }

// pickP2C draws two different endpoints and returns the usable one, or the
// better of two usable ones by better(s, a, b) (a beats b); after p2cDraws
// pairs with neither usable it returns the best of all, or -1.
func pickP2C(s Candidates, better func(s Candidates, a, b int) bool) int {
	n := s.Len()
	if n == 1 {
		if s.Free(0) > 0 {
			return 0
		}
		return -1
	}
	for range p2cDraws {
		r := s.Rand()
		// Two different indexes from one draw: i uniform over n from its
		// low half, j uniform over the n−1 others from its high half.
		i := int(bounded(r<<32, uint32(n)))
		j := int(bounded(r, uint32(n-1)))
		if j >= i {
			j++
		}
		switch fi, fj := s.Free(i) > 0, s.Free(j) > 0; {
		case fi && fj:
			if better(s, j, i) {
				return j
			}
			return i
		case fi:
			return i
		case fj:
			return j
		}
	}
	// Mostly full or excluded: the better of the first two usable ones from
	// a random start, which costs about n ÷ usable steps, or the only one.
	first := -1
	start := int(bounded(s.Rand(), uint32(n)))
	for k := range n {
		i := start + k
		if i >= n {
			i -= n
		}
		if s.Free(i) == 0 {
			continue
		}
		if first < 0 {
			first = i
			continue
		}
		if better(s, i, first) {
			return i
		}
		return first
	}
	return first
}

// lessLoaded reports whether a has a lower share of its limit in flight than
// b: inFlight_a / limit_a < inFlight_b / limit_b, cross-multiplied.
func lessLoaded(s Candidates, a, b int) bool {
	return int64(s.InFlight(a))*int64(s.Limit(b)) < int64(s.InFlight(b))*int64(s.Limit(a))
}

// lessCostly reports whether a call is expected to finish sooner on a than on
// b; equal costs (both idle and never measured, say) go by load.
func lessCostly(s Candidates, a, b int) bool {
	now := s.p.nanotime()
	ca, cb := latencyCost(s, a, now), latencyCost(s, b, now)
	if ca != cb {
		return ca < cb
	}
	return lessLoaded(s, a, b)
}

// latencyCost is Peak-EWMA's cost at pool time now: latency × (in-flight +
// 1), as Candidates.Latency and InFlight give them. An endpoint with no
// estimate costs nothing while idle, so it gets a first call, and costs the
// most while that call is out, so it does not get a hundred.
func latencyCost(s Candidates, i int, now int64) float64 {
	lat, n := s.p.eps[i].lat.at(now), s.InFlight(i)
	if lat == 0 {
		if n == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return lat * float64(n+1)
}
