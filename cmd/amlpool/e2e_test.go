package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// End-to-end tests of the built command against amltest servers.

var (
	buildOnce sync.Once
	binPath   string
	binDir    string
	buildErr  error
)

// binary builds the command once per test run.
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "amlpool-e2e")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "amlpool")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return binPath
}

// fakePool starts n amltest servers and writes a config file naming them,
// with their keys in environment variables for the command.
type fakePool struct {
	servers []*amltest.Server
	config  string
	env     []string
}

func newFakePool(t testing.TB, dir string, cfgs []amltest.Config, extra string) *fakePool {
	p := &fakePool{config: filepath.Join(dir, "pool.json")}
	var eps []string
	for i, c := range cfgs {
		if c.Name == "" {
			c.Name = "ep" + strconv.Itoa(i+1)
		}
		s := amltest.NewServer(c)
		t.Cleanup(s.Close)
		p.servers = append(p.servers, s)
		e := s.Endpoint()
		env := "AMLPOOL_TEST_KEY_" + strconv.Itoa(i+1)
		p.env = append(p.env, env+"="+e.APIKey)
		eps = append(eps, fmt.Sprintf(`{"name":%q,"url":%q,"apiKeyEnv":%q,"maxConcurrentCalls":%d}`, e.Name, e.URL, env, e.MaxConcurrentCalls))
	}
	cfg := `{"endpoints":[` + strings.Join(eps, ",") + `]` + extra + `}`
	require.NoError(t, os.WriteFile(p.config, []byte(cfg), 0o644))
	return p
}

// command returns the command for args, with the pool's keys in its
// environment.
func (p *fakePool) command(t testing.TB, args ...string) *exec.Cmd {
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(os.Environ(), p.env...)
	return cmd
}

// runCmd runs a command and returns its exit status and stderr.
func runCmd(t testing.TB, cmd *exec.Cmd) (int, string) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), stderr.String()
	}
	require.NoError(t, err)
	return 0, stderr.String()
}

// writeIDs writes a CSV of n rows: id (0..n-1) and a name.
func writeIDs(t testing.TB, path string, n int) {
	var b strings.Builder
	b.WriteString("id,name\n")
	for i := range n {
		fmt.Fprintf(&b, "%d,name %d\n", i, i)
	}
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o644))
}

func readCSV(t testing.TB, path string) [][]string {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	require.NoError(t, err)
	return recs
}

// checkOnce checks that out (scored, id in column 0) and rej (rejects, id
// in column 4) together hold ids 0..n-1 exactly once, out in order.
func checkOnce(t *testing.T, out, rej [][]string, n int) (scored, rejected int) {
	t.Helper()
	seen := make([]int, n)
	last := -1
	for _, rec := range out[1:] {
		id, err := strconv.Atoi(rec[0])
		require.NoError(t, err)
		require.Greater(t, id, last, "output in input order")
		last = id
		seen[id]++
	}
	if len(rej) > 0 {
		require.Equal(t, []string{"line", "row", "error", "text", "id", "name"}, rej[0])
		for _, rec := range rej[1:] {
			id, err := strconv.Atoi(rec[4])
			require.NoError(t, err)
			assert.Equal(t, strconv.Itoa(id+2), rec[0], "line of id %d", id)
			assert.Equal(t, strconv.Itoa(id+1), rec[1], "row number of id %d", id)
			seen[id]++
		}
	}
	for id, k := range seen {
		require.Equal(t, 1, k, "id %d appears %d times in output plus rejects", id, k)
	}
	return len(out) - 1, max(len(rej)-1, 0)
}

func TestScore100kRowsInOrder(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 50}, {MaxConcurrentCalls: 50}}, "")
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 100_000
	writeIDs(t, in, n)
	code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "amlpool score: 100000 rows in")

	recs := readCSV(t, out)
	require.Len(t, recs, n+1)
	assert.Equal(t, []string{"id", "name", "output1.id", "output1.name", amltest.ScoredProbabilities}, recs[0])
	for i, rec := range recs[1:] {
		require.Equal(t, []string{strconv.Itoa(i), "name " + strconv.Itoa(i)}, rec[:2], "row %d", i)
		require.Equal(t, rec[:2], rec[2:4], "row %d: the service's echo is the same row", i)
	}
	assert.NoFileExists(t, filepath.Join(dir, "scored.rejects.csv"), "no rejects, no reject file")
	st, err := readStats(filepath.Join(dir, "scored.stats.json"))
	require.NoError(t, err)
	assert.Equal(t, n, st.Scored)
	assert.Equal(t, 1000, st.Requests)
	for _, s := range p.servers {
		assert.LessOrEqual(t, s.Stats().PeakInFlight, int64(50))
	}
}

// failEvery50th makes an endpoint answer every 50th call it admits with a
// permanent error that does not blame the rows (409), which is neither
// retried nor split: the chunk goes to the reject file whole.
func failEvery50th(n int64) amltest.Fault {
	if n%50 == 0 {
		return amltest.Fault{Status: 409}
	}
	return amltest.Fault{}
}

func TestScoreFailingEndpointLosesNoRow(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 20, Fault: failEvery50th}, {MaxConcurrentCalls: 20}}, "")
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 50_000
	writeIDs(t, in, n)
	code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	assert.Equal(t, 1, code, "rows failed: exit status 1")
	assert.Contains(t, stderr, "rejected in "+filepath.Join(dir, "scored.rejects.csv"))
	assert.Regexp(t, `first failure: line \d+ \(row \d+\): amlpool: endpoint ep1: HTTP 409 Conflict/ModelOutputMetadataMismatch`, stderr)
	rej := readCSV(t, filepath.Join(dir, "scored.rejects.csv"))
	scored, rejected := checkOnce(t, readCSV(t, out), rej, n)
	assert.Equal(t, n, scored+rejected)
	failedCalls := int(p.servers[0].Stats().Faults)
	assert.Equal(t, failedCalls*100, rejected, "each failed call rejects its chunk of 100 rows, no more")
	assert.Positive(t, failedCalls)
	assert.Equal(t, "amlpool: endpoint ep1: HTTP 409 Conflict/ModelOutputMetadataMismatch: Model output metadata mismatch.", rej[1][2])
}

// reference scores rows into a fresh file and returns its content.
func reference(t *testing.T, p *fakePool, in, dir string, args ...string) []byte {
	out := filepath.Join(dir, "reference.csv")
	code, stderr := runCmd(t, p.command(t, append([]string{"score", "--config", p.config, "--in", in, "--out", out}, args...)...))
	require.Equal(t, 0, code, stderr)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	return b
}

// startUntil starts cmd and returns once the pool's servers have scored
// calls requests, without sleeping: WaitFor wakes on the servers' counters.
func startUntil(t *testing.T, p *fakePool, cmd *exec.Cmd, calls int64) {
	require.NoError(t, cmd.Start())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	base := p.servers[0].Stats().Scored
	_, err := p.servers[0].WaitFor(ctx, func(s amltest.Stats) bool { return s.Scored-base >= calls })
	require.NoError(t, err)
}

func TestScoreResumeAfterKill(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4, Latency: time.Millisecond}}, "")
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 20_000
	writeIDs(t, in, n)
	want := reference(t, p, in, dir, "--chunk-rows", "5")

	args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--chunk-rows", "5"}
	cmd := p.command(t, args...)
	startUntil(t, p, cmd, 1000)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	cut, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Less(t, len(cut), len(want), "killed mid-run")

	code, stderr := runCmd(t, p.command(t, append(args, "--resume")...))
	require.Equal(t, 0, code, stderr)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want, got), "the resumed output is the uninterrupted one (got %d bytes, want %d)", len(got), len(want))
}

func TestScoreInterruptThenResumeWithRejects(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4, Latency: time.Millisecond, Fault: failEvery50th}}, "")
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 20_000
	writeIDs(t, in, n)
	args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--chunk-rows", "5"}

	cmd := p.command(t, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	startUntil(t, p, cmd, 1000)
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err := cmd.Wait()
	ee, ok := err.(*exec.ExitError)
	require.True(t, ok, "interrupted: non-zero exit, got %v", err)
	assert.Equal(t, 130, ee.ExitCode())
	assert.Regexp(t, `interrupted after \d+ of 20000 rows \(\d+ scored in .*scored.csv, \d+ rejected in .*; run the same command with --resume`, stderr.String())

	code, errText := runCmd(t, p.command(t, append(args, "--resume")...))
	assert.Equal(t, 1, code, errText)
	scored, rejected := checkOnce(t, readCSV(t, out), readCSV(t, filepath.Join(dir, "scored.rejects.csv")), n)
	assert.Equal(t, n, scored+rejected)
	assert.Positive(t, rejected)

	code, errText = runCmd(t, p.command(t, args...))
	assert.Equal(t, 2, code)
	assert.Contains(t, errText, "already exists and is not empty: add --resume")
}

// A reply whose columns are not the first reply's (an endpoint serving
// another model: here, from row 51 on, the added column is named
// otherwise) fails its chunk, whose rows go to the reject file with the
// reason naming both column lists: no value is written under a name the
// service did not give it.
func TestScoreClassicColumnsChange(t *testing.T) {
	dir := t.TempDir()
	other := func(in *amlpool.Request) (*amlpool.Response, error) {
		resp, err := amltest.Echo(in)
		if err != nil {
			return nil, err
		}
		if id, _ := strconv.Atoi(fmt.Sprint(in.Inputs["input1"].Values[0][0])); id >= 50 {
			v := &resp.Results["output1"].Value
			v.ColumnNames[len(v.ColumnNames)-1] = "Scored Labels"
		}
		return resp, nil
	}
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4, Score: other}}, "")
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	writeIDs(t, in, 100)
	code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out, "--chunk-rows", "10", "--parallelism", "1"))
	assert.Equal(t, 1, code, stderr)
	rej := readCSV(t, filepath.Join(dir, "scored.rejects.csv"))
	scored, rejected := checkOnce(t, readCSV(t, out), rej, 100)
	assert.Equal(t, [2]int{50, 50}, [2]int{scored, rejected})
	assert.Equal(t, `endpoint ep1: the reply's columns are ["id" "name" "Scored Labels"], but those of the batch's first scored rows were ["id" "name" "Scored Probabilities"]: `+
		"a batch's replies must all have the same columns (do the pool's endpoints all serve one model?)", rej[1][2])
}

func TestScoreJSONLines(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 8}}, `,"outputColumns":["Scored Probabilities"]`)
	in, out := filepath.Join(dir, "rows.jsonl"), filepath.Join(dir, "scored.jsonl")
	require.NoError(t, os.WriteFile(in, []byte(`{"id":1,"name":"a"}`+"\n"+`{"name":"b","id":2}`+"\n"+`{"id":3}`+"\n"), 0o644))
	code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	assert.Equal(t, 1, code, stderr)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	require.Len(t, lines, 2)
	assert.Regexp(t, `^\{"id":1,"name":"a","Scored Probabilities":"0\.\d+"\}$`, lines[0])
	assert.Regexp(t, `^\{"id":2,"name":"b","Scored Probabilities":"0\.\d+"\}$`, lines[1])
	rej, err := os.ReadFile(filepath.Join(dir, "scored.rejects.jsonl"))
	require.NoError(t, err)
	assert.Equal(t, `{"line":3,"row":3,"error":"no key \"name\" (every row needs every column)","text":"{\"id\":3}","id":3,"name":null}`+"\n", string(rej))
}

func TestScoreBadInput(t *testing.T) {
	// The service rejects a header it does not know; and one endpoint
	// replies with a row too few for chunks starting at row 1, or, for
	// chunks starting at row "ragged", without column names (no
	// details=true) and with its second row a cell short.
	strict := func(req *amlpool.Request) (*amlpool.Response, error) {
		if req.Inputs["input1"].Column("id") < 0 {
			return nil, fmt.Errorf("column id is missing")
		}
		resp, err := amltest.Echo(req)
		if err != nil {
			return nil, err
		}
		v := &resp.Results["output1"].Value
		switch req.Inputs["input1"].Values[0][0] {
		case "short":
			v.Values = v.Values[1:]
		case "ragged":
			v.ColumnNames, v.ColumnTypes = nil, nil
			v.Values[1] = v.Values[1][:1]
		}
		return resp, nil
	}
	tests := []struct {
		name   string
		input  string
		extra  string
		code   int
		stderr string
		rejErr []string // the error column of each reject
	}{
		{"ragged rows", "id,name\n1,a\n2\n3,c,x\n4,d\n", "", 1, "2 scored",
			[]string{"1 fields, but the header has 2", "3 fields, but the header has 2"}},
		{"bad quoting", "id,name\n1,a\n2,b\"b\n3,c\n", "", 1, "2 scored", []string{`bare " in non-quoted-field`}},
		{"invalid utf-8", "id,name\n1,\xff\n2,b\n", "", 1, "1 scored", []string{"field 2 (name) is not valid UTF-8; the file must be UTF-8"}},
		{"empty file", "", "", 2, "rows.csv: empty file: want a header line of column names", nil},
		{"header unlike the config's columns", "ident,name\n1,a\n", `,"inputColumns":["id","name"]`, 2,
			`rows.csv: line 1: the header does not match the service's input columns (` + "POOL" + ` "inputColumns"): missing ["id"]; not in the service's input ["ident"]`, nil},
		{"header the service rejects", "ident,name\n1,a\n2,b\n", "", 1, "0 scored",
			[]string{"amlpool: endpoint ep1: HTTP 400 LibraryExecutionError/FailedToEvaluateRScript: column id is missing"}},
		{"reply with a row too few", "id,name\nshort,a\n2,b\n", "", 1, "0 scored",
			[]string{"the reply has 1 output rows for 2 input rows"}},
		{"reply without column names whose rows differ in width", "id,name\nragged,a\n2,b\n3,c\n", "", 1, "0 scored",
			[]string{`amlpool: decode response: output "output1": row 2 (Values[1]) has 1 cells, want 3 (as many as row 1: the table names no columns)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4, Score: strict}}, tt.extra)
			in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
			require.NoError(t, os.WriteFile(in, []byte(tt.input), 0o644))
			code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
			assert.Equal(t, tt.code, code, stderr)
			assert.Contains(t, stderr, strings.ReplaceAll(tt.stderr, "POOL", p.config))
			if tt.rejErr == nil {
				assert.NoFileExists(t, filepath.Join(dir, "scored.rejects.csv"))
				return
			}
			rej := readCSV(t, filepath.Join(dir, "scored.rejects.csv"))
			var errs []string
			for _, rec := range rej[1:] {
				errs = append(errs, rec[2])
			}
			errs = compact(errs)
			for i := range errs {
				if i < len(tt.rejErr) {
					assert.Contains(t, errs[i], tt.rejErr[i])
				}
			}
			assert.Len(t, errs, len(tt.rejErr), "distinct reject errors: %q", errs)
			recs := 0
			if _, err := os.Stat(out); err == nil {
				recs = len(readCSV(t, out)) - 1
			}
			lines := strings.Count(tt.input, "\n") - 1
			assert.Equal(t, lines, recs+len(rej)-1, "every input row once, in the output or the rejects")
		})
	}
}

// compact drops consecutive repeats.
func compact(s []string) []string {
	var out []string
	for _, v := range s {
		if len(out) == 0 || out[len(out)-1] != v {
			out = append(out, v)
		}
	}
	return out
}

func TestScoreConfigErrors(t *testing.T) {
	tests := []struct {
		name, cfg, want string
	}{
		{"key variable unset", `{"endpoints":[{"name":"east","url":"https://x/services/a/execute","apiKeyEnv":"AMLPOOL_TEST_UNSET"}]}`,
			`endpoints[0] (east): "apiKeyEnv": environment variable AMLPOOL_TEST_UNSET is not set or empty`},
		{"key in the file", `{"endpoints":[{"name":"east","url":"https://x","apiKey":"secret"}]}`,
			`endpoints[0] (east): "apiKey": keys do not go in the file`},
		{"bad url", `{"endpoints":[{"name":"west","url":"ftp://x","apiKeyEnv":"AMLPOOL_TEST_KEY"}]}`,
			`endpoints[0] (west): "url": "ftp://x": scheme "ftp" is not http or https`},
		{"bad mcc", `{"endpoints":[{"url":"https://x/services/a/execute","apiKeyEnv":"AMLPOOL_TEST_KEY","maxConcurrentCalls":500}]}`,
			`endpoints[0]: "maxConcurrentCalls": 500 is out of range`},
		{"bad tier", `{"endpoints":[{"url":"https://x/services/a/execute","apiKeyEnv":"AMLPOOL_TEST_KEY","tier":-1}]}`,
			`endpoints[0]: "tier": -1 is out of range`},
		{"unknown field", `{"endpoints":[],"chunks":5}`, `line 1, column 17: unknown field "chunks"`},
		{"syntax", "{\"endpoints\":\n[}", "line 2, column 2: invalid character '}'"},
		{"no endpoints", `{}`, `"endpoints": none given`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, in := filepath.Join(dir, "pool.json"), filepath.Join(dir, "rows.csv")
			require.NoError(t, os.WriteFile(cfg, []byte(tt.cfg), 0o644))
			writeIDs(t, in, 1)
			cmd := exec.Command(binary(t), "score", "--config", cfg, "--in", in, "--out", filepath.Join(dir, "o.csv"))
			cmd.Env = append(os.Environ(), "AMLPOOL_TEST_KEY=k")
			code, stderr := runCmd(t, cmd)
			assert.Equal(t, 2, code)
			assert.Contains(t, stderr, cfg+": "+tt.want)
			assert.NotContains(t, stderr, "secret")
		})
	}
}

func TestConfigTier(t *testing.T) {
	_, eps, err := parseConfig([]byte(`{"endpoints":[{"name":"a","url":"https://x/services/a/execute","apiKeyEnv":"K"},`+
		`{"name":"b","url":"https://x/services/b/execute","apiKeyEnv":"K","tier":2}]}`), keySource{getenv: func(string) string { return "k" }})
	require.NoError(t, err)
	assert.Equal(t, []int{0, 2}, []int{eps[0].Tier, eps[1].Tier})

	// A misspelt field's error lists the known ones, tier among them.
	_, _, err = parseConfig([]byte(`{"endpoints":[{"url":"https://x/services/a/execute","apiKeyEnv":"K","teir":1}]}`), keySource{getenv: func(string) string { return "k" }})
	require.ErrorContains(t, err, `unknown field "teir"`)
	assert.Contains(t, err.Error(), "maxConcurrentCalls, tier,")
}

// inputColumns and outputColumns name each column once: an output with two
// columns of one name would not read back, nor resume.
func TestConfigColumnLists(t *testing.T) {
	keys := keySource{getenv: func(string) string { return "k" }}
	for _, tt := range []struct{ extra, want string }{
		{`"outputColumns":["Scored Labels","Scored Labels"]`, `"outputColumns": columns 1 and 2 are both "Scored Labels"`},
		{`"inputColumns":["id"," "]`, `"inputColumns": column 2 has no name`},
		{`"inputColumns":["id","name","id"]`, `"inputColumns": columns 1 and 3 are both "id"`},
	} {
		_, _, err := parseConfig([]byte(`{"endpoints":[{"url":"https://x/services/a/execute","apiKeyEnv":"K"}],`+tt.extra+`}`), keys)
		assert.EqualError(t, err, tt.want, tt.extra)
	}
	cfg, _, err := parseConfig([]byte(`{"endpoints":[{"url":"https://x/services/a/execute","apiKeyEnv":"K"}],`+
		`"inputColumns":["id","name"],"outputColumns":["Scored Labels"]}`), keys)
	require.NoError(t, err)
	assert.Equal(t, []string{"Scored Labels"}, cfg.OutputColumns)
}

// score takes --priority by name, low by default, and refuses others
// before reading anything.
func TestScorePriorityFlag(t *testing.T) {
	for _, tt := range []struct {
		arg  string
		want amlpool.Priority
		ok   bool
	}{{"low", amlpool.PriorityLow, true}, {"normal", amlpool.PriorityNormal, true}, {"high", amlpool.PriorityHigh, true},
		{"urgent", 0, false}, {"High", 0, false}, {"", 0, false}} {
		p, ok := parsePriority(tt.arg)
		assert.Equal(t, tt.ok, ok, tt.arg)
		assert.Equal(t, tt.want, p, tt.arg)
	}
	var out, errOut bytes.Buffer
	code := run([]string{"score", "--config", "nowhere.json", "--in", "x.csv", "--out", "y.csv", "--priority", "urgent"}, &out, &errOut)
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut.String(), `--priority "urgent": want low, normal or high`)
	assert.Contains(t, scoreHelp, "--priority, low by default")
}

// A negative --chunk-rows, --parallelism or --progress-every is a bad flag
// (exit 2), refused before any file is opened, not a failed run that
// advises --resume.
func TestScoreRefusesNegativeCounts(t *testing.T) {
	dir := t.TempDir()
	in, cfg := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "pool.json")
	require.NoError(t, os.WriteFile(in, []byte("id\n1\n"), 0o644))
	require.NoError(t, os.WriteFile(cfg, []byte(`{"endpoints":[{"name":"a","url":"http://127.0.0.1:1/execute","apiKeyEnv":"AMLPOOL_TEST_NEG_KEY"}]}`), 0o644))
	t.Setenv("AMLPOOL_TEST_NEG_KEY", "k")
	for _, tt := range []struct{ flag, value, want string }{
		{"--chunk-rows", "-1", "amlpool score: --chunk-rows -1: must not be negative (0: the config's chunkRows, else 100)\n"},
		{"--parallelism", "-1", "amlpool score: --parallelism -1: must not be negative (0: the pool's total slots)\n"},
		{"--parallelism", "65537", "amlpool score: --parallelism 65537: must be at most 65536\n"},
		{"--progress-every", "-1s", "amlpool score: --progress-every -1s: must not be negative (0: a line for every chunk)\n"},
	} {
		var out, errOut bytes.Buffer
		code := run([]string{"score", "--config", cfg, "--in", in, "--out", filepath.Join(dir, "scored.csv"), "--progress", "none", tt.flag, tt.value}, &out, &errOut)
		assert.Equal(t, 2, code, tt.flag)
		assert.Equal(t, tt.want, errOut.String(), tt.flag)
		assert.NoFileExists(t, filepath.Join(dir, "scored.stats.json"), tt.flag)
	}
}

// A command refuses an argument that is not a flag: flag parsing stops at
// it, so the flags after it would silently go unused (bench --fake 2 x
// --duration 1s would run for the default 30s). score once answered one
// with "need --config, --in, --out" although they were given after it, or
// with "need " and no flag named when it came after them.
func TestCommandsRefuseStrayArguments(t *testing.T) {
	for _, name := range []string{"demo", "plan", "bench", "fake", "score"} {
		var out, errOut bytes.Buffer
		args := []string{name, "stray", "--duration", "1ms"}
		assert.Equal(t, 2, run(args, &out, &errOut), name)
		assert.Contains(t, errOut.String(), "amlpool "+name+`: unexpected argument "stray"`, name)
	}
	var out, errOut bytes.Buffer
	args := []string{"score", "--config", "pool.json", "--in", "rows.csv", "--out", "scored.csv", "stray"}
	assert.Equal(t, 2, run(args, &out, &errOut))
	assert.Contains(t, errOut.String(), `amlpool score: unexpected argument "stray"`)
}

func TestHelpForEveryCommand(t *testing.T) {
	for _, c := range commands {
		var out, errOut bytes.Buffer
		assert.Equal(t, 0, run([]string{c.name, "--help"}, &out, &errOut), c.name)
		assert.Contains(t, errOut.String(), "Examples:\n  amlpool "+c.name, c.name)
	}
}

// A bad flag, for every command, prints flag's line of error and where the
// help is (exit 2), not the whole help, under which the error once scrolled
// away. The error line starts "amlpool <command>: ", as the command's other
// error lines do; it once was flag's bare line.
func TestBadFlagSaysWhereTheHelpIs(t *testing.T) {
	for _, c := range commands {
		for _, tt := range []struct {
			args []string
			err  string
		}{
			{[]string{"--nope"}, "flag provided but not defined: -nope"},
			{[]string{"--config"}, map[bool]string{true: "flag needs an argument: -config", false: "flag provided but not defined: -config"}[c.name == "score" || c.name == "bench"]},
			{[]string{"--nope", "--config", "x"}, "flag provided but not defined: -nope"},
		} {
			var out, errOut bytes.Buffer
			assert.Equal(t, 2, run(append([]string{c.name}, tt.args...), &out, &errOut), c.name)
			lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
			require.Len(t, lines, 2, "%s %q: %s", c.name, tt.args, errOut.String())
			assert.Equal(t, "amlpool "+c.name+": "+tt.err, lines[0], c.name)
			assert.Equal(t, "Run 'amlpool help "+c.name+"' for its flags.", lines[1], c.name)
			assert.NotContains(t, errOut.String(), "Examples:", c.name)
		}
	}
}

// "amlpool help <command>" prints what "amlpool <command> -h" does (on
// stdout, as "amlpool help" prints the usage); help of an unknown command
// names it and exits 2. It once printed the general usage for any command.
func TestHelpCommand(t *testing.T) {
	for _, c := range commands {
		var want, out, errOut bytes.Buffer
		require.Equal(t, 0, run([]string{c.name, "-h"}, io.Discard, &want), c.name)
		assert.Equal(t, 0, run([]string{"help", c.name}, &out, &errOut), c.name)
		assert.Equal(t, want.String(), out.String(), c.name)
		assert.Empty(t, errOut.String(), c.name)
	}
	var out, errOut bytes.Buffer
	assert.Equal(t, 2, run([]string{"help", "foo"}, &out, &errOut))
	assert.Contains(t, errOut.String(), `amlpool help: unknown command "foo"`)
	assert.Empty(t, out.String())
	errOut.Reset()
	assert.Equal(t, 2, run([]string{"help", "score", "plan"}, &out, &errOut))
	assert.Contains(t, errOut.String(), "amlpool help: want one command")
	assert.Empty(t, out.String())
}

// A run never writes over its input, nor two of its files to one: the
// output, rejects or stats file that is the input (spelled otherwise, or
// through a symlink) is refused before any file is opened, with or without
// --resume.
func TestScoreRefusesToWriteOverItsInput(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "rows.csv")
	const input = "id,name\n1,a\n2,b" // no newline after the last line: --resume would cut it
	require.NoError(t, os.WriteFile(in, []byte(input), 0o644))
	link := filepath.Join(dir, "link.csv")
	require.NoError(t, os.Symlink(in, link))
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}}, "")
	for _, kv := range p.env { // run in this process: the config is valid
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	cfg := p.config
	other := filepath.Join(dir, "scored.csv")
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"out is in", []string{"--out", in}, "--out " + in + " is the same file as --in " + in + ": the run would write over its input; give --out another file"},
		{"out is in, spelled otherwise", []string{"--out", filepath.Join(dir, ".", "sub", "..", "rows.csv")}, "is the same file as --in " + in + ": the run would write over its input"},
		{"out is in through a symlink", []string{"--out", link}, "--out " + link + " is the same file as --in " + in},
		{"out is in, resumed", []string{"--out", in, "--resume"}, "--out " + in + " is the same file as --in"},
		{"rejects is in", []string{"--out", other, "--rejects", link, "--resume"}, "--rejects " + link + " is the same file as --in " + in + ": the run would write over its input; give --rejects another file"},
		{"stats is in", []string{"--out", other, "--stats", in}, "--stats " + in + " is the same file as --in " + in},
		{"rejects is out", []string{"--out", other, "--rejects", other}, "--rejects " + other + " is the same file as --out " + other + ": the run would write both to it; give --rejects another file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(in, []byte(input), 0o644))
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"score", "--config", cfg, "--in", in}, tt.args...), &stdout, &stderr)
			assert.Equal(t, 2, code, stderr.String())
			assert.Contains(t, stderr.String(), tt.want)
			assert.NotContains(t, stderr.String(), "remove it")
			got, err := os.ReadFile(in)
			require.NoError(t, err)
			assert.Equal(t, input, string(got), "the input is untouched")
			assert.NoFileExists(t, other)
			assert.NoFileExists(t, filepath.Join(dir, "scored.stats.json"))
		})
	}
}

// Two of a run's files that are one through a symlink to a file not made
// yet (the output's, the reject file's) are one only once the run has made
// it: distinctFiles, before any file is opened, cannot see it. They are
// refused once the files are open, before any row is sent; the run once
// scored every row and then wrote its statistics over its output, or two
// files' rows into one.
func TestScoreRefusesFilesThatASymlinkMakesOne(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	rejects := filepath.Join(dir, "scored.rejects.csv")
	writeIDs(t, in, 10)
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}}, "")
	for _, kv := range p.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	for _, tt := range []struct {
		name, flag, target, want string
	}{
		{"stats to the output", "--stats", out, "is the same file as --out " + out + ": the run would write both to it; give --stats another file"},
		{"stats to the reject file", "--stats", rejects, "is the same file as --rejects " + rejects + ": the run would write both to it; give --stats another file"},
		{"rejects to the output", "--rejects", out, "is the same file as --out " + out + ": the run would write both to it; give --rejects another file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			link := filepath.Join(t.TempDir(), "link")
			require.NoError(t, os.Symlink(tt.target, link))
			p.servers[0].ResetStats()
			var stdout, stderr bytes.Buffer
			code := run([]string{"score", "--config", p.config, "--in", in, "--out", out, "--progress", "none", tt.flag, link}, &stdout, &stderr)
			assert.Equal(t, 2, code, stderr.String())
			assert.Equal(t, "amlpool score: "+tt.flag+" "+link+" "+tt.want+"\n", stderr.String())
			assert.Zero(t, p.servers[0].Stats().Requests, "no row was sent")
			for _, f := range []string{out, rejects, filepath.Join(dir, "scored.stats.json")} {
				assert.NoFileExists(t, f)
			}
		})
	}
}

// When the second check refuses a run, two of its files that are one
// through symlinks to a file that was missing, the run removes the files
// it made, the one the links name included, and leaves the links as they
// were. It once took the --out link away and left its file, empty, or took
// a --rejects link to the output away.
func TestScoreRefusedLinksLeaveNoFileBehind(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	writeIDs(t, in, 10)
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}}, "")
	for _, kv := range p.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	target := filepath.Join(dir, "target.csv")
	for _, tt := range []struct {
		name  string
		flags []string // flags whose value is a link to target
	}{
		{"out and stats", []string{"--out", "--stats"}},
		{"out and rejects", []string{"--out", "--rejects"}},
		{"out, rejects and stats", []string{"--out", "--rejects", "--stats"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			links := t.TempDir()
			args := []string{"score", "--config", p.config, "--in", in, "--progress", "none"}
			var made []string
			for _, flag := range tt.flags {
				link := filepath.Join(links, strings.TrimPrefix(flag, "--")+".csv")
				require.NoError(t, os.Symlink(target, link))
				args = append(args, flag, link)
				made = append(made, link)
			}
			p.servers[0].ResetStats()
			var stdout, stderr bytes.Buffer
			assert.Equal(t, 2, run(args, &stdout, &stderr), stderr.String())
			assert.Contains(t, stderr.String(), "is the same file as --out "+made[0]+": the run would write both to it")
			assert.Zero(t, p.servers[0].Stats().Requests, "no row was sent")
			for _, link := range made {
				assertDangling(t, link, target)
			}
			entries, err := os.ReadDir(links)
			require.NoError(t, err)
			assert.Len(t, entries, len(made), "nothing but the links in their directory (no default rejects or stats file)")
		})
	}
	// A --rejects link to the output the run makes: the output goes, the
	// link stays.
	link := filepath.Join(t.TempDir(), "rejects.csv")
	require.NoError(t, os.Symlink(out, link))
	var stdout, stderr bytes.Buffer
	assert.Equal(t, 2, run([]string{"score", "--config", p.config, "--in", in, "--out", out, "--rejects", link, "--progress", "none"}, &stdout, &stderr), stderr.String())
	assertDangling(t, link, out)
}

// A --stats file the run cannot write (its directory missing, a file where
// its directory should be, a read-only directory) is refused before any
// row is scored, with exit status 2 naming the flag and the path, as a bad
// --out or --rejects is; it was once found only at the end of the run,
// when the statistics were written.
func TestScoreRefusesAStatsFileItCannotWrite(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	writeIDs(t, in, 10)
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}}, "")
	for _, kv := range p.env { // run in this process: the config is valid
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	readOnly := filepath.Join(dir, "read-only")
	require.NoError(t, os.Mkdir(readOnly, 0o555))
	for _, tt := range []struct {
		name, stats, err string
	}{
		{"missing directory", filepath.Join(dir, "missing", "run.json"), "no such file or directory"},
		{"a file as its directory", filepath.Join(in, "run.json"), "not a directory"},
		{"a directory", dir, "is a directory"},
		{"read-only directory", filepath.Join(readOnly, "run.json"), "permission denied"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "read-only directory" && os.Geteuid() == 0 {
				t.Skip("root writes to a read-only directory")
			}
			for _, flag := range []string{"--stats", "--rejects", "--out"} {
				args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--progress", "none", flag, tt.stats}
				var stdout, stderr bytes.Buffer
				assert.Equal(t, 2, run(args, &stdout, &stderr), stderr.String())
				assert.Equal(t, "amlpool score: "+flag+" "+tt.stats+": cannot write it: "+tt.err+"\n", stderr.String())
				assert.Zero(t, p.servers[0].Stats().Requests, "no row was sent")
				assert.NoFileExists(t, out)
				assert.NoFileExists(t, filepath.Join(dir, "scored.rejects.csv"))
				assert.NoFileExists(t, filepath.Join(dir, "scored.stats.json"))
			}
		})
	}
}

// A run whose statistics cannot be written at its end (here /dev/full: a
// full disk) exits with status 1, as the usage says of a file not
// written, though every row was scored; it once exited 0.
func TestScoreStatsWriteFailureExitsOne(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full:", err)
	}
	dir := t.TempDir()
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	writeIDs(t, in, 10)
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}}, "")
	for _, kv := range p.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"score", "--config", p.config, "--in", in, "--out", out, "--stats", "/dev/full", "--progress", "none"}, &stdout, &stderr)
	assert.Equal(t, 1, code, stderr.String())
	assert.Contains(t, stderr.String(), "amlpool score: writing statistics: write /dev/full: no space left on device\n")
	assert.Contains(t, stderr.String(), "10 scored in "+out)
}

// The --stats file is checked by creating it; a run that then fails before
// it writes it (here --resume of an output the input does not match) takes
// that empty file away again, and leaves one that was there as it was.
func TestScoreLeavesNoEmptyStatsFile(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	writeIDs(t, in, 10)
	require.NoError(t, os.WriteFile(out, []byte("id,name,Scored\nnot-an-id,x,1\n"), 0o644))
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}}, "")
	for _, kv := range p.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	stats := filepath.Join(dir, "run.json")
	args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--stats", stats, "--resume", "--progress", "none"}
	var stdout, stderr bytes.Buffer
	require.Equal(t, 2, run(args, &stdout, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "cannot resume")
	assert.NoFileExists(t, stats, "the file made to check --stats is removed")

	const old = `{"rows": 1}` + "\n"
	require.NoError(t, os.WriteFile(stats, []byte(old), 0o644))
	stderr.Reset()
	require.Equal(t, 2, run(args, &stdout, &stderr), stderr.String())
	got, err := os.ReadFile(stats)
	require.NoError(t, err)
	assert.Equal(t, old, string(got), "a stats file that was there is left as it was")
}

// A run that fails before it scores (here --resume of an output the input
// does not match) leaves the file system as it found it where its files
// are symlinks to files that are missing, too: it removes the files it
// made through them, and leaves the links, dangling as they were. It once
// left the --stats link's file behind, empty, and took the --rejects link
// away instead of its file.
func TestScoreEarlyFailureLeavesDanglingLinksAsTheyWere(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	writeIDs(t, in, 10)
	require.NoError(t, os.WriteFile(out, []byte("id,name,Scored\nnot-an-id,x,1\n"), 0o644))
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}}, "")
	for _, kv := range p.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	links := t.TempDir()
	rejects, rejTarget := filepath.Join(links, "rejects.csv"), filepath.Join(dir, "missing.rejects.csv")
	stats, statsTarget := filepath.Join(links, "stats.json"), filepath.Join(dir, "missing.stats.json")
	require.NoError(t, os.Symlink(rejTarget, rejects))
	require.NoError(t, os.Symlink(statsTarget, stats))
	args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--rejects", rejects, "--stats", stats, "--resume", "--progress", "none"}
	var stdout, stderr bytes.Buffer
	require.Equal(t, 2, run(args, &stdout, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "cannot resume")
	assertDangling(t, rejects, rejTarget)
	assertDangling(t, stats, statsTarget)

	// An empty reject file that was there stays, as a statistics file that
	// was there does: the run did not make it.
	require.NoError(t, os.WriteFile(rejects+".found", nil, 0o644))
	args = []string{"score", "--config", p.config, "--in", in, "--out", out, "--rejects", rejects + ".found", "--resume", "--progress", "none"}
	stderr.Reset()
	require.Equal(t, 2, run(args, &stdout, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "cannot resume")
	assert.FileExists(t, rejects+".found")
}

// --resume of an output or reject file that no run on this input wrote (a
// file given by mistake) is refused before any row is sent, and leaves the
// file as it was: its last line, without a line end, is not cut as a
// record a kill cut short. The run once cut it on opening the file, sent
// a chunk, and found the file's header wrong only then.
func TestScoreResumeOfAnotherFileLeavesItAsItWas(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	writeIDs(t, in, 10)
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 2}}, "")
	for _, kv := range p.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	const other = "date,amount\n2026-01-01,10\n2026-01-02,20" // no line end after the last line
	for _, tt := range []struct{ flag, want string }{
		{"--out", out + `: cannot resume: its first line is not the header of a run on this input: it lacks the input's columns ["id" "name"]; is it the file the run to resume wrote?`},
		{"--rejects", filepath.Join(dir, "other.csv") + `: cannot resume: its first line is not the header of a run on this input: it lacks the input's columns ["id" "name"]; is it the file the run to resume wrote?`},
	} {
		t.Run(tt.flag, func(t *testing.T) {
			path := out
			args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--resume", "--progress", "none"}
			if tt.flag != "--out" {
				path = filepath.Join(dir, "other.csv")
				args = append(args, tt.flag, path)
			}
			require.NoError(t, os.WriteFile(path, []byte(other), 0o644))
			p.servers[0].ResetStats()
			var stdout, stderr bytes.Buffer
			assert.Equal(t, 2, run(args, &stdout, &stderr), stderr.String())
			assert.Equal(t, "amlpool score: "+tt.want+"\n", stderr.String())
			assert.Zero(t, p.servers[0].Stats().Requests, "no row was sent")
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, other, string(got), "the file is as it was")
			require.NoError(t, os.Remove(path))
		})
	}
}

// assertDangling says that link is a symlink to target still, and that
// target is missing.
func assertDangling(t *testing.T, link, target string) {
	t.Helper()
	got, err := os.Readlink(link)
	if assert.NoError(t, err, "the link is there") {
		assert.Equal(t, target, got)
	}
	_, err = os.Lstat(target)
	assert.ErrorIs(t, err, os.ErrNotExist, "the file the run made through %s is removed", link)
}

// A write that fails (here a file size limit, as a full disk would) stops
// the run, and the counts it gives, in the summary and the statistics,
// are the rows the files hold, not those handed to them; --resume then
// goes on from there.
func TestScoreWriteFailureCountsWhatReachedTheFile(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4}}, "")
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 20_000
	writeIDs(t, in, n)
	args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--progress", "none"}
	// dash and bash in POSIX mode count ulimit -f in 512-byte blocks: 50 kB.
	cmd := exec.Command("sh", append([]string{"-c", `ulimit -f 100 && exec "$0" "$@"`, binary(t)}, args...)...)
	cmd.Env = append(os.Environ(), p.env...)
	code, stderr := runCmd(t, cmd)
	require.Equal(t, 1, code, stderr)
	assert.Contains(t, stderr, "file too large")

	b, err := os.ReadFile(out)
	require.NoError(t, err)
	held := bytes.Count(b, []byte("\n")) - 1 // complete records after the header
	require.Positive(t, held)
	require.Less(t, held, n)
	// "of 20000" when the count of the input's rows ended first.
	assert.Regexp(t, fmt.Sprintf(`stopped after %d( of %d)? rows \(%d scored in %s, 0 rejected; `, held, n, held, regexp.QuoteMeta(out))+
		`a failed write kept the last \d+ rows from the files\); fix the cause`, stderr)
	st, err := readStats(filepath.Join(dir, "scored.stats.json"))
	require.NoError(t, err)
	assert.Equal(t, [2]int{held, held}, [2]int{st.Rows, st.Scored}, "the statistics count the rows in the file")

	code, stderr = runCmd(t, p.command(t, append(args, "--resume")...))
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, fmt.Sprintf("%d scored in %s", n, out))
	scored, _ := checkOnce(t, readCSV(t, out), nil, n)
	assert.Equal(t, n, scored)
}
