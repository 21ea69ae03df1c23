package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
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
	stderr := watchStderr(t, cmd)
	expect := stderr.expect
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
	said := stderr.rest()
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

// The statistics of a run keep an endpoint a SIGHUP removed: its calls,
// those in flight at the removal included, and every endpoint's calls sum
// to the requests (none is retried here).
func TestScoreStatsKeepARemovedEndpoint(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{
		{MaxConcurrentCalls: 2, Latency: time.Millisecond},
		{MaxConcurrentCalls: 4, Latency: time.Millisecond},
	}, "")
	ep1, ep2 := p.servers[0], p.servers[1]
	e2 := fmt.Sprintf(`{"name":"ep2","url":%q,"apiKeyEnv":"AMLPOOL_TEST_KEY_2","maxConcurrentCalls":4}`, ep2.URL())
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 20_000
	writeIDs(t, in, n)
	cmd := p.command(t, "score", "--config", p.config, "--in", in, "--out", out, "--chunk-rows", "5", "--progress", "none")
	stderr := watchStderr(t, cmd)
	startUntil(t, p, cmd, 200)
	killOnFailure(t, cmd)
	require.NoError(t, os.WriteFile(p.config, []byte(`{"endpoints":[`+e2+`]}`), 0o644))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	stderr.expect("SIGHUP", "removed ep1")
	require.NoError(t, cmd.Wait(), "%q", stderr.rest())

	st, err := readStats(filepath.Join(dir, "scored.stats.json"))
	require.NoError(t, err)
	require.Len(t, st.Endpoints, 2, "ep1 served calls in this run: %+v", st.Endpoints)
	assert.Equal(t, "ep1", st.Endpoints[0].Name)
	assert.Equal(t, ep1.Stats().Requests, st.Endpoints[0].Calls, "ep1's calls, those in flight at its removal included")
	assert.Equal(t, ep2.Stats().Requests, st.Endpoints[1].Calls)
	assert.Equal(t, int64(st.Requests), st.Endpoints[0].Calls+st.Endpoints[1].Calls)
	assert.Equal(t, n/5, st.Requests)
}

// stderrLines reads a command's stderr line by line as it runs.
type stderrLines struct {
	t     *testing.T
	lines chan string
	said  []string
}

// watchStderr reads cmd's stderr; call before cmd.Start.
func watchStderr(t *testing.T, cmd *exec.Cmd) *stderrLines {
	r, err := cmd.StderrPipe()
	require.NoError(t, err)
	s := &stderrLines{t: t, lines: make(chan string, 100)}
	go func() {
		defer close(s.lines)
		for sc := bufio.NewScanner(r); sc.Scan(); {
			s.lines <- sc.Text()
		}
	}()
	return s
}

// expect waits for the command to say a line holding every part.
func (s *stderrLines) expect(parts ...string) {
	s.t.Helper()
	timeout := time.After(time.Minute) // a bound, not a timing
	for {
		select {
		case line, ok := <-s.lines:
			require.True(s.t, ok, "the command ended without saying %q; it said %q", parts, s.said)
			s.said = append(s.said, line)
			if all(line, parts) {
				return
			}
		case <-timeout:
			require.Failf(s.t, "not said", "%q; said %q", parts, s.said)
		}
	}
}

// rest reads to the end, once the command has ended, and returns every
// line it said.
func (s *stderrLines) rest() []string {
	for line := range s.lines {
		s.said = append(s.said, line)
	}
	return s.said
}

// killOnFailure ends cmd, started, if the test stops before it has.
func killOnFailure(t *testing.T, cmd *exec.Cmd) {
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
}

// A SIGHUP sent before the scoring starts, while the command waits for
// the input's header on a pipe, does not kill it: it is kept, and applied
// when the scoring starts.
func TestScoreSIGHUPBeforeTheScoring(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}, {MaxConcurrentCalls: 4}}, "")
	ep1, ep2 := p.servers[0], p.servers[1]
	e1 := fmt.Sprintf(`{"name":"ep1","url":%q,"apiKeyEnv":"AMLPOOL_TEST_KEY_1","maxConcurrentCalls":2}`, ep1.URL())
	e2 := fmt.Sprintf(`{"name":"ep2","url":%q,"apiKeyEnv":"AMLPOOL_TEST_KEY_2","maxConcurrentCalls":4}`, ep2.URL())
	require.NoError(t, os.WriteFile(p.config, []byte(`{"endpoints":[`+e1+`]}`), 0o644))
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	require.NoError(t, syscall.Mkfifo(in, 0o600))
	cmd := p.command(t, "score", "--config", p.config, "--in", in, "--out", out, "--chunk-rows", "5", "--progress", "none")
	stderr := watchStderr(t, cmd)
	require.NoError(t, cmd.Start())
	killOnFailure(t, cmd)

	// Opening the pipe's end returns once the command has opened the
	// other: it has read its config and waits for the header.
	opened := make(chan *os.File, 1)
	go func() {
		f, err := os.OpenFile(in, os.O_WRONLY, 0)
		assert.NoError(t, err)
		opened <- f
	}()
	var pipe *os.File
	select {
	case pipe = <-opened:
	case <-time.After(time.Minute): // a bound, not a timing
		if f, err := os.OpenFile(in, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil { // lets the opening above end
			defer f.Close()
			if f := <-opened; f != nil {
				f.Close()
			}
		}
		require.FailNow(t, "the command did not open its input")
	}
	defer pipe.Close()

	require.NoError(t, os.WriteFile(p.config, []byte(`{"endpoints":[`+e1+`,`+e2+`]}`), 0o644))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	stderr.expect("amlpool score: SIGHUP: the config is read again when the scoring starts")

	const n = 2000
	w := bufio.NewWriter(pipe)
	w.WriteString("id,name\n")
	for i := range n {
		fmt.Fprintf(w, "%d,name %d\n", i, i)
	}
	require.NoError(t, w.Flush())
	require.NoError(t, pipe.Close())
	stderr.expect("amlpool score: SIGHUP: " + p.config + ": added ep2 (4 slots)")
	require.NoError(t, cmd.Wait(), "%q", stderr.rest())
	checkOnce(t, readCSV(t, out), nil, n)
	assert.Positive(t, ep2.Stats().Scored, "ep2, added when the scoring started, took calls")
}

// A SIGHUP sent after the scoring has ended, while the command writes its
// statistics, does not kill it either: it is ignored, and said so.
func TestScoreSIGHUPAfterTheScoring(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}}, "")
	in, out, stats := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv"), filepath.Join(dir, "stats.json")
	const n = 100
	writeIDs(t, in, n)
	// The statistics go to a pipe: the command waits there, after the
	// scoring, until the test reads them.
	require.NoError(t, syscall.Mkfifo(stats, 0o600))
	cmd := p.command(t, "score", "--config", p.config, "--in", in, "--out", out, "--stats", stats, "--progress", "bar")
	stderr := watchStderr(t, cmd)
	require.NoError(t, cmd.Start())
	killOnFailure(t, cmd)

	// The bar ends its line once the scoring is over.
	stderr.expect(fmt.Sprintf("%d/%d rows (100.0%%)", n, n))
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	stderr.expect("amlpool score: SIGHUP: ignored: the scoring is over")

	f, err := os.Open(stats)
	require.NoError(t, err)
	st, err := io.ReadAll(f)
	f.Close()
	require.NoError(t, err)
	require.NoError(t, cmd.Wait(), "%q", stderr.rest())
	assert.Contains(t, string(st), `"scored": 100`)
	checkOnce(t, readCSV(t, out), nil, n)
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
	sameToken := &staticToken{tok: "t1"} // kept by keepTokenSources
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
		{"new token", []amlpool.Endpoint{{Name: "o", URL: "https://o", Credential: &staticToken{tok: "t1"}}},
			[]amlpool.Endpoint{{Name: "o", URL: "https://o", Credential: &staticToken{tok: "t2"}}}, "o: new token source"},
		{"the same token", []amlpool.Endpoint{{Name: "o", URL: "https://o", Credential: sameToken}},
			[]amlpool.Endpoint{{Name: "o", URL: "https://o", Credential: sameToken}}, "no change to the endpoints"},
		{"another token file", []amlpool.Endpoint{{Name: "o", URL: "https://o", Credential: &fileToken{path: "f1"}}},
			[]amlpool.Endpoint{{Name: "o", URL: "https://o", Credential: &fileToken{path: "f2"}}}, "o: new token source"},
		{"unnamed, by URL without its query's values", []amlpool.Endpoint{{URL: "https://u/x?api-version=2.0&sig=s3cr3t-sig", APIKey: "k"}},
			[]amlpool.Endpoint{{URL: "https://u/x?api-version=2.0&sig=s3cr3t-sig", APIKey: "k", MaxConcurrentCalls: 4}},
			"https://u/x?api-version=2.0&sig=[REDACTED]: cap 20 slots → 4 slots"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := describeChanges(tt.old, tt.next)
			assert.Equal(t, tt.want, got)
			for _, e := range append(tt.old, tt.next...) {
				if e.APIKey != "" {
					assert.NotContains(t, got, e.APIKey)
				}
			}
			assert.NotContains(t, got, "t1")
			assert.NotContains(t, got, "s3cr3t")
		})
	}
}

func with(e amlpool.Endpoint, f func(*amlpool.Endpoint)) amlpool.Endpoint {
	f(&e)
	return e
}

// The stats file sums the lives of an endpoint name: a SIGHUP that removes
// it and a later one that adds it back, or one that gives it another URL,
// start a new endpoint at zero. Checked against the servers' counts with a
// real Client, reloaded as a SIGHUP reloads it.
func TestStatsSumAnEndpointsLives(t *testing.T) {
	dir := t.TempDir()
	var servers [3]*amltest.Server
	keys := map[string]string{}
	for i := range servers {
		servers[i] = amltest.NewServer(amltest.Config{Name: fmt.Sprintf("s%d", i+1), MaxConcurrentCalls: 2})
		t.Cleanup(servers[i].Close)
		keys[fmt.Sprintf("K%d", i+1)] = servers[i].Endpoint().APIKey
	}
	ks := keySource{getenv: func(name string) string { return keys[name] }, readFile: os.ReadFile}
	ep := func(name string, s int) string {
		return fmt.Sprintf(`{"name":%q,"url":%q,"apiKeyEnv":"K%d","maxConcurrentCalls":2}`, name, servers[s-1].URL(), s)
	}
	path := filepath.Join(dir, "pool.json")
	config := func(eps ...string) {
		t.Helper()
		require.NoError(t, os.WriteFile(path, []byte(`{"endpoints":[`+strings.Join(eps, ",")+`]}`), 0o644))
	}
	config(ep("a", 1), ep("b", 2))
	cfg, eps, err := loadConfig(path, ks)
	require.NoError(t, err)
	client, err := newClient(path, cfg, eps)
	require.NoError(t, err)
	defer client.Close()
	var said []string
	opts := scoreOptions{config: path, in: filepath.Join(dir, "rows.csv"), out: filepath.Join(dir, "scored.csv"),
		rejects: filepath.Join(dir, "scored.rejects.csv"), stats: filepath.Join(dir, "scored.stats.json")}
	r := &reloader{path: path, keys: ks, opts: opts, client: client, say: func(s string) { said = append(said, s) }, cfg: cfg, eps: eps, tally: &endpointTally{}}
	// callUntil makes calls until s has answered n more.
	callUntil := func(s *amltest.Server, n int64) {
		t.Helper()
		from := s.Stats().Requests
		for range 10_000 {
			if s.Stats().Requests >= from+n {
				return
			}
			_, err := client.Do(context.Background(), sampleBody(amlpool.Classic))
			require.NoError(t, err)
		}
		t.Fatalf("%s did not answer %d more calls", s.Endpoint().Name, n)
	}

	callUntil(servers[0], 5) // a's first life
	config(ep("b", 2))
	r.reload() // a removed: no call in flight, it leaves the Client at once
	callUntil(servers[1], 5)
	config(ep("a", 1), ep("b", 2))
	r.reload() // a back: a new endpoint, counting from zero
	callUntil(servers[0], 5)
	config(ep("a", 3), ep("b", 2))
	r.reload() // a's name to another URL: a new endpoint again
	callUntil(servers[2], 5)
	require.Len(t, said, 3)
	assert.Contains(t, said[2], "a: another URL")

	rs := newRunStats(client, r.tally, amlpool.BatchStats{}, time.Second, 1, newLatencies(1))
	require.Len(t, rs.Endpoints, 2, "%+v", rs.Endpoints)
	assert.Equal(t, "a", rs.Endpoints[0].Name)
	assert.Equal(t, servers[0].Stats().Requests+servers[2].Stats().Requests, rs.Endpoints[0].Calls, "a's three lives")
	assert.Equal(t, "b", rs.Endpoints[1].Name)
	assert.Equal(t, servers[1].Stats().Requests, rs.Endpoints[1].Calls)
}

// A SIGHUP applies the first load's file checks: a config that names one of
// the run's files (--in, --out, --rejects, --stats) as a key or token file
// is refused, naming both, and the endpoints in use go on, their keys
// unchanged; the run's file's text is never sent as a key. The advice is to
// fix the config, not the first load's to give the flag another file: the
// run keeps its files.
func TestReloadChecksKeyFilesAsTheFirstLoad(t *testing.T) {
	dir := t.TempDir()
	s1 := amltest.NewServer(amltest.Config{Name: "s1", MaxConcurrentCalls: 2})
	t.Cleanup(s1.Close)
	s2 := amltest.NewServer(amltest.Config{Name: "s2", MaxConcurrentCalls: 2})
	t.Cleanup(s2.Close)
	ks := keySource{getenv: func(name string) string { return map[string]string{"K1": s1.Endpoint().APIKey}[name] }, readFile: os.ReadFile}
	path := filepath.Join(dir, "pool.json")
	config := func(eps ...string) {
		t.Helper()
		require.NoError(t, os.WriteFile(path, []byte(`{"endpoints":[`+strings.Join(eps, ",")+`]}`), 0o644))
	}
	e1 := fmt.Sprintf(`{"name":"a","url":%q,"apiKeyEnv":"K1","maxConcurrentCalls":2}`, s1.URL())
	opts := scoreOptions{config: path, in: filepath.Join(dir, "rows.csv"), out: filepath.Join(dir, "scored.csv"),
		rejects: filepath.Join(dir, "scored.rejects.csv"), stats: filepath.Join(dir, "scored.stats.json")}
	for _, f := range []string{opts.in, opts.out, opts.rejects, opts.stats} {
		require.NoError(t, os.WriteFile(f, []byte("secret-row\n"), 0o644)) // a resumed run's: there already
	}
	config(e1)
	cfg, eps, err := loadConfig(path, ks)
	require.NoError(t, err)
	client, err := newClient(path, cfg, eps)
	require.NoError(t, err)
	defer client.Close()
	var said []string
	r := &reloader{path: path, keys: ks, opts: opts, client: client, say: func(s string) { said = append(said, s) }, cfg: cfg, eps: eps, tally: &endpointTally{}}

	for _, tt := range []struct {
		flag, file, field, why string
	}{
		{"--in", opts.in, "apiKeyFile", "the run would send its input as a key"},
		{"--out", opts.out, "apiKeyFile", "the run would write over its key file"},
		{"--rejects", opts.rejects, "apiKeyFile", "the run would write over its key file"},
		{"--stats", opts.stats, "apiKeyFile", "the run would write over its key file"},
		{"--out", opts.out, "secondaryKeyFile", "the run would write over its key file"},
	} {
		said = nil
		e2 := fmt.Sprintf(`{"name":"b","url":%q,"apiKeyEnv":"K1",%q:%q,"maxConcurrentCalls":2}`, s2.URL(), tt.field, tt.file)
		if tt.field == "apiKeyFile" {
			e2 = fmt.Sprintf(`{"name":"b","url":%q,%q:%q,"maxConcurrentCalls":2}`, s2.URL(), tt.field, tt.file)
		}
		config(e1, e2)
		r.reload()
		require.Len(t, said, 1, tt.flag)
		assert.Contains(t, said[0], tt.flag+" "+tt.file+" is the same file as the \""+tt.field+"\" of endpoints[1] (b)", tt.flag)
		assert.True(t, strings.HasSuffix(said[0], ": "+tt.why+"; name another file in the config and send SIGHUP again; the endpoints in use go on"), "%s: %s", tt.flag, said[0])
		assert.NotContains(t, said[0], "secret-row")
		st := client.Stats()
		require.Len(t, st.Endpoints, 1, "%s: the bad config's endpoints were taken", tt.flag)
		assert.Equal(t, "a", st.Endpoints[0].Name)
	}
	assert.Zero(t, s2.Stats().Requests)

	// The same config with a key file of its own is taken.
	said = nil
	keyFile := filepath.Join(dir, "b.key")
	require.NoError(t, os.WriteFile(keyFile, []byte(s2.Endpoint().APIKey+"\n"), 0o600))
	config(e1, fmt.Sprintf(`{"name":"b","url":%q,"apiKeyFile":%q,"maxConcurrentCalls":2}`, s2.URL(), keyFile))
	r.reload()
	require.Len(t, said, 1)
	assert.Contains(t, said[0], "added b (2 slots)")
	assert.Len(t, client.Stats().Endpoints, 2)
}

// The tally tells an endpoint's lives apart by Name and Since, from
// snapshots alone where a real run cannot be timed: a removed endpoint
// with calls in flight is listed beside the live one of its name, and one
// that comes back while it drains is the same endpoint (the same Since).
func TestEndpointTallyLives(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	t1, t2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	live := func(name string, since time.Time, calls int64, inFlight int) amlpool.EndpointStats {
		return amlpool.EndpointStats{Name: name, Since: since, MaxConcurrentCalls: 2, Calls: calls, InFlight: inFlight}
	}
	removed := func(name string, since time.Time, calls int64, inFlight int, errs int64) amlpool.EndpointStats {
		e := live(name, since, calls, inFlight)
		e.Removed, e.Errors = true, errs
		return e
	}
	type snap []amlpool.EndpointStats
	for _, tt := range []struct {
		name  string
		snaps []snap
		want  []endpointStats
	}{
		{"another URL, calls in flight", []snap{
			{live("a", t0, 10, 2)},
			{live("a", t1, 0, 1), removed("a", t0, 11, 1, 0)},
			{live("a", t1, 4, 0), removed("a", t0, 12, 0, 1)},
			{live("a", t1, 5, 0)},
		}, []endpointStats{{"a", 2, 12 + 5, 1, 0}}},
		{"another URL, none in flight", []snap{
			{live("a", t0, 10, 0)},
			{live("a", t1, 0, 0)},
			{live("a", t1, 5, 0)},
		}, []endpointStats{{"a", 2, 15, 0, 0}}},
		{"kept", []snap{
			{live("a", t0, 10, 0)},
			{live("a", t0, 10, 1)},
			{live("a", t0, 15, 0)},
		}, []endpointStats{{"a", 2, 15, 0, 0}}},
		{"removed, then back after it drained", []snap{
			{live("a", t0, 10, 1), live("b", t0, 3, 0)},
			{live("b", t0, 3, 0), removed("a", t0, 10, 1, 0)},
			{live("b", t0, 4, 0)},
			{live("a", t1, 0, 0), live("b", t0, 4, 0)},
			{live("a", t1, 6, 0), live("b", t0, 9, 0)},
		}, []endpointStats{{"a", 2, 11 + 6, 0, 0}, {"b", 2, 9, 0, 0}}},
		{"removed, then back while it drains", []snap{
			{live("a", t0, 10, 2)},
			{live("b", t1, 0, 0), removed("a", t0, 10, 2, 0)},
			{live("b", t1, 3, 0), removed("a", t0, 11, 1, 0)},
			{live("a", t0, 11, 1), live("b", t1, 3, 0)},
			{live("a", t0, 20, 0), live("b", t1, 5, 0)},
		}, []endpointStats{{"a", 2, 20, 0, 0}, {"b", 2, 5, 0, 0}}},
		// A slot held as a snapshot was taken that went back unsent: the
		// later snapshot's count is the life's, not the most counted.
		{"a slot given back unsent", []snap{
			{live("a", t0, 10, 1)},
			{live("a", t0, 10, 0)},
		}, []endpointStats{{"a", 2, 10, 0, 0}}},
		{"a slot given back unsent, removed with calls in flight", []snap{
			{live("a", t0, 10, 3), live("b", t0, 0, 0)},
			{live("b", t0, 0, 0), removed("a", t0, 10, 2, 0)},
		}, []endpointStats{{"a", 2, 12, 0, 0}, {"b", 2, 0, 0, 0}}},
		// Once guessed from URLs: two lives of a name draining at once,
		// beside a third, live; the first ends between snapshots.
		{"two lives draining at once", []snap{
			{live("a", t0, 10, 2)},
			{live("a", t1, 0, 1), removed("a", t0, 10, 2, 0)},
			{live("a", t2, 0, 0), removed("a", t0, 11, 1, 0), removed("a", t1, 3, 1, 0)},
			{live("a", t2, 2, 0), removed("a", t1, 4, 1, 1)},
			{live("a", t2, 7, 0)},
		}, []endpointStats{{"a", 2, 12 + 5 + 7, 1, 0}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var tally endpointTally
			for _, s := range tt.snaps {
				tally.note(amlpool.Stats{Endpoints: s})
			}
			assert.Equal(t, tt.want, tally.list())
		})
	}
}

// The tally counts no call for a slot a real Client held as a snapshot was
// taken, and gave back unsent: a call that held it while it waited at a
// Limiter, and gave up. Stats counts such a slot in InFlight.
func TestEndpointTallyCountsNoCallForAnUnsentSlot(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{Name: "s", MaxConcurrentCalls: 2})
	t.Cleanup(srv.Close)
	waiting := make(chan struct{})
	client, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()}, amlpool.WithLimiter(blockingLimiter{waiting}))
	require.NoError(t, err)
	defer client.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { _, err := client.Do(ctx, sampleBody(amlpool.Classic)); done <- err }()
	<-waiting

	var tally endpointTally
	st := client.Stats()
	require.Equal(t, 1, st.Endpoints[0].InFlight, "the waiting call holds the endpoint's slot")
	tally.note(st)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	tally.note(client.Stats())
	assert.Equal(t, []endpointStats{{"s", 2, 0, 0, 0}}, tally.list())
	assert.Zero(t, srv.Stats().Requests)
}

// blockingLimiter is a Limiter that never has a slot: Acquire says so on
// waiting and returns once ctx ends.
type blockingLimiter struct{ waiting chan<- struct{} }

func (l blockingLimiter) Acquire(ctx context.Context, _ []amlpool.LimitedEndpoint) (amlpool.Lease, error) {
	l.waiting <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// A SIGHUP during a --resume run, after a run killed outright, swaps the
// endpoints (one added, a bad config refused, the first removed) without
// losing or repeating a row: the output is the one an uninterrupted run
// writes.
func TestScoreReloadDuringAResumedRun(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{
		{MaxConcurrentCalls: 2, Latency: time.Millisecond},
		{MaxConcurrentCalls: 4, Latency: time.Millisecond},
	}, "")
	ep1, ep2 := p.servers[0], p.servers[1]
	e1 := fmt.Sprintf(`{"name":"ep1","url":%q,"apiKeyEnv":"AMLPOOL_TEST_KEY_1","maxConcurrentCalls":2}`, ep1.URL())
	e2 := fmt.Sprintf(`{"name":"ep2","url":%q,"apiKeyEnv":"AMLPOOL_TEST_KEY_2","maxConcurrentCalls":4}`, ep2.URL())
	config := func(eps ...string) {
		t.Helper()
		require.NoError(t, os.WriteFile(p.config, []byte(`{"endpoints":[`+strings.Join(eps, ",")+`]}`), 0o644))
	}
	config(e1)
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 20_000
	writeIDs(t, in, n)
	want := reference(t, p, in, dir, "--chunk-rows", "5")
	args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--chunk-rows", "5", "--progress", "none"}

	cmd := p.command(t, args...)
	startUntil(t, p, cmd, 500)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	cut, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Less(t, len(cut), len(want), "killed mid-run")

	cmd = p.command(t, append(args, "--resume")...)
	stderr := watchStderr(t, cmd)
	startUntil(t, p, cmd, 200)
	killOnFailure(t, cmd)
	hup := func() { t.Helper(); require.NoError(t, cmd.Process.Signal(syscall.SIGHUP)) }
	config(e1, e2)
	hup()
	stderr.expect("SIGHUP", "added ep2 (4 slots)")
	scored(t, ep2, 50)
	config(e1, `{"name":"ep2"}`)
	hup()
	stderr.expect("SIGHUP", "the endpoints in use go on")
	config(e2)
	hup()
	stderr.expect("SIGHUP", "removed ep1")
	scored(t, ep2, 50)
	require.NoError(t, cmd.Wait(), "%q", stderr.rest())

	got, err := os.ReadFile(out)
	require.NoError(t, err)
	checkOnce(t, readCSV(t, out), nil, n)
	assert.True(t, bytes.Equal(want, got), "the resumed output is the uninterrupted one (got %d bytes, want %d)", len(got), len(want))
	assert.NoFileExists(t, filepath.Join(dir, "scored.rejects.csv"))
}

// A SIGHUP that leaves an endpoint's token command as it was keeps the
// endpoint's token source: the token it holds is used on, not fetched
// again, and the Client does not take the reload for new keys.
func TestReloadKeepsAnUnchangedTokenSource(t *testing.T) {
	dir := t.TempDir()
	srv := amltest.NewServer(amltest.Config{Name: "s", Kind: amlpool.Online, MaxConcurrentCalls: 2,
		AcceptToken: func(tok string) bool { return tok == "command-token" }})
	t.Cleanup(srv.Close)
	runs := filepath.Join(dir, "runs")
	path := filepath.Join(dir, "pool.json")
	ep := fmt.Sprintf(`{"name":"s","url":%q,"kind":"online","maxConcurrentCalls":2,"tokenCommand":["sh","-c","echo run >> %s; echo command-token"]}`, srv.URL(), runs)
	config := func(eps ...string) {
		t.Helper()
		require.NoError(t, os.WriteFile(path, []byte(`{"endpoints":[`+strings.Join(eps, ",")+`]}`), 0o644))
	}
	config(ep)
	cfg, eps, err := loadConfig(path, osKeys)
	require.NoError(t, err)
	client, err := newClient(path, cfg, eps)
	require.NoError(t, err)
	defer client.Close()
	var said []string
	opts := scoreOptions{config: path, in: filepath.Join(dir, "rows.csv"), out: filepath.Join(dir, "scored.csv"),
		rejects: filepath.Join(dir, "scored.rejects.csv"), stats: filepath.Join(dir, "scored.stats.json")}
	r := &reloader{path: path, keys: osKeys, opts: opts, client: client,
		say: func(s string) { said = append(said, s) }, cfg: cfg, eps: eps, tally: &endpointTally{}}
	call := func() {
		t.Helper()
		_, err := client.Do(t.Context(), []byte(`{"input_data":{"columns":["x"],"index":[0],"data":[[1]]}}`))
		require.NoError(t, err)
	}
	ranTimes := func() int {
		t.Helper()
		b, err := os.ReadFile(runs)
		require.NoError(t, err)
		return strings.Count(string(b), "run\n")
	}
	call()
	require.Equal(t, 1, ranTimes())

	other := amltest.NewServer(amltest.Config{Name: "o", Kind: amlpool.Online, MaxConcurrentCalls: 2, AcceptToken: func(string) bool { return true }})
	t.Cleanup(other.Close)
	config(ep, fmt.Sprintf(`{"name":"o","url":%q,"kind":"online","maxConcurrentCalls":2,"tokenEnv":"PATH"}`, other.URL()))
	r.reload()
	require.Len(t, said, 1)
	assert.Equal(t, "amlpool score: SIGHUP: "+path+": added o (2 slots)", said[0])
	assert.Same(t, eps[0].Credential, r.eps[0].Credential, "the token source in use")
	envSource := r.eps[1].Credential
	r.reload()
	require.Len(t, said, 2)
	assert.Equal(t, "amlpool score: SIGHUP: "+path+": no change to the endpoints", said[1])
	assert.Same(t, envSource, r.eps[1].Credential, "a token from the environment, unchanged, is the same source")
	said = said[:1]
	for range 4 {
		call()
	}
	assert.Equal(t, 1, ranTimes(), "the token was fetched again after a reload that did not change its source")

	// A changed command is a new source.
	config(strings.Replace(ep, "echo command-token", "echo  command-token", 1))
	r.reload()
	require.Len(t, said, 2)
	assert.Equal(t, "amlpool score: SIGHUP: "+path+": s: new token source; removed o", said[1])
	assert.NotSame(t, eps[0].Credential, r.eps[0].Credential)
}
