package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLeastLoadedPicksLowerShareOfLimit(t *testing.T) {
	t.Parallel()
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
			t.Parallel()
			p, _ := balancerPool(t, tt.caps...)
			for i, n := range tt.inFlight {
				p.Set().Eps[i].storeHeld(int32(n))
			}
			// With two endpoints both are always drawn: P2C is exact.
			got := picks(p, PickLeastLoaded, &Exclusion{}, 100)
			assert.Equal(t, 100, got[tt.want], "picks: %v", got)
		})
	}
}

// TestLeastLoadedEvensLoad: with one endpoint busier than the rest, random
// still sends it its share by free slots, least-loaded much less.
func TestLeastLoadedEvensLoad(t *testing.T) {
	t.Parallel()
	const draws = 20000
	share := map[string]int{}
	for _, name := range []string{"Random", "LeastLoaded"} {
		p, _ := balancerPool(t, equalCaps(5, 20)...)
		p.Set().Eps[0].storeHeld(10)
		for _, e := range p.Set().Eps[1:] {
			e.storeHeld(2)
		}
		share[name] = picks(p, pickers[name], &Exclusion{}, draws)[0]
	}
	// Random: 10 of 82 free slots, 12 %. P2C: endpoint 0 loses every pair.
	assert.InDelta(t, draws*10/82, share["Random"], 400)
	assert.Zero(t, share["LeastLoaded"])
}

func TestLatencyAwarePicksLowerCost(t *testing.T) {
	t.Parallel()
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
			t.Parallel()
			p, _ := balancerPool(t, 20, 20)
			for i, e := range p.Set().Eps {
				if tt.latency[i] > 0 {
					e.lat.observe(p.Nanotime(), tt.latency[i], false)
				}
				e.storeHeld(int32(tt.inFlight[i]))
			}
			got := picks(p, PickLatency, &Exclusion{}, 100)
			assert.Equal(t, 100, got[tt.want], "picks: %v", got)
		})
	}
}

// TestLatencyAwareWinsBackRecoveredEndpoint: an endpoint that was slow stops
// getting calls, is probed again once its estimate has decayed below the
// others', and, fast again, gets its share back.
func TestLatencyAwareWinsBackRecoveredEndpoint(t *testing.T) {
	t.Parallel()
	p, clk := balancerPool(t, 20, 20, 20)
	fast, slow := 50*time.Millisecond, 500*time.Millisecond
	step := 100 * time.Millisecond
	observe := func(i int, d time.Duration) { p.Set().Eps[i].lat.observe(p.Nanotime(), float64(d), false) }
	observe(0, slow)
	observe(1, fast)
	observe(2, fast)

	got := picks(p, PickLatency, &Exclusion{}, 3000)
	assert.Zero(t, got[0], "slow endpoint picked: %v", got)

	// Time passes; the fast endpoints keep answering in 50 ms, the slow one
	// gets nothing. Its estimate decays toward zero: below 50 ms after
	// 10 s × ln 10 = 23 s.
	var probedAfter time.Duration
	for elapsed := time.Duration(0); elapsed < time.Minute; elapsed += step {
		clk.Advance(step)
		observe(1, fast)
		observe(2, fast)
		if picks(p, PickLatency, &Exclusion{}, 30)[0] > 0 {
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
	got = picks(p, PickLatency, &Exclusion{}, 30000)
	assert.InDelta(t, 10000, got[0], 600, "share after recovery: %v", got)
}

// TestPickNoAllocs: a pick allocates nothing, whatever the picker.
func TestPickNoAllocs(t *testing.T) {
	// Not parallel: AllocsPerRun counts every goroutine's allocations.
	for name, pick := range pickers {
		t.Run(name, func(t *testing.T) {
			p, _ := balancerPool(t, equalCaps(100, 20)...)
			for i, e := range p.Set().Eps {
				e.storeHeld(int32(i % 21))
				e.lat.observe(p.Nanotime(), float64(i+1)*1e6, false)
			}
			s, x := p.Set(), Exclusion{}
			allocs := testing.AllocsPerRun(1000, func() { pick(s, &x) })
			assert.Zero(t, allocs)
		})
	}
}
