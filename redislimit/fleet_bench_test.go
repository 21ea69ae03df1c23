package redislimit

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/amlpool/amlpool/internal/redistest"
)

// BenchmarkFleetSeed is the seed workload split over a fleet: 5 endpoints ×
// 20 slots at 50 ms, 300 callers spread over 10 replicas, each an OS
// process with its own Client and Limiter, on one real redis-server. It
// reports what the endpoints saw, sampled every millisecond:
//
//	busy        calls in the endpoints' handlers ÷ their 100 slots
//	peak        the most calls one endpoint had at once (cap 20)
//	throttled   503s the endpoints sent (0 when no cap was passed)
//	failed      calls that returned an error
//	rtt/call    Redis round trips per call, fleet-wide
//	calls/s     the fleet's rate (capacity 2000/s)
//	min/max     the fewest and most calls one replica made in the window
//	            (fairness)
//
// It runs once whatever b.N is (about 10 s):
//
//	go test -run '^$' -bench FleetSeed -benchtime 1x ./redislimit
func BenchmarkFleetSeed(b *testing.B) {
	const (
		replicas = 10
		callers  = 30 // per replica: 300 in all for 100 slots
		latency  = 50 * time.Millisecond
		warmup   = time.Second
		window   = 5 * time.Second
	)
	rs := redistest.Start(b)
	for b.Loop() {
		srvs, eps := fleetEndpoints(b, latency, 20, 20, 20, 20, 20)
		cfg := workerConfig{Mode: "run", Redis: rs.Addr, Endpoints: eps, Goroutines: callers,
			Warmup: warmup, Run: warmup + window, TTL: DefaultTTL, Timeout: time.Second}
		var ws []*worker
		for range replicas {
			ws = append(ws, startWorker(b, cfg))
		}
		start := launch(b, ws)
		time.Sleep(time.Until(start.Add(warmup)))
		var samples, busy int64
		for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(time.Millisecond) {
			for _, s := range srvs {
				busy += s.Stats().InFlight
			}
			samples++
		}
		var calls, failed, rtts int64
		var perReplica []int64
		for _, w := range ws {
			r := w.result(b)
			calls += r.Calls
			failed += r.Errors
			rtts += r.Limiter.RoundTrips
			perReplica = append(perReplica, r.Window)
		}
		var throttled, peak int64
		for _, s := range srvs {
			st := s.Stats()
			throttled += st.Throttled
			peak = max(peak, st.PeakInFlight)
		}
		slices.Sort(perReplica)
		b.ReportMetric(float64(busy)/float64(samples)/100, "busy")
		b.ReportMetric(float64(peak), "peak")
		b.ReportMetric(float64(throttled), "throttled")
		b.ReportMetric(float64(failed), "failed")
		b.ReportMetric(float64(rtts)/float64(max(calls, 1)), "rtt/call")
		b.ReportMetric(float64(calls)/(warmup+window).Seconds(), "calls/s")
		b.ReportMetric(float64(perReplica[0]), "min")
		b.ReportMetric(float64(perReplica[len(perReplica)-1]), "max")
		b.Logf("calls per replica: %v", fmt.Sprint(perReplica))
	}
}
