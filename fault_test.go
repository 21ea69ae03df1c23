package amlpool_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// An endpoint that cannot serve anyone — its key rejected, access denied,
// the endpoint gone, its certificate not trusted — is routed around: no call fails, and it gets only the
// calls that were on their way before its first answer came back.
func TestEndpointFaultIsRoutedAround(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		breakIt func(ep *amlpool.Endpoint, s *amltest.Server)
	}{
		{"401: a wrong key", http.StatusUnauthorized, func(ep *amlpool.Endpoint, _ *amltest.Server) {
			ep.APIKey, ep.SecondaryKey = "wrong-key", ""
		}},
		{"403: access denied", http.StatusForbidden, func(_ *amlpool.Endpoint, s *amltest.Server) {
			s.Script(forever(amltest.Fault{Status: 403, Code: "Forbidden"})...)
		}},
		{"404: the endpoint is gone", http.StatusNotFound, func(ep *amlpool.Endpoint, _ *amltest.Server) {
			ep.URL = strings.Replace(ep.URL, "/services/", "/services/deleted", 1)
		}},
		{"a TLS certificate the client does not trust", 0, func(ep *amlpool.Endpoint, _ *amltest.Server) {
			untrusted := amltest.NewUnstartedServer(amltest.Config{MaxConcurrentCalls: 5})
			untrusted.StartTLS()
			t.Cleanup(untrusted.Close)
			name := ep.Name
			*ep = untrusted.Endpoint()
			ep.Name = name
		}},
		{"an https:// URL for a plain-HTTP server", 0, func(ep *amlpool.Endpoint, _ *amltest.Server) {
			ep.URL = strings.Replace(ep.URL, "http://", "https://", 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srvs, eps := fakes(t, 2*time.Millisecond, 5, 5, 5, 5)
			tt.breakIt(&eps[3], srvs[3])
			var logs syncBuffer
			c := newClient(t, eps, amlpool.WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))

			errs := hammer(t, c, 40, 10)

			assert.Empty(t, errs, "400 calls, none may fail")
			broken := srvs[3].Stats().Requests
			assert.LessOrEqual(t, broken, int64(10), "calls sent to the broken endpoint")
			st := c.Stats().Endpoints[3]
			assert.True(t, st.Ejected, "the broken endpoint left rotation")
			assert.GreaterOrEqual(t, st.Faults, int64(1))
			assert.Equal(t, st.Faults, st.Errors)
			var warned bool
			for line := range strings.Lines(logs.String()) {
				var m map[string]any
				require.NoError(t, json.Unmarshal([]byte(line), &m))
				if m["level"] == "WARN" && m["endpoint"] == eps[3].Name {
					assert.EqualValues(t, tt.status, m["status"], line)
					warned = true
				}
			}
			assert.True(t, warned, "a warning naming the endpoint and status: %s", logs.String())
			for _, s := range srvs[:3] {
				assert.Zero(t, s.Stats().Throttled)
			}
		})
	}
}

// forever is enough copies of f for every call of a test.
func forever(f amltest.Fault) []amltest.Fault {
	fs := make([]amltest.Fault, 1000)
	for i := range fs {
		fs[i] = f
	}
	return fs
}

// Azure gives every endpoint two keys so that one can be regenerated while
// the other serves: with SecondaryKey set, regenerating the primary under
// load fails no call, and the primary is tried only by the calls already on
// their way.
func TestSecondaryKeyTakesOverWhenThePrimaryIsRegenerated(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{Name: "ep", MaxConcurrentCalls: 6, Latency: 2 * time.Millisecond, Key: "primary", SecondaryKey: "secondary"})
	t.Cleanup(srv.Close)
	other := amltest.NewServer(amltest.Config{Name: "other", MaxConcurrentCalls: 6, Latency: 2 * time.Millisecond})
	t.Cleanup(other.Close)
	c := newClient(t, []amlpool.Endpoint{srv.Endpoint(), other.Endpoint()})
	tr := startTraffic(c, 20)
	waitScored(t, srv, 20)
	srv.SetKeys("regenerated", "secondary")
	waitScored(t, srv, 100) // hangs if the endpoint is not tried with its secondary key
	_, errs := tr.Stop()
	assert.Empty(t, errs)
	assert.LessOrEqual(t, srv.Stats().Unauthorized, int64(6+2), "401s: the calls in flight when the key changed, and a few more")
	assert.Contains(t, srv.Stats().KeysSeen, "secondary")
	st := c.Stats().Endpoints[0]
	assert.False(t, st.Ejected, "a key that works keeps the endpoint in rotation")
	assert.Zero(t, st.Ejections)
}

// After a 401, an endpoint with a second key is tried again at once with
// it, with no backoff, and keeps it.
func TestSecondKeyIsTriedAtOnceAfterA401(t *testing.T) {
	srvs := servers(t, 2, 2)
	srvs[0].Script(amltest.Fault{Status: 401})
	clk := newStepClock(2 * time.Second)
	c := newClient(t, endpoints(srvs), amlpool.WithClock(clk), amlpool.WithRand(firstFree))
	primary, secondary := srvs[0].Endpoint().APIKey, srvs[0].Endpoint().SecondaryKey
	_, err := c.Do(context.Background(), scoreBody)
	require.NoError(t, err)
	assert.Equal(t, []int64{2, 0}, requests(srvs), "a 401, then the same endpoint with the other key")
	assert.ElementsMatch(t, []string{primary, secondary}, srvs[0].Stats().KeysSeen)

	// The endpoint keeps the key that worked: with the primary gone now,
	// later calls still need one request each.
	srvs[0].SetKeys("regenerated", secondary)
	for range 2 {
		_, err := c.Do(context.Background(), scoreBody)
		require.NoError(t, err)
	}
	assert.Equal(t, []int64{4, 0}, requests(srvs))
	assert.Empty(t, clk.Waits(), "no backoff")
	assert.False(t, c.Stats().Endpoints[0].Ejected)
}

// When both keys are refused the endpoint is a fault like any other.
func TestBothKeysRefusedIsAnEndpointFault(t *testing.T) {
	srvs := servers(t, 2, 2)
	eps := endpoints(srvs)
	eps[0].APIKey, eps[0].SecondaryKey = "wrong-1", "wrong-2"
	clk := newStepClock(2 * time.Second)
	c := newClient(t, eps, amlpool.WithClock(clk), amlpool.WithRand(firstFree))
	_, err := c.Do(context.Background(), scoreBody)
	require.NoError(t, err)
	assert.Equal(t, []int64{2, 1}, requests(srvs), "the primary, the secondary at once on the same endpoint, then the other endpoint")
	assert.Empty(t, clk.Waits(), "no backoff")
	assert.Equal(t, []string{"wrong-1", "wrong-2"}, srvs[0].Stats().KeysSeen)
	assert.True(t, c.Stats().Endpoints[0].Ejected)
}

// Every endpoint refusing the call's keys: the 401 comes back at once, with
// no backoff, after one try on each endpoint; and so do later calls.
func TestEveryEndpointFaultReturnsTheErrorPromptly(t *testing.T) {
	srvs := servers(t, 3, 2)
	eps := endpoints(srvs)
	for i := range eps {
		eps[i].APIKey, eps[i].SecondaryKey = "wrong", ""
	}
	clk := newStepClock(2 * time.Second)
	c := newClient(t, eps, amlpool.WithClock(clk))
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := c.Do(ctx, scoreBody)
		cancel()
		var apiErr *amlpool.APIError
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, http.StatusUnauthorized, apiErr.StatusCode)
		var callErr *amlpool.CallError
		require.ErrorAs(t, err, &callErr)
		assert.Equal(t, 3, callErr.Attempts, "each endpoint once")
	}
	assert.Empty(t, clk.Waits(), "no backoff")
	assert.Equal(t, []int64{3, 3, 3}, requests(srvs))
}
