package amlpool_test

import (
	"context"
	"errors"
	"fmt"
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

// gate is an endpoint that holds every request until the test lets one
// go, and counts what it sees: requests in flight now and at most, and
// the keys they carried. A request with a key it does not accept gets 401
// once let go.
type gate struct {
	srv     *httptest.Server
	arrived chan struct{} // a request arrived and is held
	free    chan struct{} // lets one held request go
	done    chan struct{} // the test is over: every request goes
	mu      sync.Mutex
	keys    map[string]bool // the keys accepted
	in      int
	peak    int
	seen    []string // the key of each request, in order
	status  int      // when not 0, the status of every reply
	pass    string   // a key whose requests are answered at once, not held
}

func newGate(t *testing.T, keys ...string) *gate {
	g := &gate{arrived: make(chan struct{}, 100), free: make(chan struct{}), done: make(chan struct{}), keys: map[string]bool{}}
	for _, k := range keys {
		g.keys[k] = true
	}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Authorization")[len("Bearer "):]
		g.mu.Lock()
		g.seen = append(g.seen, key)
		g.in++
		g.peak = max(g.peak, g.in)
		held := key != g.pass
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			g.in--
			g.mu.Unlock()
		}()
		if held {
			g.arrived <- struct{}{}
			select {
			case <-g.free:
			case <-g.done:
			case <-r.Context().Done():
				return
			}
		}
		g.mu.Lock()
		ok, status := g.keys[key], g.status
		g.mu.Unlock()
		if status != 0 {
			w.WriteHeader(status)
			_, _ = w.Write([]byte(`{"error":{"code":"NotFound","message":"no such endpoint"}}`))
			return
		}
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":{"code":"Unauthorized","message":"Authorization failed."}}`))
			return
		}
		_, _ = w.Write([]byte(`{"Results":{}}`))
	}))
	t.Cleanup(g.srv.Close)
	t.Cleanup(func() { close(g.done) }) // first: a test that failed leaves requests held
	return g
}

// endpoint describes the gate to a Client.
func (g *gate) endpoint(name, key string, mcc int) amlpool.Endpoint {
	return amlpool.Endpoint{Name: name, URL: g.srv.URL + "/workspaces/w/services/" + name + "/execute", APIKey: key, MaxConcurrentCalls: mcc}
}

// wait waits for n requests to arrive.
func (g *gate) wait(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-g.arrived:
		case <-time.After(time.Minute): // a bound, not a timing
			require.FailNow(t, "a request never arrived")
		}
	}
}

// let lets n held requests go.
func (g *gate) let(n int) {
	for range n {
		g.free <- struct{}{}
	}
}

// counts returns the requests in flight now and at most, and resets the
// most to now.
func (g *gate) counts() (in, peak int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	in, peak = g.in, g.peak
	g.peak = g.in
	return in, peak
}

// statsOf returns the Stats of the endpoints named name.
func statsOf(c *amlpool.Client, name string) []amlpool.EndpointStats {
	var out []amlpool.EndpointStats
	for _, e := range c.Stats().Endpoints {
		if e.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// calls starts n calls and returns the channel of their errors.
func calls(c *amlpool.Client, n int) chan error {
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := c.Do(context.Background(), []byte(body))
			errs <- err
		}()
	}
	return errs
}

// A call in flight on an endpoint SetEndpoints removes finishes and
// returns its reply; its slot is given back, and Stats lists the endpoint,
// Removed, until then, and not after. A call waiting in line when its only
// endpoint is removed is served by the new set at once.
func TestSetEndpointsRemovedEndpointsCallsFinish(t *testing.T) {
	gone, kept := newGate(t, "k"), newGate(t, "k")
	c := newClient(t, []amlpool.Endpoint{gone.endpoint("gone", "k", 1)})
	queued := make(chan struct{}, 1)
	amlpool.SetQueueHook(c, func() { queued <- struct{}{} })
	first := calls(c, 1)
	gone.wait(t, 1)
	second := calls(c, 1)
	<-queued

	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{kept.endpoint("kept", "k", 1)}))
	kept.wait(t, 1) // the waiting call, at once: gone still holds the first
	st := statsOf(c, "gone")
	require.Len(t, st, 1)
	assert.True(t, st[0].Removed)
	assert.Equal(t, 1, st[0].InFlight)
	kept.let(1)
	require.NoError(t, <-second)

	gone.let(1)
	require.NoError(t, <-first, "the call in flight on the removed endpoint returns its reply")
	assert.Empty(t, statsOf(c, "gone"), "drained: no longer listed")
	require.Len(t, c.Stats().Endpoints, 1)
	assert.Equal(t, amlpool.EndpointStats{Name: "kept", Since: c.Stats().Endpoints[0].Since, MaxConcurrentCalls: 1, Limit: 1, Calls: 1}, c.Stats().Endpoints[0])
	in, peak := gone.counts()
	assert.Zero(t, in)
	assert.Equal(t, 1, peak)
}

// A call waiting in line when its only endpoint is renamed (same URL,
// another Name) while busy waits for the new name, which takes the URL's
// slots once the old name's call has ended; one with a max wait gets
// ErrNoCapacity when it passes, as documented, not a hang.
func TestSetEndpointsWaitingCallWhenItsEndpointIsRenamed(t *testing.T) {
	g := newGate(t, "k")
	clk := clock.NewFake()
	old := g.endpoint("s", "k", 1)
	c := newClient(t, []amlpool.Endpoint{old}, amlpool.WithClock(clk), amlpool.WithMaxWait(time.Second))
	queued := make(chan struct{}, 2)
	amlpool.SetQueueHook(c, func() { queued <- struct{}{} })
	first := calls(c, 1)
	g.wait(t, 1)

	renamed := old
	renamed.Name = "renamed"
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{renamed}))
	assert.Zero(t, statsOf(c, "renamed")[0].Limit, "held back while the old name has a call in flight")
	late := calls(c, 1)
	<-queued
	require.True(t, clk.WaitTimers(1, t.Context().Done()), "the max wait's timer")
	clk.Advance(time.Second)
	assert.ErrorIs(t, <-late, amlpool.ErrNoCapacity)

	served := calls(c, 1)
	<-queued
	g.let(1)
	require.NoError(t, <-first)
	g.wait(t, 1) // the waiting call, on the renamed endpoint
	g.let(1)
	require.NoError(t, <-served)
	st := c.Stats().Endpoints
	require.Len(t, st, 1)
	assert.Equal(t, "renamed", st[0].Name)
	assert.EqualValues(t, 1, st[0].Calls)
	_, peak := g.counts()
	assert.Equal(t, 1, peak, "the URL's cap")
}

// An endpoint removed and added back while calls hold its slots is the
// same endpoint, with the new cap: a lower one admits no new attempt
// until fewer calls than it are in flight, and never more after; a
// higher one serves waiting calls at once. Stats lists it once, its
// counters going on.
func TestSetEndpointsReAddedWithAnotherCap(t *testing.T) {
	g := newGate(t, "k")
	ep := g.endpoint("e", "k", 3)
	other := newGate(t, "k").endpoint("other", "k", 1)
	c := newClient(t, []amlpool.Endpoint{ep, other})
	since := statsOf(c, "e")[0].Since
	// Three calls on e, one on other: every slot held.
	queued := make(chan struct{}, 10)
	amlpool.SetQueueHook(c, func() { queued <- struct{}{} })
	held := calls(c, 4)
	g.wait(t, 3)

	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{other}))
	require.True(t, statsOf(c, "e")[0].Removed)
	ep.MaxConcurrentCalls = 1
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{ep, other}))
	st := statsOf(c, "e")
	require.Len(t, st, 1, "added back while it drains: one endpoint")
	assert.Equal(t, amlpool.EndpointStats{Name: "e", Since: since, MaxConcurrentCalls: 1, Limit: 1, InFlight: 3}, st[0])

	waiting := calls(c, 3)
	for range 3 {
		<-queued
	}
	g.let(2) // two of the old three end: one left, at the new cap
	for range 2 {
		require.NoError(t, <-held)
	}
	assert.Equal(t, 3, c.Stats().Waiting, "one call in flight of a cap of 1")
	g.counts() // the most in flight, from now on
	g.let(1)   // the last old one: one waiting call takes its place
	require.NoError(t, <-held)
	g.wait(t, 1)
	in, peak := g.counts()
	assert.Equal(t, 1, in)
	assert.Equal(t, 1, peak)

	// Up again while one call holds a slot: two waiting calls go at once.
	ep.MaxConcurrentCalls = 3
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{ep, other}))
	g.wait(t, 2)
	g.let(3)
	for range 3 {
		require.NoError(t, <-waiting)
	}
	_, peak = g.counts()
	assert.Equal(t, 3, peak)
	st = statsOf(c, "e")
	require.Len(t, st, 1)
	assert.Equal(t, amlpool.EndpointStats{Name: "e", Since: since, MaxConcurrentCalls: 3, Limit: 3, Calls: 6}, st[0])
	assert.Zero(t, c.Stats().Waiting)
}

// Keys rotated by removing an endpoint and adding it back with a new key,
// while calls are in flight with the old one: each such call meets a 401
// for a key since replaced, goes again with the new key, and succeeds;
// the endpoint is not held at fault.
func TestSetEndpointsKeyRotatedWhileRemoved(t *testing.T) {
	g := newGate(t, "old")
	ep := g.endpoint("e", "old", 2)
	c := newClient(t, []amlpool.Endpoint{ep}, amlpool.WithMaxAttempts(1))
	held := calls(c, 2)
	g.wait(t, 2)

	other := newGate(t, "k").endpoint("other", "k", 1)
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{other}))
	ep.APIKey = "new"
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{ep}))
	g.mu.Lock()
	g.keys = map[string]bool{"new": true} // the service drops the old key
	g.pass = "new"                        // and answers it at once
	g.mu.Unlock()
	g.let(2)
	for range 2 {
		require.NoError(t, <-held, "a 401 for a replaced key is not the call's last attempt")
	}
	assert.Equal(t, []string{"old", "old", "new", "new"}, g.seen)
	st := statsOf(c, "e")
	require.Len(t, st, 1)
	assert.Zero(t, st[0].Faults)
	assert.False(t, st[0].Ejected)
}

// An endpoint ejected for a fault, then removed while a call still holds
// its slot, and added back while that call runs, is the same endpoint,
// still out of rotation; removed once idle and added back, it is a new
// endpoint, in rotation.
func TestSetEndpointsEjectedEndpointRemovedAndAddedBack(t *testing.T) {
	g := newGate(t, "k")
	sick := g.endpoint("sick", "k", 2)
	c := newClient(t, []amlpool.Endpoint{sick}, amlpool.WithoutRetries())
	held := calls(c, 2)
	g.wait(t, 2)
	g.mu.Lock()
	g.status = http.StatusNotFound
	g.mu.Unlock()
	g.let(1) // one of the two meets the 404
	var apiErr *amlpool.APIError
	require.ErrorAs(t, <-held, &apiErr)
	require.Equal(t, http.StatusNotFound, apiErr.StatusCode)
	st := statsOf(c, "sick")[0]
	require.True(t, st.Ejected)
	since := st.Since

	well := newGate(t, "k")
	wellEp := well.endpoint("well", "k", 1)
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{wellEp}))
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{sick, wellEp}))
	st = statsOf(c, "sick")[0]
	assert.Equal(t, amlpool.EndpointStats{Name: "sick", Since: since, MaxConcurrentCalls: 2, Limit: 2, InFlight: 1,
		Calls: 1, Errors: 1, Faults: 1, Ejected: true, Ejections: 1}, st, "added back while it drains: the same endpoint, out")
	next := calls(c, 1)
	well.wait(t, 1) // not to sick, out of rotation
	well.let(1)
	require.NoError(t, <-next)
	g.mu.Lock()
	g.status = 0
	g.mu.Unlock()
	g.let(1)
	require.NoError(t, <-held)

	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{wellEp}))
	assert.Empty(t, statsOf(c, "sick"), "idle: gone at once")
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{sick, wellEp}))
	st = statsOf(c, "sick")[0]
	assert.Greater(t, st.Since, since)
	assert.Equal(t, amlpool.EndpointStats{Name: "sick", Since: st.Since, MaxConcurrentCalls: 2, Limit: 2}, st, "a new endpoint, in rotation")
	next = calls(c, 3) // one slot on well: sick takes the others
	g.wait(t, 2)
	well.wait(t, 1)
	g.let(2)
	well.let(1)
	for range 3 {
		require.NoError(t, <-next)
	}
}

// The last endpoint ejected still takes calls (half or more of the
// endpoints out: ejection is ignored), so calls are not stranded; one out
// for a fault answers them with its own error, at once.
func TestSetEndpointsLastEndpointEjected(t *testing.T) {
	var mu sync.Mutex
	status := http.StatusInternalServerError
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		s := status
		mu.Unlock()
		if s != http.StatusOK {
			w.WriteHeader(s)
			_, _ = w.Write([]byte(`{"error":{"code":"X","message":"x"}}`))
			return
		}
		_, _ = w.Write([]byte(`{"Results":{}}`))
	}))
	t.Cleanup(srv.Close)
	a := amlpool.Endpoint{Name: "a", URL: srv.URL + "/workspaces/w/services/a/execute", APIKey: "k", MaxConcurrentCalls: 2}
	b := amlpool.Endpoint{Name: "b", URL: srv.URL + "/workspaces/w/services/b/execute", APIKey: "k", MaxConcurrentCalls: 2}
	c := newClient(t, []amlpool.Endpoint{a, b}, amlpool.WithoutRetries(), amlpool.WithoutRetryBudget())
	for statsOf(c, "a")[0].Ejections == 0 || statsOf(c, "b")[0].Ejections == 0 {
		_, err := c.Do(context.Background(), []byte(body))
		require.Error(t, err)
	}
	// Both ejected; b is removed: a, ejected, is the last.
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{a}))
	require.True(t, statsOf(c, "a")[0].Ejected)
	mu.Lock()
	status = http.StatusOK
	mu.Unlock()
	_, err := c.Do(context.Background(), []byte(body))
	require.NoError(t, err, "the last endpoint, ejected, still takes calls")

	mu.Lock()
	status = http.StatusNotFound
	mu.Unlock()
	_, err = c.Do(context.Background(), []byte(body))
	var apiErr *amlpool.APIError
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, http.StatusNotFound, apiErr.StatusCode)
	require.True(t, statsOf(c, "a")[0].Ejected)
	_, err = c.Do(context.Background(), []byte(body))
	require.True(t, errors.As(err, &apiErr), "out for a fault, the last endpoint answers with its own error: %v", err)
	assert.Equal(t, http.StatusNotFound, apiErr.StatusCode)
	assert.EqualValues(t, 2, statsOf(c, "a")[0].Faults)
}

// ScoreRows' default Parallelism, the Client's capacity, follows
// SetEndpoints: the slots of endpoints added during a batch are all used
// (every slot stays busy), even while the first endpoints' calls stall.
func TestScoreRowsParallelismFollowsSetEndpoints(t *testing.T) {
	stall := make(chan struct{})
	free := sync.OnceFunc(func() { close(stall) })
	stalled := func(in *amlpool.Request) (*amlpool.Response, error) {
		<-stall
		return amltest.Echo(in)
	}
	first := amltest.NewServer(amltest.Config{Name: "first", MaxConcurrentCalls: 1, Score: stalled})
	added := amltest.NewServer(amltest.Config{Name: "added", MaxConcurrentCalls: 4, Score: stalled})
	t.Cleanup(first.Close)
	t.Cleanup(added.Close)
	t.Cleanup(free)
	c := newClient(t, []amlpool.Endpoint{first.Endpoint()})
	const n = 50
	in := &amlpool.Table{ColumnNames: []string{"x"}}
	for i := range n {
		in.Values = append(in.Values, []any{fmt.Sprint(i)})
	}
	type result struct {
		res *amlpool.TableResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := c.ScoreTable(context.Background(), in, &amlpool.BatchOptions{ChunkRows: 1})
		done <- result{res, err}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a bound, not a timing
	defer cancel()
	_, err := first.WaitFor(ctx, func(st amltest.Stats) bool { return st.InFlight == 1 })
	require.NoError(t, err)

	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{first.Endpoint(), added.Endpoint()}))
	_, err = added.WaitFor(ctx, func(st amltest.Stats) bool { return st.InFlight == 4 })
	require.NoError(t, err, "the added endpoint's slots were not all used: %+v", added.Stats())
	free()
	r := <-done
	require.NoError(t, r.err)
	assert.Equal(t, n, r.res.Stats.Scored)
	assert.Zero(t, first.Stats().Throttled+added.Stats().Throttled)
}

// When SetEndpoints lowers the Capacity during a batch with the default
// Parallelism, the batch keeps to the new one: none of its calls waits in
// line for a slot (none oversubscribed).
func TestScoreRowsParallelismFollowsALowerCapacity(t *testing.T) {
	stall := make(chan struct{})
	free := sync.OnceFunc(func() { close(stall) })
	srv := amltest.NewServer(amltest.Config{Name: "s", MaxConcurrentCalls: 4, Score: func(in *amlpool.Request) (*amlpool.Response, error) {
		<-stall
		return amltest.Echo(in)
	}})
	t.Cleanup(srv.Close)
	t.Cleanup(free)
	ep := srv.Endpoint()
	ep.MaxConcurrentCalls = 4
	c := newClient(t, []amlpool.Endpoint{ep})
	var queued atomic.Int64
	amlpool.SetQueueHook(c, func() { queued.Add(1) })
	const n = 40
	in := &amlpool.Table{ColumnNames: []string{"x"}}
	for i := range n {
		in.Values = append(in.Values, []any{fmt.Sprint(i)})
	}
	done := make(chan error, 1)
	go func() {
		res, err := c.ScoreTable(context.Background(), in, &amlpool.BatchOptions{ChunkRows: 1})
		if err == nil && res.Stats.Scored != n {
			err = fmt.Errorf("%d rows scored of %d", res.Stats.Scored, n)
		}
		done <- err
	}()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a bound, not a timing
	defer cancel()
	_, err := srv.WaitFor(ctx, func(st amltest.Stats) bool { return st.InFlight == 4 })
	require.NoError(t, err)

	ep.MaxConcurrentCalls = 1
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{ep}))
	free()
	require.NoError(t, <-done)
	assert.Zero(t, queued.Load(), "calls of the batch waited in line: more in flight than the Capacity")
	assert.EqualValues(t, 4, srv.Stats().PeakInFlight)
}

// A call that waits before its next attempt because every endpoint is
// cooling down (a Retry-After hint) takes an endpoint SetEndpoints adds
// meanwhile once its backoff is over, without waiting out the hint; a
// SetEndpoints that adds none it may use leaves it waiting.
func TestSetEndpointsEndsAWaitForACoolDown(t *testing.T) {
	hinting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":{"code":"ServiceUnavailable","message":"busy"}}`))
	}))
	t.Cleanup(hinting.Close)
	added := amltest.NewServer(amltest.Config{Name: "added"})
	t.Cleanup(added.Close)
	clk := clock.NewFake()
	cooling := amlpool.Endpoint{Name: "cooling", URL: hinting.URL + "/workspaces/w/services/cooling/execute", APIKey: "k"}
	// With no wait for a slot, a call let into the line too soon fails.
	c := newClient(t, []amlpool.Endpoint{cooling}, amlpool.WithClock(clk), amlpool.WithMaxWait(0),
		amlpool.WithBackoff(amlpool.Backoff{Initial: time.Millisecond, Max: time.Millisecond}))
	done := calls(c, 1)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a bound, not a timing
	defer cancel()
	// The cool-down's end, in Run, and the call's wait.
	require.True(t, clk.WaitTimers(2, ctx.Done()))

	cooling.APIKey = "k2" // a change that makes no endpoint usable
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{cooling}))
	clk.Advance(10 * time.Millisecond) // the backoff, not the hint
	require.True(t, clk.WaitTimers(2, ctx.Done()), "the call no longer waits for the cool-down")
	select {
	case err := <-done:
		require.FailNow(t, "the call ended before its endpoint was usable", "%v", err)
	default:
	}

	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{cooling, added.Endpoint()}))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-ctx.Done():
		require.FailNow(t, "the call waited out the cool-down of its only endpoint, though another was added")
	}
	assert.EqualValues(t, 1, added.Stats().Scored)
}
