package amlpool_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// onlineBody is a valid MLflow request for amltest's OnlineEcho model.
var onlineBody = []byte(`{"input_data":{"columns":["a"],"index":[0],"data":[[1]]}}`)

// onlineServers starts n online fakes named o0, o1 … with the given cap.
func onlineServers(t *testing.T, n, mcc int, mod ...func(*amltest.Config)) []*amltest.Server {
	t.Helper()
	out := make([]*amltest.Server, n)
	for i := range out {
		cfg := amltest.Config{Name: fmt.Sprintf("o%d", i), MaxConcurrentCalls: mcc, Kind: amlpool.Online}
		for _, m := range mod {
			m(&cfg)
		}
		out[i] = amltest.NewServer(cfg)
		t.Cleanup(out[i].Close)
	}
	return out
}

// TestOnlineClasses drives every status of an online endpoint
// (docs/azureml.md, "Azure ML online endpoints") through scripted faults on
// three online fakes. Attempts go to o0, then o1, then o2.
func TestOnlineClasses(t *testing.T) {
	type want struct {
		requests  []int64 // per fake
		waits     int     // backoff waits
		status    int     // the final *APIError's status; 0: success
		model     int     // its ModelStatusCode
		throttled bool    // errors.Is(err, ErrThrottled)
	}
	at := func(status int) amltest.Fault { return amltest.Fault{Status: status} }
	tests := []struct {
		name   string
		faults [3][]amltest.Fault
		want   want
	}{
		{"429 Too many pending requests: another endpoint at once",
			[3][]amltest.Fault{{amltest.Pending()}}, want{requests: []int64{1, 1, 0}}},
		{"429 pending everywhere, every time: backs off once, then gives the throttle",
			[3][]amltest.Fault{{amltest.Pending(), amltest.Pending()}, {amltest.Pending()}, {amltest.Pending()}},
			want{requests: []int64{2, 1, 1}, waits: 1, status: 429, throttled: true}},
		{"429 Rate-limited: back off, another endpoint",
			[3][]amltest.Fault{{amltest.RateLimited()}}, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"408: back off, another endpoint", [3][]amltest.Fault{{at(408)}}, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"424 with the model's 500: back off, another endpoint",
			[3][]amltest.Fault{{amltest.ModelFailure(500, "worker crashed")}}, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"424 with the model's 503: retried",
			[3][]amltest.Fault{{amltest.ModelFailure(503, "warming up")}}, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"424 with the model's 400: the input's fault, not retried",
			[3][]amltest.Fault{{amltest.ModelFailure(400, "column x is missing")}}, want{requests: []int64{1, 0, 0}, status: 424, model: 400}},
		{"424 with the model's 422: not retried",
			[3][]amltest.Fault{{amltest.ModelFailure(422, "bad value")}}, want{requests: []int64{1, 0, 0}, status: 424, model: 422}},
		{"424 without the model's status: retried",
			[3][]amltest.Fault{{at(424)}}, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"404: an endpoint fault, another endpoint at once", [3][]amltest.Fault{{at(404)}}, want{requests: []int64{1, 1, 0}}},
		{"401: an endpoint fault", [3][]amltest.Fault{{at(401)}}, want{requests: []int64{1, 1, 0}}},
		{"403: an endpoint fault", [3][]amltest.Fault{{at(403)}}, want{requests: []int64{1, 1, 0}}},
		{"500", [3][]amltest.Fault{{at(500)}}, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"502", [3][]amltest.Fault{{at(502)}}, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"503 (a Kubernetes endpoint's load spike)", [3][]amltest.Fault{{at(503)}}, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"504", [3][]amltest.Fault{{at(504)}}, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"400: never retried", [3][]amltest.Fault{{at(400)}}, want{requests: []int64{1, 0, 0}, status: 400}},
		{"409 (Kubernetes conflict): not retried", [3][]amltest.Fault{{at(409)}}, want{requests: []int64{1, 0, 0}, status: 409}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srvs := onlineServers(t, 3, 20)
			for i, fs := range tt.faults {
				srvs[i].Script(fs...)
			}
			clk := newStepClock(2 * time.Second)
			eps := endpoints(srvs)
			for i := range eps {
				eps[i].SecondaryKey = ""
			}
			c := newClient(t, eps, amlpool.WithClock(clk), amlpool.WithRand(firstFree))

			reply, err := c.Do(context.Background(), onlineBody)

			assert.Equal(t, tt.want.requests, requests(srvs), "requests per fake")
			assert.Len(t, clk.Waits(), tt.want.waits, "backoff waits")
			if tt.want.status == 0 {
				require.NoError(t, err)
				assert.JSONEq(t, `[{"a":1,"Scored Probabilities":`+string(probability(t, reply))+`}]`, string(reply))
				return
			}
			var apiErr *amlpool.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, tt.want.status, apiErr.StatusCode)
			assert.Equal(t, amlpool.Online, apiErr.Kind)
			assert.Equal(t, tt.want.model, apiErr.ModelStatusCode)
			assert.Equal(t, tt.want.throttled, errors.Is(err, amlpool.ErrThrottled))
		})
	}
}

// probability returns the "Scored Probabilities" of OnlineEcho's one
// prediction in reply, as written.
func probability(t *testing.T, reply []byte) []byte {
	t.Helper()
	_, after, ok := strings.Cut(string(reply), `"Scored Probabilities":`)
	require.True(t, ok, "reply %s", reply)
	end := strings.IndexAny(after, ",}")
	require.Positive(t, end)
	return []byte(after[:end])
}

// TestOnlineModelError: a 424's model status and reason reach the
// *APIError, its Error and its Reason.
func TestOnlineModelError(t *testing.T) {
	srv := onlineServers(t, 1, 4)[0]
	srv.Script(amltest.ModelFailure(400, "column 'age' is missing"))
	c := newClient(t, endpoints([]*amltest.Server{srv}))
	_, err := c.Do(t.Context(), onlineBody)
	var apiErr *amlpool.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 424, apiErr.StatusCode)
	assert.Equal(t, 400, apiErr.ModelStatusCode)
	assert.Equal(t, "column 'age' is missing", apiErr.ModelReason)
	assert.Equal(t, "column 'age' is missing", apiErr.Reason())
	assert.True(t, apiErr.ModelInputFault())
	assert.Equal(t, "amlpool: endpoint o0: HTTP 424 (model HTTP 400): column 'age' is missing", err.Error())
}

// TestOnlineLongMessage: an online error body's message longer than the
// 512 bytes APIError.Body keeps still reaches Message and the error's
// text (a model's traceback often is that long).
func TestOnlineLongMessage(t *testing.T) {
	srv := onlineServers(t, 1, 4)[0]
	msg := "Traceback (most recent call last): " + strings.Repeat("frame ", 100) + "ValueError: bad input"
	srv.Script(amltest.Fault{Status: 502, Body: []byte(`{"message":"` + msg + `"}`)})
	c := newClient(t, endpoints([]*amltest.Server{srv}), amlpool.WithMaxAttempts(1))
	_, err := c.Do(t.Context(), onlineBody)
	var apiErr *amlpool.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, msg, apiErr.Message)
	assert.Equal(t, msg, apiErr.Reason())
	assert.Equal(t, "amlpool: endpoint o0: HTTP 502: "+msg, err.Error())
}

// TestOnlineModelReasonCutKey: a model's reason that quotes the key
// across the 512 bytes ModelReason keeps is scrubbed before it is cut: no
// part of the key is left in ModelReason or the error.
func TestOnlineModelReasonCutKey(t *testing.T) {
	srv := onlineServers(t, 1, 4)[0]
	ep := srv.Endpoint()
	half := ep.APIKey[:len(ep.APIKey)/2]
	srv.Script(amltest.ModelFailure(400, strings.Repeat("x", 512-len(half))+ep.APIKey)) // the cut leaves half the key
	c := newClient(t, []amlpool.Endpoint{ep}, amlpool.WithMaxAttempts(1))
	_, err := c.Do(t.Context(), onlineBody)
	var apiErr *amlpool.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.NotContains(t, apiErr.ModelReason, half)
	assert.NotContains(t, err.Error(), half)
	assert.LessOrEqual(t, len(apiErr.ModelReason), 512)
}

// TestOnlineRateLimitCoolsDown: a 429 Rate-limited with Retry-After holds
// its endpoint back for that long: the next calls go elsewhere.
func TestOnlineRateLimitCoolsDown(t *testing.T) {
	srvs := onlineServers(t, 2, 4)
	srvs[0].Script(amltest.RateLimited().WithRetryAfter(30 * time.Second))
	clk := newStepClock(2 * time.Second)
	c := newClient(t, endpoints(srvs), amlpool.WithClock(clk), amlpool.WithRand(firstFree))
	for range 5 {
		_, err := c.Do(t.Context(), onlineBody)
		require.NoError(t, err)
	}
	assert.Equal(t, []int64{1, 5}, requests(srvs), "o0 cools down for its Retry-After")
	assert.Contains(t, clk.Timers(), 30*time.Second, "the cool-down's timer")
}

// TestOnlineRateLimitHoldsBackBriefly: a 429 Rate-limited without a
// Retry-After holds its endpoint back for the backoff's first wait, as a
// hint that long would: the calls that start meanwhile go to the other
// endpoints instead of meeting the limit too (a 429 comes back fast, so
// the endpoint had the most free slots and drew the most new calls).
// Hints ignored (WithMaxRetryAfter(0)), it holds nothing back.
func TestOnlineRateLimitHoldsBackBriefly(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts []amlpool.Option
		want []int64 // requests per fake after two calls
		hold time.Duration
	}{
		{"default", nil, []int64{1, 1}, amlpool.DefaultBackoffInitial},
		{"backoff", []amlpool.Option{amlpool.WithBackoff(amlpool.Backoff{Initial: 200 * time.Millisecond})}, []int64{1, 1}, 200 * time.Millisecond},
		{"hints ignored", []amlpool.Option{amlpool.WithMaxRetryAfter(0)}, []int64{2, 0}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srvs := onlineServers(t, 2, 4)
			srvs[0].Script(amltest.RateLimited())
			clk := newStepClock(0) // every timer waits for Advance, and is recorded
			opts := append([]amlpool.Option{amlpool.WithClock(clk), amlpool.WithRand(firstFree), amlpool.WithoutRetries()}, tt.opts...)
			c := newClient(t, endpoints(srvs), opts...)
			_, err := c.Do(t.Context(), onlineBody)
			var apiErr *amlpool.APIError
			require.ErrorAs(t, err, &apiErr)
			require.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode)
			_, err = c.Do(t.Context(), onlineBody)
			require.NoError(t, err)
			assert.Equal(t, tt.want, requests(srvs))
			if tt.hold == 0 {
				assert.Empty(t, clk.Timers())
				return
			}
			require.True(t, clk.WaitTimers(1, t.Context().Done()))
			assert.Contains(t, clk.Timers(), tt.hold, "the hold's timer")
			assert.False(t, c.Stats().Endpoints[0].Ejected, "held back, not ejected")
		})
	}
}

// TestOnlineRateLimitDoesNotEject: a run of 429 Rate-limited, the
// endpoint's requests-per-second limit, is no sign the endpoint is sick:
// however long, it does not eject the endpoint, which answered each time
// and keeps its place in rotation; each call that meets one fails over
// after a backoff, as before. Hints are ignored, so that no hold-back
// (TestOnlineRateLimitHoldsBackBriefly) sends the calls elsewhere.
func TestOnlineRateLimitDoesNotEject(t *testing.T) {
	srvs := onlineServers(t, 3, 4) // one out of three ejected is no panic: the others would take its calls
	const run = 3 * amlpool.DefaultEjectAfter
	for range run {
		srvs[0].Script(amltest.RateLimited()) // no Retry-After: nothing cools it down
	}
	c := newClient(t, endpoints(srvs), amlpool.WithClock(newStepClock(time.Second)), amlpool.WithRand(firstFree),
		amlpool.WithoutRetries(), amlpool.WithEjection(amlpool.DefaultEjectAfter, time.Minute), amlpool.WithMaxRetryAfter(0))
	for i := range run {
		_, err := c.Do(t.Context(), onlineBody)
		var apiErr *amlpool.APIError
		require.ErrorAs(t, err, &apiErr, "call %d goes to o0, still in rotation", i)
		require.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode)
	}
	st := c.Stats().Endpoints[0]
	assert.False(t, st.Ejected, "rate-limited is not sick")
	assert.Zero(t, st.Ejections)
	assert.EqualValues(t, run, st.Errors, "each 429 is a failed attempt all the same")
	_, err := c.Do(t.Context(), onlineBody)
	require.NoError(t, err)
	assert.Equal(t, []int64{run + 1, 0, 0}, requests(srvs), "o0 serves once its limit lifts")
}

// TestOnlineCaps: an online endpoint's cap must be given, may pass 200 (up
// to 10,000), and holds on the server side: 300 callers on a cap of 250
// put 250 calls in flight at once, never more, and meet no 429.
func TestOnlineCaps(t *testing.T) {
	ep := func(mcc int) amlpool.Endpoint {
		return amlpool.Endpoint{Name: "blue", URL: "https://e.westeurope.inference.ml.azure.com/score", APIKey: "k", Kind: amlpool.Online, MaxConcurrentCalls: mcc}
	}
	_, err := amlpool.New([]amlpool.Endpoint{ep(0)})
	var ce *amlpool.ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "MaxConcurrentCalls", ce.Field)
	assert.Contains(t, ce.Problem, "2 × max_concurrent_requests_per_instance × instance_count")
	for _, bad := range []int{-1, amlpool.MaxOnlineConcurrentCalls + 1} {
		_, err = amlpool.New([]amlpool.Endpoint{ep(bad)})
		require.ErrorAs(t, err, &ce, "cap %d", bad)
		assert.Equal(t, "MaxConcurrentCalls", ce.Field)
	}
	for _, ok := range []int{1, 201, amlpool.MaxOnlineConcurrentCalls} {
		c, err := amlpool.New([]amlpool.Endpoint{ep(ok)})
		require.NoError(t, err, "cap %d", ok)
		assert.Equal(t, ok, c.Stats().Endpoints[0].MaxConcurrentCalls)
		require.NoError(t, c.Close())
	}

	const limit, callers = 250, 300
	release := make(chan struct{})
	srv := amltest.NewServer(amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: limit,
		LatencyFunc: func() time.Duration { <-release; return 0 }})
	t.Cleanup(srv.Close)
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint()})
	errs := make(chan error, callers)
	for range callers {
		go func() {
			_, err := c.Do(context.Background(), onlineBody)
			errs <- err
		}()
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// Admitted, not only in the handler: a call counted in InFlight may
	// not have passed the cap check yet, and would then be admitted only
	// after the release let others go.
	st, err := srv.WaitFor(ctx, func(s amltest.Stats) bool { return s.PeakAdmitted >= limit })
	require.NoError(t, err, "calls admitted at once: %d", st.PeakAdmitted)
	close(release)
	for range callers {
		require.NoError(t, <-errs)
	}
	st = srv.Stats()
	assert.Equal(t, int64(limit), st.PeakAdmitted)
	assert.Equal(t, int64(limit), st.PeakInFlight)
	assert.Zero(t, st.Throttled, "429s")
	assert.Equal(t, int64(callers), st.Scored)
}

// TestOnlineKindsNotMixed: one Client's endpoints are of one Kind, in New
// and in SetEndpoints, which keeps the Kind New was given.
func TestOnlineKindsNotMixed(t *testing.T) {
	classic := servers(t, 1, 4)[0].Endpoint()
	online := onlineServers(t, 2, 4)
	_, err := amlpool.New([]amlpool.Endpoint{classic, online[0].Endpoint()})
	var ce *amlpool.ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "Kind", ce.Field)
	assert.Equal(t, "o0", ce.Endpoint)
	assert.Contains(t, ce.Problem, "all of one Kind")

	c := newClient(t, endpoints(online[:1]))
	err = c.SetEndpoints([]amlpool.Endpoint{online[0].Endpoint(), classic})
	require.ErrorAs(t, err, &ce, "a mixed set")
	err = c.SetEndpoints([]amlpool.Endpoint{classic})
	require.ErrorAs(t, err, &ce, "another Kind")
	assert.Contains(t, ce.Problem, "keeps the Kind")
	require.NoError(t, c.SetEndpoints(endpoints(online)))
	_, err = c.Do(t.Context(), onlineBody)
	require.NoError(t, err)

	_, err = amlpool.New([]amlpool.Endpoint{func() amlpool.Endpoint { e := classic; e.Kind = 7; return e }()})
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "Kind", ce.Field)
}

// TestOnlineScoreRefused: Score speaks the Classic form; on an online
// Client it says to use Do or ScoreRows, and sends nothing.
func TestOnlineScoreRefused(t *testing.T) {
	srv := onlineServers(t, 1, 4)[0]
	c := newClient(t, endpoints([]*amltest.Server{srv}))
	_, err := c.Score(t.Context(), &amlpool.Request{Inputs: map[string]*amlpool.Table{"input1": {ColumnNames: []string{"a"}, Values: [][]any{{1}}}}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Do")
	assert.Contains(t, err.Error(), "ScoreRows")
	assert.Zero(t, srv.Stats().Requests)
}

// TestOnlineHeaders: each endpoint's Header goes to that endpoint only, on
// every attempt, failovers included; the headers amlpool owns cannot be
// set through it.
func TestOnlineHeaders(t *testing.T) {
	record := func(c *amltest.Config) { c.RecordHeaders = []string{amltest.DeploymentHeader, "X-Tenant"} }
	srvs := onlineServers(t, 2, 3, record)
	eps := endpoints(srvs)
	for i := range eps {
		eps[i].Header = http.Header{"azureml-model-deployment": {fmt.Sprintf("deploy-%d", i)}, "X-Tenant": {fmt.Sprintf("tenant-%d", i)}}
	}
	srvs[0].Script(amltest.Pending(), amltest.Pending(), amltest.Fault{Status: 503}) // failovers to o1
	c := newClient(t, eps)
	require.Empty(t, hammerWith(t, c, onlineBody, 8, 20))
	for i, s := range srvs {
		st := s.Stats()
		assert.Positive(t, st.Scored, "o%d scored", i)
		assert.Equal(t, []string{fmt.Sprintf("deploy-%d", i)}, st.HeadersSeen.Values(amltest.DeploymentHeader), "o%d", i)
		assert.Equal(t, []string{fmt.Sprintf("tenant-%d", i)}, st.HeadersSeen.Values("X-Tenant"), "o%d", i)
	}

	// The caller's map is copied: changing it later changes nothing.
	eps[0].Header.Set("X-Tenant", "changed")
	require.Empty(t, hammerWith(t, c, onlineBody, 2, 5))
	assert.Equal(t, []string{"tenant-0"}, srvs[0].Stats().HeadersSeen.Values("X-Tenant"))

	for _, tt := range []struct {
		name   string
		header http.Header
		want   string
	}{
		{"Authorization", http.Header{"Authorization": {"Bearer x"}}, "Authorization cannot be set"},
		{"content-type in lower case", http.Header{"content-type": {"text/plain"}}, "Content-Type cannot be set"},
		{"Content-Length", http.Header{"Content-Length": {"1"}}, "Content-Length cannot be set"},
		{"Host", http.Header{"Host": {"evil"}}, "Host cannot be set"},
		{"Accept, which amlpool would overwrite", http.Header{"accept": {"text/csv"}}, "Accept cannot be set"},
		{"Content-Encoding, which would mislabel the body", http.Header{"Content-Encoding": {"gzip"}}, "Content-Encoding cannot be set"},
		{"a line break in a value", http.Header{"X-A": {"a\r\nX-Injected: b"}}, "line break"},
		{"a NUL in a value", http.Header{"X-A": {"a\x00"}}, "control character"},
		{"a space in a name", http.Header{"X A": {"a"}}, "cannot have"},
		{"an empty name", http.Header{"": {"a"}}, "empty name"},
		{"no value", http.Header{"X-A": {}}, "no value"},
		{"one name in two cases", http.Header{"x-a": {"1"}, "X-A": {"2"}}, "twice"},
	} {
		e := eps[0]
		e.Header = tt.header
		_, err := amlpool.New([]amlpool.Endpoint{e})
		var ce *amlpool.ConfigError
		require.ErrorAs(t, err, &ce, tt.name)
		assert.Equal(t, "Header", ce.Field, tt.name)
		assert.Contains(t, ce.Problem, tt.want, tt.name)
	}
}

// TestOnlineReplyIsTheDeployments: a 2xx body shaped like the Classic
// service's error body is an online deployment's answer, returned as it
// is; a 2xx body that is not JSON is still malformed.
func TestOnlineReplyIsTheDeployments(t *testing.T) {
	srv := onlineServers(t, 1, 4)[0]
	body := `{"error": {"code": "Rejected", "message": "the applicant is under 18"}}`
	srv.Script(amltest.Fault{Status: 200, Body: []byte(body)}, amltest.Fault{Status: 200, Body: []byte("<html>")})
	c := newClient(t, endpoints([]*amltest.Server{srv}), amlpool.WithoutRetries())
	reply, err := c.Do(t.Context(), onlineBody)
	require.NoError(t, err)
	assert.JSONEq(t, body, string(reply))
	_, err = c.Do(t.Context(), onlineBody)
	require.ErrorIs(t, err, amlpool.ErrMalformedResponse)
}

// TestOnlineTiers: online endpoints in tiers. A tier-0 endpoint that
// answers 429 Too many pending requests is full, not broken: the call goes
// at once to tier 1, and the calls after it go back to tier 0. The tier-1
// endpoint comes first in the list, where firstFree would pick it without
// tiers.
func TestOnlineTiers(t *testing.T) {
	srvs := onlineServers(t, 2, 4)
	eps := endpoints(srvs)
	eps[0].Tier = 1
	srvs[1].Script(amltest.Pending())
	c := newClient(t, eps, amlpool.WithRand(firstFree))
	for range 5 {
		_, err := c.Do(t.Context(), onlineBody)
		require.NoError(t, err)
	}
	assert.Equal(t, []int64{1, 5}, requests(srvs), "tier 1 takes only the call tier 0 was full for")
	st := c.Stats()
	assert.Equal(t, []int{1, 0}, []int{st.Endpoints[0].Tier, st.Endpoints[1].Tier})
	assert.Zero(t, st.Endpoints[1].Faults, "full, not broken")
	assert.False(t, st.Endpoints[1].Ejected)
}

// TestOnlineRateLimitCutsAdaptiveLimit: with WithAdaptiveLimit, a 429
// Rate-limited brings the endpoint's limit down as a throttle does, and
// still ejects nothing; with a Retry-After it also holds the endpoint back,
// as without the option.
func TestOnlineRateLimitCutsAdaptiveLimit(t *testing.T) {
	for _, tt := range []struct {
		name  string
		fault amltest.Fault
	}{
		{"no Retry-After", amltest.RateLimited()},
		{"Retry-After", amltest.RateLimited().WithRetryAfter(30 * time.Second)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srvs := onlineServers(t, 2, 10)
			srvs[0].Script(tt.fault)
			clk := newStepClock(2 * time.Second)
			c := newClient(t, endpoints(srvs), amlpool.WithClock(clk), amlpool.WithRand(firstFree), amlpool.WithAdaptiveLimit())
			_, err := c.Do(t.Context(), onlineBody)
			require.NoError(t, err, "o1 serves the retry")
			st := c.Stats().Endpoints[0]
			assert.Equal(t, 7, st.Limit, "10 × 0.7")
			assert.EqualValues(t, 1, st.Errors)
			assert.Zero(t, st.Throttles, "a rate limit is no throttle")
			assert.False(t, st.Ejected)
			if tt.fault.RetryAfter == "" {
				return
			}
			_, err = c.Do(t.Context(), onlineBody)
			require.NoError(t, err)
			assert.Equal(t, []int64{1, 2}, requests(srvs), "o0 cools down for its Retry-After")
			assert.Contains(t, clk.Timers(), 30*time.Second, "the cool-down's timer")
		})
	}
}
