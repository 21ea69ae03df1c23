// Package rows reads and writes row files: CSV with a header line, and JSON
// Lines with one object per line. It is what the amlpool command reads and
// writes, for programs that score files through amlpool.Client.ScoreRows:
//
//	f, err := os.Open("rows.csv")
//	…
//	src, err := rows.NewCSVReader(f) // an amlpool.RowSource
//	…
//	stats, err := client.ScoreRows(ctx, src, sink, nil)
//
// Readers are amlpool.RowSource values. A row that cannot be read comes back
// as an *amlpool.RowError naming its line (and, where the row could not be
// split into cells, holding its text, unless the line is longer than
// MaxRowBytes: too long to copy, its error gives its length), and reading
// goes on with the next row, so that no row is dropped without a word and
// every line of the input ends up in exactly one row. Readers read their
// input once, front to back: a pipe works as well as a file.
//
// Writers write whole records only, and Scan finds where the complete
// records of a file end, so that an interrupted run can resume after them.
package rows

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/amlpool/amlpool"
)

// MaxRowBytes bounds one row, line end included: a CSV record or a JSON
// Lines line. A longer row could never be sent (it alone is over the
// service's request limit), so the readers reject it as a bad row and read
// on; it is also all a CSVReader keeps in memory to read again.
const MaxRowBytes = amlpool.DefaultMaxChunkBytes

// Format is a row file format.
type Format int

const (
	CSV   Format = iota // comma-separated values, first line the column names
	JSONL               // JSON Lines: one object per line, column name to cell
)

// String returns "csv" or "jsonl".
func (f Format) String() string {
	if f == JSONL {
		return "jsonl"
	}
	return "csv"
}

// ParseFormat reads a format name: "csv", "jsonl" or "ndjson".
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(s) {
	case "csv":
		return CSV, nil
	case "jsonl", "ndjson":
		return JSONL, nil
	}
	return CSV, fmt.Errorf("unknown format %q; want csv or jsonl", s)
}

// FormatOf guesses a file's format from its name: .jsonl and .ndjson are
// JSONL, anything else CSV.
func FormatOf(path string) Format {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".jsonl", ".ndjson":
		return JSONL
	}
	return CSV
}

// Reader is a row file being read: a CSVReader or a JSONLReader. Line tells
// where the last row read started, for messages.
type Reader interface {
	amlpool.RowSource
	Line() int
}

// NewReader reads the header (CSV) or first object (JSONL) of r and returns
// a Reader for its rows. It fails, naming the line, for an empty file and a
// header that cannot be used.
func NewReader(f Format, r io.Reader) (Reader, error) {
	if f == JSONL {
		return NewJSONLReader(r)
	}
	return NewCSVReader(r)
}

// Writer writes records to a row file. Writes are buffered: Flush pushes
// them out, whole records first.
type Writer interface {
	Write(cells []any) error
	Flush() error
}

// NewWriter returns a Writer of records with the given columns. A CSV
// writer writes the header line first unless header is false (a file
// resumed after its header).
func NewWriter(f Format, w io.Writer, cols []string, header bool) (Writer, error) {
	if f == JSONL {
		return NewJSONLWriter(w, cols), nil
	}
	return NewCSVWriter(w, cols, header)
}

// Text returns a cell as CSV text: strings as they are, numbers in their
// JSON form, booleans as true/false, null as the empty string, and anything
// else as JSON.
func Text(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case int:
		return strconv.Itoa(v)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func checkColumns(cols []string) error {
	if len(cols) == 0 {
		return fmt.Errorf("no columns")
	}
	seen := make(map[string]int, len(cols))
	for i, c := range cols {
		if strings.TrimSpace(c) == "" {
			return fmt.Errorf("column %d has no name", i+1)
		}
		if j, dup := seen[c]; dup {
			return fmt.Errorf("columns %d and %d are both named %q", j+1, i+1, c)
		}
		seen[c] = i
	}
	return nil
}
