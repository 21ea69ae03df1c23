package amlpool_test

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
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
// requests instead of spending several requests on every row.
func TestScoreTableStopsSplittingAWrongInput(t *testing.T) {
	model := func(req *amlpool.Request) (*amlpool.Response, error) {
		return nil, errors.New("column income is missing")
	}
	c, srv := poolOf(t, amltest.Config{MaxConcurrentCalls: 2, Score: model})
	res, err := c.ScoreTable(context.Background(), ids(10_000), &amlpool.BatchOptions{ChunkRows: 100})
	require.NoError(t, err)
	assert.Zero(t, res.Stats.Scored)
	assert.Equal(t, 10_000, res.Stats.Failed)
	limit := 3 * (bits.Len(100) + 1)
	// Two chunks in flight may each make one more request past the limit.
	assert.LessOrEqual(t, res.Stats.SplitRequests, limit+2, "a bounded cost, not one per row")
	assert.EqualValues(t, 100+res.Stats.SplitRequests, srv.Stats().Requests)
	last := res.Failures[len(res.Failures)-1]
	assert.ErrorContains(t, last, "column income is missing (not split further: the first 24 requests that split failed chunks all failed too")
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
