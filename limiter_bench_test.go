package amlpool

import (
	"context"
	"fmt"
	"testing"

	"golang.org/x/sync/semaphore"
)

// BenchmarkAcquireRelease measures the pool's hot path — pick an endpoint,
// take its slot, give it back — beside a bare x/sync semaphore doing only
// Acquire+Release, in the same run:
//
//	go test -run '^$' -bench 'AcquireRelease' -benchmem -count 5 .
func BenchmarkAcquireRelease(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("semaphore/endpoints=%d/serial", n), func(b *testing.B) {
			s := semaphore.NewWeighted(int64(20 * n))
			b.ReportAllocs()
			for b.Loop() {
				_ = s.Acquire(ctx, 1)
				s.Release(1)
			}
		})
		b.Run(fmt.Sprintf("pool/endpoints=%d/serial", n), func(b *testing.B) {
			p := benchPool(b, n)
			b.ReportAllocs()
			for b.Loop() {
				var x exclusion
				ep, _ := p.acquire(ctx, &x, -1)
				p.release(ep)
			}
		})
		b.Run(fmt.Sprintf("semaphore/endpoints=%d/parallel", n), func(b *testing.B) {
			s := semaphore.NewWeighted(int64(20 * n))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_ = s.Acquire(ctx, 1)
					s.Release(1)
				}
			})
		})
		b.Run(fmt.Sprintf("pool/endpoints=%d/parallel", n), func(b *testing.B) {
			p := benchPool(b, n)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var x exclusion
					ep, _ := p.acquire(ctx, &x, -1)
					p.release(ep)
				}
			})
		})
	}
}

func benchPool(b *testing.B, n int) *pool {
	caps := make([]int, n)
	for i := range caps {
		caps[i] = 20
	}
	p := testPool(b, caps...)
	p.rand = defaultConfig().rand // the real, lock-free source
	return p
}
