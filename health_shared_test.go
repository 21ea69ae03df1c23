package amlpool_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
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

// healthStub is a Limiter that grants every candidate's first slot at
// once and shares health: it records what the Client reports and lets the
// test play the other replicas.
type healthStub struct {
	stubLimiter

	hmu       sync.Mutex
	apply     func(amlpool.HealthEvent)
	endpoints [][]amlpool.LimitedEndpoint // what ShareHealth and SetEndpoints were told
	reports   []amlpool.HealthEvent
	closed    int
}

func newHealthStub() *healthStub {
	return &healthStub{stubLimiter: stubLimiter{pick: func([]amlpool.LimitedEndpoint) int { return 0 }}}
}

func (h *healthStub) ShareHealth(eps []amlpool.LimitedEndpoint, apply func(amlpool.HealthEvent)) amlpool.HealthLink {
	h.hmu.Lock()
	defer h.hmu.Unlock()
	h.apply = apply
	h.endpoints = append(h.endpoints, eps)
	return (*healthLink)(h)
}

type healthLink healthStub

func (l *healthLink) Report(ev amlpool.HealthEvent) {
	l.hmu.Lock()
	defer l.hmu.Unlock()
	l.reports = append(l.reports, ev)
}

func (l *healthLink) SetEndpoints(eps []amlpool.LimitedEndpoint) {
	l.hmu.Lock()
	defer l.hmu.Unlock()
	l.endpoints = append(l.endpoints, eps)
}

func (l *healthLink) Close() {
	l.hmu.Lock()
	defer l.hmu.Unlock()
	l.closed++
}

// takeReports returns the reports so far and forgets them.
func (h *healthStub) takeReports() []amlpool.HealthEvent {
	h.hmu.Lock()
	defer h.hmu.Unlock()
	r := h.reports
	h.reports = nil
	return r
}

// send plays another replica's report.
func (h *healthStub) send(ev amlpool.HealthEvent) {
	h.hmu.Lock()
	apply := h.apply
	h.hmu.Unlock()
	apply(ev)
}

// idOf returns the LimitedEndpoint.ID the stub was told for the endpoint
// named name.
func (h *healthStub) idOf(t *testing.T, name string) string {
	t.Helper()
	h.hmu.Lock()
	defer h.hmu.Unlock()
	eps := h.endpoints[len(h.endpoints)-1]
	i := slices.IndexFunc(eps, func(e amlpool.LimitedEndpoint) bool { return e.Name == name })
	require.GreaterOrEqual(t, i, 0, "no endpoint %s", name)
	return eps[i].ID
}

func doOnce(t *testing.T, c *amlpool.Client) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Do(ctx, scoreBody)
	return err
}

// A Client reports what its attempts show: a delay hint, failures that
// count towards ejection, a reply that proves the endpoint alive again, an
// ejection, and the readmission after a good probe.
func TestClientReportsHealthToTheFleet(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{Name: "a"})
	defer srv.Close()
	lim := newHealthStub()
	clk := clock.NewFake()
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint()}, amlpool.WithLimiter(lim), amlpool.WithClock(clk),
		amlpool.WithRand(func() uint64 { return 1 << 63 }), amlpool.WithoutRetries(),
		amlpool.WithEjection(2, time.Minute))
	id := lim.idOf(t, "a")

	srv.Script(amltest.Fault{Status: 503}.WithRetryAfter(3 * time.Second)) // InitializingContainers: transient
	require.Error(t, doOnce(t, c))
	assert.Equal(t, []amlpool.HealthEvent{
		{ID: id, Kind: amlpool.HealthCoolDown, For: 3 * time.Second},
		{ID: id, Kind: amlpool.HealthFailed, Failures: 1},
	}, lim.takeReports())

	require.True(t, clk.WaitTimers(1, nil))
	clk.Advance(3 * time.Second) // the cool-down ends
	require.Eventually(t, func() bool { return doOnce(t, c) == nil }, 10*time.Second, time.Millisecond)
	assert.Equal(t, []amlpool.HealthEvent{{ID: id, Kind: amlpool.HealthRecovered}}, lim.takeReports())
	require.NoError(t, doOnce(t, c))
	assert.Empty(t, lim.takeReports(), "a success with no failure before tells nothing")

	srv.Script(amltest.Fault{Status: 500}, amltest.Fault{Status: 500})
	require.Error(t, doOnce(t, c))
	require.Error(t, doOnce(t, c))
	assert.Equal(t, []amlpool.HealthEvent{
		{ID: id, Kind: amlpool.HealthFailed, Failures: 1},
		{ID: id, Kind: amlpool.HealthEjected, For: time.Minute},
	}, lim.takeReports())

	require.True(t, clk.WaitTimers(1, nil))
	clk.Advance(time.Minute) // the ejection ends: the next call probes
	var reports []amlpool.HealthEvent
	require.Eventually(t, func() bool {
		// Calls go there before Run has seen the ejection end too (it is
		// the only endpoint: panic), but only the probe readmits.
		require.NoError(t, doOnce(t, c))
		reports = append(reports, lim.takeReports()...)
		return len(reports) > 0
	}, 10*time.Second, time.Millisecond)
	assert.Equal(t, []amlpool.HealthEvent{{ID: id, Kind: amlpool.HealthReadmitted}}, reports)
}

func TestClientReportsAnEndpointFault(t *testing.T) {
	srvs := servers(t, 2, 2)
	lim := newHealthStub()
	eps := endpoints(srvs)
	eps[0].APIKey, eps[0].SecondaryKey = "wrong", ""
	c := newClient(t, eps, amlpool.WithLimiter(lim), amlpool.WithRand(firstFree),
		amlpool.WithEjection(5, time.Minute))
	require.NoError(t, doOnce(t, c))
	reports := lim.takeReports()
	require.Len(t, reports, 1)
	assert.Equal(t, lim.idOf(t, "s0"), reports[0].ID)
	assert.Equal(t, amlpool.HealthEjected, reports[0].Kind)
	assert.True(t, reports[0].Fault)
	assert.Positive(t, reports[0].For)
}

// Online endpoints share their health as Classic ones do: a 429
// Rate-limited with Retry-After is a cool-down for the fleet, and no
// failure: a rate limit is no sign the endpoint is sick.
func TestOnlineHealthIsShared(t *testing.T) {
	srvs := onlineServers(t, 2, 4, func(c *amltest.Config) {
		c.AcceptToken = func(string) bool { return true }
	})
	lim := newHealthStub()
	eps := tokenEndpoints(srvs, amlpool.CredentialFunc(func(context.Context) (string, error) { return "aad-token", nil }))
	c := newClient(t, eps, amlpool.WithLimiter(lim), amlpool.WithRand(firstFree), amlpool.WithoutRetries(),
		amlpool.WithEjection(5, time.Minute))
	o0, o1 := lim.idOf(t, "o0"), lim.idOf(t, "o1")

	srvs[1].Script(amltest.RateLimited().WithRetryAfter(30 * time.Second))
	lim.send(amlpool.HealthEvent{ID: o0, Kind: amlpool.HealthCoolDown, For: time.Hour}) // o1 first
	_, err := c.Do(t.Context(), onlineBody)
	require.Error(t, err)
	assert.Equal(t, []amlpool.HealthEvent{
		{ID: o1, Kind: amlpool.HealthCoolDown, For: 30 * time.Second},
	}, lim.takeReports())
}

// A token refused (401), or refused access (403), is this replica's: its
// Credential's identity may be the only one the endpoint turns away. The
// endpoint leaves rotation here, and the fleet hears nothing of it: neither
// the ejection of a token refused twice or of a 403, nor the failures of
// fresh tokens refused too, nor the ejection a run of them brings.
func TestATokenRefusalIsNotShared(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		fresh  bool // a new token each time, else the same one
	}{
		{"401 same token", http.StatusUnauthorized, false},
		{"401 fresh tokens", http.StatusUnauthorized, true},
		{"403", http.StatusForbidden, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvs := onlineServers(t, 2, 4, func(c *amltest.Config) {
				c.AcceptToken = func(string) bool { return true }
			})
			lim := newHealthStub()
			eps := tokenEndpoints(srvs, amlpool.CredentialFunc(func(context.Context) (string, error) { return "aad-token", nil }))
			var n atomic.Int64
			eps[0].Credential = amlpool.CredentialFunc(func(context.Context) (string, error) {
				if tc.fresh {
					return "this-replicas-token-" + strconv.FormatInt(n.Add(1), 10), nil
				}
				return "this-replicas-token", nil
			})
			for range 4 {
				srvs[0].Script(amltest.Fault{Status: tc.status})
			}
			c := newClient(t, eps, amlpool.WithLimiter(lim), amlpool.WithRand(firstFree),
				amlpool.WithEjection(2, time.Minute))
			for range 2 { // o0 refuses, o1 serves
				_, err := c.Do(t.Context(), onlineBody)
				require.NoError(t, err)
			}
			assert.True(t, c.Stats().Endpoints[0].Ejected, "out of rotation here")
			assert.Positive(t, srvs[0].Stats().Requests)
			assert.Empty(t, lim.takeReports())
		})
	}
}

// An attempt whose Credential gave no token sent nothing: the fleet hears
// nothing of it, neither the failures nor the ejection they bring here.
func TestACredentialErrorIsNotShared(t *testing.T) {
	srvs := onlineServers(t, 2, 4)
	lim := newHealthStub()
	eps := tokenEndpoints(srvs, amlpool.CredentialFunc(func(context.Context) (string, error) {
		return "", errors.New("AADSTS700016: application not found")
	}))
	c := newClient(t, eps, amlpool.WithLimiter(lim), amlpool.WithRand(firstFree), amlpool.WithoutRetries(),
		amlpool.WithEjection(2, time.Minute))
	for range 2 {
		_, err := c.Do(t.Context(), onlineBody)
		require.ErrorAs(t, err, new(*amlpool.CredentialError))
	}
	assert.True(t, c.Stats().Endpoints[0].Ejected, "ejected here, after two failures")
	assert.Equal(t, []int64{0, 0}, requests(srvs))
	assert.Empty(t, lim.takeReports())
}

// A certificate this replica does not trust takes the endpoint out of
// rotation here only: the replica's own trust store may be what is wrong,
// and the fleet hears nothing of it.
func TestAnUntrustedCertificateIsNotShared(t *testing.T) {
	untrusted := amltest.NewUnstartedServer(amltest.Config{Name: "tls"})
	untrusted.StartTLS()
	t.Cleanup(untrusted.Close)
	srvs := servers(t, 1, 2)
	lim := newHealthStub()
	c := newClient(t, []amlpool.Endpoint{untrusted.Endpoint(), srvs[0].Endpoint()}, amlpool.WithLimiter(lim),
		amlpool.WithRand(firstFree), amlpool.WithEjection(5, time.Minute))
	require.NoError(t, doOnce(t, c), "the other endpoint serves the call")
	assert.True(t, c.Stats().Endpoints[0].Ejected, "out of rotation here")
	assert.Empty(t, lim.takeReports())
}

// Nor is an https:// URL whose server answers in plain HTTP: a middlebox on
// this replica's path may be what answers so.
func TestASchemeMismatchIsNotShared(t *testing.T) {
	srvs := servers(t, 2, 2)
	plain := srvs[1].Endpoint()
	plain.URL = strings.Replace(plain.URL, "http://", "https://", 1)
	lim := newHealthStub()
	c := newClient(t, []amlpool.Endpoint{plain, srvs[0].Endpoint()}, amlpool.WithLimiter(lim),
		amlpool.WithRand(firstFree), amlpool.WithEjection(5, time.Minute))
	require.NoError(t, doOnce(t, c), "the other endpoint serves the call")
	assert.True(t, c.Stats().Endpoints[0].Ejected, "out of rotation here")
	assert.Empty(t, lim.takeReports())
}

// Nor is an https:// proxy that speaks plain HTTP: it is this replica's
// way to the endpoint that is wrong.
func TestAPlainHTTPProxyIsNotShared(t *testing.T) {
	srvs := servers(t, 2, 2)
	proxy := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(proxy.Close)
	proxyURL, err := url.Parse(strings.Replace(proxy.URL, "http://", "https://", 1))
	require.NoError(t, err)
	proxied, err := url.Parse(srvs[1].Endpoint().URL)
	require.NoError(t, err)
	tr := &http.Transport{Proxy: func(r *http.Request) (*url.URL, error) {
		if r.URL.Host == proxied.Host {
			return proxyURL, nil
		}
		return nil, nil
	}}
	t.Cleanup(tr.CloseIdleConnections)
	lim := newHealthStub()
	c := newClient(t, []amlpool.Endpoint{srvs[1].Endpoint(), srvs[0].Endpoint()}, amlpool.WithLimiter(lim),
		amlpool.WithRand(firstFree), amlpool.WithEjection(5, time.Minute), amlpool.WithHTTPClient(&http.Client{Transport: tr}))
	require.NoError(t, doOnce(t, c), "the other endpoint serves the call")
	assert.True(t, c.Stats().Endpoints[0].Ejected, "out of rotation here")
	assert.Zero(t, srvs[1].Stats().Requests, "nothing went through the proxy")
	assert.Empty(t, lim.takeReports())
}

// What other replicas report is applied, and none of it is reported back:
// news does not go round the fleet.
func TestClientAppliesTheFleetsHealth(t *testing.T) {
	srvs := servers(t, 3, 20)
	lim := newHealthStub()
	var logs bytes.Buffer
	c := newClient(t, endpoints(srvs), amlpool.WithLimiter(lim), amlpool.WithEjection(3, time.Minute),
		amlpool.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	a, b := lim.idOf(t, "s0"), lim.idOf(t, "s1")

	lim.send(amlpool.HealthEvent{ID: a, Kind: amlpool.HealthCoolDown, For: time.Hour})
	lim.send(amlpool.HealthEvent{ID: b, Kind: amlpool.HealthEjected, For: time.Hour})
	lim.send(amlpool.HealthEvent{ID: "not-ours", Kind: amlpool.HealthEjected, For: time.Hour})
	for range 30 {
		require.NoError(t, doOnce(t, c))
	}
	assert.Equal(t, []int64{0, 0, 30}, requests(srvs), "s0 cools down, s1 is out: another replica said so")
	st := c.Stats().Endpoints
	assert.False(t, st[0].Ejected)
	assert.True(t, st[1].Ejected)
	assert.EqualValues(t, 1, st[1].Ejections)
	assert.Empty(t, lim.takeReports(), "nothing received is reported back")
	assert.Contains(t, logs.String(), `msg="amlpool: endpoint ejected by another replica" endpoint=s1 for=1h0m0s`)

	lim.send(amlpool.HealthEvent{ID: b, Kind: amlpool.HealthReadmitted})
	assert.False(t, c.Stats().Endpoints[1].Ejected)
	assert.Empty(t, lim.takeReports())
	assert.Contains(t, logs.String(), `msg="amlpool: endpoint readmitted by another replica" endpoint=s1`)

	// Failures seen elsewhere count with ours: this replica ejects, and
	// says so, once, as its own decision.
	lim.send(amlpool.HealthEvent{ID: b, Kind: amlpool.HealthFailed, Failures: 2})
	assert.False(t, c.Stats().Endpoints[1].Ejected)
	lim.send(amlpool.HealthEvent{ID: b, Kind: amlpool.HealthRecovered})
	lim.send(amlpool.HealthEvent{ID: b, Kind: amlpool.HealthFailed, Failures: 2})
	assert.False(t, c.Stats().Endpoints[1].Ejected, "the count started again")
	lim.send(amlpool.HealthEvent{ID: b, Kind: amlpool.HealthFailed, Failures: 1})
	assert.True(t, c.Stats().Endpoints[1].Ejected)
	reports := lim.takeReports()
	require.Len(t, reports, 1)
	assert.Equal(t, b, reports[0].ID)
	assert.Equal(t, amlpool.HealthEjected, reports[0].Kind)
	assert.False(t, reports[0].Fault)
}

func TestFleetHintsAreCappedAsOurOwn(t *testing.T) {
	srvs := servers(t, 2, 20)
	lim := newHealthStub()
	c := newClient(t, endpoints(srvs), amlpool.WithLimiter(lim), amlpool.WithMaxRetryAfter(0))
	lim.send(amlpool.HealthEvent{ID: lim.idOf(t, "s0"), Kind: amlpool.HealthCoolDown, For: time.Hour})
	for range 40 {
		require.NoError(t, doOnce(t, c))
	}
	assert.Positive(t, srvs[0].Stats().Requests, "hints are ignored here, the fleet's too")
}

// The link follows the Client: its live endpoints at New and after each
// SetEndpoints, and Close.
func TestHealthLinkFollowsTheClient(t *testing.T) {
	srvs := servers(t, 3, 20)
	lim := newHealthStub()
	c, err := amlpool.New(endpoints(srvs[:2]), amlpool.WithLimiter(lim))
	require.NoError(t, err)
	require.NoError(t, c.SetEndpoints(endpoints(srvs[1:])))
	require.NoError(t, c.Close())
	lim.hmu.Lock()
	defer lim.hmu.Unlock()
	require.Len(t, lim.endpoints, 2)
	names := func(eps []amlpool.LimitedEndpoint) (out []string) {
		for _, e := range eps {
			out = append(out, e.Name)
		}
		return out
	}
	assert.Equal(t, []string{"s0", "s1"}, names(lim.endpoints[0]))
	assert.Equal(t, []string{"s1", "s2"}, names(lim.endpoints[1]))
	assert.Equal(t, lim.endpoints[0][1], lim.endpoints[1][0], "the same endpoint, the same ID")
	assert.Equal(t, 1, lim.closed)
}

// A call waiting at the Limiter for an endpoint that SetEndpoints removes
// chooses again among the new endpoints: no attempt starts on the removed
// one, and the added one serves it.
func TestSetEndpointsEndsAWaitAtTheLimiter(t *testing.T) {
	srvs := servers(t, 2, 20)
	lim := &stubLimiter{pick: func(cands []amlpool.LimitedEndpoint) int {
		return slices.IndexFunc(cands, func(e amlpool.LimitedEndpoint) bool { return e.Name == "s1" })
	}} // the fleet is full on s0 for as long as the test runs
	c := newClient(t, endpoints(srvs[:1]), amlpool.WithLimiter(lim))
	done := make(chan error, 1)
	go func() { done <- doOnce(t, c) }()
	require.Eventually(t, func() bool { lim.mu.Lock(); defer lim.mu.Unlock(); return len(lim.asked) == 1 },
		10*time.Second, time.Millisecond, "the call waits at the Limiter")

	require.NoError(t, c.SetEndpoints(endpoints(srvs[1:])))
	require.NoError(t, <-done)
	assert.Equal(t, []int64{0, 1}, requests(srvs))
	lim.mu.Lock()
	defer lim.mu.Unlock()
	assert.Zero(t, lim.held)
	assert.Zero(t, c.Stats().Endpoints[0].InFlight)
}

// Close ends a wait at the Limiter with ErrClosed, as it ends a wait for
// the Client's own slots.
func TestCloseEndsAWaitAtTheLimiter(t *testing.T) {
	srvs := servers(t, 1, 20)
	lim := &stubLimiter{pick: func([]amlpool.LimitedEndpoint) int { return -1 }}
	c, err := amlpool.New(endpoints(srvs), amlpool.WithLimiter(lim))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- doOnce(t, c) }()
	require.Eventually(t, func() bool { lim.mu.Lock(); defer lim.mu.Unlock(); return len(lim.asked) == 1 },
		10*time.Second, time.Millisecond, "the call waits at the Limiter")
	require.NoError(t, c.Close())
	assert.ErrorIs(t, <-done, amlpool.ErrClosed)
}
