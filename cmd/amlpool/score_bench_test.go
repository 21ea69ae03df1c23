package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// scoreOnce runs the built command on in and returns the wall time and the
// process's peak resident memory.
func scoreOnce(b *testing.B, p *fakePool, in, dir string) (time.Duration, int64) {
	out := filepath.Join(dir, "scored.csv")
	os.Remove(out)
	cmd := p.command(b, "score", "--config", p.config, "--in", in, "--out", out, "--progress", "none")
	start := time.Now()
	if code, stderr := runCmd(b, cmd); code != 0 {
		b.Fatalf("exit %d: %s", code, stderr)
	}
	el := time.Since(start)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return el, ru.Maxrss * 1024 // Linux reports KiB
}

// BenchmarkScoreFile scores a 100,000-row file with the built command on a
// fake pool of 2 endpoints x 20 slots at 100 ms, whose formula ceiling is
// 40 x 1000 / 100 = 400 calls/s = 40,000 rows/s at 100 rows per call, and
// reports the rate beside it. The whole command counts: start-up, reading,
// scoring, writing. (The fake servers run in the benchmark process, on the
// same cores as the command: at lower latencies their JSON work, not the
// pool, sets the pace on a small machine.)
func BenchmarkScoreFile(b *testing.B) {
	const n, mcc, eps, latency, chunk = 100_000, 20, 2, 100 * time.Millisecond, 100
	dir := b.TempDir()
	// A model that returns one label per row, as many real services do,
	// keeps the fakes' own JSON work small.
	label := func(req *amlpool.Request) (*amlpool.Response, error) {
		vals := make([][]any, len(req.Inputs["input1"].Values))
		for i := range vals {
			vals[i] = []any{"1"}
		}
		return &amlpool.Response{Results: map[string]*amlpool.Output{"output1": {Type: "table",
			Value: amlpool.Table{ColumnNames: []string{"Scored Labels"}, Values: vals}}}}, nil
	}
	cfg := amltest.Config{MaxConcurrentCalls: mcc, Latency: latency, Score: label}
	p := newFakePool(b, dir, []amltest.Config{cfg, cfg}, "")
	in := filepath.Join(dir, "rows.csv")
	writeIDs(b, in, n)
	binary(b)
	ceiling := float64(eps*mcc) * float64(time.Second) / float64(latency) * chunk
	var total time.Duration
	var peak int64
	b.ResetTimer()
	for b.Loop() {
		el, rss := scoreOnce(b, p, in, dir)
		total += el
		peak = max(peak, rss)
	}
	rate := float64(n) * float64(b.N) / total.Seconds()
	b.ReportMetric(rate, "rows/s")
	b.ReportMetric(ceiling, "ceiling-rows/s")
	b.ReportMetric(100*rate/ceiling, "%-of-ceiling")
	b.ReportMetric(float64(peak)/(1<<20), "peak-RSS-MiB")
}

// BenchmarkScorePeakMemory scores files of 10,000 and 1,000,000 rows on a
// fast fake pool and reports each run's peak resident memory: the command
// streams, so the larger file should not need more.
func BenchmarkScorePeakMemory(b *testing.B) {
	dir := b.TempDir()
	p := newFakePool(b, dir, []amltest.Config{{MaxConcurrentCalls: 100}, {MaxConcurrentCalls: 100}}, "")
	binary(b)
	rss := map[int]int64{}
	for _, n := range []int{10_000, 1_000_000} {
		in := filepath.Join(dir, fmt.Sprintf("rows%d.csv", n))
		writeIDs(b, in, n)
		_, rss[n] = scoreOnce(b, p, in, dir)
	}
	b.ResetTimer()
	for b.Loop() {
		_, r := scoreOnce(b, p, filepath.Join(dir, "rows10000.csv"), dir)
		rss[10_000] = max(rss[10_000], r)
	}
	b.ReportMetric(float64(rss[10_000])/(1<<20), "peak-RSS-MiB-10k-rows")
	b.ReportMetric(float64(rss[1_000_000])/(1<<20), "peak-RSS-MiB-1M-rows")
	b.ReportMetric(float64(rss[1_000_000])/float64(rss[10_000]), "RSS-ratio-1M/10k")
}
