package amlpool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
	"github.com/amlpool/amlpool/internal/pool"
)

// Passive health itself is internal/pool's; these are the Client's part of
// it: the hints it passes on, the options it maps, the lines it logs.

// hinting serves status with a throttle body and Retry-After: retryAfter
// seconds.
func hinting(t *testing.T, status int, retryAfter string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", retryAfter)
		w.WriteHeader(status)
		io.WriteString(w, throttleBody)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A Retry-After hint holds the endpoint back for at most WithMaxRetryAfter,
// while APIError.RetryAfter holds the hint as the reply gave it.
func TestClientCapsCoolDowns(t *testing.T) {
	tests := []struct {
		name string
		hint string
		max  time.Duration
		want time.Duration
	}{
		{"an hour capped at 10 s", "3600", 10 * time.Second, 10 * time.Second},
		{"under the cap", "2", 10 * time.Second, 2 * time.Second},
		{"hints ignored", "3600", 0, 0},
	}
	hint := map[string]time.Duration{"3600": time.Hour, "2": 2 * time.Second}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := hinting(t, http.StatusServiceUnavailable, tt.hint)
			c, err := New([]Endpoint{{URL: srv.URL + "/x", APIKey: "k", MaxConcurrentCalls: 1}},
				WithClock(clock.NewFake()), WithoutRetries(), WithMaxRetryAfter(tt.max))
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Do(context.Background(), []byte(`{}`))
			require.ErrorIs(t, err, ErrThrottled)
			assert.Equal(t, tt.want, c.pool.ReadyIn())
			apiErr, ok := errors.AsType[*APIError](err)
			require.True(t, ok)
			assert.Equal(t, hint[tt.hint], apiErr.RetryAfter, "the hint itself, not capped")
		})
	}
}

// WithoutEjection: failures in a row eject nothing; cool-downs still apply.
func TestClientWithoutEjection(t *testing.T) {
	srv := newFakeAML(t, always(500))
	c, err := New([]Endpoint{srv.endpoint("only", 1)}, WithClock(clock.NewFake()), WithoutRetries(), WithoutEjection())
	require.NoError(t, err)
	defer c.Close()
	for range 3 * DefaultEjectAfter {
		_, err := c.Do(context.Background(), []byte(`{}`))
		require.Error(t, err)
	}
	st := c.Stats().Endpoints[0]
	assert.False(t, st.Ejected)
	assert.Zero(t, st.Ejections)
	assert.EqualValues(t, 3*DefaultEjectAfter, st.Errors)

	hint := hinting(t, http.StatusInternalServerError, "1")
	c2, err := New([]Endpoint{{URL: hint.URL + "/x", APIKey: "k", MaxConcurrentCalls: 1}},
		WithClock(clock.NewFake()), WithoutRetries(), WithoutEjection())
	require.NoError(t, err)
	defer c2.Close()
	_, err = c2.Do(context.Background(), []byte(`{}`))
	require.Error(t, err)
	assert.Equal(t, time.Second, c2.pool.ReadyIn(), "cool-downs still apply")
}

// The warn lines of an attempt's effects name the endpoint, never its key.
func TestLogEffects(t *testing.T) {
	p := pool.New(pool.Config{Clock: clock.NewFake()}, func() []pool.Spec {
		specs, err := newSpecs([]Endpoint{good(nil)}, false, nil)
		require.NoError(t, err)
		return specs
	}())
	ep := p.Set().Eps[0]
	tests := []struct {
		name   string
		result pool.Result
		fx     pool.Effects
		want   []string // in the log, in order
	}{
		{"ejected", pool.Failed, pool.Effects{Ejected: 30 * time.Second, Ejections: 1},
			[]string{"amlpool: endpoint ejected", "endpoint=east", "ejections=1", "for=30s"}},
		{"ejected for a fault", pool.Fault, pool.Effects{Ejected: time.Minute, Ejections: 2},
			[]string{"amlpool: endpoint cannot serve calls; out of rotation", "endpoint=east", "status=401", "ejections=2", "for=1m0s"}},
		{"readmitted", pool.OK, pool.Effects{Readmitted: true},
			[]string{"amlpool: endpoint readmitted", "endpoint=east"}},
		{"panic", pool.Failed, pool.Effects{Ejected: 30 * time.Second, Ejections: 1, Panic: true, Out: 3, Of: 5},
			[]string{"amlpool: endpoint ejected", "using all of them", "ejected=3", "endpoints=5"}},
		{"nothing", pool.Failed, pool.Effects{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			cfg, err := buildConfig([]Option{WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))})
			require.NoError(t, err)
			tel, err := newTelemetry(&cfg)
			require.NoError(t, err)
			a := &attempt{slot: pool.Slot{Ep: ep}, result: tt.result, fx: tt.fx, status: 401,
				err: apiErr(401, "Unauthorized", "ScoreRequestUnauthorized")}
			tel.logEffects(a)
			out := logs.String()
			if tt.want == nil {
				assert.Empty(t, out)
			}
			for _, w := range tt.want {
				i := strings.Index(out, w)
				if assert.GreaterOrEqual(t, i, 0, "%q in %s", w, out) {
					out = out[i+len(w):]
				}
			}
			for _, key := range secrets {
				assert.NotContains(t, logs.String(), key)
			}
			assert.NotContains(t, logs.String(), "Bearer")
		})
	}
}
