package main

import (
	"math"
	"runtime"
	"sync"
	"time"
)

// A scoring run spends nearly all its time waiting for endpoints: 40 slots
// of 100 ms calls keep the process busy a tenth of one core. The Go
// scheduler does not know that. With every core's processor (P) in use,
// each reply that wakes the process also wakes a second thread to look for
// work (a "spinning" thread) that finds none, and on a virtual machine such
// a wake costs tens of microseconds of CPU. Scoring 100,000 rows that way
// costs about a fifth more CPU than on one P, for next to no gain in speed
// (a quarter of a point of the ceiling in the benchmark, whose fakes answer
// each round of calls at once: docs/benchmarks.md).
//
// So while `amlpool score` runs as a process of its own, procsFitter sizes
// GOMAXPROCS to the work. It starts the scoring on one P, as most runs
// need no more, the first round of calls included (its 40 dials cost a
// fifth more CPU on two Ps and end no sooner). Every procsInterval it reads
// the CPU the process used, and keeps each P under about procsTarget busy:
// a run that keeps one P busier than procsRaiseAt (a fast pool, big rows)
// gets more at once, up to the number the runtime chose, and gives them
// back when its work shrinks. A GOMAXPROCS set in the environment is the
// user's choice, and the command leaves it alone, as it does where it
// cannot read its CPU time.

const (
	// procsInterval is how often the fitter reads the CPU used. Each read
	// is one getrusage call; a window this long smooths the bursts of
	// replies that end each round of calls.
	procsInterval = 250 * time.Millisecond
	// procsTarget is the share of a P's time the fitter plans for: the
	// work of a window over procsTarget, rounded up, is the number of Ps
	// it asks for.
	procsTarget = 0.4
	// procsRaiseAt is how busy the Ps may be, on average, before the
	// fitter adds Ps. Above procsTarget so that a run near the boundary
	// does not go back and forth.
	procsRaiseAt = 0.6
)

// fitProcsToWork, when set, starts fitting GOMAXPROCS to a scoring run
// and returns what stops it. main sets it to fitProcs, unless the
// environment sets GOMAXPROCS: tests run the command inside a test process,
// whose scheduler is not the command's to change.
var fitProcsToWork func() (stop func())

// procsEnvSet reports whether getenv gives a GOMAXPROCS, which main then
// leaves as the user set it.
func procsEnvSet(getenv func(string) string) bool { return getenv("GOMAXPROCS") != "" }

// wantProcs returns the number of Ps for a run that used busy cores' worth
// of CPU over the last window while it had cur of at most limit Ps.
func wantProcs(cur, limit int, busy float64) int {
	want := min(max(int(math.Ceil(busy/procsTarget)), 1), limit)
	switch {
	case busy > procsRaiseAt*float64(cur):
		// Busier than planned: at least one P more (a P wholly busy
		// reads as one core however much more it is asked to do).
		return min(max(want, cur+1), limit)
	case want < cur:
		return want
	}
	return cur
}

// procsFitter runs wantProcs on the process's CPU time every
// procsInterval, on a goroutine of its own, until stop.
type procsFitter struct {
	limit int                          // the Ps the runtime chose
	cpu   func() (time.Duration, bool) // CPU the process has used so far
	set   func(int)                    // runtime.GOMAXPROCS
}

// fitProcs starts fitting GOMAXPROCS to the run, where the process can
// read its CPU time, and returns what stops it and sets GOMAXPROCS back.
func fitProcs() (stop func()) {
	return procsFitter{
		limit: runtime.GOMAXPROCS(0),
		cpu:   processCPU,
		set:   func(n int) { runtime.GOMAXPROCS(n) },
	}.start()
}

func (f procsFitter) start() (stop func()) {
	last, ok := f.cpu()
	if !ok || f.limit <= 1 {
		return func() {}
	}
	then := time.Now()
	f.set(1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(procsInterval)
		defer t.Stop()
		cur := 1
		defer func() {
			if cur != f.limit {
				f.set(f.limit)
			}
		}()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			used, ok := f.cpu()
			now := time.Now()
			if !ok || !now.After(then) {
				continue
			}
			if used < last {
				// A CPU time gone back tells nothing of this window's
				// work; the next is measured from it.
				last, then = used, now
				continue
			}
			busy := float64(used-last) / float64(now.Sub(then))
			last, then = used, now
			if n := wantProcs(cur, f.limit, busy); n != cur {
				f.set(n)
				cur = n
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}
