package amltest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/amltest"
)

func TestScriptedErrorReplies(t *testing.T) {
	tests := []struct {
		name       string
		fault      amltest.Fault
		wantStatus int
		wantBody   string // exact, when set
		wantCode   string
		wantDetail string
		wantHeader http.Header
	}{
		{
			name: "injected throttle has the exact body", fault: amltest.Throttle(),
			wantStatus: 503, wantBody: throttleBody20,
		},
		{
			name: "503 alone: containers initializing", fault: amltest.Fault{Status: 503},
			wantStatus: 503, wantBody: `{"error":{"code":"InitializingContainers","message":"The request cannot execute as the containers are being initialized."}}`,
		},
		{
			name: "503 other cause", fault: amltest.Fault{Status: 503, Code: "ServiceUnavailable", Detail: "NoMoreResources"},
			wantStatus: 503, wantBody: `{"error":{"code":"ServiceUnavailable","message":"Service is temporarily unavailable.","details":[{"code":"NoMoreResources","message":"No resources available for request."}]}}`,
		},
		{name: "400", fault: amltest.Fault{Status: 400}, wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestBodyInvalid"},
		{name: "401", fault: amltest.Fault{Status: 401}, wantStatus: 401, wantBody: unauthorized},
		{name: "408", fault: amltest.Fault{Status: 408}, wantStatus: 408, wantCode: "RequestTimeout", wantDetail: "ScoreRequestTimeout"},
		{name: "500", fault: amltest.Fault{Status: 500}, wantStatus: 500, wantCode: "InternalError", wantDetail: "ModuleExecutionFailed"},
		{name: "500 low memory", fault: amltest.Fault{Status: 500, Code: "InternalErrorSystemLowOnMemory"}, wantStatus: 500, wantCode: "InternalErrorSystemLowOnMemory"},
		{name: "504", fault: amltest.Fault{Status: 504}, wantStatus: 504, wantCode: "GatewayTimeout", wantDetail: "BackendScoreTimeout"},
		{name: "502 outside the catalogue", fault: amltest.Fault{Status: 502}, wantStatus: 502, wantCode: "BadGateway"},
		{
			name: "429 with retry hints", fault: amltest.Fault{Status: 429, RetryAfter: "2", Header: http.Header{"Retry-After-Ms": {"1500"}}},
			wantStatus: 429, wantCode: "TooManyRequests",
			wantHeader: http.Header{"Retry-After": {"2"}, "Retry-After-Ms": {"1500"}},
		},
		{name: "raw body, status 200", fault: amltest.Fault{Body: []byte(`{"Results":`)}, wantStatus: 200, wantBody: `{"Results":`},
		{
			name: "proxy page", fault: amltest.Fault{Status: 502, Body: []byte("<html>Bad Gateway</html>"), Header: http.Header{"Content-Type": {"text/html"}}},
			wantStatus: 502, wantBody: "<html>Bad Gateway</html>", wantHeader: http.Header{"Content-Type": {"text/html"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, amltest.Config{})
			srv.Script(tt.fault)
			got := score(t, srv)
			assert.Equal(t, tt.wantStatus, got.status)
			if tt.wantBody != "" {
				assert.Equal(t, tt.wantBody, string(got.body))
			} else {
				code, detail := errorCodes(t, got.body)
				assert.Equal(t, tt.wantCode, code)
				assert.Equal(t, tt.wantDetail, detail)
			}
			for k, v := range tt.wantHeader {
				assert.Equal(t, v, got.header.Values(k), k)
			}
			st := srv.Stats()
			assert.Equal(t, int64(1), st.Faults)
			assert.Zero(t, st.Scored)
			assert.Zero(t, st.Throttled, "an injected throttle is a fault, not the cap")

			// The script is used up: the next call is normal.
			assert.Equal(t, http.StatusOK, score(t, srv).status)
			assert.Equal(t, int64(1), srv.Stats().Faults)
		})
	}
}

func TestScriptedDeliveryFaults(t *testing.T) {
	tests := []struct {
		name string
		// check gets what a plain net/http client saw.
		fault      amltest.Fault
		wantScored int64
		check      func(t *testing.T, resp *http.Response, err error)
	}{
		{
			name:  "Reset: transport error, no reply",
			fault: amltest.Fault{Reset: true},
			check: func(t *testing.T, resp *http.Response, err error) {
				require.Error(t, err)
				assert.Nil(t, resp)
				assert.False(t, errors.Is(err, context.Canceled))
			},
		},
		{
			name:  "Truncate: unexpected EOF in the body",
			fault: amltest.Fault{Truncate: true},
			check: func(t *testing.T, resp *http.Response, err error) {
				require.NoError(t, err)
				assert.Equal(t, http.StatusOK, resp.StatusCode)
				_, err = readAll(resp)
				assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
			},
		},
		{
			name:  "Truncate an error reply",
			fault: amltest.Fault{Status: 500, Truncate: true},
			check: func(t *testing.T, resp *http.Response, err error) {
				require.NoError(t, err)
				assert.Equal(t, http.StatusInternalServerError, resp.StatusCode)
				_, err = readAll(resp)
				assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
			},
		},
		{
			name:       "SlowBody: the whole reply, in pieces",
			fault:      amltest.Fault{SlowBody: 8 * time.Millisecond},
			wantScored: 1,
			check: func(t *testing.T, resp *http.Response, err error) {
				require.NoError(t, err)
				b, err := readAll(resp)
				require.NoError(t, err)
				assert.Contains(t, string(b), `"Scored Probabilities"`)
			},
		},
		{
			name:       "Delay, then the normal reply",
			fault:      amltest.Fault{Delay: time.Millisecond},
			wantScored: 1,
			check: func(t *testing.T, resp *http.Response, err error) {
				require.NoError(t, err)
				assert.Equal(t, http.StatusOK, resp.StatusCode)
				_, err = readAll(resp)
				assert.NoError(t, err)
			},
		},
		{
			name:       "2xx status with the model's reply",
			fault:      amltest.Fault{Status: http.StatusAccepted},
			wantScored: 1,
			check: func(t *testing.T, resp *http.Response, err error) {
				require.NoError(t, err)
				assert.Equal(t, http.StatusAccepted, resp.StatusCode)
				b, err := readAll(resp)
				require.NoError(t, err)
				assert.Contains(t, string(b), `"Results"`)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, amltest.Config{})
			ep := srv.Endpoint()
			srv.Script(tt.fault)
			resp, err := do(t.Context(), srv, ep.URL, ep.APIKey, classicBody)
			tt.check(t, resp, err)
			st, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.InFlight == 0 })
			require.NoError(t, err)
			assert.Equal(t, int64(1), st.Faults)
			assert.Equal(t, tt.wantScored, st.Scored)
			assert.Equal(t, http.StatusOK, score(t, srv).status, "the next call is normal")
		})
	}
}

func TestHangEndsWhenTheClientGoesAway(t *testing.T) {
	srv := newServer(t, amltest.Config{})
	ep := srv.Endpoint()
	srv.Script(amltest.Fault{Hang: true})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		resp, err := do(ctx, srv, ep.URL, ep.APIKey, classicBody)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	st, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.Faults == 1 })
	require.NoError(t, err)
	assert.Equal(t, int64(1), st.InFlight, "the hung call is in flight")

	cancel()
	assert.ErrorIs(t, <-errc, context.Canceled)
	_, err = srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.InFlight == 0 })
	require.NoError(t, err, "the server notices the client left")
	assert.Zero(t, srv.Stats().Scored)
}

func TestFaultFunc(t *testing.T) {
	var mu sync.Mutex // Fault runs on the server's goroutines
	var seen []int64
	srv := newServer(t, amltest.Config{
		Key: "k",
		Fault: func(n int64) amltest.Fault {
			mu.Lock()
			seen = append(seen, n)
			mu.Unlock()
			if n%2 == 0 {
				return amltest.Fault{Status: 500}
			}
			return amltest.Fault{}
		},
	})
	srv.Script(amltest.Fault{Status: 408})

	var statuses []int
	for range 5 {
		statuses = append(statuses, score(t, srv).status)
	}
	// Calls that are not admitted do not count toward n.
	assert.Equal(t, http.StatusUnauthorized, send(t, srv, srv.URL(), "wrong", classicBody).status)
	statuses = append(statuses, score(t, srv).status)

	assert.Equal(t, []int{408, 500, 200, 500, 200, 500}, statuses)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []int64{2, 3, 4, 5, 6}, seen, "the script's call counts as n=1 without calling Fault")
	assert.Equal(t, int64(4), srv.Stats().Faults)
}
