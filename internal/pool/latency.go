package pool

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// latencyDecay is the time constant of each endpoint's latency estimate:
// Finagle's and Linkerd's 10 s. A sample moves the estimate by 1 − e^(−Δt/10 s)
// of the way, where Δt is the time since the previous one, and without samples
// the estimate falls by e^(−t/10 s), so an endpoint nobody picks any more
// because it was slow looks fast again within tens of seconds and gets probed.
const latencyDecay = 10 * time.Second

// peakEWMA is an endpoint's latency estimate: an exponentially weighted moving
// average that jumps at once to any sample above it (the peak) and decays
// toward zero between samples. Zero means no sample yet, or none for hours.
//
// Picks read it without a lock on every call; samples, one per attempt, take
// mu. A pick that reads est and stamp between a sample's two stores sees a
// slightly wrong decay for that one pick, which a load heuristic can afford.
type peakEWMA struct {
	mu    sync.Mutex    // serialises observe
	est   atomic.Uint64 // math.Float64bits of the estimate in nanoseconds
	stamp atomic.Int64  // pool time (Pool.Nanotime) of the estimate
}

// at returns the estimate, in nanoseconds, decayed to pool time now.
func (l *peakEWMA) at(now int64) float64 {
	est := math.Float64frombits(l.est.Load())
	if est == 0 {
		return 0
	}
	if dt := now - l.stamp.Load(); dt > 0 {
		est *= math.Exp(-float64(dt) / float64(latencyDecay))
	}
	return est
}

// observe adds a sample of rtt nanoseconds that ended at pool time now. A
// lowerBound sample (an attempt that failed or was abandoned, whose real
// latency is unknown but at least rtt) can raise the estimate, never lower
// it: a fast failure must not make an endpoint look attractive.
func (l *peakEWMA) observe(now int64, rtt float64, lowerBound bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	est := math.Float64frombits(l.est.Load())
	dt := max(now-l.stamp.Load(), 0)
	w := math.Exp(-float64(dt) / float64(latencyDecay))
	switch cur := est * w; {
	case rtt > cur:
		est = rtt
	case lowerBound:
		return
	default:
		est = cur + rtt*(1-w)
	}
	l.est.Store(math.Float64bits(est))
	l.stamp.Store(now)
}
