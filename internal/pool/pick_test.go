package pool

import (
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

// pickCounts acquires and releases n times at light load (one call at a
// time) and counts where each went.
func pickCounts(t *testing.T, p *Pool, n int) []int {
	t.Helper()
	counts := make([]int, len(p.Set().Eps))
	for range n {
		slot := acquire(t, p)
		counts[index(p, slot.Ep)]++
		release(p, slot)
	}
	return counts
}

func TestRandomSharesAreEqualForEqualCaps(t *testing.T) {
	t.Parallel()
	p := testPool(t, 20, 20, 20, 20, 20)
	counts := pickCounts(t, p, 50000)
	x := chiSquare(counts, []float64{1, 1, 1, 1, 1})
	assert.Less(t, x, chi001[4], "counts %v", counts)
}

func TestRandomSharesFollowCaps(t *testing.T) {
	t.Parallel()
	for _, table := range []bool{true, false} {
		p := testPool(t, 20, 20, 200)
		if !table {
			p.Set().slots = nil // as for a set too large for a slot table: a binary search
		}
		counts := pickCounts(t, p, 48000)
		x := chiSquare(counts, []float64{20, 20, 200})
		assert.Less(t, x, chi001[2], "slot table %v: counts %v", table, counts)
	}
}

// With some slots held, a free slot anywhere is equally likely: shares follow
// free slots, not caps.
func TestRandomSharesFollowFreeSlots(t *testing.T) {
	t.Parallel()
	p := testPool(t, 10, 10, 10)
	var held []Slot
	for range 8 { // endpoint 0 keeps 2 free, the others 10
		slot, ok := p.TryTake(p.Set().Eps[0])
		require.True(t, ok)
		held = append(held, slot)
	}
	counts := pickCounts(t, p, 22000)
	x := chiSquare(counts, []float64{2, 10, 10})
	assert.Less(t, x, chi001[2], "counts %v", counts)
	for _, slot := range held {
		p.Release(slot, &Report{Result: Unsent}, nil)
	}
}

func TestRandomNeverPicksFullOrExcludedEndpoints(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1, 1, 1, 1)
	s := p.Set()
	require.True(t, took(s.Eps[1]))
	x := excluding(p, 2)
	for range 1000 {
		i := PickRandom(s, x)
		require.Contains(t, []int{0, 3}, i)
	}
	require.True(t, took(s.Eps[0]))
	require.True(t, took(s.Eps[3]))
	assert.Equal(t, -1, PickRandom(s, x))
}

// builtinPicker is the signature of this package's pickers, which the Pool
// calls directly (Config.Balance) with the attempt's exclusion by pointer.
type builtinPicker = func(s *Set, x *Exclusion) int

// pickers is every built-in picker; the suite below runs against each.
var pickers = map[string]builtinPicker{
	"Random":       PickRandom,
	"LeastLoaded":  PickLeastLoaded,
	"LatencyAware": PickLatency,
}

// balances is every way a Pool picks: each built-in picker, and a custom
// Picker (one that calls PickRandom) as a caller's would be.
var balances = map[string]Balance{"Random": Random, "LeastLoaded": LeastLoaded, "LatencyAware": Latency, "Custom": Custom}

// custom returns a Picker for Config.Pick when b is Custom, else nil.
func custom(b Balance) Picker {
	if b != Custom {
		return nil
	}
	return func(s *Set, x Exclusion) int { return PickRandom(s, &x) }
}

// balancerPool returns a pool over endpoints with the given caps, a
// deterministic random source (single goroutine only) and a fake clock.
func balancerPool(t testing.TB, caps ...int) (*Pool, *clock.Fake) {
	t.Helper()
	rnd := rand.New(rand.NewPCG(1, 2))
	return newTestPool(t, Config{Rand: rnd.Uint64}, testSpecs(caps...))
}

// picks counts pick's answers over n calls, by index; -1 is at the end.
func picks(p *Pool, pick builtinPicker, x *Exclusion, n int) []int {
	s := p.Set()
	counts := make([]int, len(s.Eps)+1)
	for range n {
		i := pick(s, x)
		if i < 0 {
			counts[len(s.Eps)]++
		} else {
			counts[i]++
		}
	}
	return counts
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

func TestPickerNoUsableEndpoint(t *testing.T) {
	t.Parallel()
	for name, pick := range pickers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
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
					p, _ := balancerPool(t, tt.caps...)
					for _, i := range tt.full {
						e := p.Set().Eps[i]
						e.storeHeld(e.limit.Load())
					}
					got := picks(p, pick, excluding(p, tt.excl...), 200)
					assert.Equal(t, 200, got[len(got)-1], "picks: %v", got)
				})
			}
		})
	}
}

// TestPickerNeverFullOrExcluded drives every picker through random states
// and checks each answer: a usable endpoint, or -1 only when none is.
func TestPickerNeverFullOrExcluded(t *testing.T) {
	t.Parallel()
	for name, pick := range pickers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for _, n := range []int{1, 2, 3, 10, 100} {
				caps := make([]int, n)
				for i := range caps {
					caps[i] = 1 + i%7*3
				}
				p, _ := balancerPool(t, caps...)
				s := p.Set()
				r := rand.New(rand.NewPCG(uint64(n), 7))
				for range 2000 {
					x := &Exclusion{On: r.IntN(2) == 0}
					usable := 0
					for _, e := range s.Eps {
						e.storeHeld(r.Int32N(e.max.Load() + 1))
						if r.IntN(4) == 0 {
							x.Tried.Add(e)
						}
						if !x.Excludes(e) && e.held() < e.limit.Load() {
							usable++
						}
						if r.IntN(3) == 0 {
							e.lat.observe(p.Nanotime(), float64(r.IntN(500)+1)*1e6, false)
						}
					}
					got := pick(s, x)
					if usable == 0 {
						require.Equal(t, -1, got, "n=%d: nothing usable", n)
						continue
					}
					require.GreaterOrEqual(t, got, 0, "n=%d: %d usable, none picked", n, usable)
					e := s.Eps[got]
					require.False(t, x.Excludes(e), "n=%d: picked excluded %d", n, got)
					require.Less(t, e.held(), e.limit.Load(), "n=%d: picked full %d", n, got)
				}
			}
		})
	}
}

// TestPickerEqualShares: idle endpoints with equal caps get equal shares;
// the only usable one of many is found.
func TestPickerEqualShares(t *testing.T) {
	t.Parallel()
	for name, pick := range pickers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const n, draws = 5, 50000
			p, _ := balancerPool(t, equalCaps(n, 20)...)
			got := picks(p, pick, &Exclusion{}, draws)
			for i := range n {
				// 5σ of a binomial(50000, 0.2) is 447.
				assert.InDelta(t, draws/n, got[i], 450, "endpoint %d: %v", i, got)
			}

			p, _ = balancerPool(t, equalCaps(1000, 20)...)
			for _, e := range p.Set().Eps {
				e.storeHeld(20)
			}
			p.Set().Eps[737].storeHeld(19)
			got = picks(p, pick, &Exclusion{}, 100)
			assert.Equal(t, 100, got[737], "the one free endpoint of 1000")
		})
	}
}

func TestPickerSharesAmongUsable(t *testing.T) {
	t.Parallel()
	for name, pick := range pickers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const draws = 30000
			p, _ := balancerPool(t, equalCaps(6, 20)...)
			p.Set().Eps[1].storeHeld(20)
			p.Set().Eps[4].storeHeld(20)
			got := picks(p, pick, excluding(p, 2), draws)
			assert.Zero(t, got[1]+got[2]+got[4]+got[6], "full, excluded or none: %v", got)
			for _, i := range []int{0, 3, 5} {
				assert.InDelta(t, draws/3, got[i], 450, "endpoint %d: %v", i, got)
			}
		})
	}
}

// Pickers see health too: an ejected or cooling endpoint is not picked
// (the Client's pickers are trusted to check it: Config.Balance).
func TestPickerSkipsUnhealthyEndpoints(t *testing.T) {
	t.Parallel()
	for name, pick := range pickers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := balancerPool(t, equalCaps(5, 20)...)
			p.cfg.EjectAfter, p.cfg.EjectFor = 1, time.Minute
			report(p, 1, Failed, false)
			reportCool(p, 3, Full, false, time.Second)
			got := picks(p, pick, &Exclusion{}, 3000)
			assert.Zero(t, got[1]+got[3]+got[5], "ejected, cooling or none: %v", got)
		})
	}
}
