package amlpool

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// latencyWindow tracks the latency of recent successful attempts across the
// pool, to answer "what is the q-quantile?" for hedging. Samples go into
// log-spaced buckets, 8 per power of two (about 9 % wide), of two
// generations: the current one and the one before, each hedgeWindow long
// and aligned to multiples of it in pool time, so the quantile covers the
// last one to two windows. The generations move on with time, not only with
// samples: after a quiet spell the old samples are forgotten when the
// quantile is next asked for.
type latencyWindow struct {
	q       float64
	minimum int64 // samples needed before quantile means something

	// mu guards the buckets, the generation's number and since.
	mu       sync.Mutex
	cur, old [histBuckets]int64
	ncur     int64
	nold     int64
	since    int // samples since value was last computed

	gen   atomic.Int64 // the current generation: pool time / hedgeWindow; written under mu
	value atomic.Int64 // the quantile in nanoseconds; 0 until known
}

const (
	histSub     = 8 // buckets per power of two
	histBuckets = 40 * histSub
	// hedgeWindow is how long one generation of the latency histogram lasts.
	hedgeWindow = 10 * time.Second
	// histRefresh is how many samples pass between quantile computations.
	histRefresh = 32
)

func newLatencyWindow(q float64) *latencyWindow {
	// Ten samples above the quantile before trusting it: 200 for p95.
	return &latencyWindow{q: q, minimum: int64(math.Ceil(10 / (1 - q)))}
}

// bucket maps a latency in nanoseconds to its bucket. Bucket b holds units
// of 1024 ns in [(8+s)·2^o/8, (9+s)·2^o/8) for o = b/8 + 3, s = b%8; anything
// under 8 units (8 µs) goes to bucket 0.
func bucket(ns int64) int {
	u := max(uint64(ns)>>10, 8)
	o := 63 - bits.LeadingZeros64(u)
	s := int(u>>(o-3)) & (histSub - 1)
	return min((o-3)*histSub+s, histBuckets-1)
}

// bucketTop is the end of bucket b in nanoseconds: above all it holds.
func bucketTop(b int) int64 {
	o, s := b/histSub+3, int64(b%histSub)
	return (histSub + s + 1) << o >> 3 << 10
}

// add records a successful attempt of rtt nanoseconds that ended at now (in
// pool time).
func (w *latencyWindow) add(now, rtt int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rotateLocked(now / int64(hedgeWindow)) {
		w.since = histRefresh - 1 // recompute with this sample
	}
	w.cur[bucket(rtt)]++
	w.ncur++
	if w.since++; w.since >= histRefresh || w.value.Load() == 0 {
		w.since = 0
		w.value.Store(w.quantileLocked())
	}
}

// rotateLocked moves the generations on to generation g, when that is
// later than the current one, and reports whether it did.
func (w *latencyWindow) rotateLocked(g int64) bool {
	cur := w.gen.Load()
	if g <= cur {
		return false
	}
	w.old, w.nold = w.cur, w.ncur
	if g > cur+1 {
		w.old, w.nold = [histBuckets]int64{}, 0 // the current one is stale too
	}
	w.cur, w.ncur = [histBuckets]int64{}, 0
	w.gen.Store(g)
	return true
}

func (w *latencyWindow) quantileLocked() int64 {
	n := w.ncur + w.nold
	if n < w.minimum {
		return 0
	}
	rank := int64(math.Ceil(w.q * float64(n)))
	for b := range histBuckets {
		if rank -= w.cur[b] + w.old[b]; rank <= 0 {
			return bucketTop(b)
		}
	}
	return bucketTop(histBuckets - 1)
}

// quantile returns the tracked quantile at now (pool time), or 0 while too
// few samples are in. It costs two atomic loads unless a generation has
// ended since the last sample or call.
func (w *latencyWindow) quantile(now int64) time.Duration {
	if g := now / int64(hedgeWindow); g > w.gen.Load() {
		w.mu.Lock()
		if w.rotateLocked(g) {
			w.since = 0
			w.value.Store(w.quantileLocked())
		}
		w.mu.Unlock()
	}
	return time.Duration(w.value.Load())
}
