package amltest

import (
	"context"
	"log"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
)

// logLines is a standard logger's output that hands each line to a channel.
type logLines chan string

func (l logLines) Write(p []byte) (int, error) {
	select {
	case l <- string(p):
	default: // only the first line is read
	}
	return len(p), nil
}

// TestCloseLogsWhatItWaitsFor: a server from NewServer, which knows no
// test, says what its Close waits for through the standard logger. The
// wait before it speaks is cut to nothing, so the test waits on the log
// line itself, not on the clock.
func TestCloseLogsWhatItWaitsFor(t *testing.T) {
	lines := make(logLines, 1)
	log.SetOutput(lines)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })

	release := make(chan struct{})
	s := NewUnstartedServer(Config{Kind: amlpool.Online, Name: "stuck", Predict: func(columns []string, rows [][]any) ([]any, error) {
		<-release
		return OnlineEcho(columns, rows)
	}})
	s.closeWarnAfter = 0
	s.Start()
	ep := s.Endpoint()
	go func() {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, ep.URL,
			strings.NewReader(`{"input_data": {"columns": ["x"], "data": [[1]]}}`))
		if err != nil {
			panic(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+ep.APIKey)
		if resp, err := s.Client().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	_, err := s.WaitFor(t.Context(), func(st Stats) bool { return st.InFlight == 1 })
	require.NoError(t, err)

	done := make(chan struct{})
	go func() {
		s.Close()
		close(done)
	}()
	line := <-lines
	assert.Contains(t, line, "amltest: Close of server stuck has waited 0s for 1 call in the handler, and waits on: "+
		"a Config.Score, Predict, LatencyFunc, Fault or AcceptToken that has not returned holds it until it returns")
	select {
	case <-done:
		t.Error("Close returned while the Predict ran")
	default:
	}
	close(release)
	<-done
}
