package rows

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"

	"github.com/amlpool/amlpool"
)

// JSONLReader reads JSON Lines rows. The first object's keys, in order,
// are the columns; every later object must have the same keys, in any
// order. Blank lines (empty, or of JSON white space only: spaces, tabs) are
// skipped. Cells keep their JSON type (numbers as json.Number).
//
// Every line is a row of its own, so a bad line (not JSON, not an object,
// keys unlike the columns', invalid UTF-8, longer than MaxRowBytes) is an
// *amlpool.RowError naming its line, with the line's text, and reading goes
// on with the next line. A line longer than MaxRowBytes is too long to
// copy: its RowError has no Text, and its Err gives the line's length.
type JSONLReader struct {
	r     *bufio.Reader
	cols  []string
	index map[string]int
	line  int // lines read
	start int // line of the last row
	first []any
}

// NewJSONLReader reads the first row of r, whose keys name the columns.
func NewJSONLReader(r io.Reader) (*JSONLReader, error) {
	j := &JSONLReader{r: bufio.NewReaderSize(r, 64<<10)}
	for {
		b, err := j.readLine()
		if err == io.EOF {
			return nil, errors.New("empty file: want JSON objects, one per line")
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", j.line, err)
		}
		if j.line == 1 {
			b = bytes.TrimPrefix(b, bom) // a byte-order mark starts the file only
		}
		if blank(b) {
			continue
		}
		keys, vals, err := parseObject(b)
		if err != nil {
			return nil, fmt.Errorf("line %d: the first row, which names the columns: %w", j.line, err)
		}
		if err := checkColumns(keys); err != nil {
			return nil, fmt.Errorf("line %d: %w", j.line, err)
		}
		j.cols, j.first, j.start = keys, vals, j.line
		j.index = make(map[string]int, len(keys))
		for i, k := range keys {
			j.index[k] = i
		}
		return j, nil
	}
}

// Columns returns the first object's keys, in order.
func (j *JSONLReader) Columns() []string { return j.cols }

// Line returns the line of the last row read.
func (j *JSONLReader) Line() int { return j.start }

// Next returns the next row, an *amlpool.RowError for a line that is not an
// object with the columns' keys, or io.EOF.
func (j *JSONLReader) Next() ([]any, error) { return j.next(true) }

// next is Next; without build, a line that is not blank comes back as nil
// cells, unread (Count).
func (j *JSONLReader) next(build bool) ([]any, error) {
	if j.first != nil {
		row := j.first
		j.first = nil
		return row, nil
	}
	for {
		b, err := j.readLine()
		if err == io.EOF {
			return nil, io.EOF
		}
		j.start = j.line
		if _, long := errors.AsType[*longLineError](err); long {
			return nil, &amlpool.RowError{Line: j.line, Err: err} // too long to keep its text
		}
		if err != nil {
			return nil, err
		}
		if blank(b) {
			continue
		}
		if !build {
			return nil, nil
		}
		keys, vals, err := parseObject(b)
		if err != nil {
			return nil, &amlpool.RowError{Line: j.line, Text: string(b), Err: err}
		}
		// A row in column order; on a key error, the cells of the keys
		// that are columns, so that a reject file shows them.
		row := make([]any, len(j.cols))
		set := make([]bool, len(j.cols))
		var bad error
		for i, k := range keys {
			c, ok := j.index[k]
			if !ok {
				if bad == nil {
					bad = fmt.Errorf("key %q is not a column (columns come from the first row)", k)
				}
				continue
			}
			row[c], set[c] = vals[i], true
		}
		if i := slices.Index(set, false); i >= 0 && bad == nil {
			bad = fmt.Errorf("no key %q (every row needs every column)", j.cols[i])
		}
		if bad != nil {
			return nil, &amlpool.RowError{Line: j.line, Row: row, Text: string(b), Err: bad}
		}
		return row, nil
	}
}

// blank says whether a line holds JSON white space only: spaces, tabs
// and CRs. Other white space (a vertical tab, a no-break space) is not JSON,
// and its line is a bad row rather than one skipped without a word.
func blank(b []byte) bool { return len(bytes.Trim(b, " \t\r")) == 0 }

// longLineError is the cause of a row over MaxRowBytes. Its text is not
// kept: a line has no bound but the input's size, and keeping it would take
// all of it in memory, while reading keeps a row at most.
type longLineError struct {
	bytes int64 // the line's length, line end included
}

func (e *longLineError) Error() string {
	return fmt.Sprintf("line of %d bytes (line end included), over the limit of %d bytes per row "+
		"(rows.MaxRowBytes: a row must fit in a request to the service): too long to copy, so its text is not kept", e.bytes, MaxRowBytes)
}

// readLine returns the next line without its end (LF or CR LF), or a
// *longLineError after skipping a line that is too long.
func (j *JSONLReader) readLine() ([]byte, error) {
	var line []byte
	for {
		frag, err := j.r.ReadSlice('\n')
		if n := int64(len(line) + len(frag)); n > MaxRowBytes {
			for errors.Is(err, bufio.ErrBufferFull) {
				frag, err = j.r.ReadSlice('\n')
				n += int64(len(frag))
			}
			j.line++
			if err != nil && err != io.EOF {
				return nil, err
			}
			return nil, &longLineError{bytes: n}
		}
		line = append(line, frag...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF && len(line) == 0 {
			return nil, io.EOF
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
		j.line++
		if b, ok := bytes.CutSuffix(line, []byte("\n")); ok {
			return bytes.TrimSuffix(b, []byte("\r")), nil // LF or CR LF
		}
		return line, nil // the last line, without its end: a CR there is no line end, and stays in its text
	}
}

// parseObject decodes one JSON object, keeping its keys in order.
func parseObject(b []byte) ([]string, []any, error) {
	if !utf8.Valid(b) {
		return nil, nil, errors.New("not valid UTF-8; the file must be UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil {
		return nil, nil, fmt.Errorf("not JSON: %w", err)
	} else if t != json.Delim('{') {
		return nil, nil, fmt.Errorf("not a JSON object but %s", describe(t))
	}
	var keys []string
	var vals []any
	seen := make(map[string]struct{}) // not slices.Contains: a line of n keys would cost n² compares
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("not JSON: %w", err)
		}
		k := t.(string) // object keys are strings once Token succeeds
		if _, dup := seen[k]; dup {
			return nil, nil, fmt.Errorf("key %q appears twice", k)
		}
		seen[k] = struct{}{}
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, nil, fmt.Errorf("not JSON: %w", err)
		}
		keys, vals = append(keys, k), append(vals, v)
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, fmt.Errorf("not JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, errors.New("more than one JSON value on the line")
	}
	return keys, vals, nil
}

func describe(t json.Token) string {
	switch t.(type) {
	case json.Delim:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "null"
}

// JSONLWriter writes one JSON object per record, keys in column order.
type JSONLWriter struct {
	bw   *bufio.Writer
	keys [][]byte // each column name as a JSON string and a colon
	buf  bytes.Buffer
	enc  *json.Encoder
}

// NewJSONLWriter returns a writer of objects with the keys cols.
func NewJSONLWriter(w io.Writer, cols []string) *JSONLWriter {
	j := &JSONLWriter{bw: bufio.NewWriterSize(w, 64<<10)}
	j.enc = json.NewEncoder(&j.buf)
	j.enc.SetEscapeHTML(false)
	for _, c := range cols {
		k, _ := json.Marshal(c)
		j.keys = append(j.keys, append(k, ':'))
	}
	return j
}

// Write writes one record as a line.
func (j *JSONLWriter) Write(cells []any) error {
	if len(cells) != len(j.keys) {
		return fmt.Errorf("rows: %d cells for %d columns", len(cells), len(j.keys))
	}
	j.buf.Reset()
	j.buf.WriteByte('{')
	for i, v := range cells {
		if i > 0 {
			j.buf.WriteByte(',')
		}
		j.buf.Write(j.keys[i])
		if err := j.enc.Encode(v); err != nil {
			return fmt.Errorf("rows: column %s: %w", j.keys[i], err)
		}
		j.buf.Truncate(j.buf.Len() - 1) // the Encoder's newline
	}
	j.buf.WriteString("}\n")
	_, err := j.bw.Write(j.buf.Bytes())
	return err
}

// Flush writes out everything written so far.
func (j *JSONLWriter) Flush() error { return j.bw.Flush() }
