package main

import (
	"encoding/base64"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
)

// outFile is the scored output or the reject file of a run, opened for
// appending after whatever complete records an earlier run left.
type outFile struct {
	path   string
	format rows.Format
	f      *os.File
	w      rows.Writer
	head   []string // the header on disk (CSV) or expected (JSONL); nil until written
	rows   int      // complete records after the header (handed to w until close)
	lost   int      // records handed to w that a failed write kept from the file
	end    int64    // where the complete records end, which cut cuts the file to
	// recount is why, after a failed write, the file's records could not
	// be counted: rows is then what was handed to w, more than the file
	// may hold, and lost is unknown.
	recount error
	// made is the file when the run made it (nil when it was there), which
	// close removes when it stays empty. keepFound keeps a file that was
	// there, empty, which close removes otherwise (see close).
	made      *madeFile
	keepFound bool
}

// openOut opens path for a run. Without resume the file must not hold
// records already (so that a run never clobbers another's work). With
// resume, a record cut short by a kill is cut off, and the complete ones
// are counted.
func openOut(path string, format rows.Format, resume bool) (*outFile, error) {
	o, err := openOutAsIs(path, format, resume)
	if err != nil {
		return nil, err
	}
	if err := o.cut(); err != nil {
		o.f.Close()
		o.made.remove()
		return nil, err
	}
	return o, nil
}

// openOutAsIs is openOut without the cut: a run refused once its files
// are open (one that no run on this input wrote, given to --resume by
// mistake, whose last line has no line end) leaves them as they were.
func openOutAsIs(path string, format rows.Format, resume bool) (*outFile, error) {
	f, made, err := createFile(path, os.O_RDWR)
	if err != nil {
		return nil, err
	}
	o := &outFile{path: path, format: format, f: f, made: made}
	fail := func(err error) (*outFile, error) { f.Close(); made.remove(); return nil, err }
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if st.Size() > 0 && !resume {
		return fail(fmt.Errorf("%s already exists and is not empty: add --resume to continue it, or remove it", path))
	}
	head, n, end, err := rows.Scan(format, f, st.Size())
	if err != nil {
		return fail(fmt.Errorf("%s: cannot resume: %w", path, err))
	}
	o.head, o.rows, o.end = head, n, end // JSON Lines: the first record's keys stand for a header
	return o, nil
}

// cut cuts off what follows the file's complete records (a record a kill
// cut short), where the run goes on.
func (o *outFile) cut() error {
	if err := o.f.Truncate(o.end); err != nil {
		return err
	}
	_, err := o.f.Seek(o.end, 0)
	return err
}

// checkInputColumns refuses a resumed file whose header (JSON Lines: its
// first record's keys) lacks one of the input's columns: no run on this
// input wrote it, and its records are not rows of this input settled. It
// names only the columns it lacks: the file's first line may be anything
// (a file given to --out by mistake, that holds a secret).
func (o *outFile) checkInputColumns(inCols []string) error {
	if lacks := o.lacks(inCols); lacks != nil {
		return fmt.Errorf("%s: cannot resume: its first line is not the %s of a run on this input: it lacks the input's columns %q; "+
			"is it the file the run to resume wrote?", o.path, o.headName(), lacks)
	}
	return nil
}

// lacks returns the input columns that the file's header lacks; nil for a
// file without one.
func (o *outFile) lacks(inCols []string) []string {
	if o.head == nil {
		return nil
	}
	var lacks []string
	for _, c := range inCols {
		if !slices.Contains(o.head, c) {
			lacks = append(lacks, c)
		}
	}
	return lacks
}

// headName is what the file's header is called: JSON Lines has none, its
// first record's keys stand for one.
func (o *outFile) headName() string {
	if o.format == rows.JSONL {
		return "keys"
	}
	return "header"
}

// start makes the writer for records with cols, writing the header line if
// the file has none yet. A resumed file must have been written with the
// same columns (JSON Lines: its first record has them as keys). inCols are the input's columns, which cols hold.
//
// When the header differs, it is quoted only if it holds every input
// column: then it is the header of a run on this input (with other output
// columns, say). Otherwise the file is not one this run's input gave, and
// its first line may be anything (a file given to --out by mistake, that
// holds a secret): the error names only the input columns it lacks.
func (o *outFile) start(cols, inCols []string) error {
	if o.w != nil {
		return nil
	}
	if o.head != nil && !slices.Equal(o.head, cols) {
		lacks := o.lacks(inCols)
		what, differ := o.headName(), "differs"
		if o.format == rows.JSONL {
			differ = "differ"
		}
		if len(lacks) > 0 {
			return fmt.Errorf("%s: cannot resume: its first line is not the %s of a run on this input: it lacks the input's columns %q "+
				"(this run's %s: %q); is it the file the run to resume wrote?", o.path, what, lacks, what, cols)
		}
		return fmt.Errorf("%s: cannot resume: its %s %q %s from this run's %q", o.path, what, o.head, differ, cols)
	}
	w, err := rows.NewWriter(o.format, o.f, cols, o.head == nil)
	if err != nil {
		return err
	}
	o.w, o.head = w, cols
	return nil
}

func (o *outFile) flush() error {
	if o.w == nil {
		return nil
	}
	return o.w.Flush()
}

// close flushes and closes the file, removing it when it stayed empty (a
// run without rejects leaves no reject file): the file the run made, where
// a symlink to a missing file made it too (the link stays, as it was), or
// an empty file it found at the path itself, unless keepFound. A symlink
// to a file that was there is left as it is, with its file. After a
// failed write (a full disk, a file size limit: a failure sticks, so the
// flush fails too) it counts the complete records the file holds, as
// --resume will, so that rows is what reached the file; when that count
// fails, recount says why.
func (o *outFile) close() error {
	err := o.flush()
	if err != nil {
		st, serr := o.f.Stat()
		if serr == nil {
			var n int
			if _, n, _, serr = rows.Scan(o.format, o.f, st.Size()); serr == nil {
				o.lost, o.rows = o.rows-n, n
			}
		}
		o.recount = serr
	}
	st, serr := o.f.Stat()
	err = errors.Join(err, o.f.Close())
	if serr == nil && st.Size() == 0 {
		if o.made != nil {
			o.made.remove()
		} else if at, lerr := os.Lstat(o.path); lerr == nil && at.Mode().IsRegular() && os.SameFile(at, st) && !o.keepFound {
			os.Remove(o.path)
		}
	}
	return err
}

// writer is the sink of a score run: scored rows to out, failed rows to
// rejects, in input order. Whenever it switches from one file to the other
// it flushes the one it leaves, so that whatever a kill leaves on disk is
// an input prefix: every row up to some point is in one file or the other,
// and no later row is in either. A resumed run counts both files' records
// and skips that many input rows.
type writer struct {
	out, rej *outFile
	inCols   []string
	inFormat rows.Format
	port     string   // output port, for naming clashing columns
	keep     []string // service columns to keep; nil keeps all
	byName   bool     // online: later replies' columns are found by name (see columns)
	lines    *lineLog
	base     int          // rows an earlier run settled: row numbers count them too
	say      func(string) // prints a line of its own; nil says nothing

	outCols []string // output columns, set by the first scored chunk
	pick    []int    // index in the first reply of each kept column
	names   []string // the first reply's column names
	last    *outFile // the file written last
	first   *firstFailure

	// byName: the columns of the reply last seen, where the output's are in
	// them (-1 for none), and the later columns left out so far.
	lastNames []string
	lastPick  []int
	left      []string
}

// switchTo flushes the file written last when the next record goes to the
// other one.
func (w *writer) switchTo(o *outFile) error {
	if w.last != nil && w.last != o {
		if err := w.last.flush(); err != nil {
			return err
		}
	}
	w.last = o
	return nil
}

func (w *writer) sink(ch *amlpool.Chunk) error {
	var pick []int
	if ch.Err == nil {
		var err error
		if pick, err = w.columns(ch); err != nil {
			ch.Err = &amlpool.ChunkError{Seq: ch.Seq, FirstRow: ch.Start + 1, LastRow: ch.Start + len(ch.Input), Endpoint: ch.Endpoint, Err: err}
		}
	}
	if ch.Err != nil {
		return w.reject(ch)
	}
	if err := w.switchTo(w.out); err != nil {
		return err
	}
	if err := w.out.start(append(slices.Clip(w.inCols), w.outCols...), w.inCols); err != nil {
		return err
	}
	rec := make([]any, 0, len(w.inCols)+len(pick))
	for i, in := range ch.Input {
		rec = append(rec[:0], in...)
		for _, j := range pick {
			var v any // empty: a key this prediction lacks
			if j >= 0 {
				v = ch.Output.Values[i][j]
			}
			rec = append(rec, v)
		}
		if err := w.out.w.Write(rec); err != nil {
			return err
		}
	}
	w.out.rows += len(ch.Input)
	w.lines.forget(ch.Start + len(ch.Input))
	return nil
}

// columns works out the output columns from the first reply, and returns
// where each is in ch's reply. The first reply fixes them, as a CSV header
// cannot grow. A later Classic reply has the same columns: ScoreRows fails
// a chunk whose reply has others, naming both lists. A later
// online reply (byName) may have others, from predictions that are objects
// with keys of their own: the output's columns are found in it by name, a
// column it lacks is left empty (-1), and one the first reply had not is
// left out, which is said once per column.
func (w *writer) columns(ch *amlpool.Chunk) ([]int, error) {
	t := ch.Output
	width := len(t.ColumnNames)
	if t.ColumnNames == nil && len(t.Values) > 0 {
		width = len(t.Values[0])
	}
	if w.outCols == nil {
		// Nothing is kept until the columns are known: a reply that lacks
		// one of outputColumns fails its chunk, and the next one starts
		// afresh.
		names := t.ColumnNames
		if names == nil { // a reply without details=true names no columns
			for i := range width {
				names = append(names, w.port+"."+strconv.Itoa(i+1))
			}
		}
		var pick []int
		if w.keep != nil {
			for _, k := range w.keep {
				j := slices.Index(names, k)
				if j < 0 {
					return nil, fmt.Errorf("the reply has no column %q (config outputColumns); it has %q", k, names)
				}
				pick = append(pick, j)
			}
		} else {
			for j := range names {
				pick = append(pick, j)
			}
		}
		outCols := make([]string, 0, len(pick)) // not nil: set, even with no column
		for _, j := range pick {
			name := names[j]
			for slices.Contains(w.inCols, name) || slices.Contains(outCols, name) {
				// The service echoes an input column: prefixed until no
				// other column has the name, as no column may appear twice
				// (a JSON Lines object could not be read back, nor resumed).
				name = w.port + "." + name
			}
			outCols = append(outCols, name)
		}
		w.pick, w.outCols, w.names = pick, outCols, t.ColumnNames
	}
	if w.byName && t.ColumnNames != nil && !slices.Equal(t.ColumnNames, w.names) {
		return w.repick(ch), nil
	}
	return w.pick, nil
}

// repick finds the output's columns by name in an online reply whose
// columns differ from the first reply's.
func (w *writer) repick(ch *amlpool.Chunk) []int {
	names := ch.Output.ColumnNames
	if slices.Equal(names, w.lastNames) {
		return w.lastPick
	}
	pick := make([]int, len(w.pick))
	for i, j := range w.pick {
		pick[i] = slices.Index(names, w.names[j])
	}
	w.lastNames, w.lastPick = names, pick
	if w.keep != nil {
		return pick // the config chose the columns
	}
	var added []string
	for _, name := range names {
		if !slices.Contains(w.names, name) && !slices.Contains(w.left, name) {
			added = append(added, name)
		}
	}
	if added != nil && w.say != nil {
		quoted := make([]string, len(added))
		for i, name := range added {
			quoted[i] = strconv.Quote(name)
		}
		w.say(fmt.Sprintf("amlpool score: from row %d on, the replies have %s %s, which the first reply had not: not written, "+
			"as the output keeps the first reply's columns; to choose the columns, list them in the config's \"outputColumns\"",
			w.base+ch.Start+1, plural(len(added), "column", "columns"), strings.Join(quoted, ", ")))
	}
	w.left = append(w.left, added...)
	return pick
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// rejectColumns returns the reject file's columns: line, row, error and
// text (the text of a line that could not be read as a row, which its
// cells, split loosely or not at all, cannot give back), then the input's.
// A name the input uses already gets a leading underscore.
func rejectColumns(inCols []string) []string {
	meta := []string{"line", "row", "error", "text"}
	for i, m := range meta {
		for slices.Contains(inCols, m) {
			m = "_" + m
		}
		meta[i] = m
	}
	return append(meta, inCols...)
}

// startRejects starts the reject file. A CSV reject file of a CSV input
// written before CSV rejects had a text column, resumed, goes on in its
// own columns, rather than stopping a run that may have scored much: it
// holds every row given to it still, a bad line with its cells split
// loosely, as then; the run says so. (A JSON Lines line that is not a row
// has no cells: without text it would be lost, so such a file is refused.)
func (w *writer) startRejects() error {
	if w.rej.w != nil {
		return nil
	}
	cols := rejectColumns(w.inCols)
	if old := slices.Delete(slices.Clone(cols), 3, 4); w.rej.format == rows.CSV && w.inFormat == rows.CSV && slices.Equal(w.rej.head, old) {
		if w.say != nil {
			w.say(fmt.Sprintf("amlpool score: %s has no %q column (an earlier amlpool wrote it): rejects go on in its columns, "+
				"where a line that cannot be split into cells keeps only its cells, split loosely", w.rej.path, cols[3]))
		}
		cols = old
	}
	return w.rej.start(cols, w.inCols)
}

// reject writes the rows of a failed chunk with their input line and row
// number and the error. The line and row are columns of their own, so the
// error is the cause without the row numbers ScoreRows counts (which start
// again at 1 in a resumed run).
func (w *writer) reject(ch *amlpool.Chunk) error {
	rowErr, isRowErr := errors.AsType[*amlpool.RowError](ch.Err)
	cause := ch.Err
	if ce, ok := errors.AsType[*amlpool.ChunkError](ch.Err); ok {
		cause = ce.Err
	}
	msg := cause.Error()
	if isRowErr {
		msg = rowErr.Err.Error()
	}
	if w.first == nil {
		w.first = &firstFailure{line: w.lines.line(ch.Start), row: w.base + ch.Start + 1, err: msg}
		if isRowErr {
			w.first.line = rowErr.Line
		}
	}
	if err := w.switchTo(w.rej); err != nil {
		return err
	}
	if err := w.startRejects(); err != nil {
		return err
	}
	hasText := len(w.rej.head) > len(w.inCols)+3 // false only in a reject file an earlier amlpool wrote (startRejects)
	for i, in := range ch.Input {
		idx := ch.Start + i
		line := w.lines.line(idx)
		if isRowErr {
			line = rowErr.Line
		}
		rec := []any{line, w.base + idx + 1, msg}
		var text string // the row as it stands, where its cells cannot hold it
		if isRowErr {
			text = rowErr.Text
		}
		if len(in) == 0 { // a line read into no cells (not JSON, too long): empty ones, under every column
			in = make([]any, len(w.inCols))
		}
		if w.rej.format == rows.JSONL && len(in) != len(w.inCols) {
			// JSON Lines keys need a full row: the cells that fit go
			// under their columns, and all of them, as a CSV line, to
			// text, so that none is lost.
			if text == "" {
				text = csvLine(in)
			}
			in = append(slices.Clip(in[:min(len(in), len(w.inCols))]), make([]any, max(0, len(w.inCols)-len(in)))...)
		}
		if hasText {
			var t any // null (CSV: empty) unless the row could not be read as it stands
			if text != "" {
				t = text
			}
			rec = append(rec, t)
		}
		rec = append(rec, in...)
		if w.rej.format == rows.JSONL {
			for j := 3; j < len(rec); j++ { // text and cells: not valid UTF-8, they go so that they survive
				rec[j] = jsonSafe(rec[j])
			}
		}
		if err := w.rej.w.Write(rec); err != nil {
			return err
		}
	}
	w.rej.rows += len(ch.Input)
	if err := w.rej.flush(); err != nil { // rejects are rare: flush at once
		return err
	}
	w.lines.forget(ch.Start + len(ch.Input))
	return nil
}

// jsonSafe returns a cell as a JSON Lines reject file writes it: a string
// that is not valid UTF-8, which a JSON string cannot hold (an encoder
// would put U+FFFD for its bad bytes), becomes {"base64": its bytes in
// standard base64}; anything else is as it is. No such object can be taken
// for a cell of the input: a CSV input's cells are strings, and a JSON
// Lines input that is not valid UTF-8 is not read into cells at all (its
// line is the text, a string otherwise).
func jsonSafe(v any) any {
	if s, ok := v.(string); ok && !utf8.ValidString(s) {
		return map[string]string{"base64": base64.StdEncoding.EncodeToString([]byte(s))}
	}
	return v
}

// csvLine returns cells as one CSV record without its line end.
func csvLine(cells []any) string {
	var b strings.Builder
	cw := csv.NewWriter(&b)
	rec := make([]string, len(cells))
	for i, v := range cells {
		rec[i] = rows.Text(v)
	}
	cw.Write(rec)
	cw.Flush()
	return strings.TrimSuffix(b.String(), "\n")
}

// firstFailure is the first row rejected, for the run's summary.
type firstFailure struct {
	line, row int
	err       string
}

func (f *firstFailure) String() string {
	if f.line > 0 {
		return fmt.Sprintf("line %d (row %d): %s", f.line, f.row, f.err)
	}
	return fmt.Sprintf("row %d: %s", f.row, f.err)
}

// lineLog remembers the input line of each row between reading it and
// writing it, for the reject file. Rows are noted and forgotten in order, so
// it is a queue; it holds at most the batch's read-ahead. Rows mostly sit on
// consecutive lines, so it keeps runs: a run says on which line a row is,
// and each row after it, up to the next run, on the line after. note is
// called from the reader's goroutine only, and takes the lock only to start
// a run; line and forget are called from the sink's.
type lineLog struct {
	mu    sync.Mutex // guards first and runs
	first int        // rows before it are forgotten
	runs  []lineRun  // in row order; runs[0] may start before first

	// The reader's own: the row and line that would extend the last run.
	next, nextLine int
	any            bool // a row was noted
}

type lineRun struct{ row, line int }

func (l *lineLog) note(idx, line int) {
	if !l.any || idx != l.next || line != l.nextLine {
		l.mu.Lock()
		l.runs = append(l.runs, lineRun{idx, line})
		l.mu.Unlock()
		l.any = true
	}
	l.next, l.nextLine = idx+1, line+1
}

// line returns the line of row idx, noted and not forgotten; 0 for a row
// forgotten.
func (l *lineLog) line(idx int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := sort.Search(len(l.runs), func(i int) bool { return l.runs[i].row > idx }) - 1
	if idx < l.first || i < 0 {
		return 0
	}
	return l.runs[i].line + idx - l.runs[i].row
}

// forget drops the lines of rows before end.
func (l *lineLog) forget(end int) {
	l.mu.Lock()
	l.first = max(l.first, end)
	k := 0
	for k+1 < len(l.runs) && l.runs[k+1].row <= l.first {
		k++
	}
	l.runs = l.runs[k:]
	if cap(l.runs) > 4096 && len(l.runs) < cap(l.runs)/4 {
		l.runs = slices.Clone(l.runs) // let the dropped front go
	}
	l.mu.Unlock()
}

// countingSource is the input reader, skipping rows a resumed run already
// settled and noting each row's line.
type countingSource struct {
	r     rows.Reader
	next  int // index of the next row, as ScoreRows counts
	lines *lineLog
}

func (s *countingSource) Columns() []string { return s.r.Columns() }

func (s *countingSource) Next() ([]any, error) {
	row, err := s.r.Next()
	if _, bad := errors.AsType[*amlpool.RowError](err); err == nil || bad {
		s.lines.note(s.next, s.r.Line())
		s.next++
	}
	return row, err
}
