package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/rows"
)

const benchHelp = `Usage: amlpool bench (--config pool.json --in rows.csv | --fake N) [flags]

Drives a closed-loop load at the pool's endpoints for --duration: --callers
goroutines (default: the pool's total slots, so every slot stays busy and
no call waits) each send the same request again and again. Then prints each
endpoint's share of the calls, its throttles and errors, the call latency
p50/p99, and the achieved rate beside the capacity formula's ceiling,
sum(MCC) x 1000 / latency_ms.

With --config the requests go to real endpoints and carry the first
--chunk-rows rows of --in (which must not be the config, nor a key or
token file it names); the ceiling uses the measured mean latency. With
--fake N, N fake endpoints run in this process (--mcc slots, --latency each)
and the ceiling uses --latency. A flag of the other mode is refused.

Ctrl-C (SIGINT) or SIGTERM ends the run early: it prints (and writes to
--stats) the figures of the time it ran, and exits with status 130, as
"amlpool score" does. Otherwise the exit status is 0, 1 when a call
failed (after its retries) or the statistics could not be written, 2 for
bad flags or config. A --stats file it cannot write (its directory missing
or read-only), or that is --in, the config or a key or token file it names,
is refused before any load is driven.

Examples:
  amlpool bench --config pool.json --in rows.csv --duration 30s
  amlpool bench --fake 4 --mcc 20 --latency 50ms --duration 10s --stats bench.json

Flags:
`

type benchOptions struct {
	config, in, stats string
	fake, mcc         int
	latency, duration time.Duration
	callers, chunk    int
	set               map[string]bool // the flags given
}

func runBench(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), benchHelp); fs.PrintDefaults() }
	var o benchOptions
	fs.StringVar(&o.config, "config", "", "pool config file (JSON)")
	fs.StringVar(&o.in, "in", "", "rows to send with --config, CSV or JSON Lines")
	fs.StringVar(&o.stats, "stats", "", "write the run's statistics here, as JSON, for amlpool plan --from-stats")
	fs.IntVar(&o.fake, "fake", 0, "run N fake endpoints in this process instead of --config")
	fs.IntVar(&o.mcc, "mcc", amlpool.DefaultMaxConcurrentCalls, "with --fake: Max Concurrent Calls of each endpoint")
	fs.DurationVar(&o.latency, "latency", 50*time.Millisecond, "with --fake: service time of each call")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long to drive load")
	fs.IntVar(&o.callers, "callers", 0, "concurrent callers, up to 65536 (default: the pool's total slots)")
	fs.IntVar(&o.chunk, "chunk-rows", 1, "with --config: rows per request, from the start of --in")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	if fs.NArg() > 0 { // flag stops at it: the flags after it would go unread
		fmt.Fprintf(stderr, "amlpool bench: unexpected argument %q (see amlpool bench --help)\n", fs.Arg(0))
		return 2
	}
	o.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return exitStatus(stderr, "bench", bench(ctx, o, stdout, stderr))
}

func bench(ctx context.Context, o benchOptions, out, stderr io.Writer) error {
	switch {
	case o.fake < 0:
		return usageError{fmt.Errorf("--fake %d: want at least 1 fake endpoint", o.fake)}
	case (o.config == "") == (o.fake == 0):
		return usageError{errors.New("give --config (with --in) or --fake N")}
	case o.duration <= 0:
		return usageError{fmt.Errorf("--duration %v: must be positive", o.duration)}
	case o.callers < 0:
		return usageError{fmt.Errorf("--callers %d: must not be negative (0: the pool's total slots)", o.callers)}
	case o.callers > amlpool.MaxParallelism: // a goroutine each, started before the clock runs
		return usageError{fmt.Errorf("--callers %d: must be at most %d", o.callers, amlpool.MaxParallelism)}
	case o.chunk < 1:
		return usageError{fmt.Errorf("--chunk-rows %d: want at least 1", o.chunk)}
	}
	var client *amlpool.Client
	var body []byte
	var err error
	ceilingLatency := time.Duration(0) // 0: use the measured mean
	if o.fake > 0 {
		switch {
		case o.set["in"] || o.set["chunk-rows"]:
			return usageError{errors.New("--in and --chunk-rows go with --config: --fake sends a sample row")}
		case o.latency <= 0:
			return usageError{fmt.Errorf("--latency %v: must be positive", o.latency)}
		case o.mcc < 1 || o.mcc > amlpool.MaxMaxConcurrentCalls:
			return usageError{fmt.Errorf("--mcc %d: want 1 to %d", o.mcc, amlpool.MaxMaxConcurrentCalls)}
		}
		eps := make([]amlpool.Endpoint, o.fake)
		for i := range eps {
			s, err := newFakeServer(amltest.Config{Name: fmt.Sprintf("fake%d", i+1), MaxConcurrentCalls: o.mcc, Latency: o.latency}, "--fake", o.fake)
			if err != nil {
				return err
			}
			defer s.Close()
			eps[i] = s.Endpoint()
		}
		if client, err = amlpool.New(eps); err != nil {
			return err
		}
		body = sampleBody(amlpool.Classic)
		ceilingLatency = o.latency
	} else {
		switch {
		case o.set["mcc"] || o.set["latency"]:
			return usageError{errors.New("--mcc and --latency go with --fake: with --config the caps are the config's, and the ceiling uses the measured latency")}
		case o.in == "":
			return usageError{errors.New("--config needs --in: rows the service accepts, to send")}
		}
		cfg, eps, err := loadConfig(o.config, osKeys)
		if err != nil {
			return usageError{err}
		}
		read := append([]runFile{{"--in", o.in, "input"}, {"--config", o.config, "config"}}, cfg.keyFiles(o.config)...)
		if err := checkInput(o.in, read[1:], false); err != nil {
			return err
		}
		// The statistics, written at the end, must not go over a file the
		// run reads, as score's must not.
		for _, a := range read {
			if o.stats != "" && sameFile(a.path, o.stats) {
				return usageError{fmt.Errorf("--stats %s is the same file as %s %s: the run would write over its %s; give --stats another file", o.stats, a.name, a.path, a.what)}
			}
		}
		if body, err = benchBody(o.in, o.chunk, cfg, eps[0].Kind); err != nil {
			return usageError{err}
		}
		var mu sync.Mutex // the token commands' runs may fail together
		warnTokenFailures(eps, "bench", func(msg string) { mu.Lock(); defer mu.Unlock(); fmt.Fprintln(stderr, msg) })
		if client, err = newClient(o.config, cfg, eps); err != nil {
			return usageError{err}
		}
	}
	defer client.Close()
	if o.stats != "" {
		// Nothing returns between here and the statistics' writing, so
		// a file made for the check is always written.
		if _, err := checkOutput("--stats", o.stats); err != nil {
			return err
		}
	}
	if o.callers == 0 {
		o.callers = min(client.Capacity(), amlpool.MaxParallelism)
	}
	fmt.Fprintf(out, "amlpool bench: %d endpoints, %d slots, %d callers for %v\n", len(client.Stats().Endpoints), client.Capacity(), o.callers, o.duration)

	r := drive(ctx, client, body, o.callers, o.duration)
	interrupted := ctx.Err() != nil
	if interrupted {
		fmt.Fprintf(out, "interrupted after %v of %v\n", r.elapsed.Round(time.Millisecond), o.duration)
	}
	sum := r.lat.summary()
	if ceilingLatency == 0 {
		ceilingLatency = time.Duration(sum.Mean * float64(time.Millisecond))
	}
	st := client.Stats()
	fmt.Fprint(out, benchTable(st, client.Capacity()))
	rate := float64(r.ok) / r.elapsed.Seconds()
	var ceiling float64
	if ceilingLatency > 0 {
		ceiling = float64(client.Capacity()) * float64(time.Second) / float64(ceilingLatency)
	}
	fmt.Fprintf(out, "\nlatency per call: p50 %.1f ms, p99 %.1f ms, mean %.1f ms\n", sum.P50, sum.P99, sum.Mean)
	fmt.Fprintf(out, "achieved: %.0f calls/s; ceiling %d x 1000 / %.4g ms = %.0f calls/s (%s); %.1f%% of it\n",
		rate, client.Capacity(), float64(ceilingLatency)/float64(time.Millisecond), ceiling,
		map[bool]string{true: "the fakes' latency", false: "the measured mean latency"}[o.fake > 0], 100*rate/max(ceiling, 1e-9))
	fmt.Fprintf(out, "calls: %d ok, %d failed, %d cut short by the end of the run\n", r.ok, r.failed, r.cut)
	if r.firstErr != nil {
		fmt.Fprintln(out, "first error:", r.firstErr)
	}
	if o.stats != "" {
		rs := newRunStats(client, nil, amlpool.BatchStats{Requests: int(r.ok + r.failed)}, r.elapsed, o.chunk, r.lat)
		rs.Interrupted = interrupted
		if err := writeJSON(o.stats, rs); err != nil {
			return err
		}
	}
	if interrupted {
		return errInterrupted
	}
	if r.failed > 0 {
		return fmt.Errorf("%d of %d calls failed; the first: %w", r.failed, r.ok+r.failed, r.firstErr)
	}
	return nil
}

// errInterrupted is what bench and demo return when a signal cut the run
// short, after printing its figures, and fake when a signal stopped it:
// exit status 130, as score's.
var errInterrupted = errors.New("interrupted")

// exitStatus is the exit status of a bench, demo or fake run that returned err:
// 0 for none, 130 for errInterrupted (the run said so already), else as
// failed says.
func exitStatus(stderr io.Writer, command string, err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errInterrupted):
		return 130
	}
	return failed(stderr, command, err)
}

// benchTable is each endpoint's attempts, by outcome, and their sum. An
// attempt is one request: a call makes one per try, so the ok column adds
// up to the calls that succeeded, while throttles and errors count tries
// that were retried as well as those that failed their call.
func benchTable(st amlpool.Stats, capacity int) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "endpoint\tMCC\tattempts\tok\tthrottled\terrors\tcancelled\tshare\tslot share\t")
	var sum amlpool.EndpointStats
	for _, e := range st.Endpoints {
		sum.MaxConcurrentCalls += e.MaxConcurrentCalls
		sum.Calls += e.Calls
		sum.Throttles += e.Throttles
		sum.Errors += e.Errors
		sum.Cancelled += e.Cancelled
	}
	row := func(name string, e amlpool.EndpointStats) {
		// Errors include throttles; the columns show them apart.
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f%%\t%.1f%%\t\n", name, e.MaxConcurrentCalls, e.Calls,
			e.Calls-e.Errors-e.Cancelled, e.Throttles, e.Errors-e.Throttles, e.Cancelled,
			100*float64(e.Calls)/float64(max(sum.Calls, 1)), 100*float64(e.MaxConcurrentCalls)/float64(max(capacity, 1)))
	}
	for _, e := range st.Endpoints {
		row(e.Name, e)
	}
	row("total", sum)
	tw.Flush()
	return b.String()
}

// benchBody builds one request from the first n rows of a file.
func benchBody(path string, n int, cfg *poolConfig, kind amlpool.Kind) ([]byte, error) {
	r, f, err := openInput(path, rows.FormatOf(path))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t := &amlpool.Table{ColumnNames: r.Columns()}
	for len(t.Values) < n {
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		t.Values = append(t.Values, row)
	}
	if len(t.Values) == 0 {
		return nil, fmt.Errorf("%s: no rows to send", path)
	}
	if kind == amlpool.Online { // the MLflow form
		return json.Marshal(map[string]any{"input_data": map[string]any{"columns": t.ColumnNames, "data": t.Values}})
	}
	req := amlpool.Request{Inputs: map[string]*amlpool.Table{cmpOr(cfg.Input, "input1"): t}, GlobalParameters: cfg.GlobalParameters}
	return req.MarshalJSON()
}

type driveResult struct {
	ok, failed int64
	cut        int64 // calls the end of the run cut short
	elapsed    time.Duration
	lat        *latencies
	firstErr   error
}

// drive sends body from callers goroutines until d passes or ctx ends.
func drive(ctx context.Context, c *amlpool.Client, body []byte, callers int, d time.Duration) driveResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex // guards r
	r := driveResult{lat: newLatencies(100_000)}
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t0 := time.Now()
				_, err := c.Do(ctx, body)
				el := time.Since(t0)
				if err != nil && ctx.Err() != nil {
					mu.Lock()
					r.cut++ // cut short by the end of the run, not failed
					mu.Unlock()
					return
				}
				mu.Lock()
				r.lat.add(el)
				if err == nil {
					r.ok++
				} else {
					r.failed++
					if r.firstErr == nil {
						r.firstErr = err
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	return r
}
