package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// End-to-end tests of the built command on the cases: no row lost
// to bad input, a bad row costing only itself, progress after --resume,
// and the fake endpoints a newcomer tries it all on.

// poison is a model that cannot score a row whose first cell is bad, and
// fails the whole request for it, as a real model does.
func poison(bad string) func(*amlpool.Request) (*amlpool.Response, error) {
	return func(req *amlpool.Request) (*amlpool.Response, error) {
		for i, row := range req.Inputs["input1"].Values {
			if fmt.Sprint(row[0]) == bad {
				return nil, fmt.Errorf("row %d of the request: id %s cannot be scored", i+1, bad)
			}
		}
		return amltest.Echo(req)
	}
}

// TestScoreUnclosedQuoteLosesNoRow is the case: line 22 of 5,000
// rows opens a quote that is never closed. Output and rejects hold all
// 5,000 rows, once each, line 22 alone rejected; from a file, and from a
// pipe, which cannot be read twice.
func TestScoreUnclosedQuoteLosesNoRow(t *testing.T) {
	var b strings.Builder
	b.WriteString("id,name\n")
	for i := range 5000 {
		if i == 20 {
			fmt.Fprintf(&b, "%d,\"name %d\n", i, i) // line 22
		} else {
			fmt.Fprintf(&b, "%d,name %d\n", i, i)
		}
	}
	for _, pipe := range []bool{false, true} {
		t.Run(map[bool]string{false: "file", true: "pipe"}[pipe], func(t *testing.T) {
			dir := t.TempDir()
			p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 8}}, `,"outputColumns":["Scored Probabilities"]`)
			in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
			require.NoError(t, os.WriteFile(in, []byte(b.String()), 0o644))
			cmd := p.command(t, "score", "--config", p.config, "--in", in, "--out", out)
			if pipe {
				cmd = p.command(t, "score", "--config", p.config, "--in", "/dev/stdin", "--out", out)
				cmd.Stdin = strings.NewReader(b.String()) // not an *os.File: exec makes a pipe
			}
			code, stderr := runCmd(t, cmd)
			assert.Equal(t, 1, code, stderr)
			assert.Contains(t, stderr, "4999 scored in "+out+", 1 rejected in ")
			rej := readCSV(t, filepath.Join(dir, "scored.rejects.csv"))
			scored, rejected := checkOnce(t, readCSV(t, out), rej, 5000)
			assert.Equal(t, [2]int{4999, 1}, [2]int{scored, rejected})
			assert.Equal(t, []string{"22", "21"}, rej[1][:2], "line and row")
			assert.Contains(t, rej[1][2], "a quoted field opens on this line and is never closed: the input ends inside it; the line is rejected alone and reading goes on with line 23")
			assert.Equal(t, []string{`20,"name 20`, "20", "name 20"}, rej[1][3:], "the line as it stands, and its cells")
		})
	}
}

// TestScorePoisonRow is the case: one row the model cannot score
// among 1,000 costs only itself, in CSV and in JSON Lines: 999 scored, 1
// rejected with its line and the model's message for it.
func TestScorePoisonRow(t *testing.T) {
	for _, format := range []string{"csv", "jsonl"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4, Score: poison("437")}, {MaxConcurrentCalls: 4, Score: poison("437")}},
				`,"outputColumns":["Scored Probabilities"]`)
			in, out := filepath.Join(dir, "rows."+format), filepath.Join(dir, "scored."+format)
			var b strings.Builder
			if format == "csv" {
				b.WriteString("id,name\n")
			}
			for i := range 1000 {
				if format == "csv" {
					fmt.Fprintf(&b, "%d,name %d\n", i, i)
				} else {
					fmt.Fprintf(&b, "{\"id\":\"%d\",\"name\":\"name %d\"}\n", i, i)
				}
			}
			require.NoError(t, os.WriteFile(in, []byte(b.String()), 0o644))
			code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
			assert.Equal(t, 1, code, stderr)
			line := 437 + 1 // JSON Lines has no header line
			if format == "csv" {
				line++
			}
			assert.Contains(t, stderr, "999 scored in "+out+", 1 rejected in ")
			assert.Contains(t, stderr, fmt.Sprintf("first failure: line %d (row 438): amlpool: endpoint ep", line))
			assert.Contains(t, stderr, "HTTP 400 LibraryExecutionError/FailedToEvaluateRScript: row 1 of the request: id 437 cannot be scored")

			rejPath := filepath.Join(dir, "scored.rejects."+format)
			if format == "csv" {
				rej := readCSV(t, rejPath)
				scored, rejected := checkOnce(t, readCSV(t, out), rej, 1000)
				assert.Equal(t, [2]int{999, 1}, [2]int{scored, rejected})
				assert.Regexp(t, `^amlpool: endpoint ep\d: HTTP 400 LibraryExecutionError/FailedToEvaluateRScript: row 1 of the request: id 437 cannot be scored$`, rej[1][2])
			} else {
				recs := readJSONL(t, out)
				require.Len(t, recs, 999)
				for i, r := range recs {
					id := i
					if i >= 437 {
						id++
					}
					require.Equal(t, strconv.Itoa(id), r["id"], "output in input order, without row 437")
				}
				rej := readJSONL(t, rejPath)
				require.Len(t, rej, 1)
				assert.Equal(t, map[string]any{"line": float64(line), "row": float64(438), "text": nil, "id": "437", "name": "name 437",
					"error": rej[0]["error"]}, rej[0])
				assert.Contains(t, rej[0]["error"], "id 437 cannot be scored")
			}
			st, err := readStats(filepath.Join(dir, "scored.stats.json"))
			require.NoError(t, err)
			assert.Equal(t, 10+st.SplitRequests, st.Requests)
			assert.LessOrEqual(t, st.SplitRequests, 9, "at most ceil(log2 100) + 2 extra requests")
		})
	}
}

// TestScoreIsolatesTwoPercentBadRows: two bad rows in every chunk of 100,
// and all 16 slots of the pool busy searching. Chunks searched side by side
// once counted each other's failures as the input's, gave up splitting and
// rejected thousands of good rows, a different number each run; now every
// bad row is rejected alone and every other row scored, for the same split
// requests as with --parallelism 1.
func TestScoreIsolatesTwoPercentBadRows(t *testing.T) {
	model := func(req *amlpool.Request) (*amlpool.Response, error) {
		for i, row := range req.Inputs["input1"].Values {
			if id, _ := strconv.Atoi(fmt.Sprint(row[0])); id%50 == 7 {
				return nil, fmt.Errorf("row %d of the request: id %d has an unknown category", i+1, id)
			}
		}
		return amltest.Echo(req)
	}
	const n = 10_000
	split := make(map[string]int)
	for _, par := range []string{"0", "1"} { // 0: the pool's 16 slots
		t.Run("parallelism "+par, func(t *testing.T) {
			dir := t.TempDir()
			p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 8, Score: model}, {MaxConcurrentCalls: 8, Score: model}}, "")
			in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
			writeIDs(t, in, n)
			code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out, "--progress", "none", "--parallelism", par))
			assert.Equal(t, 1, code, stderr)
			rej := readCSV(t, filepath.Join(dir, "scored.rejects.csv"))
			scored, rejected := checkOnce(t, readCSV(t, out), rej, n)
			assert.Equal(t, [2]int{n - n/50, n / 50}, [2]int{scored, rejected})
			for _, rec := range rej[1:] {
				id, _ := strconv.Atoi(rec[4])
				require.Equal(t, 7, id%50, "only bad rows rejected, not id %d: %s", id, rec[2])
				require.Regexp(t, `^amlpool: endpoint ep\d: HTTP 400 LibraryExecutionError/FailedToEvaluateRScript: row 1 of the request: id \d+ has an unknown category$`, rec[2])
			}
			st, err := readStats(filepath.Join(dir, "scored.stats.json"))
			require.NoError(t, err)
			split[par] = st.SplitRequests
		})
	}
	assert.Equal(t, split["1"], split["0"], "the split requests of a serial run")
}

// TestScoreJSONLinesSettlesEveryLine: a JSON Lines file with lines of every
// kind of fault; every line that is not blank is one record, in the output
// or the rejects, and a rejected line keeps its text.
func TestScoreJSONLinesSettlesEveryLine(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4, Score: poison("6")}}, `,"outputColumns":["Scored Probabilities"]`)
	in, out := filepath.Join(dir, "rows.jsonl"), filepath.Join(dir, "scored.jsonl")
	input := []string{
		`{"id":"1","name":"a"}`,
		`{"id":"2","name":"b`, // a string never closed: this line only
		``,
		`{"id":"3",`, // an object over several lines: each line is bad alone
		`"name":"c"}`,
		`not json`,
		`{"id":"4"}`,
		`{"id":"5","name":"e","x":1}`,
		`{"id":"6","name":"f"}`, // the model cannot score it
		`{"name":"g","id":"7"}`,
	}
	require.NoError(t, os.WriteFile(in, []byte(strings.Join(input, "\n")+"\n"), 0o644))
	code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	assert.Equal(t, 1, code, stderr)
	var scored []string
	for _, r := range readJSONL(t, out) {
		scored = append(scored, r["id"].(string))
	}
	assert.Equal(t, []string{"1", "7"}, scored)
	type reject struct {
		Line float64
		Text any
	}
	var rejects []reject
	for _, r := range readJSONL(t, filepath.Join(dir, "scored.rejects.jsonl")) {
		rejects = append(rejects, reject{r["line"].(float64), r["text"]})
	}
	assert.Equal(t, []reject{
		{2, `{"id":"2","name":"b`}, {4, `{"id":"3",`}, {5, `"name":"c"}`}, {6, "not json"},
		{7, `{"id":"4"}`}, {8, `{"id":"5","name":"e","x":1}`}, {9, nil},
	}, rejects, "each bad line once, with its text; the row the model failed, read fine, has none")
}

func readJSONL(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var recs []map[string]any
	for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		var r map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &r), l)
		recs = append(recs, r)
	}
	return recs
}

// TestScoreResumeProgress checks the progress lines of a resumed run: the
// first one already counts the rows settled before; the percentage is of
// the whole file; the rate counts only this run's rows, so it never passes
// what the endpoints can do (the earlier run's rows, counted as this run's
// work, would put it far above).
func TestScoreResumeProgress(t *testing.T) {
	dir := t.TempDir()
	const mcc, latency, chunk = 2, 5 * time.Millisecond, 10
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: mcc, Latency: latency}}, "")
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 3000
	writeIDs(t, in, n)
	args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--chunk-rows", strconv.Itoa(chunk)}
	cmd := p.command(t, args...)
	startUntil(t, p, cmd, 100) // 1000 rows
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	_ = cmd.Wait()
	base := len(readCSV(t, out)) - 1
	require.Positive(t, base)
	require.Less(t, base, n)

	code, stderr := runCmd(t, p.command(t, append(args, "--resume", "--progress", "lines", "--progress-every", "1ns")...))
	require.Equal(t, 0, code, stderr)
	ceiling := float64(mcc*chunk) / latency.Seconds() // rows/s the endpoint can do: 4000
	re := regexp.MustCompile(`^amlpool score: (\d+)/3000 rows \((\d+\.\d)%\), (\d+) rows/s, ETA (\S+)$`)
	// The rows are counted beside the scoring: lines before the count
	// ends have no total, and none comes after one that has.
	early := regexp.MustCompile(`^amlpool score: (\d+) rows, (\d+) rows/s$`)
	var settled []int
	totals := 0
	for _, l := range strings.Split(stderr, "\n") {
		if !strings.HasPrefix(l, "amlpool score: ") || strings.Contains(l, " in ") {
			continue // the summary
		}
		if m := early.FindStringSubmatch(l); m != nil && totals == 0 {
			done, _ := strconv.Atoi(m[1])
			rate, _ := strconv.ParseFloat(m[2], 64)
			assert.Greater(t, done, base, "the earlier run's rows count from the first line: %q", l)
			assert.LessOrEqual(t, rate, ceiling, "this run's rate cannot pass the endpoint's capacity: %q", l)
			settled = append(settled, done)
			continue
		}
		m := re.FindStringSubmatch(l)
		require.NotNil(t, m, "progress line %q", l)
		totals++
		done, _ := strconv.Atoi(m[1])
		rate, _ := strconv.ParseFloat(m[3], 64)
		assert.Greater(t, done, base, "the earlier run's rows count from the first line: %q", l)
		assert.Equal(t, fmt.Sprintf("%.1f", 100*float64(done)/n), m[2], "percentage of the whole file: %q", l)
		assert.LessOrEqual(t, rate, ceiling, "this run's rate cannot pass the endpoint's capacity: %q", l)
		_, err := time.ParseDuration(m[4])
		assert.NoError(t, err, "ETA: %q", l)
		settled = append(settled, done)
	}
	assert.Positive(t, totals, "the last lines say the total: %s", stderr)
	require.NotEmpty(t, settled, stderr)
	assert.True(t, slices.IsSorted(settled), "progress goes forward: %v", settled)
	assert.Contains(t, stderr, fmt.Sprintf("amlpool score: %d rows in ", n))
	scored, _ := checkOnce(t, readCSV(t, out), nil, n)
	assert.Equal(t, n, scored)
}

// TestScoreRejectsKeepRowsAcrossFormats checks that a bad row keeps its
// content when the reject file's format is not the input's: a CSV row of
// the wrong width in JSON Lines rejects (whose keys need a full row) keeps
// its cells, in its columns where they fit and whole in "text"; a JSON Lines
// line that could not be read as a row (not JSON, a key that is no column)
// keeps its text in the CSV rejects' "text" column, which they have for a
// JSON Lines input.
func TestScoreRejectsKeepRowsAcrossFormats(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4}}, `,"outputColumns":["Scored Probabilities"]`)

	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.jsonl")
	require.NoError(t, os.WriteFile(in, []byte("id,name\n1,a\n2,b,\"x,y\"\n3\n4,d\n"), 0o644))
	code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	require.Equal(t, 1, code, stderr)
	var got [][]any
	for _, r := range readJSONL(t, filepath.Join(dir, "scored.rejects.jsonl")) {
		got = append(got, []any{r["line"], r["text"], r["id"], r["name"]})
	}
	assert.Equal(t, [][]any{{3.0, `2,b,"x,y"`, "2", "b"}, {4.0, "3", "3", nil}}, got)

	in, out = filepath.Join(dir, "rows.jsonl"), filepath.Join(dir, "scored.csv")
	input := []string{
		`{"id":"1","name":"a"}`,
		`not json`,
		`{"id":"3","name":"c","extra":"kept, \"quoted\""}`,
		`{"id":"4"}`,
		`{"id":"5","name":"e"}`,
	}
	require.NoError(t, os.WriteFile(in, []byte(strings.Join(input, "\n")+"\n"), 0o644))
	code, stderr = runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	require.Equal(t, 1, code, stderr)
	rej := readCSV(t, filepath.Join(dir, "scored.rejects.csv"))
	assert.Equal(t, [][]string{
		{"line", "row", "error", "text", "id", "name"},
		{"2", "2", "not JSON: invalid character 'o' in literal null (expecting 'u')", "not json", "", ""},
		{"3", "3", `key "extra" is not a column (columns come from the first row)`, input[2], "3", "c"},
		{"4", "4", `no key "name" (every row needs every column)`, input[3], "4", ""},
	}, rej, "each bad line whole in text, its cells under their columns")
}

// TestScoreRejectsKeepBytesThatAreNotUTF8 checks that a row with bytes that
// are not UTF-8 keeps them in the reject file: byte for byte in CSV, and in
// JSON Lines, where a string cannot hold them, as {"base64": …}.
func TestScoreRejectsKeepBytesThatAreNotUTF8(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4}}, `,"outputColumns":["Scored Probabilities"]`)
	unbase := func(v any) string {
		t.Helper()
		m, ok := v.(map[string]any)
		require.True(t, ok, "not an object: %#v", v)
		require.Len(t, m, 1)
		b, err := base64.StdEncoding.DecodeString(m["base64"].(string))
		require.NoError(t, err)
		return string(b)
	}

	// CSV in: a bad field; a bare quote on a line that is not UTF-8; a
	// row of the wrong width that is not UTF-8.
	csvIn := "id,name\n1,a\n2,b\xff\xfe\n3,x\"\xc3(\n4,d,\xe2\x82\n5,e\n"
	in := filepath.Join(dir, "rows.csv")
	require.NoError(t, os.WriteFile(in, []byte(csvIn), 0o644))
	out := filepath.Join(dir, "scored.jsonl")
	code, stderr := runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	require.Equal(t, 1, code, stderr)
	rej := readJSONL(t, filepath.Join(dir, "scored.rejects.jsonl"))
	require.Len(t, rej, 3)
	assert.Equal(t, "2", rej[0]["id"])
	assert.Equal(t, "b\xff\xfe", unbase(rej[0]["name"]))
	assert.Nil(t, rej[0]["text"])
	assert.Equal(t, "3,x\"\xc3(", unbase(rej[1]["text"]), "the line as it stands")
	assert.Equal(t, "3", rej[1]["id"])
	assert.Equal(t, "x\"\xc3(", unbase(rej[1]["name"]), "its cells, read loosely")
	assert.Equal(t, "4,d,\xe2\x82", unbase(rej[2]["text"]), "the row as a CSV line")
	assert.Equal(t, "d", rej[2]["name"])
	out = filepath.Join(dir, "scored.csv")
	code, stderr = runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	require.Equal(t, 1, code, stderr)
	b, err := os.ReadFile(filepath.Join(dir, "scored.rejects.csv"))
	require.NoError(t, err)
	assert.Contains(t, string(b), ",2,b\xff\xfe\n")
	assert.Contains(t, string(b), ",4,d,\xe2\x82\n")
	assert.Contains(t, string(b), `,"3,x""`+"\xc3"+`(",3,"x""`+"\xc3"+`("`+"\n", "the line byte for byte, in text; its cells")

	// JSON Lines in: a line that is not UTF-8, in both reject formats.
	bad := "{\"id\":\"2\",\"name\":\"b\xff\"}"
	in = filepath.Join(dir, "rows.jsonl")
	require.NoError(t, os.WriteFile(in, []byte(`{"id":"1","name":"a"}`+"\n"+bad+"\n"), 0o644))
	out = filepath.Join(dir, "scored2.jsonl")
	code, stderr = runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	require.Equal(t, 1, code, stderr)
	rej = readJSONL(t, filepath.Join(dir, "scored2.rejects.jsonl"))
	require.Len(t, rej, 1)
	assert.Equal(t, bad, unbase(rej[0]["text"]))
	out = filepath.Join(dir, "scored2.csv")
	code, stderr = runCmd(t, p.command(t, "score", "--config", p.config, "--in", in, "--out", out))
	require.Equal(t, 1, code, stderr)
	b, err = os.ReadFile(filepath.Join(dir, "scored2.rejects.csv"))
	require.NoError(t, err)
	assert.Contains(t, string(b), `,"{""id"":""2"",""name"":""b`+"\xff"+`""}",,`+"\n", "the line byte for byte, in text")
}

// TestScoreResumeRefusesAChangedInput: --resume checks the rows the files
// hold against the input, as the output echoes each scored row's input
// columns. An input of the same header and length whose scored row changed,
// or cannot be read now, is refused (exit status 2), naming the row, its
// line and the column, never a cell; the same input resumes, whatever its
// cells hold (quotes, CR LF, JSON numbers, objects, null), in every pair of
// formats.
func TestScoreResumeRefusesAChangedInput(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{MaxConcurrentCalls: 4, Score: poison("6")}}, `,"outputColumns":["Scored Probabilities"]`)
	inputs := map[string][]string{
		"csv": {
			"id,name",
			`1,"a, ""b""` + "\r\n" + `c"`,
			"2, lead",
			`3,\.`,
			"4,é ü",
			`5,"<&>"`,
			"6,x", // the model cannot score it
			"7",   // the wrong width
			"8,last",
		},
		"jsonl": {
			`{"id":"1","name":"a\r\nb <&> é"}`,
			`{"id":"2","name":1.50}`,
			`{"name":{"b":1,"a":[1,2.0]},"id":"3"}`,
			`{"id":"4","name":null}`,
			`{"id":"5","name":true}`,
			`{"id":"6","name":"x"}`,
			`not json`,
			`{"id":"8","name":"last"}`,
		},
	}
	for _, inFormat := range []string{"csv", "jsonl"} {
		for _, outFormat := range []string{"csv", "jsonl"} {
			t.Run(inFormat+" to "+outFormat, func(t *testing.T) {
				lines := inputs[inFormat]
				in := filepath.Join(dir, inFormat+outFormat+".in."+inFormat)
				out := filepath.Join(dir, inFormat+outFormat+".out."+outFormat)
				rej := strings.TrimSuffix(out, "."+outFormat) + ".rejects." + outFormat
				write := func(lines []string) {
					t.Helper()
					require.NoError(t, os.WriteFile(in, []byte(strings.Join(lines, "\n")+"\n"), 0o644))
				}
				args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--progress", "none"}
				write(lines)
				code, stderr := runCmd(t, p.command(t, args...))
				require.Equal(t, 1, code, stderr)
				wantOut, err := os.ReadFile(out)
				require.NoError(t, err)
				wantRej, err := os.ReadFile(rej)
				require.NoError(t, err)

				code, stderr = runCmd(t, p.command(t, append(args, "--resume")...))
				require.Equal(t, 0, code, "the same input resumes: %s", stderr)

				line := func(row int) int { // CSV: the header, and row 1 over two lines
					return map[string]int{"csv": row + 2, "jsonl": row}[inFormat]
				}
				last := len(lines) - 1 // row 8, scored after both rejects
				changed := slices.Clone(lines)
				changed[last] = strings.Replace(changed[last], "last", "lust", 1) // the same length
				write(changed)
				code, stderr = runCmd(t, p.command(t, append(args, "--resume")...))
				assert.Equal(t, 2, code, stderr)
				assert.Contains(t, stderr, fmt.Sprintf("cannot resume: row 8 (line %d) of %s is not the row %s holds scored for it: column \"name\" differs: "+
					"has the input changed since the run to resume?", line(8), in, out))
				assert.NotContains(t, stderr, "lust")
				assert.NotContains(t, stderr, "last")

				bad := slices.Clone(lines)
				bad[last-3] = map[string]string{"csv": `5,"<&>",x`, "jsonl": `{"id":"5"}`}[inFormat] // row 5, scored
				write(bad)
				code, stderr = runCmd(t, p.command(t, append(args, "--resume")...))
				assert.Equal(t, 2, code, stderr)
				assert.Contains(t, stderr, fmt.Sprintf("cannot resume: row 5 (line %d) of %s cannot be read now (", line(5), in))
				assert.Contains(t, stderr, "), but "+out+" holds it scored: has the input changed")

				gotOut, err := os.ReadFile(out)
				require.NoError(t, err)
				gotRej, err := os.ReadFile(rej)
				require.NoError(t, err)
				assert.Equal(t, string(wantOut), string(gotOut), "a refused resume leaves the files as they were")
				assert.Equal(t, string(wantRej), string(gotRej))
			})
		}
	}
}

// TestScoreResumeChecksPastACutReject: a kill that cut a reject record
// short leaves the rows scored after the last whole one checked against
// the input all the same. The record cut short is no reject file's end to
// read back (a CSV row without its row number, a JSON Lines line that is
// not JSON): read, it once stopped the check there, and a changed row
// after it was skipped as settled.
func TestScoreResumeChecksPastACutReject(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{Score: poison("2")}}, `,"outputColumns":["Scored Probabilities"]`)
	in := filepath.Join(dir, "in.csv")
	write := func(last string) {
		t.Helper()
		require.NoError(t, os.WriteFile(in, []byte("id,name\n1,a\n2,b\n3,"+last+"\n"), 0o644))
	}
	for _, format := range []string{"csv", "jsonl"} {
		t.Run(format, func(t *testing.T) {
			out := filepath.Join(dir, "out."+format)
			rej := filepath.Join(dir, "out.rejects."+format)
			args := []string{"score", "--config", p.config, "--in", in, "--out", out, "--progress", "none"}
			write("last")
			code, stderr := runCmd(t, p.command(t, args...))
			require.Equal(t, 1, code, stderr)
			cut := map[string]string{"csv": `5`, "jsonl": `{"line":5,"ro`}[format] // row 4's record, cut short
			f, err := os.OpenFile(rej, os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.WriteString(cut)
			require.NoError(t, errors.Join(err, f.Close()))
			held, err := os.ReadFile(rej)
			require.NoError(t, err)

			write("lust") // row 3, scored after the reject of row 2
			code, stderr = runCmd(t, p.command(t, append(args, "--resume")...))
			assert.Equal(t, 2, code, stderr)
			assert.Contains(t, stderr, "cannot resume: row 3 (line 4) of "+in+" is not the row "+out+" holds scored for it: column \"name\" differs")
			got, err := os.ReadFile(rej)
			require.NoError(t, err)
			assert.Equal(t, string(held), string(got), "a refused resume leaves the record cut short")
		})
	}
}
