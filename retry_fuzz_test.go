package amlpool

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// FuzzRetryAfter feeds the three delay headers arbitrary values. The bar: no
// panic, never a negative delay, and azcore's order: the first millisecond
// header of plain digits that reads more than zero is the delay, in
// milliseconds (saturating); with none such, a Retry-After of plain digits
// is that many seconds (saturating).
func FuzzRetryAfter(f *testing.F) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, seed := range [][3]string{
		{"", "", "3"},
		{"", "", "0"},
		{"", "", "-1"},
		{"", "", "1.5"},
		{"", "", "+7"},
		{"", "", " 12 "},
		{"", "", "99999999999999999999"},
		{"", "", "9223372036"},
		{"", "", "Fri, 02 Jan 2026 03:05:05 GMT"},
		{"", "", "Friday, 02-Jan-26 03:05:05 GMT"},
		{"", "", "Fri Jan  2 03:05:05 2026"},
		{"", "", "Thu, 01 Jan 1970 00:00:00 GMT"},
		{"250", "", ""},
		{"", "40", "9"},
		{"x", "-5", "2"},
		{"1e3", "0x10", "\x00"},
		{"0", "40", "9"},
		{"0", "00", "9"},
		{"", "0", "Fri, 02 Jan 2026 03:05:05 GMT"},
		{"99999999999999999999", "40", "9"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	// digits reads v as the reference does: plain ASCII digits (spaces
	// around them aside), saturating; ok is false for anything else.
	digits := func(v string, unit time.Duration) (time.Duration, bool) {
		v = strings.TrimSpace(v)
		if v == "" || strings.Trim(v, "0123456789") != "" {
			return 0, false
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64((1<<63-1)/unit) {
			return 1<<63 - 1, true
		}
		return time.Duration(n) * unit, true
	}
	f.Fuzz(func(t *testing.T, ms, xms, ra string) {
		h := http.Header{}
		for k, v := range map[string]string{"retry-after-ms": ms, "x-ms-retry-after-ms": xms, "Retry-After": ra} {
			if v != "" {
				h.Set(k, v)
			}
		}
		d := retryAfter(h, now)
		require.GreaterOrEqual(t, d, time.Duration(0))
		for _, v := range []string{ms, xms} {
			if want, ok := digits(v, time.Millisecond); ok && want > 0 {
				require.Equal(t, want, d, "the first millisecond hint above zero")
				return
			}
		}
		if want, ok := digits(ra, time.Second); ok {
			require.Equal(t, want, d, "no millisecond hint above zero: Retry-After's seconds")
		}
	})
}

// FuzzParseAPIError feeds the error-body parser arbitrary replies. The bar:
// no panic; status and endpoint kept; either the service's fields or a
// short, valid UTF-8 snippet of the body; an Error string that names both
// and never shows the key, however the body spells it; and a classification.
func FuzzParseAPIError(f *testing.F) {
	for _, seed := range []struct {
		status int
		body   string
	}{
		{400, `{"error":{"code":"LibraryExecutionError","message":"Module execution encountered an internal library error.","details":[{"code":"FailedToEvaluateRScript","target":"Execute R Script Piped (RPackage)","message":"The following error occurred"}]}}`},
		{503, `{"error":{"code":"ServiceUnavailable","message":"Service is temporarily unavailable.","details":[{"code":"RequestThrottled","message":"Request was throttled for default endpoint. The maximum concurrency for the endpoint is 20."}]}}`},
		{503, `{"error":{"code":"InitializingContainers"}}`},
		{401, `{"error":{"code":"Unauthorized","details":[{"code":"ScoreRequestUnauthorized","message":"Invalid credentials provided."}]}}`},
		{502, `<html><body>Bad Gateway</body></html>`},
		{500, ``},
		{500, `{"error":null}`},
		{500, `{"error":{"details":[null,{}]}}`},
		{500, `{"error":{"code":1}}`},
		{503, "\xff\xfe\xfd"},
		{0, `{}`},
		{-1, `[]`},
		{500, `{"error":{"code":"E","message":"fuzz\/key-0123456789"}}`},
		{500, `{"error":{"details":[{"code":"\u0066uzz/key-0123456789","target":"fuzz/key-0123456789"}]}}`},
		{502, "\x7fuzz/key-0123456789"},
		{502, "<p>fuzz/key-0123456789</p>"},
		{502, `<a href="/x?k=fuzz%2fkey-0123456789">`},
		{502, `<p>&#102;uzz&#x2F;key-0123456789</p>`},
		{500, `{"error":{"code":"E","message":"fuzz\u002Fkey%2D0123456789"}}`},
	} {
		f.Add(seed.status, []byte(seed.body))
	}
	const key = "fuzz/key-0123456789"
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		e := parseAPIError("ep", status, body, []string{key})
		require.Equal(t, "ep", e.Endpoint)
		require.Equal(t, status, e.StatusCode)
		require.True(t, utf8.ValidString(e.Body))
		require.LessOrEqual(t, utf8.RuneCountInString(e.Body), maxErrorBodySnippet)
		if e.Body != "" {
			require.Empty(t, e.Code+e.Message)
			require.Empty(t, e.Details)
		}
		msg := e.Error()
		require.True(t, strings.HasPrefix(msg, "amlpool: endpoint ep: HTTP "+strconv.Itoa(status)), msg)
		require.NotContains(t, msg, key, "the key, from the body or a JSON escape")
		for name, spell := range spellings {
			require.NotContains(t, msg, spell(key), "the key spelled %s", name)
		}
		require.Equal(t, e.Throttled(), errors.Is(e, ErrThrottled))
		if e.Throttled() {
			require.Equal(t, 503, status)
			require.Equal(t, VerdictFull, Classify(e))
		}
		require.LessOrEqual(t, Classify(e), VerdictEndpointFault)
	})
}
