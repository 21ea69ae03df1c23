package amlpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClassifyOnline is the online table of Classify, entry by entry, from
// replies as parseAPIError and parseOnlineError read them; and the same
// statuses from a Classic endpoint keep the Classic verdicts.
func TestClassifyOnline(t *testing.T) {
	reply := func(status int, body string, model string) *APIError {
		e := parseAPIError("e", status, []byte(body), nil)
		h := http.Header{}
		if model != "" {
			h.Set("ms-azureml-model-error-statuscode", model)
		}
		parseOnlineError(e, h, []byte(body), nil)
		return e
	}
	for _, tt := range []struct {
		status      int
		body, model string
		want        Verdict
		throttled   bool
	}{
		{429, `{"message":"Too many pending requests"}`, "", VerdictFull, true},
		{429, `Too many pending requests`, "", VerdictFull, true},
		{429, `{"message":"Rate-limited"}`, "", VerdictRetry, false},
		{429, `{"message":"rate limit exceeded"}`, "", VerdictRetry, false},
		{429, `{"message":"Request rate limited: too many pending requests"}`, "", VerdictFull, true},
		{429, `{"message":"could not generate a reply"}`, "", VerdictFull, true}, // "generate" holds "rate", not "rate limit"
		{429, ``, "", VerdictFull, true},
		{408, `{"message":"timeout"}`, "", VerdictRetry, false},
		{424, `{}`, "400", VerdictGiveUp, false},
		{424, `{}`, "422", VerdictGiveUp, false},
		{424, `{}`, "404", VerdictGiveUp, false},
		{424, `{}`, "408", VerdictRetry, false},
		{424, `{}`, "429", VerdictRetry, false},
		{424, `{}`, "500", VerdictRetry, false},
		{424, `{}`, "", VerdictRetry, false},
		{424, `{}`, "abc", VerdictRetry, false},
		{401, ``, "", VerdictEndpointFault, false},
		{403, ``, "", VerdictEndpointFault, false},
		{404, ``, "", VerdictEndpointFault, false},
		{500, ``, "", VerdictRetry, false},
		{502, ``, "", VerdictRetry, false},
		{503, ``, "", VerdictRetry, false},
		{503, `{"error":{"code":"ServiceUnavailable","details":[{"code":"RequestThrottled"}]}}`, "", VerdictRetry, false},
		{504, ``, "", VerdictRetry, false},
		{400, ``, "", VerdictGiveUp, false},
		{409, ``, "", VerdictGiveUp, false},
		{413, ``, "", VerdictGiveUp, false},
		{501, ``, "", VerdictGiveUp, false},
	} {
		name := fmt.Sprintf("%d %s model %s", tt.status, tt.body, tt.model)
		e := reply(tt.status, tt.body, tt.model)
		assert.Equal(t, tt.want, Classify(e), name)
		assert.Equal(t, tt.want, Classify(&CallError{Err: e}), "%s, wrapped", name)
		assert.Equal(t, tt.throttled, errors.Is(e, ErrThrottled), name)
	}

	// The same statuses from a Classic endpoint: the Classic table.
	classic := parseAPIError("e", 429, []byte(`{"message":"Too many pending requests"}`), nil)
	assert.Equal(t, VerdictRetry, Classify(classic))
	assert.False(t, errors.Is(classic, ErrThrottled))
	classic = parseAPIError("e", 424, nil, nil)
	assert.Equal(t, VerdictGiveUp, Classify(classic))
	assert.False(t, classic.ModelInputFault())

	// A Credential's error, whatever it wraps, is retried.
	assert.Equal(t, VerdictRetry, Classify(&CredentialError{Endpoint: "e", Err: errors.New("AAD down")}))
	assert.Equal(t, VerdictRetry, Classify(&CallError{Err: &CredentialError{Err: &APIError{StatusCode: 400}}}),
		"a Credential's own HTTP error is no reply of the endpoint's")
}

// The service documents its two 429s by their reason phrases: a reply whose
// status line says "Rate-limited" is the rate limit, retried after a
// backoff, even when its body names neither; one that says "Too many
// pending requests" is the cap.
func TestClassifyOnline429ByReasonPhrase(t *testing.T) {
	for _, tt := range []struct {
		status, body string
		want         Verdict
	}{
		{"429 Rate-limited", `{"message":"Too Many Requests"}`, VerdictRetry},
		{"429 Rate-limited", ``, VerdictRetry},
		{"429 Too many pending requests", ``, VerdictFull},
		{"429 Too Many Requests", ``, VerdictFull},
		{"429 Rate-limited", `{"message":"Too many pending requests"}`, VerdictFull},
		{"429", `{"message":"Rate-limited"}`, VerdictRetry},
	} {
		rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 429, Status: tt.status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tt.body)), ContentLength: int64(len(tt.body)), Request: r}, nil
		})
		c, err := New([]Endpoint{{Name: "e", URL: "https://e.test/score", Kind: Online, APIKey: "k", MaxConcurrentCalls: 1}},
			WithHTTPClient(&http.Client{Transport: rt}), WithoutRetries())
		require.NoError(t, err)
		_, err = c.Do(context.Background(), []byte(`{}`))
		c.Close()
		require.Error(t, err)
		name := fmt.Sprintf("%q %s", tt.status, tt.body)
		assert.Equal(t, tt.want, Classify(err), name)
		assert.Equal(t, tt.want == VerdictFull, errors.Is(err, ErrThrottled), name)
	}
}
