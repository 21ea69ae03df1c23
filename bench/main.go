// Command bench runs the same workloads through amlpool and through what a
// user could assemble from peer libraries instead (failsafe-go,
// go-retryablehttp, go-kit's sd/lb, and a naive random spread), against fake
// Azure ML Classic endpoints on loopback, and prints one table per workload.
//
// Usage, from the repository root:
//
//	go run -C bench . [flags]
//
// With -md the tables are Markdown, as pasted into the README. The defaults
// take about two minutes; -d and -warmup trade time for precision, -runs
// repeats every measurement and reports the median.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// config is the command line.
type config struct {
	md         bool
	timing     timing
	runs       int
	workloads  []string // names; empty: all
	systems    []string // name substrings; empty: all
	params     params
	cpuProfile string
}

func main() {
	if os.Getenv(serveEnv) != "" {
		serveChild()
		return
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	rep, err := run(ctx, cfg, childLauncher(exe), os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if cfg.md {
		rep.markdown(os.Stdout)
	} else {
		rep.text(os.Stdout)
	}
}

func parseFlags(args []string, out io.Writer) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(out)
	var cfg config
	var wl, sys string
	fs.BoolVar(&cfg.md, "md", false, "print Markdown tables")
	fs.DurationVar(&cfg.timing.window, "d", 2*time.Second, "measurement window of each run")
	fs.DurationVar(&cfg.timing.warmup, "warmup", 500*time.Millisecond, "closed-loop warm-up before each window")
	fs.IntVar(&cfg.runs, "runs", 1, "runs of each system in each workload; the tables show medians")
	fs.StringVar(&wl, "workloads", "", "comma-separated workloads to run (default all: saturation,heterogeneous,failure,overhead)")
	fs.StringVar(&sys, "systems", "", "comma-separated, case-insensitive substrings of the systems to run (default all)")
	fs.IntVar(&cfg.params.endpoints, "endpoints", 5, "endpoints per workload")
	fs.IntVar(&cfg.params.mcc, "mcc", 20, "Max Concurrent Calls of each endpoint")
	fs.DurationVar(&cfg.params.latency, "latency", 50*time.Millisecond, "latency of a normal endpoint")
	fs.IntVar(&cfg.params.callers, "callers", 0, "callers in the saturation workload (default 1.5 × slots)")
	fs.IntVar(&cfg.params.overheadCallers, "overhead-callers", 4, "callers in the overhead workload")
	fs.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to `file`")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	cfg.workloads = splitList(wl)
	cfg.systems = splitList(sys)
	p := cfg.params
	var bad string
	switch {
	case cfg.timing.window <= 0:
		bad = "-d must be positive"
	case cfg.timing.warmup < 0:
		bad = "-warmup must not be negative"
	case cfg.runs < 1:
		bad = "-runs must be at least 1"
	case p.endpoints < 2:
		bad = "-endpoints must be at least 2"
	case p.mcc < 1 || p.mcc > 200:
		bad = "-mcc must be 1 to 200"
	case p.latency <= 0:
		bad = "-latency must be positive"
	case p.callers < 0 || p.overheadCallers < 1:
		bad = "-callers must not be negative and -overhead-callers must be at least 1"
	}
	known := workloads(p)
	for _, name := range cfg.workloads {
		if !slices.ContainsFunc(known, func(w workload) bool { return w.name == name }) {
			bad = fmt.Sprintf("-workloads: unknown workload %q", name)
		}
	}
	if bad != "" {
		fmt.Fprintln(out, "bench:", bad)
		fs.Usage()
		return cfg, fmt.Errorf("%s", bad)
	}
	return cfg, nil
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// selected reports whether name is in list by case-insensitive substring,
// or list is empty.
func selected(list []string, name string) bool {
	if len(list) == 0 {
		return true
	}
	for _, s := range list {
		if strings.Contains(strings.ToLower(name), strings.ToLower(s)) {
			return true
		}
	}
	return false
}

// run measures every selected system in every selected workload, cfg.runs
// times, logging progress to log.
func run(ctx context.Context, cfg config, launch launcher, log io.Writer) (*report, error) {
	rep := &report{cfg: cfg, started: time.Now(), loadBefore: loadAvg()}
	rep.timerLate = timerLateness(ctx, cfg.params.latency)
	for _, w := range workloads(cfg.params) {
		if len(cfg.workloads) > 0 && !slices.Contains(cfg.workloads, w.name) {
			continue
		}
		var syss []system
		for _, sys := range systems() {
			if sys.runsIn(w) && selected(cfg.systems, sys.name) {
				syss = append(syss, sys)
			}
		}
		sums := make([][]summary, len(syss))
		if w.overhead {
			rs, err := runInterleaved(ctx, w, syss, cfg.timing, cfg.runs, launch)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", w.name, err)
			}
			for j, r := range rs {
				logResult(log, w, syss[j], 0, r)
				sums[j] = []summary{r.summary()}
			}
		}
		// Runs go round the systems, so that a change in the machine's load
		// during the workload falls on all of them alike.
		for i := range cfg.runs {
			for j, sys := range syss {
				if w.overhead {
					break
				}
				r, err := runOne(ctx, w, sys, cfg.timing, launch)
				if err != nil {
					return nil, fmt.Errorf("%s, %s: %w", w.name, sys.name, err)
				}
				logResult(log, w, sys, i+1, r)
				sums[j] = append(sums[j], r.summary())
			}
		}
		sec := section{w: w}
		for j, sys := range syss {
			sec.rows = append(sec.rows, row{sys: sys, r: median(sums[j])})
		}
		rep.sections = append(rep.sections, sec)
	}
	rep.loadAfter = loadAvg()
	return rep, nil
}

func logResult(log io.Writer, w workload, sys system, run int, r result) {
	what := "all runs"
	if run > 0 {
		what = fmt.Sprintf("run %d", run)
	}
	fmt.Fprintf(log, "%-13s %-24s %-8s %7.0f ok/s  %d errors  %d throttles  p99 %v",
		w.name, sys.name, what, r.goodput(), r.failed, r.throttled, r.summary().p99.Round(time.Microsecond))
	if w.overhead && r.ok > 0 {
		fmt.Fprintf(log, "  CPU %v/call", (r.cpu / time.Duration(r.ok)).Round(100*time.Nanosecond))
	}
	fmt.Fprintln(log)
}

// timerLateness returns how late, on average, timers of d fire for 100
// goroutines at once: the fakes hold each call that much longer than their
// latency, which no client can win back.
func timerLateness(ctx context.Context, d time.Duration) time.Duration {
	const goroutines, rounds = 100, 10
	var (
		wg   sync.WaitGroup
		late atomic.Int64
	)
	for range goroutines {
		wg.Go(func() {
			for range rounds {
				start := time.Now()
				if !sleep(ctx, d) {
					return
				}
				late.Add(int64(time.Since(start) - d))
			}
		})
	}
	wg.Wait()
	return time.Duration(late.Load() / (goroutines * rounds))
}

// median returns, field by field, the median of rs.
func median(rs []summary) summary {
	pick := func(f func(summary) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	dur := func(f func(summary) time.Duration) time.Duration {
		return time.Duration(pick(func(s summary) float64 { return float64(f(s)) }))
	}
	return summary{
		goodput:    pick(func(s summary) float64 { return s.goodput }),
		errRate:    pick(func(s summary) float64 { return s.errRate }),
		throttles:  int64(pick(func(s summary) float64 { return float64(s.throttles) })),
		p50:        dur(func(s summary) time.Duration { return s.p50 }),
		p99:        dur(func(s summary) time.Duration { return s.p99 }),
		cpuPerCall: dur(func(s summary) time.Duration { return s.cpuPerCall }),
		allocs:     pick(func(s summary) float64 { return s.allocs }),
	}
}
