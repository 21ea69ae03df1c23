//go:build amlpoolprof

package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
)

// A build with the tag amlpoolprof writes a CPU profile of the whole run to
// the file named by AMLPOOL_CPUPROFILE, when that is set ("%p" in the name
// becomes the process id, so that several runs each keep theirs), so that
// the command itself can be profiled rather than a test process around it
// (docs/benchmarks.md, "Batch scoring"):
//
//	go build -tags amlpoolprof -o /tmp/amlpool ./cmd/amlpool
//	AMLPOOL_CPUPROFILE=/tmp/score.pprof /tmp/amlpool score …
//	go tool pprof -top /tmp/amlpool /tmp/score.pprof
//
// BenchmarkScoreFile runs such a build, and passes the variable on, when
// AMLPOOL_BENCH_BINS names it (score_bench_test.go).
//
// AMLPOOL_MEMPROFILE names, likewise, a file for the profile of what the run
// allocated (go tool pprof -sample_index=alloc_space), written as it ends.
//
// The command as shipped is built without the tag and has no such hook.
func init() {
	var stops []func()
	if path := os.Getenv("AMLPOOL_CPUPROFILE"); path != "" {
		f := create("AMLPOOL_CPUPROFILE", path)
		if err := pprof.StartCPUProfile(f); err != nil {
			fail("AMLPOOL_CPUPROFILE", err)
		}
		stops = append(stops, func() {
			pprof.StopCPUProfile()
			f.Close()
		})
	}
	if path := os.Getenv("AMLPOOL_MEMPROFILE"); path != "" {
		f := create("AMLPOOL_MEMPROFILE", path)
		stops = append(stops, func() {
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				fmt.Fprintln(os.Stderr, "amlpool: AMLPOOL_MEMPROFILE:", err)
			}
			f.Close()
		})
	}
	if stops != nil {
		stopProfile = func() {
			for _, stop := range stops {
				stop()
			}
		}
	}
}

// create creates the profile file path names ("%p" becoming the process
// id), or ends the run.
func create(env, path string) *os.File {
	f, err := os.Create(strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())))
	if err != nil {
		fail(env, err)
	}
	return f
}

func fail(env string, err error) {
	fmt.Fprintf(os.Stderr, "amlpool: %s: %v\n", env, err)
	os.Exit(2)
}
