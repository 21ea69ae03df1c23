package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// bench and demo stop cleanly on SIGINT and on SIGTERM, long before their
// --duration: they print what they measured, say they were interrupted,
// and exit 130, as score does when interrupted; fake, which serves until
// a signal, says so and exits 130 too. The signal is sent once the
// command's first line is out: it handles the signals from before it
// prints that line.
func TestBenchDemoAndFakeStopOnSignal(t *testing.T) {
	bench := []string{"bench", "--fake", "1", "--mcc", "2", "--latency", "1ms", "--duration", "1h"}
	demo := []string{"demo", "-endpoints", "1", "-mcc", "2", "-latency", "1ms", "-duration", "1h", "-every", "0"}
	fake := []string{"fake", "--dir", t.TempDir(), "--endpoints", "1", "--sample-rows", "0"}
	measured := []string{"interrupted after ", " of 1h0m0s\n", "achieved: "}
	for _, tt := range []struct {
		name string
		args []string
		sig  syscall.Signal
		said []string // in what it prints after the signal
	}{
		{"bench SIGTERM", bench, syscall.SIGTERM, measured},
		{"bench SIGINT", bench, syscall.SIGINT, measured},
		{"demo SIGTERM", demo, syscall.SIGTERM, measured},
		{"demo SIGINT", demo, syscall.SIGINT, measured},
		{"fake SIGTERM", fake, syscall.SIGTERM, []string{"amlpool fake: interrupted"}},
		{"fake SIGINT", fake, syscall.SIGINT, []string{"amlpool fake: interrupted"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a command that does not stop is killed
			defer cancel()
			cmd := exec.CommandContext(ctx, binary(t), tt.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			stdout, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			out := bufio.NewReader(stdout)
			first, err := out.ReadString('\n')
			if err != nil {
				cmd.Wait() // stderr is written until then
				t.Fatalf("no first line: %v; stderr: %s", err, stderr.String())
			}
			require.True(t, strings.HasPrefix(first, "amlpool "+tt.args[0]+": "), first)
			require.NoError(t, cmd.Process.Signal(tt.sig))
			rest, err := io.ReadAll(out)
			require.NoError(t, err)
			err = cmd.Wait()
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit, "stderr: %s\nstdout: %s%s", stderr.String(), first, rest)
			assert.Equal(t, 130, exit.ExitCode(), "stderr: %s\nstdout: %s%s", stderr.String(), first, rest)
			for _, said := range tt.said {
				assert.Contains(t, string(rest), said)
			}
		})
	}
}
