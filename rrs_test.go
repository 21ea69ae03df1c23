package amlpool

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rrsFixture returns one of the service's bodies, kept in testdata/rrs.
func rrsFixture(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "rrs", name))
	require.NoError(tb, err)
	return b
}

// rrsResponseFixtures are the reply bodies the fuzz target starts from.
var rrsResponseFixtures = []string{
	"response_details.json",
	"response_nodetails.json",
	"response_swagger_churn.json",
	"response_swagger_titanic.json",
	"response_doc2016_verbatim.json",
	"response_doc2016_fixed.json",
	"error_library.json",
	"error_throttled.json",
}

func TestDecodeResponseFixtures(t *testing.T) {
	tests := []struct {
		name    string
		fixture string
		want    *Response
	}{
		{
			name:    "classic with details",
			fixture: "response_details.json",
			want: &Response{Results: map[string]*Output{"output1": {
				Type: "table",
				Value: Table{
					ColumnNames: []string{"Scored Labels", "Scored Probabilities"},
					ColumnTypes: []string{"String", "Double"},
					Values: [][]any{
						{">50K", "0.922785222530365"},
						{">50K", "0.922785222530365"},
					},
				},
			}}},
		},
		{
			name:    "classic without details: no column lists, second port, null cell",
			fixture: "response_nodetails.json",
			want: &Response{Results: map[string]*Output{
				"output1": {Type: "table", Value: Table{Values: [][]any{{"29.4621959870899"}, {"25.1658357600726"}}}},
				"output2": {Type: "table", Value: Table{Values: [][]any{{"data:text/plain,Execution OK\r\n", nil}}}},
			}},
		},
		{
			name:    "swagger churn",
			fixture: "response_swagger_churn.json",
			want: &Response{Results: map[string]*Output{"output1": {Value: Table{Rows: []map[string]any{
				{"Scored Labels": "Churner", "Scored Probabilities": "0.287719696760178"},
			}}}}},
		},
		{
			name:    "swagger titanic",
			fixture: "response_swagger_titanic.json",
			want: &Response{Results: map[string]*Output{"output1": {Value: Table{Rows: []map[string]any{
				{"Survived": "-1", "Scored Labels": "1", "Scored Probabilities": "0.999785125255585"},
			}}}}},
		},
		{
			// The 2016 doc sample with its typo fixed: "DataTable", "Numeric"
			// and a stray top-level GlobalParameters, which is ignored.
			name:    "2016 doc sample",
			fixture: "response_doc2016_fixed.json",
			want: &Response{Results: map[string]*Output{"output1": {
				Type: "DataTable",
				Value: Table{
					ColumnNames: []string{"cog_speed"},
					ColumnTypes: []string{"Numeric"},
					Values:      [][]any{{"0"}, {"1"}},
				},
			}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeResponse(rrsFixture(t, tt.fixture))
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestDecodeResponseTolerant(t *testing.T) {
	tests := []struct {
		name string
		body string
		want *Response
	}{
		{
			name: "unknown top-level fields",
			body: `{"ContainerAllocationDurationMs":0,"ExecutionDurationMs":12,"IsWarmContainer":true,"GlobalParameters":{},` +
				`"Results":{"output1":{"type":"table","value":{"ColumnNames":["a"],"Values":[["1"]]}}}}`,
			want: &Response{Results: map[string]*Output{"output1": {Type: "table", Value: Table{
				ColumnNames: []string{"a"}, Values: [][]any{{"1"}},
			}}}},
		},
		{
			name: "unknown fields in output and table",
			body: `{"Results":{"o":{"type":"table","extra":1,"value":{"Values":[],"Other":[1]}}}}`,
			want: &Response{Results: map[string]*Output{"o": {Type: "table", Value: Table{Values: [][]any{}}}}},
		},
		{
			name: "typed cells keep precision",
			body: `{"Results":{"o":{"type":"table","value":{"ColumnNames":["big","f","b","n","s"],` +
				`"Values":[[12345678901234567890,1.5e300,true,null,"x"]]}}}}`,
			want: &Response{Results: map[string]*Output{"o": {Type: "table", Value: Table{
				ColumnNames: []string{"big", "f", "b", "n", "s"},
				Values:      [][]any{{json.Number("12345678901234567890"), json.Number("1.5e300"), true, nil, "x"}},
			}}}},
		},
		{
			name: "swagger numbers keep precision",
			body: `{"Results":{"o":[{"id":9007199254740993,"n":null}]}}`,
			want: &Response{Results: map[string]*Output{"o": {Value: Table{Rows: []map[string]any{
				{"id": json.Number("9007199254740993"), "n": nil},
			}}}}},
		},
		{
			name: "ragged rows without ColumnNames are kept",
			body: `{"Results":{"o":{"type":"table","value":{"Values":[["1"],["1","2"]]}}}}`,
			want: &Response{Results: map[string]*Output{"o": {Type: "table", Value: Table{Values: [][]any{{"1"}, {"1", "2"}}}}}},
		},
		{
			name: "empty Results",
			body: `{"Results":{}}`,
			want: &Response{Results: map[string]*Output{}},
		},
		{
			name: "null output and null table",
			body: `{"Results":{"a":null,"b":{"type":"table","value":null}}}`,
			want: &Response{Results: map[string]*Output{"a": nil, "b": {Type: "table"}}},
		},
		{
			name: "rows inside a typed output",
			body: `{"Results":{"o":{"type":"table","value":[{"a":"1"}]}}}`,
			want: &Response{Results: map[string]*Output{"o": {Type: "table", Value: Table{Rows: []map[string]any{{"a": "1"}}}}}},
		},
		{
			name: "ColumnTypes shorter than ColumnNames is not data loss",
			body: `{"Results":{"o":{"type":"table","value":{"ColumnNames":["a","b"],"ColumnTypes":["String"],"Values":[["1","2"]]}}}}`,
			want: &Response{Results: map[string]*Output{"o": {Type: "table", Value: Table{
				ColumnNames: []string{"a", "b"}, ColumnTypes: []string{"String"}, Values: [][]any{{"1", "2"}},
			}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeResponse([]byte(tt.body))
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestDecodeResponseRaggedRow(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantRow   int
		wantCells int
		wantWant  int
	}{
		{
			name:    "short row",
			body:    `{"Results":{"scores":{"type":"table","value":{"ColumnNames":["a","b"],"Values":[["1","2"],["3"]]}}}}`,
			wantRow: 1, wantCells: 1, wantWant: 2,
		},
		{
			name:    "long row in swagger-free second output",
			body:    `{"Results":{"ok":[{"a":"1"}],"scores":{"type":"table","value":{"ColumnNames":["a"],"Values":[["1","2","3"]]}}}}`,
			wantRow: 0, wantCells: 3, wantWant: 1,
		},
		{
			name:    "null row",
			body:    `{"Results":{"scores":{"type":"table","value":{"ColumnNames":["a"],"Values":[["1"],["2"],null]}}}}`,
			wantRow: 2, wantCells: 0, wantWant: 1,
		},
		{
			name:    "empty ColumnNames with cells",
			body:    `{"Results":{"scores":{"type":"table","value":{"ColumnNames":[],"Values":[["1"]]}}}}`,
			wantRow: 0, wantCells: 1, wantWant: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeResponse([]byte(tt.body))
			require.Error(t, err)
			assert.Nil(t, got)
			var se *shapeError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, &shapeError{Row: tt.wantRow, Cells: tt.wantCells, Want: tt.wantWant}, se)
			// The message is the contract here: it names the output and the row.
			assert.ErrorContains(t, err, `amlpool: decode response: output "scores": `)
			assert.ErrorContains(t, err, se.Error())
		})
	}
}

// Batch scoring reads a reply's cells by place, so a table without column
// names must have rows of one width, the first row's; decodeResponse keeps
// such a table as it came (TestDecodeResponseTolerant).
func TestCheckUnnamedWidths(t *testing.T) {
	tests := []struct {
		name string
		t    Table
		want *shapeError
	}{
		{"rows of one width", Table{Values: [][]any{{"1", "2"}, {"3", "4"}}}, nil},
		{"no rows", Table{Values: [][]any{}}, nil},
		{"named: checkShape's business", Table{ColumnNames: []string{"a"}, Values: [][]any{{"1"}, {"1", "2"}}}, nil},
		{"short row", Table{Values: [][]any{{"1", "2"}, {"3", "4"}, {"5"}}}, &shapeError{Row: 2, Cells: 1, Want: 2, Unnamed: true}},
		{"long row", Table{Values: [][]any{{"1"}, {"2", "3"}}}, &shapeError{Row: 1, Cells: 2, Want: 1, Unnamed: true}},
		{"null row", Table{Values: [][]any{{"1"}, nil}}, &shapeError{Row: 1, Cells: 0, Want: 1, Unnamed: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.t.checkUnnamedWidths()
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			var se *shapeError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, tt.want, se)
		})
	}
	assert.EqualError(t, &shapeError{Row: 2, Cells: 1, Want: 2, Unnamed: true},
		"row 3 (Values[2]) has 1 cells, want 2 (as many as row 1: the table names no columns)")
}

func TestDecodeResponseInvalidJSON(t *testing.T) {
	verbatim := rrsFixture(t, "response_doc2016_verbatim.json")
	tests := []struct {
		name       string
		body       []byte
		wantOffset int64
	}{
		// The 2016 doc sample as printed: "].” where "]," was meant.
		{name: "2016 doc typo", body: verbatim, wantOffset: int64(bytes.Index(verbatim, []byte("]."))) + 2},
		{name: "truncated", body: []byte(`{"Results":{"output1":{"type":"ta`), wantOffset: 33},
		{name: "trailing garbage", body: []byte(`{"Results":{}} x`), wantOffset: 16},
		{name: "empty", body: nil, wantOffset: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeResponse(tt.body)
			var se *json.SyntaxError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, tt.wantOffset, se.Offset)
			assert.ErrorContains(t, err, "amlpool: decode response: invalid JSON at byte offset ")
		})
	}
}

func TestDecodeResponseRejects(t *testing.T) {
	tests := []struct {
		name        string
		body        []byte
		wantTypeErr bool   // wraps a *json.UnmarshalTypeError
		wantInMsg   string // names what was wrong
	}{
		{name: "error body: library error", body: rrsFixture(t, "error_library.json"), wantInMsg: `no "Results"`},
		{name: "error body: throttled", body: rrsFixture(t, "error_throttled.json"), wantInMsg: `no "Results"`},
		{name: "empty object", body: []byte(`{}`), wantInMsg: `no "Results"`},
		{name: "null Results", body: []byte(`{"Results":null}`), wantInMsg: `no "Results"`},
		{name: "null body", body: []byte(`null`), wantInMsg: `no "Results"`},
		{name: "array body", body: []byte(`[]`), wantTypeErr: true},
		{name: "Results is an array", body: []byte(`{"Results":[]}`), wantTypeErr: true},
		{name: "output is a number", body: []byte(`{"Results":{"o1":5}}`), wantInMsg: `output "o1": amlpool: an output must be`},
		{name: "table is a string", body: []byte(`{"Results":{"o1":{"type":"table","value":"x"}}}`), wantInMsg: `output "o1": amlpool: a table must be`},
		{name: "ColumnNames of numbers", body: []byte(`{"Results":{"o1":{"value":{"ColumnNames":[1]}}}}`), wantTypeErr: true, wantInMsg: `output "o1"`},
		{name: "row is an object", body: []byte(`{"Results":{"o1":{"value":{"Values":[{"a":1}]}}}}`), wantTypeErr: true, wantInMsg: `output "o1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeResponse(tt.body)
			require.Error(t, err)
			assert.Nil(t, got)
			assert.ErrorContains(t, err, "amlpool: decode response: ")
			if tt.wantTypeErr {
				var te *json.UnmarshalTypeError
				assert.ErrorAs(t, err, &te)
			}
			if tt.wantInMsg != "" {
				assert.ErrorContains(t, err, tt.wantInMsg)
			}
		})
	}
}

func TestEncodeRequest(t *testing.T) {
	tests := []struct {
		name string
		req  *Request
		want string
	}{
		{
			name: "classic, nil GlobalParameters sent as {}",
			req: &Request{Inputs: map[string]*Table{"input1": {
				ColumnNames: []string{"cog_speed"},
				Values:      [][]any{{"0"}, {"1"}},
			}}},
			want: `{"Inputs":{"input1":{"ColumnNames":["cog_speed"],"Values":[["0"],["1"]]}},"GlobalParameters":{}}`,
		},
		{
			name: "typed cells and a global parameter",
			req: &Request{
				Inputs: map[string]*Table{"Input1": {
					ColumnNames: []string{"age", "sex", "smoker"},
					Values:      [][]any{{20, "female", false}, {json.Number("30"), nil, true}},
				}},
				GlobalParameters: map[string]any{"Random seed": 12345},
			},
			want: `{"Inputs":{"Input1":{"ColumnNames":["age","sex","smoker"],"Values":[[20,"female",false],[30,null,true]]}},"GlobalParameters":{"Random seed":12345}}`,
		},
		{
			name: "swagger rows",
			req: &Request{Inputs: map[string]*Table{"input1": {Rows: []map[string]any{
				{"column1": "value1", "column2": "value2", "column3": "value3"},
			}}}},
			want: `{"Inputs":{"input1":[{"column1":"value1","column2":"value2","column3":"value3"}]},"GlobalParameters":{}}`,
		},
		{
			name: "no HTML escaping",
			req:  &Request{Inputs: map[string]*Table{"input1": {ColumnNames: []string{"a&b"}, Values: [][]any{{"<50K>"}}}}},
			want: `{"Inputs":{"input1":{"ColumnNames":["a&b"],"Values":[["<50K>"]]}},"GlobalParameters":{}}`,
		},
		{
			name: "empty but present lists stay present",
			req:  &Request{Inputs: map[string]*Table{"input1": {ColumnNames: []string{}, Values: [][]any{}}}, GlobalParameters: map[string]any{}},
			want: `{"Inputs":{"input1":{"ColumnNames":[],"Values":[]}},"GlobalParameters":{}}`,
		},
		{
			name: "zero request",
			req:  &Request{},
			want: `{"Inputs":{},"GlobalParameters":{}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := encodeRequest(tt.req)
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(got))
		})
	}
}

// TestEncodeRequestFixtures decodes the request bodies of testdata/rrs
// and checks that encoding gives the same JSON back.
func TestEncodeRequestFixtures(t *testing.T) {
	for _, name := range []string{"request_classic.json", "request_typed.json", "request_swagger.json"} {
		t.Run(name, func(t *testing.T) {
			body := rrsFixture(t, name)
			var req Request
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.UseNumber()
			require.NoError(t, dec.Decode(&req))
			got, err := encodeRequest(&req)
			require.NoError(t, err)
			assert.JSONEq(t, string(body), string(got))
		})
	}
}

func TestEncodeRequestRejects(t *testing.T) {
	tests := []struct {
		name      string
		req       *Request
		wantShape *shapeError
		wantErr   error
		wantInMsg string
	}{
		{name: "nil request", req: nil, wantInMsg: "nil Request"},
		{
			name:      "nil input",
			req:       &Request{Inputs: map[string]*Table{"input1": nil}},
			wantInMsg: `input "input1" is nil`,
		},
		{
			name: "short row",
			req: &Request{Inputs: map[string]*Table{"input2": {
				ColumnNames: []string{"a", "b"},
				Values:      [][]any{{"1", "2"}, {"1", "2"}, {"1"}},
			}}},
			wantShape: &shapeError{Row: 2, Cells: 1, Want: 2},
			wantInMsg: `input "input2": row 3 (Values[2]) has 1 cells, want 2`,
		},
		{
			name: "long row",
			req: &Request{Inputs: map[string]*Table{"input1": {
				ColumnNames: []string{"a"},
				Values:      [][]any{{"1", "2"}},
			}}},
			wantShape: &shapeError{Row: 0, Cells: 2, Want: 1},
			wantInMsg: `input "input1": row 1 (Values[0])`,
		},
		{
			name: "both forms",
			req: &Request{Inputs: map[string]*Table{"input1": {
				ColumnNames: []string{"a"},
				Rows:        []map[string]any{{"a": "1"}},
			}}},
			wantErr:   errBothForms,
			wantInMsg: `input "input1"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := encodeRequest(tt.req)
			require.Error(t, err)
			assert.Nil(t, got)
			assert.ErrorContains(t, err, "amlpool: encode request: ")
			assert.ErrorContains(t, err, tt.wantInMsg)
			if tt.wantShape != nil {
				var se *shapeError
				require.ErrorAs(t, err, &se)
				assert.Equal(t, tt.wantShape, se)
			}
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
			}
		})
	}
}

func TestEncodeRequestUnsupportedValue(t *testing.T) {
	req := &Request{Inputs: map[string]*Table{"input1": {ColumnNames: []string{"x"}, Values: [][]any{{math.NaN()}}}}}
	_, err := encodeRequest(req)
	var ue *json.UnsupportedValueError
	require.ErrorAs(t, err, &ue)
	assert.ErrorContains(t, err, "amlpool: encode request: ")
}

func TestTableNumRowsAndColumn(t *testing.T) {
	tests := []struct {
		name     string
		table    *Table
		wantRows int
		column   string
		wantCol  int
	}{
		{name: "nil", table: nil, wantRows: 0, column: "a", wantCol: -1},
		{name: "zero", table: &Table{}, wantRows: 0, column: "a", wantCol: -1},
		{
			name:     "classic",
			table:    &Table{ColumnNames: []string{"a", "Scored Labels"}, Values: [][]any{{"1", "x"}, {"2", "y"}, {"3", "z"}}},
			wantRows: 3, column: "Scored Labels", wantCol: 1,
		},
		{
			name:     "classic, absent column",
			table:    &Table{ColumnNames: []string{"a"}, Values: [][]any{{"1"}}},
			wantRows: 1, column: "scored labels", wantCol: -1,
		},
		{
			name:     "no details: values without names",
			table:    &Table{Values: [][]any{{"1"}, {"2"}}},
			wantRows: 2, column: "a", wantCol: -1,
		},
		{
			name:     "swagger",
			table:    &Table{Rows: []map[string]any{{"a": "1"}, {"a": "2"}}},
			wantRows: 2, column: "a", wantCol: -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.wantRows, tt.table.NumRows())
			assert.Equal(t, tt.wantCol, tt.table.Column(tt.column))
		})
	}
}

func TestOutputMarshalJSON(t *testing.T) {
	tests := []struct {
		name string
		out  Output
		want string
	}{
		{
			name: "classic",
			out:  Output{Type: "table", Value: Table{ColumnNames: []string{"a"}, ColumnTypes: []string{"String"}, Values: [][]any{{">50K"}}}},
			want: `{"type":"table","value":{"ColumnNames":["a"],"ColumnTypes":["String"],"Values":[[">50K"]]}}`,
		},
		{name: "swagger", out: Output{Value: Table{Rows: []map[string]any{{"a": "1"}}}}, want: `[{"a":"1"}]`},
		{name: "typed rows keep the wrapper", out: Output{Type: "table", Value: Table{Rows: []map[string]any{}}}, want: `{"type":"table","value":[]}`},
		{name: "zero", out: Output{}, want: `{"value":{}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := marshalNoEscape(tt.out)
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(got))

			var back Output
			require.NoError(t, json.Unmarshal(got, &back))
			assert.Equal(t, tt.out, back)
		})
	}
}

func TestTableMarshalJSONBothForms(t *testing.T) {
	_, err := json.Marshal(Output{Value: Table{Values: [][]any{{"1"}}, Rows: []map[string]any{{"a": "1"}}}})
	assert.ErrorIs(t, err, errBothForms)
}

// TestResponseUnmarshalWithoutUseNumber checks that a caller's own
// json.Unmarshal into a Response also keeps numbers exact: the tables decode
// their cells themselves.
func TestResponseUnmarshalWithoutUseNumber(t *testing.T) {
	var resp Response
	require.NoError(t, json.Unmarshal([]byte(`{"Results":{"o":{"type":"table","value":{"Values":[[9007199254740993]]}}}}`), &resp))
	require.Contains(t, resp.Results, "o")
	assert.Equal(t, [][]any{{json.Number("9007199254740993")}}, resp.Results["o"].Value.Values)
}
