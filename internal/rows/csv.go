package rows

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/amlpool/amlpool"
)

var bom = []byte("\xEF\xBB\xBF")

// CSVReader reads CSV rows after a header line. Each row must have one
// field per header column and be valid UTF-8; a leading byte-order mark is
// skipped. Cells are strings.
type CSVReader struct {
	r    *csv.Reader
	cols []string
	line int
}

// NewCSVReader reads the header line of r.
func NewCSVReader(r io.Reader) (*CSVReader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if b, err := br.Peek(3); err == nil && bytes.Equal(b, bom) {
		br.Discard(3)
	}
	c := &CSVReader{r: csv.NewReader(br)}
	c.r.FieldsPerRecord = -1 // checked here, to say which line and how
	head, err := c.r.Read()
	switch {
	case err == io.EOF:
		return nil, errors.New("empty file: want a header line of column names")
	case err != nil:
		return nil, fmt.Errorf("header: %w", err)
	}
	for i, h := range head {
		if !utf8.ValidString(h) {
			return nil, fmt.Errorf("line 1: header: column %d is not valid UTF-8; the file must be UTF-8", i+1)
		}
	}
	if err := checkColumns(head); err != nil {
		return nil, fmt.Errorf("line 1: header: %w", err)
	}
	c.cols, c.line = head, 1
	return c, nil
}

func (c *CSVReader) Columns() []string { return c.cols }

// Line returns the line where the last row read starts.
func (c *CSVReader) Line() int { return c.line }

// Next returns the next row, an *amlpool.RowError for a malformed one, or
// io.EOF.
func (c *CSVReader) Next() ([]any, error) {
	rec, err := c.r.Read()
	if err == io.EOF {
		return nil, io.EOF
	}
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		c.line = pe.StartLine
		return nil, &amlpool.RowError{Line: c.line, Row: cells(rec), Err: pe.Err}
	}
	if err != nil {
		return nil, err
	}
	c.line, _ = c.r.FieldPos(0)
	row := cells(rec)
	if len(rec) != len(c.cols) {
		return nil, &amlpool.RowError{Line: c.line, Row: row,
			Err: fmt.Errorf("%d fields, but the header has %d", len(rec), len(c.cols))}
	}
	for i, f := range rec {
		if !utf8.ValidString(f) {
			return nil, &amlpool.RowError{Line: c.line, Row: row,
				Err: fmt.Errorf("field %d (%s) is not valid UTF-8; the file must be UTF-8", i+1, c.cols[i])}
		}
	}
	return row, nil
}

func cells(rec []string) []any {
	if rec == nil {
		return nil
	}
	row := make([]any, len(rec))
	for i, f := range rec {
		row[i] = f
	}
	return row
}

// CSVWriter writes CSV records.
type CSVWriter struct {
	bw  *bufio.Writer
	w   *csv.Writer
	buf []string
}

// NewCSVWriter returns a writer that writes cols as the header line first
// when header is true.
func NewCSVWriter(w io.Writer, cols []string, header bool) (*CSVWriter, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	c := &CSVWriter{bw: bw, w: csv.NewWriter(bw)}
	if header {
		if err := c.w.Write(cols); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Write writes one record; cells become text as Text says.
func (c *CSVWriter) Write(cells []any) error {
	if len(cells) == 1 && Text(cells[0]) == "" {
		// encoding/csv writes a lone empty field as a blank line, which
		// readers skip: quote it so the record survives. (The csv.Writer
		// writes into bw, so the order holds.)
		_, err := c.bw.WriteString("\"\"\n")
		return err
	}
	c.buf = c.buf[:0]
	for _, v := range cells {
		c.buf = append(c.buf, Text(v))
	}
	return c.w.Write(c.buf)
}

// Flush writes out everything written so far.
func (c *CSVWriter) Flush() error {
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return err
	}
	return c.bw.Flush()
}
