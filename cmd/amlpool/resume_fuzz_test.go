package main

import (
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
)

// FuzzResumeSameInput writes a run's files as score does (sink and reject,
// a row at a time: bad rows, and every rejectEvery-th row failed by the
// service, to the reject file), from an arbitrary input, stopped after
// stop rows as a kill would; then resumes on the same input. The bar: the
// check of the settled rows (skipSettled) never refuses the input the
// files were written from, whatever its cells hold, in any pair of
// formats. And the reject file keeps every row it is given: each line the
// reader could not read as a row (a RowError with a Text) is in its text
// column byte for byte as the input has it (JSON Lines rejects: as a
// string, or {"base64": …} when it is not UTF-8); a JSON Lines reject of a
// CSV row of the wrong width has it as a CSV line; any other rejected row
// has no text.
func FuzzResumeSameInput(f *testing.F) {
	for _, s := range []string{
		"id,name\n1,a\n2,\"b, \"\"c\"\"\r\nd\"\n3\n4, x\n5,\\.\n6,\xff\n7,\"open\n8,e\n",
		"a,b\r\n\r\n1,\"x\r\ny\"\r\n2,\"open\r\n\r\n3,4\r\n",
		"{\"id\":\"1\",\"name\":\"a\\r\\nb <&>\"}\n{\"id\":2,\"name\":1.50}\nnot json\n{\"name\":{\"b\":1,\"a\":[1,2.0]},\"id\":3}\n{\"id\":4,\"name\":null,\"x\":1}\n{\"id\":\"5\",\"name\":\"\\r\\r\\n\\u2028\"}\n",
		"{\"a\":\"\xff\"}\n{\"a\":\"\"}\n",
		"x\n\"\"\n\n1\n",
		"\xef\xbb\xbfa,b\r\n1,\"x\ry\r\r\n2,x\"y\r\n\r\n3,\"\xff\"\"\n4,\"z\"w\r",
		"{\"a\":1}\r\n{\"a\":2}\r\r\n\"\xfe\"\n{\"a\":\"\u2028\"} x\r\n{\"b\":1}",
		"{\"a\":1}\nnot json\r",
	} {
		for _, stop := range []uint16{0, 3, 1000} {
			f.Add([]byte(s), s[0] == '{', false, uint8(3), stop)
			f.Add([]byte(s), s[0] == '{', true, uint8(0), stop)
		}
	}
	dir := f.TempDir() // one for all: a fuzzing process runs one input at a time
	f.Fuzz(func(t *testing.T, data []byte, inJSONL, outJSONL bool, rejectEvery uint8, stop uint16) {
		inFormat, outFormat := rows.CSV, rows.CSV
		if inJSONL {
			inFormat = rows.JSONL
		}
		ext := ".csv"
		if outJSONL {
			outFormat, ext = rows.JSONL, ".jsonl"
		}
		r, err := rows.NewReader(inFormat, bytes.NewReader(data))
		if err != nil {
			return // no header
		}
		outPath, rejPath := filepath.Join(dir, "out"+ext), filepath.Join(dir, "rej"+ext)
		os.Remove(outPath)
		os.Remove(rejPath)
		out, err := openOut(outPath, outFormat, false)
		require.NoError(t, err)
		rej, err := openOut(rejPath, outFormat, false)
		require.NoError(t, err)
		w := &writer{inCols: r.Columns(), inFormat: inFormat, port: "output1", lines: &lineLog{}, out: out, rej: rej}
		texts := map[int]string{} // each rejected row's text, by row number
		settled := 0
		for idx := 0; idx < int(stop); idx++ {
			row, err := r.Next()
			if err == io.EOF {
				break
			}
			ch := &amlpool.Chunk{Seq: idx, Start: idx, Input: [][]any{row}}
			switch rowErr, bad := errors.AsType[*amlpool.RowError](err); {
			case bad:
				ch.Input[0], ch.Err = rowErr.Row, rowErr
				switch {
				case rowErr.Text != "":
					texts[idx+1] = inputLine(data, rowErr.Line)
				case outFormat == rows.JSONL && len(rowErr.Row) > 0 && len(rowErr.Row) != len(r.Columns()):
					texts[idx+1] = csvLine(rowErr.Row)
				default:
					texts[idx+1] = ""
				}
			case err != nil:
				t.Fatal(err) // a bytes.Reader fails no read
			case rejectEvery > 0 && idx%int(rejectEvery) == 0:
				ch.Err = &amlpool.ChunkError{Seq: idx, FirstRow: idx + 1, LastRow: idx + 1, Err: errors.New("the model says no")}
				texts[idx+1] = ""
			default:
				ch.Output = &amlpool.Table{ColumnNames: []string{"score"}, Values: [][]any{{"0.5"}}}
			}
			require.NoError(t, w.sink(ch))
			settled++
		}
		require.NoError(t, out.close())
		require.NoError(t, rej.close())
		require.Equal(t, texts, rejectTexts(t, rejPath, outFormat, rejectColumns(r.Columns())), "the reject file's text column, by row")

		// A kill cuts a record short: the files end in part of one more,
		// which prepare cuts off only after the check, as the run below
		// does.
		for _, p := range []string{outPath, rejPath} {
			if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
				require.NoError(t, err)
				_, err = f.WriteString(`9,"cut sh`)
				require.NoError(t, err)
				require.NoError(t, f.Close())
			}
		}
		r, err = rows.NewReader(inFormat, bytes.NewReader(data))
		require.NoError(t, err)
		out, err = openOutAsIs(outPath, outFormat, true)
		require.NoError(t, err)
		defer out.f.Close()
		rej, err = openOutAsIs(rejPath, outFormat, true)
		require.NoError(t, err)
		defer rej.f.Close()
		require.Equal(t, settled, out.rows+rej.rows)
		require.NoError(t, out.checkInputColumns(r.Columns()))
		require.NoError(t, rej.checkInputColumns(r.Columns()))
		require.NoError(t, skipSettled(r, "in", out, rej, r.Columns()))
		require.NoError(t, out.cut())
		require.NoError(t, rej.cut())
	})
}

// inputLine returns line n of data, from 1, as the input has it: without
// its line end (LF, or CR LF: a CR that ends the input is no line end) and,
// on line 1, a byte-order mark.
func inputLine(data []byte, n int) string {
	lines := bytes.Split(data, []byte("\n"))
	if n < 1 || n > len(lines) {
		return fmt.Sprintf("<no line %d in %d>", n, len(lines))
	}
	l := lines[n-1]
	if n < len(lines) {
		l = bytes.TrimSuffix(l, []byte("\r"))
	}
	if n == 1 {
		l = bytes.TrimPrefix(l, []byte("\xEF\xBB\xBF"))
	}
	return string(l)
}

// rejectTexts reads the text column of the reject file at path, whose
// columns are cols, by row number: CSV's text as it stands (empty for
// none), JSON Lines' string, or the bytes of its {"base64": …} object for a
// text that is not UTF-8 (null for none). A file that is not there holds
// no row.
func rejectTexts(t *testing.T, path string, format rows.Format, cols []string) map[int]string {
	t.Helper()
	texts := map[int]string{}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return texts
	}
	require.NoError(t, err)
	if format == rows.CSV {
		cr := csv.NewReader(bytes.NewReader(b))
		cr.FieldsPerRecord = -1
		recs, err := cr.ReadAll()
		require.NoError(t, err)
		require.NotEmpty(t, recs)
		require.Equal(t, cols, recs[0])
		for _, rec := range recs[1:] {
			n, err := strconv.Atoi(rec[1])
			require.NoError(t, err)
			texts[n] = rec[3]
		}
		return texts
	}
	for _, l := range bytes.SplitAfter(b, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(l))
		dec.UseNumber()
		require.NoError(t, dec.Decode(&m), "%q", l)
		n, err := strconv.Atoi(string(m[cols[1]].(json.Number)))
		require.NoError(t, err)
		switch v := m[cols[3]].(type) {
		case nil:
			texts[n] = ""
		case string:
			require.True(t, utf8.ValidString(v))
			texts[n] = v
		case map[string]any:
			require.Len(t, v, 1, "%q", l)
			raw, err := base64.StdEncoding.DecodeString(v["base64"].(string))
			require.NoError(t, err)
			require.False(t, utf8.Valid(raw), "a text that is UTF-8 goes as a string")
			texts[n] = string(raw)
		default:
			t.Fatalf("text %#v in %q", v, l)
		}
	}
	return texts
}
