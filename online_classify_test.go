package amlpool

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
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
