package redislimit

import (
	"context"
	"log/slog"
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

// The fault matrix on a real redis-server. Each test breaks Redis in one way
// while leases are held or calls run, and checks the documented behaviour:
// the fallback engages and disengages by itself, leases are re-registered,
// nothing is left behind.

func realLimiter(t *testing.T, rdb *redis.Client, opts ...Option) (*Limiter, *redistest.LogBuffer) {
	t.Helper()
	logs := &redistest.LogBuffer{}
	opts = append([]Option{WithPool("faults"), WithLogger(slog.New(slog.NewTextHandler(logs, nil))),
		WithTTL(2 * time.Second), WithProbeInterval(100 * time.Millisecond)}, opts...)
	l, err := New(rdb, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l, logs
}

// noImmortalKeys fails the test if any of the pool's keys has no TTL.
func noImmortalKeys(t *testing.T, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	for _, k := range rdb.Keys(ctx, "amlpool:*").Val() {
		if pttl := rdb.PTTL(ctx, k).Val(); pttl == -1 {
			t.Errorf("key %s has no TTL", k)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 20*time.Second, 5*time.Millisecond, what)
}

func TestFaultRedisRestartedEmpty(t *testing.T) {
	s := redistest.Start(t)
	rdb := s.Client(t)
	l, logs := realLimiter(t, rdb)
	ctx := testCtx(t)
	key := newKeyspace("faults").endpoint("a")

	var held []amlpool.Lease
	for range 3 {
		ls, err := l.Acquire(ctx, eps(6))
		require.NoError(t, err)
		held = append(held, ls)
	}
	require.EqualValues(t, 3, rdb.ZCard(ctx, key).Val())

	s.Kill()
	// Calls go on while Redis is down: the failure mode grants them.
	ls, err := l.Acquire(ctx, eps(6))
	require.NoError(t, err, "a Redis outage must not fail the call under FailStatic")
	held = append(held, ls)
	assert.True(t, l.Stats().Fallback)
	assert.Contains(t, logs.String(), "Redis unavailable")

	s.Restart(t) // empty: no persistence
	waitFor(t, "fallback never ended after Redis came back", func() bool { return !l.Stats().Fallback })
	waitFor(t, "the end of the fallback was not logged", func() bool { return strings.Contains(logs.String(), "Redis is back") })
	// Every call still in flight counts again, the one taken in fallback too.
	waitFor(t, "held leases not re-registered", func() bool { return rdb.ZCard(ctx, key).Val() == 4 })
	// The tick's script puts leases back before the tick counts them lost.
	waitFor(t, "leases Redis forgot while their calls ran were not counted lost", func() bool { return l.Stats().Lost >= 3 })
	noImmortalKeys(t, rdb)

	for _, ls := range held {
		ls.Release()
	}
	waitFor(t, "released leases left in Redis", func() bool { return rdb.Exists(ctx, key).Val() == 0 })
	require.NoError(t, l.Close())
	assert.Equal(t, []string{l.keys.done(l.proc)}, rdb.Keys(ctx, "amlpool:*").Val(), "keys left after Close, its goodbye aside")
}

func TestFaultFlushAll(t *testing.T) {
	s := redistest.Start(t)
	rdb := s.Client(t)
	l, _ := realLimiter(t, rdb, WithTTL(time.Second))
	ctx := testCtx(t)
	key := newKeyspace("faults").endpoint("a")
	ls, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	require.NoError(t, rdb.FlushAll(ctx).Err()) // data loss, or failover to a stale replica
	// The next renewal tick (a third of the TTL) puts the lease back, so a
	// second process still finds the endpoint full.
	waitFor(t, "lease not re-registered after FLUSHALL", func() bool { return rdb.ZCard(ctx, key).Val() == 1 })
	// The tick's script puts the lease back before the tick counts it lost.
	waitFor(t, "the lost lease was not counted", func() bool { return l.Stats().Lost >= 1 })
	assert.EqualValues(t, 1, l.Stats().Lost)
	other, _ := realLimiter(t, rdb)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = other.Acquire(short, eps(1))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	ls.Release()
}

func TestFaultScriptFlush(t *testing.T) {
	s := redistest.Start(t)
	// Generous timeouts: this test is about NOSCRIPT, and a slow reply on a
	// loaded CI host must not count as a failure here.
	opts := redistest.Options(s.Addr)
	opts.ReadTimeout, opts.WriteTimeout = time.Second, time.Second
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	l, _ := realLimiter(t, rdb, WithTimeout(time.Second))
	ctx := testCtx(t)
	for i := range 20 {
		if i%5 == 0 {
			require.NoError(t, rdb.ScriptFlush(ctx).Err())
		}
		ls, err := l.Acquire(ctx, eps(2))
		require.NoError(t, err)
		ls.Release()
	}
	st := l.Stats()
	assert.Zero(t, st.Errors, "NOSCRIPT must be answered by EVAL, not counted as a failure")
	assert.Zero(t, st.Fallbacks)
}

// TestFaultClientPause: Redis accepts connections but answers no write for
// longer than the timeout. Calls through a Client go on under the fallback,
// which ends by itself when the pause does.
func TestFaultClientPause(t *testing.T) {
	s := redistest.Start(t)
	rdb := s.Client(t)
	l, logs := realLimiter(t, rdb)
	ep := amltest.NewServer(amltest.Config{Name: "paused", MaxConcurrentCalls: 4, Latency: 20 * time.Millisecond})
	defer ep.Close()
	c, err := amlpool.New([]amlpool.Endpoint{ep.Endpoint()}, amlpool.WithLimiter(l))
	require.NoError(t, err)
	defer c.Close()

	ctx := testCtx(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var calls int
	var failures []error
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := c.Do(ctx, body)
				mu.Lock()
				calls++
				if err != nil {
					failures = append(failures, err)
				}
				mu.Unlock()
			}
		}()
	}
	waitFor(t, "no call went through", func() bool { mu.Lock(); defer mu.Unlock(); return calls > 10 })

	admin := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer admin.Close()
	require.NoError(t, admin.Do(ctx, "CLIENT", "PAUSE", 1500, "WRITE").Err())
	waitFor(t, "fallback never engaged during the pause", func() bool { return l.Stats().Fallback })
	waitFor(t, "fallback never disengaged after the pause", func() bool { return !l.Stats().Fallback })
	close(stop)
	wg.Wait()

	assert.Empty(t, failures, "calls failed while Redis was paused")
	assert.Contains(t, logs.String(), "Redis unavailable")
	waitFor(t, "the end of the fallback was not logged", func() bool { return strings.Contains(logs.String(), "Redis is back") })
	// One process alone: its fallback share is the whole cap.
	assert.LessOrEqual(t, ep.Stats().PeakInFlight, int64(4))
	noImmortalKeys(t, rdb)
	require.NoError(t, c.Close())
	require.NoError(t, l.Close())
	assert.Equal(t, []string{l.keys.done(l.proc)}, rdb.Keys(ctx, "amlpool:*").Val(), "keys left after Close, its goodbye aside")
}
