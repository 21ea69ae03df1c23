package amlpool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

const ms = float64(time.Millisecond)

func TestHistogramBuckets(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
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
