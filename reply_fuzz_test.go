package amlpool

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzCheckReply feeds the 2xx reply check arbitrary bodies and content
// types. The bar: no panic; a body it accepts is empty or valid JSON; a body
// it rejects gives ErrMalformedResponse; the key never shows in the error,
// whole or cut by the quote.
func FuzzCheckReply(f *testing.F) {
	const key = "fuzz-key-0123456789"
	for _, seed := range [][2]string{
		{`{"Results":{}}`, "application/json"},
		{`{"Results":`, "application/json; charset=utf-8"},
		{`<html>` + key + `</html>`, "text/html"},
		{`{"error":{"code":"X","message":"` + key + `"}}`, ""},
		{`{"error":{"code":"X"},"Results":{}}`, "application/json"},
		{`{"error":"text"}`, "application/json"},
		{"\x1f\x8b\x08\x00", "application/octet-stream"},
		{"", ""},
		{"\x7fuzz-key-0123456789", "0"},
		{"\x7fuzz-key-0", "0"},
		{" ", "text/plain"},
		{`"` + strings.Repeat("x", 60) + key + `"x`, "application/problem+json"},
		{everyByte(key, "%%%02x"), "text/html"},
		{strings.Repeat("x", 60) + `&#102;uzz-key-0123456789`, "text/html"},
		{`{"error":{"code":"X","message":"\u0066uzz-key-0123456789"}}`, "application/json"},
	} {
		f.Add([]byte(seed[0]), seed[1])
	}
	f.Fuzz(func(t *testing.T, data []byte, contentType string) {
		err := checkReply(data, contentType, []string{key})
		if err == nil {
			require.True(t, len(data) == 0 || json.Valid(data), "accepted a body that is not JSON")
			return
		}
		require.True(t, errors.Is(err, ErrMalformedResponse), "error %v is not ErrMalformedResponse", err)
		if json.Valid(data) {
			require.ErrorAs(t, err, new(*errorBodyError), "refused JSON as not JSON")
		}
		msg := err.Error()
		require.NotContains(t, msg, key)
		for name, spell := range spellings {
			require.NotContains(t, msg, spell(key), "the key spelled %s", name)
		}
		// Half a key in the message must come from half a key in the reply
		// (as the quote shows it: "\x7f" before "uzz…" spells "fuzz…"; or
		// escaped, as a JSON error body's message is decoded), never from
		// a whole one cut by the quote.
		rest := strings.ToValidUTF8(strings.ReplaceAll(string(data)+contentType, key, ""), "\uFFFD")
		halfKey := strings.Contains(rest, key[:10]) || strings.Contains(strconv.Quote(rest), key[:10])
		for _, enc := range []byte("%\\&") {
			plain, _, _ := unescape(rest, enc)
			halfKey = halfKey || strings.Contains(strings.ReplaceAll(plain, key, ""), key[:10])
		}
		if !halfKey {
			require.NotContains(t, msg, key[:10], "a cut key")
		}
	})
}

// FuzzReplyValidator holds checkReply's JSON validator to encoding/json's:
// the same bodies valid, the same invalid, deep nesting included.
func FuzzReplyValidator(f *testing.F) {
	for _, seed := range []string{
		`{}`, `[]`, `{"a":1}`, ` {"a":[1,2,{"b":null}]} `, `01`, `1.`, `-`, `-0.0E+1`, `1e5`,
		`"\u00"`, "\"\x01\"", "\"\xff\"", `"\/"`, `[1,]`, `{"a"}`, `tru`, `nul`, `{"a":1}{}`,
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		strings.Repeat("[{\"a\":", 5000) + "1" + strings.Repeat("}]", 5000),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		require.Equal(t, json.Valid(data), validJSON(data), "%q", data)
	})
}

// A reply nested millions deep is refused, not a stack overflow that
// kills the process: the validator recurses per level only within
// encoding/json's depth limit.
func TestValidJSONDeepNesting(t *testing.T) {
	deep := []byte(strings.Repeat("[", 30<<20))
	require.False(t, validJSON(deep))
	require.ErrorIs(t, checkReply(deep, "application/json", nil), ErrMalformedResponse)
	ok := []byte(strings.Repeat("[", 10000) + strings.Repeat("]", 10000))
	require.True(t, validJSON(ok))
}
