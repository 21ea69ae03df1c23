package redislimit

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/internal/redistest"
)

// The cost of sharing caps through Redis, beside the Client's own
// in-process slots, in one run on a loopback redis-server:
//
//	go test -run '^$' -bench . -benchtime 2s ./redislimit
//
// BenchmarkDo sends calls through a Client whose transport answers in
// memory, so the difference between its sub-benchmarks is the Limiter:
// acquire (one script round trip) and release (one more, in the
// background). BenchmarkAcquireRelease measures the Limiter alone.

// memTransport answers every request at once, without a network.
type memTransport struct{}

var reply = []byte(`{"Results":{"output1":{"type":"table","value":{"ColumnNames":["x"],"ColumnTypes":["String"],"Values":[["1"]]}}}}`)

func (memTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
	}
	return &http.Response{
		StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(bytes.NewReader(reply)), ContentLength: int64(len(reply)), Request: r,
	}, nil
}

func benchClient(b *testing.B, opts ...amlpool.Option) *amlpool.Client {
	eps := []amlpool.Endpoint{
		{Name: "a", URL: "http://127.0.0.1/workspaces/w/services/a/execute", APIKey: "k", MaxConcurrentCalls: 200},
		{Name: "b", URL: "http://127.0.0.1/workspaces/w/services/b/execute", APIKey: "k", MaxConcurrentCalls: 200},
	}
	opts = append(opts, amlpool.WithHTTPClient(&http.Client{Transport: memTransport{}}))
	c, err := amlpool.New(eps, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

func benchLimiter(b *testing.B) *Limiter {
	s := redistest.Start(b)
	rdb := redis.NewClient(redistest.Options(s.Addr))
	b.Cleanup(func() { _ = rdb.Close() })
	l, err := New(rdb, WithPool("bench"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = l.Close() })
	return l
}

func BenchmarkDo(b *testing.B) {
	l := benchLimiter(b)
	run := func(b *testing.B, c *amlpool.Client, parallel bool) {
		b.ReportAllocs()
		ctx := context.Background()
		if !parallel {
			for b.Loop() {
				if _, err := c.Do(ctx, body); err != nil {
					b.Fatal(err)
				}
			}
			return
		}
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Do(ctx, body); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	for _, parallel := range []bool{false, true} {
		name := "serial"
		if parallel {
			name = "parallel"
		}
		b.Run(name+"/in-process", func(b *testing.B) { run(b, benchClient(b), parallel) })
		b.Run(name+"/redislimit", func(b *testing.B) { run(b, benchClient(b, amlpool.WithLimiter(l)), parallel) })
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	l := benchLimiter(b)
	cands := []amlpool.LimitedEndpoint{{ID: "a", Name: "a", Limit: 1 << 20}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		ls, err := l.Acquire(ctx, cands)
		if err != nil {
			b.Fatal(err)
		}
		ls.Release()
	}
	b.StopTimer()
	b.ReportMetric(float64(l.Stats().RoundTrip.Nanoseconds()), "rtt-ns")
}
