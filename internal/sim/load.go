package sim

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Call is one call of the load: typically a Client's Do.
type Call func(ctx context.Context) error

// Result is what a load saw: the latency of every successful call and when
// each call ended.
type Result struct {
	Start    time.Time
	Duration time.Duration // how long the load ran, its last calls excluded

	mu   sync.Mutex // guards the fields below
	lat  []time.Duration
	ends []end
	ok   int
	fail int
}

type end struct {
	at time.Time
	ok bool
}

func (r *Result) record(start time.Time, err error) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ends = append(r.ends, end{now, err == nil})
	if err != nil {
		r.fail++
		return
	}
	r.ok++
	r.lat = append(r.lat, now.Sub(start))
}

// OK and Failed count the calls that succeeded and failed.
func (r *Result) OK() int { r.mu.Lock(); defer r.mu.Unlock(); return r.ok }

// Failed counts the calls that failed.
func (r *Result) Failed() int { r.mu.Lock(); defer r.mu.Unlock(); return r.fail }

// Goodput returns successful calls per second over the load's duration.
func (r *Result) Goodput() float64 { return float64(r.OK()) / r.Duration.Seconds() }

// GoodputBetween returns successful calls per second among those that ended
// in [from, to) after the load's start.
func (r *Result) GoodputBetween(from, to time.Duration) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.ends {
		if d := e.at.Sub(r.Start); e.ok && d >= from && d < to {
			n++
		}
	}
	return float64(n) / (to - from).Seconds()
}

// Quantile returns the q-quantile of the successful calls' latencies.
func (r *Result) Quantile(q float64) time.Duration {
	r.mu.Lock()
	lat := slices.Clone(r.lat)
	r.mu.Unlock()
	return Quantile(lat, q)
}

// Quantile returns the q-quantile (nearest rank) of ds, or 0 if ds is empty.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	i := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// OpenLoop makes calls at Poisson arrivals of rate per second for d, each
// in its own goroutine whatever the others do (as independent users would),
// and returns once every call has ended.
func OpenLoop(ctx context.Context, rate float64, d time.Duration, rng *rand.Rand, call Call) *Result {
	r := &Result{Start: time.Now(), Duration: d}
	var wg sync.WaitGroup
	for next := time.Duration(0); ; {
		next += time.Duration(rng.ExpFloat64() / rate * float64(time.Second))
		if next >= d {
			break
		}
		time.Sleep(next - time.Since(r.Start))
		wg.Go(func() {
			start := time.Now()
			r.record(start, call(ctx))
		})
	}
	wg.Wait()
	return r
}

// ClosedLoop runs workers goroutines that each make one call after another
// for d, and returns once every call has ended. A worker whose call failed
// pauses for pause before its next call (at least 1 ms, so that failing
// calls cannot spin in virtual time).
func ClosedLoop(ctx context.Context, workers int, d, pause time.Duration, call Call) *Result {
	r := &Result{Start: time.Now(), Duration: d}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Since(r.Start) < d {
				start := time.Now()
				err := call(ctx)
				r.record(start, err)
				if err != nil {
					time.Sleep(max(pause, time.Millisecond))
				}
			}
		})
	}
	wg.Wait()
	return r
}
