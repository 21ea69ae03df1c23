package amltest_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// decode parses a scored reply the way amlpool does.
func decode(t *testing.T, body []byte) *amlpool.Response {
	t.Helper()
	var resp amlpool.Response
	require.NoError(t, json.Unmarshal(body, &resp), "body %s", body)
	require.NotNil(t, resp.Results, "body %s", body)
	return &resp
}

// assertProbability checks a Scored Probabilities cell: a string holding a
// number in [0, 1).
func assertProbability(t *testing.T, cell any) {
	t.Helper()
	s, ok := cell.(string)
	require.True(t, ok, "cell %#v is not a string", cell)
	p, err := strconv.ParseFloat(s, 64)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, p, 0.0)
	assert.Less(t, p, 1.0)
}

func TestClassicReply(t *testing.T) {
	srv := newServer(t, amltest.Config{Key: "k"})
	tests := []struct {
		name      string
		url       string
		body      string
		wantPre   string // exact start of the reply body
		wantNames []string
		wantTypes []string
		wantCells [][]any // without the added column
	}{
		{
			name:      "details=true: names and types",
			url:       srv.URL(),
			body:      classicBody,
			wantPre:   `{"Results":{"output1":{"type":"table","value":{"ColumnNames":["cog_speed","Scored Probabilities"],"ColumnTypes":["String","Double"],"Values":[["0","`,
			wantNames: []string{"cog_speed", "Scored Probabilities"},
			wantTypes: []string{"String", "Double"},
			wantCells: [][]any{{"0"}, {"1"}},
		},
		{
			name:      "without details: values only, as captured",
			url:       strings.TrimSuffix(srv.URL(), "&details=true"),
			body:      classicBody,
			wantPre:   `{"Results":{"output1":{"type":"table","value":{"Values":[["0","`,
			wantCells: [][]any{{"0"}, {"1"}},
		},
		{
			name:      "typed cells come back as strings",
			url:       srv.URL(),
			body:      fixture(t, "request_typed.json"),
			wantNames: []string{"age", "sex", "bmi", "children", "smoker", "region", "Scored Probabilities"},
			wantTypes: []string{"Int32", "String", "Int32", "Int32", "String", "String", "Double"},
			wantCells: [][]any{{"20", "female", "21", "0", "no", "Northeast"}, {"30", "male", "41", "1", "yes", "Southwest"}},
		},
		{
			name:      "null, bool, big and fractional cells",
			url:       srv.URL(),
			body:      `{"Inputs":{"input1":{"ColumnNames":["a","b","c","d"],"Values":[[null,true,12345678901234567890,1.5]]}},"GlobalParameters":{}}`,
			wantNames: []string{"a", "b", "c", "d", "Scored Probabilities"},
			wantTypes: []string{"String", "Boolean", "Double", "Double", "Double"},
			wantCells: [][]any{{nil, "true", "12345678901234567890", "1.5"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := send(t, srv, tt.url, "k", tt.body)
			require.Equal(t, http.StatusOK, got.status, "body %s", got.body)
			assert.Equal(t, "application/json; charset=utf-8", got.header.Get("Content-Type"))
			if tt.wantPre != "" {
				assert.True(t, strings.HasPrefix(string(got.body), tt.wantPre), "body %s", got.body)
			}
			resp := decode(t, got.body)
			require.Len(t, resp.Results, 1)
			out := resp.Results["output1"]
			require.NotNil(t, out)
			assert.Equal(t, "table", out.Type)
			assert.Equal(t, tt.wantNames, out.Value.ColumnNames)
			assert.Equal(t, tt.wantTypes, out.Value.ColumnTypes)
			require.Len(t, out.Value.Values, len(tt.wantCells))
			for i, row := range out.Value.Values {
				require.Len(t, row, len(tt.wantCells[i])+1)
				assert.Equal(t, tt.wantCells[i], row[:len(row)-1])
				assertProbability(t, row[len(row)-1])
			}
		})
	}
}

func TestSwaggerRoundTrip(t *testing.T) {
	srv := newServer(t, amltest.Config{Key: "k"})
	for _, url := range []string{srv.URL() + "&format=swagger", strings.TrimSuffix(srv.URL(), "&details=true") + "&format=swagger"} {
		got := send(t, srv, url, "k", fixture(t, "request_swagger.json"))
		require.Equal(t, http.StatusOK, got.status, "body %s", got.body)
		assert.True(t, strings.HasPrefix(string(got.body), `{"Results":{"output1":[{"`), "body %s", got.body)
		resp := decode(t, got.body)
		out := resp.Results["output1"]
		require.NotNil(t, out)
		assert.Empty(t, out.Type)
		require.Len(t, out.Value.Rows, 1)
		row := out.Value.Rows[0]
		assertProbability(t, row[amltest.ScoredProbabilities])
		delete(row, amltest.ScoredProbabilities)
		assert.Equal(t, map[string]any{"column1": "value1", "column2": "value2", "column3": "value3"}, row)
	}
}

func TestEchoIsRepeatable(t *testing.T) {
	srv := newServer(t, amltest.Config{Key: "k"})
	body := `{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["a"],["b"],["a"]]}},"GlobalParameters":{}}`
	first := send(t, srv, srv.URL(), "k", body)
	second := send(t, srv, srv.URL(), "k", body)
	assert.Equal(t, string(first.body), string(second.body))
	v := decode(t, first.body).Results["output1"].Value.Values
	assert.Equal(t, v[0][1], v[2][1], "same row, same score")
	assert.NotEqual(t, v[0][1], v[1][1], "different rows, different scores")
}

func TestEchoSeveralInputs(t *testing.T) {
	in := &amlpool.Request{Inputs: map[string]*amlpool.Table{}}
	for _, name := range []string{"input10", "input2", "input1"} {
		in.Inputs[name] = &amlpool.Table{ColumnNames: []string{"name"}, Values: [][]any{{name}}}
	}
	resp, err := amltest.Echo(in)
	require.NoError(t, err)
	want := map[string]string{"output1": "input1", "output2": "input2", "output3": "input10"}
	require.Len(t, resp.Results, len(want))
	for out, input := range want {
		assert.Equal(t, input, resp.Results[out].Value.Values[0][0], out)
	}
	assert.Equal(t, []string{"name"}, in.Inputs["input1"].ColumnNames, "Echo leaves its input alone")
}

func TestRequestChecks(t *testing.T) {
	srv := newServer(t, amltest.Config{Key: "k"})
	big := `{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["` + strings.Repeat("x", amltest.MaxRequestBytes) + `"]]}},"GlobalParameters":{}}`
	tests := []struct {
		name       string
		url        string
		body       string
		mods       []func(*http.Request)
		wantStatus int
		wantCode   string
		wantDetail string
	}{
		{name: "charset parameter is fine", body: classicBody, mods: []func(*http.Request){setHeader("Content-Type", "application/json; charset=utf-8")}, wantStatus: 200},
		{name: "empty body", body: "", wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestIsEmpty"},
		{name: "not JSON", body: `{"Inputs":`, wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestBodyInvalid"},
		{name: "data after the JSON", body: classicBody + `{}`, wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestBodyInvalid"},
		{name: "text/plain", body: classicBody, mods: []func(*http.Request){setHeader("Content-Type", "text/plain")}, wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestBodyInvalid"},
		{name: "no Content-Type", body: classicBody, mods: []func(*http.Request){delHeader("Content-Type")}, wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestBodyInvalid"},
		{name: "over 4 MB", body: big, wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestBodyInvalid"},
		{name: "no Inputs", body: `{"GlobalParameters":{}}`, wantStatus: 400, wantCode: "BadArgument", wantDetail: "MissingRequestInput"},
		{name: "null input", body: `{"Inputs":{"input1":null}}`, wantStatus: 400, wantCode: "BadArgument", wantDetail: "MissingRequestInput"},
		{name: "rows on a classic URL", body: fixture(t, "request_swagger.json"), wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestBodyInvalid"},
		{name: "table on a swagger URL", url: srv.URL() + "&format=swagger", body: classicBody, wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestBodyInvalid"},
		{name: "no ColumnNames", body: `{"Inputs":{"input1":{"Values":[["0"]]}}}`, wantStatus: 400, wantCode: "BadUserArgument", wantDetail: "InputMismatchError"},
		{name: "short row", body: `{"Inputs":{"input1":{"ColumnNames":["a","b"],"Values":[["0","1"],["0"]]}}}`, wantStatus: 400, wantCode: "BadUserArgument", wantDetail: "InputParseError"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := tt.url
			if url == "" {
				url = srv.URL()
			}
			srv.ResetStats()
			got := send(t, srv, url, "k", tt.body, tt.mods...)
			require.Equal(t, tt.wantStatus, got.status, "body %s", got.body)
			if tt.wantStatus != 200 {
				code, detail := errorCodes(t, got.body)
				assert.Equal(t, tt.wantCode, code)
				assert.Equal(t, tt.wantDetail, detail)
				assert.Equal(t, int64(1), srv.Stats().Rejected)
			}
		})
	}
}

func TestCustomScore(t *testing.T) {
	tests := []struct {
		name       string
		score      func(*amlpool.Request) (*amlpool.Response, error)
		swagger    bool
		wantStatus int
		wantBody   string
	}{
		{
			name:       "error becomes LibraryExecutionError",
			score:      func(*amlpool.Request) (*amlpool.Response, error) { return nil, errors.New("model exploded") },
			wantStatus: 400,
			wantBody:   `{"error":{"code":"LibraryExecutionError","message":"Module execution encountered an internal library error.","details":[{"code":"FailedToEvaluateRScript","target":"Score","message":"model exploded"}]}}`,
		},
		{
			name: "no HTML escaping",
			score: func(*amlpool.Request) (*amlpool.Response, error) {
				return &amlpool.Response{Results: map[string]*amlpool.Output{"output1": {Type: "table", Value: amlpool.Table{
					ColumnNames: []string{"Scored Labels"}, ColumnTypes: []string{"String"}, Values: [][]any{{">50K"}},
				}}}}, nil
			},
			wantStatus: 200,
			wantBody:   `{"Results":{"output1":{"type":"table","value":{"ColumnNames":["Scored Labels"],"ColumnTypes":["String"],"Values":[[">50K"]]}}}}`,
		},
		{
			name: "rows on a classic URL become columns in name order",
			score: func(*amlpool.Request) (*amlpool.Response, error) {
				return &amlpool.Response{Results: map[string]*amlpool.Output{"output1": {Value: amlpool.Table{
					Rows: []map[string]any{{"b": "2", "a": "1"}, {"a": "3"}},
				}}}}, nil
			},
			wantStatus: 200,
			wantBody:   `{"Results":{"output1":{"type":"table","value":{"ColumnNames":["a","b"],"Values":[["1","2"],["3",null]]}}}}`,
		},
		{
			name: "a table on a swagger URL becomes rows",
			score: func(*amlpool.Request) (*amlpool.Response, error) {
				return &amlpool.Response{Results: map[string]*amlpool.Output{"output1": {Type: "table", Value: amlpool.Table{
					ColumnNames: []string{"a", "b"}, Values: [][]any{{"1", "2"}},
				}}}}, nil
			},
			swagger:    true,
			wantStatus: 200,
			wantBody:   `{"Results":{"output1":[{"a":"1","b":"2"}]}}`,
		},
		{
			name:       "nil reply is empty Results",
			score:      func(*amlpool.Request) (*amlpool.Response, error) { return nil, nil },
			wantStatus: 200,
			wantBody:   `{"Results":{}}`,
		},
		{
			name: "a ragged table is the model's bug: 500",
			score: func(*amlpool.Request) (*amlpool.Response, error) {
				return &amlpool.Response{Results: map[string]*amlpool.Output{"output1": {Value: amlpool.Table{
					ColumnNames: []string{"a", "b"}, Values: [][]any{{"1"}},
				}}}}, nil
			},
			swagger:    true,
			wantStatus: 500,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, amltest.Config{Key: "k", Score: tt.score})
			url, body := srv.URL(), classicBody
			if tt.swagger {
				url, body = url+"&format=swagger", fixture(t, "request_swagger.json")
			}
			got := send(t, srv, url, "k", body)
			assert.Equal(t, tt.wantStatus, got.status, "body %s", got.body)
			if tt.wantBody != "" {
				assert.Equal(t, tt.wantBody, string(got.body))
			}
		})
	}
}

func TestScoreSeesNumbersExactly(t *testing.T) {
	var mu sync.Mutex // Score runs on the server's goroutines
	var seen *amlpool.Request
	srv := newServer(t, amltest.Config{Key: "k", Score: func(in *amlpool.Request) (*amlpool.Response, error) {
		mu.Lock()
		seen = in
		mu.Unlock()
		return amltest.Echo(in)
	}})
	got := send(t, srv, srv.URL(), "k", fixture(t, "request_typed.json"))
	require.Equal(t, http.StatusOK, got.status, "body %s", got.body)
	mu.Lock()
	defer mu.Unlock()
	require.NotNil(t, seen)
	assert.Equal(t, map[string]any{"Random seed": json.Number("12345")}, seen.GlobalParameters)
	assert.Equal(t, []any{json.Number("20"), "female", json.Number("21"), json.Number("0"), "no", "Northeast"}, seen.Inputs["Input1"].Values[0])
}

// TestLatencyFuncHoldsCalls holds calls inside a LatencyFunc controlled by
// channels: the other way to fill an endpoint to its cap.
func TestLatencyFuncHoldsCalls(t *testing.T) {
	const mcc = 4
	arrived := make(chan struct{})
	proceed := make(chan struct{})
	srv := newServer(t, amltest.Config{
		MaxConcurrentCalls: mcc,
		LatencyFunc: func() time.Duration {
			arrived <- struct{}{}
			<-proceed
			return 0
		},
	})
	var wg sync.WaitGroup
	for range mcc {
		wg.Go(func() { assert.Equal(t, http.StatusOK, score(t, srv).status) })
	}
	for range mcc {
		<-arrived
	}
	got := score(t, srv)
	assert.Equal(t, http.StatusServiceUnavailable, got.status)
	close(proceed)
	wg.Wait()
	st := srv.Stats()
	assert.Equal(t, int64(mcc), st.Scored)
	assert.Equal(t, int64(1), st.Throttled)
	assert.Equal(t, int64(mcc), st.PeakAdmitted)
}

func TestLatencyEndsWhenTheClientGoesAway(t *testing.T) {
	srv := newServer(t, amltest.Config{Latency: time.Hour})
	ep := srv.Endpoint()
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		resp, err := do(ctx, srv, ep.URL, ep.APIKey, classicBody)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	_, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.PeakAdmitted == 1 })
	require.NoError(t, err)
	cancel()
	assert.ErrorIs(t, <-errc, context.Canceled)
	_, err = srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.InFlight == 0 })
	require.NoError(t, err)
	assert.Zero(t, srv.Stats().Scored)
}
