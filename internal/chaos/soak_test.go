package chaos

import (
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/amlpool/amlpool"
)

// BenchmarkSoak runs the chaos mix, network faults included, for
// -chaos.duration (default 1 minute; the README's figures are from 10
// minutes) and samples the heap and the goroutine count every 10 seconds
// (not counting toxiproxy's, see ignoreToxiproxy). It fails if either grows: the last
// sample's heap more than 2× the first's plus 8 MiB, or more goroutines
// than the first sample plus 64 (the callers' churn). Not run by CI:
//
//	go test -run '^$' -bench Soak -benchtime 1x ./internal/chaos -chaos.duration=10m
func BenchmarkSoak(b *testing.B) {
	d := *flagDuration
	if d == 0 {
		d = time.Minute
	}
	seed := *flagSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	b.Logf("seed %d, %v", seed, d)
	for range b.N {
		type sample struct {
			at         time.Duration
			heap       uint64
			goroutines int
		}
		var samples []sample
		stop := make(chan struct{})
		var wg sync.WaitGroup
		start := time.Now()
		wg.Go(func() {
			tick := time.NewTicker(10 * time.Second)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				runtime.GC()
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				samples = append(samples, sample{time.Since(start).Round(time.Second), m.HeapAlloc, goroutines()})
			}
		})
		tl := runChaos(b, chaosConfig{
			caps: []int{4, 8, 16, 20}, callers: 96, duration: d, abandon: true, network: true,
			opts: []amlpool.Option{amlpool.WithBalancer(amlpool.LatencyAware()), amlpool.WithAdaptiveLimit(), amlpool.WithHedging(20 * time.Millisecond)},
		}, seed)
		close(stop)
		wg.Wait()
		report(b, tl)
		if len(samples) < 2 {
			b.Skip("too short to sample twice: give -chaos.duration of 20s or more")
		}
		first, last := samples[0], samples[len(samples)-1]
		var maxHeap uint64
		maxG := 0
		for _, s := range samples {
			maxHeap, maxG = max(maxHeap, s.heap), max(maxG, s.goroutines)
			b.Logf("%6v heap %6.1f MiB, %4d goroutines", s.at, float64(s.heap)/(1<<20), s.goroutines)
		}
		b.ReportMetric(float64(tl.calls.Load())/d.Seconds(), "calls/s")
		b.ReportMetric(float64(first.heap)/(1<<20), "MiB-heap-first")
		b.ReportMetric(float64(last.heap)/(1<<20), "MiB-heap-last")
		b.ReportMetric(float64(maxHeap)/(1<<20), "MiB-heap-max")
		b.ReportMetric(float64(first.goroutines), "goroutines-first")
		b.ReportMetric(float64(last.goroutines), "goroutines-last")
		b.ReportMetric(float64(maxG), "goroutines-max")
		if last.heap > 2*first.heap+8<<20 {
			b.Errorf("heap grew from %d to %d bytes", first.heap, last.heap)
		}
		if last.goroutines > first.goroutines+64 {
			b.Errorf("goroutines grew from %d to %d", first.goroutines, last.goroutines)
		}
	}
}

// goroutines counts the goroutines that are not toxiproxy's.
func goroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "github.com/Shopify/toxiproxy/") {
			count++
		}
	}
	return count
}
