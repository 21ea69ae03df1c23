package amlpool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/internal/clock"
	"github.com/amlpool/amlpool/rows"
)

// poisonModel is amltest's Echo, failing any request that holds a row whose
// first cell is in bad, as a model that cannot score a row fails the whole
// request: HTTP 400 LibraryExecutionError with its message in the details.
func poisonModel(bad ...string) func(*amlpool.Request) (*amlpool.Response, error) {
	return func(req *amlpool.Request) (*amlpool.Response, error) {
		for i, row := range req.Inputs["input1"].Values {
			if id := fmt.Sprint(row[0]); slices.Contains(bad, id) {
				return nil, fmt.Errorf("row %d of the request: id %s cannot be scored", i+1, id)
			}
		}
		return amltest.Echo(req)
	}
}

func poolOf(t *testing.T, cfg amltest.Config) (*amlpool.Client, *amltest.Server) {
	srv := amltest.NewServer(cfg)
	t.Cleanup(srv.Close)
	c, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, srv
}

func ids(n int) *amlpool.Table {
	t := &amlpool.Table{ColumnNames: []string{"id"}, Values: make([][]any, n)}
	for i := range t.Values {
		t.Values[i] = []any{strconv.Itoa(i)}
	}
	return t
}

// TestScoreTableUnencodableCell: a cell that encoding/json cannot encode
// (NaN, an infinity, a channel) fails its row alone, with an error naming
// the column, and the rows around it are scored, on both kinds of
// endpoint.
func TestScoreTableUnencodableCell(t *testing.T) {
	for _, online := range []bool{false, true} {
		t.Run(fmt.Sprint("online=", online), func(t *testing.T) {
			var c *amlpool.Client
			if online {
				c = newClient(t, endpoints(onlineServers(t, 1, 2)))
			} else {
				c, _ = poolOf(t, amltest.Config{MaxConcurrentCalls: 2})
			}
			in := &amlpool.Table{ColumnNames: []string{"id", "x"}, Values: make([][]any, 10)}
			for i := range in.Values {
				in.Values[i] = []any{strconv.Itoa(i), 1.5}
			}
			in.Values[2][1] = math.NaN()
			in.Values[4][1] = math.Inf(-1) // the last row of its chunk
			in.Values[7][0] = make(chan int)
			res, err := c.ScoreTable(context.Background(), in, &amlpool.BatchOptions{ChunkRows: 5, Parallelism: 1})
			require.NoError(t, err)
			assert.Equal(t, 7, res.Stats.Scored)
			require.Len(t, res.Failures, 3)
			for k, want := range []struct {
				row  int
				text string
			}{
				{3, `amlpool: row 3: amlpool: encode request: column "x": json: unsupported value: NaN`},
				{5, `amlpool: row 5: amlpool: encode request: column "x": json: unsupported value: -Inf`},
				{8, `amlpool: row 8: amlpool: encode request: column "id": json: unsupported type: chan int`},
			} {
				f := res.Failures[k]
				assert.Equal(t, [2]int{want.row, want.row}, [2]int{f.FirstRow, f.LastRow}, "the bad row alone")
				assert.EqualError(t, f, want.text)
				assert.Nil(t, res.Output.Values[want.row-1])
			}
			for i, row := range res.Output.Values {
				if i != 2 && i != 4 && i != 7 {
					assert.NotNil(t, row, "row %d", i+1)
				}
			}
		})
	}
}

// TestScoreTableUnencodableGlobalParameters: GlobalParameters that do not
// encode as JSON are a *ConfigError naming them, before anything is sent,
// rather than every chunk failing to encode with an error that does not
// say why.
func TestScoreTableUnencodableGlobalParameters(t *testing.T) {
	c, srv := poolOf(t, amltest.Config{MaxConcurrentCalls: 2})
	res, err := c.ScoreTable(context.Background(), ids(10), &amlpool.BatchOptions{GlobalParameters: map[string]any{"seed": math.NaN()}})
	require.ErrorIs(t, err, amlpool.ErrInvalidConfig)
	assert.EqualError(t, err, "amlpool: invalid config: BatchOptions.GlobalParameters: does not encode as JSON: json: unsupported value: NaN")
	assert.Empty(t, res.Failures)
	assert.Zero(t, res.Stats.Rows)
	assert.Zero(t, srv.Stats().Requests)
}

// maxExtra is the promised cost of isolating one bad row in a chunk of n
// rows: ⌈log2 n⌉ + 2 requests.
func maxExtra(n int) int { return bits.Len(uint(n-1)) + 2 }

// TestScoreTableIsolatesAPoisonRow is the case through ScoreTable:
// one row the model cannot score among 1,000 costs only itself, with the
// model's own message, wherever it sits in its chunk.
func TestScoreTableIsolatesAPoisonRow(t *testing.T) {
	for _, bad := range []int{0, 1, 49, 50, 98, 99, 437, 999} {
		t.Run(strconv.Itoa(bad), func(t *testing.T) {
			c, srv := poolOf(t, amltest.Config{MaxConcurrentCalls: 4, Score: poisonModel(strconv.Itoa(bad))})
			res, err := c.ScoreTable(context.Background(), ids(1000), &amlpool.BatchOptions{ChunkRows: 100})
			require.NoError(t, err)
			assert.Equal(t, 999, res.Stats.Scored)
			require.Len(t, res.Failures, 1)
			f := res.Failures[0]
			assert.Equal(t, [2]int{bad + 1, bad + 1}, [2]int{f.FirstRow, f.LastRow}, "the bad row alone")
			var apiErr *amlpool.APIError
			require.ErrorAs(t, f, &apiErr)
			assert.Equal(t, 400, apiErr.StatusCode)
			assert.Equal(t, fmt.Sprintf("row 1 of the request: id %d cannot be scored", bad), apiErr.Reason(),
				"the service's message for the row alone")
			assert.EqualError(t, f, fmt.Sprintf("amlpool: row %d: amlpool: endpoint %s: HTTP 400 LibraryExecutionError/FailedToEvaluateRScript: row 1 of the request: id %d cannot be scored",
				bad+1, srv.Endpoint().Name, bad))
			for i, row := range res.Output.Values {
				if i == bad {
					assert.Nil(t, row)
				} else {
					require.Equal(t, strconv.Itoa(i), row[0], "row %d scored", i)
				}
			}
			extra := int(srv.Stats().Requests) - 10
			assert.Equal(t, extra, res.Stats.SplitRequests)
			assert.Equal(t, 10+extra, res.Stats.Requests)
			assert.LessOrEqual(t, extra, maxExtra(100), "extra requests for one bad row")
			assert.LessOrEqual(t, srv.Stats().PeakInFlight, int64(4), "split requests keep to the cap")
		})
	}
}

// TestScoreRowsIsolatesPoisonRowsFromACSV is the case through
// ScoreRows, reading a CSV with the public reader: bad rows alone, each
// named by row, every other row scored, all in input order.
func TestScoreRowsIsolatesPoisonRowsFromACSV(t *testing.T) {
	var b strings.Builder
	b.WriteString("id\n")
	for i := range 1000 {
		fmt.Fprintf(&b, "%d\n", i)
	}
	// Three bad rows in one chunk, two of them side by side; one elsewhere.
	c, _ := poolOf(t, amltest.Config{MaxConcurrentCalls: 8, Score: poisonModel("203", "204", "250", "777")})
	src, err := rows.NewCSVReader(strings.NewReader(b.String()))
	require.NoError(t, err)
	var failed []int
	next := 0
	st, err := c.ScoreRows(context.Background(), src, func(ch *amlpool.Chunk) error {
		require.Equal(t, next, ch.Start, "in input order, none skipped")
		next += len(ch.Input)
		if ch.Err != nil {
			var ce *amlpool.ChunkError
			require.ErrorAs(t, ch.Err, &ce)
			require.Equal(t, ce.FirstRow, ce.LastRow, "one row per failure")
			assert.ErrorContains(t, ce, fmt.Sprintf("id %d cannot be scored", ce.FirstRow-1))
			failed = append(failed, ce.FirstRow)
			return nil
		}
		for i, row := range ch.Output.Values {
			require.Equal(t, strconv.Itoa(ch.Start+i), row[0])
		}
		return nil
	}, &amlpool.BatchOptions{ChunkRows: 100})
	require.NoError(t, err)
	assert.Equal(t, []int{204, 205, 251, 778}, failed, "row numbers, from 1")
	assert.Equal(t, 996, st.Scored)
	assert.Equal(t, 4, st.Failed)
	assert.LessOrEqual(t, st.SplitRequests, 4*maxExtra(100))
}

// TestScoreTableIsolatesARunOfBadRows: a run of bad rows, after rows that
// were scored, costs about two requests per row (the rows after the last
// bad one, then the first of them alone), not a search of log2(rows) + 1
// for each; every bad row still fails alone with its own message.
func TestScoreTableIsolatesARunOfBadRows(t *testing.T) {
	var bad []string
	for id := 120; id < 170; id++ {
		bad = append(bad, strconv.Itoa(id))
	}
	c, srv := poolOf(t, amltest.Config{MaxConcurrentCalls: 4, Score: poisonModel(bad...)})
	res, err := c.ScoreTable(context.Background(), ids(300), &amlpool.BatchOptions{ChunkRows: 100})
	require.NoError(t, err)
	assert.Equal(t, 250, res.Stats.Scored)
	require.Len(t, res.Failures, 50)
	for k, f := range res.Failures {
		assert.Equal(t, [2]int{121 + k, 121 + k}, [2]int{f.FirstRow, f.LastRow}, "each bad row alone")
		assert.ErrorContains(t, f, fmt.Sprintf("row 1 of the request: id %d cannot be scored", 120+k))
	}
	assert.EqualValues(t, 3+res.Stats.SplitRequests, srv.Stats().Requests)
	assert.LessOrEqual(t, res.Stats.SplitRequests, 2*len(bad)+maxExtra(100), "two requests per bad row, and a search")
}

// TestScoreTableNoSplit keeps a blamed chunk whole.
func TestScoreTableNoSplit(t *testing.T) {
	c, srv := poolOf(t, amltest.Config{Score: poisonModel("150")})
	res, err := c.ScoreTable(context.Background(), ids(300), &amlpool.BatchOptions{ChunkRows: 100, NoSplit: true})
	require.NoError(t, err)
	require.Len(t, res.Failures, 1)
	assert.Equal(t, [2]int{101, 200}, [2]int{res.Failures[0].FirstRow, res.Failures[0].LastRow})
	assert.Equal(t, 200, res.Stats.Scored)
	assert.EqualValues(t, 3, srv.Stats().Requests)
	assert.Zero(t, res.Stats.SplitRequests)
}

// TestScoreTableStopsSplittingAWrongInput: when the input is wrong as a
// whole, every row fails alone too; splitting stops after its first failed
// requests instead of spending several requests on every row. Chunks are
// searched one at a time until a split request succeeds, so the cost is
// the limit exactly, however many chunks fail at once.
func TestScoreTableStopsSplittingAWrongInput(t *testing.T) {
	model := func(req *amlpool.Request) (*amlpool.Response, error) {
		return nil, errors.New("column income is missing")
	}
	for _, mcc := range []int{2, 16} {
		t.Run(strconv.Itoa(mcc), func(t *testing.T) {
			c, srv := poolOf(t, amltest.Config{MaxConcurrentCalls: mcc, Score: model})
			res, err := c.ScoreTable(context.Background(), ids(10_000), &amlpool.BatchOptions{ChunkRows: 100})
			require.NoError(t, err)
			assert.Zero(t, res.Stats.Scored)
			assert.Equal(t, 10_000, res.Stats.Failed)
			limit := 3 * (bits.Len(100) + 1)
			assert.Equal(t, limit, res.Stats.SplitRequests, "a bounded cost, not one per row")
			assert.EqualValues(t, 100+res.Stats.SplitRequests, srv.Stats().Requests)
			last := res.Failures[len(res.Failures)-1]
			assert.ErrorContains(t, last, "column income is missing (not split further: the first 24 requests that split failed chunks all failed too")
		})
	}
}

// TestScoreTableRowThatPassesAlone: when the fault comes from rows together,
// not one row, the row the search ends on is sent alone and scored.
func TestScoreTableRowThatPassesAlone(t *testing.T) {
	model := func(req *amlpool.Request) (*amlpool.Response, error) {
		var got []string
		for _, row := range req.Inputs["input1"].Values {
			got = append(got, fmt.Sprint(row[0]))
		}
		if slices.Contains(got, "10") && slices.Contains(got, "11") {
			return nil, errors.New("rows 10 and 11 clash")
		}
		return amltest.Echo(req)
	}
	c, _ := poolOf(t, amltest.Config{Score: model})
	res, err := c.ScoreTable(context.Background(), ids(100), &amlpool.BatchOptions{ChunkRows: 100})
	require.NoError(t, err)
	assert.Empty(t, res.Failures)
	assert.Equal(t, 100, res.Stats.Scored)
}

// TestScoreTableSplitsOnlyTheInputsFault: a failure that says nothing about
// the rows (here a 500 on every try) fails the chunk whole, unsplit.
func TestScoreTableSplitsOnlyTheInputsFault(t *testing.T) {
	var calls atomic.Int64
	c, _ := poolOf(t, amltest.Config{Fault: func(n int64) amltest.Fault {
		calls.Add(1)
		return amltest.Fault{Status: 500}
	}})
	res, err := c.ScoreTable(context.Background(), ids(100), &amlpool.BatchOptions{ChunkRows: 100})
	require.NoError(t, err)
	require.Len(t, res.Failures, 1)
	assert.Equal(t, [2]int{1, 100}, [2]int{res.Failures[0].FirstRow, res.Failures[0].LastRow})
	assert.Zero(t, res.Stats.SplitRequests)
	assert.Equal(t, 1, res.Stats.Requests, "one request, whose attempts the Client retried")
	assert.Positive(t, calls.Load())
}

// heldModel is an in-memory Classic endpoint, for synctest bubbles: a
// request that holds a bad id is answered at once with the 400 of a model
// that cannot score it; any other request waits for release and is then
// echoed. Successes held back while failures flow is the order in which
// chunks searched side by side, on a busy service, hear back.
type heldModel struct {
	bad func(id int) bool

	mu       sync.Mutex
	gate     chan struct{} // what held requests wait on; release closes it
	held     int           // requests waiting on gate
	failures int           // requests answered 400 before the first success
	answered bool          // a request has succeeded
}

func (m *heldModel) RoundTrip(r *http.Request) (*http.Response, error) {
	var req struct {
		Inputs map[string]struct {
			ColumnNames []string
			Values      [][]string
		}
	}
	err := json.NewDecoder(r.Body).Decode(&req)
	r.Body.Close()
	if err != nil {
		return nil, err
	}
	in := req.Inputs["input1"]
	for i, row := range in.Values {
		if id, _ := strconv.Atoi(row[0]); m.bad(id) {
			m.mu.Lock()
			if !m.answered {
				m.failures++
			}
			m.mu.Unlock()
			return reply(r, http.StatusBadRequest, fmt.Sprintf(`{"error":{"code":"LibraryExecutionError","message":"Module execution encountered an internal library error.",`+
				`"details":[{"code":"FailedToEvaluateRScript","target":"Score","message":"row %d of the request: id %d cannot be scored"}]}}`, i+1, id))
		}
	}
	m.mu.Lock()
	gate := m.gate
	m.held++
	m.mu.Unlock()
	select {
	case <-gate:
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
	m.mu.Lock()
	m.answered = true
	m.mu.Unlock()
	out, err := json.Marshal(map[string]any{"Results": map[string]any{"output1": map[string]any{
		"type": "table", "value": map[string]any{"ColumnNames": in.ColumnNames, "Values": in.Values}}}})
	if err != nil {
		return nil, err
	}
	return reply(r, http.StatusOK, string(out))
}

// release lets the requests held so far through and returns how many.
func (m *heldModel) release() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	close(m.gate)
	m.gate = make(chan struct{})
	n := m.held
	m.held = 0
	return n
}

func reply(r *http.Request, status int, body string) (*http.Response, error) {
	return &http.Response{StatusCode: status, Status: http.StatusText(status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)), Request: r}, nil
}

// scoreHeld scores ids(n) in chunks of 100 on parallelism workers against a
// heldModel, in a synctest bubble: whenever nothing else can move, the
// successes held so far are let through. It returns the result and the
// failures answered before the first success.
func scoreHeld(t *testing.T, n, parallelism int, bad func(int) bool) (res *amlpool.TableResult, failuresFirst int) {
	synctest.Test(t, func(t *testing.T) {
		m := &heldModel{bad: bad, gate: make(chan struct{})}
		c, err := amlpool.New([]amlpool.Endpoint{{Name: "ep", APIKey: "k", MaxConcurrentCalls: parallelism,
			URL: "https://ep.test/workspaces/w/services/ep/execute?api-version=2.0&details=true"}},
			amlpool.WithHTTPClient(&http.Client{Transport: m}))
		require.NoError(t, err)
		defer c.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			res, err = c.ScoreTable(t.Context(), ids(n), &amlpool.BatchOptions{ChunkRows: 100, Parallelism: parallelism})
		}()
		for {
			synctest.Wait()
			if m.release() == 0 {
				break // done, or stuck: then synctest reports the deadlock here
			}
		}
		<-done
		require.NoError(t, err)
		failuresFirst = m.failures
	})
	return res, failuresFirst
}

// TestScoreRowsSplitsChunksSideBySide: with two bad rows in every chunk and
// every chunk failing at once, chunks searched side by side must not count
// each other's failures as the input's fault. Their successes come back
// only when nothing else can move, so a batch counting the failures of all
// searches reached the limit before any success and rejected chunks whole;
// the rows' fate must be the one a batch of Parallelism 1 reaches: every bad
// row alone, every other row scored, for the same split requests.
func TestScoreRowsSplitsChunksSideBySide(t *testing.T) {
	const n = 1600 // 16 chunks, two bad rows in each
	bad := func(id int) bool { return id%50 == 7 }
	serial, _ := scoreHeld(t, n, 1, bad)
	res, failuresFirst := scoreHeld(t, n, 16, bad)
	assert.GreaterOrEqual(t, failuresFirst, 16, "every chunk failed before any request succeeded")
	for name, r := range map[string]*amlpool.TableResult{"parallel": res, "serial": serial} {
		var got []int
		for _, f := range r.Failures {
			require.Equal(t, f.FirstRow, f.LastRow, "%s: one row per failure, not %v", name, f)
			require.ErrorContains(t, f, fmt.Sprintf("id %d cannot be scored", f.FirstRow-1), name)
			got = append(got, f.FirstRow-1)
		}
		var want []int
		for id := range n {
			if bad(id) {
				want = append(want, id)
			}
		}
		assert.Equal(t, want, got, "%s: the bad rows, alone", name)
		assert.Equal(t, n-len(want), r.Stats.Scored, name)
	}
	assert.Equal(t, serial.Stats, res.Stats, "the split requests of a serial batch")
	assert.Equal(t, serial.Output, res.Output)
}

// Rows failed together once the search stopped have the elapsed time (and
// endpoint) of the last request that held them, not 0; that of a request
// of theirs, not of a bad row's request sent alone and handed on itself.
// Each request here takes as many (fake) seconds as it has rows.
func TestScoreTableUnsplitRowsHaveTheirRequestsElapsed(t *testing.T) {
	clk := clock.NewFake()
	model := func(req *amlpool.Request) (*amlpool.Response, error) {
		clk.Advance(time.Duration(len(req.Inputs["input1"].Values)) * time.Second)
		return nil, errors.New("column income is missing")
	}
	srv := amltest.NewServer(amltest.Config{MaxConcurrentCalls: 1, Score: model})
	t.Cleanup(srv.Close)
	c, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()}, amlpool.WithClock(clk))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })

	// Every row is bad. Chunk 0 (rows 0-7) is searched row by row: the
	// limit of 3 × (4 + 1) failed split requests is reached by row 6's
	// own, after [6 7] failed together, and row 7 is not sent alone.
	// Chunk 1 (rows 8-15) is not searched at all.
	var chunks []*amlpool.Chunk
	st, err := c.ScoreRows(context.Background(), &tableRows{ids(16), 0}, func(ch *amlpool.Chunk) error {
		chunks = append(chunks, ch)
		return nil
	}, &amlpool.BatchOptions{ChunkRows: 8, Parallelism: 1})
	require.NoError(t, err)
	require.Equal(t, 15, st.SplitRequests)
	require.Len(t, chunks, 9)
	for i, ch := range chunks[:7] {
		assert.Equal(t, [2]int{i, 1}, [2]int{ch.Start, len(ch.Input)}, "a bad row alone")
		assert.Equal(t, time.Second, ch.Elapsed)
	}
	rest, whole := chunks[7], chunks[8]
	assert.Equal(t, [2]int{7, 1}, [2]int{rest.Start, len(rest.Input)})
	assert.ErrorContains(t, rest.Err, "not split further")
	assert.Equal(t, 2*time.Second, rest.Elapsed, "the request of rows 6 and 7")
	assert.Equal(t, srv.Endpoint().Name, rest.Endpoint)
	assert.Equal(t, [2]int{8, 8}, [2]int{whole.Start, len(whole.Input)})
	assert.ErrorContains(t, whole.Err, "not split further")
	assert.Equal(t, 8*time.Second, whole.Elapsed, "the chunk's own request")
}

// tableRows is a RowSource of a table's rows.
type tableRows struct {
	t    *amlpool.Table
	next int
}

func (s *tableRows) Columns() []string { return s.t.ColumnNames }

func (s *tableRows) Next() ([]any, error) {
	if s.next == len(s.t.Values) {
		return nil, io.EOF
	}
	s.next++
	return s.t.Values[s.next-1], nil
}
