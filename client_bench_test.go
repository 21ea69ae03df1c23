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

var seedCallers = flag.Int("seed.callers", 3, "callers per slot on the pool's side")

var seedDuration = flag.Duration("seed.duration", 8*time.Second, "how long each side of BenchmarkSeedWorkload drives load, in alternating turns")

// BenchmarkSeedWorkload drives the seed workload — 5 endpoints × 20 slots,
// 50 ms latency, on loopback fakes — through the pool with 3× more callers
// than slots, and, in the same run, through a perfect client: one goroutine
// per slot, pinned to its endpoint, plain net/http. It reports both rates,
// their ratio (goal ≥ 0.99) and the throttles the servers saw (goal 0). The
// two sides run in alternating 2 s turns, so that other load on the
// machine weighs on both alike:
//
//	go test -run '^$' -bench SeedWorkload -benchtime 1x .
func BenchmarkSeedWorkload(b *testing.B) {
	const endpoints, mcc, latency = 5, 20, 50 * time.Millisecond
	servers, eps, c := seedPool(b, endpoints, mcc, latency)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: mcc}}
	defer hc.CloseIdleConnections()

	perfectCall := func(ctx context.Context, i int) error {
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
	}
	poolCall := func(ctx context.Context, _ int) error {
		_, err := c.Do(ctx, []byte(body))
		return err
	}
	throttles := perfectVsPool(b, servers, endpoints*mcc, perfectCall, poolCall)
	b.ReportMetric(float64(throttles), "throttles")
}

// perfectVsPool runs perfectCall from one goroutine per slot and poolCall
// from *seedCallers as many, in alternating 2 s turns, so that other load
// on the machine weighs on both alike; it reports both rates and their
// ratio, and returns the throttles the servers saw in the pool's turns.
func perfectVsPool(b *testing.B, servers []*amltest.Server, slots int, perfectCall, poolCall func(context.Context, int) error) (throttles int64) {
	const turn = 2 * time.Second
	var perfectOK, poolOK int64
	var perfectTime, poolTime time.Duration
	for b.Loop() {
		for range max(1, int(*seedDuration/turn)) {
			n, d := closedLoop(turn, slots, perfectCall)
			perfectOK, perfectTime = perfectOK+n, perfectTime+d
			drain(b, servers) // calls cut short at the turn's end leave the servers first
			n, d = closedLoop(turn, *seedCallers*slots, poolCall)
			poolOK, poolTime = poolOK+n, poolTime+d
			for _, s := range servers {
				throttles += s.Stats().Throttled
			}
			drain(b, servers)
		}
	}
	perfect := float64(perfectOK) / perfectTime.Seconds()
	pooled := float64(poolOK) / poolTime.Seconds()
	b.ReportMetric(perfect, "perfect-calls/s")
	b.ReportMetric(pooled, "pool-calls/s")
	b.ReportMetric(pooled/perfect, "pool/perfect")
	return throttles
}

// drain waits until no call is in any server, then zeroes their counters.
func drain(b *testing.B, servers []*amltest.Server) {
	for _, s := range servers {
		if _, err := s.WaitFor(context.Background(), func(st amltest.Stats) bool { return st.InFlight == 0 }); err != nil {
			b.Fatal(err)
		}
		s.ResetStats()
	}
}

// closedLoop runs callers goroutines calling f back to back for d and
// returns how many calls succeeded and how long the run took. Calls cut short
// by the end of the run do not count.
func closedLoop(d time.Duration, callers int, f func(ctx context.Context, caller int) error) (int64, time.Duration) {
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
	return ok.Load(), time.Since(start)
}

// BenchmarkSetEndpointsUnderLoad drives the seed workload through one
// Client in alternating 2 s turns: one turn steady, the next with a
// SetEndpoints every 50 ms that rotates one endpoint's key (between its
// primary and secondary, both of which the fake accepts). It reports the
// goodput of the changing turns over the steady ones (goal ≥ 0.99), the
// calls that failed in either (goal 0) and the throttles the servers saw
// (goal 0):
//
//	go test -run '^$' -bench SetEndpointsUnderLoad -benchtime 1x .
func BenchmarkSetEndpointsUnderLoad(b *testing.B) {
	const endpoints, mcc, latency = 5, 20, 50 * time.Millisecond
	servers, eps, c := seedPool(b, endpoints, mcc, latency)
	var failed atomic.Int64
	call := func(ctx context.Context, _ int) error {
		_, err := c.Do(ctx, []byte(body))
		if err != nil && ctx.Err() == nil {
			failed.Add(1)
		}
		return err
	}
	const turn = 2 * time.Second
	var steadyOK, changingOK, changes, throttles int64
	var steadyTime, changingTime time.Duration
	for b.Loop() {
		for range max(1, int(*seedDuration/turn)) {
			n, d := closedLoop(turn, *seedCallers*endpoints*mcc, call)
			steadyOK, steadyTime = steadyOK+n, steadyTime+d
			for _, s := range servers {
				throttles += s.Stats().Throttled
			}
			drain(b, servers)

			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				t := time.NewTicker(50 * time.Millisecond)
				defer t.Stop()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-t.C:
					}
					e := &eps[i%endpoints]
					e.APIKey, e.SecondaryKey = e.SecondaryKey, e.APIKey
					if err := c.SetEndpoints(eps); err != nil {
						b.Error(err)
					}
					changes++
				}
			}()
			n, d = closedLoop(turn, *seedCallers*endpoints*mcc, call)
			close(stop)
			<-done
			changingOK, changingTime = changingOK+n, changingTime+d
			for _, s := range servers {
				throttles += s.Stats().Throttled
			}
			drain(b, servers)
		}
	}
	steady := float64(steadyOK) / steadyTime.Seconds()
	changing := float64(changingOK) / changingTime.Seconds()
	b.ReportMetric(steady, "steady-calls/s")
	b.ReportMetric(changing, "changing-calls/s")
	b.ReportMetric(changing/steady, "changing/steady")
	b.ReportMetric(float64(changes), "changes")
	b.ReportMetric(float64(failed.Load()), "failed")
	b.ReportMetric(float64(throttles), "throttles")
}

// seedPool starts n fake endpoints of mcc slots at latency and a Client
// over their endpoints, all closed when b ends.
func seedPool(b *testing.B, n, mcc int, latency time.Duration) ([]*amltest.Server, []amlpool.Endpoint, *amlpool.Client) {
	servers := make([]*amltest.Server, n)
	eps := make([]amlpool.Endpoint, n)
	for i := range servers {
		servers[i] = amltest.NewServer(amltest.Config{MaxConcurrentCalls: mcc, Latency: latency})
		b.Cleanup(servers[i].Close)
		eps[i] = servers[i].Endpoint()
	}
	c, err := amlpool.New(eps)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return servers, eps, c
}
