package amlpool

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net/http"
	"sync/atomic"
)

// This file isolates the bad rows of a batch. One row the model cannot
// score makes the service answer 400 for its whole request, so without
// this a single bad row would cost every row of its chunk. A chunk that
// fails with the input's fault is searched for the row to blame: halves of
// the part known to hold it are sent until it stands alone, the good rows
// before it are scored on the way, and the rows after it go together in one
// request afterwards, which starts the search again if it fails too, at the
// first of them alone. A chunk of n rows with one bad row costs at most
// ⌈log2 n⌉ + 2 extra requests, and a run of bad rows two per row.
//
// The search assumes the fault is the rows' own: a part whose request
// succeeded holds no bad row. When that is wrong (the fault is transient, or
// comes from rows together), a row found alone is sent alone, and scored
// if it passes.

// inputFault reports whether err says the request's rows were at fault, so
// that splitting the request would find rows that can be scored: a 400 from
// the service (the model or the service could not take the input), or an
// online endpoint's 424 for a 4xx from the model (APIError.ModelInputFault).
// Every other failure (throttles, 5xx, timeouts, a bad key) says nothing
// about the rows and is not split.
func inputFault(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && (apiErr.StatusCode == http.StatusBadRequest || apiErr.ModelInputFault())
}

// splitState is what a batch knows about its splitting. When the first
// requests of the search all fail, the input is at fault as a whole (a
// column the model lacks, say) rather than single rows: splitting stops for
// the rest of the batch, so that such an input costs a bounded number of
// extra requests, not several per row.
//
// Until a split request has succeeded, chunks are searched one at a time
// (turn); the others wait for their turn or for that first success. Chunks
// searched side by side would count each other's failures before any of
// their successes came back: with a few bad rows in every chunk, each
// search fails a few times before its first success, so 8 chunks searched
// at once reached the limit on an input with 2 % of bad rows, and rejected
// thousands of good rows, a different set each run. One at a time, the
// failures counted are those of whole searches, as in a batch of
// Parallelism 1: the verdict depends on the rows of the chunks searched,
// not on timing (the search is stopped only by a chunk whose first rows
// are all bad, ten of them for chunks of 100), and an input at fault as a
// whole costs exactly limit split requests, whatever the parallelism.
// Other chunks that fail meanwhile wait a few requests' time, once per
// batch.
type splitState struct {
	off      bool          // BatchOptions.NoSplit
	limit    int64         // failed split requests, none succeeding, that stop the search
	ok, fail atomic.Int64  // split requests that succeeded and failed
	requests atomic.Int64  // split requests sent (batch.send)
	turn     chan struct{} // held by the chunk being searched while none has succeeded
	found    chan struct{} // closed when the first split request succeeds
}

func (s *splitState) init(o BatchOptions) {
	s.off = o.NoSplit
	// Enough for one chunk whose first rows are bad, nine of them for
	// chunks of 100: the search for the first fails about log2(rows)+1
	// times, and each next one twice, before a request succeeds.
	s.limit = 3 * int64(bits.Len(uint(o.ChunkRows))+1)
	s.turn = make(chan struct{}, 1)
	s.found = make(chan struct{})
}

// start waits until a chunk may be searched: at once when a split request
// has succeeded, else when no other chunk is being searched. It returns the
// func that ends the search, or ctx's error.
func (s *splitState) start(ctx context.Context) (end func(), err error) {
	select {
	case <-s.found:
		return func() {}, nil
	default:
	}
	select {
	case <-s.found:
		return func() {}, nil
	case s.turn <- struct{}{}:
		return func() { <-s.turn }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stopped returns why no more split requests should be sent, or nil.
func (s *splitState) stopped(ctx context.Context) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case s.ok.Load() == 0 && s.fail.Load() >= s.limit:
		return fmt.Errorf("not split further: the first %d requests that split failed chunks all failed too, so the input seems at fault as a whole, not single rows", s.limit)
	}
	return nil
}

// note counts one split request, and it among those sent if it was.
func (s *splitState) note(ch *Chunk) {
	if ch.sent {
		s.requests.Add(1)
	}
	if ch.Err != nil {
		s.fail.Add(1)
	} else if s.ok.Add(1) == 1 {
		close(s.found)
	}
}

// isolate settles the rows of failed, a chunk whose request failed with the
// input's fault, and returns its parts in input order, appended to parts:
// the bad rows each alone with the error of their own request, the good
// rows scored.
func (b *batch) isolate(ctx context.Context, failed *Chunk, parts []*Chunk) []*Chunk {
	end, err := b.split.start(ctx)
	if err != nil {
		return append(parts, b.unsplit(failed, failed.Start, failed.Input, err))
	}
	defer end()
	// probe is set when rows[0] comes right after a bad row: bad rows come
	// in runs (a stretch of the input written wrong), so the first row is
	// sent alone first. In a run each bad row then costs two requests (the
	// rows after the one before, and itself) instead of a search of
	// log2(rows) + 1; a search for a bad row further on costs one more.
	probe := false
	for failed != nil {
		whole := failed
		seq, start, rows := failed.Seq, failed.Start, failed.Input
		// rows[:lo] are settled; rows[lo:hi] hold a bad row, as the
		// request of last (or of a part of it, with the rest scored)
		// failed; rows[hi:] have not been sent on their own.
		lo, hi, last := 0, len(rows), failed
		for hi-lo > 1 {
			if why := b.split.stopped(ctx); why != nil {
				return append(parts, b.unsplit(last, start+lo, rows[lo:], why))
			}
			mid := lo + (hi-lo)/2
			if probe {
				mid, probe = lo+1, false
			}
			ch := b.send(ctx, seq, start+lo, rows[lo:mid], nil)
			b.split.note(ch)
			switch {
			case ch.Err != nil && inputFault(ch.Err):
				hi, last = mid, ch
			default: // scored, or failed for a reason that is not the rows'
				parts = append(parts, ch)
				lo = mid
			}
		}
		if last.Start != start+lo || len(last.Input) != 1 {
			// Found by elimination: send it alone for its own verdict.
			if why := b.split.stopped(ctx); why != nil {
				return append(parts, b.unsplit(last, start+lo, rows[lo:], why))
			}
			last = b.send(ctx, seq, start+lo, rows[lo:lo+1], nil)
			b.split.note(last)
		}
		parts = append(parts, last)
		failed = nil
		if rest := rows[lo+1:]; len(rest) > 0 {
			if why := b.split.stopped(ctx); why != nil {
				// Sent last with the rows of whole: last went alone.
				return append(parts, b.unsplit(whole, start+lo+1, rest, why))
			}
			ch := b.send(ctx, seq, start+lo+1, rest, nil)
			b.split.note(ch)
			if ch.Err != nil && len(rest) > 1 && inputFault(ch.Err) {
				failed, probe = ch, true
			} else {
				parts = append(parts, ch)
			}
		}
	}
	return parts
}

// unsplit fails rows together, with the error, endpoint and elapsed time
// of last, the latest request that failed for them (not one handed to the
// sink itself), and why they were not split further.
func (b *batch) unsplit(last *Chunk, start int, rows [][]any, why error) *Chunk {
	var ce *ChunkError
	err := last.Err
	if errors.As(err, &ce) {
		err = ce.Err
	}
	ch := b.failed(last.Seq, start, rows, last.Endpoint, fmt.Errorf("%w (%v)", err, why))
	ch.Elapsed = last.Elapsed
	return ch
}
