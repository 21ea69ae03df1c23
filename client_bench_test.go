package amlpool_test

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

var seedDuration = flag.Duration("seed.duration", 3*time.Second, "how long each side of BenchmarkSeedWorkload drives load")

// BenchmarkSeedWorkload drives the seed workload — 5 endpoints × 20 slots,
// 50 ms latency, on loopback fakes — through the pool with 3× more callers
// than slots, and, in the same run, through a perfect client: one goroutine
// per slot, pinned to its endpoint, plain net/http. It reports both rates,
// their ratio (goal ≥ 0.99) and the throttles the servers saw (goal 0):
//
//	go test -run '^$' -bench SeedWorkload -benchtime 1x .
func BenchmarkSeedWorkload(b *testing.B) {
	const endpoints, mcc, latency = 5, 20, 50 * time.Millisecond
	servers := make([]*amltest.Server, endpoints)
	eps := make([]amlpool.Endpoint, endpoints)
	for i := range servers {
		servers[i] = amltest.NewServer(amltest.Config{MaxConcurrentCalls: mcc, Latency: latency})
		defer servers[i].Close()
		eps[i] = servers[i].Endpoint()
	}
	c, err := amlpool.New(eps)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: mcc}}
	defer hc.CloseIdleConnections()

	var perfect, pooled float64
	var throttles int64
	for b.Loop() {
		perfect = closedLoop(*seedDuration, endpoints*mcc, func(ctx context.Context, i int) error {
			ep := eps[i%endpoints]
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader([]byte(body)))
			req.Header.Set("Authorization", "Bearer "+ep.APIKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			_, err = io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusOK {
				return io.ErrUnexpectedEOF
			}
			return err
		})
		for _, s := range servers {
			s.ResetStats()
		}
		pooled = closedLoop(*seedDuration, 3*endpoints*mcc, func(ctx context.Context, _ int) error {
			_, err := c.Do(ctx, []byte(body))
			return err
		})
		for _, s := range servers {
			throttles += s.Stats().Throttled
		}
	}
	b.ReportMetric(perfect, "perfect-calls/s")
	b.ReportMetric(pooled, "pool-calls/s")
	b.ReportMetric(pooled/perfect, "pool/perfect")
	b.ReportMetric(float64(throttles), "throttles")
}

// closedLoop runs callers goroutines calling f back to back for d and
// returns the rate of successful calls. Calls cut short by the end of the run
// do not count.
func closedLoop(d time.Duration, callers int, f func(ctx context.Context, caller int) error) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var ok atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if f(ctx, i) == nil {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return float64(ok.Load()) / time.Since(start).Seconds()
}
