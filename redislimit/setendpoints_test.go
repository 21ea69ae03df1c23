package redislimit

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/internal/redistest"
)

// replica is one process's Client and Limiter, in a test.
type replica struct {
	rdb redis.UniversalClient
	lim *Limiter
	c   *amlpool.Client
}

func newReplica(t *testing.T, rdb redis.UniversalClient, eps []amlpool.Endpoint, opts ...Option) *replica {
	t.Helper()
	lim, err := New(rdb, append([]Option{WithPool("set")}, opts...)...)
	require.NoError(t, err)
	c, err := amlpool.New(eps, amlpool.WithLimiter(lim))
	require.NoError(t, err)
	r := &replica{rdb: rdb, lim: lim, c: c}
	t.Cleanup(func() {
		_ = c.Close()
		_ = lim.Close()
	})
	return r
}

// traffic runs callers goroutines calling c until stop, and collects the
// errors of calls that failed before it.
type traffic struct {
	stop context.CancelFunc
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func startCalls(t *testing.T, c *amlpool.Client, callers int) *traffic {
	ctx, stop := context.WithCancel(context.Background())
	tr := &traffic{stop: stop}
	t.Cleanup(func() { tr.end() }) // before the Client's Close: cleanups run last first
	for range callers {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			for ctx.Err() == nil {
				_, err := c.Do(ctx, body)
				if err != nil && ctx.Err() == nil {
					tr.mu.Lock()
					tr.errs = append(tr.errs, err)
					tr.mu.Unlock()
				}
				if errors.Is(err, amlpool.ErrClosed) {
					return // the test ended early
				}
			}
		}()
	}
	return tr
}

func (tr *traffic) end() []error {
	tr.stop()
	tr.wg.Wait()
	return tr.errs
}

// SetEndpoints with a shared Limiter: an endpoint that every replica adds
// joins the fleet's caps at once; one they all remove takes no new attempt
// once SetEndpoints has returned, its leases go back as its calls end, and
// the Limiters stop announcing it.
func TestSetEndpointsWithSharedCaps(t *testing.T) {
	rs := redistest.Start(t)
	const mcc = 4
	var srvs []*amltest.Server
	var all []amlpool.Endpoint
	for _, name := range []string{"a", "b", "c"} {
		s := amltest.NewServer(amltest.Config{Name: name, MaxConcurrentCalls: mcc, Latency: 20 * time.Millisecond})
		t.Cleanup(s.Close)
		srvs = append(srvs, s)
		e := s.Endpoint()
		e.MaxConcurrentCalls = mcc
		all = append(all, e)
	}
	opts := []Option{WithTTL(2 * time.Second), WithRenewInterval(100 * time.Millisecond), WithTimeout(time.Second)}
	var reps []*replica
	var trs []*traffic
	for range 2 {
		o := redistest.Options(rs.Addr)
		o.ReadTimeout, o.WriteTimeout = time.Second, time.Second
		rdb := redis.NewClient(o)
		t.Cleanup(func() { _ = rdb.Close() })
		r := newReplica(t, rdb, all[:2], opts...)
		reps = append(reps, r)
		trs = append(trs, startCalls(t, r.c, 12)) // 24 callers for 8, then 12, slots
	}
	ctx := testCtx(t)
	_, err := srvs[0].WaitFor(ctx, func(s amltest.Stats) bool { return s.Scored > 20 })
	require.NoError(t, err)

	for _, r := range reps {
		require.NoError(t, r.c.SetEndpoints(all))
	}
	_, err = srvs[2].WaitFor(ctx, func(s amltest.Stats) bool { return s.Scored > 50 })
	require.NoError(t, err, "the added endpoint takes calls")

	for _, r := range reps {
		require.NoError(t, r.c.SetEndpoints(all[1:]))
	}
	// Calls already on a finish; nothing starts there any more.
	bound := srvs[0].Stats().Requests
	for _, r := range reps {
		for _, e := range r.c.Stats().Endpoints {
			if e.Removed {
				bound += int64(e.InFlight) // a, listed while it drains
			}
		}
	}
	_, err = srvs[1].WaitFor(ctx, func(s amltest.Stats) bool { return s.Scored > 400 })
	require.NoError(t, err)
	assert.LessOrEqual(t, srvs[0].Stats().Requests, bound, "attempts started on a removed endpoint")

	key := newKeyspace("set").endpoint(endpointID(all[0].URL))
	rdb := rs.Client(t)
	waitFor(t, "a's leases given back", func() bool { return rdb.Exists(ctx, key).Val() == 0 })
	aID := endpointID(all[0].URL)
	waitFor(t, "a forgotten and no longer announced", func() bool {
		for _, r := range reps {
			for _, e := range r.lim.Stats().Endpoints {
				if e.ID == aID {
					return false
				}
			}
		}
		for _, m := range rdb.ZRange(ctx, newKeyspace("set").limits, 0, -1).Val() {
			if strings.HasPrefix(m, aID+":") {
				return false
			}
		}
		return true
	})

	for _, tr := range trs {
		assert.Empty(t, tr.end())
	}
	for i, s := range srvs {
		st := s.Stats()
		assert.LessOrEqual(t, st.PeakInFlight, int64(mcc), "endpoint %d over its cap fleet-wide", i)
		assert.Zero(t, st.Throttled, "endpoint %d throttled", i)
	}
}
