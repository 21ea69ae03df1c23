package main

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain removes the binary the end-to-end tests built and checks that no
// goroutine outlives the tests.
func TestMain(m *testing.M) {
	if spec, ok := os.LookupEnv(perfectEnv); ok {
		os.Exit(runPerfectProcess(spec)) // BenchmarkScoreFile's yardstick
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
