package amlpool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
)

// scorer is a fake endpoint for batch tests: it echoes each row's first cell
// (an id) and adds "score" = id*2. hook, when set, may replace the reply.
type scorer struct {
	srv      *httptest.Server
	hook     func(ids []int, w http.ResponseWriter, r *http.Request) bool // true: replied
	maxBody  atomic.Int64
	requests atomic.Int64
	inFlight atomic.Int64
	peak     atomic.Int64
}

func newScorer(t *testing.T, hook func(ids []int, w http.ResponseWriter, r *http.Request) bool) *scorer {
	s := &scorer{hook: hook}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *scorer) serve(w http.ResponseWriter, r *http.Request) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
	s.requests.Add(1)
	body, _ := io.ReadAll(r.Body)
	for m := s.maxBody.Load(); int64(len(body)) > m && !s.maxBody.CompareAndSwap(m, int64(len(body))); m = s.maxBody.Load() {
	}
	var req struct {
		Inputs map[string]struct {
			ColumnNames []string
			Values      [][]any
		}
	}
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	in := req.Inputs["input1"]
	ids := make([]int, len(in.Values))
	for i, row := range in.Values {
		ids[i], _ = strconv.Atoi(row[0].(string))
	}
	if s.hook != nil && s.hook(ids, w, r) {
		return
	}
	writeScores(w, ids)
}

func writeScores(w http.ResponseWriter, ids []int) {
	vals := make([][]any, len(ids))
	for i, id := range ids {
		vals[i] = []any{strconv.Itoa(id), strconv.Itoa(id * 2)}
	}
	json.NewEncoder(w).Encode(map[string]any{"Results": map[string]any{"output1": map[string]any{
		"type": "table", "value": map[string]any{"ColumnNames": []string{"id", "score"}, "Values": vals}}}})
}

func (s *scorer) client(t *testing.T, mcc int) *amlpool.Client {
	c, err := amlpool.New([]amlpool.Endpoint{{Name: "fake", URL: s.srv.URL + "/services/fake/execute", APIKey: "k", MaxConcurrentCalls: mcc}})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func idTable(n int) *amlpool.Table {
	t := &amlpool.Table{ColumnNames: []string{"id", "pad"}, Values: make([][]any, n)}
	for i := range t.Values {
		t.Values[i] = []any{strconv.Itoa(i), "x"}
	}
	return t
}

func TestScoreTableInOrder(t *testing.T) {
	s := newScorer(t, nil)
	c := s.client(t, 8)
	var last atomic.Int64
	res, err := c.ScoreTable(context.Background(), idTable(5003), &amlpool.BatchOptions{
		ChunkRows: 7,
		Progress: func(done, total int) {
			assert.Equal(t, 5003, total)
			assert.Greater(t, int64(done), last.Load(), "progress goes forward")
			last.Store(int64(done))
		},
	})
	require.NoError(t, err)
	assert.Empty(t, res.Failures)
	assert.Equal(t, amlpool.BatchStats{Rows: 5003, Scored: 5003, Requests: 715}, res.Stats)
	assert.EqualValues(t, 5003, last.Load())
	assert.Equal(t, []string{"id", "score"}, res.Output.ColumnNames)
	for i, row := range res.Output.Values {
		require.Equal(t, []any{strconv.Itoa(i), strconv.Itoa(2 * i)}, row, "row %d", i)
	}
	assert.EqualValues(t, 715, s.requests.Load(), "ceil(5003/7) requests")
	assert.LessOrEqual(t, s.peak.Load(), int64(8), "parallelism defaults to the pool's capacity")
	assert.Equal(t, 8, c.Capacity())
}

func TestScoreTablePartialFailure(t *testing.T) {
	s := newScorer(t, func(ids []int, w http.ResponseWriter, r *http.Request) bool {
		switch ids[0] {
		case 300: // a permanent error: the chunk fails, no retry
			w.WriteHeader(400)
			w.Write([]byte(`{"error":{"code":"BadUserArgument","message":"bad","details":[{"code":"InputParseError","message":"cannot parse"}]}}`))
			return true
		case 700: // one row short
			writeScores(w, ids[1:])
			return true
		}
		return false
	})
	c := s.client(t, 4)
	// NoSplit: a chunk the service blames fails whole (split_test.go has
	// the default, which isolates the bad rows).
	res, err := c.ScoreTable(context.Background(), idTable(1000), &amlpool.BatchOptions{ChunkRows: 100, NoSplit: true})
	require.NoError(t, err)
	require.Len(t, res.Failures, 2)
	assert.Equal(t, amlpool.BatchStats{Rows: 1000, Scored: 800, Failed: 200, Requests: 10}, res.Stats)

	f := res.Failures[0]
	assert.Equal(t, [3]int{3, 301, 400}, [3]int{f.Seq, f.FirstRow, f.LastRow}, "rows 301 to 400, numbered from 1: indexes 300 to 399")
	var apiErr *amlpool.APIError
	require.ErrorAs(t, f, &apiErr)
	assert.Equal(t, "InputParseError", apiErr.Detail())
	assert.EqualError(t, f, "amlpool: rows 301-400: amlpool: endpoint fake: HTTP 400 BadUserArgument/InputParseError: cannot parse")

	f = res.Failures[1]
	assert.Equal(t, [3]int{7, 701, 800}, [3]int{f.Seq, f.FirstRow, f.LastRow})
	assert.EqualError(t, f, "amlpool: rows 701-800: the reply has 99 output rows for 100 input rows")
	assert.Equal(t, "fake", f.Endpoint)

	for i, row := range res.Output.Values {
		if (i >= 300 && i < 400) || (i >= 700 && i < 800) {
			assert.Nil(t, row, "row %d of a failed chunk", i)
		} else {
			assert.Equal(t, strconv.Itoa(i), row[0], "row %d", i)
		}
	}
}

// A reply without column names (no details=true) whose rows differ in
// width cannot be read cell by cell: its chunk fails, as malformed, and
// the other chunks are scored.
func TestScoreTableRaggedReplyWithoutNames(t *testing.T) {
	s := newScorer(t, func(ids []int, w http.ResponseWriter, r *http.Request) bool {
		vals := make([][]any, len(ids))
		for i, id := range ids {
			vals[i] = []any{strconv.Itoa(id), strconv.Itoa(id * 2)}
		}
		if ids[0] == 20 {
			vals[3] = vals[3][:1] // row 24 lacks its score
		}
		json.NewEncoder(w).Encode(map[string]any{"Results": map[string]any{"output1": map[string]any{
			"type": "table", "value": map[string]any{"Values": vals}}}})
		return true
	})
	c := s.client(t, 2)
	res, err := c.ScoreTable(context.Background(), idTable(50), &amlpool.BatchOptions{ChunkRows: 10})
	require.NoError(t, err)
	assert.Equal(t, amlpool.BatchStats{Rows: 50, Scored: 40, Failed: 10, Requests: 5}, res.Stats)
	require.Len(t, res.Failures, 1)
	f := res.Failures[0]
	assert.Equal(t, [2]int{21, 30}, [2]int{f.FirstRow, f.LastRow})
	assert.ErrorIs(t, f, amlpool.ErrMalformedResponse)
	assert.ErrorContains(t, f, `output "output1": row 4 (Values[3]) has 1 cells, want 2 (as many as row 1: the table names no columns)`)
	for i, row := range res.Output.Values {
		if i >= 20 && i < 30 {
			assert.Nil(t, row, "row %d of the failed chunk", i)
		} else {
			assert.Equal(t, []any{strconv.Itoa(i), strconv.Itoa(2 * i)}, row, "row %d", i)
		}
	}
}

func TestScoreRowsSplitsToFitTheLimit(t *testing.T) {
	s := newScorer(t, nil)
	c := s.client(t, 4)
	in := idTable(64)
	in.Values[41][1] = string(make([]byte, 3000)) // too big to go at all
	const limit = 2000
	res, err := c.ScoreTable(context.Background(), in, &amlpool.BatchOptions{ChunkRows: 64, MaxChunkBytes: limit})
	require.NoError(t, err)
	assert.LessOrEqual(t, s.maxBody.Load(), int64(limit))
	require.Len(t, res.Failures, 1)
	f := res.Failures[0]
	assert.Equal(t, [3]int{0, 42, 42}, [3]int{f.Seq, f.FirstRow, f.LastRow})
	assert.ErrorIs(t, f, amlpool.ErrRequestTooLarge)
	assert.Contains(t, f.Error(), "amlpool: row 42: ")
	assert.Equal(t, 63, res.Stats.Scored)
	for i, row := range res.Output.Values {
		if i != 41 {
			assert.Equal(t, strconv.Itoa(2*i), row[1], "row %d", i)
		}
	}
}

// source yields n id rows; bad marks rows it reports as unreadable, and
// fail, when >= 0, is where it fails for good.
type source struct {
	n, next, fail int
	short         int // a row one cell short
	bad           map[int]bool
	onNext        func(i int)
}

func (s *source) Columns() []string { return []string{"id", "pad"} }

func (s *source) Next() ([]any, error) {
	i := s.next
	if s.onNext != nil {
		s.onNext(i)
	}
	switch {
	case i == s.fail:
		return nil, errors.New("disk on fire")
	case i == s.n:
		return nil, io.EOF
	}
	s.next++
	if s.bad[i] {
		return nil, &amlpool.RowError{Line: i + 2, Row: []any{strconv.Itoa(i)}, Err: errors.New("ragged")}
	}
	if i == s.short {
		return []any{"13"}, nil // one cell short: the library catches it too
	}
	return []any{strconv.Itoa(i), "x"}, nil
}

// collect is a sink that checks every row comes once, in order.
type collect struct {
	t      *testing.T
	next   int
	failed []string
	chunks atomic.Int64
}

func (c *collect) sink(ch *amlpool.Chunk) error {
	require.Equal(c.t, c.next, ch.Start, "chunks arrive in input order, none skipped")
	c.next += len(ch.Input)
	c.chunks.Add(1)
	if ch.Err != nil {
		c.failed = append(c.failed, ch.Err.Error())
		return nil
	}
	for i, row := range ch.Output.Values {
		require.Equal(c.t, strconv.Itoa(ch.Start+i), row[0])
	}
	return nil
}

func TestScoreRowsBadRowsKeepTheirPlace(t *testing.T) {
	s := newScorer(t, nil)
	c := s.client(t, 4)
	src := &source{n: 100, fail: -1, short: 13, bad: map[int]bool{0: true, 5: true, 6: true, 99: true}}
	col := &collect{t: t}
	st, err := c.ScoreRows(context.Background(), src, col.sink, &amlpool.BatchOptions{ChunkRows: 10})
	require.NoError(t, err)
	assert.Equal(t, amlpool.BatchStats{Rows: 100, Scored: 95, Failed: 5, Requests: 11}, st)
	assert.Equal(t, []string{
		"amlpool: row 1: line 2: ragged",
		"amlpool: row 6: line 7: ragged",
		"amlpool: row 7: line 8: ragged",
		"amlpool: row 14: 1 cells, want 2 (one per column)",
		"amlpool: row 100: line 101: ragged",
	}, col.failed)
}

func TestScoreRowsSourceErrorKeepsWhatWasSent(t *testing.T) {
	s := newScorer(t, nil)
	c := s.client(t, 4)
	col := &collect{t: t}
	st, err := c.ScoreRows(context.Background(), &source{n: 100, fail: 55, short: -1}, col.sink, &amlpool.BatchOptions{ChunkRows: 10})
	assert.EqualError(t, err, "amlpool: read row 56: disk on fire")
	assert.Equal(t, 55, st.Rows, "rows read before the failure are scored and handed on")
	assert.Equal(t, 55, col.next)
}

func TestScoreRowsSinkErrorStops(t *testing.T) {
	s := newScorer(t, nil)
	c := s.client(t, 4)
	boom := errors.New("disk full")
	n := 0
	st, err := c.ScoreRows(context.Background(), &source{n: 10000, fail: -1, short: -1}, func(ch *amlpool.Chunk) error {
		if n++; n == 3 {
			return boom
		}
		return nil
	}, &amlpool.BatchOptions{ChunkRows: 10})
	assert.ErrorIs(t, err, boom)
	assert.Equal(t, 20, st.Rows, "the rows of the two chunks the sink took, not those of the one it refused")
	assert.Less(t, s.requests.Load(), int64(1000), "the batch stopped early")
}

func TestScoreRowsCancelLeavesAPrefix(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Chunks from row 500 on wait for the end of ctx: they are cut short.
	s := newScorer(t, func(ids []int, w http.ResponseWriter, r *http.Request) bool {
		if ids[0] >= 500 {
			<-r.Context().Done()
			return true
		}
		return false
	})
	c := s.client(t, 4)
	col := &collect{t: t}
	st, err := c.ScoreRows(ctx, &source{n: 100000, fail: -1, short: -1}, func(ch *amlpool.Chunk) error {
		if err := col.sink(ch); err != nil {
			return err
		}
		if ch.Start+len(ch.Input) == 500 {
			cancel()
		}
		return nil
	}, &amlpool.BatchOptions{ChunkRows: 10})
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 500, st.Rows, "the rows before the cut, all scored; none of the cut ones")
	assert.Equal(t, 500, st.Scored)
	assert.Empty(t, col.failed, "cancelled chunks are not failures: a later run scores them")
}

// A Classic reply whose columns are not the batch's first scored reply's
// fails its chunk, naming both column lists: by name when both replies name
// them, else by number. Placed by position, its values would land under
// the first reply's names; placed by name, rows of two models would mix.
func TestScoreTableClassicColumnsChange(t *testing.T) {
	named := func(names ...string) []string { return names }
	for _, tt := range []struct {
		name   string
		cols   [3][]string // the names of chunk k's reply (rows 2k, 2k+1); nil: none
		widths [3]int      // its number of columns
		failed string      // the error of the chunks that fail (chunk 1 on), or "" when none does
		out    []string    // the result's ColumnNames
	}{
		{"other names, as many", [3][]string{named("id", "score"), named("id", "label"), named("id", "score")}, [3]int{2, 2, 2},
			`amlpool: rows 3-4: endpoint fake: the reply's columns are ["id" "label"], but those of the batch's first scored rows were ["id" "score"]: ` +
				"a batch's replies must all have the same columns (do the pool's endpoints all serve one model?)", named("id", "score")},
		{"the same names in another order", [3][]string{named("id", "score"), named("score", "id"), named("id", "score")}, [3]int{2, 2, 2},
			`amlpool: rows 3-4: endpoint fake: the reply's columns are ["score" "id"], but those of the batch's first scored rows were ["id" "score"]`, named("id", "score")},
		{"more columns", [3][]string{named("id", "score"), named("id", "score", "p"), named("id", "score")}, [3]int{2, 3, 2},
			`amlpool: rows 3-4: endpoint fake: the reply's columns are ["id" "score" "p"], but those of the batch's first scored rows were ["id" "score"]`, named("id", "score")},
		{"unnamed, more columns", [3][]string{nil, nil, nil}, [3]int{2, 3, 2},
			"amlpool: rows 3-4: endpoint fake: the reply's columns are 3 unnamed columns, but those of the batch's first scored rows were 2 unnamed columns", nil},
		{"unnamed after named, as many", [3][]string{named("id", "score"), nil, named("id", "score")}, [3]int{2, 2, 2}, "", named("id", "score")},
		{"named after unnamed: checked by name from then on", [3][]string{nil, named("id", "score"), named("id", "label")}, [3]int{2, 2, 2},
			`amlpool: rows 5-6: endpoint fake: the reply's columns are ["id" "label"], but those of the batch's first scored rows were ["id" "score"]`, named("id", "score")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newScorer(t, func(ids []int, w http.ResponseWriter, r *http.Request) bool {
				k := ids[0] / 2
				vals := make([][]any, len(ids))
				for i, id := range ids {
					vals[i] = []any{strconv.Itoa(id), id * 2, 0.5}[:tt.widths[k]]
				}
				value := map[string]any{"Values": vals}
				if tt.cols[k] != nil {
					value["ColumnNames"] = tt.cols[k]
				}
				json.NewEncoder(w).Encode(map[string]any{"Results": map[string]any{"output1": map[string]any{"type": "table", "value": value}}})
				return true
			})
			c := s.client(t, 1)
			res, err := c.ScoreTable(context.Background(), idTable(6), &amlpool.BatchOptions{ChunkRows: 2, Parallelism: 1})
			require.NoError(t, err)
			assert.Equal(t, tt.out, res.Output.ColumnNames)
			assert.Equal(t, []any{"0", json.Number("0")}, res.Output.Values[0], "the first chunk is scored")
			if tt.failed == "" {
				assert.Empty(t, res.Failures)
				assert.Equal(t, 6, res.Stats.Scored)
				return
			}
			require.NotEmpty(t, res.Failures)
			f := res.Failures[0]
			assert.Contains(t, f.Error(), tt.failed)
			assert.Equal(t, "fake", f.Endpoint)
			assert.Nil(t, res.Output.Values[f.FirstRow-1], "no values under the wrong names")
			for _, f := range res.Failures {
				assert.NotContains(t, f.Error(), "rows 1-2")
			}
		})
	}
}

// BatchStats.Requests counts the requests sent: not the chunks whose ctx
// ended while they waited for a slot.
func TestScoreRowsCountsRequestsSentOnly(t *testing.T) {
	arrived := make(chan struct{}, 1)
	s := newScorer(t, func(ids []int, w http.ResponseWriter, r *http.Request) bool {
		arrived <- struct{}{}
		<-r.Context().Done()
		return true
	})
	c := s.client(t, 1)
	queued := make(chan struct{}, 16)
	amlpool.SetQueueHook(c, func() { queued <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-arrived
		for range 11 {
			<-queued
		}
		cancel() // one request sent, eleven chunks waiting for the slot
	}()
	st, err := c.ScoreRows(ctx, &source{n: 12, fail: -1, short: -1}, func(*amlpool.Chunk) error { return nil },
		&amlpool.BatchOptions{ChunkRows: 1, Parallelism: 12})
	assert.ErrorIs(t, err, context.Canceled)
	assert.EqualValues(t, 1, s.requests.Load())
	assert.Equal(t, 1, st.Requests)
	assert.Zero(t, st.SplitRequests)
}

// A chunk whose call made an attempt names its endpoint though the call
// then ended waiting for a slot for its retry: its rows went there, and
// the command counts its latency.
func TestChunkNamesTheEndpointOfItsLastAttempt(t *testing.T) {
	holding := make(chan struct{})
	release := make(chan struct{})
	s := newScorer(t, func(ids []int, w http.ResponseWriter, r *http.Request) bool {
		switch ids[0] {
		case 99: // the call holding endpoint a's only slot
			close(holding)
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return false
		default: // the chunk's first attempt, on b
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
	})
	ep := func(name string) amlpool.Endpoint {
		return amlpool.Endpoint{Name: name, URL: s.srv.URL + "/services/" + name + "/execute", APIKey: "k", MaxConcurrentCalls: 1}
	}
	// No wait for a slot: the retry, which avoids b, finds a busy and
	// fails at once.
	c, err := amlpool.New([]amlpool.Endpoint{ep("a"), ep("b")}, amlpool.WithRand(firstFree), amlpool.WithMaxWait(0))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	held := make(chan error, 1)
	go func() {
		_, err := c.Do(context.Background(), []byte(`{"Inputs":{"input1":{"ColumnNames":["id"],"Values":[["99"]]}},"GlobalParameters":{}}`))
		held <- err
	}()
	<-holding

	var got []*amlpool.Chunk
	st, err := c.ScoreRows(context.Background(), &source{n: 1, fail: -1, short: -1}, func(ch *amlpool.Chunk) error {
		got = append(got, ch)
		return nil
	}, &amlpool.BatchOptions{Parallelism: 1})
	close(release)
	require.NoError(t, <-held)
	require.NoError(t, err)
	require.Len(t, got, 1)
	ch := got[0]
	require.ErrorIs(t, ch.Err, amlpool.ErrNoCapacity)
	callErr, ok := errors.AsType[*amlpool.CallError](ch.Err)
	require.True(t, ok, "%v", ch.Err)
	assert.Equal(t, []string{"b"}, callErr.Endpoints)
	assert.Equal(t, "b", ch.Endpoint, "the endpoint of its last attempt")
	chunkErr, _ := errors.AsType[*amlpool.ChunkError](ch.Err)
	assert.Equal(t, "b", chunkErr.Endpoint)
	assert.Equal(t, 1, st.Requests)
}

func TestScoreRowsReadsAheadAWindowOnly(t *testing.T) {
	const par, rowsPer = 4, 10
	release := make(chan struct{})
	s := newScorer(t, func(ids []int, w http.ResponseWriter, r *http.Request) bool {
		if ids[0] == 0 {
			<-release // the head of the line is slow
		}
		return false
	})
	c := s.client(t, par)
	var emitted atomic.Int64
	var once sync.Once
	src := &source{n: 2000, fail: -1, short: -1, onNext: func(i int) {
		chunk := int64(i / rowsPer)
		// The reader may hold twice Parallelism chunks not yet handed on.
		require.Less(t, chunk, emitted.Load()+2*par, "row %d read too far ahead", i)
		if chunk == 2*par-1 {
			once.Do(func() { close(release) })
		}
	}}
	st, err := c.ScoreRows(context.Background(), src, func(ch *amlpool.Chunk) error {
		emitted.Add(1)
		return nil
	}, &amlpool.BatchOptions{ChunkRows: rowsPer, Parallelism: par})
	require.NoError(t, err)
	assert.Equal(t, 2000, st.Scored)
	assert.LessOrEqual(t, s.peak.Load(), int64(par))
}

// TestScoreRowsFillsParallelism holds every call until Parallelism of them
// are in flight at once: a batch that scores fewer chunks at a time never
// gets there, and fails on the guard's deadline instead of scoring.
func TestScoreRowsFillsParallelism(t *testing.T) {
	const par, rowsPer = 6, 5
	var held atomic.Int64
	full := make(chan struct{})
	var once sync.Once
	s := newScorer(t, func(ids []int, w http.ResponseWriter, r *http.Request) bool {
		if held.Add(1) == par {
			once.Do(func() { close(full) })
		}
		select {
		case <-full:
		case <-r.Context().Done():
		}
		return false
	})
	c := s.client(t, par)
	// A deadlock guard, not a timing assertion: a batch that never has par
	// calls in flight waits here until it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := c.ScoreRows(ctx, &source{n: 10 * par * rowsPer, fail: -1, short: -1}, func(*amlpool.Chunk) error { return nil },
		&amlpool.BatchOptions{ChunkRows: rowsPer, Parallelism: par})
	require.NoError(t, err, "never %d calls in flight at once", par)
	assert.Equal(t, 10*par*rowsPer, st.Scored)
	assert.Equal(t, int64(par), s.peak.Load(), "in flight at most")
}

func TestScoreRowsBadOptions(t *testing.T) {
	s := newScorer(t, nil)
	c := s.client(t, 4)
	for _, o := range []amlpool.BatchOptions{{ChunkRows: -1}, {MaxChunkBytes: -1}, {Parallelism: -1}} {
		_, err := c.ScoreRows(context.Background(), &source{n: 1, fail: -1, short: -1}, func(*amlpool.Chunk) error { return nil }, &o)
		assert.ErrorIs(t, err, amlpool.ErrInvalidConfig, fmt.Sprint(o))
	}
	_, err := c.ScoreTable(context.Background(), &amlpool.Table{Rows: []map[string]any{{}}}, nil)
	assert.ErrorContains(t, err, "must be classic")
	_, err = c.ScoreTable(context.Background(), &amlpool.Table{ColumnNames: []string{"a"}, Values: [][]any{{1, 2}}}, nil)
	assert.ErrorContains(t, err, "row 1 (Values[0]) has 2 cells")
}

// eofAfter is a source of n id rows whose io.EOF waits for release: the
// batch's last chunk reaches the sink before the source's end is seen.
type eofAfter struct {
	source
	release chan struct{}
}

func (s *eofAfter) Next() ([]any, error) {
	if s.next == s.n {
		<-s.release
	}
	return s.source.Next()
}

// A batch that ends without an error reports its total last, even when the
// total became known only after the last chunk reached the sink.
func TestScoreRowsProgressEndsWithTheTotal(t *testing.T) {
	s := newScorer(t, nil)
	c := s.client(t, 2)
	src := &eofAfter{source: source{n: 20, fail: -1, short: -1}, release: make(chan struct{})}
	var calls [][2]int
	st, err := c.ScoreRows(context.Background(), src, func(*amlpool.Chunk) error { return nil }, &amlpool.BatchOptions{
		ChunkRows: 10,
		Progress: func(done, total int) {
			calls = append(calls, [2]int{done, total})
			if done == 20 && total < 0 {
				close(src.release) // only now may the source end
			}
		},
	})
	require.NoError(t, err)
	assert.Equal(t, 20, st.Rows)
	assert.Equal(t, [][2]int{{10, -1}, {20, -1}, {20, 20}}, calls)
}

// A ChunkRows far above the source's length costs only the rows there
// are: the reader does not allocate room for ChunkRows rows up front.
func TestScoreTableHugeChunkRows(t *testing.T) {
	s := newScorer(t, nil)
	c := s.client(t, 2)
	res, err := c.ScoreTable(context.Background(), idTable(10), &amlpool.BatchOptions{ChunkRows: 1 << 40})
	require.NoError(t, err)
	assert.Equal(t, amlpool.BatchStats{Rows: 10, Scored: 10, Requests: 1}, res.Stats)
	assert.Equal(t, []any{"9", "18"}, res.Output.Values[9])
}

// TestScoreRowsSinkSeesEveryRowOnce mixes what can befall rows (unreadable
// ones, a short one, rows the service blames, chunks over MaxChunkBytes)
// over random chunk sizes, limits and parallelism, and checks the sink's
// side of it: never called concurrently, chunks in input order covering
// every row once, each failed one a *ChunkError naming its rows, stats
// that agree with what the sink saw, Progress counting up to the total,
// and Parallelism and MaxChunkBytes held.
func TestScoreRowsSinkSeesEveryRowOnce(t *testing.T) {
	for seed := range int64(4) {
		s := newScorer(t, func(ids []int, w http.ResponseWriter, r *http.Request) bool {
			for _, id := range ids {
				if id%37 == 5 {
					w.WriteHeader(400)
					w.Write([]byte(`{"error":{"code":"BadArgument","message":"bad row"}}`))
					return true
				}
			}
			return false
		})
		c := s.client(t, 3)
		rng := rand.New(rand.NewSource(seed))
		par, limit := 1+rng.Intn(5), 200+rng.Intn(600)
		bad := map[int]bool{}
		for range 40 {
			bad[rng.Intn(1000)] = true
		}
		var in atomic.Int64
		var seen amlpool.BatchStats
		var progress [][2]int
		st, err := c.ScoreRows(context.Background(), &source{n: 1000, fail: -1, short: 77, bad: bad}, func(ch *amlpool.Chunk) error {
			require.EqualValues(t, 1, in.Add(1), "the sink is never called concurrently")
			defer in.Add(-1)
			require.Equal(t, seen.Rows, ch.Start, "in input order, none skipped")
			seen.Rows += len(ch.Input)
			if ch.Err != nil {
				seen.Failed += len(ch.Input)
				var ce *amlpool.ChunkError
				require.ErrorAs(t, ch.Err, &ce)
				require.Equal(t, [2]int{ch.Start + 1, ch.Start + len(ch.Input)}, [2]int{ce.FirstRow, ce.LastRow})
				require.Nil(t, ch.Output)
				return nil
			}
			seen.Scored += len(ch.Input)
			require.Len(t, ch.Output.Values, len(ch.Input))
			for i, row := range ch.Output.Values {
				require.Equal(t, strconv.Itoa(ch.Start+i), row[0])
			}
			return nil
		}, &amlpool.BatchOptions{ChunkRows: 1 + rng.Intn(40), MaxChunkBytes: limit, Parallelism: par,
			Progress: func(done, total int) { progress = append(progress, [2]int{done, total}) }})
		require.NoError(t, err)
		assert.Equal(t, 1000, seen.Rows)
		seen.Requests, seen.SplitRequests = int(s.requests.Load()), st.SplitRequests
		assert.Equal(t, seen, st)
		for i := 1; i < len(progress)-1; i++ {
			assert.Less(t, progress[i-1][0], progress[i][0], "progress goes forward")
		}
		assert.Equal(t, [2]int{1000, 1000}, progress[len(progress)-1], "the last call has the total")
		assert.LessOrEqual(t, s.peak.Load(), int64(par))
		assert.LessOrEqual(t, s.maxBody.Load(), int64(limit))
	}
}

// A Parallelism over MaxParallelism is a ConfigError naming the option,
// not a window sized for it (which ran out of memory, or overflowed).
func TestScoreTableParallelismTooLarge(t *testing.T) {
	s := newScorer(t, nil)
	c := s.client(t, 2)
	for _, p := range []int{amlpool.MaxParallelism + 1, 1 << 40, math.MaxInt} {
		_, err := c.ScoreTable(context.Background(), idTable(10), &amlpool.BatchOptions{Parallelism: p})
		var ce *amlpool.ConfigError
		require.ErrorAs(t, err, &ce, "Parallelism %d", p)
		assert.Equal(t, "BatchOptions.Parallelism", ce.Field)
		assert.ErrorContains(t, err, fmt.Sprint(p))
	}
	res, err := c.ScoreTable(context.Background(), idTable(10), &amlpool.BatchOptions{Parallelism: amlpool.MaxParallelism})
	require.NoError(t, err)
	assert.Equal(t, 10, res.Stats.Scored)
}

// A callback that calls runtime.Goexit in one of a batch's calls (t.FailNow
// in a test's RoundTripper, say), hedged or not, ends the worker's
// goroutine, not the batch: that chunk fails whole, naming Goexit, and the
// others are scored, by the worker that takes its place.
func TestScoreTableSurvivesAGoexitInACall(t *testing.T) {
	for _, hedged := range []bool{false, true} {
		t.Run(fmt.Sprint("hedged=", hedged), func(t *testing.T) {
			s := newScorer(t, nil)
			var armed atomic.Bool
			armed.Store(true)
			rt := goexitRT(func(r *http.Request) (*http.Response, error) {
				if armed.Swap(false) {
					runtime.Goexit()
				}
				return http.DefaultTransport.RoundTrip(r)
			})
			eps := []amlpool.Endpoint{{Name: "a", URL: s.srv.URL + "/services/a/execute", APIKey: "k", MaxConcurrentCalls: 2}}
			opts := []amlpool.Option{amlpool.WithHTTPClient(&http.Client{Transport: rt})}
			if hedged {
				// The hedge never goes: the first copy, in a goroutine
				// of its own, is the one that calls Goexit.
				eps = append(eps, amlpool.Endpoint{Name: "b", URL: s.srv.URL + "/services/b/execute", APIKey: "k", MaxConcurrentCalls: 2})
				opts = append(opts, amlpool.WithHedging(time.Hour))
			}
			c, err := amlpool.New(eps, opts...)
			require.NoError(t, err)
			defer c.Close()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // so that a hang fails
			defer cancel()

			// One worker: the one that ends must have a successor.
			res, err := c.ScoreTable(ctx, idTable(100), &amlpool.BatchOptions{ChunkRows: 10, Parallelism: 1})
			require.NoError(t, err)
			require.False(t, armed.Load(), "the RoundTripper called Goexit")
			require.Len(t, res.Failures, 1)
			assert.ErrorContains(t, res.Failures[0], "runtime.Goexit")
			assert.Equal(t, [2]int{100, 90}, [2]int{res.Stats.Rows, res.Stats.Scored})
			for _, e := range c.Stats().Endpoints {
				assert.Zero(t, e.InFlight, "%s's slots are back", e.Name)
			}
		})
	}
}

type goexitRT func(*http.Request) (*http.Response, error)

func (f goexitRT) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
