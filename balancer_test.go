package amlpool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
)

// chiSquare returns Pearson's statistic for observed counts against expected
// proportions (which need not be normalised).
func chiSquare(observed []int, weights []float64) float64 {
	var n, w float64
	for i := range observed {
		n += float64(observed[i])
		w += weights[i]
	}
	var x float64
	for i, o := range observed {
		e := n * weights[i] / w
		x += (float64(o) - e) * (float64(o) - e) / e
	}
	return x
}

// Critical values of the chi-square distribution at p = 0.001.
var chi001 = map[int]float64{1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 9: 27.88}

// pickCounts picks n times at light load (one call at a time) and counts
// where each went.
func pickCounts(t *testing.T, p *pool, n int) []int {
	t.Helper()
	counts := make([]int, len(p.eps))
	for range n {
		ep, err := p.acquire(context.Background(), &exclusion{}, 0)
		require.NoError(t, err)
		counts[ep.idx]++
		p.release(ep)
	}
	return counts
}

func TestRandomSharesAreEqualForEqualCaps(t *testing.T) {
	p := testPool(t, 20, 20, 20, 20, 20)
	counts := pickCounts(t, p, 50000)
	x := chiSquare(counts, []float64{1, 1, 1, 1, 1})
	assert.Less(t, x, chi001[4], "counts %v", counts)
}

func TestRandomSharesFollowCaps(t *testing.T) {
	p := testPool(t, 20, 20, 200)
	counts := pickCounts(t, p, 48000)
	x := chiSquare(counts, []float64{20, 20, 200})
	assert.Less(t, x, chi001[2], "counts %v", counts)
}

// With some slots held, a free slot anywhere is equally likely: shares follow
// free slots, not caps.
func TestRandomSharesFollowFreeSlots(t *testing.T) {
	p := testPool(t, 10, 10, 10)
	var held []*endpoint
	for range 8 { // endpoint 0 keeps 2 free, the others 10
		require.True(t, p.eps[0].take())
		held = append(held, p.eps[0])
	}
	counts := pickCounts(t, p, 22000)
	x := chiSquare(counts, []float64{2, 10, 10})
	assert.Less(t, x, chi001[2], "counts %v", counts)
	for _, ep := range held {
		p.release(ep)
	}
}

func TestRandomNeverPicksFullOrExcludedEndpoints(t *testing.T) {
	p := testPool(t, 1, 1, 1, 1)
	require.True(t, p.eps[1].take())
	c := &exclusion{on: true}
	c.tried.add(2)
	for range 1000 {
		i := Random().Pick(Candidates{p: p, x: *c})
		require.Contains(t, []int{0, 3}, i)
	}
	require.True(t, p.eps[0].take())
	require.True(t, p.eps[3].take())
	assert.Equal(t, -1, Random().Pick(Candidates{p: p, x: *c}))
}

func TestBitsetBeyond64(t *testing.T) {
	var b bitset
	for _, i := range []int{0, 63, 64, 127, 128, 999} {
		assert.False(t, b.has(i))
		b.add(i)
		assert.True(t, b.has(i))
	}
	assert.False(t, b.has(500))
}

// balancers is every built-in Balancer; the suite below runs against each.
var balancers = map[string]func() Balancer{
	"Random":       Random,
	"LeastLoaded":  LeastLoaded,
	"LatencyAware": LatencyAware,
}

// balancerPool returns a pool over endpoints with the given caps for bal, no
// network, a deterministic random source (single goroutine only) and a fake
// clock.
func balancerPool(t testing.TB, bal Balancer, caps ...int) (*pool, *clock.Fake) {
	t.Helper()
	eps := make([]*endpoint, len(caps))
	for i, c := range caps {
		eps[i] = &endpoint{idx: i, name: fmt.Sprint("ep", i), max: int32(c)}
		eps[i].limit.Store(int32(c))
	}
	clk := clock.NewFake()
	rnd := rand.New(rand.NewPCG(1, 2))
	return newPool(eps, bal, rnd.Uint64, clk), clk
}

func equalCaps(n, c int) []int {
	caps := make([]int, n)
	for i := range caps {
		caps[i] = c
	}
	return caps
}

// picks counts Pick's answers over n calls, by index; -1 is at the end.
func picks(p *pool, c *exclusion, n int) []int {
	counts := make([]int, len(p.eps)+1)
	s := Candidates{p: p, x: *c}
	for range n {
		i := p.bal.Pick(s)
		if i < 0 {
			counts[len(p.eps)]++
		} else {
			counts[i]++
		}
	}
	return counts
}

func excluding(idx ...int) *exclusion {
	x := &exclusion{on: true}
	for _, i := range idx {
		x.tried.add(i)
	}
	return x
}

func TestBalancerNoUsableEndpoint(t *testing.T) {
	for name, newBal := range balancers {
		t.Run(name, func(t *testing.T) {
			tests := []struct {
				name string
				caps []int
				full []int // endpoints at their limit
				excl []int // endpoints the call may not use
			}{
				{"one full", []int{3}, []int{0}, nil},
				{"one excluded", []int{3}, nil, []int{0}},
				{"all full", []int{2, 20, 200}, []int{0, 1, 2}, nil},
				{"all excluded", []int{2, 20, 200}, nil, []int{0, 1, 2}},
				{"full or excluded", []int{5, 5, 5, 5}, []int{0, 2}, []int{1, 3}},
				{"1000 all full", equalCaps(1000, 20), seq(1000), nil},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					p, _ := balancerPool(t, newBal(), tt.caps...)
					for _, i := range tt.full {
						p.eps[i].inFlight.Store(p.eps[i].limit.Load())
					}
					got := picks(p, excluding(tt.excl...), 200)
					assert.Equal(t, 200, got[len(got)-1], "picks: %v", got)
				})
			}
		})
	}
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// TestBalancerNeverFullOrExcluded drives every balancer through random
// states and checks each answer: a usable endpoint, or -1 only when none is.
func TestBalancerNeverFullOrExcluded(t *testing.T) {
	for name, newBal := range balancers {
		t.Run(name, func(t *testing.T) {
			for _, n := range []int{1, 2, 3, 10, 100} {
				caps := make([]int, n)
				for i := range caps {
					caps[i] = 1 + i%7*3
				}
				p, _ := balancerPool(t, newBal(), caps...)
				r := rand.New(rand.NewPCG(uint64(n), 7))
				for range 2000 {
					c := &exclusion{on: r.IntN(2) == 0}
					usable := 0
					for i, ep := range p.eps {
						ep.inFlight.Store(r.Int32N(ep.max + 1))
						if r.IntN(4) == 0 {
							c.tried.add(i)
						}
						if !c.excluded(i) && ep.inFlight.Load() < ep.limit.Load() {
							usable++
						}
						if r.IntN(3) == 0 {
							ep.lat.observe(p.nanotime(), float64(r.IntN(500)+1)*1e6, false)
						}
					}
					got := p.bal.Pick(Candidates{p: p, x: *c})
					if usable == 0 {
						require.Equal(t, -1, got, "n=%d: nothing usable", n)
						continue
					}
					require.GreaterOrEqual(t, got, 0, "n=%d: %d usable, none picked", n, usable)
					require.False(t, c.excluded(got), "n=%d: picked excluded %d", n, got)
					ep := p.eps[got]
					require.Less(t, ep.inFlight.Load(), ep.limit.Load(), "n=%d: picked full %d", n, got)
				}
			}
		})
	}
}

// TestBalancerEqualShares: idle endpoints with equal caps get equal shares
// (invariant 6); the only usable one of many is found.
func TestBalancerEqualShares(t *testing.T) {
	for name, newBal := range balancers {
		t.Run(name, func(t *testing.T) {
			const n, draws = 5, 50000
			p, _ := balancerPool(t, newBal(), equalCaps(n, 20)...)
			got := picks(p, &exclusion{}, draws)
			for i := range n {
				// 5σ of a binomial(50000, 0.2) is 447.
				assert.InDelta(t, draws/n, got[i], 450, "endpoint %d: %v", i, got)
			}

			p, _ = balancerPool(t, newBal(), equalCaps(1000, 20)...)
			for _, ep := range p.eps {
				ep.inFlight.Store(20)
			}
			p.eps[737].inFlight.Store(19)
			got = picks(p, &exclusion{}, 100)
			assert.Equal(t, 100, got[737], "the one free endpoint of 1000")
		})
	}
}

func TestBalancerSharesAmongUsable(t *testing.T) {
	for name, newBal := range balancers {
		t.Run(name, func(t *testing.T) {
			const draws = 30000
			p, _ := balancerPool(t, newBal(), equalCaps(6, 20)...)
			p.eps[1].inFlight.Store(20)
			p.eps[4].inFlight.Store(20)
			got := picks(p, excluding(2), draws)
			assert.Zero(t, got[1]+got[2]+got[4]+got[6], "full, excluded or none: %v", got)
			for _, i := range []int{0, 3, 5} {
				assert.InDelta(t, draws/3, got[i], 450, "endpoint %d: %v", i, got)
			}
		})
	}
}

func TestLeastLoadedPicksLowerShareOfLimit(t *testing.T) {
	tests := []struct {
		name     string
		caps     []int
		inFlight []int
		want     int
	}{
		{"fewer in flight", []int{20, 20}, []int{3, 5}, 0},
		{"lower share of a smaller cap", []int{20, 10}, []int{10, 4}, 1},
		{"lower share of a larger cap", []int{200, 20}, []int{50, 6}, 0},
		{"idle beats busy", []int{20, 20}, []int{19, 0}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := balancerPool(t, LeastLoaded(), tt.caps...)
			for i, n := range tt.inFlight {
				p.eps[i].inFlight.Store(int32(n))
			}
			// With two endpoints both are always drawn: P2C is exact.
			got := picks(p, &exclusion{}, 100)
			assert.Equal(t, 100, got[tt.want], "picks: %v", got)
		})
	}
}

// TestLeastLoadedEvensLoad: with one endpoint busier than the rest, random
// still sends it its share by free slots, least-loaded much less.
func TestLeastLoadedEvensLoad(t *testing.T) {
	const draws = 20000
	share := map[string]int{}
	for name, newBal := range map[string]func() Balancer{"Random": Random, "LeastLoaded": LeastLoaded} {
		p, _ := balancerPool(t, newBal(), equalCaps(5, 20)...)
		p.eps[0].inFlight.Store(10)
		for _, ep := range p.eps[1:] {
			ep.inFlight.Store(2)
		}
		share[name] = picks(p, &exclusion{}, draws)[0]
	}
	// Random: 10 of 82 free slots, 12 %. P2C: endpoint 0 loses every pair.
	assert.InDelta(t, draws*10/82, share["Random"], 400)
	assert.Zero(t, share["LeastLoaded"])
}

func TestLatencyAwarePicksLowerCost(t *testing.T) {
	ms := float64(time.Millisecond)
	tests := []struct {
		name     string
		latency  []float64 // 0: no estimate
		inFlight []int
		want     int
	}{
		{"faster", []float64{500 * ms, 50 * ms}, []int{0, 0}, 1},
		{"faster but busy", []float64{500 * ms, 50 * ms}, []int{0, 10}, 0},
		{"slower but idle loses to 8 in flight", []float64{500 * ms, 50 * ms}, []int{0, 8}, 1},
		{"equal cost: less loaded", []float64{500 * ms, 50 * ms}, []int{0, 9}, 0},
		{"unknown and idle gets tried", []float64{0, 50 * ms}, []int{0, 0}, 0},
		{"unknown with a call out is avoided", []float64{0, 50 * ms}, []int{1, 15}, 1},
		{"both unknown: less loaded", []float64{0, 0}, []int{2, 1}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := balancerPool(t, LatencyAware(), 20, 20)
			for i := range tt.latency {
				if tt.latency[i] > 0 {
					p.eps[i].lat.observe(p.nanotime(), tt.latency[i], false)
				}
				p.eps[i].inFlight.Store(int32(tt.inFlight[i]))
			}
			got := picks(p, &exclusion{}, 100)
			assert.Equal(t, 100, got[tt.want], "picks: %v", got)
		})
	}
}

// TestLatencyAwareWinsBackRecoveredEndpoint: an endpoint that was slow stops
// getting calls, is probed again once its estimate has decayed below the
// others', and, fast again, gets its share back.
func TestLatencyAwareWinsBackRecoveredEndpoint(t *testing.T) {
	p, clk := balancerPool(t, LatencyAware(), 20, 20, 20)
	fast, slow := 50*time.Millisecond, 500*time.Millisecond
	step := 100 * time.Millisecond
	observe := func(i int, d time.Duration) { p.eps[i].lat.observe(p.nanotime(), float64(d), false) }
	observe(0, slow)
	observe(1, fast)
	observe(2, fast)

	got := picks(p, &exclusion{}, 3000)
	assert.Zero(t, got[0], "slow endpoint picked: %v", got)

	// Time passes; the fast endpoints keep answering in 50 ms, the slow one
	// gets nothing. Its estimate decays toward zero: below 50 ms after
	// 10 s × ln 10 = 23 s.
	var probedAfter time.Duration
	for elapsed := time.Duration(0); elapsed < time.Minute; elapsed += step {
		clk.Advance(step)
		observe(1, fast)
		observe(2, fast)
		if picks(p, &exclusion{}, 30)[0] > 0 {
			probedAfter = elapsed + step
			break
		}
	}
	require.NotZero(t, probedAfter, "slow endpoint never probed again")
	assert.InDelta(t, 23*time.Second, probedAfter, float64(2*time.Second))

	// Recovered: it now answers in 50 ms too, and gets a third of the calls.
	for range 50 {
		clk.Advance(step)
		for i := range 3 {
			observe(i, fast)
		}
	}
	got = picks(p, &exclusion{}, 30000)
	assert.InDelta(t, 10000, got[0], 600, "share after recovery: %v", got)
}

// TestPickNoAllocs: a pick allocates nothing, whatever the balancer.
func TestPickNoAllocs(t *testing.T) {
	for name, newBal := range balancers {
		t.Run(name, func(t *testing.T) {
			p, _ := balancerPool(t, newBal(), equalCaps(100, 20)...)
			for i, ep := range p.eps {
				ep.inFlight.Store(int32(i % 21))
				ep.lat.observe(p.nanotime(), float64(i+1)*1e6, false)
			}
			s := Candidates{p: p}
			allocs := testing.AllocsPerRun(1000, func() { p.bal.Pick(s) })
			assert.Zero(t, allocs)
		})
	}
}
