package main

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
)

// skipSettled reads past the rows that earlier runs settled (out's and
// rej's records, in input order), checking them against those files. The
// output echoes each scored row's input columns, so an input that changed
// since (written again, or another file of the same header and no fewer
// rows) shows in a row that the output holds otherwise, or that cannot be
// read now; resuming would skip rows the files do not hold, and mix two
// inputs in the output. That is refused, naming the row, its line and the
// column, never a cell. The reject file's row column says which rows it
// holds; their cells are not compared, as a bad row's may not have been
// read whole.
//
// The check refuses only what plainly differs: it stops, and the rest is
// skipped unchecked, where the output's columns do not begin with the
// input's (start reports that) or a file does not read back as the
// writers write it. Rows after those settled are not checked: nothing
// records them.
func skipSettled(r rows.Reader, inPath string, out, rej *outFile, inCols []string) error {
	n := out.rows + rej.rows
	scored := settledRows(out, inCols)
	rejected := rejectedRows(rej, rejectColumns(inCols)[1])
	check := scored != nil && rejected != nil
	nextRej := 0 // the next rejected row's number; 0: none
	if check {
		nextRej, check = rejected.next()
	}
	for i := range n {
		row, err := r.Next()
		if err == io.EOF {
			return usageError{fmt.Errorf("cannot resume: %s and %s hold %d rows, but %s has only %d: not the same input?", out.path, rej.path, n, inPath, i)}
		}
		rowErr, bad := errors.AsType[*amlpool.RowError](err)
		if err != nil && !bad {
			return fmt.Errorf("%s: %w", inPath, err)
		}
		if !check {
			continue
		}
		switch {
		case nextRej == i+1: // in the reject file
			nextRej, check = rejected.next()
			continue
		case nextRej != 0 && nextRej <= i: // not in order: not a file this command wrote
			check = false
			continue
		}
		var held []any
		if held, check = scored.next(); !check {
			continue
		}
		changed := func(why string) error {
			return usageError{fmt.Errorf("cannot resume: row %d (line %d) of %s %s: "+
				"has the input changed since the run to resume? Resume with the input it read, or remove %s and %s to score this one afresh",
				i+1, r.Line(), inPath, why, out.path, rej.path)}
		}
		if bad {
			return changed(fmt.Sprintf("cannot be read now (%v), but %s holds it scored", rowErr.Err, out.path))
		}
		if c := scored.differs(held, row); c >= 0 {
			return changed(fmt.Sprintf("is not the row %s holds scored for it: column %q differs", out.path, inCols[c]))
		}
	}
	return nil
}

// settled reads back the input cells of the rows an output file holds.
type settled struct {
	csv   *csv.Reader   // a CSV output, after its header
	lines *bufio.Reader // a JSON Lines output
	cols  []string      // the input columns, which the output's begin with
}

// settledRows returns a reader of the input cells of out's rows; nil when
// out holds none, or its columns do not begin with inCols.
func settledRows(out *outFile, inCols []string) *settled {
	if out.rows == 0 || len(out.head) < len(inCols) || !slices.Equal(out.head[:len(inCols)], inCols) {
		return nil
	}
	src := records(out)
	s := &settled{cols: inCols}
	if out.format == rows.JSONL {
		s.lines = bufio.NewReaderSize(src, 64<<10)
		return s
	}
	if s.csv = csvRecords(src); s.csv == nil {
		return nil
	}
	return s
}

// records reads a file's complete records from its start, and not a
// record a kill cut short after them, which is still there (the files are
// cut once they are checked) and would read as no record of a run; its
// offset stays where it is.
func records(o *outFile) io.Reader {
	return io.NewSectionReader(o.f, 0, o.end)
}

// csvRecords reads the records of a CSV file after its header; nil when
// it has none.
func csvRecords(src io.Reader) *csv.Reader {
	cr := csv.NewReader(bufio.NewReaderSize(src, 64<<10))
	cr.FieldsPerRecord = -1 // a reject file's rows of the wrong width
	if _, err := cr.Read(); err != nil {
		return nil
	}
	return cr
}

// next returns the input cells of the next row; false when it cannot.
func (s *settled) next() ([]any, bool) {
	if s.csv != nil {
		rec, err := s.csv.Read()
		if err != nil || len(rec) < len(s.cols) {
			return nil, false
		}
		cells := make([]any, len(s.cols))
		for i := range cells {
			cells[i] = rec[i]
		}
		return cells, true
	}
	b, err := s.lines.ReadBytes('\n')
	if err != nil {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // as the input's reader does
	var m map[string]any
	if dec.Decode(&m) != nil {
		return nil, false
	}
	cells := make([]any, len(s.cols))
	for i, c := range s.cols {
		cells[i] = m[c]
	}
	return cells, true
}

// differs returns the first input column where held, a row of the output,
// is not row, or -1. A CSV output holds a cell as rows.Text writes it,
// which a CSV reader gives back but for a CR LF inside it (read as LF); a
// JSON Lines output as the input's reader reads it.
func (s *settled) differs(held, row []any) int {
	for i := range s.cols {
		var v any
		if i < len(row) {
			v = row[i]
		}
		if s.csv != nil {
			if strings.ReplaceAll(rows.Text(v), "\r\n", "\n") != held[i] {
				return i
			}
		} else if !reflect.DeepEqual(v, held[i]) {
			return i
		}
	}
	return -1
}

// rejected reads the row numbers a reject file holds, in order.
type rejected struct {
	csv   *csv.Reader   // a CSV reject file, after its header
	lines *bufio.Reader // a JSON Lines one
	key   string        // JSON Lines: the row number's key
}

// rejectedRows returns a reader of the row numbers in rej, whose second
// column, rowCol, holds them; nil when rej is not such a file.
func rejectedRows(rej *outFile, rowCol string) *rejected {
	r := &rejected{key: rowCol}
	if rej.rows == 0 {
		return r // none
	}
	if len(rej.head) < 2 || rej.head[1] != rowCol {
		return nil
	}
	src := records(rej)
	if rej.format == rows.JSONL {
		r.lines = bufio.NewReaderSize(src, 64<<10)
		return r
	}
	if r.csv = csvRecords(src); r.csv == nil {
		return nil
	}
	return r
}

// next returns the next rejected row's number, 0 after the last; false
// when the file does not read back as a reject file.
func (r *rejected) next() (int, bool) {
	var num string
	switch {
	case r.csv != nil:
		rec, err := r.csv.Read()
		if err == io.EOF {
			return 0, true
		}
		if err != nil || len(rec) < 2 {
			return 0, false
		}
		num = rec[1]
	case r.lines != nil:
		b, err := r.lines.ReadBytes('\n')
		if err == io.EOF && len(b) == 0 {
			return 0, true
		}
		var m map[string]json.RawMessage
		if err != nil || json.Unmarshal(b, &m) != nil {
			return 0, false
		}
		num = string(m[r.key])
	default:
		return 0, true // no rejects
	}
	n, err := strconv.Atoi(num)
	return n, err == nil && n > 0
}
