package amlpool_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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

// traffic is callers goroutines calling a Client until stopped.
type traffic struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	calls atomic.Int64
	mu    sync.Mutex // guards errs
	errs  []error
}

func startTraffic(c *amlpool.Client, callers int) *traffic {
	tr := &traffic{stop: make(chan struct{})}
	for range callers {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			for {
				select {
				case <-tr.stop:
					return
				default:
				}
				_, err := c.Do(context.Background(), []byte(body))
				tr.calls.Add(1)
				if err != nil {
					tr.mu.Lock()
					tr.errs = append(tr.errs, err)
					tr.mu.Unlock()
				}
			}
		}()
	}
	return tr
}

// Stop ends the traffic and returns the calls made and the errors met.
func (tr *traffic) Stop() (int64, []error) {
	close(tr.stop)
	tr.wg.Wait()
	return tr.calls.Load(), tr.errs
}

// waitScored waits until s has scored at least n more calls than it had.
func waitScored(t *testing.T, s *amltest.Server, n int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	from := s.Stats().Scored
	_, err := s.WaitFor(ctx, func(st amltest.Stats) bool { return st.Scored >= from+n })
	require.NoError(t, err, "server %s never scored %d more calls", s.Endpoint().Name, n)
}

// inFlight returns the client's calls in flight to endpoints named name (a
// live one and a removed one may share a name), and whether Stats lists
// one.
func inFlight(c *amlpool.Client, name string) (n int64, listed bool) {
	for _, e := range c.Stats().Endpoints {
		if e.Name == name {
			n, listed = n+int64(e.InFlight), true
		}
	}
	return n, listed
}

// assertClean checks the servers' side of every invariant: no call past a
// cap (no throttle), and nothing left in flight.
func assertClean(t *testing.T, c *amlpool.Client, srvs ...*amltest.Server) {
	t.Helper()
	for _, s := range srvs {
		st := s.Stats()
		assert.Zero(t, st.Throttled, "%s throttled calls: more than its cap was in flight", s.Endpoint().Name)
		assert.Zero(t, st.InFlight, s.Endpoint().Name)
	}
	st := c.Stats()
	assert.Zero(t, st.Waiting)
	for _, e := range st.Endpoints {
		assert.Zero(t, e.InFlight, e.Name)
		assert.False(t, e.Removed, "%s drained but still listed", e.Name)
	}
}

func TestSetEndpointsAddsAnEndpoint(t *testing.T) {
	srvs, eps := fakes(t, 2*time.Millisecond, 4, 4, 4)
	c := newClient(t, eps[:2])
	tr := startTraffic(c, 30)
	waitScored(t, srvs[0], 20)
	require.NoError(t, c.SetEndpoints(eps))
	waitScored(t, srvs[2], 50) // hangs (and times out) if the new endpoint gets nothing
	_, errs := tr.Stop()
	assert.Empty(t, errs)
	assertClean(t, c, srvs...)
	var names []string
	for _, e := range c.Stats().Endpoints {
		names = append(names, e.Name)
	}
	assert.Equal(t, []string{"ep0", "ep1", "ep2"}, names)
}

func TestSetEndpointsRemovesAnEndpoint(t *testing.T) {
	srvs, eps := fakes(t, 2*time.Millisecond, 4, 4, 4)
	c := newClient(t, eps)
	tr := startTraffic(c, 30)
	waitScored(t, srvs[2], 20)
	require.NoError(t, c.SetEndpoints(eps[:2]))
	// In flight first, then the server's count: a request the server sees
	// after its count was read was in flight when the client was asked.
	held, listed := inFlight(c, "ep2")
	seen := srvs[2].Stats().Requests
	waitScored(t, srvs[0], 50)
	_, errs := tr.Stop()
	assert.Empty(t, errs)
	if !listed {
		held = 0
	}
	assert.LessOrEqual(t, srvs[2].Stats().Requests, seen+held, "requests to ep2 after SetEndpoints removed it")
	assertClean(t, c, srvs...)
	for _, e := range c.Stats().Endpoints {
		assert.NotEqual(t, "ep2", e.Name, "a drained endpoint leaves Stats")
	}
}

func TestSetEndpointsLowersAndRaisesACap(t *testing.T) {
	srvs, eps := fakes(t, 2*time.Millisecond, 8)
	c := newClient(t, eps)
	tr := startTraffic(c, 30)
	waitScored(t, srvs[0], 20)

	// Lower: the client first. Calls in flight finish, and no attempt may
	// start until fewer than 2 are in flight; from then on, never more
	// than 2. Each release follows a server's reply, so the server's
	// changes are the moments to look at the client.
	eps[0].MaxConcurrentCalls = 2
	require.NoError(t, c.SetEndpoints(eps))
	assert.Equal(t, 2, c.Stats().Endpoints[0].MaxConcurrentCalls)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := srvs[0].WaitFor(ctx, func(amltest.Stats) bool { n, _ := inFlight(c, "ep0"); return n <= 2 })
	require.NoError(t, err, "the calls of the old cap never drained")
	// Then the server, whose new cap would throttle a call of the old one
	// that was still on its way.
	srvs[0].SetMaxConcurrentCalls(2)
	var most atomic.Int64
	from := srvs[0].Stats().Scored
	_, err = srvs[0].WaitFor(ctx, func(st amltest.Stats) bool {
		n, _ := inFlight(c, "ep0")
		if n > most.Load() {
			most.Store(n)
		}
		return st.Scored >= from+50
	})
	require.NoError(t, err)
	assert.LessOrEqual(t, most.Load(), int64(2), "calls in flight past the lowered cap")
	assert.Zero(t, srvs[0].Stats().Throttled, "an attempt started past the lowered cap")

	// Raise: the server first, then the client, whose waiting calls use
	// the new slots at once.
	srvs[0].SetMaxConcurrentCalls(12)
	eps[0].MaxConcurrentCalls = 12
	require.NoError(t, c.SetEndpoints(eps))
	srvs[0].ResetStats()
	_, err = srvs[0].WaitFor(ctx, func(st amltest.Stats) bool { return st.PeakAdmitted > 2 })
	require.NoError(t, err, "the raised cap was never used")
	_, errs := tr.Stop()
	assert.Empty(t, errs)
	assertClean(t, c, srvs...)
}

func TestSetEndpointsRotatesAKey(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{Name: "ep", MaxConcurrentCalls: 6, Latency: 2 * time.Millisecond, Key: "old-key", SecondaryKey: "spare"})
	t.Cleanup(srv.Close)
	ep := srv.Endpoint()
	ep.SecondaryKey = "" // only the key being rotated
	c := newClient(t, []amlpool.Endpoint{ep})
	tr := startTraffic(c, 20)
	waitScored(t, srv, 20)

	// The service gets a new key beside the old one, the client moves to
	// it, then the old one is regenerated away.
	srv.SetKeys("old-key", "new-key")
	ep.APIKey = "new-key"
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{ep}))
	held, _ := inFlight(c, "ep")
	srv.SetKeys("newer-key", "new-key")
	before := srv.Stats().Unauthorized
	waitScored(t, srv, 50)
	_, errs := tr.Stop()
	assert.Empty(t, errs, "a call failed over the rotation")
	// Only attempts that held their slot before SetEndpoints returned may
	// still carry the old key; each met a 401 and went again with the new.
	assert.LessOrEqual(t, srv.Stats().Unauthorized-before, held, "requests with the old key after SetEndpoints returned")
	assert.Contains(t, srv.Stats().KeysSeen, "new-key")
	assertClean(t, c, srv)
}

// A 401 for a key that SetEndpoints replaced while the attempt was in
// flight does not use up the call's attempts: the call goes again with the
// new key however many rotations it meets, one attempt each. A 401 for the
// key in use still counts.
func TestSetEndpointsRotationsDoNotUseUpAttempts(t *testing.T) {
	const rotations = 3
	var (
		mu       sync.Mutex
		cur      = "key-0"
		rotated  int
		requests int
		c        *amlpool.Client
		ep       amlpool.Endpoint
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		requests++
		if rotated < rotations {
			// The key is rotated while this attempt is in flight: the
			// Client first, then the service, which drops the old key.
			rotated++
			ep.APIKey = fmt.Sprintf("key-%d", rotated)
			assert.NoError(t, c.SetEndpoints([]amlpool.Endpoint{ep}))
			cur = ep.APIKey
		}
		if r.Header.Get("Authorization") != "Bearer "+cur {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":{"code":"Unauthorized","message":"Authorization failed."}}`))
			return
		}
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(srv.Close)
	ep = amlpool.Endpoint{Name: "ep", URL: srv.URL + "/score", APIKey: cur, MaxConcurrentCalls: 1}
	c = newClient(t, []amlpool.Endpoint{ep}, amlpool.WithMaxAttempts(2))

	_, err := c.Do(context.Background(), []byte(body))
	require.NoError(t, err, "a call failed over %d rotations", rotations)
	assert.Equal(t, rotations+1, requests, "one attempt per rotation, then the new key")

	// The key in use refused: a fault of the endpoint's, which counts.
	mu.Lock()
	cur = "another"
	mu.Unlock()
	_, err = c.Do(context.Background(), []byte(body))
	apiErr, ok := errors.AsType[*amlpool.APIError](err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, http.StatusUnauthorized, apiErr.StatusCode)
	assert.Equal(t, rotations+2, requests, "one endpoint, tried once")
}

func TestSetEndpointsRefusesABadSetWhole(t *testing.T) {
	srvs, eps := fakes(t, 0, 2, 2)
	c := newClient(t, eps[:1])
	bad := []amlpool.Endpoint{eps[1], {Name: "broken", URL: "ftp://nowhere", APIKey: "k"}}
	err := c.SetEndpoints(bad)
	var cfgErr *amlpool.ConfigError
	require.ErrorAs(t, err, &cfgErr)
	assert.ErrorIs(t, err, amlpool.ErrInvalidConfig)
	assert.Equal(t, "broken", cfgErr.Endpoint)
	assert.Equal(t, "URL", cfgErr.Field)

	require.Empty(t, hammer(t, c, 4, 5))
	assert.EqualValues(t, 20, srvs[0].Stats().Scored, "the old set went on")
	assert.Zero(t, srvs[1].Stats().Requests, "nothing of the refused set was used")
	require.Len(t, c.Stats().Endpoints, 1)
	assert.Equal(t, "ep0", c.Stats().Endpoints[0].Name)

	// A rotated key pasted with a space around it names the endpoint
	// and its field, never the key.
	rotated := eps[0]
	rotated.APIKey = " " + eps[0].APIKey
	err = c.SetEndpoints([]amlpool.Endpoint{rotated})
	require.ErrorAs(t, err, &cfgErr)
	assert.Equal(t, amlpool.ConfigError{Endpoint: "ep0", Field: "APIKey",
		Problem: "begins or ends with white space, which no key or token has (read with its line end?)"}, *cfgErr)

	assert.ErrorIs(t, c.SetEndpoints(nil), amlpool.ErrInvalidConfig)
	dup := []amlpool.Endpoint{eps[0], eps[0]}
	assert.ErrorIs(t, c.SetEndpoints(dup), amlpool.ErrInvalidConfig)
}

func TestSetEndpointsAfterClose(t *testing.T) {
	_, eps := fakes(t, 0, 2)
	c, err := amlpool.New(eps)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	assert.ErrorIs(t, c.SetEndpoints(eps), amlpool.ErrClosed)
}

// A call waiting in line is served by an endpoint added while it waits,
// without waiting for the busy one.
func TestSetEndpointsServesWaitersAtOnce(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		w.Write([]byte(`{}`))
	}))
	defer busy.Close()
	defer close(release)
	added := amltest.NewServer(amltest.Config{Name: "added"})
	t.Cleanup(added.Close)

	first := amlpool.Endpoint{Name: "busy", URL: busy.URL + "/x", APIKey: "k", MaxConcurrentCalls: 1}
	c := newClient(t, []amlpool.Endpoint{first})
	queued := make(chan struct{}, 1)
	amlpool.SetQueueHook(c, func() { queued <- struct{}{} })
	go c.Do(context.Background(), []byte(body))
	<-arrived
	got := make(chan error, 1)
	go func() { _, err := c.Do(context.Background(), []byte(body)); got <- err }()
	<-queued
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{first, added.Endpoint()}))
	assert.NoError(t, <-got) // hangs if the line is not served by the new endpoint
	assert.EqualValues(t, 1, added.Stats().Scored)
}

// Renaming an endpoint (same URL, another Name) while calls run does not
// give its URL a second set of slots: calls wait for the new name until
// the old name's calls have ended, and the server never sees more than
// its cap.
func TestSetEndpointsRenameKeepsTheCap(t *testing.T) {
	hold := make(chan struct{})
	free := sync.OnceFunc(func() { close(hold) })
	srv := amltest.NewServer(amltest.Config{Name: "s", MaxConcurrentCalls: 2, Score: func(in *amlpool.Request) (*amlpool.Response, error) {
		<-hold
		return amltest.Echo(in)
	}})
	t.Cleanup(srv.Close)
	t.Cleanup(free) // before srv.Close, should the test fail first
	ep := srv.Endpoint()
	ep.Name = "old"
	c := newClient(t, []amlpool.Endpoint{ep})
	queued := make(chan struct{}, 2)
	amlpool.SetQueueHook(c, func() { queued <- struct{}{} })

	errs := make(chan error, 4)
	do := func() { _, err := c.Do(context.Background(), []byte(body)); errs <- err }
	for range 2 {
		go do()
	}
	_, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.InFlight == 2 })
	require.NoError(t, err)

	ep.Name = "new"
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{ep}))
	// A request past the two in flight ends the wait below: the bug.
	over := make(chan struct{})
	go func() {
		defer close(over)
		_, _ = srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.Requests > 2 })
	}()
	for range 2 {
		go do()
	}
	for range 2 {
		select {
		case <-queued:
		case <-over:
			st := srv.Stats()
			t.Fatalf("a call went to the renamed endpoint while the old name held its cap: %d requests, %d throttled, peak in flight %d",
				st.Requests, st.Throttled, st.PeakInFlight)
		}
	}
	assert.Equal(t, 2, c.Stats().Waiting)

	free()
	for range 4 {
		assert.NoError(t, <-errs)
	}
	st := srv.Stats()
	assert.EqualValues(t, 2, st.PeakInFlight, "the cap")
	assert.Zero(t, st.Throttled)
	assert.EqualValues(t, 4, st.Scored)
	assertClean(t, c, srv)
}

// Endpoints come and go, change caps and keys, every few milliseconds while
// 40 callers run: no call fails, no server sees a call past its cap, no
// request goes to a removed endpoint or with a replaced key once
// SetEndpoints has returned.
func TestSetEndpointsChurn(t *testing.T) {
	const n, serverCap = 6, 8
	srvs := make([]*amltest.Server, n)
	keys := make([]int, n) // the generation of each server's key
	key := func(i, gen int) string { return fmt.Sprintf("key-%d-%d", i, gen) }
	for i := range srvs {
		srvs[i] = amltest.NewServer(amltest.Config{Name: fmt.Sprintf("ep%d", i), Key: key(i, 0), SecondaryKey: "spare",
			MaxConcurrentCalls: serverCap, Latency: time.Millisecond})
		t.Cleanup(srvs[i].Close)
	}
	endpoint := func(i, mcc int) amlpool.Endpoint {
		e := srvs[i].Endpoint()
		e.APIKey, e.SecondaryKey, e.MaxConcurrentCalls = key(i, keys[i]), "", mcc
		return e
	}
	live := map[int]bool{0: true, 1: true}
	c := newClient(t, []amlpool.Endpoint{endpoint(0, 4), endpoint(1, 4)})
	tr := startTraffic(c, 40)

	r := rand.New(rand.NewPCG(7, 11))
	// Per removed server: its requests may grow by its calls in flight at
	// removal, no more, until it is added again.
	allowed := map[int]int64{}
	var unauthorizedAllowed int64
	for round := range 300 {
		// Before a set that adds a server back: check it got nothing new.
		next := map[int]bool{}
		for i := range n {
			if r.IntN(3) > 0 {
				next[i] = true
			}
		}
		if len(next) == 0 {
			next[r.IntN(n)] = true
		}
		for i := range next {
			if !live[i] {
				if bound, ok := allowed[i]; ok {
					assert.LessOrEqual(t, srvs[i].Stats().Requests, bound, "round %d: requests to removed ep%d", round, i)
				}
				delete(allowed, i)
			}
		}
		// A new key for one live server: the service accepts both first.
		rotate := -1
		if round%5 == 0 {
			for i := range next {
				if live[i] {
					rotate = i
					break
				}
			}
		}
		if rotate >= 0 {
			srvs[rotate].SetKeys(key(rotate, keys[rotate]), key(rotate, keys[rotate]+1))
			keys[rotate]++
		}
		var set []amlpool.Endpoint
		for i := range n {
			if next[i] {
				set = append(set, endpoint(i, 1+r.IntN(serverCap)))
			}
		}
		require.NoError(t, c.SetEndpoints(set))
		for i := range n {
			if live[i] && !next[i] {
				held, _ := inFlight(c, fmt.Sprintf("ep%d", i))
				allowed[i] = srvs[i].Stats().Requests + held
			}
		}
		if rotate >= 0 {
			held, _ := inFlight(c, fmt.Sprintf("ep%d", rotate))
			unauthorizedAllowed += held
			srvs[rotate].SetKeys(key(rotate, keys[rotate]), "spare")
		}
		live = next
		time.Sleep(2 * time.Millisecond) // the pace of the churn, not synchronisation
	}
	calls, errs := tr.Stop()
	assert.Empty(t, errs)
	t.Logf("%d calls over 300 changes", calls)
	var unauthorized int64
	for i, s := range srvs {
		st := s.Stats()
		assert.LessOrEqual(t, st.PeakAdmitted, int64(serverCap))
		unauthorized += st.Unauthorized
		if bound, ok := allowed[i]; ok {
			assert.LessOrEqual(t, st.Requests, bound, "requests to removed ep%d", i)
		}
	}
	assert.LessOrEqual(t, unauthorized, unauthorizedAllowed, "requests with a replaced key")
	assertClean(t, c, srvs...)
}

// EndpointStats.Since is when the endpoint was added, by the Client's
// clock: a kept endpoint keeps it, a Name given another URL is a new
// endpoint with a later one.
func TestStatsSinceTellsLivesApart(t *testing.T) {
	clk := clock.NewFake()
	at := func(name, host string) amlpool.Endpoint {
		return amlpool.Endpoint{Name: name, URL: "https://" + host + "/workspaces/w/services/s/execute", APIKey: "k", MaxConcurrentCalls: 1}
	}
	c, err := amlpool.New([]amlpool.Endpoint{at("a", "h1"), at("b", "h2")}, amlpool.WithClock(clk))
	require.NoError(t, err)
	defer c.Close()
	t0 := clk.Now()
	since := func() map[string]time.Time {
		m := make(map[string]time.Time)
		for _, e := range c.Stats().Endpoints {
			m[e.Name] = e.Since
		}
		return m
	}
	assert.Equal(t, map[string]time.Time{"a": t0, "b": t0}, since())

	clk.Advance(time.Hour)
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{at("a", "h1"), at("b", "h3"), at("c", "h4")}))
	t1 := clk.Now()
	assert.Equal(t, map[string]time.Time{"a": t0, "b": t1, "c": t1}, since())
}

// Endpoints without a Name keep the Names derived for them across
// SetEndpoints: two whose derived Names collide ("s", "s#2") keep theirs
// when given in another order, or when one of them is gone, so that no
// Name moves to another URL, taking the endpoint's state (its counters,
// ejection, slots) with it. A Name derived anew goes to an endpoint new
// to the Client, and a Name an endpoint gives itself comes first.
func TestSetEndpointsKeepsDerivedNames(t *testing.T) {
	clk := clock.NewFake()
	at := func(host string) amlpool.Endpoint {
		return amlpool.Endpoint{URL: "https://" + host + "/workspaces/w/services/s/execute", APIKey: "k", MaxConcurrentCalls: 1}
	}
	named := func(name, host string) amlpool.Endpoint { e := at(host); e.Name = name; return e }
	c, err := amlpool.New([]amlpool.Endpoint{at("h1"), at("h2")}, amlpool.WithClock(clk))
	require.NoError(t, err)
	defer c.Close()
	t0 := clk.Now()
	// since lists the endpoints by Name, with their Since: a kept endpoint
	// keeps its own, one new to its Name has the clock's time.
	since := func() map[string]time.Time {
		m := make(map[string]time.Time)
		for _, e := range c.Stats().Endpoints {
			assert.False(t, e.Removed, e.Name)
			m[e.Name] = e.Since
		}
		return m
	}
	require.Equal(t, map[string]time.Time{"s": t0, "s#2": t0}, since())

	clk.Advance(time.Hour)
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{at("h2"), at("h1")}))
	assert.Equal(t, map[string]time.Time{"s": t0, "s#2": t0}, since(), "the same two, in another order")

	clk.Advance(time.Hour)
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{at("h2")}))
	assert.Equal(t, map[string]time.Time{"s#2": t0}, since(), "h2 alone keeps s#2")

	clk.Advance(time.Hour)
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{at("h3"), at("h2")}))
	t3 := clk.Now()
	assert.Equal(t, map[string]time.Time{"s": t3, "s#2": t0}, since(), "h3, new, takes the first Name free")

	clk.Advance(time.Hour)
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{at("h2"), named("s#2", "h4")}))
	t4 := clk.Now()
	assert.Equal(t, map[string]time.Time{"s": t4, "s#2": t4}, since(),
		"a Name given for another URL comes first: h2 is derived a Name anew")

	clk.Advance(time.Hour)
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{named("east", "h5")}))
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{at("h5")}))
	assert.Contains(t, since(), "s", "a Name the endpoint gave itself is not kept once it gives none")
}
