package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/amlpool/amlpool"
)

const planHelp = `Usage: amlpool plan (--rps N | --rows-per-second N) (--latency D | --from-stats FILE) [flags]

Says how many endpoints a target rate needs, by the service's capacity
formula: one endpoint serves MCC x 1000 / latency_ms calls per second
(20 slots at 50 ms = 400 calls/s). A call is one request, which may carry
many rows: "amlpool score" sends --chunk-rows rows per call (100 by
default). Give the target in calls (--rps) or in rows (--rows-per-second,
turned into calls with the rows per call). The target is raised by the
headroom (default 25%) so the pool is not run at its very edge, where any
latency spike turns into waiting.

--from-stats takes the latency from a run instead: the mean request
latency that "amlpool score" or "amlpool bench" wrote to its --stats file,
for requests of that run's chunk size, which is then the rows per call;
and the endpoints' MCC when they all share one and --mcc is not given.
plan counts Classic endpoints (MCC 1 to 200): a run whose endpoints share
a cap over 200 (online endpoints) needs --mcc.

--rows N adds how long N rows take on the endpoints planned, with every
slot busy, as "amlpool score" keeps them: N rows make N / rows per call
calls (rounded up), which the slots take in rounds of one latency each.
Start-up, retries and a latency that grows under load come on top.

Examples:
  amlpool plan --rps 4000 --latency 50ms
  amlpool plan --rps 4000 --latency 50ms --mcc 200
  amlpool plan --rows-per-second 40000 --chunk-rows 100 --latency 120ms
  amlpool plan --rows-per-second 4000 --from-stats scored.stats.json
  amlpool plan --rows-per-second 4000 --from-stats scored.stats.json --rows 5000000

Flags:
`

func runPlan(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), planHelp); fs.PrintDefaults() }
	rps := fs.Float64("rps", 0, "target calls (requests) per second")
	rowsPS := fs.Float64("rows-per-second", 0, "target rows per second, instead of --rps")
	chunk := fs.Int("chunk-rows", 0, "rows per call, for --rows-per-second and --rows (default: the --from-stats run's, else 100)")
	latency := fs.Duration("latency", 0, "service latency of one call, e.g. 50ms")
	mcc := fs.Int("mcc", amlpool.DefaultMaxConcurrentCalls, "Max Concurrent Calls of each endpoint (1-200)")
	headroom := fs.Float64("headroom", 0.25, "spare capacity to plan for, as a fraction of the target")
	fromStats := fs.String("from-stats", "", "take the latency, rows per call (and MCC) from a run's --stats file")
	batch := fs.Int("rows", 0, "rows of a batch: add how long they take on the endpoints planned")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	if fs.NArg() > 0 { // flag stops at it: the flags after it would go unread
		fmt.Fprintf(stderr, "amlpool plan: unexpected argument %q (see amlpool plan --help)\n", fs.Arg(0))
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fail := func(msg string) int { fmt.Fprintln(stderr, "amlpool plan:", msg); return 2 }
	if set["rps"] && set["rows-per-second"] {
		return fail("give --rps (calls) or --rows-per-second (rows), not both")
	}
	if set["rows"] && *batch < 1 {
		return fail(fmt.Sprintf("--rows %d: want at least 1 row to time", *batch))
	}
	if *chunk < 0 {
		return fail(fmt.Sprintf("--chunk-rows %d: must not be negative (0: the --from-stats run's, else %d)", *chunk, amlpool.DefaultChunkRows))
	}
	p := plan{rps: *rps, latency: *latency, mcc: *mcc, headroom: *headroom, rows: *chunk, batch: *batch, latencySource: "--latency"}
	if *fromStats != "" {
		if *latency != 0 {
			return fail("give --latency or --from-stats, not both")
		}
		st, err := readStats(*fromStats)
		if err != nil {
			return fail(err.Error())
		}
		p.latency = time.Duration(st.LatencyMs.Mean * float64(time.Millisecond))
		// The mean is over the requests measured, not all those sent: a
		// chunk that never reached an endpoint has no latency.
		p.latencySource = fmt.Sprintf("mean of %d requests measured in %s", st.LatencyMs.Count, *fromStats)
		if st.LatencyMs.Count == 0 { // a stats file from before latencyMs.count
			p.latencySource = "mean measured in " + *fromStats
		}
		if m := commonMCC(st.Endpoints); m > 0 && !set["mcc"] {
			if m > amlpool.MaxMaxConcurrentCalls { // online endpoints: plan counts Classic ones
				return fail(fmt.Sprintf("%s: the run's endpoints share a cap of %d calls, over the %d a Classic endpoint takes at most; "+
					"plan counts Classic endpoints: give --mcc (1 to %d) for the endpoints to plan", *fromStats, m, amlpool.MaxMaxConcurrentCalls, amlpool.MaxMaxConcurrentCalls))
			}
			p.mcc = m
		}
		if p.rows == 0 {
			p.rows, p.rowsSource = max(st.ChunkRows, 1), "the chunk size of "+*fromStats
		}
	}
	if p.rows == 0 {
		p.rows, p.rowsSource = amlpool.DefaultChunkRows, "amlpool score's default chunk size"
	}
	if p.rowsSource == "" {
		p.rowsSource = "--chunk-rows"
	}
	if set["rows-per-second"] {
		p.targetRows = *rowsPS
		p.rps = *rowsPS / float64(p.rows)
	}
	if err := p.check(); err != nil {
		return fail(err.Error())
	}
	p.print(stdout)
	return 0
}

// plan is the capacity formula applied to a target.
type plan struct {
	rps           float64 // target calls/s
	targetRows    float64 // target rows/s when the target was given in rows; 0 otherwise
	rows          int     // rows per call
	batch         int     // rows of a batch to time; 0: none
	latency       time.Duration
	mcc           int
	headroom      float64
	latencySource string
	rowsSource    string
}

func (p plan) check() error {
	switch {
	case math.IsNaN(p.rps) || math.IsInf(p.rps, 0):
		return fmt.Errorf("--rps or --rows-per-second: %v is not a rate; want a number above 0", p.rps)
	case math.IsNaN(p.headroom) || math.IsInf(p.headroom, 0):
		return fmt.Errorf("--headroom %v: want a fraction of the target, such as 0.25", p.headroom)
	case p.rps <= 0:
		return errors.New("--rps or --rows-per-second: need a target rate above 0")
	case p.latency <= 0:
		return errors.New("--latency: need a latency above 0 (or --from-stats with a run that made requests)")
	case p.mcc < 1 || p.mcc > amlpool.MaxMaxConcurrentCalls:
		return fmt.Errorf("--mcc %d: want 1 to %d", p.mcc, amlpool.MaxMaxConcurrentCalls)
	case p.headroom < 0:
		return fmt.Errorf("--headroom %v: must not be negative", p.headroom)
	}
	// A count beyond int's range would print as a negative number.
	if need := p.rps * (1 + p.headroom) / p.perEndpoint(p.mcc); !(need <= maxPlanEndpoints) {
		return fmt.Errorf("--rps or --rows-per-second: %s calls/s with %v%% headroom at %v needs over %d endpoints; check the target, --headroom and the latency",
			num(p.rps), 100*p.headroom, p.latency, maxPlanEndpoints)
	}
	return nil
}

// maxPlanEndpoints is the most endpoints a plan counts.
const maxPlanEndpoints = 1_000_000

// perEndpoint is one endpoint's capacity in calls/s.
func (p plan) perEndpoint(mcc int) float64 {
	return float64(mcc) * float64(time.Second) / float64(p.latency)
}

// endpoints is how many endpoints of mcc slots serve the target with its
// headroom: at least one, also for a target so small that the quotient
// rounds to 0.
func (p plan) endpoints(mcc int) int {
	return max(1, int(math.Ceil(p.rps*(1+p.headroom)/p.perEndpoint(mcc)*(1-1e-12))))
}

func (p plan) print(w io.Writer) {
	ms := float64(p.latency) / float64(time.Millisecond)
	per := p.perEndpoint(p.mcc)
	n := p.endpoints(p.mcc)
	if p.targetRows > 0 {
		fmt.Fprintf(w, "planning for rows: %s rows/s = %s calls/s of %d rows (%s)\n", num(p.targetRows), num(p.rps), p.rows, p.rowsSource)
	} else {
		fmt.Fprintf(w, "planning for calls: %s calls/s; at %d rows per call (%s) that is %s rows/s; use --rows-per-second to plan for rows\n",
			num(p.rps), p.rows, p.rowsSource, num(p.rps*float64(p.rows)))
	}
	fmt.Fprintf(w, "latency: %.4g ms per call (%s)\n", ms, p.latencySource)
	fmt.Fprintf(w, "capacity per endpoint: %d slots x 1000 / %.4g ms = %.0f calls/s (%.0f rows/s)\n", p.mcc, ms, per, per*float64(p.rows))
	fmt.Fprintf(w, "target: %s calls/s + %.0f%% headroom = %s calls/s\n", num(p.rps), 100*p.headroom, num(p.rps*(1+p.headroom)))
	fmt.Fprintf(w, "endpoints needed: %d at MCC %d (%.0f calls/s; %.0f%% busy at the target)\n",
		n, p.mcc, float64(n)*per, 100*p.rps/(float64(n)*per))
	if p.mcc < amlpool.MaxMaxConcurrentCalls {
		m := p.endpoints(amlpool.MaxMaxConcurrentCalls)
		fmt.Fprintf(w, "  or %d at MCC %d (%.0f calls/s), where the service allows it\n",
			m, amlpool.MaxMaxConcurrentCalls, float64(m)*p.perEndpoint(amlpool.MaxMaxConcurrentCalls))
	}
	if p.batch > 0 {
		calls := ceilDiv(p.batch, p.rows)
		rounds := ceilDiv(calls, n*p.mcc)
		fmt.Fprintf(w, "time for %d rows: %d calls of up to %d rows on %d x %d slots = %d rounds of %.4g ms = %s, every slot busy (as amlpool score keeps them)\n",
			p.batch, calls, p.rows, n, p.mcc, rounds, ms, span(float64(rounds)*p.latency.Seconds()))
	}
}

// ceilDiv is a / b rounded up, for a >= 0 and b > 0, without overflow.
func ceilDiv(a, b int) int {
	q := a / b
	if a%b != 0 {
		q++
	}
	return q
}

// span writes a time in seconds as a Duration does, to the millisecond
// under a minute and to the second above; one too long for a Duration (292
// years) in years. Too long is from the second that rounding takes past
// the largest Duration, which Round would give, to the nanosecond.
func span(secs float64) string {
	if math.Round(secs) > float64(math.MaxInt64/int64(time.Second)) {
		return strconv.FormatFloat(secs/(365.25*24*3600), 'g', 3, 64) + " years"
	}
	d := time.Duration(secs * float64(time.Second))
	switch {
	case d < time.Second:
		return d.Round(time.Microsecond).String()
	case d < time.Minute:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// num writes a rate: whole numbers as they are, others to one decimal.
func num(f float64) string {
	switch {
	case f == math.Trunc(f):
		return strconv.FormatFloat(f, 'f', 0, 64)
	case math.Abs(f) < 1:
		return strconv.FormatFloat(f, 'g', 2, 64) // a rate under one: 0.01, not 0.0
	}
	return strconv.FormatFloat(f, 'f', 1, 64)
}

func readStats(path string) (*runStats, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--from-stats: %w", err)
	}
	var st runStats
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, jsonError(b, err))
	}
	if st.Requests == 0 || st.LatencyMs.Mean <= 0 {
		return nil, fmt.Errorf("%s: the run measured no request latency (requests: %d)", path, st.Requests)
	}
	if st.LatencyMs.Mean*float64(time.Millisecond) >= float64(math.MaxInt64) { // float64(math.MaxInt64) is 2^63
		return nil, fmt.Errorf("%s: latencyMs.mean %v ms: more than the 292 years a latency can be", path, st.LatencyMs.Mean)
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
