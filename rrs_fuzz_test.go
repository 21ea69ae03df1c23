package amlpool

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecodeResponse feeds decodeResponse arbitrary bodies. The bar: it never
// panics, and whatever it accepts re-encodes to JSON that decodes to the same
// value, so nothing it decodes is lost or changed on the way back out.
func FuzzDecodeResponse(f *testing.F) {
	for _, name := range rrsResponseFixtures {
		f.Add(rrsFixture(f, name))
	}
	for _, body := range []string{
		`{"Results":{}}`,
		`{"Results":{"a":null,"b":{"type":"table","value":null}}}`,
		`{"Results":{"o":{"type":"table","value":[{"a":"1"}]}}}`,
		`{"Results":{"o":{"value":{"ColumnNames":[],"Values":[[],null]}}}}`,
		`{"Results":{"o":{"type":"table","value":{"ColumnNames":["a","b"],"Values":[[1e400,-0],[true,{"x":[1]}]]}}}}`,
		`{"Results":{"o":[null,{},{"k":"\u00e9\ud800"}]}}`,
		`{"ExecutionDurationMs":3,"Results":{"o":{"type":"table","value":{"Values":[["1"]]}}},"Results":{"p":[]}}`,
		`{"Results":{"o":{"type":"table","value":{"ColumnNames":["a"],"Values":[["1","2"]]}}}}`,
	} {
		f.Add([]byte(body))
	}

	f.Fuzz(func(t *testing.T, body []byte) {
		resp, err := decodeResponse(body)
		if err != nil {
			require.Nil(t, resp)
			return
		}
		again, err := json.Marshal(resp)
		require.NoError(t, err, "re-encoding an accepted body")
		back, err := decodeResponse(again)
		require.NoError(t, err, "decoding the re-encoded body %s", again)
		require.Equal(t, resp, back, "re-encoded as %s", again)
	})
}
