package amlpool

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
// one is almost always free.
const rejectionDraws = 3

func (randomBalancer) Pick(s Candidates) int {
	p := s.p
	// Draw a slot uniformly among all configured slots; treat the first
	// Free(i) slots of endpoint i as the free ones. Accepted draws are then
	// uniform over free slots.
	for range rejectionDraws {
		r := int32(p.rand() % uint64(p.total))
		i := searchCum(p.cum, r)
		if off := r - (p.cum[i] - p.eps[i].max); off < int32(s.Free(i)) {
			return i
		}
	}
	total := 0
	for i := range p.eps {
		total += s.Free(i)
	}
	if total == 0 {
		return -1
	}
	r := int(p.rand() % uint64(total))
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
