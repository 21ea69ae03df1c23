package amlpool

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEncodeOnline(t *testing.T) {
	b, err := encodeOnline([]string{"a", "b>c"}, 40, [][]any{{1, "x<y"}, {json.Number("2.5"), nil}})
	require.NoError(t, err)
	assert.Equal(t, `{"input_data":{"columns":["a","b>c"],"index":[40,41],"data":[[1,"x<y"],[2.5,null]]}}`, string(b))
}

func TestDecodeOnline(t *testing.T) {
	n := func(s string) json.Number { return json.Number(s) }
	for _, tt := range []struct {
		body   string
		cols   []string
		values [][]any
	}{
		{`[0, 1.5, "a", true, null]`, []string{"predictions"}, [][]any{{n("0")}, {n("1.5")}, {"a"}, {true}, {nil}}},
		{` {"predictions": [1, 2]} `, []string{"predictions"}, [][]any{{n("1")}, {n("2")}}},
		{`[]`, []string{"predictions"}, [][]any{}},
		{`{"predictions": []}`, []string{"predictions"}, [][]any{}},
		{`[[0.1, 0.9], [0.7]]`, []string{"0", "1"}, [][]any{{n("0.1"), n("0.9")}, {n("0.7"), nil}}},
		{`[{"z": 1, "a": "x"}, {"a": "y", "m": {"k": 2}}]`, []string{"z", "a", "m"},
			[][]any{{n("1"), "x", nil}, {nil, "y", map[string]any{"k": n("2")}}}},
		{`[{"a": 1, "a": 2}]`, []string{"a"}, [][]any{{n("2")}}},
	} {
		got, _, err := decodeOnline([]byte(tt.body))
		require.NoError(t, err, tt.body)
		assert.Equal(t, tt.cols, got.ColumnNames, tt.body)
		assert.Equal(t, tt.values, got.Values, tt.body)
	}
	for _, tt := range []struct{ body, want string }{
		{``, "an empty body"},
		{`12`, "a JSON number"},
		{`{"Results": {}}`, `without "predictions"`},
		{`{"predictions": 3}`, `an object whose "predictions" is a JSON number (want a JSON array of predictions`},
		{`{"predictions": null}`, `an object whose "predictions" is a JSON null (want a JSON array of predictions`},
		{`{"Predictions": null, "x": 1}`, `"predictions" is a JSON null`},
		{`{"predictions": {"a": [1]}}`, `"predictions" is a JSON object`},
		{`[1, 2`, "invalid JSON at byte offset"},
		{`[{"a": 1}, 2]`, "prediction 1 is a JSON number, but prediction 0 is a JSON object"},
		{`[1, {"a": 1}]`, "prediction 1 is a JSON object"},
	} {
		_, _, err := decodeOnline([]byte(tt.body))
		require.Error(t, err, tt.body)
		assert.ErrorIs(t, err, ErrMalformedResponse, tt.body)
		assert.Contains(t, err.Error(), tt.want, tt.body)
	}
}

// FuzzDecodeOnline feeds the online reply decoder arbitrary bodies. The
// bar: no panic; an error matches ErrMalformedResponse; a table it returns
// has one row per prediction, each with one cell per column, and columns
// of unique names.
func FuzzDecodeOnline(f *testing.F) {
	for _, seed := range []string{
		`[0, 1]`, `{"predictions": ["a"]}`, `[[1, 2], [3]]`, `[{"a": 1, "b": [2]}, {"c": null}]`,
		`[]`, `{}`, `[{"a":1}, 2]`, `[1, [2]]`, `null`, `"x"`, `[{"a": 1, "a": 2}]`, `{"predictions": [{"": 1}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		tab, _, err := decodeOnline(body)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformedResponse)
			return
		}
		var preds []json.RawMessage
		if json.Unmarshal(body, &preds) != nil {
			var wire struct{ Predictions []json.RawMessage }
			require.NoError(t, json.Unmarshal(body, &wire), "accepted %q", body)
			preds = wire.Predictions
		}
		require.Len(t, tab.Values, len(preds))
		seen := map[string]bool{}
		for _, c := range tab.ColumnNames {
			require.False(t, seen[c], "column %q twice", c)
			seen[c] = true
		}
		for i, row := range tab.Values {
			require.Len(t, row, len(tab.ColumnNames), "row %d", i)
		}
	})
}

func TestParseModelStatus(t *testing.T) {
	for v, want := range map[string]int{"400": 400, " 503 ": 503, "599": 599, "100": 100,
		"": 0, "99": 0, "600": 0, "4000": 0, "+40": 0, "4 0": 0, "abc": 0, "-400": 0, "099": 0} {
		assert.Equal(t, want, parseModelStatus(v), "%q", v)
	}
}

// FuzzParseModelStatus: the model's status header gives 0 or a status in
// 100..599, and that status is the header's number.
func FuzzParseModelStatus(f *testing.F) {
	for _, seed := range []string{"400", " 500", "5000", "", "x", "-1", "１２３", "4\x000"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got := parseModelStatus(v)
		if got == 0 {
			return
		}
		require.GreaterOrEqual(t, got, 100)
		require.LessOrEqual(t, got, 599)
		n, err := strconv.Atoi(strings.TrimSpace(v))
		require.NoError(t, err, "%q", v)
		require.Equal(t, n, got)
	})
}

// FuzzOnlineAPIError: an online endpoint's error reply, whatever its body
// and model headers, gives an APIError whose text holds no token, and a
// verdict among the four.
func FuzzOnlineAPIError(f *testing.F) {
	const token = "eyJ0eXAiOiJKV1Qi.fuzz-token"
	f.Add(424, []byte(`{"message":"model failed"}`), "400", "bad input")
	f.Add(429, []byte(`{"message":"Too many pending requests"}`), "", "")
	f.Add(429, []byte(`{"message":"Rate-limited"}`), "", "")
	f.Add(424, []byte(token), "500", token)
	f.Add(401, []byte(`{"message":"`+token+`"}`), "", "")
	f.Fuzz(func(t *testing.T, status int, body []byte, modelStatus, reason string) {
		if status < 100 || status > 999 {
			return
		}
		h := http.Header{}
		h.Set("ms-azureml-model-error-statuscode", modelStatus)
		h.Set("ms-azureml-model-error-reason", reason)
		e := parseAPIError("e", status, body, []string{token})
		parseOnlineError(e, h, body, []string{token})
		require.NotContains(t, e.Error(), token)
		require.NotContains(t, e.Reason(), token)
		require.LessOrEqual(t, len(e.ModelReason), maxModelReason)
		v := Classify(e)
		require.LessOrEqual(t, v, VerdictEndpointFault)
		if e.ModelInputFault() {
			require.Equal(t, VerdictGiveUp, v)
		}
		require.Equal(t, status == 429 && v == VerdictFull, errors.Is(e, ErrThrottled))
	})
}
