package rows

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
)

// Scan reads a row file that a Writer wrote, possibly cut short by a kill,
// and finds its complete records: those ending with a line end. It returns
// the header (CSV: nil when the file has no complete header line; JSON
// Lines: the first complete record's keys, nil when there is none), the
// number of complete records after the CSV header, and the offset where
// they end.
// Whatever lies past end is the start of a record that was never finished.
// A malformed record followed by others means the file is not such a file:
// Scan then fails, naming the line.
func Scan(f Format, r io.ReaderAt, size int64) (head []string, n int, end int64, err error) {
	if f == JSONL {
		return scanJSONL(io.NewSectionReader(r, 0, size))
	}
	return scanCSV(r, size)
}

func scanCSV(r io.ReaderAt, size int64) ([]string, int, int64, error) {
	cr := csv.NewReader(io.NewSectionReader(r, 0, size))
	cr.FieldsPerRecord = -1
	var head []string
	n := 0
	var end int64
	last := make([]byte, 1)
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			return head, n, end, nil
		}
		off := cr.InputOffset()
		if err != nil {
			// A record cut short mid-quote: fine at the very end only.
			if _, err2 := cr.Read(); err2 == io.EOF {
				return head, n, end, nil
			}
			return nil, 0, 0, err
		}
		if _, err := r.ReadAt(last, off-1); err != nil || last[0] != '\n' {
			return head, n, end, nil // the last record, without its line end
		}
		if head == nil {
			head = rec
		} else {
			n++
		}
		end = off
	}
}

func scanJSONL(r io.Reader) ([]string, int, int64, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	n, line := 0, 0
	var head []string
	var end int64
	for {
		b, err := br.ReadBytes('\n')
		if len(b) == 0 && err == io.EOF {
			return head, n, end, nil
		}
		if err != nil && err != io.EOF {
			return nil, 0, 0, err
		}
		line++
		if err == io.EOF {
			return head, n, end, nil // the last line, without its end
		}
		keys, _, perr := parseObject(bytes.TrimSpace(b))
		if perr != nil {
			if _, err := br.Peek(1); errors.Is(err, io.EOF) {
				return head, n, end, nil
			}
			return nil, 0, 0, fmt.Errorf("line %d: %w", line, perr)
		}
		if head == nil {
			head = append(make([]string, 0, len(keys)), keys...) // not nil, even with no key
		}
		n++
		end += int64(len(b))
	}
}
