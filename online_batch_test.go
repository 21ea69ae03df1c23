package amlpool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// idRows is a RowSource of n rows: an id and a value.
type idRows struct{ next, n int }

func (s *idRows) Columns() []string { return []string{"id", "x"} }

func (s *idRows) Next() ([]any, error) {
	if s.next == s.n {
		return nil, io.EOF
	}
	s.next++
	return []any{s.next - 1, float64(s.next-1) / 2}, nil
}

// poisonPredict is amltest's OnlineEcho, failing a request that holds a
// row whose id is a multiple of every: the model's 400, sent as a 424.
func poisonPredict(every int) func([]string, [][]any) ([]any, error) {
	return func(cols []string, rows [][]any) ([]any, error) {
		for _, row := range rows {
			id, err := row[0].(json.Number).Int64()
			if err != nil {
				return nil, err
			}
			if id%int64(every) == int64(every-1) {
				return nil, fmt.Errorf("row id %d cannot be scored", id)
			}
		}
		return amltest.OnlineEcho(cols, rows)
	}
}

// TestOnlineScoreRows100k: 100,000 rows through three online fakes, in the
// MLflow form, reach the sink in input order, each once; the rows the model
// refuses (a 424 with its 400) fail alone with the model's reason; the
// fakes' transient failures (429s of both kinds, 408, a model 5xx) cost
// nothing; both reply shapes are read.
func TestOnlineScoreRows100k(t *testing.T) {
	const n, every = 100_000, 9_973
	var faults atomic.Int64
	fault := func(k int64) amltest.Fault {
		switch k % 97 {
		case 13:
			faults.Add(1)
			return amltest.Pending()
		case 29:
			faults.Add(1)
			return amltest.RateLimited()
		case 41:
			faults.Add(1)
			return amltest.Fault{Status: 408}
		case 67:
			faults.Add(1)
			return amltest.ModelFailure(503, "worker restarting")
		}
		return amltest.Fault{}
	}
	srvs := onlineServers(t, 3, 8, func(c *amltest.Config) {
		c.Predict, c.Fault = poisonPredict(every), fault
		c.PredictionsObject = c.Name == "o1" // {"predictions": [...]} from one of them
	})
	c := newClient(t, endpoints(srvs), amlpool.WithBackoff(amlpool.Backoff{Initial: 1e6, Max: 1e6}))

	next, scored := 0, 0
	var failed []int
	st, err := c.ScoreRows(t.Context(), &idRows{n: n}, func(ch *amlpool.Chunk) error {
		if ch.Start != next {
			return fmt.Errorf("chunk at row %d, want %d", ch.Start, next)
		}
		next += len(ch.Input)
		if ch.Err != nil {
			var apiErr *amlpool.APIError
			if !errors.As(ch.Err, &apiErr) || apiErr.ModelStatusCode != 400 || len(ch.Input) != 1 {
				return fmt.Errorf("rows %d+%d: %w", ch.Start, len(ch.Input), ch.Err)
			}
			failed = append(failed, ch.Start)
			return nil
		}
		id := ch.Output.Column("id")
		if id < 0 {
			return fmt.Errorf("no id column in %v", ch.Output.ColumnNames)
		}
		for i, row := range ch.Output.Values {
			if got := fmt.Sprint(row[id]); got != strconv.Itoa(ch.Start+i) {
				return fmt.Errorf("output row %d has id %s", ch.Start+i, got)
			}
		}
		scored += len(ch.Input)
		return nil
	}, nil)
	require.NoError(t, err)

	var want []int
	for id := every - 1; id < n; id += every {
		want = append(want, id)
	}
	assert.Equal(t, n, next, "rows settled")
	assert.Equal(t, want, failed, "the rows the model refused, alone")
	assert.Equal(t, n-len(want), scored)
	assert.Equal(t, amlpool.BatchStats{Rows: n, Scored: n - len(want), Failed: len(want), Requests: st.Requests, SplitRequests: st.SplitRequests}, st)
	assert.LessOrEqual(t, st.SplitRequests, len(want)*maxExtra(amlpool.DefaultChunkRows))
	assert.Positive(t, faults.Load(), "transient faults met")
	for _, s := range srvs {
		assert.Zero(t, s.Stats().Throttled, "no 429 from a cap: amlpool kept to it")
		assert.Positive(t, s.Stats().Scored)
	}
}

// TestOnlineScoreTableShapes: predictions that are plain values, arrays
// or objects become tables; objects whose keys vary keep their columns
// apart.
func TestOnlineScoreTableShapes(t *testing.T) {
	in := &amlpool.Table{ColumnNames: []string{"id"}, Values: [][]any{{0}, {1}, {2}, {3}}}
	for _, tt := range []struct {
		name    string
		predict func([]string, [][]any) ([]any, error)
		cols    []string
		values  [][]any
	}{
		{"plain values", func(_ []string, rows [][]any) ([]any, error) {
			out := make([]any, len(rows))
			for i, r := range rows {
				out[i] = r[0]
			}
			return out, nil
		}, []string{amlpool.PredictionsColumn}, [][]any{{json.Number("0")}, {json.Number("1")}, {json.Number("2")}, {json.Number("3")}}},
		{"arrays", func(_ []string, rows [][]any) ([]any, error) {
			out := make([]any, len(rows))
			for i, r := range rows {
				out[i] = []any{r[0], "p"}
			}
			return out, nil
		}, []string{"0", "1"}, [][]any{{json.Number("0"), "p"}, {json.Number("1"), "p"}, {json.Number("2"), "p"}, {json.Number("3"), "p"}}},
		{"objects, a key in later chunks only", func(_ []string, rows [][]any) ([]any, error) {
			out := make([]any, len(rows))
			for i, r := range rows {
				p := map[string]any{"label": r[0]}
				if fmt.Sprint(r[0]) >= "2" {
					p["extra"] = "e"
				}
				out[i] = p
			}
			return out, nil
		}, []string{"label", "extra"}, [][]any{{json.Number("0"), nil}, {json.Number("1"), nil}, {json.Number("2"), "e"}, {json.Number("3"), "e"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srvs := onlineServers(t, 1, 2, func(c *amltest.Config) { c.Predict = tt.predict })
			c := newClient(t, endpoints(srvs))
			res, err := c.ScoreTable(context.Background(), in, &amlpool.BatchOptions{ChunkRows: 2, Parallelism: 1})
			require.NoError(t, err)
			require.Empty(t, res.Failures)
			assert.Equal(t, tt.cols, res.Output.ColumnNames)
			assert.Equal(t, tt.values, res.Output.Values)
		})
	}
}

// TestOnlineScoreTableShapeChange: predictions of another shape than the
// first scored chunk's (objects after plain values, plain values or arrays
// after objects) fail their chunk, naming both shapes, instead of being
// merged into columns that leave the other rows' empty.
func TestOnlineScoreTableShapeChange(t *testing.T) {
	in := &amlpool.Table{ColumnNames: []string{"id"}, Values: [][]any{{0}, {1}, {2}, {3}, {4}, {5}}}
	for _, tt := range []struct {
		name        string
		first, then func(id any) any // the predictions of rows 0-1, and of the others
		cols        []string
		firstValues [][]any
		shapes      string
	}{
		{"objects after plain values", func(id any) any { return id }, func(id any) any { return map[string]any{"label": id} },
			[]string{amlpool.PredictionsColumn}, [][]any{{json.Number("0")}, {json.Number("1")}}, "objects, but those of the batch's first scored rows were plain values"},
		{"plain values after objects", func(id any) any { return map[string]any{"label": id} }, func(id any) any { return id },
			[]string{"label"}, [][]any{{json.Number("0")}, {json.Number("1")}}, "plain values, but those of the batch's first scored rows were objects"},
		{"arrays after objects", func(id any) any { return map[string]any{"0": id} }, func(id any) any { return []any{id} },
			[]string{"0"}, [][]any{{json.Number("0")}, {json.Number("1")}}, "arrays, but those of the batch's first scored rows were objects"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srvs := onlineServers(t, 1, 2, func(c *amltest.Config) {
				c.Predict = func(_ []string, rows [][]any) ([]any, error) {
					out := make([]any, len(rows))
					for i, r := range rows {
						if fmt.Sprint(r[0]) < "2" {
							out[i] = tt.first(r[0])
						} else {
							out[i] = tt.then(r[0])
						}
					}
					return out, nil
				}
			})
			c := newClient(t, endpoints(srvs))
			res, err := c.ScoreTable(t.Context(), in, &amlpool.BatchOptions{ChunkRows: 2, Parallelism: 1})
			require.NoError(t, err)
			assert.Equal(t, amlpool.BatchStats{Rows: 6, Scored: 2, Failed: 4, Requests: 3}, res.Stats)
			require.Len(t, res.Failures, 2)
			for k, f := range res.Failures {
				assert.Equal(t, [2]int{3 + 2*k, 4 + 2*k}, [2]int{f.FirstRow, f.LastRow})
				assert.EqualError(t, f, fmt.Sprintf("amlpool: rows %d-%d: endpoint o0: the predictions are %s: a batch's predictions must all be of one shape",
					f.FirstRow, f.LastRow, tt.shapes))
			}
			assert.Equal(t, tt.cols, res.Output.ColumnNames, "the first scored chunk's columns, nothing merged")
			assert.Equal(t, tt.firstValues, res.Output.Values[:2])
			assert.Equal(t, [][]any{nil, nil, nil, nil}, res.Output.Values[2:])
		})
	}
}

// TestOnlineScoreRowsBadReply: a reply that is not predictions, or holds
// too few, fails its chunk with a message naming the problem.
func TestOnlineScoreRowsBadReply(t *testing.T) {
	for _, tt := range []struct {
		body string
		want string
	}{
		{`{"result": [1]}`, `without "predictions"`},
		{`"done"`, "a JSON string"},
		{`[1, [2]]`, "prediction 1 is a JSON array, but prediction 0 is a JSON number"},
		{`[1]`, "1 output rows for 2 input rows"},
	} {
		srvs := onlineServers(t, 1, 2)
		srvs[0].Script(amltest.Fault{Body: []byte(tt.body)})
		c := newClient(t, endpoints(srvs))
		res, err := c.ScoreTable(t.Context(), &amlpool.Table{ColumnNames: []string{"id"}, Values: [][]any{{0}, {1}}}, &amlpool.BatchOptions{NoSplit: true})
		require.NoError(t, err)
		require.Len(t, res.Failures, 1, tt.body)
		assert.Contains(t, res.Failures[0].Error(), tt.want, tt.body)
	}
}
