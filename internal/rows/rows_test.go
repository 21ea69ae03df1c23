package rows_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/internal/rows"
)

// readAll reads every row of in, returning the good rows and, for bad ones,
// "line N: message".
func readAll(t *testing.T, f rows.Format, in string) (good [][]any, bad []string) {
	t.Helper()
	r, err := rows.NewReader(f, strings.NewReader(in))
	require.NoError(t, err)
	for {
		row, err := r.Next()
		if err == io.EOF {
			return good, bad
		}
		if err != nil {
			var re *amlpool.RowError
			require.ErrorAs(t, err, &re, "only row errors expected")
			bad = append(bad, re.Error())
			continue
		}
		good = append(good, row)
	}
}

func TestCSVReader(t *testing.T) {
	tests := []struct {
		name string
		in   string
		good [][]any
		bad  []string
	}{
		{"plain", "a,b\n1,2\n3,4\n", [][]any{{"1", "2"}, {"3", "4"}}, nil},
		{"bom and crlf", "\xEF\xBB\xBFa,b\r\n1,2\r\n", [][]any{{"1", "2"}}, nil},
		{"quoted newline keeps line numbers", "a,b\n\"x\ny\",2\nbad\n", [][]any{{"x\ny", "2"}},
			[]string{"line 4: 1 fields, but the header has 2"}},
		{"ragged", "a,b\n1\n1,2,3\n5,6\n", [][]any{{"5", "6"}},
			[]string{"line 2: 1 fields, but the header has 2", "line 3: 3 fields, but the header has 2"}},
		{"bare quote", "a,b\n1,x\"y\n5,6\n", [][]any{{"5", "6"}}, []string{`line 2: bare " in non-quoted-field`}},
		{"unterminated quote eats the rest", "a,b\n1,2\n\"3,4\n5,6\n", [][]any{{"1", "2"}},
			[]string{`line 3: extraneous or missing " in quoted-field`}},
		{"invalid utf-8", "a,b\n1,\xff\n", nil, []string{"line 2: field 2 (b) is not valid UTF-8; the file must be UTF-8"}},
		{"header only", "a,b\n", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good, bad := readAll(t, rows.CSV, tt.in)
			assert.Equal(t, tt.good, good)
			assert.Equal(t, tt.bad, bad)
		})
	}
}

func TestHeaderErrors(t *testing.T) {
	tests := []struct {
		name string
		f    rows.Format
		in   string
		want string
	}{
		{"empty csv", rows.CSV, "", "empty file"},
		{"empty jsonl", rows.JSONL, "\n\n", "empty file"},
		{"csv blank name", rows.CSV, "a,,c\n", "line 1: header: column 2 has no name"},
		{"csv duplicate", rows.CSV, "a,b,a\n", `line 1: header: columns 1 and 3 are both named "a"`},
		{"csv bad utf-8", rows.CSV, "a,\xfe\n", "line 1: header: column 2 is not valid UTF-8"},
		{"csv bad quote", rows.CSV, "a,\"b\n", "header: parse error"},
		{"jsonl not object", rows.JSONL, "\n[1,2]\n", "line 2: the first row, which names the columns: not a JSON object but an array"},
		{"jsonl no keys", rows.JSONL, "{}\n", "line 1: no columns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := rows.NewReader(tt.f, strings.NewReader(tt.in))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestJSONLReader(t *testing.T) {
	in := `{"id":1,"name":"a","x":null}
{"name":"b","id":2,"x":[1]}

{"id":3}
{"id":4,"name":"d","x":1,"y":2}
not json
{"id":5,"name":"e","x":true,"id":6}
"s"
{"id":7,"name":"g","x":` + "\"\xff\"" + `}
{"id":8,"name":"h","x":0} {}
{"id":9,"name":"i","x":1.5}`
	good, bad := readAll(t, rows.JSONL, in)
	assert.Equal(t, [][]any{
		{json.Number("1"), "a", nil},
		{json.Number("2"), "b", []any{json.Number("1")}},
		{json.Number("9"), "i", json.Number("1.5")},
	}, good)
	assert.Equal(t, []string{
		`line 4: no key "name" (every row needs every column)`,
		`line 5: key "y" is not a column (columns come from the first row)`,
		"line 6: not JSON: invalid character 'o' in literal null (expecting 'u')",
		`line 7: key "id" appears twice`,
		"line 8: not a JSON object but a string",
		"line 9: not valid UTF-8; the file must be UTF-8",
		"line 10: more than one JSON value on the line",
	}, bad)
}

func TestJSONLLongLine(t *testing.T) {
	long := `{"a":"` + strings.Repeat("x", rows.MaxLineBytes) + `"}`
	good, bad := readAll(t, rows.JSONL, "{\"a\":1}\n"+long+"\n{\"a\":2}\n")
	assert.Equal(t, [][]any{{json.Number("1")}, {json.Number("2")}}, good)
	assert.Equal(t, []string{"line 2: line longer than 4000000 bytes"}, bad)
}

func TestWriteReadRoundTrip(t *testing.T) {
	cols := []string{"s", "n", "b", "null", "quote"}
	rec := []any{"x,y", json.Number("1.5"), true, nil, "say \"hi\"\nbye"}
	for _, f := range []rows.Format{rows.CSV, rows.JSONL} {
		t.Run(f.String(), func(t *testing.T) {
			var buf bytes.Buffer
			w, err := rows.NewWriter(f, &buf, cols, true)
			require.NoError(t, err)
			require.NoError(t, w.Write(rec))
			require.NoError(t, w.Write(rec))
			require.NoError(t, w.Flush())
			r, err := rows.NewReader(f, &buf)
			require.NoError(t, err)
			assert.Equal(t, cols, r.Columns())
			for range 2 {
				got, err := r.Next()
				require.NoError(t, err)
				want := rec
				if f == rows.CSV { // CSV has text only
					want = []any{"x,y", "1.5", "true", "", "say \"hi\"\nbye"}
				}
				assert.Equal(t, want, got)
			}
			_, err = r.Next()
			assert.Equal(t, io.EOF, err)
		})
	}
}

func TestScan(t *testing.T) {
	csvFile := "a,b\n1,2\n\"x\ny\",3\n"
	jsonlFile := "{\"a\":1}\n{\"a\":\"x\\ny\"}\n"
	tests := []struct {
		name     string
		f        rows.Format
		in       string
		wantHead []string
		wantN    int
		wantEnd  int
	}{
		{"csv whole", rows.CSV, csvFile, []string{"a", "b"}, 2, len(csvFile)},
		{"csv cut in a quoted field", rows.CSV, csvFile[:len(csvFile)-5], []string{"a", "b"}, 1, 8},
		{"csv cut before the line end", rows.CSV, csvFile[:len(csvFile)-1], []string{"a", "b"}, 1, 8},
		{"csv cut in the header", rows.CSV, "a,", nil, 0, 0},
		{"csv empty", rows.CSV, "", nil, 0, 0},
		{"jsonl whole", rows.JSONL, jsonlFile, nil, 2, len(jsonlFile)},
		{"jsonl cut", rows.JSONL, jsonlFile[:len(jsonlFile)-3], nil, 1, 8},
		{"jsonl cut before the line end", rows.JSONL, jsonlFile[:len(jsonlFile)-1], nil, 1, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			head, n, end, err := rows.Scan(tt.f, strings.NewReader(tt.in), int64(len(tt.in)))
			require.NoError(t, err)
			assert.Equal(t, tt.wantHead, head)
			assert.Equal(t, tt.wantN, n)
			assert.EqualValues(t, tt.wantEnd, end)
		})
	}
}

func TestScanCorrupt(t *testing.T) {
	for _, tt := range []struct {
		f  rows.Format
		in string
	}{
		{rows.CSV, "a,b\n1,x\"y\n3,4\n"},
		{rows.JSONL, "{\"a\":1}\nnope\n{\"a\":2}\n"},
	} {
		_, _, _, err := rows.Scan(tt.f, strings.NewReader(tt.in), int64(len(tt.in)))
		assert.Error(t, err, tt.in)
	}
}

func TestParseFormat(t *testing.T) {
	f, err := rows.ParseFormat("NDJSON")
	require.NoError(t, err)
	assert.Equal(t, rows.JSONL, f)
	_, err = rows.ParseFormat("xml")
	assert.Error(t, err)
	assert.Equal(t, rows.JSONL, rows.FormatOf("x.jsonl"))
	assert.Equal(t, rows.CSV, rows.FormatOf("x.txt"))
	assert.False(t, errors.Is(err, io.EOF))
}
