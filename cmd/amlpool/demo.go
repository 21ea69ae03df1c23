package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

const demoHelp = `Usage: amlpool demo [flags]

Starts fake Azure ML Classic endpoints (or, with -kind online, fake online
endpoints that answer 429 past their cap) in this process, drives a saturating
closed-loop load through one amlpool Client, and prints each endpoint's share
of the calls, the peak concurrency its server saw, its throttles, and the
achieved rate beside the capacity formula's ceiling
E x MCC x 1000 / latency_ms. While it runs it shows, every -every, each
endpoint's calls in flight against its limit, calls per second and throttles.
Ctrl-C (SIGINT) or SIGTERM ends it early, with the figures of the time it
ran.

The exit status is 0 when every call succeeded; 1 when a call failed
(after its retries), said after the figures with how many failed and the
first error, as "amlpool bench" does; 2 for a bad flag or flag value; 130
when interrupted, as "amlpool score" has.

Examples:
  amlpool demo
  amlpool demo -endpoints 3 -mcc 200 -latency 20ms -duration 10s
  amlpool demo -kind online -endpoints 2 -mcc 400

Flags:
`

// demoConfig is what the demo's flags set.
type demoConfig struct {
	endpoints int
	mcc       int
	latency   time.Duration
	duration  time.Duration
	callers   int
	every     time.Duration // live picture interval; 0: none
	kind      amlpool.Kind
	fault     func(n int64) amltest.Fault // the fakes' faults, for tests; nil: none
}

func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), demoHelp); fs.PrintDefaults() }
	var cfg demoConfig
	fs.IntVar(&cfg.endpoints, "endpoints", 5, "number of fake endpoints")
	fs.IntVar(&cfg.mcc, "mcc", 20, "Max Concurrent Calls of each endpoint (1-200; online: 1-10000)")
	fs.TextVar(&cfg.kind, "kind", amlpool.Classic, "kind of the fake endpoints: classic or online")
	fs.DurationVar(&cfg.latency, "latency", 50*time.Millisecond, "service time of each call")
	fs.DurationVar(&cfg.duration, "duration", 5*time.Second, "how long to drive load")
	fs.IntVar(&cfg.callers, "callers", 0, "concurrent callers, up to 65536 (default 3x the total slots, at most 65536)")
	fs.DurationVar(&cfg.every, "every", time.Second, "how often to show the live per-endpoint picture (0: never)")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	if fs.NArg() > 0 { // flag stops at it: the flags after it would go unread
		fmt.Fprintf(stderr, "amlpool demo: unexpected argument %q (see amlpool demo --help)\n", fs.Arg(0))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return exitStatus(stderr, "demo", demo(ctx, cfg, stdout))
}

func demo(ctx context.Context, cfg demoConfig, out io.Writer) error {
	switch {
	case cfg.endpoints < 1:
		return usageError{fmt.Errorf("-endpoints %d: need at least 1", cfg.endpoints)}
	case cfg.mcc < 1 || cfg.mcc > maxMCC(cfg.kind):
		return usageError{fmt.Errorf("-mcc %d: want 1 to %d for %s endpoints", cfg.mcc, maxMCC(cfg.kind), cfg.kind)}
	case cfg.latency <= 0:
		return usageError{fmt.Errorf("-latency %v: must be positive", cfg.latency)}
	case cfg.duration <= 0:
		return usageError{fmt.Errorf("-duration %v: must be positive", cfg.duration)}
	case cfg.every < 0:
		return usageError{fmt.Errorf("-every %v: must not be negative", cfg.every)}
	case cfg.callers < 0:
		return usageError{fmt.Errorf("-callers %d: must not be negative (0: 3x the total slots)", cfg.callers)}
	case cfg.callers > amlpool.MaxParallelism: // a goroutine each
		return usageError{fmt.Errorf("-callers %d: must be at most %d", cfg.callers, amlpool.MaxParallelism)}
	}
	slots := cfg.endpoints * cfg.mcc
	if cfg.callers == 0 {
		cfg.callers = min(3*slots, amlpool.MaxParallelism)
	}

	servers := make([]*amltest.Server, cfg.endpoints)
	endpoints := make([]amlpool.Endpoint, cfg.endpoints)
	for i := range servers {
		s, err := newFakeServer(amltest.Config{
			Name:               fmt.Sprintf("endpoint%d", i+1),
			MaxConcurrentCalls: cfg.mcc,
			Latency:            cfg.latency,
			Kind:               cfg.kind,
			Fault:              cfg.fault,
		}, "-endpoints", cfg.endpoints)
		if err != nil {
			return err
		}
		defer s.Close()
		servers[i] = s
		endpoints[i] = servers[i].Endpoint()
	}
	client, err := amlpool.New(endpoints)
	if err != nil {
		return err
	}
	defer client.Close()

	ceiling := float64(slots) * float64(time.Second) / float64(cfg.latency)
	fmt.Fprintf(out, "amlpool demo: %d %s endpoints x %d slots, %v latency, %d callers for %v\n",
		cfg.endpoints, cfg.kind, cfg.mcc, cfg.latency, cfg.callers, cfg.duration)
	fmt.Fprintf(out, "ceiling: %d x %d x 1000 / %.4g = %.0f calls/s\n\n", cfg.endpoints, cfg.mcc, float64(cfg.latency)/float64(time.Millisecond), ceiling)

	body := sampleBody(cfg.kind)
	runCtx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()
	var ok, failed atomic.Int64
	var firstErr atomic.Pointer[error] // not an atomic.Value, which panics when errors differ in type
	start := time.Now()
	var wg sync.WaitGroup
	for range cfg.callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for runCtx.Err() == nil {
				_, err := client.Do(runCtx, body)
				switch {
				case err == nil:
					ok.Add(1)
				case runCtx.Err() != nil:
					return // the run is over; the call was cut short, not failed
				default:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	stopLive := func() {}
	if cfg.every > 0 {
		stop, stopped := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(stopped)
			newLive(out, client).run(cfg.every, stop)
		}()
		stopLive = func() { close(stop); <-stopped; fmt.Fprintln(out) }
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopLive()
	interrupted := ctx.Err() != nil
	if interrupted {
		fmt.Fprintf(out, "interrupted after %v of %v\n", elapsed.Round(time.Millisecond), cfg.duration)
	}

	stats := client.Stats()
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "endpoint\tMCC\tcalls\tshare\tserver peak\tthrottles\t")
	var total int64
	for _, e := range stats.Endpoints {
		total += e.Calls
	}
	for i, e := range stats.Endpoints {
		s := servers[i].Stats()
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f%%\t%d\t%d\t\n", e.Name, e.MaxConcurrentCalls, e.Calls,
			100*float64(e.Calls)/float64(max(total, 1)), s.PeakInFlight, s.Throttled)
	}
	tw.Flush()
	rate := float64(ok.Load()) / elapsed.Seconds()
	fmt.Fprintf(out, "\nachieved: %.0f calls/s = %.1f%% of the ceiling (%d ok, %d failed)\n",
		rate, 100*rate/ceiling, ok.Load(), failed.Load())
	if err := firstErr.Load(); err != nil {
		fmt.Fprintln(out, "first error:", *err)
	}
	if interrupted {
		return errInterrupted
	}
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d calls failed; the first: %w", n, ok.Load()+n, *firstErr.Load())
	}
	return nil
}

// newFakeServer starts the fake endpoint cfg, the count-th of count the
// flag asked for. httptest panics when it cannot listen (no file
// descriptor left: many endpoints under a low "ulimit -n"); that is
// returned as an error naming the endpoint and the flag.
func newFakeServer(cfg amltest.Config, flag string, count int) (s *amltest.Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cannot start fake endpoint %s of the %d of %s: %v (raise the open-file limit, ulimit -n, or ask for fewer)", cfg.Name, count, flag, r)
		}
	}()
	return amltest.NewServer(cfg), nil
}

// maxMCC is the highest cap an endpoint of kind may have.
func maxMCC(kind amlpool.Kind) int {
	if kind == amlpool.Online {
		return amlpool.MaxOnlineConcurrentCalls
	}
	return amlpool.MaxMaxConcurrentCalls
}

// sampleBody is a one-row request the fake endpoints of kind score.
func sampleBody(kind amlpool.Kind) []byte {
	if kind == amlpool.Online {
		return []byte(`{"input_data":{"columns":["x"],"index":[0],"data":[["1"]]}}`)
	}
	return []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}},"GlobalParameters":{}}`)
}
