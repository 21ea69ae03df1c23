package amltest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

const mlflowBody = `{"input_data": {"columns": ["id", "x"], "index": [0, 1], "data": [[1, "a"], [2, null]]}}`

func onlineServer(t *testing.T, cfg amltest.Config) *amltest.Server {
	t.Helper()
	cfg.Kind = amlpool.Online
	return newServer(t, cfg)
}

func message(t *testing.T, body []byte) string {
	t.Helper()
	var m struct{ Message string }
	require.NoError(t, json.Unmarshal(body, &m), "body %s", body)
	return m.Message
}

// TestOnlineScores: POST /score with the key and an MLflow body gets one
// prediction per row, as a bare array or under "predictions".
func TestOnlineScores(t *testing.T) {
	srv := onlineServer(t, amltest.Config{Name: "blue"})
	ep := srv.Endpoint()
	assert.Equal(t, amlpool.Online, ep.Kind)
	assert.Regexp(t, `^http://127\.0\.0\.1:\d+/score$`, ep.URL)
	r := send(t, srv, ep.URL, ep.APIKey, mlflowBody)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	var preds []map[string]any
	require.NoError(t, json.Unmarshal(r.body, &preds))
	require.Len(t, preds, 2)
	assert.Equal(t, float64(1), preds[0]["id"])
	assert.Equal(t, "a", preds[0]["x"])
	assert.Contains(t, preds[1], "x")
	assert.Contains(t, preds[0], amltest.ScoredProbabilities)

	obj := onlineServer(t, amltest.Config{PredictionsObject: true, Predict: func(_ []string, rows [][]any) ([]any, error) {
		out := make([]any, len(rows))
		for i := range rows {
			out[i] = i
		}
		return out, nil
	}})
	r = send(t, obj, obj.URL(), obj.Endpoint().APIKey, mlflowBody)
	assert.JSONEq(t, `{"predictions": [0, 1]}`, string(r.body))
	assert.Equal(t, int64(1), obj.Stats().Scored)
}

// TestOnlineContentTypeAnyCase: a media type is case-insensitive, so
// application/json in any case, with or without parameters, is JSON.
func TestOnlineContentTypeAnyCase(t *testing.T) {
	srv := onlineServer(t, amltest.Config{})
	ep := srv.Endpoint()
	for _, ct := range []string{"application/json", "Application/JSON", "APPLICATION/JSON; charset=UTF-8", " application/Json ;charset=utf-8"} {
		r := send(t, srv, ep.URL, ep.APIKey, mlflowBody, setHeader("Content-Type", ct))
		assert.Equal(t, http.StatusOK, r.status, "Content-Type %q: %s", ct, r.body)
	}
	assert.Equal(t, int64(4), srv.Stats().Scored)
}

// TestOnlineBodyTooLarge: a body over MaxRequestBytes gets 413, as a
// managed online endpoint answers an oversized request, not the model's 400;
// a body of exactly MaxRequestBytes is scored.
func TestOnlineBodyTooLarge(t *testing.T) {
	srv := onlineServer(t, amltest.Config{})
	ep := srv.Endpoint()
	fits := mlflowBody + strings.Repeat(" ", amltest.MaxRequestBytes-len(mlflowBody))
	r := send(t, srv, ep.URL, ep.APIKey, fits)
	assert.Equal(t, http.StatusOK, r.status, "a body of exactly MaxRequestBytes: %.200s", r.body)

	for _, over := range []int{1, 1 << 20} {
		r = send(t, srv, ep.URL, ep.APIKey, fits+strings.Repeat(" ", over))
		assert.Equal(t, http.StatusRequestEntityTooLarge, r.status, "%d bytes over", over)
		assert.Contains(t, message(t, r.body), "larger than the 4194304-byte limit")
		assert.Empty(t, r.header.Get(amltest.ModelStatusHeader), "not the model's reply")
	}
	st := srv.Stats()
	assert.Equal(t, int64(1), st.Scored)
	assert.Equal(t, int64(2), st.Rejected)

	// Through a Client: a 4xx of the request's own, not retried.
	c, err := amlpool.New([]amlpool.Endpoint{ep, onlineServer(t, amltest.Config{}).Endpoint()})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Do(t.Context(), []byte(fits+" "))
	var apiErr *amlpool.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusRequestEntityTooLarge, apiErr.StatusCode)
	assert.Equal(t, amlpool.VerdictGiveUp, amlpool.Classify(err))
}

// TestOnlineRejects: the fake's own refusals, each with its status and a
// {"message"} body: key, path, method, deployment, and a body the model cannot
// take (424 with the model's 400 in the headers).
func TestOnlineRejects(t *testing.T) {
	srv := onlineServer(t, amltest.Config{Deployment: "blue", Predict: func(_ []string, rows [][]any) ([]any, error) {
		return nil, fmt.Errorf("cannot score %d rows", len(rows))
	}})
	ep := srv.Endpoint()
	assert.Equal(t, []string{"blue"}, ep.Header.Values(amltest.DeploymentHeader))
	for _, tt := range []struct {
		name, url, key, body string
		mods                 []func(*http.Request)
		status               int
		modelStatus          string
		msg                  string
	}{
		{"wrong key", ep.URL, "nope", mlflowBody, nil, 401, "", "Unauthorized"},
		{"classic path", srv.URL() + "/execute", ep.APIKey, mlflowBody, nil, 404, "", "/score"},
		{"GET", ep.URL, ep.APIKey, mlflowBody, []func(*http.Request){setMethod(http.MethodGet)}, 405, "", "POST"},
		{"another deployment", ep.URL, ep.APIKey, mlflowBody, []func(*http.Request){setHeader(amltest.DeploymentHeader, "green")}, 404, "", `No deployment "green"`},
		{"the model's error", ep.URL, ep.APIKey, mlflowBody, nil, 424, "400", "The model failed"},
		{"no input_data", ep.URL, ep.APIKey, `{"Inputs": {}}`, nil, 424, "400", "The model failed"},
		{"ragged row", ep.URL, ep.APIKey, `{"input_data": {"columns": ["a"], "data": [[1, 2]]}}`, nil, 424, "400", "The model failed"},
		{"not JSON", ep.URL, ep.APIKey, `{`, nil, 424, "400", "The model failed"},
		{"text/plain", ep.URL, ep.APIKey, mlflowBody, []func(*http.Request){setHeader("Content-Type", "text/plain")}, 424, "400", "The model failed"},
	} {
		r := send(t, srv, tt.url, tt.key, tt.body, tt.mods...)
		assert.Equal(t, tt.status, r.status, tt.name)
		assert.Contains(t, message(t, r.body), tt.msg, tt.name)
		assert.Equal(t, tt.modelStatus, r.header.Get(amltest.ModelStatusHeader), tt.name)
		if tt.modelStatus != "" {
			assert.NotEmpty(t, r.header.Get(amltest.ModelReasonHeader), tt.name)
		}
	}
	r := send(t, srv, ep.URL, ep.APIKey, mlflowBody)
	assert.Equal(t, "cannot score 2 rows", r.header.Get(amltest.ModelReasonHeader))
}

// TestOnlineCap: calls over the cap get 429 Too many pending requests at
// once; the admitted ones are not disturbed.
func TestOnlineCap(t *testing.T) {
	release := make(chan struct{})
	srv := onlineServer(t, amltest.Config{MaxConcurrentCalls: 3, LatencyFunc: func() time.Duration { <-release; return 0 }})
	ep := srv.Endpoint()
	var wg sync.WaitGroup
	statuses := make(chan int, 3)
	for range 3 {
		wg.Go(func() { statuses <- send(t, srv, ep.URL, ep.APIKey, mlflowBody).status })
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// Admitted, not only in the handler: a call counted in InFlight may not
	// have passed the cap check yet, and the probe below would take its
	// slot and wait for the release that comes after it (a hang).
	_, err := srv.WaitFor(ctx, func(s amltest.Stats) bool { return s.PeakAdmitted == 3 })
	require.NoError(t, err)
	r := send(t, srv, ep.URL, ep.APIKey, mlflowBody)
	assert.Equal(t, http.StatusTooManyRequests, r.status)
	assert.Equal(t, amltest.PendingMessage, message(t, r.body))
	close(release)
	wg.Wait()
	close(statuses)
	for s := range statuses {
		assert.Equal(t, http.StatusOK, s)
	}
	st := srv.Stats()
	assert.Equal(t, int64(1), st.Throttled)
	assert.Equal(t, int64(3), st.PeakAdmitted)
}

// TestOnlineFaults: the online fault helpers and a plain status give the
// online endpoint's replies.
func TestOnlineFaults(t *testing.T) {
	srv := onlineServer(t, amltest.Config{})
	ep := srv.Endpoint()
	srv.Script(amltest.Pending(), amltest.RateLimited().WithRetryAfter(2*time.Second), amltest.ModelFailure(503, "warming up"),
		amltest.Fault{Status: 408}, amltest.Fault{Status: 404}, amltest.Fault{Status: 502})
	for _, want := range []struct {
		status int
		msg    string
		header [2]string
	}{
		{429, amltest.PendingMessage, [2]string{}},
		{429, amltest.RateLimitedMessage, [2]string{"Retry-After", "2"}},
		{424, "The model failed", [2]string{amltest.ModelStatusHeader, "503"}},
		{408, "request_timeout_ms", [2]string{}},
		{404, "No valid deployments", [2]string{}},
		{502, "scoring script crashed", [2]string{}},
	} {
		r := send(t, srv, ep.URL, ep.APIKey, mlflowBody)
		assert.Equal(t, want.status, r.status)
		assert.Contains(t, message(t, r.body), want.msg)
		if want.header[0] != "" {
			assert.Equal(t, want.header[1], r.header.Get(want.header[0]))
		}
	}
	assert.Equal(t, int64(6), srv.Stats().Faults)
}

// TestOnlineTokensAndHeaders: AcceptToken admits tokens beside the keys;
// KeysSeen lists what was presented and HeadersSeen the recorded headers.
func TestOnlineTokensAndHeaders(t *testing.T) {
	srv := onlineServer(t, amltest.Config{AcceptToken: func(tok string) bool { return tok == "good-token" },
		RecordHeaders: []string{"x-tenant"}})
	ep := srv.Endpoint()
	assert.Equal(t, 200, send(t, srv, ep.URL, "good-token", mlflowBody, setHeader("X-Tenant", "a")).status)
	assert.Equal(t, 401, send(t, srv, ep.URL, "bad-token", mlflowBody, setHeader("X-Tenant", "b")).status)
	assert.Equal(t, 200, send(t, srv, ep.URL, ep.APIKey, mlflowBody, setHeader("X-Tenant", "a")).status)
	st := srv.Stats()
	assert.ElementsMatch(t, []string{"good-token", "bad-token", ep.APIKey}, st.KeysSeen)
	assert.Equal(t, []string{"a", "b"}, st.HeadersSeen.Values("X-Tenant"))
	assert.Equal(t, int64(1), st.Unauthorized)
	srv.ResetStats()
	assert.Empty(t, srv.Stats().HeadersSeen.Values("X-Tenant"))
}

// TestOnlineTokenOnly: a TokenOnly server, as an endpoint in aad_token
// mode, refuses its keys with 401 and takes the tokens AcceptToken
// accepts; its Endpoint carries no keys, so a Client needs a Credential.
func TestOnlineTokenOnly(t *testing.T) {
	srv := onlineServer(t, amltest.Config{Key: "primary", SecondaryKey: "secondary", TokenOnly: true,
		AcceptToken: func(tok string) bool { return tok == "aad-token" }})
	ep := srv.Endpoint()
	assert.Empty(t, ep.APIKey)
	assert.Empty(t, ep.SecondaryKey)
	for _, key := range []string{"primary", "secondary"} {
		r := send(t, srv, ep.URL, key, mlflowBody)
		assert.Equal(t, http.StatusUnauthorized, r.status, "key %s: %s", key, r.body)
	}
	assert.Equal(t, http.StatusOK, send(t, srv, ep.URL, "aad-token", mlflowBody).status)
	st := srv.Stats()
	assert.Equal(t, int64(2), st.Unauthorized)
	assert.Equal(t, int64(1), st.Scored)

	_, err := amlpool.New([]amlpool.Endpoint{ep})
	require.Error(t, err, "no key and no Credential")
	ep.Credential = amlpool.CredentialFunc(func(context.Context) (string, error) { return "aad-token", nil })
	c, err := amlpool.New([]amlpool.Endpoint{ep})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Do(t.Context(), []byte(mlflowBody))
	require.NoError(t, err)
	assert.Equal(t, int64(2), srv.Stats().Scored)

	assert.PanicsWithValue(t, "amltest: Config.TokenOnly on a classic server: Azure ML Classic endpoints take keys only; set Kind amlpool.Online",
		func() {
			amltest.NewUnstartedServer(amltest.Config{TokenOnly: true, AcceptToken: func(string) bool { return true }})
		})
	assert.PanicsWithValue(t, "amltest: Config.TokenOnly without Config.AcceptToken: the server would accept no call; set AcceptToken to say which tokens are valid",
		func() { amltest.NewUnstartedServer(amltest.Config{Kind: amlpool.Online, TokenOnly: true}) })
}
