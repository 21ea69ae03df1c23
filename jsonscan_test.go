package amlpool

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fastResponseSeeds are reply bodies for the differential fuzz targets:
// the fixtures and bodies at the edges of what the fast path takes.
var fastResponseSeeds = []string{
	`{"Results":{}}`,
	`{"Results":{"a":null,"b":{"type":"table","value":null}}}`,
	`{"Results":{"o":{"type":"table","value":[{"a":"1"}]}}}`,
	`{"Results":{"o":{"value":{"ColumnNames":[],"Values":[[],null]}}}}`,
	`{"Results":{"o":{"type":"table","value":{"ColumnNames":["a","b"],"Values":[[1e400,-0],[true,{"x":[1]}]]}}}}`,
	`{"Results":{"o":[null,{},{"k":"\u00e9\ud800"}]}}`,
	`{"Results":{"o":[null,{},{"k":"\u00e9\ud83d\ude00 \"\\\/\b\f\n\r\t"}]}}`,
	`{"ExecutionDurationMs":3,"Results":{"o":{"type":"table","value":{"Values":[["1"]]}}},"Results":{"p":[]}}`,
	`{"Results":{"o":{"type":"table","value":{"ColumnNames":["a"],"Values":[["1","2"]]}}}}`,
	`{"results":{"o":{"type":"table","value":{"Values":[["1"]]}}}}`,
	`{"Results":{"o":{"Type":"table","value":{"values":[["1"]]}}}}`,
	`{"Results":{"o":{"type":"table","value":{"Column_Names":["a"],"Values":[["1"]]}}}}`,
	`{"Results":{"o":{"type":"table","value":{"ColumnNames":["a"],"Values":[["1"]],"Values":[["2"]]}}}}`,
	`{"Results":{"o":{"type":null,"value":{"Values":[[null,"x\u0000y","é",[],{}]]}}}}`,
	`{"Results":{"o":{"type":"table","value":{"ColumnNames":["a"],"Values":[["\xff"]]}}}}`,
	` {"Results" : { "o" : { "type" : "table" , "value" : { "ColumnNames" : [ "a" ] , "ColumnTypes":["Double"], "Values" : [ [ 0.5e-3 ] , [ -12 ] ] } } } } `,
	`{"Results":{"o":{"type":"table","value":{"Values":[[01]]}}}}`,
	`{"Results":{"o":{"type":"table","value":{"Values":[[1.]]}}}}`,
	`{"Results":{"o":{"type":"table","value":{"Values":[[tru]]}}}}`,
	`{"Results":{"o":{"type":"table","value":{"Values":[[1]]}}}} x`,
	"{\"Results\":{}}\x00", // a NUL after the value: not white space
	"{\"Results\":{}} \x00 ",
	`{"Results":{"o":{"type":"table","value":{"Values":[[1]],}}}}`,
	`{"Results":{"o":5}}`,
	`{"Results":[]}`,
	`[]`,
	`null`,
	``,
}

// FuzzDecodeResponseFast checks the fast path of decodeResponse against
// encoding/json: for any body, decodeResults and decodeResultsStd give the
// same value, or the same error; and so does decodeBatchResponse, told to
// expect any number of rows, the right one or not.
func FuzzDecodeResponseFast(f *testing.F) {
	for _, name := range rrsResponseFixtures {
		f.Add(rrsFixture(f, name), uint8(0))
		f.Add(rrsFixture(f, name), uint8(2))
	}
	for i, body := range fastResponseSeeds {
		f.Add([]byte(body), uint8(i%4))
	}
	f.Fuzz(func(t *testing.T, body []byte, rows uint8) {
		want, wantErr := decodeResultsStd(body)
		got, err := decodeResults(body)
		// The batch's scanner shares body's bytes, which body then keeps.
		gotBatch, errBatch := decodeBatchResponse(append([]byte(nil), body...), int(rows))
		if wantErr != nil {
			require.EqualError(t, err, wantErr.Error())
			require.Nil(t, got)
			require.EqualError(t, errBatch, wantErr.Error(), "batch, %d rows", rows)
			require.Nil(t, gotBatch)
			return
		}
		require.NoError(t, err)
		require.Equal(t, want, got)
		require.NoError(t, errBatch, "batch, %d rows", rows)
		require.Equal(t, want, gotBatch, "batch, %d rows", rows)
	})
}

// TestDecodeResponseFastTakes checks that the fast path takes the replies
// batch scoring reads, rather than leaving them all to encoding/json (which
// FuzzDecodeResponseFast would not notice), and declines what it must.
func TestDecodeResponseFastTakes(t *testing.T) {
	for _, name := range []string{"response_details.json", "response_nodetails.json", "response_swagger_churn.json", "response_swagger_titanic.json", "response_doc2016_fixed.json"} {
		_, ok := scanResults(rrsFixture(t, name))
		assert.True(t, ok, "%s: declined", name)
	}
	var b strings.Builder
	b.WriteString(`{"Results":{"output1":{"type":"table","value":{"ColumnNames":["id","Scored Labels","Scored Probabilities"],"ColumnTypes":["Int32","String","Double"],"Values":[`)
	for i := range 100 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `["%d","é \"%d\"",%d.5e-3]`, i, i, i)
	}
	b.WriteString(`]}}}}`)
	resp, ok := scanResults([]byte(b.String()))
	require.True(t, ok)
	vals := resp.Results["output1"].Value.Values
	require.Len(t, vals, 100)
	assert.Equal(t, []any{"7", `é "7"`, json.Number("7.5e-3")}, vals[7])
	assert.Equal(t, len(vals[7]), cap(vals[7]), "a row cannot grow into the next")

	for _, body := range []string{
		`{"results":{}}`, // another case: encoding/json takes it
		`{"Results":{},"Results":{}}`,
		`{"Results":{"o":{"type":"table","value":{"ColumnNames":["a"],"Values":[["\xff"]]}}}}`,
		`{"Results":{"o":{"type":"table","value":{"ColumnNames":["a"],"Values":[["\ud800"]]}}}}`,
		`{"Results":{"o":{"type":"table","value":{"ColumnNames":["a"],"Values":[[1]]}}}} x`,
		"{\"Results\":{}}\x00",
		"{\"Results\":{}} \x00",
		`{"Results":null}`,
		`{"Results":{"o":{"type":"table","value":{"Values":[[` + strings.Repeat("[", maxScanDepth) + strings.Repeat("]", maxScanDepth) + `]]}}}}`,
	} {
		_, ok := scanResults([]byte(body))
		assert.False(t, ok, "%s: taken", body)
	}
}

// labelReply is a reply of n rows of one label each, as the batch
// benchmarks' model gives, or, with echo, of each row's id and name too.
func labelReply(n int, echo bool) []byte {
	var b strings.Builder
	if echo {
		b.WriteString(`{"Results":{"output1":{"type":"table","value":{"ColumnNames":["id","name","Scored Labels","Scored Probabilities"],"ColumnTypes":["Int32","String","String","Double"],"Values":[`)
	} else {
		b.WriteString(`{"Results":{"output1":{"type":"table","value":{"ColumnNames":["Scored Labels"],"Values":[`)
	}
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		if echo {
			fmt.Fprintf(&b, `["%d","name %d","1",0.%d]`, i, i, 100+i)
		} else {
			b.WriteString(`["1"]`)
		}
	}
	b.WriteString(`]}}}}`)
	return []byte(b.String())
}

// BenchmarkDecodeResponse decodes a 100-row reply with the fast path and
// with encoding/json.
func BenchmarkDecodeResponse(b *testing.B) {
	for _, echo := range []bool{false, true} {
		body := labelReply(100, echo)
		for _, d := range []struct {
			name string
			f    func([]byte) (*Response, error)
		}{{"fast", decodeResults}, {"std", decodeResultsStd}} {
			b.Run(fmt.Sprintf("echo=%t/%s", echo, d.name), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				for b.Loop() {
					if _, err := d.f(body); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
