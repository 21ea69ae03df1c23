package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"github.com/amlpool/amlpool"
)

const planHelp = `Usage: amlpool plan --rps N (--latency D | --from-stats FILE) [--mcc N] [--headroom F]

Says how many endpoints a target rate needs, by the service's capacity
formula: one endpoint serves MCC x 1000 / latency_ms calls per second
(20 slots at 50 ms = 400 calls/s). The target is raised by the headroom
(default 25%) so the pool is not run at its very edge, where any latency
spike turns into waiting.

--from-stats takes the latency from a run instead: the mean request
latency that "amlpool score" or "amlpool bench" wrote to its --stats file,
and the endpoints' MCC when they all share one and --mcc is not given.

Examples:
  amlpool plan --rps 4000 --latency 50ms
  amlpool plan --rps 4000 --latency 50ms --mcc 200
  amlpool plan --rps 300 --from-stats scored.stats.json

Flags:
`

func runPlan(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), planHelp); fs.PrintDefaults() }
	rps := fs.Float64("rps", 0, "target calls per second (required)")
	latency := fs.Duration("latency", 0, "service latency of one call, e.g. 50ms")
	mcc := fs.Int("mcc", amlpool.DefaultMaxConcurrentCalls, "Max Concurrent Calls of each endpoint (1-200)")
	headroom := fs.Float64("headroom", 0.25, "spare capacity to plan for, as a fraction of the target")
	fromStats := fs.String("from-stats", "", "take the latency (and MCC) from a run's --stats file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	mccSet := false
	fs.Visit(func(f *flag.Flag) { mccSet = mccSet || f.Name == "mcc" })
	source := "--latency"
	if *fromStats != "" {
		if *latency != 0 {
			fmt.Fprintln(stderr, "amlpool plan: give --latency or --from-stats, not both")
			return 2
		}
		st, err := readStats(*fromStats)
		if err != nil {
			fmt.Fprintln(stderr, "amlpool plan:", err)
			return 2
		}
		*latency = time.Duration(st.LatencyMs.Mean * float64(time.Millisecond))
		source = fmt.Sprintf("mean of %d requests measured in %s", st.Requests, *fromStats)
		if m := commonMCC(st.Endpoints); m > 0 && !mccSet {
			*mcc = m
		}
	}
	p := plan{rps: *rps, latency: *latency, mcc: *mcc, headroom: *headroom}
	if err := p.check(); err != nil {
		fmt.Fprintln(stderr, "amlpool plan:", err)
		return 2
	}
	p.print(stdout, source)
	return 0
}

// plan is the capacity formula applied to a target.
type plan struct {
	rps      float64
	latency  time.Duration
	mcc      int
	headroom float64
}

func (p plan) check() error {
	switch {
	case p.rps <= 0:
		return errors.New("--rps: need a target rate above 0 calls/s")
	case p.latency <= 0:
		return errors.New("--latency: need a latency above 0 (or --from-stats with a run that made requests)")
	case p.mcc < 1 || p.mcc > amlpool.MaxMaxConcurrentCalls:
		return fmt.Errorf("--mcc %d: want 1 to %d", p.mcc, amlpool.MaxMaxConcurrentCalls)
	case p.headroom < 0:
		return fmt.Errorf("--headroom %v: must not be negative", p.headroom)
	}
	return nil
}

// perEndpoint is one endpoint's capacity in calls/s.
func (p plan) perEndpoint(mcc int) float64 {
	return float64(mcc) * float64(time.Second) / float64(p.latency)
}

// endpoints is how many endpoints of mcc slots serve the target with its
// headroom.
func (p plan) endpoints(mcc int) int {
	return int(math.Ceil(p.rps * (1 + p.headroom) / p.perEndpoint(mcc) * (1 - 1e-12)))
}

func (p plan) print(w io.Writer, source string) {
	ms := float64(p.latency) / float64(time.Millisecond)
	per := p.perEndpoint(p.mcc)
	n := p.endpoints(p.mcc)
	fmt.Fprintf(w, "latency: %.4g ms (%s)\n", ms, source)
	fmt.Fprintf(w, "capacity per endpoint: %d slots x 1000 / %.4g ms = %.0f calls/s\n", p.mcc, ms, per)
	fmt.Fprintf(w, "target: %.0f calls/s + %.0f%% headroom = %.0f calls/s\n", p.rps, 100*p.headroom, p.rps*(1+p.headroom))
	fmt.Fprintf(w, "endpoints needed: %d at MCC %d (%.0f calls/s; %.0f%% busy at the target)\n",
		n, p.mcc, float64(n)*per, 100*p.rps/(float64(n)*per))
	if p.mcc < amlpool.MaxMaxConcurrentCalls {
		m := p.endpoints(amlpool.MaxMaxConcurrentCalls)
		fmt.Fprintf(w, "  or %d at MCC %d (%.0f calls/s), where the service allows it\n",
			m, amlpool.MaxMaxConcurrentCalls, float64(m)*p.perEndpoint(amlpool.MaxMaxConcurrentCalls))
	}
}

func readStats(path string) (*runStats, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st runStats
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, jsonError(b, err))
	}
	if st.Requests == 0 || st.LatencyMs.Mean <= 0 {
		return nil, fmt.Errorf("%s: the run measured no request latency (requests: %d)", path, st.Requests)
	}
	return &st, nil
}

// commonMCC returns the MCC all endpoints share, or 0.
func commonMCC(eps []endpointStats) int {
	m := 0
	for i, e := range eps {
		if i > 0 && e.MaxConcurrentCalls != m {
			return 0
		}
		m = e.MaxConcurrentCalls
	}
	return m
}
