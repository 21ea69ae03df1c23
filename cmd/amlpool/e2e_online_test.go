package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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
