package amlpool

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// replyTransport answers every request in memory with a 200 and a small
// body: a Do without a network, so the benchmark sees what telemetry adds to
// amlpool's own work.
type replyTransport struct{}

var benchReply = []byte(`{"Results":{"output1":{"type":"table","value":{"ColumnNames":["p"],"Values":[["0.5"]]}}}}`)

func (replyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		r.Body.Close()
	}
	return &http.Response{
		StatusCode:    200,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(benchReply)),
		ContentLength: int64(len(benchReply)),
		Request:       r,
	}, nil
}

// BenchmarkTelemetry measures one Do through an in-memory transport with
// each kind of telemetry on, against the same Do with none. The two clients
// take turns, a block of calls each, so that both see the same machine (other
// processes, GC, CPU frequency); each mode reports
//
//	ns/call          the cost of one Do with the telemetry on
//	off-ns/call      the same with none, measured in the same run
//	x-off            their ratio
//	extra-allocs/op  allocations the telemetry adds to a Do
//
// Run it with:
//
//	go test -run '^$' -bench 'Telemetry' -count 5 .
func BenchmarkTelemetry(b *testing.B) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample())) // spans made, exported nowhere
	b.Cleanup(func() { mp.Shutdown(context.Background()); tp.Shutdown(context.Background()) })
	info := slog.New(slog.NewTextHandler(io.Discard, nil))
	debug := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))

	for _, m := range []struct {
		name string
		opts []Option
	}{
		{"off", nil}, // off against off: the noise floor of x-off
		{"metrics", []Option{WithMeterProvider(mp)}},
		{"logger-at-info", []Option{WithLogger(info)}},
		{"logger-at-debug", []Option{WithLogger(debug)}},
		{"traces", []Option{WithTracerProvider(tp)}},
		{"all", []Option{WithMeterProvider(mp), WithTracerProvider(tp), WithLogger(info)}},
	} {
		b.Run(m.name, func(b *testing.B) {
			off, on := benchClient(b), benchClient(b, m.opts...)
			ctx, body := context.Background(), []byte(`{"Inputs":{}}`)
			do := func(c *Client) {
				if _, err := c.Do(ctx, body); err != nil {
					b.Fatal(err)
				}
			}
			extra := testing.AllocsPerRun(200, func() { do(on) }) - testing.AllocsPerRun(200, func() { do(off) })
			const block = 32
			var offT, onT time.Duration
			for b.Loop() {
				t0 := time.Now()
				for range block {
					do(off)
				}
				t1 := time.Now()
				for range block {
					do(on)
				}
				onT += time.Since(t1)
				offT += t1.Sub(t0)
			}
			calls := float64(b.N * block)
			b.ReportMetric(float64(onT.Nanoseconds())/calls, "ns/call")
			b.ReportMetric(float64(offT.Nanoseconds())/calls, "off-ns/call")
			b.ReportMetric(float64(onT)/float64(offT), "x-off")
			b.ReportMetric(extra, "extra-allocs/op")
			b.ReportMetric(0, "ns/op") // one op is a block of both: not a useful figure
		})
	}
}

func benchClient(b *testing.B, opts ...Option) *Client {
	opts = append([]Option{WithHTTPClient(&http.Client{Transport: replyTransport{}})}, opts...)
	c, err := New([]Endpoint{
		{Name: "a", URL: "https://a.example/x", APIKey: "k", MaxConcurrentCalls: 20},
		{Name: "b", URL: "https://b.example/x", APIKey: "k", MaxConcurrentCalls: 20},
	}, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}
