package amlpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// This file scores many rows: it cuts a stream of rows into chunks, sends
// the chunks through the pool in parallel and hands the results on in input
// order, without ever holding more than a window of chunks in memory.

const (
	// DefaultChunkRows is how many rows go in one request unless
	// BatchOptions.ChunkRows says otherwise: small enough for a quick reply
	// and an even spread, large enough that per-call overhead stays small.
	DefaultChunkRows = 100
	// DefaultMaxChunkBytes is the largest request body a batch sends: the
	// service's 4 MB payload limit (docs/azureml.md), in decimal megabytes to
	// stay on the safe side of either reading.
	DefaultMaxChunkBytes = 4_000_000
	// MaxParallelism is the largest BatchOptions.Parallelism: each request
	// in flight holds a chunk and places in the batch's window, which is
	// sized up front.
	MaxParallelism = 1 << 16
)

// RowSource yields the rows of a batch, one at a time, in input order.
// ScoreRows calls its methods from one goroutine only.
type RowSource interface {
	// Columns returns the input column names. Every row has one cell per
	// column, in this order.
	Columns() []string
	// Next returns the next row, or io.EOF after the last one. A *RowError
	// reports one row that could not be read (a ragged CSV line, say):
	// ScoreRows hands that row to the sink as failed and reads on. Any other
	// error stops the batch.
	Next() ([]any, error)
}

// BatchOptions tunes ScoreRows and ScoreTable. A nil *BatchOptions, like the
// zero value, means every default.
type BatchOptions struct {
	// Input is the service's input port. Default: "input1".
	Input string
	// Output is the output port whose table holds the scores. Default: the
	// reply's only port; "output1" when the reply has several.
	Output string
	// GlobalParameters go with every request. Default: none ({}). A value
	// that does not encode as JSON (a NaN, say) is a *ConfigError.
	// Input, Output and GlobalParameters are the Classic form's: an online
	// Client's MLflow requests have no ports or parameters, and ignore them.
	GlobalParameters map[string]any
	// ChunkRows is how many rows go in one request. Default:
	// DefaultChunkRows.
	ChunkRows int
	// MaxChunkBytes bounds a request body. A chunk that encodes larger is
	// split in halves until each part fits; a single row that does not fit
	// fails with ErrRequestTooLarge. Default: DefaultMaxChunkBytes.
	MaxChunkBytes int
	// Parallelism is how many requests are in flight at most, up to
	// MaxParallelism. Default: the Client's Capacity, which keeps every
	// slot busy and none oversubscribed; it follows SetEndpoints while the
	// batch runs, so that the slots of an endpoint added meanwhile are
	// used too.
	Parallelism int
	// NoSplit turns off the isolation of bad rows. By default a chunk whose
	// request fails with the input's fault (HTTP 400: one row the model
	// cannot take fails the whole request) is split, and halves of it are
	// sent until each bad row stands alone: the good rows are scored, and
	// each bad row fails alone with the service's message for it. A chunk
	// with one bad row costs at most ⌈log2 ChunkRows⌉ + 2 extra requests,
	// and a run of bad rows about two per row; they go through the pool
	// like any call (slots, retries, retry budget, the ctx's priority).
	// Splitting stops for the rest of the batch when its first split
	// requests all fail, 3 × (⌊log2 ChunkRows⌋ + 2) of them: the input is
	// then wrong as a whole (a column the model lacks, say), not single
	// rows. Until a split request has succeeded, chunks are
	// searched one at a time, so that verdict and its cost do not depend on
	// Parallelism. With NoSplit, such a chunk fails whole.
	NoSplit bool
	// TotalRows is how many rows the source holds, when known, for
	// Progress. Default: unknown until the source ends.
	TotalRows int
	// Progress, when set, is called after each chunk reaches the sink with
	// the rows settled so far (scored or failed) and the total, or -1 while
	// the total is unknown. When the last chunk reaches the sink before the
	// source's end is seen (its last chunk was full, say), it is called once
	// more at the end, with the same rows and the total, so that a batch that
	// ends without an error always reports its total last. It is called from
	// one goroutine at a time.
	Progress func(done, total int)
}

// Chunk is a run of consecutive input rows that went, or should have gone,
// in one request, with its outcome. The sink of ScoreRows receives every
// input row in exactly one Chunk, in input order.
type Chunk struct {
	Seq   int     // chunk number, from 0; the parts of a chunk split to fit MaxChunkBytes or to isolate bad rows share it
	Start int     // index of the chunk's first row in the input, from 0
	Input [][]any // the input rows
	// Output is the reply's table: one row per input row, in the same order,
	// each with one cell per column name or, in a reply without names
	// (no details=true), as many cells as the first. It is nil when Err is
	// set.
	Output *Table
	// Endpoint is the name of the endpoint of the chunk's last attempt:
	// the one that answered when it was scored, and when it failed the
	// one its call last went to, though the call then ended waiting for a
	// slot for its retry (WithMaxWait, say); "" for a chunk never sent.
	Endpoint string
	// Elapsed is how long the call took, from asking for a slot to the end of
	// the reply, retries included; 0 for rows never sent. Rows failed
	// together once the isolation of bad rows stopped (BatchOptions.NoSplit)
	// have the Endpoint, error and Elapsed of the last request that held
	// them.
	Elapsed time.Duration
	// Err is a *ChunkError when these rows were not scored: the call failed
	// after retries, the reply did not fit the request (a row short, or
	// rows of several widths: ErrMalformedResponse), an online reply's
	// predictions are of another shape (plain values, arrays, objects) than
	// those of the batch's first scored chunk, a Classic reply's columns are
	// not those of the batch's first scored chunk (other names, or when
	// either reply names none, another number of them: the error names
	// both; a service's columns are fixed, so such a reply comes from an
	// endpoint serving another model), the service blamed
	// these rows (a bad row isolated, see BatchOptions.NoSplit), a cell
	// of the row does not encode as JSON (a NaN, say: the row fails alone,
	// its column named, and the rows around it are scored), or (wrapping a
	// *RowError) the source could not read the row.
	Err error

	shape predShape // online: the shape of Output's predictions
	sent  bool      // its request was sent: its call made an attempt (batch.send)
}

// BatchStats counts what a batch did with its rows, and the requests it
// made for them.
type BatchStats struct {
	Rows          int // rows the sink took (its call returned nil): Scored + Failed
	Scored        int // rows with an output row
	Failed        int // rows in failed chunks
	Requests      int // requests sent (each may have made several attempts), SplitRequests included; not those whose ctx ended while they waited for a slot
	SplitRequests int // requests sent to isolate bad rows (see BatchOptions.NoSplit)
}

// Capacity returns how many calls the Client's endpoints take at once: the
// sum of their MaxConcurrentCalls.
func (c *Client) Capacity() int { return c.pool.Set().Total() }

// ScoreRows scores every row of src and hands the results to sink, in input
// order. It reads src in chunks of ChunkRows rows, sends up to Parallelism
// chunks at a time through the pool (so chunks wait for free slots like any
// call, and fail over and retry like any call), and calls sink once per
// chunk (or part of a split chunk), never concurrently, in input order.
// Its requests wait for slots at ctx's priority (WithPriority): run a batch
// under WithPriority(ctx, PriorityLow) and the Client's other calls go
// before its waiting chunks, while it still uses every slot they leave.
//
// Memory stays flat however long src is: ScoreRows reads ahead at most twice
// Parallelism chunks, and a chunk leaves memory once sink returns.
//
// A chunk that fails does not stop the batch: sink receives it with a
// *ChunkError naming its rows, and the other chunks go on. So does a
// chunk one of whose calls ran a callback of yours that called
// runtime.Goexit (t.FailNow in a test's RoundTripper, say): it ends the
// worker's goroutine, not the batch. The batch stops
// early when ctx ends, when src returns an error other than *RowError, or
// when sink returns an error (which is then the error returned; the rows
// of the chunk it refused are not counted as taken). After a source error,
// chunks already sent still reach the sink; after ctx ends, chunks that
// were cut short do not, nor does anything after them. So the rows the
// sink took are always a prefix of the input, counted in the returned
// BatchStats, and a later run can resume after them.
func (c *Client) ScoreRows(ctx context.Context, src RowSource, sink func(*Chunk) error, opts *BatchOptions) (BatchStats, error) {
	b, err := c.newBatch(src, sink, opts)
	if err != nil {
		return BatchStats{}, err
	}
	return b.run(ctx)
}

// TableResult is what ScoreTable returns.
type TableResult struct {
	// Output has one row per input row, in input order: Output.Values[i]
	// scores input row i, or is nil when row i is in a failed chunk. Its
	// ColumnNames and ColumnTypes are those of the first scored reply that
	// has ColumnNames; every scored row has one cell per column. Classic
	// replies all have those columns: a chunk whose reply has others fails
	// (see Chunk.Err). An online batch's may grow, from predictions that
	// are objects with keys of their own: its columns are then the first
	// scored reply's and, after them, those later ones added, and rows without a column get nil cells there.
	Output *Table
	// Failures are the failed chunks, in input order. Their rows are
	// numbered from 1: Output.Values[f.FirstRow-1 : f.LastRow] are nil.
	Failures []*ChunkError
	Stats    BatchStats
}

// ScoreTable scores every row of in, a classic table (ColumnNames and
// Values), as ScoreRows does, and gathers the results in memory: it is the
// form for tables that fit in memory anyway. opts.TotalRows is ignored.
//
// Failed chunks do not make an error: they are listed in Failures and their
// output rows are nil. The error is for an unusable table and for ctx
// ending; in the latter case the result holds the rows done so far.
func (c *Client) ScoreTable(ctx context.Context, in *Table, opts *BatchOptions) (*TableResult, error) {
	switch {
	case in == nil:
		return nil, errors.New("amlpool: ScoreTable: nil table")
	case in.isRows() || in.Rows != nil:
		return nil, errors.New("amlpool: ScoreTable: the table must be classic (ColumnNames and Values), not row objects")
	case len(in.ColumnNames) == 0:
		return nil, errors.New("amlpool: ScoreTable: the table has no ColumnNames")
	}
	if err := in.checkShape(); err != nil {
		return nil, fmt.Errorf("amlpool: ScoreTable: %w", err)
	}
	var o BatchOptions
	if opts != nil {
		o = *opts
	}
	o.TotalRows = len(in.Values)
	res := &TableResult{Output: &Table{Values: make([][]any, len(in.Values))}}
	sink := func(ch *Chunk) error {
		if ch.Err != nil {
			var ce *ChunkError
			errors.As(ch.Err, &ce)
			res.Failures = append(res.Failures, ce)
			return nil
		}
		switch {
		case res.Output.ColumnNames == nil:
			res.Output.ColumnNames, res.Output.ColumnTypes = ch.Output.ColumnNames, ch.Output.ColumnTypes
		case len(ch.Output.ColumnNames) > len(res.Output.ColumnNames):
			// A later chunk of an online batch added columns (align); a
			// Classic one cannot (sameColumns). The types go with the
			// names they describe.
			res.Output.ColumnNames, res.Output.ColumnTypes = ch.Output.ColumnNames, ch.Output.ColumnTypes
		}
		copy(res.Output.Values[ch.Start:], ch.Output.Values)
		return nil
	}
	st, err := c.ScoreRows(ctx, &tableSource{t: in}, sink, &o)
	res.Stats = st
	res.Output.pad()
	return res, err
}

// pad gives every row that is not nil one cell per column name: rows
// scored before an online batch's later chunks added columns lack them.
func (t *Table) pad() {
	for i, row := range t.Values {
		if row != nil && len(row) < len(t.ColumnNames) {
			t.Values[i] = append(row, make([]any, len(t.ColumnNames)-len(row))...)
		}
	}
}

// tableSource reads the rows of an in-memory table.
type tableSource struct {
	t    *Table
	next int
}

func (s *tableSource) Columns() []string { return s.t.ColumnNames }

func (s *tableSource) Next() ([]any, error) {
	if s.next == len(s.t.Values) {
		return nil, io.EOF
	}
	s.next++
	return s.t.Values[s.next-1], nil
}
