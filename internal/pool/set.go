package pool

import (
	"math"
	"sync/atomic"
)

// Set is the live endpoints at one moment: an immutable snapshot that Update
// replaces as a whole. Picks read it without a lock. Only its counts of
// endpoints out of rotation change, and only for the current Set.
//
// When its endpoints are in more than one tier, the Set also holds a Set
// of each tier's endpoints (tier.go): picks go to those, lowest tier first.
type Set struct {
	// Eps are the endpoints in the order given to Update (of one tier, in
	// a tier's Set). Callers must not modify the slice.
	Eps []*Endpoint

	p     *Pool
	cum   []int32  // cum[i]: sum of Eps[:i+1] caps, for drawing a slot by cap
	slots []uint32 // slots[s]: endpoint<<slotBits | offset of slot s in it; nil for huge sets or unpicked ones
	total int32    // cum[len-1]
	each  int32    // the cap every endpoint has, when they all have the same one; else 0

	tier  int    // the tier of Eps: every endpoint's, in a tier's Set or a Set of one tier
	tiers []*Set // the Set of each tier, lowest first; just this Set when its endpoints share a tier
	whole *Set   // the Set this is a tier of, whose counts below hold for it; itself for a whole Set

	out     atomic.Int32 // endpoints ejected for failures: half or more means panic
	faulted atomic.Int32 // endpoints ejected for a fault
}

const (
	// slotBits holds a slot's offset within its endpoint in the slot table:
	// room for caps of up to 16,383.
	slotBits = 14
	slotMask = 1<<slotBits - 1
	// maxSlotTable bounds the slot table: 4 MiB, enough for 5,000 endpoints
	// of 200 slots.
	maxSlotTable = 1 << 20
)

func (p *Pool) newSet(eps []*Endpoint) *Set {
	s := &Set{Eps: eps, p: p}
	s.whole = s
	for _, e := range eps {
		s.count(e.health.state.Load())
	}
	s.tiers = p.tiersOf(s)
	// The slot table only where picks go: this Set, or each of its tiers.
	s.index(len(s.tiers) == 1)
	return s
}

// index fills cum, total and each and, with table, the slot table when the
// caps differ (equal caps need none: see draw).
func (s *Set) index(table bool) {
	s.cum = make([]int32, len(s.Eps))
	for i, e := range s.Eps {
		m := e.max.Load()
		s.total += m
		s.cum[i] = s.total
		if i == 0 {
			s.each = m
		} else if m != s.each {
			s.each = 0
		}
	}
	if table && s.each == 0 && s.total <= maxSlotTable && len(s.Eps) <= math.MaxUint32>>slotBits {
		s.slots = make([]uint32, 0, s.total)
		for i, e := range s.Eps {
			for off := range uint32(e.max.Load()) {
				s.slots = append(s.slots, uint32(i)<<slotBits|off)
			}
		}
	}
}

// Total returns the sum of the endpoints' caps.
func (s *Set) Total() int { return int(s.total) }

// Usable reports whether an attempt with exclusion x may go to e now, as
// far as exclusion and health go (not whether e has a free slot).
func (s *Set) Usable(x *Exclusion, e *Endpoint) bool { return s.usable(x, e) }

// UsableOutside reports whether an endpoint of s outside tried may take
// calls now, as far as health goes (not whether it has a free slot).
func (s *Set) UsableOutside(tried *Endpoints) bool {
	for _, e := range s.Eps {
		if !tried.Has(e) && s.admits(e) {
			return true
		}
	}
	return false
}

// Free returns how many calls endpoint i could take now for an attempt
// with exclusion x: zero when it is full or unusable.
func (s *Set) Free(x *Exclusion, i int) int {
	e := s.Eps[i]
	if !s.usable(x, e) {
		return 0
	}
	return e.Free()
}

// Rand returns a uniformly random number from the Pool's source.
func (s *Set) Rand() uint64 { return s.p.cfg.Rand() }

// Latency returns endpoint i's latency estimate in nanoseconds, decayed to
// now: see peakEWMA.
func (s *Set) Latency(i int) float64 { return s.Eps[i].lat.at(s.p.Nanotime()) }

// Exclusion is what one attempt of a call may not use. It is passed by
// value (into Candidates and waiters) so that a call never escapes to the
// heap.
type Exclusion struct {
	On    bool      // this attempt avoids Tried
	Tried Endpoints // endpoints the call has tried
}

// Excludes reports whether the attempt must avoid e.
func (x *Exclusion) Excludes(e *Endpoint) bool { return x.On && x.Tried.Has(e) }

// Endpoints is a small set of endpoints, by identity. The first few need no
// allocation; it holds endpoints no longer live as well as live ones.
type Endpoints struct {
	n    int
	few  [6]*Endpoint
	more []*Endpoint
}

// Has reports whether e is in the set.
func (s *Endpoints) Has(e *Endpoint) bool {
	for i := range min(s.n, len(s.few)) {
		if s.few[i] == e {
			return true
		}
	}
	for _, o := range s.more {
		if o == e {
			return true
		}
	}
	return false
}

// Add puts e in the set and reports whether it was not there.
func (s *Endpoints) Add(e *Endpoint) bool {
	if s.Has(e) {
		return false
	}
	if s.n < len(s.few) {
		s.few[s.n] = e
	} else {
		s.more = append(s.more, e)
	}
	s.n++
	return true
}

// Len returns the number of endpoints in the set.
func (s *Endpoints) Len() int { return s.n }

// Clone returns a copy of s that shares no memory with it.
func (s Endpoints) Clone() Endpoints {
	s.more = append([]*Endpoint(nil), s.more...)
	return s
}

// A Picker chooses, for an attempt with exclusion x, the index in s.Eps of
// an endpoint with a free slot that the attempt may use, or -1. It must not
// block and must be safe for concurrent use. x comes by value: an attempt's
// exclusion must not escape through a call the compiler cannot see into.
type Picker func(s *Set, x Exclusion) int

// Balance names how picks choose: one of this package's pickers, called
// directly, or a Picker of the caller's.
type Balance uint8

const (
	Random      Balance = iota // PickRandom
	LeastLoaded                // PickLeastLoaded
	Latency                    // PickLatency
	Custom                     // Config.Pick
)

// pick chooses an endpoint of s for an attempt with exclusion x.
func (p *Pool) pick(s *Set, x *Exclusion) int {
	switch p.cfg.Balance {
	case Random:
		return PickRandom(s, x)
	case LeastLoaded:
		return PickLeastLoaded(s, x)
	case Latency:
		return PickLatency(s, x)
	}
	return p.cfg.Pick(s, *x)
}

// rejectionDraws is how many slots PickRandom draws by cap before it counts
// the free slots of every endpoint. Each draw costs a multiply or two, or a
// table lookup when caps differ; at
// light load the first one is almost always free. Eight draws all miss
// 0.4 % of the time with half the slots busy (three missed 12.5 % of the
// time, and at 1000 endpoints the count then cost ten times all the draws).
const rejectionDraws = 8

// PickRandom picks a free slot drawn uniformly from all free slots the
// attempt may use, so an endpoint's chance is proportional to its free
// slots.
func PickRandom(s *Set, x *Exclusion) int {
	if len(s.Eps) == 1 {
		// One endpoint: no draw can choose otherwise.
		if s.Free(x, 0) > 0 {
			return 0
		}
		return -1
	}
	// Draw a slot uniformly among all configured slots; treat the first
	// free(i) slots of endpoint i as the free ones. Accepted draws are then
	// uniform over free slots.
	for range rejectionDraws {
		i, off := s.draw(s.p.cfg.Rand())
		if e := s.Eps[i]; off < e.limit.Load()-e.held() && s.usable(x, e) {
			return i
		}
	}
	total := 0
	for i := range s.Eps {
		total += s.Free(x, i)
	}
	if total == 0 {
		return -1
	}
	r := int(Bounded(s.p.cfg.Rand(), uint32(total)))
	last := -1
	for i := range s.Eps {
		f := s.Free(x, i)
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

// Bounded maps a random 64-bit number to [0, n) with a multiply and a shift
// instead of a division (Lemire's method; the bias for n < 2³¹ is below 2⁻³²).
func Bounded(r uint64, n uint32) uint32 { return uint32((r >> 32) * uint64(n) >> 32) }

// draw maps the random number r to a slot drawn uniformly from all
// configured slots: the index of its endpoint and its offset among that
// endpoint's slots. When every endpoint has the same cap, that is an
// endpoint and an offset drawn each on its own, from r's two halves: two
// multiplies, and no table to read (at 1000 endpoints of 20 slots the
// table is 80 KiB, a cache miss on most draws).
func (s *Set) draw(r uint64) (int, int32) {
	if s.each > 0 {
		return int(Bounded(r, uint32(len(s.Eps)))), int32(Bounded(r<<32, uint32(s.each)))
	}
	return s.slot(Bounded(r, uint32(s.total)))
}

// slot returns the endpoint that slot r of all configured slots belongs to
// and r's offset among that endpoint's slots: a table lookup, or a binary
// search for sets too large for a table.
func (s *Set) slot(r uint32) (int, int32) {
	if s.slots != nil {
		v := s.slots[r]
		return int(v >> slotBits), int32(v & slotMask)
	}
	i := searchCum(s.cum, int32(r))
	lo := int32(0)
	if i > 0 {
		lo = s.cum[i-1]
	}
	return i, int32(r) - lo
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

// p2cDraws is how many pairs P2C draws before it scans every endpoint. With
// half the endpoints usable, three pairs all miss 1.6 % of the time.
const p2cDraws = 3

// PickLeastLoaded is P2C on the share of the limit in use: of two
// endpoints drawn at random, the one with the lower in-flight ÷ limit.
func PickLeastLoaded(s *Set, x *Exclusion) int { return pickP2C(s, x, lessLoaded) }

// PickLatency is P2C on Peak-EWMA's expected cost: latency × (in-flight +
// 1).
func PickLatency(s *Set, x *Exclusion) int { return pickP2C(s, x, lessCostly) }

// pickP2C draws two different endpoints and returns the usable one, or the
// better of two usable ones by better(s, a, b) (a beats b); after p2cDraws
// pairs with neither usable it returns the better of the first two usable
// ones from a random start, or -1.
func pickP2C(s *Set, x *Exclusion, better func(s *Set, a, b int) bool) int {
	n := len(s.Eps)
	if n == 1 {
		if s.Free(x, 0) > 0 {
			return 0
		}
		return -1
	}
	for range p2cDraws {
		r := s.p.cfg.Rand()
		// Two different indexes from one draw: i uniform over n from its
		// low half, j uniform over the n−1 others from its high half.
		i := int(Bounded(r<<32, uint32(n)))
		j := int(Bounded(r, uint32(n-1)))
		if j >= i {
			j++
		}
		switch fi, fj := s.Free(x, i) > 0, s.Free(x, j) > 0; {
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
	start := int(Bounded(s.p.cfg.Rand(), uint32(n)))
	for k := range n {
		i := start + k
		if i >= n {
			i -= n
		}
		if s.Free(x, i) == 0 {
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
func lessLoaded(s *Set, a, b int) bool {
	ea, eb := s.Eps[a], s.Eps[b]
	return int64(ea.held())*int64(eb.limit.Load()) < int64(eb.held())*int64(ea.limit.Load())
}

// lessCostly reports whether a call is expected to finish sooner on a than on
// b; equal costs (both idle and never measured, say) go by load.
func lessCostly(s *Set, a, b int) bool {
	now := s.p.Nanotime()
	ca, cb := latencyCost(s.Eps[a], now), latencyCost(s.Eps[b], now)
	if ca != cb {
		return ca < cb
	}
	return lessLoaded(s, a, b)
}

// latencyCost is Peak-EWMA's cost at pool time now: latency × (in-flight +
// 1). An endpoint with no estimate costs nothing while idle, so it gets a
// first call, and costs the most while that call is out, so it does not get
// a hundred.
func latencyCost(e *Endpoint, now int64) float64 {
	lat, n := e.lat.at(now), e.held()
	if lat == 0 {
		if n == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return lat * float64(n+1)
}
