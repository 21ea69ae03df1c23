package amlpool

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The adaptive limit's own tests are internal/pool's; this one runs it
// through a Client.

// End to end: an endpoint that throttles everything brings the limit down;
// without the option it stays at the configured cap.
func TestClientAdaptiveLimitOnThrottles(t *testing.T) {
	throttle, err := os.ReadFile("testdata/rrs/error_throttled.json")
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write(throttle)
	}))
	defer srv.Close()
	ep := Endpoint{URL: srv.URL + "/workspaces/w/services/e/execute", APIKey: "k", MaxConcurrentCalls: 16}

	for _, tt := range []struct {
		name string
		opts []Option
		want int
	}{
		{"without", []Option{WithoutRetries()}, 16},
		{"with", []Option{WithoutRetries(), WithAdaptiveLimit()}, 11}, // 16 × 0.7
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New([]Endpoint{ep}, tt.opts...)
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Do(context.Background(), []byte(`{}`))
			require.ErrorIs(t, err, ErrThrottled)
			st := c.Stats().Endpoints[0]
			assert.Equal(t, tt.want, st.Limit)
			assert.Equal(t, 16, st.MaxConcurrentCalls)
		})
	}
}
