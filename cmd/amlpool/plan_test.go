package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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

func TestPlanFromStats(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.stats.json")
	require.NoError(t, writeJSON(path, runStats{Requests: 10, LatencyMs: latencySummary{Mean: 100},
		Endpoints: []endpointStats{{Name: "a", MaxConcurrentCalls: 50}, {Name: "b", MaxConcurrentCalls: 50}}}))
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"plan", "--rps", "1000", "--from-stats", path}, &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "latency: 100 ms (mean of 10 requests measured in "+path+")")
	assert.Contains(t, out.String(), "capacity per endpoint: 50 slots x 1000 / 100 ms = 500 calls/s")
	assert.Contains(t, out.String(), "endpoints needed: 3 at MCC 50")
}

func TestPlanBadFlags(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.json")
	require.NoError(t, os.WriteFile(empty, []byte(`{"requests":0}`), 0o644))
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--latency", "50ms"}, "--rps: need a target rate"},
		{[]string{"--rps", "10"}, "--latency: need a latency"},
		{[]string{"--rps", "10", "--latency", "1s", "--mcc", "0"}, "--mcc 0: want 1 to 200"},
		{[]string{"--rps", "10", "--from-stats", empty}, "the run measured no request latency"},
		{[]string{"--rps", "10", "--latency", "1s", "--from-stats", empty}, "not both"},
	} {
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, run(append([]string{"plan"}, tt.args...), &out, &errOut), tt.args)
		assert.Contains(t, errOut.String(), tt.msg, tt.args)
	}
}

func TestBenchFake(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bench.json")
	var out, errOut bytes.Buffer
	code := run([]string{"bench", "--fake", "2", "--mcc", "2", "--latency", "1ms", "--duration", "200ms", "--stats", path}, &out, &errOut)
	require.Equal(t, 0, code, errOut.String())
	for _, w := range []string{"fake1", "fake2", "share", "throttles", "latency per call: p50", "ceiling 4 x 1000 / 1 ms = 4000 calls/s (the fakes' latency)", "0 failed"} {
		assert.Contains(t, out.String(), w)
	}
	st, err := readStats(path)
	require.NoError(t, err)
	assert.Positive(t, st.Requests)
	assert.Len(t, st.Endpoints, 2)
	assert.Equal(t, 2, run([]string{"bench"}, &out, &errOut))
	assert.Contains(t, errOut.String(), "give --config (with --in) or --fake N")
}
