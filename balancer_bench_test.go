package amlpool

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/amlpool/amlpool/internal/clock"
)

// BenchmarkPick measures one Pick by each balancer, from all Ps at once, at
// 10, 100 and 1000 endpoints of 20 slots, with the Client's own random source
// and clock. "some busy": every endpoint has a random 0 to 19 calls in
// flight; "90% full": nine endpoints in ten have none free, so P2C draws
// miss and Random rejects more often. Besides ns/op (wall time, which
// depends on what else the machine runs) it reports cpu-ns/op: the
// process's CPU time per pick. The README's table comes from:
//
//	go test -run '^$' -bench BenchmarkPick -benchmem -cpu 1,4 .
func BenchmarkPick(b *testing.B) {
	for _, state := range []string{"some busy", "90% full"} {
		for _, name := range []string{"Random", "LeastLoaded", "LatencyAware"} {
			for _, n := range []int{10, 100, 1000} {
				b.Run(fmt.Sprintf("%s/%s/%d", state, name, n), func(b *testing.B) {
					p := pickPool(balancers[name](), n, state == "90% full")
					b.ReportAllocs()
					b.ResetTimer() // the pool's setup allocates; picks must not
					cpu0, ok := cpuTime()
					b.RunParallel(func(pb *testing.PB) {
						s := Candidates{p: p}
						for pb.Next() {
							if p.bal.Pick(s) < 0 {
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

func pickPool(bal Balancer, n int, mostlyFull bool) *pool {
	r := rand.New(rand.NewPCG(4, 2))
	eps := make([]*endpoint, n)
	for i := range eps {
		ep := &endpoint{idx: i, max: 20}
		ep.limit.Store(20)
		ep.inFlight.Store(r.Int32N(20))
		if mostlyFull && i%10 != 0 {
			ep.inFlight.Store(20)
		}
		eps[i] = ep
	}
	p := newPool(eps, bal, rand.Uint64, clock.Real)
	for _, ep := range eps {
		ep.lat.observe(p.nanotime(), float64(20+r.IntN(80))*1e6, false)
	}
	return p
}
