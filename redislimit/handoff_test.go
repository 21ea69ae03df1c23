package redislimit

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
)

// waitFor starts an Acquire that must wait in l's line, returns once it
// does and once l's background work sleeps again (n timers: keepers and
// pumps on the fixture's clock), and returns the channel its lease arrives
// on; the lease is the test's to release.
func (f *fixture) waitFor(t *testing.T, ctx context.Context, l *Limiter, n int, cands []amlpool.LimitedEndpoint) <-chan amlpool.Lease {
	t.Helper()
	waiting := l.Stats().Waiting
	got := make(chan amlpool.Lease, 1)
	go func() {
		ls, err := l.Acquire(ctx, cands)
		if assert.NoError(t, err) {
			got <- ls
		}
	}()
	require.Eventually(t, func() bool { return l.Stats().Waiting == waiting+1 }, testTimeout, time.Millisecond)
	f.settle(t, n)
	return got
}

func (f *fixture) leases(t *testing.T, ep string) []string {
	t.Helper()
	return f.rdb.ZRange(testCtx(t), "amlpool:{t}:ep:"+ep, 0, -1).Val()
}

// A lease freed while a call of the same process waits for its endpoint goes
// to that call without a round trip, under the same lease id in Redis.
func TestHandoffNeedsNoRoundTrip(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	ctx := testCtx(t)
	a, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	ids := f.leases(t, "a")
	got := f.waitFor(t, ctx, l, 2, eps(1))

	trips := l.Stats().RoundTrips
	a.Release()
	b := receive(t, got)
	s := l.Stats()
	assert.Equal(t, trips, s.RoundTrips, "a handoff costs no round trip")
	assert.EqualValues(t, 1, s.Handoffs)
	assert.Equal(t, 1, s.Held)
	assert.Equal(t, ids, f.leases(t, "a"), "the same lease, still counted once")
	a.Release() // a second release of the first holder changes nothing
	assert.Equal(t, 1, l.Stats().Held)

	b.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
	assert.Zero(t, l.Stats().Held)
}

// Past WithHandoff's time a lease goes back to Redis; with nobody else
// waiting for its endpoint, Redis keeps it for this process, in one round
// trip, and the waiting call gets it.
func TestHandoffEndsAfterItsTime(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t, WithHandoff(time.Second))
	ctx := testCtx(t)
	a, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	ids := f.leases(t, "a")
	got := f.waitFor(t, ctx, l, 2, eps(1))
	f.advance(time.Second)
	f.settle(t, 2)

	trips := l.Stats().RoundTrips
	a.Release()
	b := receive(t, got)
	s := l.Stats()
	assert.Equal(t, trips+1, s.RoundTrips, "the release, which kept the slot")
	assert.Zero(t, s.Handoffs)
	assert.Equal(t, ids, f.leases(t, "a"), "kept: the same lease")
	b.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
}

func TestWithoutHandoff(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t, WithoutHandoff())
	ctx := testCtx(t)
	a, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	got := f.waitFor(t, ctx, l, 2, eps(1))
	a.Release()
	b := receive(t, got)
	assert.Zero(t, l.Stats().Handoffs)
	b.Release()
}

// A slot released in one process goes, in the release's round trip, to the
// other process whose call waits for it: granted in its name and announced
// to it alone.
func TestGrantGoesToTheWaitingProcess(t *testing.T) {
	f := newFixture(t)
	l1, l2 := f.limiter(t), f.limiter(t)
	ctx := testCtx(t)
	a, err := l1.Acquire(ctx, eps(1))
	require.NoError(t, err)
	got := f.waitFor(t, ctx, l2, 3, eps(1))
	require.Equal(t, []string{l2.proc}, f.rdb.ZRange(ctx, "amlpool:{t}:want:a", 0, -1).Val(), "l2 said it wants a slot")

	a.Release()
	b := receive(t, got)
	ids := f.leases(t, "a")
	require.Len(t, ids, 1)
	assert.True(t, strings.HasPrefix(ids[0], l2.proc+":g"), "granted in l2's name: %v", ids)
	assert.EqualValues(t, 1, l2.Stats().Grants)
	assert.Equal(t, 1, l2.Stats().Held)
	assert.Zero(t, l1.Stats().Held)
	b.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
}

// A grant whose announcement was lost is taken at the next tick; one heard
// of twice is taken once.
func TestMissedGrantIsTakenAtTheTick(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	ctx := testCtx(t)
	a, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	got := f.waitFor(t, ctx, l, 2, eps(1))
	// Another process released the fleet's second slot and granted it to
	// l; the message never came. (The cap is 1 here; a second slot stands
	// for one granted before the cap was lowered.)
	key, id := "amlpool:{t}:ep:a", l.proc+":gother.1"
	now := f.clk.Now().UnixMilli()
	require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(now+60000, id)).Err())
	require.NoError(t, f.rdb.ZAdd(ctx, l.keys.grants, redisZ(now+60000, l.proc+"|"+key+"|"+id)).Err())

	f.advance(l.cfg.renew)
	b := receive(t, got)
	assert.EqualValues(t, 1, l.Stats().Grants)
	assert.EqualValues(t, 0, f.rdb.ZCard(ctx, l.keys.grants).Val(), "the tick took it out of the grants")
	a.Release()
	b.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)

	l.granted(key, id) // the message, late
	assert.EqualValues(t, 1, l.Stats().Grants, "taken once")
	assert.Eventually(t, func() bool { return l.Stats().Held == 0 }, testTimeout, time.Millisecond)
	assert.Zero(t, l.Stats().Lost)
}

// A grant for a call that gave up meanwhile goes back: released at once,
// to another process that waits or free.
func TestGrantNobodyWaitsForIsReleased(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	ctx := testCtx(t)
	a, err := l.Acquire(ctx, eps(1))
	require.NoError(t, err)
	a.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)

	key, id := "amlpool:{t}:ep:a", l.proc+":gother.1"
	require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(f.clk.Now().UnixMilli()+60000, id)).Err())
	l.granted(key, id)
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
	assert.Zero(t, l.Stats().Held)
}

func redisZ(score int64, member string) redis.Z {
	return redis.Z{Score: float64(score), Member: member}
}

// receive returns the lease that arrives on got, failing the test if none
// comes in time.
func receive(t *testing.T, got <-chan amlpool.Lease) amlpool.Lease {
	t.Helper()
	select {
	case ls := <-got:
		return ls
	case <-time.After(testTimeout):
		t.Fatal("the waiting call got no lease")
		return nil
	}
}

// A lease handed on, or kept, while a tick is under way is the next call's:
// the tick must not delete it as one released (the fleet would count a
// slot less than it uses, and another replica would take it).
func TestTickLeavesALeaseHandedOnMeanwhile(t *testing.T) {
	for _, handoff := range []bool{true, false} {
		name := "kept"
		if handoff {
			name = "handed on"
		}
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			var during func()
			ticks := make(chan struct{}, 4) // ticks over
			opts := []Option{WithOnTick(func(done bool) {
				switch {
				case done:
					ticks <- struct{}{}
				case during != nil:
					during()
					during = nil
				}
			})}
			if !handoff {
				opts = append(opts, WithHandoff(time.Millisecond))
			}
			l := f.limiter(t, opts...)
			<-ticks // the first, at New
			ctx := testCtx(t)
			a, err := l.Acquire(ctx, eps(1))
			require.NoError(t, err)
			ids := f.leases(t, "a")
			got := f.waitFor(t, ctx, l, 2, eps(1))
			var b amlpool.Lease
			during = func() {
				a.Release()
				b = receive(t, got)
			}
			f.advance(l.cfg.renew)
			select {
			case <-ticks: // the tick is over, its clean-up included
			case <-time.After(testTimeout):
				t.Fatal("the tick never ended")
			}
			require.NotNil(t, b)
			assert.Equal(t, ids, f.leases(t, "a"), "the lease in use was deleted")
			b.Release()
		})
	}
}
