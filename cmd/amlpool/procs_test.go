package main

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/amlpool/amlpool/amltest"
)

func TestWantProcs(t *testing.T) {
	for _, c := range []struct {
		cur, limit int
		busy       float64
		want       int
	}{
		{2, 2, 0.15, 1}, // a scoring run on slow endpoints: one P is plenty
		{2, 2, 0.39, 1}, // still within one P's planned share
		{2, 2, 0.5, 2},  // more than a P's planned share: keep both
		{1, 1, 0.9, 1},  // never past the runtime's choice
		{1, 2, 0.5, 1},  // busy, but not enough to add a P
		{1, 2, 0.7, 2},  // past procsRaiseAt: one more
		{1, 8, 1.0, 3},  // a wholly busy P: as many as its work asks, at least one more
		{1, 8, 0.65, 2}, // just past procsRaiseAt: one more
		{8, 8, 1.0, 3},  // a run that slowed down gives most back
		{8, 8, 0, 1},    // an idle one all but one
		{3, 8, 1.1, 3},  // steady: 1.1 over 3 Ps is under procsRaiseAt, and needs 3
		{3, 8, 1.9, 5},  // past procsRaiseAt × 3
		{4, 4, 3.9, 4},  // at the runtime's choice, however busy
	} {
		if got := wantProcs(c.cur, c.limit, c.busy); got != c.want {
			t.Errorf("wantProcs(%d, %d, %.2f) = %d, want %d", c.cur, c.limit, c.busy, got, c.want)
		}
	}
}

// TestProcsFitterFitsTheWork drives a fitter with a CPU clock the test
// moves: it starts on one P, which a moderate window keeps, a busy one
// raises it, a light one takes it down again, and stopping gives back what
// the runtime chose.
func TestProcsFitterFitsTheWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := startFitter(4)
		if !slices.Equal(f.sets, []int{1}) {
			t.Fatalf("GOMAXPROCS set to %v as the fitter started, want [1]", f.sets)
		}
		window := f.window
		window(0.5) // the first round: more than one P plans for, less than it can
		window(0.1) // slow endpoints
		window(0.9) // a fast stretch: one P wholly busy
		window(1.3) // still busy on 3 Ps: stays
		window(0.3)
		f.stop()
		if want := []int{1, 3, 1, 4}; !slices.Equal(f.sets, want) {
			t.Errorf("GOMAXPROCS set to %v, want %v", f.sets, want)
		}
	})
}

// TestProcsFitterLeavesAloneWhatItCannotFit: no goroutine and no change
// where the process cannot read its CPU time, or has one P only.
func TestProcsFitterLeavesAloneWhatItCannotFit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, c := range []struct {
			limit int
			ok    bool
		}{{2, false}, {1, true}} {
			reads := 0
			stop := procsFitter{
				limit: c.limit,
				cpu:   func() (time.Duration, bool) { reads++; return time.Duration(reads) * time.Second, c.ok },
				set:   func(n int) { t.Errorf("limit %d: GOMAXPROCS set to %d", c.limit, n) },
			}.start()
			time.Sleep(10 * procsInterval)
			synctest.Wait()
			stop()
			if reads != 1 {
				t.Errorf("limit %d, CPU time read %v: read %d times, want once, at the start", c.limit, c.ok, reads)
			}
		}
	})
}

func TestProcsEnvSet(t *testing.T) {
	env := map[string]string{}
	if procsEnvSet(func(k string) string { return env[k] }) {
		t.Error("no GOMAXPROCS in the environment, yet procsEnvSet")
	}
	env["GOMAXPROCS"] = "2"
	if !procsEnvSet(func(k string) string { return env[k] }) {
		t.Error("GOMAXPROCS=2 in the environment, yet not procsEnvSet")
	}
}

// TestScoreFitsProcsWhileScoring: score starts the fitter main chose
// before its first row is sent and stops it before it reports.
func TestScoreFitsProcsWhileScoring(t *testing.T) {
	dir := t.TempDir()
	fp := newFakePool(t, dir, []amltest.Config{{}}, "")
	for _, kv := range fp.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	in := filepath.Join(dir, "in.csv")
	writeIDs(t, in, 10)
	var started, stopped, callsAtStart atomic.Int32
	saved := fitProcsToWork
	t.Cleanup(func() { fitProcsToWork = saved })
	fitProcsToWork = func() func() {
		started.Add(1)
		callsAtStart.Store(int32(fp.servers[0].Stats().Requests))
		return func() { stopped.Add(1) }
	}
	var stdout, stderr bytes.Buffer
	out := filepath.Join(dir, "out.csv")
	if code := run([]string{"score", "--config", fp.config, "--in", in, "--out", out, "--progress", "none"}, &stdout, &stderr); code != 0 {
		t.Fatalf("score: exit %d: %s", code, &stderr)
	}
	if started.Load() != 1 || stopped.Load() != 1 {
		t.Errorf("fitter started %d and stopped %d times, want once each", started.Load(), stopped.Load())
	}
	if n := callsAtStart.Load(); n != 0 {
		t.Errorf("fitter started after %d calls, want before the first", n)
	}
	if got := len(readCSV(t, out)); got != 11 {
		t.Errorf("out has %d records, want a header and 10 rows", got)
	}
}

// TestProcsFitterSkipsAClockGoneBack: a CPU time that reads less than the
// one before (a clock gone back) tells nothing of the window's work, and
// changes nothing: it once read as less than no work, and took GOMAXPROCS
// down to one. The next window is measured from it.
func TestProcsFitterSkipsAClockGoneBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := startFitter(4)
		f.window(1.5)                   // on the one P it starts with: all four at once
		f.used.Add(-int64(time.Minute)) // gone back
		f.window(1.5)
		f.window(1.5)
		f.stop()
		if want := []int{1, 4}; !slices.Equal(f.sets, want) {
			t.Errorf("GOMAXPROCS set to %v, want %v: left at 4 once raised", f.sets, want)
		}
	})
}

// testFitter is a procsFitter started in a synctest bubble on a CPU clock
// the test moves, recording what it sets GOMAXPROCS to.
type testFitter struct {
	used atomic.Int64 // CPU time, ns
	sets []int
	stop func()
}

func startFitter(limit int) *testFitter {
	f := &testFitter{}
	f.used.Store(int64(time.Hour))
	f.stop = procsFitter{
		limit: limit,
		cpu:   func() (time.Duration, bool) { return time.Duration(f.used.Load()), true },
		set:   func(n int) { f.sets = append(f.sets, n) },
	}.start()
	return f
}

// window spends cores' worth of CPU over one procsInterval, and lets the
// fitter read it.
func (f *testFitter) window(cores float64) {
	f.used.Add(int64(cores * float64(procsInterval)))
	time.Sleep(procsInterval)
	synctest.Wait()
}
