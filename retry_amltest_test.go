package amlpool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/internal/clock"
)

// scoreBody is a valid classic request for amltest's Echo model.
var scoreBody = []byte(`{"Inputs":{"input1":{"ColumnNames":["a"],"Values":[["1"]]}},"GlobalParameters":{}}`)

// stepClock is a fake clock on which timers up to instant long fire at once
// and are recorded: a call's backoff waits. Longer ones (ejections,
// cool-downs) wait for the test to Advance the clock, and so do those of
// exactly hold: the hold-back after a 429 without a delay hint, a
// cool-down of the backoff's first wait before jitter (a backoff wait,
// jittered, is never exactly that). Fired at once, a cool-down's timer
// would find it still running, and be set again, and again.
type stepClock struct {
	*clock.Fake
	instant time.Duration
	hold    time.Duration

	mu     sync.Mutex // guards waits and timers
	waits  []time.Duration
	timers []time.Duration // every timer asked for, instant or not
}

func newStepClock(instant time.Duration) *stepClock {
	return &stepClock{Fake: clock.NewFake(), instant: instant, hold: amlpool.DefaultBackoffInitial}
}

func (c *stepClock) NewTimer(d time.Duration) clock.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timers = append(c.timers, d)
	if d > c.instant || d == c.hold {
		return c.Fake.NewTimer(d)
	}
	c.waits = append(c.waits, d)
	return c.Fake.NewTimer(0)
}

func (c *stepClock) Timers() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.timers...)
}

func (c *stepClock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// firstFree makes the default balancer deterministic: each attempt goes to
// the first endpoint, in the order given to New, that it may use.
func firstFree() uint64 { return 0 }

// servers starts n fakes named s0, s1 … with the given cap.
func servers(t *testing.T, n, mcc int) []*amltest.Server {
	t.Helper()
	out := make([]*amltest.Server, n)
	for i := range out {
		out[i] = amltest.NewServer(amltest.Config{Name: fmt.Sprintf("s%d", i), MaxConcurrentCalls: mcc})
		t.Cleanup(out[i].Close)
	}
	return out
}

func endpoints(srvs []*amltest.Server) []amlpool.Endpoint {
	eps := make([]amlpool.Endpoint, len(srvs))
	for i, s := range srvs {
		eps[i] = s.Endpoint()
	}
	return eps
}

func requests(srvs []*amltest.Server) []int64 {
	out := make([]int64, len(srvs))
	for i, s := range srvs {
		out[i] = s.Stats().Requests
	}
	return out
}

// deadEndpoint returns an endpoint on a loopback port nothing listens on:
// every attempt is refused.
func deadEndpoint(t *testing.T, name string) (amlpool.Endpoint, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return amlpool.Endpoint{Name: name, URL: "http://" + addr + "/workspaces/w/services/" + name + "/execute?api-version=2.0", APIKey: "dead-key"}, addr
}

func throttle() amltest.Fault {
	return amltest.Fault{Status: 503, Code: "ServiceUnavailable", Detail: "RequestThrottled"}
}

// TestRetryClasses drives every class of docs/azureml.md through scripted
// faults on three fakes. Attempts go to s0, then s1, then s2 (firstFree), so
// each case can say which endpoint each attempt reached.
func TestRetryClasses(t *testing.T) {
	type want struct {
		requests  []int64  // per fake
		endpoints []string // of the failed attempts, in order (CallError.Endpoints)
		waits     int      // backoff waits
		status    int      // the final *APIError's status; 0: success or a transport error
		errIs     error    // the final error matches it
	}
	f := func(fs ...amltest.Fault) []amltest.Fault { return fs }
	retryAt := func(status int, code, detail string) amltest.Fault {
		return amltest.Fault{Status: status, Code: code, Detail: detail}
	}
	tests := []struct {
		name   string
		faults [3][]amltest.Fault
		opts   []amlpool.Option
		want   want
	}{
		{"throttle: another endpoint at once",
			[3][]amltest.Fault{f(throttle())}, nil,
			want{requests: []int64{1, 1, 0}}},
		{"TooManyConcurrentRequests: another endpoint at once",
			[3][]amltest.Fault{f(retryAt(503, "ServiceUnavailable", "TooManyConcurrentRequests"))}, nil,
			want{requests: []int64{1, 1, 0}}},
		{"throttle everywhere: back off once, then the first again",
			[3][]amltest.Fault{f(throttle()), f(throttle()), f(throttle())}, nil,
			want{requests: []int64{2, 1, 1}, waits: 1}},
		{"throttle everywhere, every time: 4 attempts",
			[3][]amltest.Fault{f(throttle(), throttle()), f(throttle()), f(throttle())}, nil,
			want{requests: []int64{2, 1, 1}, endpoints: []string{"s0", "s1", "s2", "s0"}, waits: 1, status: 503, errIs: amlpool.ErrThrottled}},
		{"503 InitializingContainers: back off, another endpoint",
			[3][]amltest.Fault{f(retryAt(503, "InitializingContainers", ""))}, nil,
			want{requests: []int64{1, 1, 0}, waits: 1}},
		{"503 TooManyHostsBeingInitialized",
			[3][]amltest.Fault{f(retryAt(503, "ServiceUnavailable", "TooManyHostsBeingInitialized"))}, nil,
			want{requests: []int64{1, 1, 0}, waits: 1}},
		{"503 NoMoreResources",
			[3][]amltest.Fault{f(retryAt(503, "ServiceUnavailable", "NoMoreResources"))}, nil,
			want{requests: []int64{1, 1, 0}, waits: 1}},
		{"503 with a proxy's page",
			[3][]amltest.Fault{f(amltest.Fault{Status: 503, Body: []byte("<html>busy</html>")})}, nil,
			want{requests: []int64{1, 1, 0}, waits: 1}},
		{"408 ScoreRequestTimeout", [3][]amltest.Fault{f(retryAt(408, "", ""))}, nil, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"429", [3][]amltest.Fault{f(retryAt(429, "", ""))}, nil, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"500", [3][]amltest.Fault{f(retryAt(500, "", ""))}, nil, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"500 InternalErrorSystemLowOnMemory", [3][]amltest.Fault{f(retryAt(500, "InternalErrorSystemLowOnMemory", ""))}, nil, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"502", [3][]amltest.Fault{f(retryAt(502, "", ""))}, nil, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"504", [3][]amltest.Fault{f(retryAt(504, "", ""))}, nil, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"connection reset", [3][]amltest.Fault{f(amltest.Fault{Reset: true})}, nil, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"reply cut short", [3][]amltest.Fault{f(amltest.Fault{Truncate: true})}, nil, want{requests: []int64{1, 1, 0}, waits: 1}},
		{"attempt timeout",
			[3][]amltest.Fault{f(amltest.Fault{Hang: true})},
			[]amlpool.Option{amlpool.WithAttemptTimeout(50 * time.Millisecond)},
			want{requests: []int64{1, 1, 0}, waits: 1}},
		{"retryable everywhere: 4 attempts on 3 endpoints, untried ones first",
			[3][]amltest.Fault{f(retryAt(500, "", ""), retryAt(502, "", "")), f(retryAt(500, "", "")), f(retryAt(504, "", ""))}, nil,
			want{requests: []int64{2, 1, 1}, endpoints: []string{"s0", "s1", "s2", "s0"}, waits: 3, status: 502}},
		{"a throttle, then a transient failure",
			[3][]amltest.Fault{f(throttle()), f(retryAt(500, "", ""))}, nil,
			want{requests: []int64{1, 1, 1}, waits: 1}},
		{"400: never retried", [3][]amltest.Fault{f(retryAt(400, "", ""))}, nil, want{requests: []int64{1, 0, 0}, status: 400}},
		{"400 with its body cut short: never retried, the status says enough",
			[3][]amltest.Fault{f(amltest.Fault{Status: 400, Truncate: true})}, nil, want{requests: []int64{1, 0, 0}, status: 400}},
		{"401 with its body cut short: an endpoint fault, another endpoint at once",
			[3][]amltest.Fault{f(amltest.Fault{Status: 401, Truncate: true})}, nil, want{requests: []int64{1, 1, 0}}},
		{"400 LibraryExecutionError", [3][]amltest.Fault{f(retryAt(400, "LibraryExecutionError", ""))}, nil, want{requests: []int64{1, 0, 0}, status: 400}},
		{"401: an endpoint fault, another endpoint at once", [3][]amltest.Fault{f(retryAt(401, "", ""))}, nil, want{requests: []int64{1, 1, 0}}},
		{"403: an endpoint fault, another endpoint at once", [3][]amltest.Fault{f(retryAt(403, "", ""))}, nil, want{requests: []int64{1, 1, 0}}},
		{"404: an endpoint fault, another endpoint at once", [3][]amltest.Fault{f(retryAt(404, "", ""))}, nil, want{requests: []int64{1, 1, 0}}},
		{"endpoint faults everywhere: each endpoint once, then the fault",
			[3][]amltest.Fault{f(retryAt(401, "", "")), f(retryAt(403, "", "")), f(retryAt(404, "", ""))}, nil,
			want{requests: []int64{1, 1, 1}, endpoints: []string{"s0", "s1", "s2"}, status: 404}},
		{"408 RequestCanceled", [3][]amltest.Fault{f(retryAt(408, "RequestTimeout", "RequestCanceled"))}, nil, want{requests: []int64{1, 0, 0}, status: 408}},
		{"413", [3][]amltest.Fault{f(retryAt(413, "", ""))}, nil, want{requests: []int64{1, 0, 0}, status: 413}},
		{"422", [3][]amltest.Fault{f(retryAt(422, "", ""))}, nil, want{requests: []int64{1, 0, 0}, status: 422}},
		{"501", [3][]amltest.Fault{f(retryAt(501, "", ""))}, nil, want{requests: []int64{1, 0, 0}, status: 501}},
		{"WithoutRetries: a throttle is returned",
			[3][]amltest.Fault{f(throttle())}, []amlpool.Option{amlpool.WithoutRetries()},
			want{requests: []int64{1, 0, 0}, status: 503, errIs: amlpool.ErrThrottled}},
		{"WithMaxAttempts(2)",
			[3][]amltest.Fault{f(retryAt(500, "", "")), f(retryAt(500, "", ""))}, []amlpool.Option{amlpool.WithMaxAttempts(2)},
			want{requests: []int64{1, 1, 0}, endpoints: []string{"s0", "s1"}, waits: 1, status: 500}},
		{"a classifier that reads 429 as full",
			[3][]amltest.Fault{f(retryAt(429, "", ""))},
			[]amlpool.Option{amlpool.WithClassifier(func(err error) amlpool.Verdict {
				if e, ok := errors.AsType[*amlpool.APIError](err); ok && e.StatusCode == 429 {
					return amlpool.VerdictFull
				}
				return amlpool.Classify(err)
			})},
			want{requests: []int64{1, 1, 0}}},
		{"an empty budget: no retry",
			[3][]amltest.Fault{f(retryAt(500, "", ""))}, []amlpool.Option{amlpool.WithRetryBudget(0, 0)},
			want{requests: []int64{1, 0, 0}, endpoints: []string{"s0"}, status: 500, errIs: amlpool.ErrRetryBudgetExhausted}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srvs := servers(t, 3, 20)
			for i, fs := range tt.faults {
				srvs[i].Script(fs...)
			}
			clk := newStepClock(2 * time.Second)
			eps := endpoints(srvs)
			for i := range eps {
				eps[i].SecondaryKey = "" // a 401 is the endpoint's fault at once (TestSecondaryKey… cover the other key)
			}
			c := newClient(t, eps, append([]amlpool.Option{amlpool.WithClock(clk), amlpool.WithRand(firstFree)}, tt.opts...)...)

			_, err := c.Do(context.Background(), scoreBody)

			assert.Equal(t, tt.want.requests, requests(srvs), "requests per fake")
			assert.Len(t, clk.Waits(), tt.want.waits, "backoff waits")
			if tt.want.status == 0 && tt.want.errIs == nil {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			if tt.want.status != 0 {
				var apiErr *amlpool.APIError
				require.ErrorAs(t, err, &apiErr)
				assert.Equal(t, tt.want.status, apiErr.StatusCode)
			}
			if tt.want.errIs != nil {
				assert.ErrorIs(t, err, tt.want.errIs)
			}
			var callErr *amlpool.CallError
			if tt.want.endpoints == nil {
				assert.False(t, errors.As(err, &callErr), "a single attempt's error comes back as it is: %v", err)
				return
			}
			require.ErrorAs(t, err, &callErr)
			assert.Equal(t, tt.want.endpoints, callErr.Endpoints)
			assert.Equal(t, len(tt.want.endpoints), callErr.Attempts)
		})
	}
}

// TestRetryConnectionRefused: a dead endpoint's refusal is retried on
// another after a backoff.
func TestRetryConnectionRefused(t *testing.T) {
	dead, _ := deadEndpoint(t, "dead")
	srvs := servers(t, 2, 20)
	clk := newStepClock(2 * time.Second)
	c := newClient(t, append([]amlpool.Endpoint{dead}, endpoints(srvs)...), amlpool.WithClock(clk), amlpool.WithRand(firstFree))

	_, err := c.Do(context.Background(), scoreBody)
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 0}, requests(srvs))
	assert.Len(t, clk.Waits(), 1)
	st := c.Stats()
	assert.EqualValues(t, 1, st.Endpoints[0].Errors)

	// Every endpoint refusing: the final error is the transport error.
	c2 := newClient(t, []amlpool.Endpoint{dead}, amlpool.WithClock(newStepClock(2*time.Second)))
	_, err = c2.Do(context.Background(), scoreBody)
	var callErr *amlpool.CallError
	require.ErrorAs(t, err, &callErr)
	assert.Equal(t, []string{"dead", "dead", "dead", "dead"}, callErr.Endpoints)
	var opErr *net.OpError
	assert.ErrorAs(t, err, &opErr)
	assert.NotContains(t, err.Error(), "dead-key")
}

// TestRetryDeadline: a backoff that would pass the ctx deadline is not
// started; the call returns the last error at once, before its deadline.
func TestRetryDeadline(t *testing.T) {
	srvs := servers(t, 3, 20)
	srvs[0].Script(amltest.Fault{Status: 500})
	clk := clock.NewFake()
	c := newClient(t, endpoints(srvs), amlpool.WithClock(clk), amlpool.WithRand(firstFree),
		amlpool.WithBackoff(amlpool.Backoff{Initial: time.Minute, Max: time.Minute}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	_, err := c.Do(ctx, scoreBody)

	assert.NoError(t, ctx.Err(), "the call ended before its deadline")
	assert.Zero(t, clk.Timers(), "no wait was started")
	assert.Equal(t, []int64{1, 0, 0}, requests(srvs))
	var callErr *amlpool.CallError
	require.ErrorAs(t, err, &callErr)
	assert.Equal(t, 1, callErr.Attempts)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	var apiErr *amlpool.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 500, apiErr.StatusCode)
}

// TestRetryWaitEndsWithCtx: a call waiting out its backoff returns as soon
// as its ctx is cancelled, with the last attempt's error and ctx's.
func TestRetryWaitEndsWithCtx(t *testing.T) {
	srvs := servers(t, 2, 20)
	srvs[0].Script(amltest.Fault{Status: 500})
	clk := clock.NewFake()
	c := newClient(t, endpoints(srvs), amlpool.WithClock(clk), amlpool.WithRand(firstFree))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() {
		_, err := c.Do(ctx, scoreBody)
		errc <- err
	}()
	require.True(t, clk.WaitTimers(1, nil), "the call waits out its backoff")
	cancel()
	err := <-errc
	assert.ErrorIs(t, err, context.Canceled)
	var apiErr *amlpool.APIError
	assert.ErrorAs(t, err, &apiErr)
	assert.Equal(t, []int64{1, 0}, requests(srvs))
}

// TestRetryCloseDuringWait: Close ends a backoff wait with ErrClosed.
func TestRetryCloseDuringWait(t *testing.T) {
	srvs := servers(t, 2, 20)
	srvs[0].Script(amltest.Fault{Status: 500})
	clk := clock.NewFake()
	c, err := amlpool.New(endpoints(srvs), amlpool.WithClock(clk), amlpool.WithRand(firstFree))
	require.NoError(t, err)
	errc := make(chan error)
	go func() {
		_, err := c.Do(context.Background(), scoreBody)
		errc <- err
	}()
	require.True(t, clk.WaitTimers(1, nil))
	require.NoError(t, c.Close())
	assert.ErrorIs(t, <-errc, amlpool.ErrClosed)
}

// TestRetryAfterCoolsDown: a Retry-After hint holds its endpoint back for
// that long while calls go elsewhere without waiting for it.
func TestRetryAfterCoolsDown(t *testing.T) {
	srvs := servers(t, 2, 20)
	srvs[0].Script(amltest.Fault{Status: 429, RetryAfter: "5"})
	clk := newStepClock(2 * time.Second)
	c := newClient(t, endpoints(srvs), amlpool.WithClock(clk), amlpool.WithRand(firstFree))

	_, err := c.Do(context.Background(), scoreBody)
	require.NoError(t, err)
	for range 10 {
		_, err := c.Do(context.Background(), scoreBody)
		require.NoError(t, err)
	}
	assert.Equal(t, []int64{1, 11}, requests(srvs), "s0, the first choice, is cooling down")
	assert.Len(t, clk.Waits(), 1, "one backoff, no waiting for the hint")

	clk.Advance(5 * time.Second)
	// The cool-down ends on the Client's own timer; calls see it soon after.
	for i := 0; requests(srvs)[0] == 1; i++ {
		require.Less(t, i, 10000, "s0 never came back")
		_, err := c.Do(context.Background(), scoreBody)
		require.NoError(t, err)
	}
}

// TestRetryAfterEverywhereWaitsForTheHint: when every endpoint is held back
// the call waits for the first hint to pass, not for a backoff alone.
func TestRetryAfterEverywhereWaitsForTheHint(t *testing.T) {
	srvs := servers(t, 1, 20)
	srvs[0].Script(amltest.Fault{Status: 503, Header: http.Header{"Retry-After-Ms": {"1500"}}})
	clk := newStepClock(0)
	c := newClient(t, endpoints(srvs), amlpool.WithClock(clk))
	errc := make(chan error)
	go func() {
		_, err := c.Do(context.Background(), scoreBody)
		errc <- err
	}()
	require.True(t, clk.WaitTimers(2, nil), "the cool-down and the call's wait")
	assert.Equal(t, []time.Duration{1500 * time.Millisecond, 1500 * time.Millisecond}, clk.Timers())
	clk.Advance(1500 * time.Millisecond)
	require.NoError(t, <-errc)
	assert.Equal(t, []int64{2}, requests(srvs))
}

// TestErrorReplyCutShort: an error reply whose body does not come whole is
// still the reply its status and headers say: its Retry-After cools the
// endpoint down, and its error is an *APIError that says what happened to
// the body, without quoting the part that came.
func TestErrorReplyCutShort(t *testing.T) {
	t.Run("Retry-After", func(t *testing.T) {
		srvs := servers(t, 2, 20)
		srvs[0].Script(amltest.Fault{Status: 429, RetryAfter: "5", Truncate: true})
		clk := newStepClock(2 * time.Second) // the backoff at once; the cool-down does not end
		c := newClient(t, endpoints(srvs), amlpool.WithClock(clk), amlpool.WithRand(firstFree))
		for range 11 {
			_, err := c.Do(context.Background(), scoreBody)
			require.NoError(t, err)
		}
		assert.Equal(t, []int64{1, 11}, requests(srvs), "s0, the first choice, is cooling down")
	})
	t.Run("error", func(t *testing.T) {
		srvs := servers(t, 1, 20)
		srvs[0].Script(amltest.Fault{Status: 400, Truncate: true})
		c := newClient(t, endpoints(srvs))
		_, err := c.Do(context.Background(), scoreBody)
		var apiErr *amlpool.APIError
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, 400, apiErr.StatusCode)
		assert.Empty(t, apiErr.Body, "what came of the body is not quoted")
		assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
		assert.Equal(t, "amlpool: endpoint s0: HTTP 400 (reading its body: unexpected EOF)", err.Error())
	})
	t.Run("attempt timeout", func(t *testing.T) {
		srvs := servers(t, 1, 20)
		srvs[0].Script(amltest.Fault{Status: 503, SlowBody: time.Hour})
		c := newClient(t, endpoints(srvs), amlpool.WithAttemptTimeout(50*time.Millisecond), amlpool.WithoutRetries())
		_, err := c.Do(context.Background(), scoreBody)
		var apiErr *amlpool.APIError
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, 503, apiErr.StatusCode)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Contains(t, err.Error(), "HTTP 503 (attempt timed out after 50ms reading its body: ")
	})
}

// A retrying call waits in line for the one endpoint it has not tried
// while that one is full; when it leaves rotation (a Retry-After cool-down)
// or the Set (SetEndpoints), the call goes back to the endpoint it tried,
// which is free, instead of waiting for one that takes no calls.
func TestRetryWaitingForAnEndpointThatLeaves(t *testing.T) {
	for _, leave := range []string{"cool-down", "removal"} {
		t.Run(leave, func(t *testing.T) {
			arrived, release := make(chan struct{}), make(chan struct{})
			b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				close(arrived)
				<-release
				if leave == "cool-down" {
					w.Header().Set("Retry-After", "20")
					w.WriteHeader(http.StatusTooManyRequests)
				}
				_, _ = w.Write([]byte(`{}`))
			}))
			t.Cleanup(b.Close)
			free := sync.OnceFunc(func() { close(release) })
			t.Cleanup(free) // before b.Close, should the test fail first
			var aHits atomic.Int64
			a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if aHits.Add(1) == 1 {
					w.WriteHeader(http.StatusInternalServerError)
				}
				_, _ = w.Write([]byte(`{}`))
			}))
			t.Cleanup(a.Close)
			epB := amlpool.Endpoint{Name: "B", URL: b.URL + "/score", APIKey: "k", MaxConcurrentCalls: 1}
			epA := amlpool.Endpoint{Name: "A", URL: a.URL + "/score", APIKey: "k", MaxConcurrentCalls: 1}
			clk := newStepClock(2 * time.Second) // backoffs at once; the cool-down does not end
			c := newClient(t, []amlpool.Endpoint{epB, epA}, amlpool.WithClock(clk), amlpool.WithRand(firstFree))
			queued := make(chan struct{}, 2)
			amlpool.SetQueueHook(c, func() { queued <- struct{}{} })

			first := make(chan error, 1) // holds B's only slot
			go func() { _, err := c.Do(context.Background(), scoreBody); first <- err }()
			<-arrived
			retrying := make(chan error, 1) // a 500 from A, then waits for B
			go func() { _, err := c.Do(context.Background(), scoreBody); retrying <- err }()
			<-queued

			if leave == "removal" {
				require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{epA}))
				require.Zero(t, c.Stats().Waiting, "the call still waits for a removed endpoint")
				free()
			} else {
				free() // B answers 429 with Retry-After: 20
				require.NoError(t, <-first, "the 429, then A")
				require.Zero(t, c.Stats().Waiting, "the call still waits for an endpoint cooling down")
			}
			assert.NoError(t, <-retrying)
			if leave == "removal" {
				assert.NoError(t, <-first)
			}
		})
	}
}

// revivable is an endpoint on a loopback port that refuses connections
// until Revive starts a server there.
type revivable struct {
	amlpool.Endpoint
	addr     string
	srv      *httptest.Server
	requests atomic.Int64
}

func newRevivable(t *testing.T) *revivable {
	ep, addr := deadEndpoint(t, "flaky")
	r := &revivable{Endpoint: ep, addr: addr}
	t.Cleanup(func() {
		if r.srv != nil {
			r.srv.Close()
		}
	})
	return r
}

func (r *revivable) Revive(t *testing.T) {
	l, err := net.Listen("tcp", r.addr)
	if err != nil {
		t.Skipf("port %s was taken meanwhile: %v", r.addr, err)
	}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		r.requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"Results":{}}`))
	}))
	r.srv.Listener.Close()
	r.srv.Listener = l
	r.srv.Start()
}

// load makes n calls from g goroutines and returns how many succeeded.
func load(c *amlpool.Client, g, n int) int {
	var ok atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range g {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if _, err := c.Do(context.Background(), scoreBody); err == nil {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return int(ok.Load())
}

// TestOneEndpointDownUnderLoad: one endpoint of five refuses connections
// while calls saturate the pool. Calls still succeed (≥ 99.9 %), the dead
// endpoint is ejected after a handful of attempts, and once it is back and
// its ejection time has passed, one probe readmits it.
func TestOneEndpointDownUnderLoad(t *testing.T) {
	const mcc, calls = 4, 2000
	srvs := servers(t, 4, mcc)
	for _, s := range srvs {
		s.SetMaxConcurrentCalls(mcc)
	}
	flaky := newRevivable(t)
	flaky.MaxConcurrentCalls = mcc
	var logs syncBuffer
	clk := newStepClock(2 * time.Second) // backoffs at once; the ejection on the fake clock
	c := newClient(t, append(endpoints(srvs), flaky.Endpoint),
		amlpool.WithClock(clk), amlpool.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	const goroutines = 2 * 5 * mcc

	ok := load(c, goroutines, calls)

	assert.GreaterOrEqual(t, float64(ok)/calls, 0.999, "success rate")
	st := c.Stats().Endpoints[4]
	assert.True(t, st.Ejected, "the dead endpoint is ejected")
	assert.EqualValues(t, 1, st.Ejections)
	assert.LessOrEqual(t, st.Calls, int64(amlpool.DefaultEjectAfter+goroutines), "attempts on the dead endpoint")
	for _, s := range srvs {
		assert.LessOrEqual(t, s.Stats().PeakAdmitted, int64(mcc))
		assert.Zero(t, s.Stats().Throttled)
	}

	// Back on the same port; the ejection (30 s ± 20 %) ends on the fake clock.
	flaky.Revive(t)
	require.True(t, clk.WaitTimers(1, nil))
	clk.Advance(36 * time.Second)
	for i := 0; c.Stats().Endpoints[4].Ejected; i++ {
		require.Less(t, i, 100000, "the endpoint was never readmitted")
		_, err := c.Do(context.Background(), scoreBody)
		require.NoError(t, err)
	}
	before := flaky.requests.Load()
	require.Equal(t, calls/2, load(c, goroutines, calls/2))
	assert.Greater(t, flaky.requests.Load()-before, int64(calls/20), "the readmitted endpoint takes its share (1/5)")

	assert.Contains(t, logs.String(), "endpoint ejected")
	assert.Contains(t, logs.String(), "endpoint readmitted")
	assert.Contains(t, logs.String(), "endpoint=flaky")
	for _, s := range srvs {
		assert.NotContains(t, logs.String(), s.Endpoint().APIKey)
	}
	assert.NotContains(t, logs.String(), flaky.APIKey)
}

// Test503Storm: every endpoint answers every call 503 NoMoreResources. The
// retry budget keeps retries within 20 % of the calls plus its floor, as
// counted by the servers, and the calls it cuts short say so.
func Test503Storm(t *testing.T) {
	storm := func(int64) amltest.Fault {
		return amltest.Fault{Status: 503, Code: "ServiceUnavailable", Detail: "NoMoreResources"}
	}
	run := func(t *testing.T, calls int, opts ...amlpool.Option) (requests int64, budgetStops int) {
		srvs := make([]*amltest.Server, 5)
		for i := range srvs {
			srvs[i] = amltest.NewServer(amltest.Config{Name: fmt.Sprintf("s%d", i), Fault: storm})
			t.Cleanup(srvs[i].Close)
		}
		clk := newStepClock(2 * time.Second)
		c := newClient(t, endpoints(srvs), append([]amlpool.Option{amlpool.WithClock(clk)}, opts...)...)
		var stops atomic.Int64
		var wg sync.WaitGroup
		var next atomic.Int64
		for range 20 {
			wg.Go(func() {
				for next.Add(1) <= int64(calls) {
					_, err := c.Do(context.Background(), scoreBody)
					if !assert.Error(t, err) {
						return
					}
					var apiErr *amlpool.APIError
					assert.ErrorAs(t, err, &apiErr)
					if errors.Is(err, amlpool.ErrRetryBudgetExhausted) {
						stops.Add(1)
					}
				}
			})
		}
		wg.Wait()
		for _, s := range srvs {
			requests += s.Stats().Requests
		}
		return requests, int(stops.Load())
	}

	t.Run("with the default budget", func(t *testing.T) {
		const calls = 2000
		requests, stops := run(t, calls)
		retries := requests - calls
		t.Logf("%d calls: %d requests, %d retries, %d calls stopped by the budget", calls, requests, retries, stops)
		floor := amlpool.DefaultRetryBudgetMinPerSecond * int64(amlpool.RetryBudgetWindow/time.Second)
		assert.LessOrEqual(t, retries, int64(amlpool.DefaultRetryBudgetRatio*calls)+floor)
		assert.GreaterOrEqual(t, retries, int64(amlpool.DefaultRetryBudgetRatio*calls), "the budget is spent, not hoarded")
		assert.Greater(t, stops, calls/2)
	})
	t.Run("without a budget", func(t *testing.T) {
		const calls = 200
		requests, stops := run(t, calls, amlpool.WithoutRetryBudget())
		assert.EqualValues(t, amlpool.DefaultMaxAttempts*calls, requests, "every call makes all its attempts")
		assert.Zero(t, stops)
	})
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
