package amlpool

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

const ms = float64(time.Millisecond)

func TestPeakEWMA(t *testing.T) {
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
	var l peakEWMA
	l.observe(0, 100*ms, false)
	l.observe(int64(time.Second), 1*ms, true)
	assert.InDelta(t, 100*ms*math.Exp(-0.1), l.at(int64(time.Second)), 1)
	l.observe(int64(time.Second), 3000*ms, true)
	assert.Equal(t, 3000*ms, l.at(int64(time.Second)))
}

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for ns := int64(0); ns < int64(200*time.Second); ns = ns*21/20 + 1000 {
		b := bucket(ns)
		assert.GreaterOrEqual(t, b, prev, "buckets must not decrease: %v", time.Duration(ns))
		prev = b
		top := bucketTop(b)
		assert.Greater(t, top, ns, "bucket of %v ends at %v", time.Duration(ns), time.Duration(top))
		if ns > int64(100*time.Microsecond) {
			assert.Less(t, float64(top), float64(ns)*1.13+1024, "bucket of %v too wide", time.Duration(ns))
		}
	}
}

func TestLatencyWindowQuantile(t *testing.T) {
	w := newLatencyWindow(0.95)
	sec := int64(time.Second)
	// 1 ms to 1000 ms, each once, within one window: p95 is 950 ms.
	for i := int64(1); i <= 1000; i++ {
		if i == 150 {
			assert.Zero(t, w.quantile(), "quantile before 200 samples")
		}
		w.add(sec+i, i*int64(time.Millisecond))
	}
	assert.InDelta(t, 950*ms, float64(w.quantile()), 0.1*950*ms)

	// Two windows later with only fast samples, the slow ones are forgotten.
	for i := range int64(1000) {
		w.add(25*sec+i*int64(time.Millisecond), int64(10*time.Millisecond))
	}
	assert.InDelta(t, 10*ms, float64(w.quantile()), 1*ms)
}
