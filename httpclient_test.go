package amlpool

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingTransport wraps a RoundTripper as otelhttp.NewTransport does:
// http.DefaultTransport is then no longer an *http.Transport.
type countingTransport struct {
	base  http.RoundTripper
	trips atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.trips.Add(1)
	return c.base.RoundTrip(r)
}

// setDefaultTransport replaces http.DefaultTransport for the rest of the
// test. Tests that use it must not be parallel: every Client built meanwhile
// reads the variable.
func setDefaultTransport(t *testing.T, rt http.RoundTripper) {
	orig := http.DefaultTransport
	http.DefaultTransport = rt
	t.Cleanup(func() { http.DefaultTransport = orig })
}

// TestNewWithAnyDefaultTransport panics without the check in newTransport:
// New used to assert that http.DefaultTransport is an *http.Transport.
func TestNewWithAnyDefaultTransport(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"Results":{}}`))
	}))
	t.Cleanup(srv.Close)
	wrapped := &countingTransport{base: http.DefaultTransport}
	tests := []struct {
		name string
		rt   http.RoundTripper
	}{
		{"wrapped, as by otelhttp", wrapped},
		{"nil", nil},
		{"nil *http.Transport", (*http.Transport)(nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setDefaultTransport(t, tt.rt)
			c, err := New([]Endpoint{{URL: srv.URL + "/score", APIKey: "k", MaxConcurrentCalls: 150}})
			require.NoError(t, err)
			defer c.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			got, err := c.Do(ctx, []byte(`{}`))
			require.NoError(t, err)
			assert.JSONEq(t, `{"Results":{}}`, string(got))

			tr, ok := c.http.Transport.(*http.Transport)
			require.True(t, ok, "the Client's own transport is %T", c.http.Transport)
			assert.Equal(t, 150, tr.MaxIdleConnsPerHost, "idle connections for every slot")
			assert.Zero(t, wrapped.trips.Load(), "the Client's own transport goes around the default one")
		})
	}
}

// TestNewTransportHasNetHTTPDefaults fails when newTransport's fallback
// drifts from the settings of net/http's own DefaultTransport.
func TestNewTransportHasNetHTTPDefaults(t *testing.T) {
	want, ok := http.DefaultTransport.(*http.Transport)
	require.True(t, ok, "this test needs net/http's own DefaultTransport")
	setDefaultTransport(t, &countingTransport{base: want})
	got := newTransport()
	require.NotSame(t, want, got)

	type settings struct {
		proxy, dial                                   bool
		forceHTTP2, disableKeepAlives                 bool
		maxIdle, maxIdlePerHost, maxPerHost           int
		idle, tlsHandshake, expectContinue, respHeads time.Duration
	}
	of := func(t *http.Transport) settings {
		return settings{
			proxy: t.Proxy != nil, dial: t.DialContext != nil,
			forceHTTP2: t.ForceAttemptHTTP2, disableKeepAlives: t.DisableKeepAlives,
			maxIdle: t.MaxIdleConns, maxIdlePerHost: t.MaxIdleConnsPerHost, maxPerHost: t.MaxConnsPerHost,
			idle: t.IdleConnTimeout, tlsHandshake: t.TLSHandshakeTimeout,
			expectContinue: t.ExpectContinueTimeout, respHeads: t.ResponseHeaderTimeout,
		}
	}
	assert.Equal(t, of(want), of(got))
}

// TestUserClientKeepsItsWrapper: the way to have a wrapping transport on
// the scoring calls is a client of one's own.
func TestUserClientKeepsItsWrapper(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"Results":{}}`))
	}))
	t.Cleanup(srv.Close)
	base := srv.Client().Transport
	wrapped := &countingTransport{base: base}
	c, err := New([]Endpoint{{URL: srv.URL + "/score", APIKey: "k"}}, WithHTTPClient(&http.Client{Transport: wrapped}))
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Do(t.Context(), []byte(`{}`))
	require.NoError(t, err)
	assert.Equal(t, int64(1), wrapped.trips.Load())
}

// TestAPlainHTTPProxyIsAnEndpointFault: an https:// proxy that speaks
// plain HTTP fails every call through it, on our own client and on the
// user's, with the tls "first record does not look like a TLS handshake"
// error inside a "proxyconnect" *net.OpError (net/http says
// http.ErrSchemeMismatch only for an unwrapped one): an endpoint fault, as
// an https:// URL for a plain-HTTP server is, not a network error retried.
func TestAPlainHTTPProxyIsAnEndpointFault(t *testing.T) {
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the proxy got a request: %s %s", r.Method, r.URL)
	}))
	t.Cleanup(proxy.Close)
	proxyURL, err := url.Parse(strings.Replace(proxy.URL, "http://", "https://", 1))
	require.NoError(t, err)
	target := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the endpoint got a request: %s %s", r.Method, r.URL)
	}))
	t.Cleanup(target.Close)
	ep := Endpoint{Name: "e", URL: target.URL + "/score", APIKey: "proxy-test-key"}

	for _, own := range []bool{true, false} {
		t.Run(map[bool]string{true: "own client", false: "user's client"}[own], func(t *testing.T) {
			var opts []Option
			if !own {
				tr := target.Client().Transport.(*http.Transport).Clone()
				tr.Proxy = http.ProxyURL(proxyURL)
				opts = append(opts, WithHTTPClient(&http.Client{Transport: tr}))
			}
			c, err := New([]Endpoint{ep}, append(opts, WithMaxAttempts(1))...)
			require.NoError(t, err)
			defer c.Close()
			require.Equal(t, own, c.ownsHTTP)
			if own {
				c.http.Transport.(*http.Transport).Proxy = http.ProxyURL(proxyURL)
			}
			_, err = c.Do(t.Context(), []byte(`{}`))
			require.Error(t, err)
			uerr, ok := errors.AsType[*url.Error](err)
			require.True(t, ok, "%T: %v", err, err)
			assert.Equal(t, "Post", uerr.Op)
			operr, ok := errors.AsType[*net.OpError](err)
			require.True(t, ok, "%T: %v", err, err)
			assert.Equal(t, "proxyconnect", operr.Op)
			assert.ErrorContains(t, err, "first record does not look like a TLS handshake")
			assert.Equal(t, VerdictEndpointFault, Classify(err))
			assert.Equal(t, int64(1), c.Stats().Endpoints[0].Faults)
		})
	}
}

// TestOwnClientErrors: a call our own client cannot make fails as
// http.Client.Do would have it fail, though it goes straight to the
// transport: an *url.Error of Op "Post" naming the endpoint's URL (which
// Classify retries), and for an https:// URL whose server speaks plain HTTP,
// http.ErrSchemeMismatch (an endpoint fault: that server serves no one).
func TestOwnClientErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refused := "http://" + l.Addr().String() + "/score"
	require.NoError(t, l.Close())
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(plain.Close)
	mismatched := strings.Replace(plain.URL, "http://", "https://", 1) + "/score"

	dialed := func(t *testing.T, err error) {
		operr, ok := errors.AsType[*net.OpError](err)
		require.True(t, ok, "%T: %v", err, err)
		assert.Equal(t, "dial", operr.Op)
	}
	for _, tt := range []struct {
		name, url string
		check     func(*testing.T, error)
		verdict   Verdict
	}{
		{"connection refused", refused, dialed, VerdictRetry},
		{"https to a plain HTTP server", mismatched, func(t *testing.T, err error) { assert.ErrorIs(t, err, http.ErrSchemeMismatch) }, VerdictEndpointFault},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New([]Endpoint{{Name: "e", URL: tt.url, APIKey: "k"}}, WithMaxAttempts(1))
			require.NoError(t, err)
			defer c.Close()
			require.True(t, c.ownsHTTP)
			_, err = c.Do(t.Context(), []byte(`{}`))
			require.Error(t, err)
			uerr, ok := errors.AsType[*url.Error](err)
			require.True(t, ok, "%T: %v", err, err)
			assert.Equal(t, "Post", uerr.Op)
			assert.Equal(t, tt.url, uerr.URL)
			tt.check(t, err)
			assert.Equal(t, tt.verdict, Classify(uerr))
		})
	}
}
