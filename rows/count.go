package rows

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"

	"github.com/amlpool/amlpool"
)

// Count returns how many rows a Reader of format f reads from r, good and
// bad: the rows and *amlpool.RowError values its Next returns before
// io.EOF. It fails as NewReader does for an input without a usable header
// (CSV) or first row (JSON Lines), and on a failed read. It reads r once and
// builds no rows, so it costs a small part of reading them: enough to count
// a file ahead for a progress bar.
func Count(f Format, r io.Reader) (int, error) {
	if f == JSONL {
		j, err := NewJSONLReader(r)
		if err != nil {
			return 0, err
		}
		return countRows(j.next)
	}
	return countCSV(r)
}

// countRows counts what next returns before io.EOF.
func countRows(next func(build bool) ([]any, error)) (int, error) {
	n := 0
	for {
		_, err := next(false)
		if err == io.EOF {
			return n, nil
		}
		if err != nil && !errors.As(err, new(*amlpool.RowError)) {
			return 0, err
		}
		n++
	}
}

// countCSV counts lines while the input has no double quote: without
// quotes, a CSVReader makes one row of each line that is not empty (good, or
// bad for its field count, UTF-8 or length). From the first line with a
// quote on, it counts with a CSVReader, which takes quoted fields as they
// come, line ends and broken quotes included.
func countCSV(r io.Reader) (int, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var kept []byte // the line being read, when longer than br's buffer
	head := false   // the header line was read
	blank := 0      // empty lines before the header
	n := 0
	for {
		frag, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) || (kept != nil && len(frag) > 0) {
			kept = append(kept, frag...)
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			frag = kept
		}
		if err != nil && err != io.EOF && !errors.Is(err, bufio.ErrBufferFull) {
			return 0, err
		}
		line := frag
		if !head && blank == 0 { // the first line: a byte-order mark is no content
			line = bytes.TrimPrefix(line, bom)
		}
		if bytes.IndexByte(line, '"') >= 0 {
			return countCSVFrom(io.MultiReader(bytes.NewReader(frag), br), head, blank, n)
		}
		kept = kept[:0]
		if content := bytes.TrimSuffix(line, []byte("\n")); len(content) > 0 && !(len(content) == 1 && content[0] == '\r') {
			if !head {
				// The header: NewCSVReader says whether it will do, naming
				// its line.
				pre := strings.NewReader(strings.Repeat("\n", blank))
				if _, err := NewCSVReader(io.MultiReader(pre, bytes.NewReader(frag))); err != nil {
					return 0, err
				}
				head = true
			} else {
				n++
			}
		} else if !head {
			blank++
		}
		if err == io.EOF {
			if !head {
				_, err := NewCSVReader(bytes.NewReader(nil)) // the empty file's error
				return 0, err
			}
			return n, nil
		}
	}
}

// countCSVFrom counts the rows of r, which starts at a line start, with a
// CSVReader, after the n rows before it. Without head, r starts with the
// header, after blank empty lines (and the input's byte-order mark, if
// any), which count for the line numbers of its errors.
func countCSVFrom(r io.Reader, head bool, blank, n int) (int, error) {
	var c *CSVReader
	if head {
		c = &CSVReader{rec: &recorder{src: bufio.NewReaderSize(r, 64<<10), line: 1}}
		c.restart(0, 1)
	} else {
		var err error
		pre := strings.NewReader(strings.Repeat("\n", blank))
		if c, err = NewCSVReader(io.MultiReader(pre, r)); err != nil {
			return 0, err
		}
	}
	m, err := countRows(c.next)
	return n + m, err
}
