package rows

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/amlpool/amlpool"
)

var bom = []byte("\xEF\xBB\xBF")

// CSVReader reads CSV rows after a header line. Each row must have one
// field per header column and be valid UTF-8; a leading byte-order mark is
// skipped. Cells are strings.
//
// A row that cannot be read comes back as an *amlpool.RowError naming its
// line, and reading goes on, so every line of the input ends up in exactly
// one row, good or bad:
//
//   - A quoted field that runs over several lines and then breaks (a stray
//     quote inside it, or the input ending while it is still open) is the
//     error of the line where it opens, alone; reading goes on with the
//     next line, so the rows after a forgotten closing quote are read as
//     rows. The same holds for a record still open after MaxRowBytes.
//   - A line longer than MaxRowBytes is one bad row; reading goes on after
//     it. It is too long to copy: its RowError has no Text, and its Err
//     gives the line's length.
//
// The reader never reads its input twice: it keeps the bytes of the record
// it is reading (at most MaxRowBytes, plus a few KiB read ahead) and reads
// them again from there, so a pipe works as well as a file.
type CSVReader struct {
	rec    *recorder
	r      *csv.Reader
	cols   []string
	line   int      // line where the last row read starts
	seg    int      // r's line n is input line seg+n
	segOff int64    // input offset where r started
	slab   []any    // cells of the rows to come (cells)
	texts  []string // their values, which slab's cells point at (box)
}

// NewCSVReader reads the header line of r. It fails, naming the line, for
// an empty input and a header that cannot be used: a parse error, a blank
// or repeated column name, invalid UTF-8, a carriage return in a name (lines
// ended by CR alone, which would make the whole file its header).
func NewCSVReader(r io.Reader) (*CSVReader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if b, err := br.Peek(3); err == nil && bytes.Equal(b, bom) {
		br.Discard(3)
	}
	c := &CSVReader{rec: &recorder{src: br, line: 1}}
	c.restart(0, 1)
	head, err := c.r.Read()
	switch {
	case err == io.EOF:
		return nil, errors.New("empty file: want a header line of column names")
	case errors.Is(err, errRecordTooLong):
		return nil, fmt.Errorf("line %d: header: longer than %d bytes, or a quoted field in it is never closed", c.rec.firstFilled(), MaxRowBytes)
	case err != nil:
		return nil, fmt.Errorf("header: %w", err)
	}
	line, _ := c.r.FieldPos(0)
	for i, h := range head {
		if !utf8.ValidString(h) {
			return nil, fmt.Errorf("line %d: header: column %d is not valid UTF-8; the file must be UTF-8", line, i+1)
		}
		if strings.IndexByte(h, '\r') >= 0 {
			// Lines ended by CR alone (an old Mac export) are one line to
			// csv: the whole file would be the header, and no row read.
			return nil, fmt.Errorf("line %d: header: column %d holds a carriage return: are the lines ended by CR alone? "+
				"They must end with LF or CRLF", line, i+1)
		}
	}
	if err := checkColumns(head); err != nil {
		return nil, fmt.Errorf("line %d: header: %w", line, err)
	}
	c.rec.forget(c.segOff + c.r.InputOffset())
	c.cols, c.line = slices.Clone(head), line // the csv.Reader reuses head
	return c, nil
}

// Columns returns the header's column names.
func (c *CSVReader) Columns() []string { return c.cols }

// Line returns the line where the last row read starts, good or bad.
func (c *CSVReader) Line() int { return c.line }

// Next returns the next row, an *amlpool.RowError for a malformed one, or
// io.EOF after the last row. Any other error is the input's own (a failed
// read) and ends the rows.
func (c *CSVReader) Next() ([]any, error) { return c.next(true) }

// next is Next; without build, a good row comes back as nil cells, unread
// (Count).
func (c *CSVReader) next(build bool) ([]any, error) {
	for {
		rec, err := c.r.Read()
		pe, _ := errors.AsType[*csv.ParseError](err) // not errors.As: its target would escape, an allocation per row
		switch {
		case err == nil:
			line, _ := c.r.FieldPos(0)
			c.line = c.seg + line
			c.rec.forget(c.segOff + c.r.InputOffset())
			if !build {
				return nil, nil
			}
			return c.row(rec)
		case err == io.EOF:
			return nil, io.EOF
		case pe != nil && pe.Line == pe.StartLine:
			// A bad row on one line: csv has read that line and no more.
			c.line = c.seg + pe.StartLine
			text, _ := c.rec.lineText(c.line)
			c.rec.forget(c.segOff + c.r.InputOffset())
			return nil, &amlpool.RowError{Line: c.line, Row: lazyCells(text), Text: text, Err: pe.Err}
		case pe != nil:
			// A quoted field opened on StartLine ran over later lines and
			// broke there, or the input ended inside it. Taking the whole
			// run as one bad row would swallow every row after a forgotten
			// closing quote: the opening line alone is the bad row.
			c.line = c.seg + pe.StartLine
			why := "is never closed: the input ends inside it"
			if at, ok := c.rec.lineText(c.seg + pe.Line); ok && pe.Column-1 < len(at) && at[pe.Column-1] == '"' {
				why = fmt.Sprintf("its record breaks on line %d, column %d (%v)", c.seg+pe.Line, pe.Column, pe.Err)
			}
			return nil, c.rejectOpening(why)
		case errors.Is(err, errRecordTooLong):
			if n, lines := c.rec.blankPrefix(); n > 0 {
				// Blank lines, which csv skips, filled the buffer before
				// any record began: drop them and read on.
				c.restart(c.rec.base+int64(n), c.rec.line+lines)
				continue
			}
			c.line = c.rec.line
			if _, ok := c.rec.lineText(c.line); ok {
				return nil, c.rejectOpening(fmt.Sprintf("is still open after %d bytes", MaxRowBytes))
			}
			start := c.rec.base
			if err := c.rec.skipLine(); err != nil {
				return nil, err
			}
			c.restart(c.rec.base, c.rec.line)
			return nil, &amlpool.RowError{Line: c.line, Err: &longLineError{bytes: c.rec.base - start}}
		default:
			return nil, err
		}
	}
}

// rejectOpening makes the error of line c.line, where a quoted field opens
// that does not close properly (why says how), and goes on reading at the
// next line.
func (c *CSVReader) rejectOpening(why string) error {
	text, _ := c.rec.lineText(c.line)
	off, ok := c.rec.lineStart(c.line + 1)
	if !ok {
		off = c.rec.base + int64(len(c.rec.kept))
	}
	c.restart(off, c.line+1)
	return &amlpool.RowError{Line: c.line, Row: lazyCells(text), Text: text,
		Err: fmt.Errorf("a quoted field opens on this line and %s; the line is rejected alone and reading goes on with line %d", why, c.line+1)}
}

// restart reads on from input offset off, the start of line line, with a
// new csv.Reader: bytes from off that were read already are read again.
func (c *CSVReader) restart(off int64, line int) {
	c.rec.rewind(off, line)
	c.r = csv.NewReader(c.rec)
	c.r.FieldsPerRecord = -1 // checked in row, to say which line and how
	c.r.ReuseRecord = true   // row copies the fields out
	c.seg, c.segOff = line-1, off
}

// row checks a record read without a parse error.
func (c *CSVReader) row(rec []string) ([]any, error) {
	row := c.cells(rec)
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

// cells returns a record's fields as a row. Rows are cut from a slab, one
// allocation for many rows, and cannot grow into each other; the fields'
// values are kept in a second slab, which the cells point at (box). Boxing
// each field would be half the allocations of a batch run.
func (c *CSVReader) cells(rec []string) []any {
	if len(rec) > cap(c.slab)-len(c.slab) {
		n := max(512, 4*len(rec))
		c.slab, c.texts = make([]any, 0, n), make([]string, 0, n)
	}
	start := len(c.slab)
	for _, f := range rec {
		c.texts = append(c.texts, f)
		c.slab = append(c.slab, box(&c.texts[len(c.texts)-1]))
	}
	return c.slab[start:len(c.slab):len(c.slab)]
}

// eface is the layout of an interface value with no methods in the gc
// toolchain, unchanged since Go 1.4: its dynamic type and a pointer to its
// value, which is never changed through it. TestCSVCellsAreOrdinaryStrings
// would fail if it changed.
type eface struct{ typ, data unsafe.Pointer }

// box returns *p as an any without copying it to the heap, as any(*p)
// would (16 bytes, an allocation a cell): the any's value is *p itself.
// *p must never change afterwards.
func box(p *string) any {
	v := any("") // the type word of a string; "" needs no allocation
	(*eface)(unsafe.Pointer(&v)).data = unsafe.Pointer(p)
	return v
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

// lazyCells splits one line of a bad row into fields as well as it can,
// taking quotes loosely, so that a reject file shows its cells.
func lazyCells(text string) []any {
	r := csv.NewReader(strings.NewReader(text))
	r.LazyQuotes, r.FieldsPerRecord = true, -1
	rec, err := r.Read()
	if err != nil {
		return []any{text}
	}
	return cells(rec)
}

var errRecordTooLong = errors.New("rows: record too long")

// recorder is the reader under a CSVReader's csv.Reader. It keeps every
// byte it has handed out since the end of the last complete record, so that
// reading can start again at any line of the record being read, and it
// refuses to keep more than MaxRowBytes.
type recorder struct {
	src    *bufio.Reader
	replay []byte // bytes handed out before, to hand out again before src's
	kept   []byte // bytes handed out since offset base, in buf
	buf    []byte // the array kept is in, reused (compact)
	base   int64  // input offset of kept[0], always the start of a line
	line   int    // input line number of the line at base
}

func (r *recorder) Read(p []byte) (int, error) {
	room := MaxRowBytes - len(r.kept)
	if room <= 0 {
		if _, err := r.src.Peek(1); err == io.EOF && len(r.replay) == 0 {
			return 0, io.EOF // a record of exactly MaxRowBytes ends the input
		}
		return 0, errRecordTooLong
	}
	p = p[:min(len(p), room)]
	var n int
	var err error
	if len(r.replay) > 0 {
		n = copy(p, r.replay)
		r.replay = r.replay[n:]
	} else {
		n, err = r.src.Read(p)
	}
	if len(r.kept)+n > cap(r.kept) {
		r.compact(n)
	}
	r.kept = append(r.kept, p[:n]...)
	return n, err
}

// compact moves the bytes kept to the front of buf, so that one array
// serves the whole input rather than a new one every few records. buf
// grows when they and more bytes would fill over half of it, and shrinks
// again after a long record.
func (r *recorder) compact(more int) {
	if need := len(r.kept) + more; 2*need > cap(r.buf) || cap(r.buf) > 256<<10 && 8*need < cap(r.buf) {
		r.buf = make([]byte, 0, max(2*need, 16<<10))
	}
	r.kept = append(r.buf[:0], r.kept...) // copy allows the overlap
}

// forget drops the bytes before input offset off, the end of a record.
func (r *recorder) forget(off int64) {
	n := int(off - r.base)
	r.line += bytes.Count(r.kept[:n], []byte{'\n'})
	r.kept, r.base = r.kept[n:], off
}

// rewind makes the next bytes handed out those from input offset off, the
// start of line line, which must lie between base and what was handed out.
func (r *recorder) rewind(off int64, line int) {
	r.replay = slices.Concat(r.kept[off-r.base:], r.replay) // not in buf, which kept reuses
	r.kept, r.base, r.line = r.buf[:0], off, line
}

// lineStart returns the input offset where line starts, if the bytes kept
// reach it.
func (r *recorder) lineStart(line int) (int64, bool) {
	i := 0
	for l := r.line; l < line; l++ {
		j := bytes.IndexByte(r.kept[i:], '\n')
		if j < 0 {
			return 0, false
		}
		i += j + 1
	}
	return r.base + int64(i), true
}

// lineText returns a line's text without its line end, and whether its end
// was kept (a line end, or the end of the input).
func (r *recorder) lineText(line int) (string, bool) {
	off, ok := r.lineStart(line)
	if !ok {
		return "", false
	}
	b := r.kept[off-r.base:]
	j := bytes.IndexByte(b, '\n')
	if j < 0 {
		_, err := r.src.Peek(1)
		return string(b), len(r.replay) == 0 && err == io.EOF
	}
	return string(bytes.TrimSuffix(b[:j], []byte{'\r'})), true
}

// blankPrefix returns the length of the empty lines at the start of kept,
// and how many there are.
func (r *recorder) blankPrefix() (n, lines int) {
	for {
		switch {
		case bytes.HasPrefix(r.kept[n:], []byte("\n")):
			n++
		case bytes.HasPrefix(r.kept[n:], []byte("\r\n")):
			n += 2
		default:
			return n, lines
		}
		lines++
	}
}

// firstFilled returns the line of the first byte kept that is not part of
// an empty line.
func (r *recorder) firstFilled() int {
	_, lines := r.blankPrefix()
	return r.line + lines
}

// skipLine drops the rest of the line at base, which is longer than kept,
// reading on until its end; base moves to the start of the next line.
func (r *recorder) skipLine() error {
	r.base += int64(len(r.kept))
	r.kept = r.buf[:0]
	if i := bytes.IndexByte(r.replay, '\n'); i >= 0 {
		r.base += int64(i + 1)
		r.replay = r.replay[i+1:]
		r.line++
		return nil
	}
	r.base += int64(len(r.replay))
	r.replay = nil
	for {
		b, err := r.src.ReadSlice('\n')
		r.base += int64(len(b))
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
		r.line++
		return nil
	}
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
