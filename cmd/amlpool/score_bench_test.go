package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// runCost is what one run of the command cost.
type runCost struct {
	wall    time.Duration
	cpu     time.Duration // the command's user + system CPU
	rss     int64         // the command's peak resident memory, in bytes
	scoring time.Duration // the scoring alone, as the command's statistics file gives it
}

// scoreOnce runs the command bin on in and returns what it cost.
func scoreOnce(b testing.TB, p *fakePool, bin, in, dir string) runCost {
	out := filepath.Join(dir, "scored.csv")
	os.Remove(out)
	cmd := exec.Command(bin, "score", "--config", p.config, "--in", in, "--out", out, "--progress", "none")
	cmd.Env = append(os.Environ(), p.env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	peak := make(chan int64)
	go func() { peak <- watchPeakRSS(cmd.Process.Pid, done) }()
	err := cmd.Wait()
	el := time.Since(start)
	close(done)
	rss := <-peak
	if err != nil {
		b.Fatalf("%v: %s", err, stderr.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
	st, err := readStats(filepath.Join(dir, "scored.stats.json"))
	if err != nil {
		b.Fatal(err)
	}
	return runCost{wall: el, cpu: cpu, rss: rss, scoring: time.Duration(st.Seconds * float64(time.Second))}
}

// watchPeakRSS reads the high-water mark of process pid's resident memory
// (VmHWM in /proc/pid/status) every few milliseconds until done is closed,
// and returns the last it read. The rusage of a finished child is no use
// here: Linux counts in its ru_maxrss the memory of the parent it was
// started from (os/exec starts it sharing the parent's memory until it
// execs), so every command would seem as large as the benchmark process.
// The last few milliseconds of a run, writing out and exiting, are missed.
func watchPeakRSS(pid int, done <-chan struct{}) int64 {
	path := fmt.Sprintf("/proc/%d/status", pid)
	var peak int64
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if status, err := os.ReadFile(path); err == nil {
			for line := range strings.Lines(string(status)) {
				if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
					kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
					peak = max(peak, kb*1024)
				}
			}
		}
		select {
		case <-done:
			return peak
		case <-tick.C:
		}
	}
}

// benchBinaries returns the commands to measure: the one built from this
// tree, named "" (no sub-benchmark), or, when AMLPOOL_BENCH_BINS is set to
// name=path,name=path…, each of those, one after the other, as
// sub-benchmarks bin=name, so that several builds (the one before a change
// and the one after, say) are compared in one run. (-count repeats each
// sub-benchmark before the next: for rounds in turn, loop in the shell.)
//
//	for i in 1 2 3 4 5; do
//	  AMLPOOL_BENCH_BINS=old=/tmp/old/amlpool,new=/tmp/new/amlpool \
//	    go test -run '^$' -bench ScoreFile -benchtime 3x ./cmd/amlpool
//	done
func benchBinaries(b *testing.B) [][2]string {
	spec := os.Getenv("AMLPOOL_BENCH_BINS")
	if spec == "" {
		return [][2]string{{"", binary(b)}}
	}
	var bins [][2]string
	for _, nv := range strings.Split(spec, ",") {
		name, path, ok := strings.Cut(nv, "=")
		if !ok || name == "" || path == "" {
			b.Fatalf("AMLPOOL_BENCH_BINS: %q is not name=path", nv)
		}
		bins = append(bins, [2]string{name, path})
	}
	return bins
}

// eachBinary runs f once per command to measure, as a sub-benchmark when
// there are several.
func eachBinary(b *testing.B, f func(b *testing.B, bin string)) {
	bins := benchBinaries(b)
	if len(bins) == 1 && bins[0][0] == "" {
		f(b, bins[0][1])
		return
	}
	for _, nb := range bins {
		b.Run("bin="+nb[0], func(b *testing.B) { f(b, nb[1]) })
	}
}

// BenchmarkScoreFile scores a 100,000-row file with the built command on a
// fake pool of 2 endpoints x 20 slots at 100 ms, whose formula ceiling is
// 40 x 1000 / 100 = 400 calls/s = 40,000 rows/s at 100 rows per call, and
// reports the rate beside it, the command's CPU time per row, and the
// command's rate over a perfect client's for the same calls on the same
// fakes in the same run (command/perfect: 1 when the command is as fast;
// the formula counts none of the fakes' own time per call, a perfect
// client does), and over the same perfect client started as a process of
// its own (command/perfect-process: what is left is the command's own
// work, not its start-up or its being another process). The whole command
// counts: start-up, reading, scoring, writing; scoring-%-of-ceiling is the
// rate of the scoring alone, as the command's statistics file times it.
// (The fake servers run in the benchmark process, on the same cores as the
// command: at lower latencies their JSON work, not the pool, sets the pace
// on a small machine.)
func BenchmarkScoreFile(b *testing.B) { benchScoreFile(b, 100_000) }

// BenchmarkScoreMillionRows is BenchmarkScoreFile on a file ten times as
// long, 25 s a run at the ceiling: what a run costs once, whatever its
// length (the process's start-up, dialling its 40 connections at once,
// writing its statistics and exiting; some 50 ms on a small machine, 2 % of
// the shorter file's 2.5 s), weighs a tenth as much. About 80 s a build.
func BenchmarkScoreMillionRows(b *testing.B) { benchScoreFile(b, 1_000_000) }

func benchScoreFile(b *testing.B, n int) {
	const mcc, eps, latency, chunk = 20, 2, 100 * time.Millisecond, 100
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
	ceiling := float64(eps*mcc) * float64(time.Second) / float64(latency) * chunk
	eachBinary(b, func(b *testing.B, bin string) {
		var wall, cpu, scoring, perfect, process time.Duration
		var peak int64
		b.ResetTimer()
		for b.Loop() {
			r := scoreOnce(b, p, bin, in, dir)
			wall += r.wall
			cpu += r.cpu
			scoring += r.scoring
			peak = max(peak, r.rss)
			perfect += perfectClient(b, p, n/chunk, chunk)
			process += perfectProcess(b, p, n/chunk, chunk)
		}
		rate := float64(n) * float64(b.N) / wall.Seconds()
		b.ReportMetric(rate, "rows/s")
		b.ReportMetric(ceiling, "ceiling-rows/s")
		b.ReportMetric(100*rate/ceiling, "%-of-ceiling")
		b.ReportMetric(100*float64(n)*float64(b.N)/scoring.Seconds()/ceiling, "scoring-%-of-ceiling")
		b.ReportMetric(perfect.Seconds()/wall.Seconds(), "command/perfect")
		b.ReportMetric(process.Seconds()/wall.Seconds(), "command/perfect-process")
		b.ReportMetric(100*float64(n)*float64(b.N)/process.Seconds()/ceiling, "perfect-process-%-of-ceiling")
		b.ReportMetric(float64(cpu.Microseconds())/float64(n*b.N), "cpu-µs/row")
		b.ReportMetric(float64(peak)/(1<<20), "peak-RSS-MiB")
	})
}

// perfectClient sends calls requests of rows rows each through p's
// endpoints as fast as their slots allow — one goroutine per slot, pinned
// to its endpoint, one body encoded in advance, plain net/http — and
// returns how long they took: what these fakes allow, in the same run, for
// the command's figure to be read against (its formula ceiling counts none
// of the fakes' own time per call).
func perfectClient(b *testing.B, p *fakePool, calls, rows int) time.Duration {
	start := time.Now()
	if err := perfectCalls(perfectEndpoints(p), calls, rows); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// perfectProcess is perfectClient as a process of its own, this test binary
// started again (TestMain), timed as the command is, from its start to its
// exit: the same start-up and the same hops between processes as the
// command, with none of its work.
func perfectProcess(b *testing.B, p *fakePool, calls, rows int) time.Duration {
	spec, err := json.Marshal(perfectSpec{Endpoints: perfectEndpoints(p), Calls: calls, Rows: rows})
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), perfectEnv+"="+string(spec))
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("perfect client process: %v: %s", err, out)
	}
	return time.Since(start)
}

// perfectEnv, set in a test binary's environment, makes it the perfect
// client process (TestMain) for the perfectSpec it holds, as JSON.
const perfectEnv = "AMLPOOL_PERFECT_CLIENT"

type perfectSpec struct {
	Endpoints   []perfectEndpoint
	Calls, Rows int
}

// perfectEndpoint is what the perfect client needs of an endpoint. (Not an
// amlpool.Endpoint: its JSON redacts the key.)
type perfectEndpoint struct {
	URL, Key string
	Slots    int
}

func perfectEndpoints(p *fakePool) []perfectEndpoint {
	var eps []perfectEndpoint
	for _, s := range p.servers {
		e := s.Endpoint()
		eps = append(eps, perfectEndpoint{URL: e.URL, Key: e.APIKey, Slots: e.MaxConcurrentCalls})
	}
	return eps
}

// runPerfectProcess is the perfect client process's main.
func runPerfectProcess(spec string) int {
	var ps perfectSpec
	dec := json.NewDecoder(strings.NewReader(spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ps); err != nil {
		fmt.Fprintln(os.Stderr, perfectEnv+":", err)
		return 2
	}
	if err := perfectCalls(ps.Endpoints, ps.Calls, ps.Rows); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// perfectCalls is the perfect client's work: calls requests of rows rows.
func perfectCalls(eps []perfectEndpoint, calls, rows int) error {
	var body strings.Builder
	body.WriteString(`{"Inputs":{"input1":{"ColumnNames":["id","name"],"Values":[`)
	for i := range rows {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `["%d","name %d"]`, i, i)
	}
	body.WriteString(`]}},"GlobalParameters":{}}`)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 200}}
	defer hc.CloseIdleConnections()
	var left atomic.Int64
	left.Store(int64(calls))
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for _, e := range eps {
		for range e.Slots {
			wg.Go(func() {
				for left.Add(-1) >= 0 {
					if err := perfectCall(hc, e, body.String()); err != nil {
						select {
						case errs <- err:
						default:
						}
						return
					}
				}
			})
		}
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func perfectCall(hc *http.Client, e perfectEndpoint, body string) error {
	req, err := http.NewRequest(http.MethodPost, e.URL, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+e.Key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("perfect client: %s", resp.Status)
	}
	return nil
}

// BenchmarkScorePeakMemory scores files of 100,000 and 1,000,000 rows on a
// fast fake pool and reports each run's peak resident memory: the command
// streams, so the larger file should not need more. (A smaller file ends
// before the read-ahead window first fills, and so needs less.)
func BenchmarkScorePeakMemory(b *testing.B) {
	const small, large = 100_000, 1_000_000
	dir := b.TempDir()
	p := newFakePool(b, dir, []amltest.Config{{MaxConcurrentCalls: 100}, {MaxConcurrentCalls: 100}}, "")
	file := func(n int) string { return filepath.Join(dir, fmt.Sprintf("rows%d.csv", n)) }
	for _, n := range []int{small, large} {
		writeIDs(b, file(n), n)
	}
	eachBinary(b, func(b *testing.B, bin string) {
		rss := map[int]int64{large: scoreOnce(b, p, bin, file(large), dir).rss}
		b.ResetTimer()
		for b.Loop() {
			rss[small] = max(rss[small], scoreOnce(b, p, bin, file(small), dir).rss)
		}
		b.ReportMetric(float64(rss[small])/(1<<20), "peak-RSS-MiB-100k-rows")
		b.ReportMetric(float64(rss[large])/(1<<20), "peak-RSS-MiB-1M-rows")
		b.ReportMetric(float64(rss[large])/float64(rss[small]), "RSS-ratio-1M/100k")
	})
}
