package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// A long run takes a new config on SIGHUP: an added endpoint serves at
// once, a bad config changes nothing, a key rotated in its file is used, a
// removed endpoint gets no new call; and every row is scored once.
func TestScoreReloadsItsConfigOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{
		{MaxConcurrentCalls: 2, Latency: 2 * time.Millisecond},
		{MaxConcurrentCalls: 4, Latency: 2 * time.Millisecond},
	}, "")
	ep1, ep2 := p.servers[0], p.servers[1]
	keyFile := filepath.Join(dir, "ep2.key")
	require.NoError(t, os.WriteFile(keyFile, []byte(ep2.Endpoint().APIKey+"\n"), 0o600))
	config := func(eps ...string) {
		t.Helper()
		require.NoError(t, os.WriteFile(p.config, []byte(`{"endpoints":[`+strings.Join(eps, ",")+`]}`), 0o644))
	}
	e1 := fmt.Sprintf(`{"name":"ep1","url":%q,"apiKeyEnv":"AMLPOOL_TEST_KEY_1","maxConcurrentCalls":2}`, ep1.URL())
	e2 := fmt.Sprintf(`{"name":"ep2","url":%q,"apiKeyFile":%q,"maxConcurrentCalls":4}`, ep2.URL(), keyFile)
	config(e1)

	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 20_000
	writeIDs(t, in, n)
	cmd := p.command(t, "score", "--config", p.config, "--in", in, "--out", out, "--chunk-rows", "5", "--progress", "none")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	lines := make(chan string, 100)
	var said []string
	go func() {
		defer close(lines)
		for sc := bufio.NewScanner(stderr); sc.Scan(); {
			lines <- sc.Text()
		}
	}()
	// expect waits for the command to say a line holding every part.
	expect := func(parts ...string) {
		t.Helper()
		timeout := time.After(time.Minute) // a bound, not a timing
		for {
			select {
			case line, ok := <-lines:
				require.True(t, ok, "the command ended without saying %q; it said %q", parts, said)
				said = append(said, line)
				if all(line, parts) {
					return
				}
			case <-timeout:
				require.Failf(t, "not said", "%q; said %q", parts, said)
			}
		}
	}
	hup := func() { t.Helper(); require.NoError(t, cmd.Process.Signal(syscall.SIGHUP)) }

	startUntil(t, p, cmd, 50)
	require.Zero(t, ep2.Stats().Requests)

	config(e1, e2)
	hup()
	expect("SIGHUP", "added ep2 (4 slots)")
	scored(t, ep2, 50)

	config(e1, strings.Replace(e2, `"maxConcurrentCalls":4`, `"maxConcurrentCalls":999`, 1))
	hup()
	expect("SIGHUP", "ep2", `"maxConcurrentCalls"`, "999 is out of range", "the endpoints in use go on")
	scored(t, ep2, 50) // still serving with its cap of 4

	// The service's key is regenerated; the new one is put in the file.
	ep2.SetKeys("regenerated-key", "")
	require.NoError(t, os.WriteFile(keyFile, []byte("regenerated-key\n"), 0o600))
	config(e1, e2)
	hup()
	expect("SIGHUP", "ep2: new key")
	scored(t, ep2, 50)

	config(e2)
	hup()
	expect("SIGHUP", "removed ep1")
	// ep1's calls in flight when it was removed, at most its cap, may
	// still arrive; nothing after.
	seen := ep1.Stats().Requests
	scored(t, ep2, 100)
	assert.LessOrEqual(t, ep1.Stats().Requests, seen+2, "requests to ep1 after its removal")

	require.NoError(t, cmd.Wait())
	for range lines {
	}
	checkOnce(t, readCSV(t, out), nil, n)
	for _, s := range p.servers {
		assert.Zero(t, s.Stats().Throttled)
	}
	for _, line := range said {
		for _, s := range p.servers {
			for _, key := range []string{s.Endpoint().APIKey, "regenerated-key"} {
				assert.NotContains(t, line, key)
			}
		}
	}
}

func all(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// scored waits until s has scored n more calls.
func scored(t *testing.T, s *amltest.Server, n int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	from := s.Stats().Scored
	_, err := s.WaitFor(ctx, func(st amltest.Stats) bool { return st.Scored >= from+n })
	require.NoError(t, err, "%s did not score %d more calls", s.Endpoint().Name, n)
}

func TestDescribeChanges(t *testing.T) {
	a := amlpool.Endpoint{Name: "a", URL: "https://a", APIKey: "ka", MaxConcurrentCalls: 20}
	b := amlpool.Endpoint{Name: "b", URL: "https://b", APIKey: "kb"}
	tests := []struct {
		name      string
		old, next []amlpool.Endpoint
		want      string
	}{
		{"nothing", []amlpool.Endpoint{a}, []amlpool.Endpoint{a}, "no change to the endpoints"},
		{"added", []amlpool.Endpoint{a}, []amlpool.Endpoint{a, b}, "added b (20 slots)"},
		{"removed", []amlpool.Endpoint{a, b}, []amlpool.Endpoint{b}, "removed a"},
		{"recapped", []amlpool.Endpoint{a}, []amlpool.Endpoint{with(a, func(e *amlpool.Endpoint) { e.MaxConcurrentCalls = 40 })}, "a: cap 20 slots → 40 slots"},
		{"rekeyed", []amlpool.Endpoint{a}, []amlpool.Endpoint{with(a, func(e *amlpool.Endpoint) { e.SecondaryKey = "k2" })}, "a: new key"},
		{"added in a tier", []amlpool.Endpoint{a}, []amlpool.Endpoint{a, with(b, func(e *amlpool.Endpoint) { e.Tier = 1 })}, "added b (20 slots, tier 1)"},
		{"retiered", []amlpool.Endpoint{a}, []amlpool.Endpoint{with(a, func(e *amlpool.Endpoint) { e.Tier = 2 })}, "a: tier 0 → 2"},
		{"moved", []amlpool.Endpoint{a}, []amlpool.Endpoint{with(a, func(e *amlpool.Endpoint) { e.URL = "https://a2" })}, "a: another URL"},
		{"new header value", []amlpool.Endpoint{with(a, func(e *amlpool.Endpoint) { e.Header = http.Header{"Azureml-Model-Deployment": {"blue"}} })},
			[]amlpool.Endpoint{with(a, func(e *amlpool.Endpoint) { e.Header = http.Header{"Azureml-Model-Deployment": {"green"}} })}, "a: header Azureml-Model-Deployment"},
		{"headers added and dropped", []amlpool.Endpoint{with(a, func(e *amlpool.Endpoint) { e.Header = http.Header{"X-B": {"1"}, "X-Same": {"s"}} })},
			[]amlpool.Endpoint{with(a, func(e *amlpool.Endpoint) { e.Header = http.Header{"X-A": {"2"}, "X-Same": {"s"}} })}, "a: headers X-A, X-B"},
		{"unnamed, by URL", []amlpool.Endpoint{{URL: "https://u", APIKey: "k"}}, nil, "removed https://u"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := describeChanges(tt.old, tt.next)
			assert.Equal(t, tt.want, got)
			for _, e := range append(tt.old, tt.next...) {
				assert.NotContains(t, got, e.APIKey)
			}
		})
	}
}

func with(e amlpool.Endpoint, f func(*amlpool.Endpoint)) amlpool.Endpoint {
	f(&e)
	return e
}
