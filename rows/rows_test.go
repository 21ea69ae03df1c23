package rows_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
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
		{"unterminated quote on the last line", "a,b\n1,2\n3,\"4\n", [][]any{{"1", "2"}},
			[]string{`line 3: extraneous or missing " in quoted-field`}},
		{"unterminated quote is its line's error only", "a,b\n1,2\n\"3,4\n5,6\n7,8\n", [][]any{{"1", "2"}, {"5", "6"}, {"7", "8"}},
			[]string{"line 3: a quoted field opens on this line and is never closed: the input ends inside it; the line is rejected alone and reading goes on with line 4"}},
		{"quoted field that breaks later", "a,b\n1,\"a\n2,b\n3,\"x\"y\n4,d\n", [][]any{{"2", "b"}, {"4", "d"}},
			[]string{
				`line 2: a quoted field opens on this line and its record breaks on line 4, column 3 (extraneous or missing " in quoted-field); the line is rejected alone and reading goes on with line 3`,
				`line 4: extraneous or missing " in quoted-field`,
			}},
		{"multi-line field that closes is one row", "a,b\n1,\"x\n\n\"\"y\"\"\"\n2,3\n", [][]any{{"1", "x\n\n\"y\""}, {"2", "3"}}, nil},
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

// TestJSONLTextIsTheLine: a bad line's Text is the line as the input has
// it, without its line end, LF or CR LF; a CR that ends the input is no
// line end, and stays (as the CSV reader keeps it).
func TestJSONLTextIsTheLine(t *testing.T) {
	for _, tt := range []struct{ in, text string }{
		{"{\"a\":1}\nnot json\n", "not json"},
		{"{\"a\":1}\nnot json\r\n", "not json"},
		{"{\"a\":1}\nnot json\r\r\n", "not json\r"},
		{"{\"a\":1}\nnot json", "not json"},
		{"{\"a\":1}\nnot json\r", "not json\r"},
	} {
		r, err := rows.NewJSONLReader(strings.NewReader(tt.in))
		require.NoError(t, err)
		_, err = r.Next()
		require.NoError(t, err)
		_, err = r.Next()
		re, ok := errors.AsType[*amlpool.RowError](err)
		require.True(t, ok, "%q: %v", tt.in, err)
		assert.Equal(t, tt.text, re.Text, "%q", tt.in)
		_, err = r.Next()
		assert.Equal(t, io.EOF, err)
	}
}

// tooLong is the error of line, of n bytes with its line end, over
// MaxRowBytes.
func tooLong(line, n int) string {
	return fmt.Sprintf("line %d: line of %d bytes (line end included), over the limit of 4000000 bytes per row "+
		"(rows.MaxRowBytes: a row must fit in a request to the service): too long to copy, so its text is not kept", line, n)
}

// readLong reads every row of in, as readAll does, checking that no bad
// row over MaxRowBytes keeps a text.
func readLong(t *testing.T, r rows.Reader) (good [][]any, bad []string) {
	t.Helper()
	for {
		row, err := r.Next()
		if err == io.EOF {
			return good, bad
		}
		if re, ok := errors.AsType[*amlpool.RowError](err); ok {
			if strings.Contains(re.Error(), "too long to copy") {
				assert.Empty(t, re.Text, "too long to copy")
			}
			bad = append(bad, re.Error())
			continue
		}
		require.NoError(t, err)
		good = append(good, row)
	}
}

// TestJSONLLongLine: a line over MaxRowBytes is one bad row, without its
// text (too long to copy), whose error gives its length; reading goes on.
func TestJSONLLongLine(t *testing.T) {
	long := `{"a":"` + strings.Repeat("x", rows.MaxRowBytes) + `"}`
	for name, rd := range readers {
		t.Run(name, func(t *testing.T) {
			r, err := rows.NewJSONLReader(rd("{\"a\":1}\n" + long + "\n{\"a\":2}\r\n" + long + "\r\n" + long))
			require.NoError(t, err)
			good, bad := readLong(t, r)
			assert.Equal(t, [][]any{{json.Number("1")}, {json.Number("2")}}, good)
			assert.Equal(t, []string{tooLong(2, len(long)+1), tooLong(4, len(long)+2), tooLong(5, len(long))}, bad)
		})
	}
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
		{"jsonl whole", rows.JSONL, jsonlFile, []string{"a"}, 2, len(jsonlFile)},
		{"jsonl cut", rows.JSONL, jsonlFile[:len(jsonlFile)-3], []string{"a"}, 1, 8},
		{"jsonl cut before the line end", rows.JSONL, jsonlFile[:len(jsonlFile)-1], []string{"a"}, 1, 8},
		{"jsonl cut in the first record", rows.JSONL, jsonlFile[:5], nil, 0, 0},
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

// readers yield the same input whole, one byte at a time and in halves, so
// that the CSV reader's rereading is checked across every read boundary.
var readers = map[string]func(string) io.Reader{
	"whole":    func(s string) io.Reader { return strings.NewReader(s) },
	"one byte": func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) },
	"halves":   func(s string) io.Reader { return iotest.HalfReader(strings.NewReader(s)) },
}

// TestCSVUnclosedQuoteLosesNoRow is the case: a quote opened on line
// 22 of 5,000 rows and never closed. Every other row is read, in order, and
// line 22 is the one bad row, whatever the reads look like.
func TestCSVUnclosedQuoteLosesNoRow(t *testing.T) {
	var b strings.Builder
	b.WriteString("id,name\n")
	for i := range 5000 {
		if i == 20 { // line 22
			fmt.Fprintf(&b, "%d,\"name %d\n", i, i)
			continue
		}
		fmt.Fprintf(&b, "%d,name %d\n", i, i)
	}
	for name, rd := range readers {
		t.Run(name, func(t *testing.T) {
			r, err := rows.NewCSVReader(rd(b.String()))
			require.NoError(t, err)
			var ids []int
			for {
				row, err := r.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					var re *amlpool.RowError
					require.ErrorAs(t, err, &re)
					assert.Equal(t, 22, re.Line)
					assert.Equal(t, `20,"name 20`, re.Text)
					assert.Equal(t, []any{"20", "name 20"}, re.Row, "the line's cells, read loosely")
					assert.Contains(t, re.Error(), "line 22: a quoted field opens on this line and is never closed")
					ids = append(ids, 20)
					continue
				}
				id, err := strconv.Atoi(row[0].(string))
				require.NoError(t, err)
				assert.Equal(t, id+2, r.Line(), "line of id %d", id)
				ids = append(ids, id)
			}
			require.Len(t, ids, 5000)
			for i, id := range ids {
				require.Equal(t, i, id, "every row once, in order")
			}
		})
	}
}

// TestCSVRowLimits checks what the reader keeps in memory: a quote still
// open after MaxRowBytes is its line's error, a line longer than that is
// one bad row, and blank lines do not count; reading goes on after each.
func TestCSVRowLimits(t *testing.T) {
	const lines = rows.MaxRowBytes/1000 + 10 // of 1,000 bytes: more than the limit together
	many := strings.Repeat("7,"+strings.Repeat("8", 997)+"\n", lines)
	tests := []struct {
		name string
		in   string
		good int
		bad  []string
	}{
		{"open quote over the limit", "a,b\n1,\"x\n" + many + "9,9\n", lines + 1,
			[]string{"line 2: a quoted field opens on this line and is still open after 4000000 bytes; the line is rejected alone and reading goes on with line 3"}},
		{"line over the limit", "a,b\n1,2\n3," + strings.Repeat("x", rows.MaxRowBytes) + "\r\n5,6\n", 2,
			[]string{tooLong(3, rows.MaxRowBytes+4)}},
		{"long last line without its end", "a,b\n1,2\n3," + strings.Repeat("x", rows.MaxRowBytes), 1,
			[]string{tooLong(3, rows.MaxRowBytes+2)}},
		{"row of exactly the limit", "a,b\n" + "1," + strings.Repeat("x", rows.MaxRowBytes-3) + "\n2,3\n", 2, nil},
		{"blank lines are not a row", "a,b\n" + strings.Repeat("\r\n", rows.MaxRowBytes) + "1,2\n", 1, nil},
	}
	for _, tt := range tests {
		for name, rd := range readers {
			t.Run(tt.name+"/"+name, func(t *testing.T) {
				r, err := rows.NewCSVReader(rd(tt.in))
				require.NoError(t, err)
				good, bad := readLong(t, r)
				assert.Len(t, good, tt.good)
				assert.Equal(t, tt.bad, bad)
			})
		}
	}
}

// TestCSVLinesOfRows checks that each row's Line is where it starts, across
// multi-line fields, blank lines, CRLF and rereading after a broken quote.
func TestCSVLinesOfRows(t *testing.T) {
	in := "a,b\r\n\r\n1,\"x\r\ny\"\r\n2,\"open\r\n\r\n3,4\r\n5,\"p\"\"q\"\r\n"
	for name, rd := range readers {
		t.Run(name, func(t *testing.T) {
			r, err := rows.NewCSVReader(rd(in))
			require.NoError(t, err)
			var lines []int
			for {
				_, err := r.Next()
				if err == io.EOF {
					break
				}
				lines = append(lines, r.Line())
			}
			assert.Equal(t, []int{3, 5, 7, 8}, lines)
		})
	}
}

// TestCountLongLines counts lines longer than Count's buffer and than
// MaxRowBytes, with and without quotes, as reading does.
func TestCountLongLines(t *testing.T) {
	long := strings.Repeat("x", 100<<10)
	huge := strings.Repeat("y", rows.MaxRowBytes+10)
	for name, data := range map[string]string{
		"long":              "a,b\n" + long + ",1\n1,2\n",
		"long, quote after": "a,b\n" + long + ",1\n\"1\",2\n3,4\n",
		"long with a quote": "a,b\n" + long + ",\"1\"\n1,2\n",
		"long header":       long + ",b\n1,2\n",
		"over MaxRowBytes":  "a,b\n" + huge + "\n1,2\n" + huge,
		"long, no line end": "a,b\n1,2\n" + long,
	} {
		t.Run(name, func(t *testing.T) {
			want, err := readCount(rows.CSV, []byte(data))
			require.NoError(t, err)
			got, err := rows.Count(rows.CSV, strings.NewReader(data))
			require.NoError(t, err)
			assert.Equal(t, want, got)
		})
	}
}

// TestCountWithoutQuotesBuildsNothing checks that Count counts a CSV
// without quotes by its lines, not by reading rows: its allocations do not
// grow with the rows.
func TestCountWithoutQuotesBuildsNothing(t *testing.T) {
	var b strings.Builder
	b.WriteString("id,name\n")
	for i := range 10_000 {
		fmt.Fprintf(&b, "%d,name %d\n", i, i)
	}
	data := b.String()
	n, err := rows.Count(rows.CSV, strings.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, 10_000, n)
	allocs := testing.AllocsPerRun(3, func() { _, _ = rows.Count(rows.CSV, strings.NewReader(data)) })
	assert.Less(t, allocs, 100.0, "allocations counting 10,000 rows")
}

// TestJSONLBlankLines checks which lines a JSON Lines reader skips: empty
// lines and lines of JSON whitespace (space, tab, CR) only. A line of other
// white space (a vertical tab, a no-break space) is not JSON and is a bad
// row, not skipped without a word; Count agrees. A byte-order mark starts
// the file only: alone on the first line, that line is blank.
func TestJSONLBlankLines(t *testing.T) {
	in := "{\"a\":1}\n \t\r\n\v\n\u00a0\n\u0085\n{\"a\":2}\n"
	good, bad := readAll(t, rows.JSONL, in)
	assert.Equal(t, [][]any{{json.Number("1")}, {json.Number("2")}}, good)
	assert.Equal(t, []string{
		"line 3: not JSON: invalid character '\\v' looking for beginning of value",
		`line 4: not JSON: invalid character '\u00a0' looking for beginning of value`,
		`line 5: not JSON: invalid character '\u0085' looking for beginning of value`,
	}, bad)
	n, err := rows.Count(rows.JSONL, strings.NewReader(in))
	require.NoError(t, err)
	assert.Equal(t, 5, n)

	good, bad = readAll(t, rows.JSONL, "\xEF\xBB\xBF\n{\"a\":1}\n{\"a\":2}\n")
	assert.Equal(t, [][]any{{json.Number("1")}, {json.Number("2")}}, good)
	assert.Empty(t, bad)
	_, err = rows.NewJSONLReader(strings.NewReader("\n\xEF\xBB\xBF{\"a\":1}\n"))
	assert.EqualError(t, err, "line 2: the first row, which names the columns: not JSON: invalid character '\\ufeff' looking for beginning of value")
}

// TestCSVLinesEndedByCR checks that a CSV whose lines end with CR alone (an
// old Mac export) is refused, naming the cause: csv reads it as one line,
// so it would be all header and no row, every row lost without a word.
// Count says the same.
func TestCSVLinesEndedByCR(t *testing.T) {
	const want = "line 1: header: column 2 holds a carriage return: are the lines ended by CR alone? They must end with LF or CRLF"
	for _, in := range []string{"a,b\r1,2\r3,4\r", "a,b\r1,2\r3,4"} {
		_, err := rows.NewCSVReader(strings.NewReader(in))
		assert.EqualError(t, err, want, "%q", in)
		_, err = rows.Count(rows.CSV, strings.NewReader(in))
		assert.EqualError(t, err, want, "%q", in)
	}
	_, err := rows.NewCSVReader(strings.NewReader("a,\"b\r\nc\"\r\n1,2\r\n"))
	assert.NoError(t, err, "a CRLF inside a quoted name is a line end in it, not a CR")
}
