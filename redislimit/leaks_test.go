package redislimit

import (
	"bytes"
	"context"
	"errors"
	"github.com/amlpool/amlpool/internal/clock"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
)

// A slot of the fleet's must not stay taken in Redis, by a lease no call
// holds, for the rest of a TTL while Redis answers. Each test here leaves
// one such lease behind in a way a healthy Redis allows, on an endpoint of
// cap 1, and checks that the next tick, or the release, deletes it.

// processOnly is a go-redis hook's dialling and pipelines, passed on as
// they are, for the hooks here that act on single commands only.
type processOnly struct{}

func (processOnly) DialHook(next redis.DialHook) redis.DialHook { return next }
func (processOnly) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// scriptHook acts on the next run of one script, once armed: before lets
// the test hold it before it is sent; lost makes its reply go missing, as
// when the caller's ctx ends while the reply is on its way.
type scriptHook struct {
	processOnly
	sha    string
	armed  atomic.Bool
	before func(ctx context.Context)
	lost   func()
	args   []any // the command it acted on, as sent
}

func (h *scriptHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !strings.EqualFold(cmd.Name(), "evalsha") || cmd.Args()[1] != h.sha || !h.armed.CompareAndSwap(true, false) {
			return next(ctx, cmd)
		}
		h.args = cmd.Args()
		if h.before != nil {
			h.before(ctx)
		}
		err := next(ctx, cmd)
		if err == nil && h.lost != nil {
			h.lost()
			cmd.SetErr(context.Canceled)
			return context.Canceled
		}
		return err
	}
}

// hookedClient is a client of the fixture's Redis, set up as its own is,
// that runs h. The scripts h watches are loaded first: only EVALSHA, never
// EVAL, reaches the hook.
func (f *fixture) hookedClient(t *testing.T, h redis.Hook, scripts ...*redis.Script) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: f.m.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	for _, s := range scripts {
		require.NoError(t, s.Load(testCtx(t), f.rdb).Err())
	}
	rdb.AddHook(h)
	return rdb
}

// limiterOn returns a Limiter on rdb, a client of f's Redis, with f's clock
// and a long timeout (opts may set another), closed when the test ends.
func (f *fixture) limiterOn(t *testing.T, rdb *redis.Client, opts ...Option) *Limiter {
	t.Helper()
	l, err := New(rdb, append([]Option{WithClock(f.clk), WithPool("t"), WithTimeout(5 * time.Second)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// maxSteps bounds stepUntil: far more steps than any condition here needs.
const maxSteps = 1000

// stepUntil moves f's clock on by step, and waits for n timers (settle),
// until cond holds; it fails the test, naming what it waited for, when
// cond does not hold after maxSteps steps.
func (f *fixture) stepUntil(t *testing.T, step time.Duration, n int, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		require.Less(t, i, maxSteps, "no %s after %d steps of %v", what, maxSteps, step)
		f.advance(step)
		f.settle(t, n)
	}
}

// requireRejoining fails the test unless l is in a rejoin window now.
func (f *fixture) requireRejoining(t *testing.T, l *Limiter) {
	t.Helper()
	l.mu.Lock()
	rejoining := f.clk.Now().Before(l.rejoin)
	l.mu.Unlock()
	require.True(t, rejoining, "no rejoin window")
}

// An acquire whose reply is lost (its caller gave up) may have taken a
// lease in Redis: the next tick deletes it, though one failure does not
// make a fallback.
func TestLostAcquireReplyFreedAtNextTick(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	cctx, cancel := context.WithCancel(ctx)
	h := &scriptHook{sha: acquireScript.Hash(), lost: cancel}
	l := f.limiterOn(t, f.hookedClient(t, h, acquireScript))
	other := f.limiter(t)
	f.settle(t, 2)

	h.armed.Store(true)
	_, err := l.TryAcquire(cctx, eps(1))
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, f.leases(t, "a"), 1, "the script ran: the lease is in Redis")
	require.False(t, l.Stats().Fallback)

	f.advance(l.cfg.renew)
	f.settle(t, 2)
	require.Empty(t, f.leases(t, "a"), "the lease of the lost reply outlived a tick")
	ls, err := other.TryAcquire(ctx, eps(1))
	require.NoError(t, err)
	require.NotNil(t, ls, "the endpoint's only slot is still taken")
	ls.Release()
}

// A copy of an acquire's script may reach Redis after the lease it took has
// ended: a first send that a slow network delivers after go-redis's retry
// on a new connection, and after the call released the retry's lease; or
// one sent before the acquire gave up on its reply, after the next tick
// deleted the lease it took. Run then, it must take nothing: no call would
// hold its lease, which would block the slot for a TTL.
func TestAcquireRunAfterItsLeaseEndedTakesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		lost bool // the acquire's reply is lost; else the call holds its lease and releases it
	}{{"released", false}, {"reply lost", true}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := testCtx(t)
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			h := &scriptHook{sha: acquireScript.Hash()}
			if tc.lost {
				h.lost = cancel
			}
			released := make(chan struct{}, 1)
			l := f.limiterOn(t, f.hookedClient(t, h, acquireScript), WithOnReleased(func() { released <- struct{}{} }))
			f.settle(t, 1)

			h.armed.Store(true)
			ls, err := l.TryAcquire(cctx, eps(1))
			if tc.lost {
				require.ErrorIs(t, err, context.Canceled)
				f.advance(l.cfg.renew) // the tick deletes the lease of the lost reply
				f.settle(t, 1)
			} else {
				require.NoError(t, err)
				require.NotNil(t, ls)
				ls.Release()
				<-released
			}
			require.Empty(t, f.leases(t, "a"))
			require.NotNil(t, h.args)

			require.NoError(t, f.rdb.Do(ctx, h.args...).Err(), "Redis runs a copy of the acquire")
			assert.Empty(t, f.leases(t, "a"), "a lease no call holds")
		})
	}
}

// An acquire's first and only run may reach Redis after the deletion its
// failed round trip queued: sent, its caller gave up on the reply (or its
// connection broke) before Redis ran it, and a slow network delivers it
// after the next tick deleted the lease it had not yet taken. Run then, it
// must take nothing: no call would hold its lease, which would block the
// slot for a TTL.
func TestAcquireRunAfterItsLeaseWasDeletedTakesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	cctx, cancel := context.WithCancel(ctx)
	h := &lateHook{sha: acquireScript.Hash(), reached: make(chan struct{})}
	l := f.limiterOn(t, f.hookedClient(t, h, acquireScript))
	f.settle(t, 1)

	h.armed.Store(true)
	got := make(chan error, 1)
	go func() {
		_, err := l.TryAcquire(cctx, eps(1))
		got <- err
	}()
	<-h.reached
	cancel() // the caller gives up before Redis has run the script
	require.ErrorIs(t, <-got, context.Canceled)
	f.advance(l.cfg.renew) // the tick runs the deletion the failure queued
	f.settle(t, 1)
	require.Empty(t, f.leases(t, "a"))

	require.NoError(t, f.rdb.Do(ctx, h.args...).Err(), "Redis runs the acquire late")
	assert.Empty(t, f.leases(t, "a"), "a lease no call holds")
}

// heldWrite holds the write that carries the next run of one script, once
// armed, until open is closed: the write of a command under way as the
// round trip's deadline passes, which a client that ignores ctx deadlines
// (ContextTimeoutEnabled false) goes on with for its own WriteTimeout.
type heldWrite struct {
	sha           []byte
	armed         atomic.Bool
	reached, open chan struct{}
}

func (h *heldWrite) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *heldWrite) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *heldWrite) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &heldConn{Conn: c, h: h}, nil
	}
}

type heldConn struct {
	net.Conn
	h *heldWrite
}

func (c *heldConn) Write(b []byte) (int, error) {
	if bytes.Contains(b, c.h.sha) && c.h.armed.CompareAndSwap(true, false) {
		close(c.h.reached)
		<-c.h.open
	}
	return c.Conn.Write(b)
}

// A client that ignores ctx deadlines may send an acquire after the
// Limiter gave up on it, and Redis run it more than a TTL plus WithTimeout
// after the deletion its failure queued would have marked its lease id (at
// the next tick): the deletion must come once the client is done with the
// script, or that run takes a lease no call holds, which nobody deletes
// and which blocks its slot for a TTL.
func TestAcquireSentAfterItWasGivenUpOnLeavesNoLease(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	h := &heldWrite{sha: []byte(acquireScript.Hash()), reached: make(chan struct{}), open: make(chan struct{})}
	rdb := redis.NewClient(&redis.Options{Addr: f.m.Addr(), MaxRetries: -1}) // ContextTimeoutEnabled false
	t.Cleanup(func() { _ = rdb.Close() })
	rdb.AddHook(h)
	require.NoError(t, acquireScript.Load(ctx, f.rdb).Err()) // EVALSHA: the sha is on the wire
	l := f.limiterOn(t, rdb)
	require.False(t, l.ctxAware)
	f.settle(t, 1)

	h.armed.Store(true)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		_, err := l.TryAcquire(cctx, eps(1))
		got <- err
	}()
	<-h.reached
	cancel() // the caller gives up as the write is under way
	require.ErrorIs(t, <-got, context.Canceled)
	f.advance(l.cfg.renew) // the next tick
	f.settle(t, 1)

	// The write ends, and Redis runs the script, past the mark's life.
	late := l.doneTTL() + time.Second
	f.m.SetTime(f.clk.Now().Add(late)) // Redis's clock only: no tick is due
	f.m.FastForward(late)
	close(h.open)
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 1 }, testTimeout, time.Millisecond,
		"Redis did not run the acquire")
	require.Eventually(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.pending) > 0
	}, testTimeout, time.Millisecond, "the lease of the acquire given up on is not queued for deletion")
	f.advance(l.cfg.renew) // the next tick deletes it
	f.settle(t, 1)
	assert.Empty(t, f.leases(t, "a"), "a lease no call holds")
}

// A deletion still queued at Close, of a lease on an endpoint the Limiter
// has forgotten since (SetEndpoints removed it, or no call asked for it in
// three ticks), is done by Close's goodbye: the lease must not block its
// slot for the rest of a TTL after the process has gone.
func TestCloseDeletesQueuedLeasesOfForgottenEndpoints(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	cctx, cancel := context.WithCancel(ctx)
	h := &scriptHook{sha: acquireScript.Hash(), lost: cancel}
	cut := &cutHook{}
	rdb := f.hookedClient(t, h, acquireScript)
	rdb.AddHook(cut)
	l := f.limiterOn(t, rdb, WithRenewInterval(time.Second))
	f.settle(t, 1)

	h.armed.Store(true)
	_, err := l.TryAcquire(cctx, eps(1))
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, f.leases(t, "a"), 1, "the script ran: the lease is in Redis, its deletion queued")
	cut.down.Store(true) // the ticks that would delete it fail
	for range 3 {        // and the third forgets the endpoint
		f.advance(l.cfg.renew)
		f.settle(t, 1)
	}
	l.mu.Lock()
	forgotten, queued := len(l.eps) == 0, len(l.pending)
	l.mu.Unlock()
	require.True(t, forgotten, "the endpoint is still known")
	require.Equal(t, 1, queued)
	require.Len(t, f.leases(t, "a"), 1, "the lease lives on in Redis")

	cut.down.Store(false)
	require.NoError(t, l.Close())
	assert.Empty(t, f.leases(t, "a"), "a lease of the closed process")
}

// A grant to this process on an endpoint it has forgotten (a Client's
// SetEndpoints removed it), made as the process closes (its notice not
// heard, no tick has read it since), is deleted by Close's goodbye: its
// lease, which no call holds, must not block its slot for the rest of a
// TTL after the process has gone.
func TestCloseDeletesAGrantOnAForgottenEndpoint(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	l := f.limiter(t, WithRenewInterval(time.Second))
	f.settle(t, 1)
	hl := l.ShareHealth(eps(1), func(amlpool.HealthEvent) {})
	defer hl.Close()
	hl.SetEndpoints(nil) // the Client no longer uses it
	for range 3 {        // and the third tick forgets it
		f.advance(l.cfg.renew)
		f.settle(t, 1)
	}
	require.Empty(t, l.Stats().Endpoints, "the endpoint is still known")

	// Another process releases the endpoint's only slot and grants it to
	// this one, which asked for it before.
	key, id := "amlpool:{t}:ep:a", l.proc+":gq.1"
	exp := f.clk.Now().Add(DefaultTTL).UnixMilli()
	require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(exp, id)).Err())
	require.NoError(t, f.rdb.ZAdd(ctx, l.keys.grants, redisZ(exp, l.proc+"|"+key+"|"+id)).Err())

	require.NoError(t, l.Close())
	assert.Empty(t, f.leases(t, "a"), "a lease granted to the closed process")
	assert.Empty(t, f.rdb.ZRange(ctx, l.keys.grants, 0, -1).Val())
}

// An acquire whose round trip lasts longer than three ticks (a timeout
// longer than three renew intervals) must keep its endpoint known: else a
// tick forgets it meanwhile, and the lease the reply brings is on an
// endpoint that no tick renews, which expires in Redis while its call runs.
// The same when that acquire fails and the Limiter, in fallback meanwhile,
// takes a local lease: it goes on the endpoint the ticks know, and the
// probe that finds Redis back writes it there. But a try that takes no
// lease (no share in fallback: the fleet's size never seen) leaves the
// endpoint forgotten.
func TestAcquireOutlastingThreeTicksKeepsItsEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name     string
		timeout  time.Duration
		renew    time.Duration
		fallback bool // the acquire fails, and the Limiter falls back meanwhile
		never    bool // Redis is cut from the start: no share in fallback
	}{
		{"reply", 5 * time.Second, time.Second, false, false},
		{"fallback", time.Second, 200 * time.Millisecond, true, false},
		{"fallback without a share", time.Second, 200 * time.Millisecond, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := testCtx(t)
			reached, open := make(chan struct{}), make(chan struct{})
			h := &scriptHook{sha: acquireScript.Hash(), before: func(context.Context) { close(reached); <-open }}
			cut := &cutHook{}
			cut.down.Store(tc.never)
			rdb := f.hookedClient(t, h, acquireScript)
			rdb.AddHook(cut) // after h's: the held acquire fails once let go
			l := f.limiterOn(t, rdb, WithTimeout(tc.timeout), WithRenewInterval(tc.renew))
			f.settle(t, 1)

			h.armed.Store(true)
			got := make(chan amlpool.Lease, 1)
			go func() {
				ls, err := l.TryAcquire(ctx, eps(1))
				assert.NoError(t, err)
				got <- ls
			}()
			<-reached
			if tc.fallback {
				cut.down.Store(true)
				// Ticks fail, forget the endpoint, and trip the fallback.
				f.stepUntil(t, l.cfg.renew, 1, "fallback", func() bool { return l.Stats().Fallback })
			} else {
				for range 3 { // three ticks while the acquire waits for Redis
					f.advance(l.cfg.renew)
					f.settle(t, 1)
				}
			}
			close(open) // the acquire's reply comes, or it fails
			ls := <-got
			if tc.never {
				require.Nil(t, ls, "a local lease with no share")
				assert.Empty(t, l.Stats().Endpoints, "a try that took no lease put a forgotten endpoint back")
				return
			}
			require.NotNil(t, ls)
			cut.down.Store(false)
			f.stepUntil(t, l.cfg.probe, 1, "probe that comes back", func() bool { return !l.Stats().Fallback })
			for range 2 * l.cfg.ttl / l.cfg.renew { // the call runs for two TTLs
				f.advance(l.cfg.renew)
				f.settle(t, 1)
			}
			assert.Len(t, f.leases(t, "a"), 1, "the lease of a running call expired, or was not written back")
			assert.Zero(t, l.Stats().Lost)
			ls.Release()
		})
	}
}

// A call whose first try outlasts three ticks and finds the endpoint full
// waits for it: it keeps the endpoint known, so that a grant on it, or a
// lease handed on, reaches the call, as it does for any waiting call.
func TestAcquireWaitingAfterATryOutlastingThreeTicksKeepsItsEndpoint(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	reached, open := make(chan struct{}), make(chan struct{})
	h := &scriptHook{sha: acquireScript.Hash(), before: func(context.Context) { close(reached); <-open }}
	l := f.limiterOn(t, f.hookedClient(t, h, acquireScript), WithRenewInterval(time.Second))
	f.settle(t, 1)
	key := "amlpool:{t}:ep:a"
	exp := f.clk.Now().Add(time.Minute).UnixMilli()
	require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(exp, "q:1")).Err()) // another process holds the only slot

	h.armed.Store(true)
	got := make(chan amlpool.Lease, 1)
	go func() {
		ls, err := l.Acquire(ctx, eps(1))
		if assert.NoError(t, err) {
			got <- ls
		}
	}()
	<-reached
	for range 3 { // three ticks while the try waits for Redis
		f.advance(l.cfg.renew)
		f.settle(t, 1)
	}
	close(open) // the endpoint is full: the call waits
	require.Eventually(t, func() bool { return l.Stats().Waiting == 1 }, testTimeout, time.Millisecond)
	f.settle(t, 2) // the keeper, and the pump with a call waiting
	assert.Len(t, l.Stats().Endpoints, 1, "the endpoint a call waits for is forgotten")

	// q releases the slot and grants it to l.
	id := l.proc + ":gq.1"
	require.NoError(t, f.rdb.ZRem(ctx, key, "q:1").Err())
	require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(exp, id)).Err())
	l.granted(key, id) // adopted and served before it returns, or deleted
	require.EqualValues(t, 1, l.Stats().Grants, "the grant did not reach the waiting call")
	receive(t, got).Release()
}

// A release whose script runs between a tick's taking the lease in its
// batch and the tick's script, which adds the lease back as missing: when
// the tick's reply is used first, the release deletes the lease again.
func TestReleaseRacingTickLeavesNoLease(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	reached, open := make(chan struct{}), make(chan struct{})
	h := &scriptHook{sha: tickScript.Hash(), before: func(context.Context) { close(reached); <-open }}
	released, hold := make(chan struct{}), make(chan struct{})
	var armRelease atomic.Bool
	ticked := make(chan struct{}, 1)
	l := f.limiterOn(t, f.hookedClient(t, h, tickScript),
		WithOnReleased(func() {
			if armRelease.Load() {
				close(released)
				<-hold
			}
		}),
		WithOnTick(func(done bool) {
			if done {
				select {
				case ticked <- struct{}{}:
				default:
				}
			}
		}))
	other := f.limiter(t)
	f.settle(t, 2)
	<-ticked // the first tick's

	a, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	h.armed.Store(true)
	f.advance(l.cfg.renew) // the tick takes a in its batch and waits
	<-reached
	armRelease.Store(true)
	a.Release() // the release's script deletes a in Redis
	<-released
	require.Empty(t, f.leases(t, "a"))
	close(open) // the tick's script adds a back, missing
	<-ticked    // and its reply is used before the release's
	close(hold)

	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond,
		"a released lease stayed in Redis, with no call on it")
	f.settle(t, 2)
	ls, err := other.TryAcquire(ctx, eps(1))
	require.NoError(t, err)
	require.NotNil(t, ls, "the endpoint's only slot is still taken")
	ls.Release()
}

// The same race with the tick's reply lost (Redis ran it, the round trip
// failed): the tick added the released lease back, and nothing of its reply
// says so. The lease must still go, at the latest at the next tick.
func TestReleaseRacingATickWithItsReplyLostLeavesNoLease(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	reached, open := make(chan struct{}), make(chan struct{})
	h := &scriptHook{sha: tickScript.Hash(), before: func(context.Context) { close(reached); <-open }, lost: func() {}}
	released := make(chan struct{}, 1)
	l := f.limiterOn(t, f.hookedClient(t, h, tickScript),
		WithOnReleased(func() { released <- struct{}{} }))
	f.settle(t, 1)

	a, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	h.armed.Store(true)
	f.advance(l.cfg.renew) // the tick takes a in its batch and waits
	<-reached
	a.Release() // the release's script deletes a in Redis
	<-released
	require.Empty(t, f.leases(t, "a"))
	close(open) // the tick's script adds a back, and its reply is lost
	f.settle(t, 1)
	require.EqualValues(t, 1, l.Stats().Errors, "the tick failed")

	f.advance(l.cfg.renew) // the next tick
	f.settle(t, 1)
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond,
		"a released lease stayed in Redis, with no call on it")
}

// cutHook fails every command while down: one process's link to Redis is
// cut, the others' is not.
type cutHook struct{ down atomic.Bool }

var errCut = errors.New("dial tcp: i/o timeout")

func (h *cutHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *cutHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.down.Load() {
			return errCut
		}
		return next(ctx, cmds)
	}
}
func (h *cutHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.down.Load() {
			cmd.SetErr(errCut)
			return errCut
		}
		return next(ctx, cmd)
	}
}

// cutPair is two Limiters on f's Redis, each behind a cutHook, that have
// counted each other, and the leases each holds of one endpoint's cap.
type cutPair struct {
	t        *testing.T
	ctx      context.Context
	capacity int
	lims     [2]*Limiter
	cuts     [2]*cutHook
	held     [2][]amlpool.Lease
}

func newCutPair(t *testing.T, f *fixture, capacity int, opts ...Option) *cutPair {
	p := &cutPair{t: t, ctx: testCtx(t), capacity: capacity}
	for i := range p.lims {
		p.cuts[i] = &cutHook{}
		rdb := f.hookedClient(t, p.cuts[i])
		l, err := New(rdb, append([]Option{WithClock(f.clk), WithPool("t")}, opts...)...)
		require.NoError(t, err)
		t.Cleanup(func() { _ = l.Close() })
		p.lims[i] = l
	}
	f.settle(t, 2)
	f.advance(DefaultTTL / 3) // both heartbeats seen
	f.settle(t, 2)
	require.Equal(t, 2, p.lims[0].Stats().Replicas)
	return p
}

// take has replica i acquire until it gets no lease, and returns how many
// it got.
func (p *cutPair) take(i int) int {
	n := 0
	for {
		ls, err := p.lims[i].TryAcquire(p.ctx, eps(p.capacity))
		require.NoError(p.t, err)
		if ls == nil {
			return n
		}
		p.held[i] = append(p.held[i], ls)
		n++
	}
}

// release ends every lease replica i holds.
func (p *cutPair) release(i int) {
	for _, ls := range p.held[i] {
		ls.Release()
	}
	p.held[i] = nil
}

// After an outage each replica comes back at its own probe. The first one
// back keeps to its FailStatic share until the others have had their
// probes, for those still in fallback hold their shares outside Redis:
// the fleet stays within cap + replicas − 1 through the return, and the
// first one back gets the whole cap again once the window has passed.
func TestFailStaticRejoinKeepsToShare(t *testing.T) {
	const capacity = 4 // a share of 2 for each of 2 replicas
	f := newFixture(t)
	p := newCutPair(t, f, capacity, WithTimeout(5*time.Second))
	a, b, cuts, take, release := p.lims[0], p.lims[1], p.cuts, p.take, p.release
	cuts[0].down.Store(true)
	cuts[1].down.Store(true)
	require.Eventually(t, func() bool {
		f.advance(DefaultTTL / 3)
		return a.Stats().Fallback && b.Stats().Fallback
	}, testTimeout, time.Millisecond)
	inFlight := take(0) + take(1)
	require.Equal(t, capacity, inFlight, "each replica's share in fallback")

	cuts[0].down.Store(false) // a's probe will reach Redis; b's link is still cut
	require.Eventually(t, func() bool {
		f.advance(DefaultProbeInterval / 10)
		return !a.Stats().Fallback
	}, testTimeout, time.Millisecond)
	require.True(t, b.Stats().Fallback)
	inFlight += take(0)
	require.LessOrEqual(t, inFlight, capacity+2-1, "a back on Redis while b holds its share outside it")

	// b comes back and writes its leases to Redis; once the window is over
	// and b's calls have ended, a gets the whole cap again.
	cuts[1].down.Store(false)
	require.Eventually(t, func() bool {
		f.advance(DefaultProbeInterval / 10)
		return !b.Stats().Fallback
	}, testTimeout, time.Millisecond)
	release(1)
	release(0)
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond,
		"the released leases are deleted from Redis")
	f.advance(2 * DefaultProbeInterval)
	f.settle(t, 2)
	require.Equal(t, capacity, take(0))
	release(0)
}

// A replica with no calls through an outage has no reason to fall back,
// but the others do, and hold their shares outside Redis until their
// probes: as Redis comes back before those, it keeps to its share too, or
// the fleet goes past cap + replicas − 1. It may learn of the outage from
// its tick, which failed in it, or, when no round trip of its fell in it,
// from Redis, which restarted empty and lost its heartbeat.
func TestFailStaticIdleReplicaKeepsToShare(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration // a falls back after 2 of them: past b's next tick, or before it
		empty   bool          // Redis comes back empty
	}{
		{"its tick failed", 2 * time.Second, false},
		{"Redis restarted empty", time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const capacity = 4 // a share of 2 for each of 2 replicas
			f := newFixture(t)
			p := newCutPair(t, f, capacity, WithTimeout(tc.timeout))
			a, b := p.lims[0], p.lims[1]
			p.cuts[0].down.Store(true)
			p.cuts[1].down.Store(true)
			for i := 0; p.take(0) == 0; i++ { // a has calls: they fail until it falls back
				require.Less(t, i, maxSteps, "a never fell back")
				f.advance(tc.timeout)
			}
			f.settle(t, 2)
			require.True(t, a.Stats().Fallback)
			require.False(t, b.Stats().Fallback, "b has no calls: it does not fall back")
			require.Equal(t, !tc.empty, b.Stats().Errors > 0, "b's tick failed in the outage")
			inFlight := len(p.held[0])
			require.Equal(t, 2, inFlight, "a's share in fallback")

			if tc.empty {
				f.m.FlushAll()
			}
			p.cuts[0].down.Store(false) // Redis is back, before a's probe
			p.cuts[1].down.Store(false)
			inFlight += p.take(1)
			require.LessOrEqual(t, inFlight, capacity+2-1, "b back on Redis while a holds its share outside it")
			p.release(0)
			p.release(1)
		})
	}
}

// A failure tells nothing of Redis after it: one old failed round trip
// followed, a while later, by two quick refusals (a blip) is no outage, and
// must not switch to the failure mode, in which this replica's share would
// come on top of the caps the others still share in Redis. The same three
// failures close together are one.
func TestOldFailureAndABlipAreNoOutage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		gaps     [2]time.Duration // before each of the two failures after the first
		fallback bool
	}{
		{"far apart", [2]time.Duration{3 * time.Second, 0}, false},
		{"close together", [2]time.Duration{time.Second, time.Second}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const timeout = time.Second // a trip needs failures over 2 s, each within 2.05 s of the one before
			f := newFixture(t)
			ctx := testCtx(t)
			cut := &cutHook{}
			rdb := f.hookedClient(t, cut)
			l := f.limiterOn(t, rdb, WithTimeout(timeout))
			f.settle(t, 1)

			cut.down.Store(true)
			f.advance(l.cfg.renew) // the tick fails
			f.settle(t, 1)
			require.EqualValues(t, 1, l.Stats().Errors)
			for _, gap := range tc.gaps { // both before the next tick
				f.advance(gap)
				_, err := l.TryAcquire(ctx, eps(1))
				require.NoError(t, err)
			}
			require.Equal(t, tc.fallback, l.Stats().Fallback)
		})
	}
}

// gateHook holds the runs of one script, once armed, until n of them have
// reached it: n round trips under way at once, whose replies all come
// after every one of them was sent.
type gateHook struct {
	processOnly
	sha     string
	n       int
	armed   atomic.Bool
	arrived atomic.Int64
	all     chan struct{} // closed once n have arrived
}

func (h *gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !strings.EqualFold(cmd.Name(), "evalsha") || cmd.Args()[1] != h.sha || !h.armed.Load() {
			return next(ctx, cmd)
		}
		if h.arrived.Add(1) == int64(h.n) {
			close(h.all)
		}
		select {
		case <-h.all:
		case <-ctx.Done():
			cmd.SetErr(ctx.Err())
			return ctx.Err()
		}
		return next(ctx, cmd)
	}
}

// In a rejoin window each acquire may take a lease only while the process
// holds less than its share. Acquires under way at once all find the same
// leases held: each must count the others, or together they take the
// process past its share, each with a lease that Redis shows room for.
func TestFailStaticRejoinConcurrentAcquiresKeepToShare(t *testing.T) {
	const capacity, share, calls = 4, 2, 4 // a share of 2 for each of 2 expected replicas
	f := newFixture(t)
	ctx := testCtx(t)
	cut := &cutHook{}
	gate := &gateHook{sha: acquireScript.Hash(), n: calls, all: make(chan struct{})}
	rdb := f.hookedClient(t, cut, acquireScript)
	rdb.AddHook(gate)
	l := f.limiterOn(t, rdb, WithExpectedReplicas(2))
	f.settle(t, 1) // the first tick is in

	cut.down.Store(true)
	f.advance(l.cfg.renew) // the tick fails: no outage yet, but other replicas may have fallen back
	f.settle(t, 1)
	require.EqualValues(t, 1, l.Stats().Errors)
	require.False(t, l.Stats().Fallback)
	cut.down.Store(false)
	first, err := l.TryAcquire(ctx, eps(capacity)) // Redis answers: the rejoin window opens
	require.NoError(t, err)
	require.NotNil(t, first)
	held := []amlpool.Lease{first}
	f.requireRejoining(t, l)

	gate.armed.Store(true)
	got := make(chan amlpool.Lease, calls)
	for range calls {
		go func() {
			ls, err := l.TryAcquire(ctx, eps(capacity))
			assert.NoError(t, err)
			got <- ls
		}()
	}
	for range calls {
		if ls := <-got; ls != nil {
			held = append(held, ls)
		}
	}
	assert.Equal(t, share, len(held), "leases held by a replica rejoining, with a share of %d of a cap of %d", share, capacity)
	assert.Len(t, f.leases(t, "a"), len(held))
	for _, ls := range held {
		ls.Release()
	}
}

// Acquires under way when Redis restarts empty were sent with the cap,
// before the process knew of the outage; Redis runs each with its heartbeat
// gone, and each reply says so. The process keeps to its share from the
// first of them on: the leases the others took past the share go back.
func TestFailStaticAcquiresUnderWayAsTheHeartbeatIsFoundGoneKeepToShare(t *testing.T) {
	const capacity, share, calls = 4, 2, 4 // a share of 2 for each of 2 expected replicas
	f := newFixture(t)
	ctx := testCtx(t)
	gate := &gateHook{sha: acquireScript.Hash(), n: calls, all: make(chan struct{})}
	rdb := f.hookedClient(t, gate, acquireScript)
	l := f.limiterOn(t, rdb, WithExpectedReplicas(2))
	f.settle(t, 1) // the first tick wrote the heartbeat

	f.m.FlushAll() // Redis restarted empty: the heartbeat is gone
	gate.armed.Store(true)
	got := make(chan amlpool.Lease, calls)
	for range calls {
		go func() {
			ls, err := l.TryAcquire(ctx, eps(capacity))
			assert.NoError(t, err)
			got <- ls
		}()
	}
	var held []amlpool.Lease
	for range calls {
		if ls := <-got; ls != nil {
			held = append(held, ls)
		}
	}
	f.requireRejoining(t, l)
	assert.Equal(t, share, len(held), "leases held by a replica that found its heartbeat gone, with a share of %d of a cap of %d",
		share, capacity)
	assert.Len(t, f.leases(t, "a"), len(held), "leases given back stayed in Redis")
	for _, ls := range held {
		ls.Release()
	}
}

// A call that waits for a full fleet says so in Redis, and a release
// anywhere grants it a slot. A grant asked for before a rejoin window opened
// may come in during the window: it must keep the process to its share, as
// an acquire does, or the process takes a slot that another replica,
// still in fallback, holds outside Redis.
func TestFailStaticGrantAskedForBeforeRejoinKeepsToShare(t *testing.T) {
	const capacity = 4 // a share of 2 for each of 2 replicas
	f := newFixture(t)
	ctx := testCtx(t)
	l, other := f.limiter(t), f.limiter(t)
	f.subscribed(t, l.keys.grant, 2)
	f.settle(t, 2)
	f.advance(l.cfg.renew) // each counts both
	f.settle(t, 2)
	require.Equal(t, 2, l.Stats().Replicas)
	var mine, others []amlpool.Lease
	for range 2 {
		for _, x := range []struct {
			l    *Limiter
			held *[]amlpool.Lease
		}{{l, &mine}, {other, &others}} {
			ls, err := x.l.TryAcquire(ctx, eps(capacity))
			require.NoError(t, err)
			require.NotNil(t, ls)
			*x.held = append(*x.held, ls)
		}
	}
	got := f.waitFor(t, ctx, l, 3, eps(capacity)) // the fleet is full: l asks for a grant
	require.Equal(t, []string{l.proc}, f.rdb.ZRange(ctx, "amlpool:{t}:want:a", 0, -1).Val(), "l asked for a grant")

	// Redis failed over and lost l's heartbeat: l's next tick finds it gone
	// and opens the window; l's wish, written before, is still there.
	require.NoError(t, f.rdb.ZRem(ctx, "amlpool:{t}:members", l.proc).Err())
	f.advance(l.cfg.renew)
	f.settle(t, 3)
	f.requireRejoining(t, l)
	require.Equal(t, []string{l.proc}, f.rdb.ZRange(ctx, "amlpool:{t}:want:a", 0, -1).Val(), "l's wish expired")

	others[0].Release() // grants the slot to l, which holds its share already
	require.Eventually(t, func() bool { return len(got) > 0 || len(f.leases(t, "a")) == 3 }, testTimeout, time.Millisecond,
		"the grant was neither taken nor given back")
	select {
	case ls := <-got:
		ls.Release()
		t.Fatalf("a grant took the process past its share of %d while it rejoins", capacity/2)
	default:
	}
	assert.Equal(t, 2, l.Stats().Held)
	assert.Zero(t, l.Stats().Grants)

	for _, ls := range append(mine, others[1:]...) {
		ls.Release() // mine[0] goes to the waiting call
	}
	receive(t, got).Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
}

// A tick reads the grants whose notice this process missed, and may find
// its heartbeat gone in the same reply: the window it opens applies to
// those grants too, or one takes the process past its share.
func TestFailStaticGrantReadByTheTickThatFindsTheHeartbeatGoneKeepsToShare(t *testing.T) {
	const capacity, share = 4, 2 // a share of 2 for each of 2 expected replicas
	f := newFixture(t)
	ctx := testCtx(t)
	// Backoffs longer than a tick: the waiting call's next try, which would
	// find the heartbeat gone first, comes after the tick.
	l := f.limiter(t, WithExpectedReplicas(2), WithBackoff(2*DefaultTTL, 2*DefaultTTL))
	f.settle(t, 1)
	var held []amlpool.Lease
	for range share {
		ls, err := l.TryAcquire(ctx, eps(capacity))
		require.NoError(t, err)
		require.NotNil(t, ls)
		held = append(held, ls)
	}
	key := "amlpool:{t}:ep:a"
	exp := f.clk.Now().Add(time.Minute).UnixMilli()
	require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(exp, "q:1"), redisZ(exp, "q:2")).Err()) // another process's
	got := f.waitFor(t, ctx, l, 2, eps(capacity))

	// q releases a slot and grants it to l, whose subscription misses the
	// notice; and Redis fails over, losing l's heartbeat.
	id := l.proc + ":gq.1"
	require.NoError(t, f.rdb.ZRem(ctx, key, "q:1").Err())
	require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(exp, id)).Err())
	require.NoError(t, f.rdb.ZAdd(ctx, l.keys.grants, redisZ(exp, l.proc+"|"+key+"|"+id)).Err())
	require.NoError(t, f.rdb.ZRem(ctx, l.keys.members, l.proc).Err())
	f.advance(l.cfg.renew) // the tick reads both
	require.Eventually(t, func() bool { return len(got) > 0 || len(f.leases(t, "a")) == 3 }, testTimeout, time.Millisecond,
		"the grant was neither taken nor given back")
	select {
	case ls := <-got:
		ls.Release()
		t.Fatalf("a grant took the process past its share of %d as it learnt of the outage", share)
	default:
	}
	assert.Equal(t, share, l.Stats().Held)
	held[0].Release() // goes to the waiting call
	held[0] = receive(t, got)
	for _, ls := range held {
		ls.Release()
	}
}

// A grant that a process gives back, past its share while it rejoins the
// fleet, goes to another process that waits for the endpoint, as a
// released lease does: in the same round trip, announced to it. Deleted
// instead, the slot would idle until the waiting process's next try (the
// fake clock never moves here, so it never comes).
func TestGrantGivenBackGoesToAWaitingProcess(t *testing.T) {
	const capacity, share = 4, 2 // a share of 2 for each of 2 replicas
	f := newFixture(t)
	ctx := testCtx(t)
	l, w := f.limiter(t, WithExpectedReplicas(2)), f.limiter(t)
	f.subscribed(t, l.keys.grant, 2)
	f.settle(t, 2)
	f.advance(l.cfg.renew) // each counts both
	f.settle(t, 2)
	var held []amlpool.Lease
	for range share {
		ls, err := l.TryAcquire(ctx, eps(capacity))
		require.NoError(t, err)
		require.NotNil(t, ls)
		held = append(held, ls)
	}
	// Redis failed over and lost l's heartbeat: l's tick opens its window.
	require.NoError(t, f.rdb.ZRem(ctx, l.keys.members, l.proc).Err())
	f.advance(l.cfg.renew)
	f.settle(t, 2)
	f.requireRejoining(t, l)

	// Another process holds a slot, and has granted l one, asked for before
	// the window: the endpoint is full, and w waits.
	key, id := "amlpool:{t}:ep:a", l.proc+":gq.1"
	exp := f.clk.Now().Add(time.Minute).UnixMilli()
	require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(exp, "q:1"), redisZ(exp, id)).Err())
	got := f.waitFor(t, ctx, w, 3, eps(capacity))
	require.Equal(t, []string{w.proc}, f.rdb.ZRange(ctx, "amlpool:{t}:want:a", 0, -1).Val(), "w asked for a grant")

	l.granted(key, id) // past l's share: given back
	ls := receive(t, got)
	assert.Equal(t, share, l.Stats().Held)
	assert.Zero(t, l.Stats().Grants)
	assert.EqualValues(t, 1, w.Stats().Grants)
	assert.NotContains(t, f.leases(t, "a"), id)
	assert.Len(t, f.leases(t, "a"), capacity)
	ls.Release()
	for _, ls := range held {
		ls.Release()
	}
}

// A grant asked for before the Limiter fell back may reach it in fallback
// (its notice, or a tick that reads it, comes through while other round
// trips fail): it must keep the process to its share, as a local lease does.
func TestFailStaticGrantInFallbackKeepsToShare(t *testing.T) {
	const capacity, share = 4, 2 // a share of 2 for each of 2 expected replicas
	const timeout = 5 * time.Second
	f := newFixture(t)
	ctx := testCtx(t)
	cut := &cutHook{}
	l := f.limiterOn(t, f.hookedClient(t, cut), WithTimeout(timeout), WithExpectedReplicas(2))
	f.settle(t, 1)

	cut.down.Store(true)
	held := takeInFallback(t, f, l, ctx, capacity, timeout)
	require.True(t, l.Stats().Fallback)
	require.Len(t, held, share)
	got := f.waitFor(t, ctx, l, 2, eps(capacity))

	// Another process grants l a slot.
	key, id := "amlpool:{t}:ep:a", l.proc+":gother.1"
	require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(f.clk.Now().Add(time.Minute).UnixMilli(), id)).Err())
	l.granted(key, id)
	select {
	case ls := <-got:
		ls.Release()
		t.Fatalf("a grant took the process past its share of %d in fallback", share)
	default:
	}
	assert.Equal(t, share, l.Stats().Held)
	assert.Zero(t, l.Stats().Grants)

	// Redis back: the grant given back is not left in Redis.
	cut.down.Store(false)
	require.Eventually(t, func() bool {
		f.advance(l.cfg.probe / 10)
		return !l.Stats().Fallback
	}, testTimeout, time.Millisecond)
	held[0].Release() // goes to the waiting call
	held[0] = receive(t, got)
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == share }, testTimeout, time.Millisecond,
		"leases in Redis")
	for _, ls := range held {
		ls.Release()
	}
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
}

// A lease freed while a call of the same process waits goes to that call
// (handoff): the process holds as many as before. In fallback, a process
// that holds more than its share (leases taken from Redis before the
// outage) must not hand them on, or the calls admitted in the outage keep
// those slots after the ones admitted before it ended, past FailStatic's
// bound; the same holds in a rejoin window. It hands a lease on again once
// it is down to its share.
func TestFailStaticHandoffKeepsToShare(t *testing.T) {
	const capacity, share = 4, 2 // a share of 2 for each of 2 expected replicas
	const timeout = 5 * time.Second
	for _, tc := range []struct {
		name     string
		fallback bool // else rejoining, right after the fallback
	}{{"fallback", true}, {"rejoining", false}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := testCtx(t)
			cut := &cutHook{}
			l := f.limiterOn(t, f.hookedClient(t, cut), WithTimeout(timeout),
				WithExpectedReplicas(2))
			f.settle(t, 1)
			var held []amlpool.Lease
			for range capacity { // alone in Redis: the whole cap
				ls, err := l.TryAcquire(ctx, eps(capacity))
				require.NoError(t, err)
				require.NotNil(t, ls)
				held = append(held, ls)
			}
			got := f.waitFor(t, ctx, l, 2, eps(capacity))

			cut.down.Store(true)
			// The pump's tries and the ticks fail.
			f.stepUntil(t, timeout, 2, "fallback", func() bool { return l.Stats().Fallback })
			if !tc.fallback {
				cut.down.Store(false)
				f.stepUntil(t, l.cfg.probe/10, 2, "probe that comes back", func() bool { return !l.Stats().Fallback })
				f.requireRejoining(t, l)
			}
			for i := range capacity - share {
				held[i].Release()
				select {
				case ls := <-got:
					ls.Release()
					t.Fatalf("a lease handed on while the process held %d, past its share of %d", capacity-i, share)
				default:
				}
				assert.Equal(t, capacity-i-1, l.Stats().Held)
			}
			held[capacity-share].Release() // down to its share: handed on
			held[capacity-share] = receive(t, got)
			for _, ls := range held[capacity-share:] {
				ls.Release()
			}
		})
	}
}

// A probe writes the local leases of the fallback to Redis. When its reply
// is lost (Redis ran it, the round trip failed), the Limiter stays in
// fallback and the leases stay local to it: their release must still
// delete them from Redis once it answers, or each blocks a slot, with no
// call on it, for a TTL.
func TestLocalLeaseWrittenByAProbeWithItsReplyLostIsDeleted(t *testing.T) {
	const capacity, share = 4, 2 // a share of 2 for each of 2 expected replicas
	const timeout = 5 * time.Second
	f := newFixture(t)
	ctx := testCtx(t)
	cut := &cutHook{}
	lost := &scriptHook{sha: tickScript.Hash(), lost: func() {}}
	rdb := f.hookedClient(t, cut, tickScript)
	rdb.AddHook(lost)
	l := f.limiterOn(t, rdb, WithTimeout(timeout), WithExpectedReplicas(2))
	f.settle(t, 1)

	cut.down.Store(true)
	held := takeInFallback(t, f, l, ctx, capacity, timeout)
	require.Len(t, held, share)
	f.settle(t, 1)

	cut.down.Store(false)
	lost.armed.Store(true)
	f.advance(l.cfg.probe) // the probe writes both, and its reply is lost
	f.settle(t, 1)
	require.False(t, lost.armed.Load(), "no probe ran")
	require.True(t, l.Stats().Fallback)
	require.Len(t, f.leases(t, "a"), share, "the probe wrote the local leases")
	for _, ls := range held {
		ls.Release()
	}

	f.advance(l.cfg.probe) // the next probe comes back
	f.settle(t, 1)
	require.False(t, l.Stats().Fallback)
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond,
		"leases released in fallback stayed in Redis, with no call on them")
}

// An acquire sent before the Limiter falls back may come back after: slow,
// while other round trips failed and their calls went on with local leases
// from the share. Its lease must keep the process to its share, or the
// process holds its share and one more: past FailStatic's bound, or past
// the whole cap under FailOpen. (Sent after a failure, under FailStatic, it
// went with window limits that counted it against the share; but local
// leases count only the leases held.)
func TestAcquireReplyAfterFallbackKeepsToShare(t *testing.T) {
	for _, tc := range []struct {
		mode  FailureMode
		share int
	}{
		{FailStatic, 2}, // of a cap of 4, for each of 2 expected replicas
		{FailOpen, 4},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			const capacity = 4
			const timeout = 5 * time.Second
			f := newFixture(t)
			ctx := testCtx(t)
			cut := &cutHook{}
			reached, open := make(chan struct{}), make(chan struct{})
			slow := &scriptHook{sha: acquireScript.Hash(), before: func(context.Context) { close(reached); <-open }}
			rdb := f.hookedClient(t, cut, acquireScript)
			rdb.AddHook(slow) // after cut's: the slow acquire got through before the link was cut
			l := f.limiterOn(t, rdb, WithTimeout(timeout), WithExpectedReplicas(2),
				WithFailureMode(tc.mode))
			f.settle(t, 1)

			cut.down.Store(true)
			ls, err := l.TryAcquire(ctx, eps(capacity)) // a round trip fails: no fallback yet
			require.NoError(t, err)
			require.Nil(t, ls)
			require.False(t, l.Stats().Fallback)
			cut.down.Store(false)
			slow.armed.Store(true)
			late := make(chan amlpool.Lease, 1)
			go func() {
				ls, err := l.TryAcquire(ctx, eps(capacity))
				assert.NoError(t, err)
				late <- ls
			}()
			<-reached
			cut.down.Store(true)
			held := takeInFallback(t, f, l, ctx, capacity, timeout)
			require.True(t, l.Stats().Fallback)
			require.Len(t, held, tc.share)

			close(open) // the slow acquire's reply comes in
			if ls := <-late; ls != nil {
				held = append(held, ls)
			}
			assert.Len(t, held, tc.share, "leases held in fallback, with a share of %d of a cap of %d", tc.share, capacity)
			assert.Equal(t, tc.share, l.Stats().Held)

			// Redis back: the lease given back is not left in Redis.
			cut.down.Store(false)
			require.Eventually(t, func() bool {
				f.advance(l.cfg.probe / 10)
				return !l.Stats().Fallback
			}, testTimeout, time.Millisecond)
			f.settle(t, 1)
			assert.Len(t, f.leases(t, "a"), len(held), "leases in Redis")
			for _, ls := range held {
				ls.Release()
			}
			require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
		})
	}
}

// replyCut drops the connection that carries the next run of one script
// after Redis has run it and answered, before go-redis reads the answer: as
// a connection reset is to go-redis, which sends the same command again on
// a new connection (MaxRetries). ran is called between the two runs.
type replyCut struct {
	sha   []byte
	armed atomic.Bool
	ran   func()
}

func (h *replyCut) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &cutConn{Conn: c, h: h}, nil
	}
}
func (h *replyCut) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *replyCut) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

type cutConn struct {
	net.Conn
	h   *replyCut
	cut atomic.Bool
}

func (c *cutConn) Write(b []byte) (int, error) {
	if bytes.Contains(b, c.h.sha) && c.h.armed.CompareAndSwap(true, false) {
		c.cut.Store(true)
	}
	return c.Conn.Write(b)
}

func (c *cutConn) Read(b []byte) (int, error) {
	if !c.cut.Load() {
		return c.Conn.Read(b)
	}
	if _, err := c.Conn.Read(b); err != nil { // Redis answered: the script ran
		return 0, err
	}
	c.h.ran()
	_ = c.Conn.Close()
	return 0, io.EOF
}

// replyCutLimiter returns a Limiter on f's Redis behind h, through a client
// that sends a command once more when its connection breaks (MaxRetries 1),
// with script loaded so that it goes as EVALSHA, whose sha h looks for.
func (f *fixture) replyCutLimiter(t *testing.T, h *replyCut, script *redis.Script, opts ...Option) *Limiter {
	rdb := redis.NewClient(&redis.Options{Addr: f.m.Addr(), ContextTimeoutEnabled: true, MaxRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	rdb.AddHook(h)
	require.NoError(t, script.Load(testCtx(t), f.rdb).Err())
	return f.limiterOn(t, rdb, opts...)
}

// go-redis sends an acquire again when its connection breaks after Redis
// ran it (the recommended client retries once). If a candidate before the
// one the first run took has room by then, the second run must not take
// it as well: the first run's lease, which no call would hold, would block
// its slot fleet-wide for a TTL.
func TestRetriedAcquireTakesOneLease(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	keyA := "amlpool:{t}:ep:a"
	require.NoError(t, f.rdb.ZAdd(ctx, keyA, redisZ(f.clk.Now().Add(time.Minute).UnixMilli(), "other:1")).Err())
	h := &replyCut{sha: []byte(acquireScript.Hash()), ran: func() {
		f.rdb.ZRem(ctx, keyA, "other:1") // a frees between the two runs
	}}
	l := f.replyCutLimiter(t, h, acquireScript)

	h.armed.Store(true)
	ls, err := l.TryAcquire(ctx, eps(1, 1)) // a is full: the first run takes b
	require.NoError(t, err)
	require.NotNil(t, ls)
	require.False(t, h.armed.Load(), "the script's connection was not cut")
	assert.Len(t, append(f.leases(t, "a"), f.leases(t, "b")...), 1, "one call, two leases in Redis")
	ls.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a"))+len(f.leases(t, "b")) == 0 },
		testTimeout, time.Millisecond, "a lease no call holds stayed in Redis")
}

// An acquire whose script is on its way to Redis as the Limiter closes
// returns ErrClosed and leaves no lease behind: not one taken after Close
// said goodbye to Redis, nor one in the caller's hands that Close never
// saw.
func TestAcquireRacingCloseLeavesNoLease(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	reached, open := make(chan struct{}), make(chan struct{})
	h := &scriptHook{sha: acquireScript.Hash(), before: func(ctx context.Context) {
		close(reached)
		select { // Close may end the round trip; else the test lets it go on
		case <-open:
		case <-ctx.Done():
		}
	}}
	l := f.limiterOn(t, f.hookedClient(t, h, acquireScript))
	f.settle(t, 1) // the first heartbeat is in

	h.armed.Store(true)
	got := make(chan error, 1)
	go func() {
		ls, err := l.Acquire(ctx, eps(1))
		if ls != nil {
			ls.Release()
		}
		got <- err
	}()
	<-reached
	require.NoError(t, l.Close())
	close(open)
	assert.ErrorIs(t, <-got, amlpool.ErrClosed)
	assert.Equal(t, []string{l.keys.done(l.proc)}, f.m.Keys(), "keys left after Close, its goodbye aside")
}

// An acquire whose round trip outlasts three ticks (a timeout longer than
// three renew intervals), on an endpoint the ticks forget meanwhile, and
// whose reply comes in as the Limiter closes: the acquire returns ErrClosed,
// and the lease Redis took for it, which no call holds, goes with Close's
// goodbye, though no endpoint the Limiter knows has it.
func TestAcquireReplyAsCloseBeginsOnAForgottenEndpointLeavesNoLease(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	l, st := f.stalledScript(t, acquireScript)

	st.h.armed.Store(true)
	got := make(chan error, 1)
	go func() {
		ls, err := l.TryAcquire(ctx, eps(1))
		if ls != nil {
			ls.Release()
		}
		got <- err
	}()
	<-st.reached
	closed := f.forgetThenClose(t, l, st)
	require.ErrorIs(t, <-got, amlpool.ErrClosed)
	require.NoError(t, <-closed)
	assert.Empty(t, f.leases(t, "a"), "a lease of the closed process")
}

// The same for a lease kept at its release for a call that waited for it,
// and gave up meanwhile: the reply that says Redis kept it comes as the
// Limiter closes, on an endpoint the ticks forgot while the release was
// under way.
func TestLeaseKeptAsCloseBeginsOnAForgottenEndpointLeavesNoLease(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	l, st := f.stalledScript(t, releaseScript)

	a, err := l.Acquire(ctx, eps(2))
	require.NoError(t, err)
	wctx, give := context.WithCancel(ctx)
	waited := acquireWaiting(t, wctx, l, eps(1)) // the cap went down: the endpoint is full
	st.h.armed.Store(true)
	a.Release() // not handed on (the cap went down), kept in Redis for the call that waits
	<-st.reached
	give()
	require.ErrorIs(t, <-waited, context.Canceled)
	require.NoError(t, <-f.forgetThenClose(t, l, st))
	assert.Empty(t, f.leases(t, "a"), "a lease of the closed process")
}

// stalled is a script's run held, once h is armed, until open is closed:
// reached is closed when it is held.
type stalled struct {
	h             *scriptHook
	reached, open chan struct{}
}

// stalledScript returns a Limiter (renewing every second) whose next run
// of script, once armed, waits for open; and whose reply, on its way as
// Close cancels the round trip, comes in all the same.
func (f *fixture) stalledScript(t *testing.T, script *redis.Script) (*Limiter, *stalled) {
	st := &stalled{reached: make(chan struct{}), open: make(chan struct{})}
	st.h = &scriptHook{sha: script.Hash(), before: func(context.Context) { close(st.reached); <-st.open }}
	late := processHook(func(next redis.ProcessHook) redis.ProcessHook {
		return func(ctx context.Context, cmd redis.Cmder) error { return next(context.WithoutCancel(ctx), cmd) }
	})
	rdb := f.hookedClient(t, late, script)
	rdb.AddHook(st.h)
	l := f.limiterOn(t, rdb, WithRenewInterval(time.Second))
	f.settle(t, 1)
	return l, st
}

// forgetThenClose runs three ticks while the stalled script waits for
// Redis (the third forgets its endpoint), begins Close, and lets the
// script's reply come in as it does. It returns what Close returns.
func (f *fixture) forgetThenClose(t *testing.T, l *Limiter, st *stalled) <-chan error {
	for range 3 {
		f.advance(l.cfg.renew)
		f.settle(t, 1)
	}
	require.Empty(t, l.Stats().Endpoints, "the endpoint is still known")
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	<-l.bg.Done() // Close has begun
	close(st.open)
	return closed
}

// processHook is a go-redis hook that acts on single commands only.
type processHook func(next redis.ProcessHook) redis.ProcessHook

func (h processHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h processHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return h(next)
}
func (h processHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// lateHook holds the next run of one script, once armed, until its
// caller's ctx ends, and keeps what it would have sent: a command already
// on its way to Redis when Close cut its round trip short, on another
// connection than the goodbye's, which Redis may run after the goodbye.
type lateHook struct {
	processOnly
	sha     string
	armed   atomic.Bool
	reached chan struct{}
	args    []any
}

func (h *lateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !strings.EqualFold(cmd.Name(), "evalsha") || cmd.Args()[1] != h.sha || !h.armed.CompareAndSwap(true, false) {
			return next(ctx, cmd)
		}
		h.args = cmd.Args()
		close(h.reached)
		<-ctx.Done()
		cmd.SetErr(ctx.Err())
		return ctx.Err()
	}
}

// A tick or an acquire that Close cuts short may be on its way to Redis
// already, and run there after the goodbye: it must not put back what the
// goodbye deleted, or a lease no call holds would block its slot for a
// TTL, and a heartbeat count a process that is gone.
func TestScriptRunAfterGoodbyeChangesNothing(t *testing.T) {
	for _, script := range []*redis.Script{tickScript, acquireScript} {
		name := map[*redis.Script]string{tickScript: "tick", acquireScript: "acquire"}[script]
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			ctx := testCtx(t)
			h := &lateHook{sha: script.Hash(), reached: make(chan struct{})}
			rdb := f.hookedClient(t, h, script)
			l := f.limiterOn(t, rdb)
			f.settle(t, 1) // the first heartbeat is in
			held, err := l.Acquire(ctx, eps(2))
			require.NoError(t, err)

			h.armed.Store(true)
			got := make(chan error, 1)
			if script == tickScript {
				f.advance(l.cfg.renew) // the tick, which renews held
			} else {
				go func() {
					_, err := l.TryAcquire(ctx, eps(2))
					got <- err
				}()
			}
			<-h.reached
			require.NoError(t, l.Close())
			if script == acquireScript {
				require.ErrorIs(t, <-got, amlpool.ErrClosed)
			}
			held.Release()
			require.NoError(t, f.rdb.Do(ctx, h.args...).Err(), "Redis runs it after the goodbye")
			assert.Empty(t, f.leases(t, "a"), "a lease of the closed process")
			for _, k := range []string{"amlpool:{t}:members", "amlpool:{t}:limits", "amlpool:{t}:want:a"} {
				members, err := f.m.ZMembers(k)
				if err == nil {
					assert.Empty(t, members, "%s of the closed process", k)
				}
			}
		})
	}
}

// Redis flaps right after a long outage: back long enough for one replica's
// probe, gone again before the other's. The count the first one back read
// misses the other, whose heartbeat expired in the outage and which still
// holds its share outside Redis: FailStatic must go on dividing by the
// count before the outage, in the second fallback and in the window after
// the next return, or the fleet goes past cap + replicas − 1. Releases made
// in the second fallback are deleted from Redis at the next return.
func TestFailStaticFlapKeepsToShare(t *testing.T) {
	const capacity = 4 // a share of 2 for each of 2 replicas
	const probe = 10 * time.Second
	const timeout = 5 * time.Second // a fallback takes 3 failures over 2 timeouts: within the rejoin window
	f := newFixture(t)
	p := newCutPair(t, f, capacity, WithTimeout(timeout), WithProbeInterval(probe))
	a, b, cuts, take, release := p.lims[0], p.lims[1], p.cuts, p.take, p.release
	back := func(l *Limiter) {
		// A tick at a time, as the other replica's ticks keep up: a
		// heartbeat that expires between two of its ticks would be an
		// outage to it.
		for i := 0; l.Stats().Fallback; i++ {
			require.Less(t, i, 20, "no probe came back")
			f.advance(probe / 10)
			f.settle(t, 2)
		}
	}

	// A long outage: both in fallback, their heartbeats expire in Redis.
	cuts[0].down.Store(true)
	cuts[1].down.Store(true)
	require.Eventually(t, func() bool {
		f.advance(DefaultTTL / 3)
		return a.Stats().Fallback && b.Stats().Fallback
	}, testTimeout, time.Millisecond)
	f.advance(2 * a.memberTTL())
	inFlight := take(0) + take(1)
	require.Equal(t, capacity, inFlight, "each replica's share in fallback")

	// Redis back for a's probe only; b's heartbeat is gone: a counts 1.
	cuts[0].down.Store(false)
	back(a)
	require.True(t, b.Stats().Fallback)
	require.Equal(t, 1, a.Stats().Replicas)
	inFlight += take(0)
	require.LessOrEqual(t, inFlight, capacity+2-1, "a back on Redis while b holds its share outside it")

	// Gone again, before b's probe: a falls back a second time.
	cuts[0].down.Store(true)
	for i := 0; !a.Stats().Fallback; i++ {
		require.Less(t, i, maxSteps, "a never fell back again")
		inFlight += take(0)
		f.advance(timeout)
	}
	inFlight += take(0)
	require.LessOrEqual(t, inFlight, capacity+2-1, "a in its second fallback while b holds its share")
	f.advance(2 * probe) // past the rejoin window, still in fallback
	inFlight += take(0)
	require.LessOrEqual(t, inFlight, capacity+2-1, "a in fallback past the rejoin window while b holds its share")

	// a's calls end in fallback; their leases, written back at its return,
	// are deleted at the next.
	inFlight -= len(p.held[0])
	release(0)
	cuts[0].down.Store(false)
	back(a)
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond,
		"leases released in fallback stayed in Redis")
	inFlight += take(0)
	require.LessOrEqual(t, inFlight, capacity+2-1, "a back again while b holds its share outside Redis")

	// b returns; once both have, and the window is over, a counts 2 again
	// and, with b's calls ended, gets the whole cap.
	cuts[1].down.Store(false)
	back(b)
	release(1)
	release(0)
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond,
		"the released leases are deleted from Redis")
	for end := f.clk.Now().Add(2 * probe); f.clk.Now().Before(end); {
		// A tick at a time: a heartbeat that expires between two ticks
		// would be an outage.
		f.advance(DefaultTTL / 3)
		f.settle(t, 2)
	}
	require.Equal(t, capacity, take(0))
	require.Equal(t, 2, a.Stats().Replicas)
	release(0)
}

// blockedLog holds the goroutine that logs the switch to the failure mode
// until open is closed, once reached is closed.
type blockedLog struct {
	reached, open chan struct{}
	once          atomic.Bool
}

func (h *blockedLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *blockedLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *blockedLog) WithGroup(string) slog.Handler            { return h }
func (h *blockedLog) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "Redis unavailable") && h.once.CompareAndSwap(false, true) {
		close(h.reached)
		<-h.open
	}
	return nil
}

// An Acquire whose failed round trip puts the Limiter in fallback, and
// which Close overtakes before it takes a local lease from its share,
// returns ErrClosed: no lease after Close, none in Stats.Held.
func TestFallbackAcquireRacingCloseTakesNoLocalLease(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	cut := &cutHook{}
	rdb := f.hookedClient(t, cut)
	logs := &blockedLog{reached: make(chan struct{}), open: make(chan struct{})}
	const timeout = time.Second // three failures over two timeouts: within two ticks
	// Backoffs as long as a tick: failures a tick apart count as in a row.
	l := f.limiterOn(t, rdb, WithTimeout(timeout), WithBackoff(time.Millisecond, DefaultTTL/3), WithLogger(slog.New(logs)))
	f.settle(t, 1) // the first tick counted the replicas: a share of the whole cap
	require.Equal(t, 1, l.Stats().Replicas)

	cut.down.Store(true)
	for range 2 { // two ticks fail: not a fallback yet
		f.advance(l.cfg.renew)
		f.settle(t, 1)
	}
	require.False(t, l.Stats().Fallback)
	var ls amlpool.Lease
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		ls, err = l.Acquire(ctx, eps(1)) // the third failure: the Limiter falls back
	}()
	<-logs.reached
	require.NoError(t, l.Close())
	close(logs.open)
	<-done
	assert.ErrorIs(t, err, amlpool.ErrClosed)
	assert.Zero(t, l.Stats().Held, "a lease held after Close")
	if ls != nil {
		ls.Release()
	}
}

// A grant whose notice this process missed is taken at its next tick. If
// that tick's reply is lost after Redis ran it (go-redis then sends it
// again, or the round trip fails), the grant must still reach the process,
// at the tick's second run or at the next tick: else the granted lease
// holds its slot, unused, for a TTL while a call waits for it.
func TestGrantOfATickWithItsReplyLost(t *testing.T) {
	for _, tt := range []struct {
		name    string
		retries int // go-redis's MaxRetries: the tick runs again, or fails
	}{{"retried", 1}, {"failed", -1}} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := testCtx(t)
			h := &replyCut{sha: []byte(tickScript.Hash()), ran: func() {}}
			rdb := redis.NewClient(&redis.Options{Addr: f.m.Addr(), ContextTimeoutEnabled: true, MaxRetries: tt.retries})
			t.Cleanup(func() { _ = rdb.Close() })
			rdb.AddHook(h)
			require.NoError(t, tickScript.Load(ctx, f.rdb).Err()) // EVALSHA: the sha is on the wire
			ticked := make(chan struct{}, 1)
			l := f.limiterOn(t, rdb,
				WithOnTick(func(done bool) {
					if done {
						ticked <- struct{}{}
					}
				}))
			<-ticked // the first, at New

			// Another process holds the only slot; a call here waits for it.
			key := "amlpool:{t}:ep:a"
			require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(f.clk.Now().Add(time.Minute).UnixMilli(), "q:1")).Err())
			got := f.waitFor(t, ctx, l, 2, eps(1))
			// It releases the slot and grants it to this process, whose
			// subscription misses the notice.
			id := l.proc + ":gq.1"
			exp := f.clk.Now().Add(DefaultTTL).UnixMilli()
			require.NoError(t, f.rdb.ZRem(ctx, key, "q:1").Err())
			require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(exp, id)).Err())
			require.NoError(t, f.rdb.ZAdd(ctx, "amlpool:{t}:grants", redisZ(exp, l.proc+"|"+key+"|"+id)).Err())

			h.armed.Store(true)
			f.advance(l.cfg.renew) // the tick that reads the grant, its reply cut
			if tt.retries < 0 {
				f.settle(t, 2) // it failed; the keeper and the pump sleep again
				require.False(t, h.armed.Load(), "the tick's connection was not cut")
				f.advance(l.cfg.renew) // the next tick
			}
			<-ticked
			require.False(t, h.armed.Load(), "the tick's connection was not cut")
			require.Zero(t, l.Stats().Waiting, "the granted lease is unused, a call waits for it")
			ls := receive(t, got)
			assert.Equal(t, []string{id}, f.leases(t, "a"))
			assert.EqualValues(t, 1, l.Stats().Grants)
			ls.Release()
			require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
		})
	}
}

// go-redis sends a release again when its connection breaks after Redis ran
// it. The second run must do nothing more: the lease it finds gone is not
// lost, and the slot the first run granted to a waiting process, which that
// process has used and released since and which it wants again, is not
// granted to it a second time under the same id (a grant it would take for
// the one it has heard of already, leaving the lease unused for a TTL).
func TestRetriedReleaseActsOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		gap  time.Duration // between the two runs, on Redis's clock
	}{
		{"at once", 0},
		// Sent 1 s after the first (within the timeout), run almost a TTL
		// after its sending.
		{"a TTL later", DefaultTTL + time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := testCtx(t)
			key, want := "amlpool:{t}:ep:a", "amlpool:{t}:want:a"
			later := f.clk.Now().Add(time.Minute).UnixMilli()
			h := &replyCut{sha: []byte(releaseScript.Hash())}
			h.ran = func() { // q used its grant and released it, and wants another
				ids := f.rdb.ZRange(ctx, key, 0, -1).Val()
				assert.Len(t, ids, 1)
				assert.True(t, strings.HasPrefix(ids[0], "q:g"), "granted to q: %v", ids)
				f.rdb.Del(ctx, key)
				f.rdb.ZAdd(ctx, want, redisZ(later, "q"))
				f.m.SetTime(f.clk.Now().Add(tc.gap)) // Redis's clock only: no tick is due
				f.m.FastForward(tc.gap)
			}
			released := make(chan struct{}, 1)
			l := f.replyCutLimiter(t, h, releaseScript, WithOnReleased(func() { released <- struct{}{} }))

			ls, err := l.TryAcquire(ctx, eps(1))
			require.NoError(t, err)
			require.NotNil(t, ls)
			require.NoError(t, f.rdb.ZAdd(ctx, want, redisZ(later, "q")).Err()) // another process waits
			h.armed.Store(true)
			ls.Release()
			<-released
			require.False(t, h.armed.Load(), "the script's connection was not cut")
			assert.Empty(t, f.leases(t, "a"), "the slot granted again")
			require.NoError(t, l.Close()) // waits for the release to be over
			assert.Zero(t, l.Stats().Lost, "a lease released once counted lost")
		})
	}
}

// go-redis sends a health report again when its connection breaks after
// Redis ran it. The failures it reports must count once across the fleet,
// or the other replicas eject the endpoint after half the failures. The
// copy may be sent as late as WithTimeout after the first (go-redis's
// backoff; every round trip's deadline is WithTimeout), which may be longer
// than the three ticks a heartbeat lives.
func TestRetriedHealthReportCountsOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		gap  time.Duration // between the two runs, on Redis's clock
	}{
		{"at once", 0},
		{"past three ticks, within the timeout", 4 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			h := &replyCut{sha: []byte(healthScript.Hash()), ran: func() {
				f.m.SetTime(f.clk.Now().Add(tc.gap)) // Redis's clock only: no tick is due
				f.m.FastForward(tc.gap)
			}}
			// Ticks of 1 s: a heartbeat lives 3 s, round trips 5 s.
			l1 := f.replyCutLimiter(t, h, healthScript, WithRenewInterval(time.Second))
			l2 := f.limiter(t)
			f.subscribed(t, l1.keys.health, 2)
			r1, _ := link(t, l1)
			_, c2 := link(t, l2)

			h.armed.Store(true)
			r1.Report(amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthFailed, Failures: 2})
			assert.Equal(t, amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthFailed, Failures: 2}, c2.next(t))
			// The next report is written after the first's round trip, retry
			// included: its news comes after any the retry published.
			r1.Report(amlpool.HealthEvent{ID: "b", Kind: amlpool.HealthRecovered})
			assert.Equal(t, amlpool.HealthEvent{ID: "b", Kind: amlpool.HealthRecovered}, c2.next(t), "failures counted twice")
			require.False(t, h.armed.Load(), "the script's connection was not cut")
		})
	}
}

// orderHook runs the first acquire script before the first tick's, and
// hands the acquire its reply only once the tick's has been taken in: the
// order a starting process's first call and first tick may take.
type orderHook struct {
	processOnly
	clk      *clock.Fake
	acquired chan struct{}
	done     <-chan struct{}
	tick     atomic.Bool
	acq      atomic.Bool
}

func (h *orderHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !strings.EqualFold(cmd.Name(), "evalsha") {
			return next(ctx, cmd)
		}
		switch cmd.Args()[1] {
		case tickScript.Hash():
			if h.tick.CompareAndSwap(false, true) {
				select {
				case <-h.acquired:
				case <-h.done:
				}
			}
		case acquireScript.Hash():
			if h.acq.CompareAndSwap(false, true) {
				err := next(ctx, cmd)
				close(h.acquired)
				h.clk.WaitTimers(1, h.done) // the keeper sleeps: the tick's reply is in
				return err
			}
		}
		return next(ctx, cmd)
	}
}

// A process's first acquire may run in Redis before its first tick has
// written the heartbeat, and its reply come after the tick's: the missing
// heartbeat is no outage then, and must not hold the process to its share
// of the caps (a rejoin window that, on a quiet fleet, keeps a call
// waiting with a slot free).
func TestFirstAcquireBeforeFirstHeartbeatIsNoOutage(t *testing.T) {
	f := newFixture(t)
	ctx := testCtx(t)
	h := &orderHook{clk: f.clk, acquired: make(chan struct{}), done: ctx.Done()}
	rdb := f.hookedClient(t, h, tickScript, acquireScript)
	l := f.limiterOn(t, rdb)
	ls, err := l.Acquire(ctx, eps(2))
	require.NoError(t, err)
	defer ls.Release()
	require.True(t, h.tick.Load(), "the first tick did not wait for the acquire")
	l.mu.Lock()
	defer l.mu.Unlock()
	assert.True(t, l.ticked)
	assert.Zero(t, l.rejoin, "a rejoin window opened at start-up")
}

// takeInFallback takes leases on eps(capacity) from l, whose Redis is cut,
// until it has fallen back and takes local ones, moving f's clock on by
// timeout while calls still fail, and returns all it could take then.
func takeInFallback(t *testing.T, f *fixture, l *Limiter, ctx context.Context, capacity int, timeout time.Duration) []amlpool.Lease {
	t.Helper()
	var held []amlpool.Lease
	for i := 0; len(held) == 0; i++ { // calls fail until the Limiter falls back, then take local leases
		require.Less(t, i, maxSteps, "the Limiter never fell back")
		for {
			ls, err := l.TryAcquire(ctx, eps(capacity))
			require.NoError(t, err)
			if ls == nil {
				break
			}
			held = append(held, ls)
		}
		if len(held) == 0 {
			f.advance(timeout)
		}
	}
	return held
}
