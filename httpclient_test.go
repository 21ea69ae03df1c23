package amlpool

import (
	"context"
	"net/http"
	"net/http/httptest"
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
