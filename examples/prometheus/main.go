// Command prometheus shows amlpool's OpenTelemetry metrics on a Prometheus
// /metrics page. It starts two fake endpoints (amltest) so that it runs
// anywhere, sends them a call every 20 ms, and serves the metrics until it
// is interrupted:
//
//	go run . -addr 127.0.0.1:9464
//	curl -s 127.0.0.1:9464/metrics | grep amlpool_
//
// In a service, keep newMeterProvider and serveMetrics, and pass your own
// endpoints to amlpool.New.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9464", "address to serve /metrics on")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *addr); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, addr string) error {
	mp, metrics, err := newMeterProvider()
	if err != nil {
		return err
	}
	defer mp.Shutdown(context.Background())

	east := amltest.NewServer(amltest.Config{Name: "east", MaxConcurrentCalls: 4, Latency: 10 * time.Millisecond})
	defer east.Close()
	west := amltest.NewServer(amltest.Config{Name: "west", MaxConcurrentCalls: 4, Latency: 30 * time.Millisecond})
	defer west.Close()
	c, err := amlpool.New([]amlpool.Endpoint{east.Endpoint(), west.Endpoint()}, amlpool.WithMeterProvider(mp))
	if err != nil {
		return err
	}
	defer c.Close()

	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := serveMetrics(l, metrics)
	defer srv.Close()
	fmt.Printf("metrics on http://%s/metrics; Ctrl-C to stop\n", l.Addr())

	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if _, err := c.Do(ctx, []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}}}`)); err != nil && ctx.Err() == nil {
				log.Print(err)
			}
		}
	}
}

// newMeterProvider returns a MeterProvider whose metrics the returned
// handler serves in the Prometheus text format. Its registry holds only
// OpenTelemetry's metrics; use prometheus.DefaultRegisterer instead to add
// them to the process's other Prometheus metrics.
func newMeterProvider() (*sdkmetric.MeterProvider, http.Handler, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	return mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}

// serveMetrics serves h at /metrics on l until the returned server is
// closed.
func serveMetrics(l net.Listener, h http.Handler) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Print(err)
		}
	}()
	return srv
}
