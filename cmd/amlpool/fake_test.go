package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/rows"
)

// TestFakeCommand is the quick start: amlpool fake, then score its sample
// file with its config and keys; the sample's one poison row is isolated.
// The same with fake online endpoints: a cap over 200, the MLflow form,
// the model's 400 behind a 424.
func TestFakeCommand(t *testing.T) {
	t.Run("classic", func(t *testing.T) { testFakeCommand(t, "--mcc", "4") })
	t.Run("online", func(t *testing.T) { testFakeCommand(t, "--kind", "online", "--mcc", "300") })
}

func testFakeCommand(t *testing.T, args ...string) {
	dir := t.TempDir()
	fake := exec.Command(binary(t), append([]string{"fake", "--dir", dir, "--endpoints", "2", "--latency", "1ms"}, args...)...)
	stdout, err := fake.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, fake.Start())
	t.Cleanup(func() { fake.Process.Kill(); fake.Wait() })
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "amlpool fake: ready") {
				ready <- nil
				go io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- fmt.Errorf("fake ended before it was ready: %v", sc.Err())
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	select {
	case err := <-ready:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("fake not ready within a minute")
	}

	keys, err := os.ReadFile(filepath.Join(dir, "keys.env"))
	require.NoError(t, err)
	env := os.Environ()
	for _, l := range strings.Split(string(keys), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(l, "export "), "="); ok && !strings.HasPrefix(l, "#") {
			env = append(env, k+"="+strings.Trim(v, "'"))
		}
	}
	out := filepath.Join(t.TempDir(), "scored.csv")
	score := exec.Command(binary(t), "score", "--config", filepath.Join(dir, "pool.json"), "--in", filepath.Join(dir, "rows.csv"), "--out", out)
	score.Env = env
	code, stderr := runCmd(t, score)
	assert.Equal(t, 1, code, stderr)
	assert.Contains(t, stderr, "amlpool score: 1000 rows in ")
	assert.Contains(t, stderr, "999 scored in "+out+", 1 rejected in ")
	assert.Contains(t, stderr, `first failure: line 502 (row 501): amlpool: endpoint fake`)
	assert.Contains(t, stderr, `cannot score "poison"`)
	assert.Equal(t, []string{"id", "age", "income", amltest.ScoredProbabilities}, readCSV(t, out)[0])

	require.NoError(t, fake.Process.Signal(syscall.SIGINT))
	var exit *exec.ExitError
	require.ErrorAs(t, fake.Wait(), &exit)
	assert.Equal(t, 130, exit.ExitCode(), "fake stops when interrupted, with the status of an interrupted run")
	pool := string(mustRead(t, filepath.Join(dir, "pool.json")))
	assert.NotContains(t, pool, "apiKey\"", "the config names variables, holds no key")
	if slices.Contains(args, "online") {
		assert.Contains(t, pool, `"kind": "online"`)
		assert.Contains(t, pool, `"azureml-model-deployment": "blue"`)
	}
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return bytes.TrimSpace(b)
}

func TestFakeBadFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--endpoints", "0"}, "--endpoints 0: want at least 1"},
		{[]string{"--mcc", "201"}, "--mcc 201: want 1 to 200"},
		{[]string{"--sample-rows", "-1"}, "--sample-rows -1: must not be negative (0: no rows.csv)"},
		{[]string{"--latency", "-1ms"}, "--latency -1ms: must not be negative"},
		{[]string{"--poison", ""}, "--poison: want a cell value"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		var out, errOut bytes.Buffer
		assert.Equal(t, 2, run(append([]string{"fake", "--dir", t.TempDir()}, tt.args...), &out, &errOut), tt.args)
		assert.Contains(t, errOut.String(), tt.msg, tt.args)
	}
}

// keys.env is its owner's alone, also when an earlier file of that name
// could be read by others. (fake returns errInterrupted once the files
// are written when its ctx is done already.)
func TestFakeKeysFileIsPrivate(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.env")
	require.NoError(t, os.WriteFile(keys, []byte("old\n"), 0o644))
	require.NoError(t, os.Chmod(keys, 0o644)) // whatever the umask
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o := fakeOptions{dir: dir, endpoints: 1, mcc: 1, sampleRows: 0, poison: "poison"}
	require.ErrorIs(t, fake(ctx, o, io.Discard), errInterrupted)
	fi, err := os.Stat(keys)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	assert.Contains(t, string(mustRead(t, keys)), "export AMLPOOL_FAKE_KEY_1=")
}

// --sample-rows 0 writes no rows.csv, and fake does not point at one: its
// score line names a file of the user's. (fake returns errInterrupted once the files
// are written when its ctx is done already.)
func TestFakeNoSampleRows(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, n := range []int{0, 3} {
		dir := t.TempDir()
		var out bytes.Buffer
		require.ErrorIs(t, fake(ctx, fakeOptions{dir: dir, endpoints: 1, mcc: 1, sampleRows: n, poison: "poison"}, &out), errInterrupted)
		rowsCSV := filepath.Join(dir, "rows.csv")
		if n == 0 {
			assert.NoFileExists(t, rowsCSV)
			assert.NotContains(t, out.String(), rowsCSV, "no file written, none named")
			assert.Contains(t, out.String(), "amlpool score --config "+filepath.Join(dir, "pool.json")+" --in your-rows.csv --out scored.csv\n")
		} else {
			assert.FileExists(t, rowsCSV)
			assert.Contains(t, out.String(), " and "+rowsCSV+"\n")
			assert.Contains(t, out.String(), " --in "+rowsCSV+" --out scored.csv\n")
		}
	}
}

// The commands fake prints run as shown in a shell whatever --dir holds:
// a space, a quote.
func TestFakePrintsCommandsAShellRuns(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := filepath.Join(t.TempDir(), "it's a dir")
	var out bytes.Buffer
	require.ErrorIs(t, fake(ctx, fakeOptions{dir: dir, endpoints: 2, mcc: 1, sampleRows: 3, poison: "poison"}, &out), errInterrupted)
	var source, score string
	for _, l := range strings.Split(out.String(), "\n") {
		switch l = strings.TrimSpace(l); {
		case strings.HasPrefix(l, ". "):
			source = l
		case strings.HasPrefix(l, "amlpool score "):
			score = l
		}
	}
	require.NotEmpty(t, source, out.String())
	require.NotEmpty(t, score, out.String())
	// The shell reads the keys and sees the score command's words as fake
	// means them.
	got, err := exec.Command("sh", "-c", source+` && printf '%s\n' "$AMLPOOL_FAKE_KEY_1" && set -- `+strings.TrimPrefix(score, "amlpool score ")+` && printf '%s\n' "$2" "$4"`).CombinedOutput()
	require.NoError(t, err, "%s", got)
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	require.Len(t, lines, 3, "%s", got)
	assert.NotEmpty(t, lines[0], "a key was read")
	assert.Equal(t, []string{filepath.Join(dir, "pool.json"), filepath.Join(dir, "rows.csv")}, lines[1:])
}

// The sample's poison row holds --poison as one cell, whatever it holds:
// a comma, a quote or a line break must not make it another row or a bad
// line.
func TestFakeSampleRowsQuotePoison(t *testing.T) {
	for _, poison := range []string{"poison", "a,b", `say "x"`, "two\nlines"} {
		r, err := rows.NewCSVReader(bytes.NewReader(sampleRows(5, poison)))
		require.NoError(t, err, poison)
		var ages []any
		for {
			row, err := r.Next()
			if err == io.EOF {
				break
			}
			require.NoError(t, err, poison)
			ages = append(ages, row[1])
		}
		assert.Equal(t, []any{"18", "25", poison, "39", "46"}, ages, poison)
	}
}

// More fake endpoints than the open-file limit allows fail with exit
// status 1 and a message naming the endpoint and the flag; httptest's
// panic once came out as a Go panic and its stack trace.
func TestFakesBeyondTheOpenFileLimit(t *testing.T) {
	for _, args := range [][]string{
		{"fake", "--endpoints", "100", "--sample-rows", "0", "--dir", t.TempDir()},
		{"demo", "-endpoints", "100", "-duration", "1ms", "-every", "0"},
		{"bench", "--fake", "100", "--duration", "1ms"},
	} {
		cmd := exec.Command("sh", append([]string{"-c", `ulimit -n 40 && exec "$0" "$@"`, binary(t)}, args...)...)
		code, stderr := runCmd(t, cmd)
		assert.Equal(t, 1, code, "%s: %s", args, stderr)
		assert.Regexp(t, `amlpool `+args[0]+`: cannot start fake endpoint \w+ of the 100 of -?-(endpoints|fake): .*too many open files`, stderr, args)
		assert.NotContains(t, stderr, "panic", args)
		assert.NotContains(t, stderr, "goroutine ", args)
	}
}
