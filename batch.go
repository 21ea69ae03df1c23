package amlpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
)

// The engine of ScoreRows (table.go): a reader cutting the source into
// chunks, workers scoring them, and an emitter putting results back in
// input order.

// batch is one run of ScoreRows.
type batch struct {
	c      *Client
	src    RowSource
	sink   func(*Chunk) error
	o      BatchOptions
	cols   []string
	enc    *chunkEncoder
	window int           // chunks read but not yet handed to the sink, at most (when follow, at the start)
	follow bool          // the Parallelism is the default, the Client's Capacity, and follows SetEndpoints (parallelism)
	freed  chan struct{} // a chunk left the window (emit), for a reader that waits for room (room)
	total  atomic.Int64  // rows in the source; -1 until known
	told   int           // the total of emit's last Progress call

	requests atomic.Int64 // requests sent: calls that made an attempt
	split    splitState   // isolating bad rows (split.go)
	outCols  []string     // online: the output columns so far, in order (align); Classic: the first scored reply's that named them (sameColumns)
	shape    predShape    // online: the shape of the first scored chunk's predictions (align)
	width    int          // Classic: the first scored reply's number of columns, -1 before it (sameColumns)
}

func (c *Client) newBatch(src RowSource, sink func(*Chunk) error, opts *BatchOptions) (*batch, error) {
	if src == nil || sink == nil {
		return nil, errors.New("amlpool: ScoreRows: nil source or sink")
	}
	var o BatchOptions
	if opts != nil {
		o = *opts
	}
	switch {
	case o.ChunkRows < 0:
		return nil, &ConfigError{Field: "BatchOptions.ChunkRows", Problem: "negative"}
	case o.MaxChunkBytes < 0:
		return nil, &ConfigError{Field: "BatchOptions.MaxChunkBytes", Problem: "negative"}
	case o.Parallelism < 0:
		return nil, &ConfigError{Field: "BatchOptions.Parallelism", Problem: "negative"}
	case o.Parallelism > MaxParallelism:
		return nil, &ConfigError{Field: "BatchOptions.Parallelism", Problem: fmt.Sprintf("%d is over %d", o.Parallelism, MaxParallelism)}
	}
	if c.kind == Classic && o.GlobalParameters != nil {
		// Checked once here: otherwise every chunk would fail to encode,
		// with an error that does not say why.
		if _, err := marshalNoEscape(o.GlobalParameters); err != nil {
			return nil, &ConfigError{Field: "BatchOptions.GlobalParameters", Problem: "does not encode as JSON: " + err.Error()}
		}
	}
	if o.Input == "" {
		o.Input = "input1"
	}
	if o.ChunkRows == 0 {
		o.ChunkRows = DefaultChunkRows
	}
	if o.MaxChunkBytes == 0 {
		o.MaxChunkBytes = DefaultMaxChunkBytes
	}
	follow := o.Parallelism == 0
	if follow {
		o.Parallelism = min(c.Capacity(), MaxParallelism)
	}
	cols := src.Columns()
	if len(cols) == 0 {
		return nil, errors.New("amlpool: ScoreRows: the source has no columns")
	}
	b := &batch{c: c, src: src, sink: sink, o: o, cols: cols, window: 2 * o.Parallelism, follow: follow, freed: make(chan struct{}, 1),
		enc: newChunkEncoder(c.kind == Online, o.Input, cols, o.GlobalParameters)}
	b.split.init(o)
	b.width = -1
	b.total.Store(-1)
	if o.TotalRows > 0 {
		b.total.Store(int64(o.TotalRows))
	}
	return b, nil
}

// run reads chunks in this goroutine, scores them on at most Parallelism
// workers, and hands them to the sink from an emitter goroutine that
// puts them back in order. A token in window is held by every chunk from
// when it is read until it leaves the sink; that bounds memory and keeps
// the results channel from ever blocking a worker.
func (b *batch) run(ctx context.Context) (BatchStats, error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	room := b.window
	if b.follow {
		// The window grows with the Capacity: a channel of empty structs
		// costs no memory for its room. The reader keeps to twice the
		// Parallelism (read). results keeps its start size: once the
		// Capacity has grown past it, a worker may wait there while the
		// sink runs.
		room = 2 * MaxParallelism
	}
	window := make(chan struct{}, room)
	results := make(chan []*Chunk, b.window)
	w := &workers{limit: b.parallelism, jobs: make(chan func()), ended: make(chan struct{}, 1)}
	if b.follow {
		w.resized = b.c.resized.wait
	}

	var stats BatchStats
	var sinkErr error
	emitted := make(chan struct{})
	go func() {
		defer close(emitted)
		stats, sinkErr = b.emit(wctx, results, window, cancel)
	}()

	readErr := b.read(wctx, w, window, results)
	w.wait() // workers report failures in their chunks
	close(results)
	<-emitted
	stats.Requests, stats.SplitRequests = int(b.requests.Load()), int(b.split.requests.Load())
	if b.o.Progress != nil && b.told < 0 && sinkErr == nil && readErr == nil && ctx.Err() == nil {
		// The last chunk reached the sink before the reader saw the
		// source's end: say the total now.
		b.o.Progress(stats.Rows, int(b.total.Load()))
	}

	switch {
	case sinkErr != nil:
		return stats, sinkErr
	case readErr != nil:
		return stats, readErr
	case ctx.Err() != nil:
		return stats, ctx.Err()
	}
	return stats, nil
}

// read cuts the source into chunks and starts a worker for each. A bad row
// ends the chunk before it and travels alone, so that every row keeps its
// place in the order. read returns the source's error, if any; it returns
// nil when the source ends or ctx does.
func (b *batch) read(ctx context.Context, w *workers, window chan struct{}, results chan<- []*Chunk) error {
	next := 0 // index of the next row
	var bad *RowError
	for seq := 0; ; seq++ {
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		if b.follow && !b.room(ctx, window) {
			return nil
		}
		if bad != nil {
			results <- []*Chunk{b.failed(seq, next, [][]any{bad.Row}, "", bad)}
			next, bad = next+1, nil
			continue
		}
		// Room for a chunk of the default size up front, not ChunkRows:
		// a large ChunkRows (a whole file per request, say) must not
		// allocate for rows a short source never has.
		rows := make([][]any, 0, min(b.o.ChunkRows, DefaultChunkRows))
		var err error
		for len(rows) < b.o.ChunkRows {
			var row []any
			row, err = b.src.Next()
			if err == nil && len(row) != len(b.cols) {
				err = &RowError{Row: row, Err: fmt.Errorf("%d cells, want %d (one per column)", len(row), len(b.cols))}
			}
			if err != nil {
				break
			}
			rows = append(rows, row)
		}
		if errors.As(err, &bad) {
			err = nil
		}
		if len(rows) == 0 {
			<-window
			seq--
		} else {
			start := next
			next += len(rows)
			w.run(func() { results <- b.scoreChunk(ctx, seq, start, rows, results) })
		}
		if err == io.EOF {
			b.total.Store(int64(next))
			return nil
		}
		if err != nil {
			return fmt.Errorf("amlpool: read row %d: %w", next+1, err)
		}
	}
}

// scoreChunk is score for a chunk read from the source, run by a worker.
// A callback of the user's that calls runtime.Goexit in one of the
// chunk's calls (t.FailNow in a test's RoundTripper, say) ends the
// worker's goroutine, not the caller's, which Goexit was meant for: the
// chunk then fails whole, with errGoexit, on its way out, so that its
// rows are settled and the batch does not wait for them for ever.
func (b *batch) scoreChunk(ctx context.Context, seq, start int, rows [][]any, results chan<- []*Chunk) []*Chunk {
	returned := false
	defer func() {
		if !returned {
			// Goexit (or a panic, which ends the program anyway).
			results <- []*Chunk{b.failed(seq, start, rows, "", errGoexit)}
		}
	}()
	parts := b.score(ctx, seq, start, rows, nil)
	returned = true
	return parts
}

// errGoexit fails a chunk one of whose calls ended its goroutine.
var errGoexit = errors.New("amlpool: a callback called runtime.Goexit while a call for these rows ran")

// parallelism is how many requests the batch has in flight at most: its
// Parallelism or, by default, the Client's Capacity as it is now, which
// SetEndpoints changes.
func (b *batch) parallelism() int {
	if !b.follow {
		return b.o.Parallelism
	}
	return min(b.c.Capacity(), MaxParallelism)
}

// room waits, for a batch whose Parallelism follows the Capacity, until the
// window holds at most twice the Parallelism in chunks, the one just read
// included. It reports false when ctx ends first.
func (b *batch) room(ctx context.Context, window chan struct{}) bool {
	for {
		resized := b.c.resized.wait()
		if len(window) <= 2*b.parallelism() {
			return true
		}
		select {
		case <-b.freed:
		case <-resized:
		case <-ctx.Done():
			return false
		}
	}
}

// score sends one chunk and checks the reply, splitting the chunk in halves
// while its body is over MaxChunkBytes, and isolating its bad rows when the
// service blames the input (split.go). It returns the chunk's parts, in
// input order, appended to parts.
func (b *batch) score(ctx context.Context, seq, start int, rows [][]any, parts []*Chunk) []*Chunk {
	body, err := b.encode(start, rows)
	if err != nil {
		// A cell that does not encode (a NaN, say) fails its row alone,
		// naming its column; the rows around it are scored.
		i, cellErr := badCell(b.cols, rows)
		if cellErr == nil {
			return append(parts, b.failed(seq, start, rows, "", err))
		}
		if i > 0 {
			parts = b.score(ctx, seq, start, rows[:i], parts)
		}
		parts = append(parts, b.failed(seq, start+i, rows[i:i+1], "", cellErr))
		if i+1 < len(rows) {
			return b.score(ctx, seq, start+i+1, rows[i+1:], parts)
		}
		return parts
	}
	if len(body) > b.o.MaxChunkBytes {
		if len(rows) == 1 {
			return append(parts, b.failed(seq, start, rows, "", fmt.Errorf("%w: one row makes a %d-byte request, over the limit of %d", ErrRequestTooLarge, len(body), b.o.MaxChunkBytes)))
		}
		h := len(rows) / 2
		parts = b.score(ctx, seq, start, rows[:h], parts)
		return b.score(ctx, seq, start+h, rows[h:], parts)
	}
	ch := b.send(ctx, seq, start, rows, body)
	if ch.Err != nil && len(rows) > 1 && !b.split.off && inputFault(ch.Err) {
		return b.isolate(ctx, ch, parts)
	}
	return append(parts, ch)
}

// badCell returns the index of the first of rows with a cell that
// encoding/json cannot encode, and an error naming its column and why.
func badCell(cols []string, rows [][]any) (int, error) {
	var buf []byte
	for i, row := range rows {
		for j, v := range row {
			var ok bool
			if buf, ok = appendCell(buf[:0], v); ok {
				continue
			}
			_, err := marshalNoEscape(v)
			if err == nil { // cannot happen: appendCell fails only where encoding/json does
				err = errors.New("does not encode as JSON")
			}
			col := fmt.Sprintf("column %d", j+1)
			if j < len(cols) {
				col = fmt.Sprintf("column %q", cols[j])
			}
			return i, fmt.Errorf("amlpool: encode request: %s: %w", col, err)
		}
	}
	return 0, nil
}

// encode returns the request of rows, from input index start on: the
// Classic form, or for online endpoints the MLflow one (mlflow.go).
func (b *batch) encode(start int, rows [][]any) ([]byte, error) {
	return b.enc.encode(start, rows)
}

// send makes one request of rows (body, when not nil, is their encoding)
// and returns the chunk with its output or its error.
func (b *batch) send(ctx context.Context, seq, start int, rows [][]any, body []byte) *Chunk {
	if body == nil {
		var err error
		if body, err = b.encode(start, rows); err != nil {
			return b.failed(seq, start, rows, "", err)
		}
	}
	t0 := b.c.cfg.clock.Now()
	var cl call
	data, name, err := b.c.do(ctx, "amlpool.ScoreRows", body, &cl)
	elapsed := b.c.cfg.clock.Now().Sub(t0)
	sent := cl.attempts > 0 // not a call that never got a slot (its ctx ended first, say)
	if sent {
		b.requests.Add(1)
	}
	if err == nil {
		var out *Table
		var shape predShape
		if out, shape, err = b.decode(data, len(rows)); err == nil {
			if n := out.NumRows(); n != len(rows) {
				err = fmt.Errorf("the reply has %d output rows for %d input rows", n, len(rows))
			} else {
				return &Chunk{Seq: seq, Start: start, Input: rows, Output: out, Endpoint: name, Elapsed: elapsed, shape: shape, sent: true}
			}
		}
	}
	ch := b.failed(seq, start, rows, name, err)
	ch.Elapsed, ch.sent = elapsed, sent
	return ch
}

// failed returns the chunk of rows, not scored for err.
func (b *batch) failed(seq, start int, rows [][]any, endpoint string, err error) *Chunk {
	return &Chunk{Seq: seq, Start: start, Input: rows, Endpoint: endpoint,
		Err: &ChunkError{Seq: seq, FirstRow: start + 1, LastRow: start + len(rows), Endpoint: endpoint, Err: err}}
}

// decode reads the scores' table from a reply to n rows, and for an online
// reply the shape of its predictions.
func (b *batch) decode(data []byte, n int) (*Table, predShape, error) {
	if b.c.kind == Online {
		return decodeOnline(data)
	}
	resp, err := decodeBatchResponse(data, n)
	if err != nil {
		return nil, 0, err
	}
	out, err := b.output(resp)
	return out, 0, err
}

// output picks the scores' table from a reply.
func (b *batch) output(resp *Response) (*Table, error) {
	name := b.o.Output
	if name == "" {
		name = "output1"
		if len(resp.Results) == 1 {
			for n := range resp.Results {
				name = n
			}
		}
	}
	out := resp.Results[name]
	if out == nil {
		return nil, fmt.Errorf("the reply has no output %q", name)
	}
	if out.Value.isRows() {
		return nil, fmt.Errorf("output %q is in the swagger form (row objects); batch scoring needs a URL without format=swagger", name)
	}
	if err := out.Value.checkUnnamedWidths(); err != nil {
		return nil, &malformedError{fmt.Errorf("amlpool: decode response: output %q: %w", name, err)}
	}
	return &out.Value, nil
}

// emit hands chunks to the sink in input order as they come back, and
// returns what reached it. Once ctx has ended it stops at the first chunk
// with an error, since that error may be the cancellation itself: the
// chunk's rows stay unsettled for a later run. It always drains results.
func (b *batch) emit(ctx context.Context, results <-chan []*Chunk, window <-chan struct{}, cancel context.CancelCauseFunc) (BatchStats, error) {
	var st BatchStats
	var err error
	pending := make(map[int][]*Chunk, b.window)
	next := 0
	stopped := false
	for parts := range results {
		pending[parts[0].Seq] = parts
		for !stopped {
			p, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			next++
			if ctx.Err() != nil && failed(p) {
				stopped = true
				break
			}
			for _, ch := range p {
				b.align(ch)
				if err = b.sink(ch); err != nil {
					cancel(err)
					stopped = true
					break
				}
				st.Rows += len(ch.Input)
				if ch.Err != nil {
					st.Failed += len(ch.Input)
				} else {
					st.Scored += len(ch.Input)
				}
			}
			<-window
			select {
			case b.freed <- struct{}{}:
			default:
			}
			if b.o.Progress != nil && !stopped {
				b.told = int(b.total.Load())
				b.o.Progress(st.Rows, b.told)
			}
		}
	}
	return st, err
}

// sameColumns fails a scored chunk of a Classic batch whose reply has other
// columns than the batch's first scored reply: other names, when both
// replies name them (details=true), else another number of them. A Classic
// service's output columns are fixed, so other columns come from an
// endpoint of the pool that serves another model, or another version of
// it: placed by position, its values would land under the first reply's
// names, and placed by name, the batch's rows would mix the scores of two
// models. It fails as an online chunk whose predictions change shape does
// (align), naming both column lists. A reply that names no columns, after
// one that did or before, is checked by number only. It runs on the
// emitter's goroutine only.
func (b *batch) sameColumns(ch *Chunk) {
	out := ch.Output
	width := len(out.ColumnNames)
	if out.ColumnNames == nil && len(out.Values) > 0 {
		width = len(out.Values[0])
	}
	if b.width < 0 {
		b.outCols, b.width = out.ColumnNames, width
		return
	}
	same := width == b.width
	if out.ColumnNames != nil && b.outCols != nil {
		same = slices.Equal(out.ColumnNames, b.outCols)
	}
	if same {
		if b.outCols == nil {
			b.outCols = out.ColumnNames // later replies are checked by name
		}
		return
	}
	cols := func(names []string, n int) string {
		if names == nil {
			return fmt.Sprintf("%d unnamed columns", n)
		}
		return fmt.Sprintf("%q", names)
	}
	ch.Output, ch.Err = nil, &ChunkError{Seq: ch.Seq, FirstRow: ch.Start + 1, LastRow: ch.Start + len(ch.Input), Endpoint: ch.Endpoint,
		Err: fmt.Errorf("endpoint %s: the reply's columns are %s, but those of the batch's first scored rows were %s: a batch's replies must all have the same columns (do the pool's endpoints all serve one model?)",
			ch.Endpoint, cols(out.ColumnNames, width), cols(b.outCols, b.width))}
}

func failed(parts []*Chunk) bool {
	for _, ch := range parts {
		if ch.Err != nil {
			return true
		}
	}
	return false
}

// workers runs jobs on goroutines started as jobs come and kept for the
// next jobs: a chunk's call goes deep enough to grow a fresh goroutine's
// stack several times, which a kept goroutine has done once. At most
// limit() jobs run at once: a batch's Parallelism, which follows the
// Client's Capacity by default, and resized (nil for a fixed limit) wakes
// a wait for room when SetEndpoints may have raised it. run and wait are
// called from one goroutine only.
type workers struct {
	limit   func() int
	resized func() <-chan struct{}
	started int
	busy    atomic.Int32  // jobs running
	ended   chan struct{} // a job ended, for a run that waits for room
	jobs    chan func()
	wg      sync.WaitGroup
}

// run waits until fewer than limit jobs run, then hands job to an idle
// worker, to a new one while there are fewer than limit, or else waits
// for one to be idle: fewer jobs than workers run, so one soon is.
func (w *workers) run(job func()) {
	limit := 0
	for {
		var resized <-chan struct{}
		if w.resized != nil {
			resized = w.resized()
		}
		if limit = w.limit(); int(w.busy.Load()) < limit {
			break
		}
		select {
		case <-w.ended:
		case <-resized:
		}
	}
	w.busy.Add(1)
	counted := func() {
		defer func() {
			w.busy.Add(-1)
			select {
			case w.ended <- struct{}{}:
			default:
			}
		}()
		job()
	}
	select {
	case w.jobs <- counted:
		return
	default:
	}
	if w.started < limit {
		w.started++
		w.wg.Go(func() { w.work(counted) })
		return
	}
	w.jobs <- counted
}

// work runs job, if any, and then the jobs that come, until jobs is
// closed. A job that ends the goroutine (runtime.Goexit) leaves another
// worker in its place, so that there are always limit to take jobs.
func (w *workers) work(job func()) {
	done := false
	defer func() {
		if !done {
			w.wg.Go(func() { w.work(nil) })
		}
	}()
	if job != nil {
		job()
	}
	for job := range w.jobs {
		job()
	}
	done = true
}

// wait lets the workers finish their jobs and end.
func (w *workers) wait() {
	close(w.jobs)
	w.wg.Wait()
}

// broadcast wakes every goroutine waiting on it at once: fire closes the
// channel wait returned. Its zero value is ready for use.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

// wait returns a channel that the next fire closes.
func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

// fire closes the channel of those waiting, if any.
func (b *broadcast) fire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
}
