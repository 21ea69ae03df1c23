package pool

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

const ms = float64(time.Millisecond)

func TestPeakEWMA(t *testing.T) {
	t.Parallel()
	sec := int64(time.Second)
	tests := []struct {
		name    string
		samples [][2]float64 // {time in s, latency in ms}, successes
		at      float64      // read time in s
		want    float64      // ms
	}{
		{"no sample", nil, 5, 0},
		{"first sample is the estimate", [][2]float64{{0, 50}}, 0, 50},
		{"a slower sample is taken at once", [][2]float64{{0, 50}, {0.001, 500}}, 0.001, 500},
		{"a faster one moves it by 1 − e^(−Δt/10 s)", [][2]float64{{0, 500}, {10, 50}}, 10,
			500*math.Exp(-1) + 50*(1-math.Exp(-1))},
		{"no samples: halves in 10 s × ln 2", [][2]float64{{0, 400}}, 10 * math.Ln2, 200},
		{"steady samples converge", steady(50, 1000, 0.01), 9.99, 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var l peakEWMA
			for _, s := range tt.samples {
				l.observe(int64(s[0]*float64(sec)), s[1]*ms, false)
			}
			assert.InDelta(t, tt.want*ms, l.at(int64(tt.at*float64(sec))), 0.01*ms)
		})
	}
}

func steady(latMS float64, n int, every float64) [][2]float64 {
	s := make([][2]float64, n)
	for i := range s {
		s[i] = [2]float64{float64(i) * every, latMS}
	}
	return s
}

// A failed attempt's latency is a lower bound: it may raise the estimate (a
// timeout), never lower it (a fast error must not attract calls).
func TestPeakEWMAFailuresOnlyRaise(t *testing.T) {
	t.Parallel()
	var l peakEWMA
	l.observe(0, 100*ms, false)
	l.observe(int64(time.Second), 1*ms, true)
	assert.InDelta(t, 100*ms*math.Exp(-0.1), l.at(int64(time.Second)), 1)
	l.observe(int64(time.Second), 3000*ms, true)
	assert.Equal(t, 3000*ms, l.at(int64(time.Second)))
}
