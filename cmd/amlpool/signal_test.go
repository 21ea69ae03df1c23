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
// and exit 130, as score does when interrupted. The signal is sent once the command's first line is out: it
// handles the signals from before it prints that line.
func TestBenchAndDemoStopOnSignal(t *testing.T) {
	bench := []string{"bench", "--fake", "1", "--mcc", "2", "--latency", "1ms", "--duration", "1h"}
	demo := []string{"demo", "-endpoints", "1", "-mcc", "2", "-latency", "1ms", "-duration", "1h", "-every", "0"}
	for _, tt := range []struct {
		name string
		args []string
		sig  syscall.Signal
	}{
		{"bench SIGTERM", bench, syscall.SIGTERM},
		{"bench SIGINT", bench, syscall.SIGINT},
		{"demo SIGTERM", demo, syscall.SIGTERM},
		{"demo SIGINT", demo, syscall.SIGINT},
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
			assert.Contains(t, string(rest), "interrupted after ")
			assert.Contains(t, string(rest), " of 1h0m0s\n")
			assert.Contains(t, string(rest), "achieved: ")
		})
	}
}
