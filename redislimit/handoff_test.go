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

// Past WithHandoff's time a lease is still handed on at once, and Redis is
// asked in the background whether another process should have a slot; with
// nobody else waiting, it should not.
func TestHandoffAsksInTheBackground(t *testing.T) {
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
	assert.EqualValues(t, 1, l.Stats().Handoffs, "handed on: the call did not wait for Redis")
	assert.Equal(t, ids, f.leases(t, "a"), "the same lease")
	require.Eventually(t, func() bool { return l.Stats().RoundTrips == trips+1 }, testTimeout, time.Millisecond,
		"the question to Redis")
	l.mu.Lock()
	owed := l.eps["a"].owed
	l.mu.Unlock()
	assert.Zero(t, owed, "nobody else wants a slot")
	b.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
}

// A process that keeps handing its leases on gives one up, when its time is
// up, to a process that waits for the endpoint and holds at least two
// fewer: shares even out.
func TestHandoffGivesWayToAProcessWithFewer(t *testing.T) {
	f := newFixture(t)
	l1, l2 := f.limiter(t, WithHandoff(time.Second)), f.limiter(t)
	f.subscribed(t, l1.keys.grant, 2)
	ctx := testCtx(t)
	var held []amlpool.Lease
	for range 2 {
		ls, err := l1.Acquire(ctx, eps(2))
		require.NoError(t, err)
		held = append(held, ls)
	}
	w1 := f.waitFor(t, ctx, l1, 3, eps(2))
	w2 := f.waitFor(t, ctx, l2, 4, eps(2))
	w3 := f.waitFor(t, ctx, l1, 4, eps(2))
	f.advance(time.Second) // the handoff time is up
	f.settle(t, 4)

	held[0].Release() // handed on to l1's waiting call, and l1 asks
	held = append(held, receive(t, w1))
	require.Eventually(t, func() bool {
		l1.mu.Lock()
		defer l1.mu.Unlock()
		return l1.eps["a"].owed == 1
	}, testTimeout, time.Millisecond, "l1 holds 2, l2 none: l1 owes one")
	held[1].Release() // goes to l2, not to l1's second waiting call
	b := receive(t, w2)
	assert.EqualValues(t, 1, l2.Stats().Grants)
	select {
	case <-w3:
		t.Fatal("l1 kept the slot it owed")
	default:
	}
	held[2].Release() // now l1's
	held = append(held, b, receive(t, w3))
	for _, ls := range held[3:] {
		ls.Release()
	}
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
	f.subscribed(t, l1.keys.grant, 2)
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

// A pool's name may hold a '|', with which grants' entries and notices also
// separate their fields: a grant must still reach the process it is for,
// from its notice or, missed, from the next tick.
func TestGrantInAPoolWhoseNameHoldsABar(t *testing.T) {
	for _, missed := range []bool{false, true} {
		t.Run(map[bool]string{false: "notice", true: "tick"}[missed], func(t *testing.T) {
			f := newFixture(t)
			ctx := testCtx(t)
			l1 := f.limiter(t, WithPool("t|u"))
			var l2 *Limiter
			if missed {
				l2 = f.limiter(t, WithPool("t|u"), WithoutReleaseNotify())
			} else {
				l2 = f.limiter(t, WithPool("t|u"))
				f.subscribed(t, l1.keys.grant, 2)
			}
			key := "amlpool:{t|u}:ep:a"
			a, err := l1.Acquire(ctx, eps(1))
			require.NoError(t, err)
			got := f.waitFor(t, ctx, l2, 3, eps(1))
			if missed {
				// Granted to l2 by another process; its notice never came.
				id := l2.proc + ":gq.1"
				exp := f.clk.Now().Add(time.Minute).UnixMilli()
				require.NoError(t, f.rdb.ZAdd(ctx, key, redisZ(exp, id)).Err())
				require.NoError(t, f.rdb.ZAdd(ctx, l2.keys.grants, redisZ(exp, l2.proc+"|"+key+"|"+id)).Err())
				f.advance(l2.cfg.renew)
			} else {
				a.Release()
			}
			b := receive(t, got)
			assert.EqualValues(t, 1, l2.Stats().Grants)
			b.Release()
			if missed {
				a.Release()
			}
			require.Eventually(t, func() bool { return f.rdb.ZCard(ctx, key).Val() == 0 }, testTimeout, time.Millisecond)
		})
	}
}

// A grant whose announcement was lost is taken at the next tick; one heard
// of twice is taken once, also when ticks return it for longer than this
// process's TTL (the process that granted it has a longer one).
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
	b.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 1 }, testTimeout, time.Millisecond)

	l.granted(key, id) // the message, late
	assert.EqualValues(t, 1, l.Stats().Grants, "taken once")
	f.settle(t, 1)
	for range 6 { // twice l's TTL, while the grant lives in Redis and l uses the endpoint
		f.advance(l.cfg.renew)
		f.settle(t, 1)
	}
	require.EqualValues(t, 1, f.rdb.ZCard(ctx, l.keys.grants).Val(), "the grant expired")
	assert.EqualValues(t, 1, l.Stats().Grants, "taken once")
	assert.Equal(t, 1, l.Stats().Held)
	assert.Zero(t, l.Stats().Lost)
	a.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 0 }, testTimeout, time.Millisecond)
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
	tests := []struct {
		name    string
		held    int // the lease's cap
		waiting int // the cap the waiting call asks with
	}{
		{"handed on", 1, 1},
		// A lower cap: not handed on, but kept for the waiting call by the
		// release's round trip.
		{"kept", 2, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var during func()
			ticks := make(chan struct{}, 4) // ticks over
			hold := make(chan struct{})     // holds a release between its round trip and the use of its reply
			close(hold)
			l := f.limiter(t, WithOnTick(func(done bool) {
				switch {
				case done:
					ticks <- struct{}{}
				case during != nil:
					during()
					during = nil
				}
			}), WithOnReleased(func() { <-hold }))
			<-ticks // the first, at New
			ctx := testCtx(t)
			a, err := l.Acquire(ctx, eps(tt.held))
			require.NoError(t, err)
			ids := f.leases(t, "a")
			got := f.waitFor(t, ctx, l, 2, eps(tt.waiting))
			hold = make(chan struct{})
			during = func() {
				a.Release()
				if tt.name == "handed on" {
					close(hold)
				}
				// Kept: the release's round trip is done (the lease kept in
				// Redis), its reply waits until the tick is over.
			}
			f.advance(l.cfg.renew)
			select {
			case <-ticks: // the tick is over, its clean-up included
			case <-time.After(testTimeout):
				t.Fatal("the tick never ended")
			}
			if tt.name == "kept" {
				close(hold)
			}
			b := receive(t, got)
			assert.Equal(t, ids, f.leases(t, "a"), "the lease in use was deleted")
			b.Release()
		})
	}
}

// Leases past the cap (written back after an outage or a failover) are not
// handed on: each one freed goes back to Redis until the count is down, so
// the over-cap ends with the calls that made it.
func TestHandoffStopsWhileTheFleetIsOverTheCap(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	ctx := testCtx(t)
	a, err := l.Acquire(ctx, eps(2))
	require.NoError(t, err)
	b, err := l.Acquire(ctx, eps(2))
	require.NoError(t, err)
	// Another process's lease, written back past the cap of 2.
	require.NoError(t, f.rdb.ZAdd(ctx, "amlpool:{t}:ep:a", redisZ(f.clk.Now().UnixMilli()+60000, "other:1")).Err())
	got := f.waitFor(t, ctx, l, 2, eps(2))
	f.advance(l.cfg.renew) // the tick sees 3 leases for a cap of 2
	f.settle(t, 2)

	a.Release()
	require.Eventually(t, func() bool { return len(f.leases(t, "a")) == 2 }, testTimeout, time.Millisecond,
		"the lease went back to Redis")
	select {
	case <-got:
		t.Fatal("a lease past the cap was handed on")
	default:
	}
	assert.Zero(t, l.Stats().Handoffs)

	// Down to the cap (b and the other's): the next tick lets handoffs go
	// on.
	f.advance(l.cfg.renew)
	f.settle(t, 2)
	b.Release()
	c := receive(t, got)
	assert.EqualValues(t, 1, l.Stats().Handoffs)
	c.Release()
}
