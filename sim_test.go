package amlpool_test

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/internal/sim"
)

// The simulations run real Clients against simulated endpoints in virtual
// time (testing/synctest). By default they run long enough to check their
// claims in CI; -sim.long runs them for minutes of virtual time, as the
// README's figures were made:
//
//	go test -run 'TestSim' -v -sim.long .
var simLong = flag.Bool("sim.long", false, "run the load-balancing simulations at full length")

func simDuration(short, long time.Duration) time.Duration {
	if *simLong {
		return long
	}
	return short
}

// seeded returns a concurrency-safe deterministic random source.
func seeded(seed uint64) func() uint64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed))
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64()
	}
}

// TestSimSlowEndpoint: five endpoints, one ten times slower, at 60 % of the
// healthy endpoints' capacity. Latency-aware keeps p99 within 1.5× of the
// healthy endpoints' p99; random does not. Hedging on top trims p99.9.
func TestSimSlowEndpoint(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := sim.SlowEndpoint{Endpoints: 5, MCC: 20, Healthy: 50 * time.Millisecond, Slowdown: 10,
			Rate: 1000, Duration: simDuration(10*time.Second, 120*time.Second), RTT: time.Millisecond, Seed: 1}
		reps := sc.Run([]sim.Variant{
			{Name: "Random", Opts: []amlpool.Option{amlpool.WithBalancer(amlpool.Random())}},
			{Name: "LeastLoaded", Opts: []amlpool.Option{amlpool.WithBalancer(amlpool.LeastLoaded())}},
			{Name: "LatencyAware", Opts: []amlpool.Option{amlpool.WithBalancer(amlpool.LatencyAware())}},
			{Name: "LatencyAware, hedging after p95", Opts: []amlpool.Option{amlpool.WithBalancer(amlpool.LatencyAware()),
				amlpool.WithHedgingQuantile(0.95)}},
		}, amlpool.WithRand(seeded(1)))
		var rows [][]string
		for _, r := range reps {
			rows = append(rows, []string{r.Balancer, fmt.Sprintf("%.0f/s", r.Goodput), fmt.Sprint(r.Failed),
				sim.Ms(r.P50), sim.Ms(r.P99), sim.Ms(r.P999), fmt.Sprintf("%.2f %%", 100*r.SlowShare)})
		}
		t.Logf("%v, healthy p99 %v:\n%s", sc.Duration, reps[0].HealthyP99,
			sim.Table([]string{"balancer", "goodput", "failed", "p50", "p99", "p99.9", "to slow endpoint"}, rows))
		random, aware := reps[0], reps[2]
		assert.LessOrEqual(t, float64(aware.P99), 1.5*float64(aware.HealthyP99), "latency-aware p99")
		assert.Greater(t, float64(random.P99), 1.5*float64(random.HealthyP99), "random p99")
		for _, r := range reps {
			assert.Zero(t, r.Failed, r.Balancer)
		}
	})
}

// TestSimReplicas: ten replicas, each with its own Client and 30 calls at a
// time, share five endpoints of 20 slots. Without the adaptive limit each
// believes it has all 100 slots; with it, throttles fall under 1 % within a
// few seconds while goodput stays at 90 % of capacity or more.
func TestSimReplicas(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := sim.Replicas{Replicas: 10, Workers: 30, Pause: 100 * time.Millisecond, Endpoints: 5, MCC: 20,
			Latency: 50 * time.Millisecond, RTT: time.Millisecond, Seed: 2}
		const warmup = 5 * time.Second
		var rows [][]string
		reps := map[string]sim.ReplicasReport{}
		for _, name := range []string{"static limit", "adaptive limit"} {
			opts := []amlpool.Option{amlpool.WithRand(seeded(2))}
			// Static limits make ~40 times more requests per call; in CI a
			// short run shows them.
			sc.Duration = simDuration(6*time.Second, 120*time.Second)
			if name == "adaptive limit" {
				opts = append(opts, amlpool.WithAdaptiveLimit())
				sc.Duration = simDuration(15*time.Second, 120*time.Second)
			}
			r := sc.Run(warmup, opts...)
			reps[name] = r
			pct := func(g float64) string { return fmt.Sprintf("%.0f/s (%.0f %%)", g, 100*g/r.Capacity) }
			rows = append(rows, []string{name, pct(r.Goodput),
				fmt.Sprintf("%d of %d (%.1f %%)", r.Throttles, r.Requests, 100*float64(r.Throttles)/float64(r.Requests)),
				pct(r.SteadyGoodput), fmt.Sprintf("%.2f %%", 100*r.SteadyThrottled), fmt.Sprint(r.Limits)})
			t.Logf("%s, per second: throttled %.3f, goodput %.0f", name, r.Throttled, r.Good)
		}
		t.Logf("capacity %.0f calls/s, steady = after %v:\n%s", reps["static limit"].Capacity, warmup,
			sim.Table([]string{"replicas use", "goodput", "throttled requests", "steady goodput", "steady throttled", "limits (replica 1)"}, rows))
		a := reps["adaptive limit"]
		assert.Less(t, a.SteadyThrottled, 0.01, "throttles per request after the warm-up")
		assert.GreaterOrEqual(t, a.SteadyGoodput, 0.9*a.Capacity, "goodput after the warm-up")
	})
}

// TestSimHedging: one endpoint of five stalls for 2 s on 1 call in 100.
// Hedging after the pool's p95 latency cuts p99.9 from the stall to about
// twice the usual latency; endpoints never see more calls than their cap.
func TestSimHedging(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := sim.Hedging{Endpoints: 5, MCC: 20, Latency: 50 * time.Millisecond, Stall: 2 * time.Second, StallEvery: 100,
			Rate: 1000, Duration: simDuration(15*time.Second, 120*time.Second), RTT: time.Millisecond, Seed: 3}
		runs := []struct {
			name string
			sc   sim.Hedging
			opts []amlpool.Option
		}{
			{"no hedging", sc, nil},
			{"hedge after p95", sc, []amlpool.Option{amlpool.WithHedgingQuantile(0.95)}},
			{"hedge after 100 ms", sc, []amlpool.Option{amlpool.WithHedging(100 * time.Millisecond)}},
		}
		if *simLong {
			keeps := sc
			keeps.KeepsCancelled = true
			runs = append(runs, struct {
				name string
				sc   sim.Hedging
				opts []amlpool.Option
			}{"p95, endpoints finish abandoned calls", keeps, []amlpool.Option{amlpool.WithHedgingQuantile(0.95)}})
		}
		var rows [][]string
		reps := map[string]sim.HedgingReport{}
		for _, r := range runs {
			rep := r.sc.Run(r.name, append(r.opts, amlpool.WithRand(seeded(3)))...)
			reps[r.name] = rep
			rows = append(rows, []string{r.name, fmt.Sprintf("%.0f/s", rep.Goodput), fmt.Sprint(rep.Failed),
				sim.Ms(rep.P50), sim.Ms(rep.P99), sim.Ms(rep.P999),
				fmt.Sprintf("%.1f %%", 100*float64(rep.Extra)/(rep.Goodput*sc.Duration.Seconds())),
				fmt.Sprint(rep.Throttles), fmt.Sprintf("%d of %d", rep.Peak, sc.MCC)})
		}
		t.Logf("%v:\n%s", sc.Duration, sim.Table([]string{"client", "goodput", "failed", "p50", "p99", "p99.9",
			"extra requests", "throttles", "peak in flight"}, rows))
		base := reps["no hedging"]
		for _, name := range []string{"hedge after p95", "hedge after 100 ms"} {
			h := reps[name]
			assert.Less(t, float64(h.P999), 0.5*float64(base.P999), "%s: p99.9 falls", name)
			assert.Zero(t, h.Throttles, "%s: endpoints never full", name)
			assert.LessOrEqual(t, h.Peak, int64(sc.MCC), "%s: cap never exceeded", name)
			assert.Zero(t, h.Failed, name)
		}
	})
}
