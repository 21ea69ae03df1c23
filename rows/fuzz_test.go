package rows_test

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
)

// fuzzRead reads every row of data in format f and checks the contract:
// no panic; every row has one cell per column; every failure is a
// *amlpool.RowError with a line number; rows, good or bad, start on lines
// that strictly increase (no line is in two rows); where each line must be
// a row of its own (JSON Lines; CSV without quotes), every line that is not
// blank is one; and good rows survive a write and a re-read unchanged in
// count.
func fuzzRead(t *testing.T, f rows.Format, data []byte) {
	r, err := rows.NewReader(f, bytes.NewReader(data))
	if err != nil {
		return
	}
	cols := r.Columns()
	var out bytes.Buffer
	w, err := rows.NewWriter(f, &out, cols, true)
	if err != nil {
		t.Fatal(err)
	}
	good, lastLine := 0, 0
	var lines []int
	for range 10000 {
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		if r.Line() <= lastLine {
			t.Fatalf("a row starts on line %d, after one on line %d", r.Line(), lastLine)
		}
		lastLine = r.Line()
		lines = append(lines, lastLine)
		if err != nil {
			var re *amlpool.RowError
			if !errors.As(err, &re) || re.Line != r.Line() {
				t.Fatalf("error %v is not a RowError with the row's line %d", err, r.Line())
			}
			continue
		}
		if len(row) != len(cols) {
			t.Fatalf("row %v has %d cells for %d columns", row, len(row), len(cols))
		}
		if err := w.Write(row); err != nil {
			t.Fatal(err)
		}
		good++
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if f == rows.JSONL || !bytes.ContainsRune(data, '"') {
		if want := filledLines(f, data); len(lines) < 10000 && !slices.Equal(lines, want) {
			t.Fatalf("rows start on lines %v, want every filled line: %v", lines, want)
		}
	}
	_, n, end, err := rows.Scan(f, bytes.NewReader(out.Bytes()), int64(out.Len()))
	if err != nil || n != good || end != int64(out.Len()) {
		t.Fatalf("Scan of %d written rows: n=%d end=%d/%d err=%v", good, n, end, out.Len(), err)
	}
}

// filledLines returns the lines of data after the header (CSV) or first
// object (JSON Lines) that are not blank, as a reader of that format counts
// them: CSV skips only empty lines, JSON Lines lines of JSON white space too.
func filledLines(f rows.Format, data []byte) []int {
	var lines []int
	head := false
	data = bytes.TrimPrefix(data, []byte("\xEF\xBB\xBF"))
	for i, l := range bytes.Split(data, []byte("\n")) {
		blank := len(bytes.TrimSuffix(l, []byte("\r"))) == 0
		if f == rows.JSONL {
			blank = len(bytes.Trim(l, " \t\r")) == 0
		}
		if i == len(bytes.Split(data, []byte("\n")))-1 && len(l) == 0 {
			break // after the last line end
		}
		switch {
		case blank:
		case !head:
			head = true
			if f == rows.JSONL {
				lines = append(lines, i+1) // the first object is a row too
			}
		default:
			lines = append(lines, i+1)
		}
	}
	return lines
}

func FuzzCSVReader(f *testing.F) {
	for _, s := range []string{
		"a,b\n1,2\n", "\xEF\xBB\xBFa,b\r\n1,2\r\n", "a,b\n\"x\ny\",2\n", "a,b\n1\n1,2,3\n",
		"a,b\n1,x\"y\n", "a,b\n\"3,4\n5,6\n", "a,b\n1,\xff\n", "", "a,,a\n", "a\n\"\"\"\"\n",
		"a,b\n1,\"a\n2,b\n3,\"x\"y\n4,d\n", "\xEF\xBB\xBF\n00", "a,b\r\n\r\n1,\"x\r\ny\"\r\n2,\"open\r\n\r\n3,4\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzRead(t, rows.CSV, data) })
}

func FuzzJSONLReader(f *testing.F) {
	for _, s := range []string{
		"{\"a\":1,\"b\":\"x\"}\n{\"b\":\"y\",\"a\":2}\n", "{\"a\":null}\n\n{\"a\":[1,{}]}\n", "{}\n", "[1]\n",
		"{\"a\":1}\n{\"a\":1,\"a\":2}\n", "{\"a\":\"\xff\"}\n", "{\"a\":1} {}\n", "{\"a\":1e999}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzRead(t, rows.JSONL, data) })
}

func FuzzScan(f *testing.F) {
	f.Add([]byte("a,b\n1,2\n\"x\ny\",3\n"), true)
	f.Add([]byte("{\"a\":1}\n{\"a\":2"), false)
	f.Fuzz(func(t *testing.T, data []byte, csv bool) {
		format := rows.JSONL
		if csv {
			format = rows.CSV
		}
		_, n, end, err := rows.Scan(format, bytes.NewReader(data), int64(len(data)))
		if err == nil && (n < 0 || end < 0 || end > int64(len(data))) {
			t.Fatalf("n=%d end=%d for %d bytes", n, end, len(data))
		}
	})
}

// readCount counts the rows of data as a Reader gives them.
func readCount(f rows.Format, data []byte) (int, error) {
	r, err := rows.NewReader(f, bytes.NewReader(data))
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		_, err := r.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil && !errors.As(err, new(*amlpool.RowError)) {
			return 0, err
		}
		n++
	}
}

// FuzzCount checks Count against reading: as many rows as Next returns,
// good and bad, or the same error.
func FuzzCount(f *testing.F) {
	for _, s := range []string{
		"a,b\n1,2\n", "\xEF\xBB\xBFa,b\r\n1,2\r\n", "a,b\n\"x\ny\",2\n", "a,b\n1\n1,2,3\n",
		"a,b\n1,x\"y\n", "a,b\n\"3,4\n5,6\n", "a,b\n1,\xff\n", "", "a,,a\n", "a\n\"\"\"\"\n",
		"a,b\n1,\"a\n2,b\n3,\"x\"y\n4,d\n", "\xEF\xBB\xBF\n00", "a,b\r\n\r\n1,\"x\r\ny\"\r\n2,\"open\r\n\r\n3,4\r\n",
		"\n\r\n\"a\",b\n1,2\n", "\n\na,a\n", "a\n\r\n\r\r\n \n\r", "a\n1\n2\n3", "a\n1\n\r", "\xEF\xBB\xBF", "\n\n",
		"{\"a\":1,\"b\":\"x\"}\n{\"b\":\"y\",\"a\":2}\n", "{\"a\":null}\n\n{\"a\":[1,{}]}\n", "{}\n", "[1]\n",
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, csv bool) {
		format := rows.JSONL
		if csv {
			format = rows.CSV
		}
		want, wantErr := readCount(format, data)
		got, err := rows.Count(format, bytes.NewReader(data))
		if wantErr != nil {
			require.EqualError(t, err, wantErr.Error())
			return
		}
		require.NoError(t, err)
		require.Equal(t, want, got)
	})
}
