package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/amlpool/amlpool/internal/clock"
)

// BenchmarkAcquireRelease measures the pool's hot path — pick an endpoint,
// take its slot, give it back — beside a bare x/sync semaphore doing only
// Acquire+Release, in the same run. The tiers=2 cases put every other
// endpoint in tier 1 (which never gets a call here: tier 0 has room) and
// give each call a priority, for the cost of tiers and priorities in use.
// Besides ns/op, each reports cpu-ns/op (cpuMeter):
//
//	go test -run '^$' -bench 'AcquireRelease' -benchmem -count 5 ./internal/pool
func BenchmarkAcquireRelease(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("semaphore/endpoints=%d/serial", n), func(b *testing.B) {
			s := semaphore.NewWeighted(int64(20 * n))
			b.ReportAllocs()
			defer cpuMeter(b)()
			for b.Loop() {
				_ = s.Acquire(ctx, 1)
				s.Release(1)
			}
		})
		b.Run(fmt.Sprintf("pool/endpoints=%d/serial", n), func(b *testing.B) {
			p, r := benchPool(b, n)
			b.ReportAllocs()
			defer cpuMeter(b)()
			for b.Loop() {
				var x Exclusion
				slot, _ := p.Acquire(ctx, &x, -1)
				p.Release(slot, r, nil)
			}
		})
		b.Run(fmt.Sprintf("semaphore/endpoints=%d/parallel", n), func(b *testing.B) {
			s := semaphore.NewWeighted(int64(20 * n))
			b.ReportAllocs()
			defer cpuMeter(b)()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_ = s.Acquire(ctx, 1)
					s.Release(1)
				}
			})
		})
		b.Run(fmt.Sprintf("pool/endpoints=%d/parallel", n), func(b *testing.B) {
			p, r := benchPool(b, n)
			b.ReportAllocs()
			defer cpuMeter(b)()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var x Exclusion
					slot, _ := p.Acquire(ctx, &x, -1)
					p.Release(slot, r, nil)
				}
			})
		})
	}
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("pool/endpoints=%d/tiers=2/serial", n), func(b *testing.B) {
			p, r := tieredBenchPool(b, n)
			ctx := WithPriority(ctx, High)
			b.ReportAllocs()
			defer cpuMeter(b)()
			for b.Loop() {
				var x Exclusion
				slot, _ := p.Acquire(ctx, &x, -1)
				p.Release(slot, r, nil)
			}
		})
		b.Run(fmt.Sprintf("pool/endpoints=%d/tiers=2/parallel", n), func(b *testing.B) {
			p, r := tieredBenchPool(b, n)
			ctx := WithPriority(ctx, High)
			b.ReportAllocs()
			defer cpuMeter(b)()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var x Exclusion
					slot, _ := p.Acquire(ctx, &x, -1)
					p.Release(slot, r, nil)
				}
			})
		})
	}
}

// tieredBenchPool is benchPool with every other endpoint in tier 1.
func tieredBenchPool(b *testing.B, n int) (*Pool, *Report) {
	p, r := benchPool(b, n)
	specs := testSpecs(equalCaps(n, 20)...)
	for i := range specs {
		specs[i].Tier = i % 2
	}
	p.Update(specs)
	return p, r
}

// cpuMeter starts counting the process's CPU time; the func it returns
// reports it per op as cpu-ns/op, which a shared, loaded machine disturbs
// far less than the wall time of ns/op.
func cpuMeter(b *testing.B) func() {
	cpu0, ok := cpuTime()
	return func() {
		if cpu1, _ := cpuTime(); ok {
			b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
		}
	}
}

// benchPool returns a pool of n endpoints of 20 slots, as a Client with
// the default options has it (PickRandom, the real lock-free random
// source, ejection after 5 failures), and the report of a successful
// attempt of 1 ms.
func benchPool(b *testing.B, n int) (*Pool, *Report) {
	clk := clock.NewFake()
	p, _ := newTestPool(b, Config{Clock: clk, Rand: rand.Uint64, EjectAfter: 5, EjectFor: 30 * time.Second}, testSpecs(equalCaps(n, 20)...))
	return p, &Report{Result: OK, Start: clk.Now(), Latency: time.Millisecond}
}

// BenchmarkPick measures one pick by each built-in Picker, from all Ps at
// once, at 10, 100 and 1000 endpoints of 20 slots, with the Client's own
// random source and clock. "some busy": every endpoint has a random 0 to 19
// calls in flight; "90% full": nine endpoints in ten have none free, so P2C
// draws miss and PickRandom rejects more often. Besides ns/op (wall time,
// which depends on what else the machine runs) it reports cpu-ns/op: the
// process's CPU time per pick. The README's table comes from:
//
//	go test -run '^$' -bench BenchmarkPick -benchmem -cpu 2 -count 3 ./internal/pool
func BenchmarkPick(b *testing.B) {
	for _, state := range []string{"some busy", "90% full"} {
		for _, name := range []string{"Random", "LeastLoaded", "LatencyAware"} {
			for _, n := range []int{10, 100, 1000} {
				b.Run(fmt.Sprintf("%s/%s/%d", state, name, n), func(b *testing.B) {
					s, pick := pickSet(b, n, state == "90% full"), pickers[name]
					b.ReportAllocs()
					b.ResetTimer() // the pool's setup allocates; picks must not
					cpu0, ok := cpuTime()
					b.RunParallel(func(pb *testing.PB) {
						var x Exclusion
						for pb.Next() {
							if pick(s, &x) < 0 {
								b.Fatal("no pick")
							}
						}
					})
					if cpu1, _ := cpuTime(); ok {
						b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
					}
				})
			}
		}
	}
}

func pickSet(b *testing.B, n int, mostlyFull bool) *Set {
	r := rand.New(rand.NewPCG(4, 2))
	p, _ := newTestPool(b, Config{Clock: clock.Real, Rand: rand.Uint64}, testSpecs(equalCaps(n, 20)...))
	s := p.Set()
	for i, e := range s.Eps {
		e.storeHeld(r.Int32N(20))
		if mostlyFull && i%10 != 0 {
			e.storeHeld(20)
		}
		e.lat.observe(p.Nanotime(), float64(20+r.IntN(80))*1e6, false)
	}
	return s
}

// BenchmarkLine measures calls that wait: four goroutines per P take turns
// on two slots, so most calls join the line and are handed a slot by a
// release:
//
//	go test -run '^$' -bench 'Line|Grant' -benchmem -count 5 ./internal/pool
func BenchmarkLine(b *testing.B) {
	p, _ := newTestPool(b, Config{Clock: clock.Real, Rand: rand.Uint64}, testSpecs(2))
	r := &Report{Result: OK, Start: time.Now(), Latency: time.Millisecond}
	b.ReportAllocs()
	b.SetParallelism(4)
	defer cpuMeter(b)()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var x Exclusion
			slot, _ := p.Acquire(context.Background(), &x, -1)
			p.Release(slot, r, nil)
		}
	})
}

// BenchmarkGrant measures one pass of the line that finds no free slot,
// the work a release does while calls wait, with three calls waiting: of
// one priority (as when none is set), or one of each, when the pass ranks
// the fronts of three queues and reads the clock for their ages.
func BenchmarkGrant(b *testing.B) {
	for name, pris := range map[string][]int8{"one priority": {Normal, Normal, Normal}, "three priorities": {Low, Normal, High}} {
		b.Run(name, func(b *testing.B) {
			p, _ := newTestPool(b, Config{Clock: clock.Real, Rand: rand.Uint64}, testSpecs(1))
			held, ok := p.TryAcquire(&Exclusion{})
			if !ok {
				b.Fatal("no slot")
			}
			defer p.Release(held, &Report{Result: Unsent}, nil)
			p.mu.Lock()
			for _, pri := range pris {
				p.arrivals++
				p.pushLocked(&waiter{ready: make(chan struct{}), pri: pri - Low, seq: p.arrivals, since: p.Nanotime()})
			}
			p.mu.Unlock()
			b.ReportAllocs()
			defer cpuMeter(b)()
			for b.Loop() {
				p.mu.Lock()
				p.grantLocked()
				p.mu.Unlock()
			}
		})
	}
}
