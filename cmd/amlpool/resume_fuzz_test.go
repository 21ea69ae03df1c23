package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

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
// formats.
func FuzzResumeSameInput(f *testing.F) {
	for _, s := range []string{
		"id,name\n1,a\n2,\"b, \"\"c\"\"\r\nd\"\n3\n4, x\n5,\\.\n6,\xff\n7,\"open\n8,e\n",
		"a,b\r\n\r\n1,\"x\r\ny\"\r\n2,\"open\r\n\r\n3,4\r\n",
		"{\"id\":\"1\",\"name\":\"a\\r\\nb <&>\"}\n{\"id\":2,\"name\":1.50}\nnot json\n{\"name\":{\"b\":1,\"a\":[1,2.0]},\"id\":3}\n{\"id\":4,\"name\":null,\"x\":1}\n{\"id\":\"5\",\"name\":\"\\r\\r\\n\\u2028\"}\n",
		"{\"a\":\"\xff\"}\n{\"a\":\"\"}\n",
		"x\n\"\"\n\n1\n",
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
			case err != nil:
				t.Fatal(err) // a bytes.Reader fails no read
			case rejectEvery > 0 && idx%int(rejectEvery) == 0:
				ch.Err = &amlpool.ChunkError{Seq: idx, FirstRow: idx + 1, LastRow: idx + 1, Err: errors.New("the model says no")}
			default:
				ch.Output = &amlpool.Table{ColumnNames: []string{"score"}, Values: [][]any{{"0.5"}}}
			}
			require.NoError(t, w.sink(ch))
			settled++
		}
		require.NoError(t, out.close())
		require.NoError(t, rej.close())

		r, err = rows.NewReader(inFormat, bytes.NewReader(data))
		require.NoError(t, err)
		out, err = openOut(outPath, outFormat, true)
		require.NoError(t, err)
		defer out.f.Close()
		rej, err = openOut(rejPath, outFormat, true)
		require.NoError(t, err)
		defer rej.f.Close()
		require.Equal(t, settled, out.rows+rej.rows)
		require.NoError(t, skipSettled(r, "in", out, rej, r.Columns()))
	})
}
