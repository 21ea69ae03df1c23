package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/amltest"
)

func TestPlan(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"the issue's example", []string{"--rps", "4000", "--latency", "50ms"}, []string{
			"capacity per endpoint: 20 slots x 1000 / 50 ms = 400 calls/s",
			"target: 4000 calls/s + 25% headroom = 5000 calls/s",
			"endpoints needed: 13 at MCC 20 (5200 calls/s; 77% busy at the target)",
			"or 2 at MCC 200 (8000 calls/s)",
		}},
		{"a rate under one call a second", []string{"--rows-per-second", "1", "--chunk-rows", "100", "--latency", "50ms"}, []string{
			"planning for rows: 1 rows/s = 0.01 calls/s of 100 rows",
			"target: 0.01 calls/s + 25% headroom = 0.013 calls/s",
		}},
		{"exact fit needs no extra endpoint", []string{"--rps", "4000", "--latency", "50ms", "--mcc", "200", "--headroom", "0"}, []string{
			"endpoints needed: 1 at MCC 200 (4000 calls/s; 100% busy at the target)",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			require.Equal(t, 0, run(append([]string{"plan"}, tt.args...), &out, &errOut), errOut.String())
			for _, w := range tt.want {
				assert.Contains(t, out.String(), w)
			}
		})
	}
}

// TestPlanFromStats is the case: a run with 10-row chunks, and a
// target of 4000 rows/s. The plan says which it plans for and uses the
// run's chunk size; a target in calls says what it means in rows.
func TestPlanFromStats(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.stats.json")
	// 400 requests sent; 380 of them measured (the others never reached an
	// endpoint): the mean is over those 380.
	require.NoError(t, writeJSON(path, runStats{Requests: 400, ChunkRows: 10, LatencyMs: latencySummary{Count: 380, Mean: 50},
		Endpoints: []endpointStats{{Name: "a", MaxConcurrentCalls: 20}, {Name: "b", MaxConcurrentCalls: 20}}}))
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"rows", []string{"--rows-per-second", "4000"}, []string{
			"planning for rows: 4000 rows/s = 400 calls/s of 10 rows (the chunk size of " + path + ")",
			"latency: 50 ms per call (mean of 380 requests measured in " + path + ")",
			"capacity per endpoint: 20 slots x 1000 / 50 ms = 400 calls/s (4000 rows/s)",
			"target: 400 calls/s + 25% headroom = 500 calls/s",
			"endpoints needed: 2 at MCC 20 (800 calls/s; 50% busy at the target)",
		}},
		{"calls", []string{"--rps", "4000"}, []string{
			"planning for calls: 4000 calls/s; at 10 rows per call (the chunk size of " + path + ") that is 40000 rows/s; use --rows-per-second to plan for rows",
			"endpoints needed: 13 at MCC 20",
		}},
		{"rows per call given", []string{"--rows-per-second", "4000", "--chunk-rows", "100"}, []string{
			"planning for rows: 4000 rows/s = 40 calls/s of 100 rows (--chunk-rows)",
			"endpoints needed: 1 at MCC 20",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			require.Equal(t, 0, run(append([]string{"plan", "--from-stats", path}, tt.args...), &out, &errOut), errOut.String())
			for _, w := range tt.want {
				assert.Contains(t, out.String(), w)
			}
		})
	}
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"plan", "--rows-per-second", "4000", "--latency", "50ms"}, &out, &errOut))
	assert.Contains(t, out.String(), "planning for rows: 4000 rows/s = 40 calls/s of 100 rows (amlpool score's default chunk size)")
}

// A stats file written before latencyMs.count says no number: the
// requests it sent are not those its mean is over. latencies counts them.
func TestPlanFromStatsWithoutCount(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.stats.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"requests": 400, "chunkRows": 10, "latencyMs": {"mean": 50, "p50": 50, "p99": 60}}`), 0o644))
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"plan", "--rps", "400", "--from-stats", path}, &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "latency: 50 ms per call (mean measured in "+path+")\n")

	l := newLatencies(2)
	for range 3 {
		l.add(time.Millisecond)
	}
	assert.Equal(t, latencySummary{Count: 3, Mean: 1, P50: 1, P99: 1}, l.summary(), "over all 3, though it keeps a sample of 2")
}

// A run whose endpoints share a cap over 200 (online endpoints) does not
// lend it to the plan, which counts Classic endpoints: the plan says so and
// asks for --mcc, rather than blaming an --mcc that was not given; with
// --mcc it plans.
func TestPlanFromStatsOverClassicCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "online.stats.json")
	require.NoError(t, writeJSON(path, runStats{Requests: 400, ChunkRows: 10, LatencyMs: latencySummary{Mean: 50},
		Endpoints: []endpointStats{{Name: "blue", MaxConcurrentCalls: 300}, {Name: "green", MaxConcurrentCalls: 300}}}))
	var out, errOut bytes.Buffer
	assert.Equal(t, 2, run([]string{"plan", "--rps", "4000", "--from-stats", path}, &out, &errOut))
	assert.Equal(t, "amlpool plan: "+path+": the run's endpoints share a cap of 300 calls, over the 200 a Classic endpoint takes at most; "+
		"plan counts Classic endpoints: give --mcc (1 to 200) for the endpoints to plan\n", errOut.String())
	assert.Empty(t, out.String())
	out.Reset()
	errOut.Reset()
	require.Equal(t, 0, run([]string{"plan", "--rps", "4000", "--from-stats", path, "--mcc", "200"}, &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "endpoints needed: 2 at MCC 200")
}

// --rows N adds how long N rows take on the planned endpoints with every
// slot busy, as "amlpool score" keeps them: ceil(N / rows per call) calls,
// taken in rounds of one latency, as many at a time as there are slots.
func TestPlanBatchTime(t *testing.T) {
	stats := filepath.Join(t.TempDir(), "run.stats.json")
	require.NoError(t, writeJSON(stats, runStats{Requests: 400, ChunkRows: 10, LatencyMs: latencySummary{Count: 400, Mean: 50},
		Endpoints: []endpointStats{{Name: "a", MaxConcurrentCalls: 20}}}))
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		// 13 endpoints of 20 slots: 10000 calls / 260 = 38.5, so 39 rounds.
		{"a million rows", []string{"--rps", "4000", "--latency", "50ms", "--rows", "1000000"},
			"time for 1000000 rows: 10000 calls of up to 100 rows on 13 x 20 slots = 39 rounds of 50 ms = 1.95s, every slot busy (as amlpool score keeps them)\n"},
		{"one row takes one call's latency", []string{"--rps", "4000", "--latency", "50ms", "--rows", "1"},
			"time for 1 rows: 1 calls of up to 100 rows on 13 x 20 slots = 1 rounds of 50 ms = 50ms, every slot busy"},
		{"the chunk size given", []string{"--rows-per-second", "4000", "--chunk-rows", "500", "--latency", "2s", "--rows", "10000000"},
			"time for 10000000 rows: 20000 calls of up to 500 rows on 1 x 20 slots = 1000 rounds of 2000 ms = 33m20s, every slot busy"},
		{"the chunk size of a run", []string{"--rps", "400", "--from-stats", stats, "--rows", "25"},
			"time for 25 rows: 3 calls of up to 10 rows on 2 x 20 slots = 1 rounds of 50 ms = 50ms, every slot busy"},
		{"beyond what a Duration holds", []string{"--rps", "1", "--latency", "1h", "--rows", "9000000000000000000"},
			"time for 9000000000000000000 rows: 90000000000000000 calls of up to 100 rows on 225 x 20 slots = 20000000000000 rounds of 3.6e+06 ms = 2.28e+09 years, every slot busy"},
		// Under what a Duration holds, but not once rounded to the second:
		// it once printed the largest Duration, to the nanosecond.
		{"within a second of what a Duration holds", []string{"--rps", "1e-300", "--latency", "2562047h47m16.854773s", "--rows", "1"},
			"time for 1 rows: 1 calls of up to 100 rows on 1 x 20 slots = 1 rounds of 9.223e+12 ms = 292 years, every slot busy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			require.Equal(t, 0, run(append([]string{"plan"}, tt.args...), &out, &errOut), errOut.String())
			assert.Contains(t, out.String(), tt.want)
		})
	}
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"plan", "--rps", "4000", "--latency", "50ms"}, &out, &errOut), errOut.String())
	assert.NotContains(t, out.String(), "time for", "without --rows")
	for _, n := range []string{"0", "-1"} {
		out.Reset()
		errOut.Reset()
		assert.Equal(t, 2, run([]string{"plan", "--rps", "4000", "--latency", "50ms", "--rows", n}, &out, &errOut))
		assert.Equal(t, "amlpool plan: --rows "+n+": want at least 1 row to time\n", errOut.String())
		assert.Empty(t, out.String())
	}
}

// A target so small that the endpoints it needs round to none (a rate in
// the float's subnormal range) still needs one: plan once said 0, with
// "+Inf% busy", and with --rows divided by the slots of no endpoint and
// panicked.
func TestPlanTinyTargetNeedsOneEndpoint(t *testing.T) {
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"plan", "--rps", "1e-320", "--latency", "1ms", "--rows", "1"}, &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "endpoints needed: 1 at MCC 20 (20000 calls/s; 0% busy at the target)\n")
	assert.Contains(t, out.String(), "  or 1 at MCC 200 ")
	assert.Contains(t, out.String(), "time for 1 rows: 1 calls of up to 100 rows on 1 x 20 slots = 1 rounds of 1 ms = 1ms, ")
}

// span writes a time of any length without a sign or a false precision:
// to the second up to the largest Duration, in years from the second that
// rounding would take past it.
func TestSpanNearTheLargestDuration(t *testing.T) {
	largest := float64(math.MaxInt64) / float64(time.Second)
	for _, tt := range []struct {
		secs float64
		want string
	}{
		{9223372035.4, "2562047h47m15s"},
		{9223372035.9, "2562047h47m16s"},
		{9223372036, "2562047h47m16s"},
		{9223372036.49, "2562047h47m16s"},
		{9223372036.5, "292 years"},
		{math.Nextafter(largest, 0), "292 years"},
		{largest, "292 years"},
		{1e300, "3.17e+292 years"},
	} {
		assert.Equal(t, tt.want, span(tt.secs), "%v s", tt.secs)
	}
}

func TestPlanBadFlags(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.json")
	require.NoError(t, os.WriteFile(empty, []byte(`{"requests":0}`), 0o644))
	// A mean latency a Duration cannot hold (here just under 2^63 ns as a
	// float, which rounds up to it) was once taken as a latency under 0.
	huge := filepath.Join(t.TempDir(), "huge.json")
	require.NoError(t, os.WriteFile(huge, []byte(`{"requests":1,"latencyMs":{"count":1,"mean":9223372036854.775}}`), 0o644))
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--latency", "50ms"}, "--rps or --rows-per-second: need a target rate"},
		{[]string{"--rps", "1", "--rows-per-second", "10", "--latency", "50ms"}, "not both"},
		{[]string{"--rows-per-second", "10", "--latency", "50ms", "--chunk-rows", "-1"}, "--chunk-rows -1: must not be negative (0: the --from-stats run's, else 100)"},
		{[]string{"--rps", "10"}, "--latency: need a latency"},
		{[]string{"--rps", "10", "--latency", "1s", "--mcc", "0"}, "--mcc 0: want 1 to 200"},
		{[]string{"--rps", "10", "--from-stats", empty}, "the run measured no request latency"},
		{[]string{"--rps", "10", "--from-stats", huge}, "amlpool plan: " + huge + ": latencyMs.mean 9.223372036854775e+12 ms: more than the 292 years a latency can be\n"},
		{[]string{"--rps", "10", "--from-stats", "/nonexistent/run.stats.json"}, "amlpool plan: --from-stats: open /nonexistent/run.stats.json: no such file"},
		{[]string{"--rps", "10", "--latency", "1s", "--from-stats", empty}, "not both"},
	} {
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, run(append([]string{"plan"}, tt.args...), &out, &errOut), tt.args)
		assert.Contains(t, errOut.String(), tt.msg, tt.args)
	}
}

// TestBenchFake checks that bench's figures add up: per endpoint, attempts
// are ok + throttled + errors + cancelled; the total row is the sum; and
// the calls that succeeded are the ok attempts.
func TestBenchFake(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bench.json")
	var out, errOut bytes.Buffer
	code := run([]string{"bench", "--fake", "2", "--mcc", "2", "--latency", "1ms", "--duration", "200ms", "--stats", path}, &out, &errOut)
	require.Equal(t, 0, code, errOut.String())
	for _, w := range []string{"latency per call: p50", "ceiling 4 x 1000 / 1 ms = 4000 calls/s (the fakes' latency)", " 0 failed, "} {
		assert.Contains(t, out.String(), w)
	}
	var sum [5]int64
	var total [5]int64
	var okCalls int64
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 9 && (f[0] == "fake1" || f[0] == "fake2" || f[0] == "total"):
			var n [5]int64
			for i := range n {
				v, err := strconv.ParseInt(f[2+i], 10, 64)
				require.NoError(t, err, line)
				n[i] = v
			}
			assert.Equal(t, n[0], n[1]+n[2]+n[3]+n[4], "attempts = ok + throttled + errors + cancelled: %s", line)
			if f[0] == "total" {
				total = n
			} else {
				for i := range n {
					sum[i] += n[i]
				}
			}
		case strings.HasPrefix(line, "calls: "):
			_, err := fmt.Sscanf(line, "calls: %d ok", &okCalls)
			require.NoError(t, err)
		}
	}
	assert.Equal(t, sum, total, "the total row is the sum of the endpoints'")
	assert.Positive(t, okCalls)
	assert.Equal(t, okCalls, total[1], "the calls that succeeded are the ok attempts")

	st, err := readStats(path)
	require.NoError(t, err)
	assert.Positive(t, st.Requests)
	assert.Len(t, st.Endpoints, 2)
	assert.Equal(t, 2, run([]string{"bench"}, &out, &errOut))
	assert.Contains(t, errOut.String(), "give --config (with --in) or --fake N")
}

// bench's flag errors name the flag and the value given, each alone.
func TestBenchBadFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--fake", "-1"}, "amlpool bench: --fake -1: want at least 1 fake endpoint\n"},
		{[]string{"--fake", "-1", "--config", "pool.json"}, "amlpool bench: --fake -1: want at least 1 fake endpoint\n"},
		{[]string{"--fake", "1", "--callers", "-2"}, "amlpool bench: --callers -2: must not be negative (0: the pool's total slots)\n"},
		{[]string{"--config", "/nonexistent/pool.json", "--in", "rows.csv"}, "amlpool bench: --config: open /nonexistent/pool.json: no such file or directory\n"},
		{[]string{"--fake", "1", "--callers", "65537"}, "amlpool bench: --callers 65537: must be at most 65536\n"},
		{[]string{"--fake", "1", "--chunk-rows", "0"}, "amlpool bench: --chunk-rows 0: want at least 1\n"},
		{[]string{"--fake", "1", "--duration", "0s"}, "amlpool bench: --duration 0s: must be positive\n"},
		{[]string{"--fake", "1", "--latency", "-1ms"}, "amlpool bench: --latency -1ms: must be positive\n"},
		{[]string{"--fake", "1", "--mcc", "201"}, "amlpool bench: --mcc 201: want 1 to 200\n"},
		// A flag of the other mode would be ignored.
		{[]string{"--fake", "1", "--in", "rows.csv"}, "amlpool bench: --in and --chunk-rows go with --config: --fake sends a sample row\n"},
		{[]string{"--fake", "1", "--chunk-rows", "10"}, "amlpool bench: --in and --chunk-rows go with --config: --fake sends a sample row\n"},
		{[]string{"--config", "pool.json", "--in", "rows.csv", "--mcc", "3"}, "amlpool bench: --mcc and --latency go with --fake: with --config the caps are the config's, and the ceiling uses the measured latency\n"},
		{[]string{"--config", "pool.json", "--in", "rows.csv", "--latency", "5ms"}, "amlpool bench: --mcc and --latency go with --fake: with --config the caps are the config's, and the ceiling uses the measured latency\n"},
	} {
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, run(append([]string{"bench"}, tt.args...), &out, &errOut), tt.args)
		assert.Equal(t, tt.msg, errOut.String(), tt.args)
	}
}

// A rate or headroom that is not a finite number, or a target that needs
// more endpoints than an int holds, is refused with exit status 2 naming
// the flag: plan once printed "-9223372036854775808 endpoints" for them.
func TestPlanRefusesNonFiniteAndHugeTargets(t *testing.T) {
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--rps", "NaN", "--latency", "50ms"}, "amlpool plan: --rps or --rows-per-second: NaN is not a rate; want a number above 0\n"},
		{[]string{"--rps", "Inf", "--latency", "50ms"}, "amlpool plan: --rps or --rows-per-second: +Inf is not a rate"},
		{[]string{"--rows-per-second", "NaN", "--latency", "50ms"}, "amlpool plan: --rps or --rows-per-second: NaN is not a rate"},
		{[]string{"--rps", "100", "--latency", "50ms", "--headroom", "NaN"}, "amlpool plan: --headroom NaN: want a fraction of the target"},
		{[]string{"--rps", "100", "--latency", "50ms", "--headroom", "Inf"}, "amlpool plan: --headroom +Inf: want a fraction of the target"},
		{[]string{"--rps", "1e308", "--latency", "50ms"}, "needs over 1000000 endpoints; check the target, --headroom and the latency\n"},
		{[]string{"--rps", "100", "--latency", "50ms", "--headroom", "1e308"}, "needs over 1000000 endpoints"},
	} {
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, run(append([]string{"plan"}, tt.args...), &out, &errOut), tt.args)
		assert.Contains(t, errOut.String(), tt.msg, tt.args)
		assert.Empty(t, out.String(), tt.args)
	}
	var out, errOut bytes.Buffer // the most plan counts
	require.Equal(t, 0, run([]string{"plan", "--rps", "400000000", "--latency", "50ms", "--headroom", "0"}, &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "endpoints needed: 1000000 at MCC 20 (400000000 calls/s; 100% busy at the target)")
}

// A bench run whose calls fail (here every one: a wrong key) exits with
// status 1 after its figures, saying how many failed; it once exited 0,
// as if the pool had been measured.
func TestBenchFailedCallsExitOne(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 1}}, "")
	k, _, _ := strings.Cut(p.env[0], "=")
	t.Setenv(k, "not-the-key")
	in := filepath.Join(dir, "rows.csv")
	writeIDs(t, in, 1)
	var out, errOut bytes.Buffer
	assert.Equal(t, 1, run([]string{"bench", "--config", p.config, "--in", in, "--duration", "50ms"}, &out, &errOut))
	assert.Contains(t, out.String(), "calls: 0 ok, ")
	assert.Regexp(t, `^amlpool bench: (\d+) of (\d+) calls failed; the first: amlpool: endpoint ep1: HTTP 401 `, errOut.String())
	assert.NotContains(t, errOut.String(), "not-the-key")
}

// A --stats file bench cannot write is refused before any load is driven,
// with exit status 2 naming the flag and the path; it was once found only
// after --duration, when the statistics were written (exit 1).
func TestBenchRefusesAStatsFileItCannotWrite(t *testing.T) {
	stats := filepath.Join(t.TempDir(), "missing", "bench.json")
	var out, errOut bytes.Buffer
	assert.Equal(t, 2, run([]string{"bench", "--fake", "1", "--latency", "1ms", "--duration", "50ms", "--stats", stats}, &out, &errOut))
	assert.Equal(t, "amlpool bench: --stats "+stats+": cannot write it: no such file or directory\n", errOut.String())
	assert.Empty(t, out.String(), "no load was driven")
}
