package rows_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/internal/rows"
)

// fuzzRead reads every row of data in format f and checks the contract:
// no panic, every row has one cell per column, every failure is a
// *amlpool.RowError with a line number, and good rows survive a write and a
// re-read unchanged in count.
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
	good := 0
	for range 10000 {
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			var re *amlpool.RowError
			if !errors.As(err, &re) || re.Line < 1 {
				t.Fatalf("error %v is not a RowError with a line", err)
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
	_, n, end, err := rows.Scan(f, bytes.NewReader(out.Bytes()), int64(out.Len()))
	if err != nil || n != good || end != int64(out.Len()) {
		t.Fatalf("Scan of %d written rows: n=%d end=%d/%d err=%v", good, n, end, out.Len(), err)
	}
}

func FuzzCSVReader(f *testing.F) {
	for _, s := range []string{
		"a,b\n1,2\n", "\xEF\xBB\xBFa,b\r\n1,2\r\n", "a,b\n\"x\ny\",2\n", "a,b\n1\n1,2,3\n",
		"a,b\n1,x\"y\n", "a,b\n\"3,4\n5,6\n", "a,b\n1,\xff\n", "", "a,,a\n", "a\n\"\"\"\"\n",
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
