package main

import (
	"context"
	"testing"

	"github.com/amlpool/amlpool"
)

// BenchmarkCall is the overhead workload as a Go benchmark: one call at a
// time per goroutine to a 0 ms endpoint in this process, for every system.
// Compare each system's ns/op and allocs/op with "net/http bare" of the same
// run (the server's share is in every figure alike).
func BenchmarkCall(b *testing.B) {
	for _, sys := range systems() {
		b.Run(sys.name, func(b *testing.B) {
			srv, err := startServer("ep1", endpointSpec{mcc: 200})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.close()
			c, err := sys.new(setup{eps: []amlpool.Endpoint{srv.endpoint()}, callers: 4})
			if err != nil {
				b.Fatal(err)
			}
			defer c.close()
			ctx := context.Background()
			if err := c.do(ctx, body); err != nil { // dial outside the timing
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := c.do(ctx, body); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
