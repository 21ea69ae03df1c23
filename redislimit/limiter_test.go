package redislimit

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/internal/clock"
)

// testTimeout bounds every wait in these tests; none should come near it.
const testTimeout = 10 * time.Second

func eps(limits ...int) []amlpool.LimitedEndpoint {
	out := make([]amlpool.LimitedEndpoint, len(limits))
	for i, n := range limits {
		out[i] = amlpool.LimitedEndpoint{ID: string(rune('a' + i)), Name: "ep" + string(rune('a'+i)), Limit: n}
	}
	return out
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// fixture is miniredis plus a fake clock driving both the Limiters' timers
// and the server's TIME and TTLs.
type fixture struct {
	m   *miniredis.Miniredis
	rdb *redis.Client
	clk *clock.Fake
}

func newFixture(t *testing.T) *fixture {
	m := miniredis.RunT(t)
	clk := clock.NewFake()
	m.SetTime(clk.Now())
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	return &fixture{m: m, rdb: rdb, clk: clk}
}

// advance moves every clock by d.
func (f *fixture) advance(d time.Duration) {
	f.m.SetTime(f.clk.Now().Add(d))
	f.m.FastForward(d)
	f.clk.Advance(d)
}

func (f *fixture) limiter(t *testing.T, opts ...Option) *Limiter {
	// A long timeout: a loaded host must not fail a round trip here, whose
	// retry would wait for the fake clock.
	opts = append([]Option{WithClock(f.clk), WithPool("t"), WithTimeout(5 * time.Second)}, opts...)
	l, err := New(f.rdb, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// settle waits until n timers wait on the fake clock: one per keeper, which
// arms its next only once its tick is over, and one per pump with calls
// waiting, which arms its next only once its pass is over (tests with calls
// waiting count those in n). A Limiter's only other timer, listen's, runs
// while its subscription fails, which no test that calls settle makes
// happen.
func (f *fixture) settle(t *testing.T, n int) {
	t.Helper()
	require.True(t, f.clk.WaitTimers(n, testCtx(t).Done()), "keepers never went back to sleep")
}

// acquireWaiting starts an Acquire that must wait in l's line, returns once
// it does, and sends the Acquire's error when it ends; a lease it gets is
// released at once.
func acquireWaiting(t *testing.T, ctx context.Context, l *Limiter, cands []amlpool.LimitedEndpoint) <-chan error {
	t.Helper()
	got := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(ctx, cands)
		if err == nil {
			ls.Release()
		}
		got <- err
	}()
	require.Eventually(t, func() bool { return l.Stats().Waiting == 1 }, testTimeout, time.Millisecond)
	return got
}

func TestAcquireAndRelease(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	ctx := testCtx(t)
	a, err := l.Acquire(ctx, eps(2))
	require.NoError(t, err)
	b, err := l.Acquire(ctx, eps(2))
	require.NoError(t, err)
	assert.Equal(t, 0, a.Index())
	assert.EqualValues(t, 2, f.rdb.ZCard(ctx, "amlpool:{t}:ep:a").Val())
	assert.Equal(t, 2, l.Stats().Held)

	a.Release()
	a.Release() // idempotent
	b.Release()
	require.Eventually(t, func() bool { return !f.m.Exists("amlpool:{t}:ep:a") }, testTimeout, time.Millisecond,
		"released leases still in Redis")
	assert.Equal(t, 0, l.Stats().Held)
	assert.Zero(t, l.Stats().Lost)
}

func TestAcquireTakesFirstCandidateWithRoom(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	ctx := testCtx(t)
	cands := eps(1, 1)
	a, err := l.Acquire(ctx, cands)
	require.NoError(t, err)
	b, err := l.Acquire(ctx, cands)
	require.NoError(t, err)
	assert.Equal(t, 0, a.Index())
	assert.Equal(t, 1, b.Index())
}

func TestReplicasShareTheCap(t *testing.T) {
	f := newFixture(t)
	l1, l2 := f.limiter(t), f.limiter(t)
	f.subscribed(t, l1.keys.grant, 2) // l2 hears of the grant below
	ctx := testCtx(t)
	a, err := l1.Acquire(ctx, eps(2))
	require.NoError(t, err)
	_, err = l2.Acquire(ctx, eps(2))
	require.NoError(t, err)

	// The cap of 2 is used up across both: l2's next call waits until l1
	// releases.
	got := acquireWaiting(t, ctx, l2, eps(2))
	select {
	case err := <-got:
		t.Fatalf("Acquire past the fleet's cap returned %v", err)
	default:
	}
	a.Release()
	require.NoError(t, <-got, "a release in one replica must let the other's waiting call in")
}

// The replica count is as fresh as the last round trip, not the last tick:
// a replica that ticked before another started sees it at its next acquire.
func TestReplicaCountIsFresh(t *testing.T) {
	f := newFixture(t)
	l1 := f.limiter(t)
	f.settle(t, 1)
	require.Equal(t, 1, l1.Stats().Replicas)
	f.limiter(t)
	f.settle(t, 2)
	assert.Equal(t, 1, l1.Stats().Replicas, "no tick of l1's since")
	ls, err := l1.TryAcquire(testCtx(t), eps(1))
	require.NoError(t, err)
	assert.Equal(t, 2, l1.Stats().Replicas)
	ls.Release()
}

func TestTryAcquireNeverWaits(t *testing.T) {
	f := newFixture(t)
	l1, l2 := f.limiter(t), f.limiter(t)
	var _ amlpool.TryAcquirer = l1
	f.subscribed(t, l1.keys.grant, 2) // l2 hears of the grant below
	ctx := testCtx(t)
	a, err := l1.TryAcquire(ctx, eps(1, 1))
	require.NoError(t, err)
	b, err := l2.TryAcquire(ctx, eps(1, 1))
	require.NoError(t, err)
	assert.Equal(t, 0, a.Index())
	assert.Equal(t, 1, b.Index(), "the first candidate with room, fleet-wide")

	// Full across both replicas: no lease, no error, and nothing waits.
	ls, err := l2.TryAcquire(ctx, eps(1, 1))
	require.NoError(t, err)
	assert.Nil(t, ls)
	assert.Zero(t, l2.Stats().Waiting)

	// A call waiting in line keeps its place: a try does not jump it.
	got := acquireWaiting(t, ctx, l2, eps(1))
	b.Release()
	ls, err = l2.TryAcquire(ctx, eps(1, 1))
	require.NoError(t, err)
	assert.Nil(t, ls, "a try took a slot while a call of this process waited")
	a.Release()
	require.NoError(t, <-got)

	require.NoError(t, l1.Close())
	_, err = l1.TryAcquire(ctx, eps(1))
	assert.ErrorIs(t, err, amlpool.ErrClosed)
}

func TestWaitingCallsAreServedInOrder(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	ctx := testCtx(t)
	first, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)

	const n = 5
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ls, err := l.Acquire(ctx, eps(1))
			if !assert.NoError(t, err) {
				return
			}
			order <- i
			ls.Release()
		}()
		// Queue them one at a time so their order is known.
		require.Eventually(t, func() bool { return l.Stats().Waiting == i+1 }, testTimeout, time.Millisecond)
	}
	first.Release()
	wg.Wait()
	close(order)
	var got []int
	for i := range order {
		got = append(got, i)
	}
	assert.Equal(t, []int{0, 1, 2, 3, 4}, got)
}

func TestCancelWhileWaiting(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	held, err := l.Acquire(testCtx(t), eps(1))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(testCtx(t))
	got := acquireWaiting(t, ctx, l, eps(1))
	cancel()
	assert.ErrorIs(t, <-got, context.Canceled)
	held.Release()
	assert.Eventually(t, func() bool { s := l.Stats(); return s.Held == 0 && s.Waiting == 0 }, testTimeout, time.Millisecond)
	assert.Eventually(t, func() bool { return !f.m.Exists("amlpool:{t}:ep:a") }, testTimeout, time.Millisecond,
		"a cancelled wait left a lease behind")
}

func TestCloseEndsWaitsAndLeavesNothing(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	ctx := testCtx(t)
	held, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	got := acquireWaiting(t, ctx, l, eps(1))
	f.settle(t, 1) // the first heartbeat is in

	require.NoError(t, l.Close())
	assert.ErrorIs(t, <-got, amlpool.ErrClosed)
	assert.ErrorIs(t, l.Close(), amlpool.ErrClosed)
	_, err = l.Acquire(ctx, eps(1))
	assert.ErrorIs(t, err, amlpool.ErrClosed)
	held.Release() // after Close: a no-op
	assert.Equal(t, []string{l.keys.done(l.proc)}, f.m.Keys(), "keys left after Close, its goodbye aside")
}

// Close deletes every lease of its process, also one Redis holds without the
// Limiter knowing (an acquire that ran there with its reply lost), and
// nothing of another process's.
func TestCloseDeletesLeasesItDoesNotKnowOf(t *testing.T) {
	f := newFixture(t)
	l, other := f.limiter(t), f.limiter(t)
	ctx := testCtx(t)
	_, err := l.Acquire(ctx, eps(3))
	require.NoError(t, err)
	theirs, err := other.Acquire(ctx, eps(3))
	require.NoError(t, err)
	key := "amlpool:{t}:ep:a"
	orphan := l.proc + ":lost-reply"
	_, err = f.m.ZAdd(key, float64(f.clk.Now().Add(time.Minute).UnixMilli()), orphan)
	require.NoError(t, err)
	f.settle(t, 2) // both heartbeats are in

	require.NoError(t, l.Close())
	members, err := f.m.ZMembers(key)
	require.NoError(t, err)
	assert.Equal(t, []string{theirs.(*lease).id}, members, "the closed process left a lease, or took another's")
	procs, err := f.m.ZMembers("amlpool:{t}:members")
	require.NoError(t, err)
	assert.Equal(t, []string{other.proc}, procs)
}

func TestRenewalKeepsLongCallsLeases(t *testing.T) {
	f := newFixture(t)
	ttl := 3 * time.Second
	l := f.limiter(t, WithTTL(ttl), WithRenewInterval(time.Second), WithTimeout(time.Second))
	ls, err := l.Acquire(testCtx(t), eps(1))
	require.NoError(t, err)
	f.settle(t, 1)
	for range 10 { // ten seconds: three TTLs
		f.advance(time.Second)
		f.settle(t, 1)
	}
	s := l.Stats()
	assert.Zero(t, s.Lost)
	assert.GreaterOrEqual(t, s.Renewals, int64(5))
	assert.True(t, f.m.Exists("amlpool:{t}:ep:a"))
	// Another replica still finds the endpoint full.
	other := f.limiter(t)
	ctx, cancel := context.WithTimeout(testCtx(t), 50*time.Millisecond)
	defer cancel()
	_, err = other.Acquire(ctx, eps(1))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	ls.Release()
}

// A fallback tells the keeper to probe from then on. The word may come as
// the keeper is about to tick (the renew timer has fired): its tick, a
// probe then, may reach Redis and end the fallback before the keeper reads
// the word. Read then, it is stale: the keeper must go on ticking every
// renew interval, not wait a probe interval, or, with a probe interval
// longer than the TTL, its leases and its heartbeat expire in Redis while
// its calls run. The test leaves the word as that race does: unread, with
// no fallback.
func TestStaleFallbackSignalKeepsTheRenewInterval(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	l := f.limiter(t, WithProbeInterval(time.Minute))
	ls, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	defer ls.Release()
	f.settle(t, 1)

	l.retry <- struct{}{}
	require.Eventually(t, func() bool { return len(l.retry) == 0 }, testTimeout, time.Millisecond)
	require.False(t, l.Stats().Fallback)
	trips := l.Stats().RoundTrips
	for range 4 { // past the TTL
		f.advance(l.cfg.renew)
		f.settle(t, 1)
	}
	assert.Equal(t, trips+4, l.Stats().RoundTrips, "a tick every renew interval")
	other, err := f.limiter(t).TryAcquire(ctx, eps(1))
	require.NoError(t, err)
	assert.Nil(t, other, "the lease of a running call expired in Redis")
}

func TestExpiredLeaseCountsAsLost(t *testing.T) {
	f := newFixture(t)
	// A renew interval far past the TTL cannot be set; stop the keeper's
	// renewals by never advancing its clock, and age only Redis.
	l := f.limiter(t, WithTTL(2*time.Second), WithRenewInterval(500*time.Millisecond), WithTimeout(time.Second))
	ls, err := l.Acquire(testCtx(t), eps(1))
	require.NoError(t, err)
	f.settle(t, 1)
	f.m.SetTime(f.clk.Now().Add(3 * time.Second))
	f.m.FastForward(3 * time.Second)
	ls.Release()
	assert.Eventually(t, func() bool { return l.Stats().Lost == 1 }, testTimeout, time.Millisecond)
}

func TestLostLeasesAreReregistered(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t, WithTTL(3*time.Second), WithRenewInterval(time.Second), WithTimeout(time.Second))
	ls, err := l.Acquire(testCtx(t), eps(1))
	require.NoError(t, err)
	f.settle(t, 1)
	f.m.FlushAll() // a restart without persistence, a failover to a stale replica
	f.advance(time.Second)
	f.settle(t, 1)
	assert.True(t, f.m.Exists("amlpool:{t}:ep:a"), "a lease in flight was not registered again")
	assert.EqualValues(t, 1, l.Stats().Lost)
	ls.Release()
}

func TestMismatchedLimitsAreReported(t *testing.T) {
	f := newFixture(t)
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil))
	l1 := f.limiter(t, WithLogger(log))
	l2 := f.limiter(t)
	ctx := testCtx(t)
	a, err := l1.Acquire(ctx, eps(4))
	require.NoError(t, err)
	b, err := l2.Acquire(ctx, eps(6))
	require.NoError(t, err)
	f.settle(t, 2)
	f.advance(DefaultTTL / 3)
	f.settle(t, 2)
	f.advance(DefaultTTL / 3)
	f.settle(t, 2)
	assert.Eventually(t, func() bool { return l1.Stats().Mismatches > 0 }, testTimeout, time.Millisecond)
	s := l1.Stats()
	require.Len(t, s.Endpoints, 1)
	assert.Equal(t, []int{4, 6}, s.Endpoints[0].Limits)
	mu.Lock()
	assert.Contains(t, buf.String(), "disagree")
	mu.Unlock()
	a.Release()
	b.Release()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func TestFailureModes(t *testing.T) {
	tests := []struct {
		name     string
		mode     FailureMode
		expected int // WithExpectedReplicas
		grant    int // leases one process gets of a cap of 5 with 2 replicas seen
	}{
		{"static", FailStatic, 1, 3},
		{"static, 4 replicas expected", FailStatic, 4, 2},
		{"open", FailOpen, 1, 5},
		{"closed", FailClosed, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			l := f.limiter(t, WithFailureMode(tt.mode), WithExpectedReplicas(tt.expected))
			_ = f.limiter(t) // a second replica
			f.settle(t, 2)
			f.advance(DefaultTTL / 3) // both heartbeats seen
			f.settle(t, 2)
			require.Equal(t, 2, l.Stats().Replicas)

			f.m.SetError("LOADING Redis is loading the dataset in memory")
			// Three failed round trips in a row (here the keeper's ticks)
			// and the Limiter gives up on Redis.
			require.Eventually(t, func() bool {
				f.advance(DefaultTTL / 3)
				return l.Stats().Fallback
			}, testTimeout, 10*time.Millisecond)
			var leases []amlpool.Lease
			for range 5 {
				ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Millisecond)
				ls, err := l.Acquire(ctx, eps(5))
				cancel()
				if err != nil {
					if tt.mode == FailClosed {
						assert.ErrorIs(t, err, amlpool.ErrNoCapacity)
					} else {
						assert.ErrorIs(t, err, context.DeadlineExceeded)
					}
					continue
				}
				leases = append(leases, ls)
			}
			assert.Len(t, leases, tt.grant)
			s := l.Stats()
			assert.True(t, s.Fallback)
			assert.EqualValues(t, 1, s.Fallbacks)

			// Redis is back: the next probe ends the fallback and registers
			// the leases taken meanwhile.
			f.m.SetError("")
			// The keeper reschedules to the probe interval on its own time:
			// advance until a probe has run.
			assert.Eventually(t, func() bool {
				f.advance(DefaultProbeInterval)
				return !l.Stats().Fallback
			}, testTimeout, 10*time.Millisecond)
			if tt.grant > 0 {
				assert.EqualValues(t, tt.grant, f.rdb.ZCard(testCtx(t), "amlpool:{t}:ep:a").Val(), "%v %+v", f.rdb.ZRangeWithScores(testCtx(t), "amlpool:{t}:ep:a", 0, -1).Val(), l.Stats())
			}
			for _, ls := range leases {
				ls.Release()
			}
		})
	}
}

// blackHole accepts connections and never answers: Redis hung.
func blackHole(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

func TestTimeoutBoundsAHungRedisWhateverTheClient(t *testing.T) {
	tests := []struct {
		name string
		opts redis.Options
	}{
		// go-redis defaults but a 1 s read timeout, so the abandoned call
		// ends soon after the test.
		{"ctx ignored", redis.Options{ReadTimeout: time.Second, MaxRetries: -1}},
		{"ctx honoured", redis.Options{ReadTimeout: time.Second, MaxRetries: -1, ContextTimeoutEnabled: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.Addr = blackHole(t)
			rdb := redis.NewClient(&o)
			defer rdb.Close()
			l, err := New(rdb, WithPool("t"), WithoutReleaseNotify(), WithTimeout(50*time.Millisecond),
				WithExpectedReplicas(1))
			require.NoError(t, err)
			defer l.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			// Well before ctx's 500 ms and the client's 1 s: the 50 ms
			// timeout fails the round trip and the fallback grants.
			ls, err := l.Acquire(ctx, eps(4))
			require.NoError(t, err, "a hung Redis must not hold the call past the limiter's timeout")
			assert.True(t, l.Stats().Fallback)
			ls.Release()
		})
	}
}

// A replica that has never reached Redis does not know how many others
// share the caps: FailStatic gives it no share unless WithExpectedReplicas
// says how many to count on, since any share, taken by enough replicas,
// could overload an endpoint.
func TestFailStaticNeverSeenTheFleet(t *testing.T) {
	tests := []struct {
		name  string
		opts  []Option
		grant int // of a cap of 8
	}{
		{"size unknown", nil, 0},
		{"4 expected", []Option{WithExpectedReplicas(4)}, 2},
		{"open", []Option{WithFailureMode(FailOpen)}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := redis.NewClient(&redis.Options{Addr: blackHole(t), ReadTimeout: time.Second, MaxRetries: -1, ContextTimeoutEnabled: true})
			defer rdb.Close()
			l, err := New(rdb, append([]Option{WithPool("t"), WithoutReleaseNotify(), WithTimeout(20 * time.Millisecond)}, tt.opts...)...)
			require.NoError(t, err)
			defer l.Close()
			// Into the fallback first, however long a loaded host takes to
			// fail three round trips.
			waitFor(t, "the fallback", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				defer cancel()
				if ls, err := l.Acquire(ctx, eps(8)); err == nil {
					ls.Release()
				}
				return l.Stats().Fallback
			})
			var held []amlpool.Lease
			for range 8 {
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				ls, err := l.Acquire(ctx, eps(8))
				cancel()
				if err != nil {
					assert.ErrorIs(t, err, context.DeadlineExceeded, "no share: the call waits")
					break
				}
				held = append(held, ls)
			}
			assert.Len(t, held, tt.grant)
			s := l.Stats()
			assert.True(t, s.Fallback)
			assert.Zero(t, s.Replicas, "never seen")
			require.Len(t, s.Endpoints, 1)
			assert.Equal(t, tt.grant, s.Endpoints[0].Share)
			for _, ls := range held {
				ls.Release()
			}
		})
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	tests := []struct {
		name  string
		opt   Option
		field string
	}{
		{"empty pool", WithPool(""), "redislimit.WithPool"},
		{"brace in pool", WithPool("a}b"), "redislimit.WithPool"},
		{"tiny ttl", WithTTL(time.Millisecond), "redislimit.WithTTL"},
		{"renew past ttl", WithRenewInterval(time.Minute), "redislimit.WithRenewInterval"},
		{"zero timeout", WithTimeout(0), "redislimit.WithTimeout"},
		{"zero probe", WithProbeInterval(0), "redislimit.WithProbeInterval"},
		{"bad mode", WithFailureMode(7), "redislimit.WithFailureMode"},
		{"no replicas", WithExpectedReplicas(0), "redislimit.WithExpectedReplicas"},
		{"backoff inverted", WithBackoff(time.Second, time.Millisecond), "redislimit.WithBackoff"},
		{"no handoff", WithHandoff(0), "redislimit.WithHandoff"},
		{"negative handoff", WithHandoff(-time.Second), "redislimit.WithHandoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(rdb, tt.opt)
			var ce *amlpool.ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tt.field, ce.Field)
			assert.ErrorIs(t, err, amlpool.ErrInvalidConfig)
		})
	}
	_, err := New(nil)
	assert.ErrorIs(t, err, amlpool.ErrInvalidConfig)
}
