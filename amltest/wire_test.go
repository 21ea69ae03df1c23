package amltest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
)

// These tests feed the service's sample bodies (testdata/rrs, quoted from
// its documentation and from captured replies) to both codecs: amlpool's
// (the JSON methods of its types) and the fake's own (wire.go). The two must
// read each sample alike, each must match what the sample says, and the
// fake must write back the sample it was given.

func sample(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "rrs", name))
	require.NoError(t, err)
	return b
}

func TestRequestSamplesBothCodecs(t *testing.T) {
	n := func(s string) json.Number { return json.Number(s) }
	tests := []struct {
		file    string
		swagger bool
		want    map[string]*amlpool.Table // what the sample says, written out by hand
		params  string                    // GlobalParameters, as JSON
	}{
		{
			file: "request_classic.json",
			want: map[string]*amlpool.Table{"input1": {ColumnNames: []string{"cog_speed"}, Values: [][]any{{"0"}, {"1"}}}},
			// GlobalParameters: {} in the sample.
			params: `{}`,
		},
		{
			file: "request_typed.json",
			want: map[string]*amlpool.Table{"Input1": {
				ColumnNames: []string{"age", "sex", "bmi", "children", "smoker", "region"},
				Values: [][]any{
					{n("20"), "female", n("21"), n("0"), "no", "Northeast"},
					{n("30"), "male", n("41"), n("1"), "yes", "Southwest"},
				},
			}},
			params: `{"Random seed": 12345}`,
		},
		{
			file:    "request_swagger.json",
			swagger: true,
			want: map[string]*amlpool.Table{"input1": {Rows: []map[string]any{
				{"column1": "value1", "column2": "value2", "column3": "value3"},
			}}},
			params: `{}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			body := sample(t, tt.file)

			fake, apiErr := decodeRequest(body, tt.swagger)
			require.Nil(t, apiErr)
			var lib amlpool.Request
			require.NoError(t, json.Unmarshal(body, &lib))

			assert.Equal(t, tt.want, fake.Inputs, "the fake's codec")
			assert.Equal(t, tt.want, lib.Inputs, "amlpool's codec")
			gp, err := json.Marshal(fake.GlobalParameters)
			require.NoError(t, err)
			assert.JSONEq(t, tt.params, string(gp))
			// The fake keeps numbers exact in GlobalParameters too.
			if tt.file == "request_typed.json" {
				assert.Equal(t, n("12345"), fake.GlobalParameters["Random seed"])
			}

			// What amlpool sends for the decoded request is the sample, and
			// the fake reads it back unchanged.
			sent, err := fake.MarshalJSON()
			require.NoError(t, err)
			assert.JSONEq(t, string(body), string(sent))
			again, apiErr := decodeRequest(sent, tt.swagger)
			require.Nil(t, apiErr)
			assert.Equal(t, fake, again)

			// The form the other URL wants is refused.
			_, apiErr = decodeRequest(body, !tt.swagger)
			require.NotNil(t, apiErr)
			assert.Equal(t, "RequestBodyInvalid", apiErr.detail)
		})
	}
}

func TestReplySamplesBothCodecs(t *testing.T) {
	tests := []struct {
		file             string
		swagger, details bool
		check            func(t *testing.T, r *amlpool.Response) // what the sample says
	}{
		{file: "response_details.json", details: true, check: func(t *testing.T, r *amlpool.Response) {
			require.Len(t, r.Results, 1)
			assert.Equal(t, &amlpool.Output{Type: "table", Value: amlpool.Table{
				ColumnNames: []string{"Scored Labels", "Scored Probabilities"},
				ColumnTypes: []string{"String", "Double"},
				Values:      [][]any{{">50K", "0.922785222530365"}, {">50K", "0.922785222530365"}},
			}}, r.Results["output1"])
		}},
		{file: "response_nodetails.json", check: func(t *testing.T, r *amlpool.Response) {
			require.Len(t, r.Results, 2)
			assert.Equal(t, &amlpool.Output{Type: "table", Value: amlpool.Table{
				Values: [][]any{{"29.4621959870899"}, {"25.1658357600726"}},
			}}, r.Results["output1"])
			assert.Equal(t, &amlpool.Output{Type: "table", Value: amlpool.Table{
				Values: [][]any{{"data:text/plain,Execution OK\r\n", nil}},
			}}, r.Results["output2"])
		}},
		{file: "response_swagger_churn.json", swagger: true, check: func(t *testing.T, r *amlpool.Response) {
			assert.Equal(t, &amlpool.Output{Value: amlpool.Table{Rows: []map[string]any{
				{"Scored Labels": "Churner", "Scored Probabilities": "0.287719696760178"},
			}}}, r.Results["output1"])
		}},
		{file: "response_swagger_titanic.json", swagger: true, check: func(t *testing.T, r *amlpool.Response) {
			assert.Equal(t, &amlpool.Output{Value: amlpool.Table{Rows: []map[string]any{
				{"Survived": "-1", "Scored Labels": "1", "Scored Probabilities": "0.999785125255585"},
			}}}, r.Results["output1"])
		}},
		{file: "response_doc2016_fixed.json", details: true, check: func(t *testing.T, r *amlpool.Response) {
			assert.Equal(t, &amlpool.Output{Type: "DataTable", Value: amlpool.Table{
				ColumnNames: []string{"cog_speed"}, ColumnTypes: []string{"Numeric"},
				Values: [][]any{{"0"}, {"1"}},
			}}, r.Results["output1"])
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			body := sample(t, tt.file)

			var lib amlpool.Response
			require.NoError(t, json.Unmarshal(body, &lib))
			fake := decodeReplyWire(t, body)
			tt.check(t, &lib)
			tt.check(t, fake)
			assert.Equal(t, &lib, fake, "amlpool's codec and the fake's wire types read the sample alike")

			// Given what the sample holds, the fake writes the sample (less
			// the stray GlobalParameters of the 2016 doc), HTML unescaped.
			out, err := encodeResponse(fake, tt.swagger, tt.details)
			require.NoError(t, err)
			var want map[string]any
			require.NoError(t, json.Unmarshal(body, &want))
			delete(want, "GlobalParameters")
			wantJSON, err := json.Marshal(want)
			require.NoError(t, err)
			assert.JSONEq(t, string(wantJSON), string(out))
			if bytes.Contains(body, []byte(">50K")) {
				assert.Contains(t, string(out), ">50K")
			}
		})
	}
}

// decodeReplyWire reads a reply with the fake's wire types alone (the fake
// writes replies and never reads them, so this reader is the test's) and
// turns it into amlpool's types field by field.
func decodeReplyWire(t *testing.T, body []byte) *amlpool.Response {
	t.Helper()
	var w struct {
		Results map[string]json.RawMessage `json:"Results"`
	}
	require.NoError(t, decodeNumbers(body, &w))
	resp := &amlpool.Response{Results: map[string]*amlpool.Output{}}
	for name, raw := range w.Results {
		switch firstByte(raw) {
		case 'n':
			resp.Results[name] = nil
		case '[':
			var rows wireRows
			require.NoError(t, decodeNumbers(raw, &rows))
			resp.Results[name] = &amlpool.Output{Value: amlpool.Table{Rows: rows}}
		default:
			var o wireOutput
			require.NoError(t, decodeNumbers(raw, &o))
			resp.Results[name] = &amlpool.Output{Type: o.Type, Value: amlpool.Table{
				ColumnNames: o.Value.ColumnNames, ColumnTypes: o.Value.ColumnTypes, Values: o.Value.Values,
			}}
		}
	}
	return resp
}

// FuzzRequestCodecs: whatever body both codecs accept, they read alike, and
// what amlpool sends for the fake's reading is read back unchanged.
func FuzzRequestCodecs(f *testing.F) {
	for _, name := range []string{"request_classic.json", "request_typed.json", "request_swagger.json"} {
		b, err := os.ReadFile(filepath.Join("..", "testdata", "rrs", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, name == "request_swagger.json")
	}
	f.Add([]byte(`{"Inputs":{"b":{"ColumnNames":["x"],"Values":[[1e400],[-0.0],[{"a":[1]}]]},"a":{"ColumnNames":[],"Values":[]}}}`), false)
	f.Add([]byte(`{"inputs":{"x":[{"k":null},{}],"x":[{"k":"\u00e9\ud800"}]},"GlobalParameters":null}`), true)
	f.Fuzz(func(t *testing.T, body []byte, swagger bool) {
		fake, apiErr := decodeRequest(body, swagger)
		if apiErr != nil {
			return
		}
		var lib amlpool.Request
		if err := json.Unmarshal(body, &lib); err != nil {
			t.Fatalf("the fake accepts what amlpool's codec cannot read (%v): %q", err, body)
		}
		if !assert.Equal(t, lib.Inputs, fake.Inputs) {
			t.Fatalf("the codecs differ on %q", body)
		}
		sent, err := fake.MarshalJSON()
		if err != nil {
			t.Fatalf("amlpool cannot encode the fake's reading of %q: %v", body, err)
		}
		again, apiErr := decodeRequest(sent, swagger)
		if apiErr != nil || !assert.Equal(t, fake.Inputs, again.Inputs) {
			t.Fatalf("%q sent as %q reads back differently (%v)", body, sent, apiErr)
		}
	})
}
