package amlpool_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math"
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
)

const body = `{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}},"GlobalParameters":{}}`

// fakes starts n fake endpoints with the given caps and latency.
func fakes(t *testing.T, latency time.Duration, caps ...int) ([]*amltest.Server, []amlpool.Endpoint) {
	t.Helper()
	servers := make([]*amltest.Server, len(caps))
	eps := make([]amlpool.Endpoint, len(caps))
	for i, mcc := range caps {
		servers[i] = amltest.NewServer(amltest.Config{Name: fmt.Sprintf("ep%d", i), MaxConcurrentCalls: mcc, Latency: latency})
		t.Cleanup(servers[i].Close)
		eps[i] = servers[i].Endpoint()
	}
	return servers, eps
}

func newClient(t *testing.T, eps []amlpool.Endpoint, opts ...amlpool.Option) *amlpool.Client {
	t.Helper()
	c, err := amlpool.New(eps, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// hammer runs callers goroutines, each making calls calls, and returns the
// errors they met.
func hammer(t *testing.T, c *amlpool.Client, callers, calls int) []error {
	t.Helper()
	return hammerWith(t, c, []byte(body), callers, calls)
}

// hammerWith is hammer with another request body.
func hammerWith(t *testing.T, c *amlpool.Client, body []byte, callers, calls int) []error {
	t.Helper()
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range calls {
				if _, err := c.Do(context.Background(), body); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return errs
}

// Invariant 1, seen from the servers: 2,000 goroutines on 5 endpoints never
// put more than an endpoint's cap in flight, and nothing is throttled.
func TestServersNeverSeeMoreThanTheirCap(t *testing.T) {
	servers, eps := fakes(t, 2*time.Millisecond, 20, 20, 20, 20, 20)
	c := newClient(t, eps)
	errs := hammer(t, c, 2000, 2)
	require.Empty(t, errs)
	var total int64
	for i, s := range servers {
		st := s.Stats()
		assert.LessOrEqual(t, st.PeakInFlight, int64(20), eps[i].Name)
		assert.Zero(t, st.Throttled, eps[i].Name)
		total += st.Scored
	}
	assert.Equal(t, int64(2000*2), total)
	for _, e := range c.Stats().Endpoints {
		assert.Zero(t, e.InFlight, e.Name)
	}
	assert.Zero(t, c.Stats().Waiting)
}

// Under saturation each endpoint's share follows its cap.
func TestSharesFollowCapsUnderSaturation(t *testing.T) {
	servers, eps := fakes(t, 3*time.Millisecond, 4, 4, 40)
	c := newClient(t, eps)
	require.Empty(t, hammer(t, c, 150, 15))
	var total float64
	scored := make([]float64, len(servers))
	for i, s := range servers {
		scored[i] = float64(s.Stats().Scored)
		total += scored[i]
	}
	for i, want := range []float64{4.0 / 48, 4.0 / 48, 40.0 / 48} {
		assert.InDelta(t, want, scored[i]/total, 0.04, "share of %s: %v", eps[i].Name, scored)
	}
}

func TestEachEndpointSeesOnlyItsOwnKey(t *testing.T) {
	servers, eps := fakes(t, 0, 2, 2, 2)
	var logged bytes.Buffer
	c := newClient(t, eps, amlpool.WithLogger(slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	require.Empty(t, hammer(t, c, 12, 10))
	for i, s := range servers {
		assert.Equal(t, []string{eps[i].APIKey}, s.Stats().KeysSeen, eps[i].Name)
	}
	for _, e := range eps {
		assert.NotContains(t, logged.String(), e.APIKey)
		assert.NotContains(t, fmt.Sprintf("%+v", c.Stats()), e.APIKey)
	}
}

func TestWrongKeyIsAnAPIErrorWithoutAnyKey(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{})
	defer srv.Close()
	ep := srv.Endpoint()
	ep.APIKey, ep.SecondaryKey = "wrong-"+ep.APIKey, ""
	c := newClient(t, []amlpool.Endpoint{ep})
	_, err := c.Do(context.Background(), []byte(body))
	var apiErr *amlpool.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusUnauthorized, apiErr.StatusCode)
	assert.Equal(t, "Unauthorized", apiErr.Code)
	assert.Equal(t, "ScoreRequestUnauthorized", apiErr.Detail())
	assert.Equal(t, ep.Name, apiErr.Endpoint)
	assert.NotContains(t, err.Error(), ep.APIKey)
	assert.NotContains(t, err.Error(), srv.Endpoint().APIKey)
}

func TestThrottleFailsOverToAnotherEndpoint(t *testing.T) {
	servers, eps := fakes(t, 0, 5, 5)
	throttle := amltest.Fault{Status: 503, Code: "ServiceUnavailable", Detail: "RequestThrottled"}
	servers[0].Script(throttle)
	servers[1].Script(throttle)
	c := newClient(t, eps, amlpool.WithMaxAttempts(2))

	// Whichever endpoint the call tries first throttles; the second try goes
	// at once to the other, which throttles too: with two attempts allowed
	// the call gives up with ErrThrottled, having tried each endpoint once.
	_, err := c.Do(context.Background(), []byte(body))
	require.ErrorIs(t, err, amlpool.ErrThrottled)
	var ce *amlpool.CallError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 2, ce.Attempts)
	assert.ElementsMatch(t, []string{eps[0].Name, eps[1].Name}, ce.Endpoints)

	// Now only endpoint 0 throttles, every time: every call still succeeds,
	// on endpoint 1.
	throttles := make([]amltest.Fault, 50)
	for i := range throttles {
		throttles[i] = throttle
	}
	servers[0].Script(throttles...)
	for range 20 {
		_, err := c.Do(context.Background(), []byte(body))
		require.NoError(t, err)
	}
	assert.Zero(t, servers[0].Stats().Scored)
	assert.Equal(t, int64(20), servers[1].Stats().Scored)
	st := c.Stats().Endpoints
	assert.Equal(t, servers[0].Stats().Requests, st[0].Throttles)
}

func TestAPIErrorCarriesTheServiceError(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{})
	defer srv.Close()
	srv.Script(amltest.Fault{Status: 400, Code: "LibraryExecutionError", Detail: "FailedToEvaluateRScript"})
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint()})
	_, err := c.Do(context.Background(), []byte(body))
	var apiErr *amlpool.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 400, apiErr.StatusCode)
	assert.Equal(t, "LibraryExecutionError", apiErr.Code)
	assert.Equal(t, "FailedToEvaluateRScript", apiErr.Detail())
	assert.NotErrorIs(t, err, amlpool.ErrThrottled)
	assert.EqualValues(t, 1, srv.Stats().Requests, "a 400 is never retried")
}

func TestReplyOverTheCapIsAnError(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{})
	defer srv.Close()
	srv.Script(amltest.Fault{Body: bytes.Repeat([]byte("x"), 2048)})
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint()}, amlpool.WithMaxResponseBytes(1024))
	_, err := c.Do(context.Background(), []byte(body))
	assert.ErrorIs(t, err, amlpool.ErrResponseTooLarge)
	assert.Zero(t, c.Stats().Endpoints[0].InFlight)
}

// The largest cap reads replies whole, as any other does.
func TestReplyUnderTheLargestCap(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{})
	defer srv.Close()
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint()}, amlpool.WithMaxResponseBytes(math.MaxInt64))
	data, err := c.Do(context.Background(), []byte(body))
	require.NoError(t, err)
	assert.Contains(t, string(data), `"Results"`)
	resp, err := c.Score(context.Background(), &amlpool.Request{Inputs: map[string]*amlpool.Table{
		"input1": {ColumnNames: []string{"x"}, Values: [][]any{{"1"}}}}})
	require.NoError(t, err)
	assert.NotNil(t, resp)
}

// A redirect is never followed: the key would go to another URL.
func TestRedirectIsNotFollowed(t *testing.T) {
	other := amltest.NewServer(amltest.Config{})
	defer other.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL(), http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()
	c := newClient(t, []amlpool.Endpoint{{Name: "r", URL: redirector.URL + "/x", APIKey: "redirected-key"}})
	_, err := c.Do(context.Background(), []byte(body))
	var apiErr *amlpool.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusTemporaryRedirect, apiErr.StatusCode)
	assert.Zero(t, other.Stats().Requests)
}

func TestScoreRoundTrip(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{})
	defer srv.Close()
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint()})
	resp, err := c.Score(context.Background(), &amlpool.Request{Inputs: map[string]*amlpool.Table{
		"input1": {ColumnNames: []string{"age", "city"}, Values: [][]any{{"39", "Oslo"}, {"41", "Lima"}}},
	}})
	require.NoError(t, err)
	out := resp.Results["output1"]
	require.NotNil(t, out)
	assert.Equal(t, 2, out.Value.NumRows())
	assert.GreaterOrEqual(t, out.Value.Column("age"), 0)
	assert.GreaterOrEqual(t, out.Value.Column("Scored Probabilities"), 0)
}

func TestScoreNamesTheEndpointOfABadReply(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{})
	defer srv.Close()
	srv.Script(amltest.Fault{Body: []byte(`{"Results":[]}`)}) // JSON, but not a scoring reply
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint()})
	_, err := c.Score(context.Background(), &amlpool.Request{Inputs: map[string]*amlpool.Table{"input1": {ColumnNames: []string{"a"}, Values: [][]any{{"1"}}}}})
	require.ErrorIs(t, err, amlpool.ErrMalformedResponse)
	assert.Contains(t, err.Error(), srv.Endpoint().Name)
	assert.EqualValues(t, 1, srv.Stats().Requests, "the model's answer is not retried")
}

// A call cancelled while its request is in flight returns ctx's error and
// gives its slot back.
func TestCancelWhileSendingReleasesTheSlot(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{MaxConcurrentCalls: 1})
	defer srv.Close()
	srv.Script(amltest.Fault{Hang: true})
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { _, err := c.Do(ctx, []byte(body)); done <- err }()
	_, err := srv.WaitFor(context.Background(), func(s amltest.Stats) bool { return s.InFlight == 1 })
	require.NoError(t, err)
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
	assert.Zero(t, c.Stats().Endpoints[0].InFlight)
	_, err = srv.WaitFor(context.Background(), func(s amltest.Stats) bool { return s.InFlight == 0 })
	require.NoError(t, err)
	_, err = c.Do(context.Background(), []byte(body))
	assert.NoError(t, err)
}

// Many calls cancelled while waiting or sending leave every slot usable:
// afterwards the pool still reaches full concurrency.
func TestManyCancelledCallsLeakNoSlot(t *testing.T) {
	// Once hang is set, every call the servers take hangs until its client
	// goes. (A script of hangs would not do: requests of cancelled calls can
	// still reach a server after their calls returned, and use it up.)
	var hang atomic.Bool
	fault := func(int64) amltest.Fault { return amltest.Fault{Hang: hang.Load()} }
	servers := make([]*amltest.Server, 2)
	eps := make([]amlpool.Endpoint, 2)
	for i := range servers {
		// The servers allow more than the client's cap of 3, so that a late
		// request of a cancelled call cannot get a real one throttled.
		servers[i] = amltest.NewServer(amltest.Config{MaxConcurrentCalls: 100, Latency: time.Millisecond, Fault: fault})
		t.Cleanup(servers[i].Close)
		eps[i] = servers[i].Endpoint()
		eps[i].MaxConcurrentCalls = 3
	}
	c := newClient(t, eps)
	var wg sync.WaitGroup
	for i := range 300 {
		ctx, cancel := context.WithCancel(context.Background())
		if i%3 == 0 {
			cancel() // before it starts
		}
		wg.Add(2)
		go func() { defer wg.Done(); _, _ = c.Do(ctx, []byte(body)) }()
		go func() { defer wg.Done(); cancel() }() // while it waits or sends
	}
	wg.Wait()
	st := c.Stats()
	assert.Zero(t, st.Waiting)
	assert.Zero(t, st.Endpoints[0].InFlight)
	assert.Zero(t, st.Endpoints[1].InFlight)

	// Hold every slot at once with hung calls: all 6 must get in.
	hang.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	var hung sync.WaitGroup
	for range 6 {
		hung.Add(1)
		go func() { defer hung.Done(); _, _ = c.Do(ctx, []byte(body)) }()
	}
	bound, stop := context.WithTimeout(context.Background(), time.Minute) // a bound, not a timing
	defer stop()
	for i, s := range servers {
		// Every request reaches a server after its call took the slot, so
		// a server's changes are the moments to look at the client's count
		// for that server's endpoint (and only that one: the other
		// endpoint's last slot may be taken after this server's last
		// change).
		_, err := s.WaitFor(bound, func(st amltest.Stats) bool {
			return st.InFlight >= 3 && c.Stats().Endpoints[i].InFlight == 3
		})
		require.NoError(t, err, "client stats %+v", c.Stats())
	}
	cancel()
	hung.Wait()
}

func TestMaxWaitZeroFailsFast(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{MaxConcurrentCalls: 1})
	defer srv.Close()
	srv.Script(amltest.Fault{Hang: true})
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint()}, amlpool.WithMaxWait(0))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _, _ = c.Do(ctx, []byte(body)) }()
	_, err := srv.WaitFor(context.Background(), func(s amltest.Stats) bool { return s.InFlight == 1 })
	require.NoError(t, err)
	_, err = c.Do(context.Background(), []byte(body))
	assert.ErrorIs(t, err, amlpool.ErrNoCapacity)
	cancel()
	<-done
}

func TestCloseReleasesWaitingCalls(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{MaxConcurrentCalls: 1})
	defer srv.Close()
	srv.Script(amltest.Fault{Hang: true})
	c, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _, _ = c.Do(ctx, []byte(body)) }()
	_, err = srv.WaitFor(context.Background(), func(s amltest.Stats) bool { return s.InFlight == 1 })
	require.NoError(t, err)
	queued := make(chan struct{}, 1)
	amlpool.SetQueueHook(c, func() { queued <- struct{}{} })
	waiting := make(chan error)
	go func() { _, err := c.Do(context.Background(), []byte(body)); waiting <- err }()
	<-queued
	assert.Equal(t, 1, c.Stats().Waiting)
	require.NoError(t, c.Close())
	assert.ErrorIs(t, <-waiting, amlpool.ErrClosed)
	cancel()
}

// latencySeer is a Balancer that records the latency estimates it sees.
type latencySeer struct{ seen *atomic.Int64 }

func (b latencySeer) Pick(s amlpool.Candidates) int {
	for i := range s.Len() {
		b.seen.Store(max(b.seen.Load(), int64(s.Latency(i))))
		if s.Free(i) > 0 {
			return i
		}
	}
	return -1
}

// A Balancer of the user's sees each endpoint's latency estimate, kept from
// the replies: Candidates.Latency is part of its contract.
func TestCustomBalancerSeesLatencies(t *testing.T) {
	_, eps := fakes(t, 2*time.Millisecond, 2)
	var seen atomic.Int64
	c := newClient(t, eps, amlpool.WithBalancer(latencySeer{&seen}))
	for range 3 {
		_, err := c.Do(context.Background(), []byte(body))
		require.NoError(t, err)
	}
	assert.GreaterOrEqual(t, time.Duration(seen.Load()), 2*time.Millisecond)
}
