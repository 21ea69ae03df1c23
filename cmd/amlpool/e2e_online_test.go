package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// TestScoreOnline: the built command scores a file through two online
// fakes, one taking a token from a file and pinned to its deployment by a
// header, the other a token from a command; every row in order, in the
// MLflow form, each fake seeing only its own token and header.
func TestScoreOnline(t *testing.T) {
	dir := t.TempDir()
	blue := amltest.NewServer(amltest.Config{Name: "blue", Kind: amlpool.Online, MaxConcurrentCalls: 300, Deployment: "blue",
		AcceptToken: func(tok string) bool { return tok == "file-token" }, RecordHeaders: []string{amltest.DeploymentHeader}})
	t.Cleanup(blue.Close)
	green := amltest.NewServer(amltest.Config{Name: "green", Kind: amlpool.Online, MaxConcurrentCalls: 250,
		AcceptToken: func(tok string) bool { return tok == "command-token" }, RecordHeaders: []string{amltest.DeploymentHeader}})
	t.Cleanup(green.Close)
	tokFile := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(tokFile, []byte("file-token\n"), 0o600))
	config := filepath.Join(dir, "pool.json")
	require.NoError(t, os.WriteFile(config, fmt.Appendf(nil, `{"endpoints": [
		{"name": "blue", "url": %q, "kind": "online", "maxConcurrentCalls": 300, "tokenFile": %q,
		 "header": {"azureml-model-deployment": "blue"}},
		{"name": "green", "url": %q, "kind": "online", "maxConcurrentCalls": 250, "tokenCommand": ["echo", "command-token"]}]}`,
		blue.URL(), tokFile, green.URL()), 0o644))
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 20_000
	writeIDs(t, in, n)

	code, stderr := runCmd(t, (&fakePool{}).command(t, "score", "--config", config, "--in", in, "--out", out, "--chunk-rows", "10"))
	require.Equal(t, 0, code, stderr)
	recs := readCSV(t, out)
	require.Len(t, recs, n+1)
	assert.Equal(t, []string{"id", "name", amltest.ScoredProbabilities, "output.id", "output.name"}, recs[0])
	for i, rec := range recs[1:] {
		require.Equal(t, strconv.Itoa(i), rec[0], "row %d", i)
		require.Equal(t, rec[0], rec[3], "row %d: the model's echo is the same row", i)
	}
	for _, s := range []*amltest.Server{blue, green} {
		st := s.Stats()
		assert.Positive(t, st.Scored, s.Endpoint().Name)
		assert.Zero(t, st.Unauthorized+st.Throttled+st.Rejected, s.Endpoint().Name)
	}
	assert.Equal(t, []string{"file-token"}, blue.Stats().KeysSeen)
	assert.Equal(t, []string{"blue"}, blue.Stats().HeadersSeen.Values(amltest.DeploymentHeader))
	assert.Equal(t, []string{"command-token"}, green.Stats().KeysSeen)
	assert.Empty(t, green.Stats().HeadersSeen.Values(amltest.DeploymentHeader), "blue's header went to blue only")
}

// An online model whose predictions are objects may add a key in a later
// reply, or leave one out. The output keeps the first reply's columns (a
// CSV header cannot grow; JSON Lines keeps the same keys): a later key is
// not written, which the command says once, naming it and the config's
// outputColumns, and a key left out is an empty cell (JSON Lines: null).
// No row is rejected for it.
func TestScoreOnlineLaterReplyAddsAKey(t *testing.T) {
	predict := func(cols []string, rows [][]any) ([]any, error) {
		out := make([]any, len(rows))
		for i, r := range rows {
			id, _ := strconv.Atoi(fmt.Sprint(r[0]))
			m := map[string]any{"label": "x" + strconv.Itoa(id)}
			if id%100 != 30 {
				m["score"] = id
			}
			if id%100 == 50 {
				m["warning"] = "low confidence"
			}
			if id == 777 {
				m["note"] = "n"
			}
			out[i] = m
		}
		return out, nil
	}
	srv := amltest.NewServer(amltest.Config{Name: "blue", Kind: amlpool.Online, MaxConcurrentCalls: 4, Predict: predict})
	t.Cleanup(srv.Close)
	e := srv.Endpoint()
	for _, format := range []string{"csv", "jsonl"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			config := filepath.Join(dir, "pool.json")
			require.NoError(t, os.WriteFile(config, []byte(`{"endpoints":[{"name":"blue","url":"`+e.URL+`","kind":"online","maxConcurrentCalls":4,"apiKeyEnv":"K"}]}`), 0o644))
			in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored."+format)
			const n = 1000
			writeIDs(t, in, n)
			cmd := (&fakePool{env: []string{"K=" + e.APIKey}}).command(t, "score", "--config", config, "--in", in, "--out", out, "--chunk-rows", "10", "--progress", "none")
			code, stderr := runCmd(t, cmd)
			require.Equal(t, 0, code, stderr)
			assert.Equal(t, 1, strings.Count(stderr, `the replies have column "warning", which the first reply had not: not written`), stderr)
			assert.Contains(t, stderr, `amlpool score: from row 51 on, the replies have column "warning"`)
			assert.Contains(t, stderr, `amlpool score: from row 771 on, the replies have column "note", which the first reply had not: not written, `+
				`as the output keeps the first reply's columns; to choose the columns, list them in the config's "outputColumns"`)
			assert.Equal(t, 2, strings.Count(stderr, "which the first reply had not"), stderr)
			assert.NoFileExists(t, filepath.Join(dir, "scored.rejects."+format))

			var recs [][]string
			if format == "csv" {
				recs = readCSV(t, out)
			} else {
				recs = [][]string{{"id", "name", "label", "score"}}
				for _, obj := range readJSONL(t, out) {
					require.Len(t, obj, 4, "the same keys in every line: %v", obj)
					rec := []string{}
					for _, k := range recs[0] {
						v, ok := obj[k]
						require.True(t, ok, "key %s in %v", k, obj)
						if v == nil {
							v = ""
						}
						rec = append(rec, fmt.Sprint(v))
					}
					recs = append(recs, rec)
				}
			}
			require.Len(t, recs, n+1)
			assert.Equal(t, []string{"id", "name", "label", "score"}, recs[0])
			for i, rec := range recs[1:] {
				score := strconv.Itoa(i)
				if i%100 == 30 {
					score = "" // a key left out: an empty cell
				}
				require.Equal(t, []string{strconv.Itoa(i), "name " + strconv.Itoa(i), "x" + strconv.Itoa(i), score}, rec, "row %d", i)
			}
		})
	}
}

// outputColumns names a key the first reply lacks: that chunk is rejected
// with the reason, and the output's columns are set, once, by the first
// reply that has them all.
func TestScoreOutputColumnsMissingFromTheFirstReply(t *testing.T) {
	dir := t.TempDir()
	predict := func(cols []string, rows [][]any) ([]any, error) {
		out := make([]any, len(rows))
		for i, r := range rows {
			m := map[string]any{"label": "x", "score": 0.5}
			if r[0] != "0" && r[0] != "1" {
				m["warning"] = "w"
			}
			out[i] = m
		}
		return out, nil
	}
	srv := amltest.NewServer(amltest.Config{Name: "blue", Kind: amlpool.Online, MaxConcurrentCalls: 2, Predict: predict})
	t.Cleanup(srv.Close)
	e := srv.Endpoint()
	config := filepath.Join(dir, "pool.json")
	require.NoError(t, os.WriteFile(config, []byte(`{"endpoints":[{"name":"blue","url":"`+e.URL+`","kind":"online","maxConcurrentCalls":2,"apiKeyEnv":"K"}],"outputColumns":["label","warning"]}`), 0o644))
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	writeIDs(t, in, 10)
	code, stderr := runCmd(t, (&fakePool{env: []string{"K=" + e.APIKey}}).command(t, "score", "--config", config, "--in", in, "--out", out, "--chunk-rows", "2"))
	assert.Equal(t, 1, code, stderr)
	recs := readCSV(t, out)
	assert.Equal(t, []string{"id", "name", "label", "warning"}, recs[0])
	for _, rec := range recs[1:] {
		assert.Equal(t, []string{"x", "w"}, rec[2:], "row %s", rec[0])
	}
	rej := readCSV(t, filepath.Join(dir, "scored.rejects.csv"))
	scored, rejected := checkOnce(t, recs, rej, 10)
	assert.Equal(t, [2]int{8, 2}, [2]int{scored, rejected})
	assert.Equal(t, `the reply has no column "warning" (config outputColumns); it has ["label" "score"]`, rej[1][2])
}

// An online model whose predictions change shape during a run (objects
// after plain values: a new model version, say) cannot have its later
// replies written under the first reply's columns: their rows are rejected,
// the reason naming both shapes, and no row is lost or written with empty
// scores.
func TestScoreOnlinePredictionsChangeShape(t *testing.T) {
	predict := func(cols []string, rows [][]any) ([]any, error) {
		out := make([]any, len(rows))
		for i, r := range rows {
			id, _ := strconv.Atoi(fmt.Sprint(r[0]))
			if id < 50 {
				out[i] = id
			} else {
				out[i] = map[string]any{"label": id}
			}
		}
		return out, nil
	}
	srv := amltest.NewServer(amltest.Config{Name: "blue", Kind: amlpool.Online, MaxConcurrentCalls: 4, Predict: predict})
	t.Cleanup(srv.Close)
	e := srv.Endpoint()
	dir := t.TempDir()
	config := filepath.Join(dir, "pool.json")
	require.NoError(t, os.WriteFile(config, []byte(`{"endpoints":[{"name":"blue","url":"`+e.URL+`","kind":"online","maxConcurrentCalls":4,"apiKeyEnv":"K"}]}`), 0o644))
	in, out := filepath.Join(dir, "rows.csv"), filepath.Join(dir, "scored.csv")
	const n = 100
	writeIDs(t, in, n)
	code, stderr := runCmd(t, (&fakePool{env: []string{"K=" + e.APIKey}}).command(t, "score", "--config", config, "--in", in, "--out", out, "--chunk-rows", "10", "--progress", "none"))
	require.Equal(t, 1, code, stderr)
	const why = "endpoint blue: the predictions are objects, but those of the batch's first scored rows were plain values: a batch's predictions must all be of one shape"
	assert.Contains(t, stderr, "first failure: line 52 (row 51): "+why)
	recs := readCSV(t, out)
	rej := readCSV(t, filepath.Join(dir, "scored.rejects.csv"))
	scored, rejected := checkOnce(t, recs, rej, n)
	assert.Equal(t, [2]int{50, 50}, [2]int{scored, rejected})
	assert.Equal(t, []string{"id", "name", amlpool.PredictionsColumn}, recs[0])
	for _, rec := range recs[1:] {
		assert.Equal(t, rec[0], rec[2], "a scored row has its prediction")
	}
	for _, rec := range rej[1:] {
		assert.Equal(t, why, rec[2])
	}
}
