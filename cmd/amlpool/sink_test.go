package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
)

func TestRejectColumnsAvoidTheInputs(t *testing.T) {
	assert.Equal(t, []string{"line", "row", "error", "id"}, rejectColumns(false, []string{"id"}))
	assert.Equal(t, []string{"_line", "row", "__error", "text", "line", "error", "_error"},
		rejectColumns(true, []string{"line", "error", "_error"}), "no name twice: a JSON Lines object could not be read back")
	assert.False(t, rejectText(rows.CSV, rows.CSV))
	assert.True(t, rejectText(rows.JSONL, rows.CSV))
	assert.True(t, rejectText(rows.CSV, rows.JSONL), "a JSON Lines line that is not a row fits no CSV cells")
	assert.True(t, rejectText(rows.JSONL, rows.JSONL))
}

// TestLineLog notes rows on lines with gaps (blank lines, records over
// several lines, bad rows) and forgets them as a run does, checking each
// row's line against a plain list.
func TestLineLog(t *testing.T) {
	var l lineLog
	want := map[int]int{}
	line := 2
	for idx := range 1000 {
		switch {
		case idx%97 == 0:
			line += 3 // a record over lines, or blank lines before it
		case idx%13 == 0:
			line += 1
		}
		l.note(idx, line)
		want[idx] = line
		line++
		if idx%10 == 9 {
			end := idx - 30
			for i := max(end-10, 0); i < idx; i++ {
				if i < end {
					continue
				}
				require.Equal(t, want[i], l.line(i), "row %d before forgetting up to %d", i, end)
			}
			l.forget(end)
			if end > 0 {
				assert.Equal(t, 0, l.line(end-1), "a forgotten row")
			}
			assert.Equal(t, want[max(end, 0)], l.line(max(end, 0)))
		}
	}
	assert.Less(t, len(l.runs), 10, "runs kept")
}

// A reply that lacks a column of outputColumns fails its chunk and leaves
// nothing behind: the next reply that has them all sets the columns once.
func TestWriterColumnsAfterAMissingColumn(t *testing.T) {
	for _, byName := range []bool{false, true} {
		w := &writer{inCols: []string{"id", "name"}, port: "output", keep: []string{"label", "warning"}, byName: byName}
		reply := func(names ...string) *amlpool.Chunk {
			return &amlpool.Chunk{Output: &amlpool.Table{ColumnNames: names, Values: [][]any{make([]any, len(names))}}}
		}
		for range 2 {
			_, err := w.columns(reply("label", "score"))
			require.EqualError(t, err, `the reply has no column "warning" (config outputColumns); it has ["label" "score"]`)
			assert.Nil(t, w.outCols)
			assert.Nil(t, w.pick)
		}
		pick, err := w.columns(reply("label", "score", "warning"))
		require.NoError(t, err)
		assert.Equal(t, []int{0, 2}, pick)
		assert.Equal(t, []string{"label", "warning"}, w.outCols)
		pick, err = w.columns(reply("label", "score", "warning"))
		require.NoError(t, err)
		assert.Equal(t, []int{0, 2}, pick)
		assert.Equal(t, []string{"label", "warning"}, w.outCols, "set once")
	}
}

// A service column named like an input column gets the port's name before
// it, and again while that name is taken too: no column is named twice.
func TestWriterColumnsNeverTwice(t *testing.T) {
	w := &writer{inCols: []string{"id", "output1.id"}, port: "output1"}
	names := []string{"id", "output1.id", "score", "score"}
	_, err := w.columns(&amlpool.Chunk{Output: &amlpool.Table{ColumnNames: names, Values: [][]any{make([]any, len(names))}}})
	require.NoError(t, err)
	assert.Equal(t, []string{"output1.output1.id", "output1.output1.output1.id", "score", "output1.score"}, w.outCols)
}

// failingWriter fails every write, as a full disk does.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// After a failed write, close counts the records the file holds; when that
// count fails too (here the file cannot be read), the run does not give
// the rows handed to the file as what it holds: the summary says "at most"
// and why the file could not be counted.
func TestSummaryWhenAFailedWriteCannotBeCounted(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "scored.csv")
	require.NoError(t, os.WriteFile(path, []byte("id,label\n0,a\n"), 0o644))
	f, err := os.OpenFile(path, os.O_WRONLY, 0) // write-only: the count cannot read it
	require.NoError(t, err)
	w, err := rows.NewWriter(rows.CSV, failingWriter{}, []string{"id", "label"}, false)
	require.NoError(t, err)
	out := &outFile{path: path, format: rows.CSV, f: f, w: w, head: []string{"id", "label"}, rows: 1}
	for i := range 3 {
		require.NoError(t, w.Write([]any{i + 1, "b"}))
		out.rows++
	}
	require.Error(t, out.close())
	assert.Error(t, out.recount, "the count of the file failed")

	rej := &outFile{path: filepath.Join(dir, "scored.rejects.csv")}
	settled, where := summary(out, rej)
	assert.Equal(t, "at most 4", settled)
	assert.Regexp(t, `^at most 4 scored in .*scored\.csv, 0 rejected; a failed write kept rows from .*scored\.csv, which could not be counted again: .+$`, where)

	counted := &outFile{path: path, rows: 3, lost: 2}
	settled, where = summary(counted, rej)
	assert.Equal(t, "3", settled)
	assert.Equal(t, "3 scored in "+path+", 0 rejected; a failed write kept the last 2 rows from the files", where)
}

// A resumed file whose header differs is quoted only when it is the header
// of a run on this input: the first line of a file given to --out by
// mistake (a secret, say) is never printed.
func TestResumeHeaderDiffers(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name, file string
		want       []string
		secret     string
	}{
		{"other output columns", "id,name,Scored Label\n1,a,x\n", []string{
			`cannot resume: its header ["id" "name" "Scored Label"] differs from this run's ["id" "name" "Scored Labels"]`}, ""},
		{"not a run on this input", "sk-the-secret-key\n", []string{
			`cannot resume: its first line is not the header of a run on this input: it lacks the input's columns ["id" "name"] ` +
				`(this run's header: ["id" "name" "Scored Labels"]); is it the file the run to resume wrote?`}, "sk-the-secret-key"},
		{"one input column", "name,password=hunter2\n", []string{`it lacks the input's columns ["id"]`}, "hunter2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".csv")
			require.NoError(t, os.WriteFile(path, []byte(tt.file), 0o600))
			o, err := openOut(path, rows.CSV, true)
			require.NoError(t, err)
			defer o.f.Close()
			err = o.start([]string{"id", "name", "Scored Labels"}, []string{"id", "name"})
			require.Error(t, err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			if tt.secret != "" {
				assert.NotContains(t, err.Error(), tt.secret)
			}
		})
	}
}

// A resumed JSON Lines file is checked as a CSV one is: its first record's
// keys must be this run's columns, so that a run on another input does not
// append records with other keys to it.
func TestResumeJSONLKeysDiffer(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "scored.jsonl")
	require.NoError(t, os.WriteFile(path, []byte(`{"id":"1","name":"a","Scored Labels":"x"}`+"\n"), 0o600))
	o, err := openOut(path, rows.JSONL, true)
	require.NoError(t, err)
	defer o.f.Close()
	err = o.start([]string{"id", "text", "Scored Labels"}, []string{"id", "text"})
	require.EqualError(t, err, path+`: cannot resume: its first line is not the keys of a run on this input: it lacks the input's columns ["text"] `+
		`(this run's keys: ["id" "text" "Scored Labels"]); is it the file the run to resume wrote?`)
	err = o.start([]string{"id", "name", "Scored Probabilities"}, []string{"id", "name"})
	require.EqualError(t, err, path+`: cannot resume: its keys ["id" "name" "Scored Labels"] differ from this run's ["id" "name" "Scored Probabilities"]`)
	require.NoError(t, o.start([]string{"id", "name", "Scored Labels"}, []string{"id", "name"}))
	require.NoError(t, o.w.Write([]any{"2", "b", "y"}))
	require.NoError(t, o.flush())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, `{"id":"1","name":"a","Scored Labels":"x"}`+"\n"+`{"id":"2","name":"b","Scored Labels":"y"}`+"\n", string(b))
}
