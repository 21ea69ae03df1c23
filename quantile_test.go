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
			assert.Zero(t, w.quantile(sec+i), "quantile before 200 samples")
		}
		w.add(sec+i, i*int64(time.Millisecond))
	}
	assert.InDelta(t, 950*ms, float64(w.quantile(2*sec)), 0.1*950*ms)

	// Two windows later with only fast samples, the slow ones are forgotten.
	for i := range int64(1000) {
		w.add(25*sec+i*int64(time.Millisecond), int64(10*time.Millisecond))
	}
	assert.InDelta(t, 10*ms, float64(w.quantile(26*sec)), 1*ms)
}

// The window covers the last 10 to 20 seconds whether or not samples come:
// after a quiet spell, the quantile forgets the samples from before it.
func TestLatencyWindowForgetsAfterQuietSpell(t *testing.T) {
	t.Parallel()
	w := newLatencyWindow(0.5)
	sec := int64(time.Second)
	for i := range int64(100) {
		w.add(sec+i, 50*int64(time.Millisecond))
	}
	assert.InDelta(t, 50*ms, float64(w.quantile(2*sec)), 5*ms)
	// Generations are aligned to 10 s of pool time: at 19.9 s the samples
	// of 1 s are in the generation before the current one, at 20 s they are
	// gone, and no samples came since.
	assert.InDelta(t, 50*ms, float64(w.quantile(19*sec+9*sec/10)), 5*ms)
	assert.Zero(t, w.quantile(20*sec), "samples older than two windows")

	// Samples come again: the quantile is theirs alone once enough are in.
	for i := range int64(100) {
		w.add(21*sec+i, 10*int64(time.Millisecond))
	}
	assert.InDelta(t, 10*ms, float64(w.quantile(22*sec)), 1*ms)
}
