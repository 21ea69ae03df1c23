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
// The command as shipped is built without the tag and has no such hook.
func init() {
	path := os.Getenv("AMLPOOL_CPUPROFILE")
	if path == "" {
		return
	}
	f, err := os.Create(strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "amlpool: AMLPOOL_CPUPROFILE:", err)
		os.Exit(2)
	}
	stopProfile = func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
