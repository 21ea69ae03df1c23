package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
)

func TestRejectColumnsAvoidTheInputs(t *testing.T) {
	assert.Equal(t, []string{"line", "row", "error", "text", "id"}, rejectColumns([]string{"id"}))
	assert.Equal(t, []string{"_line", "row", "__error", "_text", "line", "error", "_error", "text"},
		rejectColumns([]string{"line", "error", "_error", "text"}), "no name twice: a JSON Lines object could not be read back")
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

// sinkAll hands each row r has left to w as score does: bad rows, and
// rows whose first cell is fail, rejected; then closes w's files.
func sinkAll(t *testing.T, r rows.Reader, w *writer, fail string) {
	t.Helper()
	w.lines = &lineLog{}
	src := &countingSource{r: r, lines: w.lines}
	for idx := 0; ; idx++ {
		row, err := src.Next()
		if err == io.EOF {
			break
		}
		ch := &amlpool.Chunk{Seq: idx, Start: idx, Input: [][]any{row}}
		switch rowErr, bad := errors.AsType[*amlpool.RowError](err); {
		case bad:
			ch.Input[0], ch.Err = rowErr.Row, rowErr
		case err != nil:
			t.Fatal(err)
		case row[0] == fail:
			ch.Err = &amlpool.ChunkError{Seq: idx, FirstRow: idx + 1, LastRow: idx + 1, Err: errors.New("the model says no")}
		default:
			ch.Output = &amlpool.Table{ColumnNames: []string{"score"}, Values: [][]any{{"0.5"}}}
		}
		require.NoError(t, w.sink(ch))
	}
	require.NoError(t, w.out.close())
	require.NoError(t, w.rej.close())
}

// A CSV line that cannot be split into cells (a quote left open, a bare
// quote) keeps its text byte for byte in CSV rejects, as in JSON Lines
// ones: its cells, split loosely, cannot give it back. A row read into
// cells fine (failed by the service, or of the wrong width, whose cells CSV
// holds all) has an empty text.
func TestCSVRejectsKeepABadLineWhole(t *testing.T) {
	dir := t.TempDir()
	input := "id,name\r\n1,a\r\n2,\"a\"b,c\r\n3,x\"y\r\n4,d\r\n5,e,f\r\n6,\"open\r\n7,g\r\n"
	out, err := openOut(filepath.Join(dir, "scored.csv"), rows.CSV, false)
	require.NoError(t, err)
	rej, err := openOut(filepath.Join(dir, "scored.rejects.csv"), rows.CSV, false)
	require.NoError(t, err)
	r, err := rows.NewReader(rows.CSV, strings.NewReader(input))
	require.NoError(t, err)
	sinkAll(t, r, &writer{inCols: r.Columns(), inFormat: rows.CSV, port: "output1", out: out, rej: rej}, "4")
	got := readCSV(t, rej.path)
	require.Len(t, got, 6)
	assert.Equal(t, []string{"line", "row", "error", "text", "id", "name"}, got[0])
	var texts [][]string
	for _, rec := range got[1:] {
		texts = append(texts, []string{rec[0], rec[3]})
	}
	assert.Equal(t, [][]string{{"3", `2,"a"b,c`}, {"4", `3,x"y`}, {"5", ""}, {"6", ""}, {"7", `6,"open`}}, texts,
		"each bad line as the input has it; rows read fine have none")
	assert.Equal(t, []string{"5", "e", "f"}, got[4][4:], "a row of the wrong width keeps all its cells")
}

// A CSV reject file written before CSV rejects had a text column resumes
// in its own columns, and the run says that a bad line keeps only its
// cells there; the rows it holds are found by its row column.
func TestResumeRejectsWithoutText(t *testing.T) {
	dir := t.TempDir()
	input := "id,name\n1,a\n2,\"open\n3,c\n4,x\"y\n5,e\n"
	outPath, rejPath := filepath.Join(dir, "scored.csv"), filepath.Join(dir, "scored.rejects.csv")
	require.NoError(t, os.WriteFile(outPath, []byte("id,name,score\n1,a,0.5\n"), 0o644))
	oldRej := "line,row,error,id,name\n3,2,a quoted field opens on this line,2,open\n"
	require.NoError(t, os.WriteFile(rejPath, []byte(oldRej), 0o644))

	r, err := rows.NewReader(rows.CSV, strings.NewReader(input))
	require.NoError(t, err)
	out, err := openOut(outPath, rows.CSV, true)
	require.NoError(t, err)
	rej, err := openOut(rejPath, rows.CSV, true)
	require.NoError(t, err)
	require.NoError(t, skipSettled(r, "in", out, rej, r.Columns()))
	var said []string
	w := &writer{inCols: r.Columns(), inFormat: rows.CSV, port: "output1", out: out, rej: rej, base: 2, say: func(s string) { said = append(said, s) }}
	sinkAll(t, r, w, "")
	b, err := os.ReadFile(rejPath)
	require.NoError(t, err)
	assert.Equal(t, oldRej+`5,4,"bare "" in non-quoted-field",4,"x""y"`+"\n", string(b), "the earlier run's columns")
	assert.Equal(t, []string{"amlpool score: " + rejPath + ` has no "text" column (an earlier amlpool wrote it): rejects go on in its columns, ` +
		"where a line that cannot be split into cells keeps only its cells, split loosely"}, said)
	b, err = os.ReadFile(outPath)
	require.NoError(t, err)
	assert.Equal(t, "id,name,score\n1,a,0.5\n3,c,0.5\n5,e,0.5\n", string(b))

	// The files as they are now resume on the same input, rows 1 to 5 settled.
	r, err = rows.NewReader(rows.CSV, strings.NewReader(input))
	require.NoError(t, err)
	out, err = openOut(outPath, rows.CSV, true)
	require.NoError(t, err)
	defer out.f.Close()
	rej, err = openOut(rejPath, rows.CSV, true)
	require.NoError(t, err)
	defer rej.f.Close()
	require.Equal(t, 5, out.rows+rej.rows)
	require.NoError(t, skipSettled(r, "in", out, rej, r.Columns()))

	// A JSON Lines line that is not a row has no cells: without text it
	// would be lost, so a JSON Lines input's reject file must have it.
	jsonRej := filepath.Join(dir, "json.rejects.csv")
	require.NoError(t, os.WriteFile(jsonRej, []byte("line,row,error,id,name\n2,2,not JSON,,\n"), 0o644))
	rej, err = openOut(jsonRej, rows.CSV, true)
	require.NoError(t, err)
	defer rej.f.Close()
	w = &writer{inCols: []string{"id", "name"}, inFormat: rows.JSONL, rej: rej}
	require.EqualError(t, w.startRejects(), jsonRej+`: cannot resume: its header ["line" "row" "error" "id" "name"] differs from this run's ["line" "row" "error" "text" "id" "name"]`)
}

// A line over rows.MaxRowBytes, too long to copy, is rejected with its line
// and row, and an error that gives its length, names the limit and says its
// text is not kept; its text and cells are empty. The files resume on the
// same input, the row found by its number in the reject file, in every
// pair of formats.
func TestRejectsOfALineTooLongToCopy(t *testing.T) {
	long := map[rows.Format]string{
		rows.CSV:   "2," + strings.Repeat("x", rows.MaxRowBytes),
		rows.JSONL: `{"id":"2","name":"` + strings.Repeat("x", rows.MaxRowBytes) + `"}`,
	}
	first := map[rows.Format]string{rows.CSV: "id,name\n1,a\n", rows.JSONL: `{"id":"1","name":"a"}` + "\n"}
	last := map[rows.Format]string{rows.CSV: "3,c\n", rows.JSONL: `{"id":"3","name":"c"}` + "\n"}
	for _, inFormat := range []rows.Format{rows.CSV, rows.JSONL} {
		for _, rejFormat := range []rows.Format{rows.CSV, rows.JSONL} {
			t.Run(inFormat.String()+" to "+rejFormat.String(), func(t *testing.T) {
				dir := t.TempDir()
				input := first[inFormat] + long[inFormat] + "\r\n" + last[inFormat]
				want := fmt.Sprintf("line of %d bytes (line end included), over the limit of %d bytes per row "+
					"(rows.MaxRowBytes: a row must fit in a request to the service): too long to copy, so its text is not kept",
					len(long[inFormat])+2, rows.MaxRowBytes)
				outPath := filepath.Join(dir, "scored."+rejFormat.String())
				rejPath := filepath.Join(dir, "scored.rejects."+rejFormat.String())
				files := func(resume bool) (*outFile, *outFile) {
					out, err := openOut(outPath, rejFormat, resume)
					require.NoError(t, err)
					rej, err := openOut(rejPath, rejFormat, resume)
					require.NoError(t, err)
					return out, rej
				}

				// A run killed after the long row: row 1 scored, row 2 rejected.
				r, err := rows.NewReader(inFormat, strings.NewReader(input))
				require.NoError(t, err)
				out, rej := files(false)
				w := &writer{inCols: r.Columns(), inFormat: inFormat, port: "output1", out: out, rej: rej}
				sinkAll(t, &stopAfter{Reader: r, n: 2}, w, "")
				line := map[rows.Format]int{rows.CSV: 3, rows.JSONL: 2}[inFormat] // after a CSV header
				switch rejFormat {
				case rows.CSV:
					assert.Equal(t, [][]string{{"line", "row", "error", "text", "id", "name"}, {strconv.Itoa(line), "2", want, "", "", ""}}, readCSV(t, rejPath))
				case rows.JSONL:
					assert.Equal(t, []map[string]any{{"line": float64(line), "row": 2.0, "error": want, "text": nil, "id": nil, "name": nil}}, readJSONL(t, rejPath))
				}

				// --resume: rows 1 and 2 settled, row 3 scored after them.
				r, err = rows.NewReader(inFormat, strings.NewReader(input))
				require.NoError(t, err)
				out, rej = files(true)
				require.Equal(t, 2, out.rows+rej.rows)
				require.NoError(t, skipSettled(r, "in", out, rej, r.Columns()))
				sinkAll(t, r, &writer{inCols: r.Columns(), inFormat: inFormat, port: "output1", out: out, rej: rej, base: 2}, "")
				out, rej = files(true)
				defer out.f.Close()
				defer rej.f.Close()
				assert.Equal(t, 2, out.rows)
				assert.Equal(t, 1, rej.rows)
			})
		}
	}
}

// stopAfter is a Reader that ends after n rows, as a killed run's input.
type stopAfter struct {
	rows.Reader
	n int
}

func (s *stopAfter) Next() ([]any, error) {
	if s.n == 0 {
		return nil, io.EOF
	}
	s.n--
	return s.Reader.Next()
}
