package amlpool_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// heldServers starts endpoints with the given caps and tiers that hold
// every call they admit until release is closed (or the test ends). Each
// admitted call sends on arrived as it starts to wait.
func heldServers(t *testing.T, release <-chan struct{}, caps, tiers []int) (srvs []*amltest.Server, eps []amlpool.Endpoint, arrived chan struct{}) {
	t.Helper()
	quit := make(chan struct{})
	arrived = make(chan struct{}, 100)
	for i := range caps {
		s := amltest.NewServer(amltest.Config{Name: fmt.Sprint("t", tiers[i], "ep", i), MaxConcurrentCalls: caps[i],
			LatencyFunc: func() time.Duration {
				arrived <- struct{}{}
				select {
				case <-release:
				case <-quit:
				}
				return 0
			}})
		t.Cleanup(s.Close)
		ep := s.Endpoint()
		ep.Tier = tiers[i]
		srvs, eps = append(srvs, s), append(eps, ep)
	}
	t.Cleanup(func() { close(quit) }) // before the servers close: they wait for their calls
	return srvs, eps, arrived
}

// Two tier-0 endpoints of 4 slots and a tier-1 one: 8 callers at once all
// go to tier 0; 16 put the other 8 on tier 1. With every Balancer.
func TestTiersTakeOnlyTheOverflow(t *testing.T) {
	for name, b := range map[string]amlpool.Balancer{"Random": amlpool.Random(), "LeastLoaded": amlpool.LeastLoaded(),
		"LatencyAware": amlpool.LatencyAware(), "custom": firstWithRoom{}} {
		t.Run(name, func(t *testing.T) {
			release := make(chan struct{})
			srvs, eps, arrived := heldServers(t, release, []int{4, 4, 8}, []int{0, 0, 1})
			c := newClient(t, eps, amlpool.WithBalancer(b))
			errs := make(chan error, 16)
			for range 8 {
				go func() { _, err := c.Do(context.Background(), []byte(body)); errs <- err }()
			}
			for range 8 {
				<-arrived
			}
			assert.EqualValues(t, 4, srvs[0].Stats().InFlight)
			assert.EqualValues(t, 4, srvs[1].Stats().InFlight)
			assert.Zero(t, srvs[2].Stats().Requests, "8 callers: tier 1 gets nothing")

			for range 8 {
				go func() { _, err := c.Do(context.Background(), []byte(body)); errs <- err }()
			}
			for range 8 {
				<-arrived
			}
			assert.EqualValues(t, 8, srvs[2].Stats().InFlight, "16 callers: tier 1 takes the overflow")
			close(release)
			for range 16 {
				assert.NoError(t, <-errs)
			}
			for _, s := range srvs {
				assert.Zero(t, s.Stats().Throttled, s.URL())
			}
			st := c.Stats()
			assert.Equal(t, []int{0, 0, 1}, []int{st.Endpoints[0].Tier, st.Endpoints[1].Tier, st.Endpoints[2].Tier})
		})
	}
}

// firstWithRoom is a user's Balancer: the first endpoint of the tier with a
// free slot.
type firstWithRoom struct{}

func (firstWithRoom) Pick(s amlpool.Candidates) int {
	for i := range s.Len() {
		if s.Free(i) > 0 {
			return i
		}
	}
	return -1
}

// Tier 0's endpoints fail and are ejected: calls fail over to tier 1 and
// stay there, and every call succeeds.
func TestTiersFailOverWhenTierZeroIsEjected(t *testing.T) {
	fail := amltest.Config{Fault: func(int64) amltest.Fault { return amltest.Fault{Status: 500} }}
	var srvs []*amltest.Server
	var eps []amlpool.Endpoint
	for i, tier := range []int{0, 0, 1, 1, 1} {
		cfg := amltest.Config{Name: fmt.Sprint("ep", i)}
		if tier == 0 {
			cfg.Fault = fail.Fault
		}
		s := amltest.NewServer(cfg)
		t.Cleanup(s.Close)
		ep := s.Endpoint()
		ep.Tier = tier
		srvs, eps = append(srvs, s), append(eps, ep)
	}
	c := newClient(t, eps, amlpool.WithEjection(2, time.Hour), amlpool.WithBackoff(amlpool.Backoff{Initial: time.Microsecond, Max: time.Microsecond}))
	for range 10 {
		_, err := c.Do(context.Background(), []byte(body))
		require.NoError(t, err)
	}
	st := c.Stats()
	require.True(t, st.Endpoints[0].Ejected)
	require.True(t, st.Endpoints[1].Ejected)
	before := srvs[0].Stats().Requests + srvs[1].Stats().Requests
	assert.LessOrEqual(t, before, int64(4), "two failures each, then ejected")

	for range 50 {
		_, err := c.Do(context.Background(), []byte(body))
		require.NoError(t, err)
	}
	assert.Equal(t, before, srvs[0].Stats().Requests+srvs[1].Stats().Requests, "no call to the ejected tier")
	var tier1 int64
	for _, s := range srvs[2:] {
		tier1 += s.Stats().Scored
	}
	assert.EqualValues(t, 60, tier1, "every call served by tier 1")
}

// SetEndpoints moves a kept endpoint to another tier: calls follow, and
// Stats shows it.
func TestSetEndpointsChangesTiers(t *testing.T) {
	srvs, eps := fakes(t, 0, 2, 2)
	eps[1].Tier = 1
	c := newClient(t, eps)
	require.Empty(t, hammer(t, c, 1, 10))
	assert.EqualValues(t, 10, srvs[0].Stats().Scored)
	assert.Zero(t, srvs[1].Stats().Requests)

	eps[0].Tier, eps[1].Tier = 2, 0
	require.NoError(t, c.SetEndpoints(eps))
	require.Empty(t, hammer(t, c, 1, 10))
	assert.EqualValues(t, 10, srvs[0].Stats().Scored, "ep0 now takes only the overflow")
	assert.EqualValues(t, 10, srvs[1].Stats().Scored)
	st := c.Stats()
	assert.Equal(t, 2, st.Endpoints[0].Tier)
	assert.Equal(t, 0, st.Endpoints[1].Tier)
	assert.EqualValues(t, 10, st.Endpoints[0].Calls, "a kept endpoint keeps its counters")
}

func TestEndpointTierIsChecked(t *testing.T) {
	_, eps := fakes(t, 0, 1)
	for _, tier := range []int{-1, amlpool.MaxTier + 1, 1 << 40} {
		e := eps[0]
		e.Tier = tier
		_, err := amlpool.New([]amlpool.Endpoint{e})
		var ce *amlpool.ConfigError
		require.ErrorAs(t, err, &ce, "tier %d", tier)
		assert.Equal(t, "Tier", ce.Field)
		assert.Contains(t, ce.Problem, fmt.Sprint(tier))
	}
	e := eps[0]
	e.Tier = amlpool.MaxTier
	c := newClient(t, []amlpool.Endpoint{e})
	assert.Equal(t, amlpool.MaxTier, c.Stats().Endpoints[0].Tier)
}

// A Limiter is offered the endpoint the call picked, then the others
// lowest tier first, so that its preference for earlier candidates keeps
// tier order across the fleet.
func TestLimiterCandidatesGoLowestTierFirst(t *testing.T) {
	var eps []amlpool.Endpoint
	for _, e := range []struct {
		name string
		tier int
	}{{"c", 2}, {"a", 0}, {"b", 1}, {"d", 0}} {
		s := amltest.NewServer(amltest.Config{Name: e.name})
		t.Cleanup(s.Close)
		ep := s.Endpoint()
		ep.Tier = e.tier
		eps = append(eps, ep)
	}
	lim := &stubLimiter{pick: func([]amlpool.LimitedEndpoint) int { return 0 }}
	c := newClient(t, eps, amlpool.WithLimiter(lim), amlpool.WithBalancer(firstWithRoom{}))
	_, err := c.Do(context.Background(), scoreBody)
	require.NoError(t, err)
	require.Len(t, lim.asked, 1)
	var names []string
	for _, cand := range lim.asked[0] {
		names = append(names, cand.Name)
	}
	assert.Equal(t, []string{"a", "d", "b", "c"}, names)
}

// An Endpoint shows its Tier when it has one, and prints, logs and encodes
// as before when it has none.
func TestEndpointShowsItsTierWhenSet(t *testing.T) {
	shown := func(e amlpool.Endpoint) (s, js, logged string) {
		b, err := json.Marshal(e)
		require.NoError(t, err)
		var buf bytes.Buffer
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("endpoint", "ep", e)
		return e.String(), string(b), buf.String()
	}
	e := amlpool.Endpoint{Name: "far", URL: "https://h/x", APIKey: "k", Tier: 2}
	s, js, logged := shown(e)
	assert.Contains(t, s, " Tier:2}")
	assert.Contains(t, js, `"Tier":2`)
	assert.Contains(t, logged, `"tier":2`)
	e.Tier = 0
	s, js, logged = shown(e)
	assert.NotContains(t, s, "Tier")
	assert.NotContains(t, js, "Tier")
	assert.NotContains(t, logged, "tier")
}
