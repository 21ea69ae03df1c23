package pool

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPoolFillsEverySlotThenFailsFast(t *testing.T) {
	t.Parallel()
	p := testPool(t, 2, 3)
	var got []Slot
	for range 5 {
		got = append(got, acquire(t, p))
	}
	assert.Equal(t, []int{2, 3}, inFlight(p))
	_, err := p.Acquire(context.Background(), &Exclusion{}, 0)
	assert.ErrorIs(t, err, ErrNoCapacity)
	_, ok := p.TryAcquire(&Exclusion{})
	assert.False(t, ok)
	for _, slot := range got {
		release(p, slot)
	}
	assert.Equal(t, []int{0, 0}, inFlight(p))
}

func TestPoolReleaseMoreThanHeldPanics(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1)
	e := p.Set().Eps[0]
	for _, r := range []Result{OK, Unsent} {
		assert.PanicsWithValue(t, "amlpool: released more than held", func() { p.Release(Slot{Ep: e}, &Report{Result: r}, nil) }, "%v", r)
		e.storeHeld(0)
	}
}

func TestPoolServesWaitersFirstComeFirstServed(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1, 1)
	a, b := acquire(t, p), acquire(t, p)

	ctxs := make([]context.Context, 8)
	for i := range ctxs {
		ctxs[i] = context.Background()
	}
	order, _ := queueN(t, p, ctxs)
	require.Equal(t, 8, p.Waiting())

	// Each waiter releases its slot as soon as it has it, so the line drains
	// through one slot; the other stays held.
	release(p, a)
	var got []int
	for range 8 {
		got = append(got, <-order)
	}
	assert.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7}, got)
	release(p, b)
	assert.Equal(t, 0, p.Waiting())
	assert.Equal(t, []int{0, 0}, inFlight(p))
}

func TestPoolCancelWhileWaitingLeaksNoSlot(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1)
	held := acquire(t, p)

	// 50 waiters; cancel every one but the last.
	ctxs := make([]context.Context, 50)
	cancels := make([]context.CancelFunc, 50)
	for i := range ctxs {
		ctxs[i], cancels[i] = context.WithCancel(context.Background())
	}
	order, errs := queueN(t, p, ctxs)
	for i := range 49 {
		cancels[i]()
	}
	for range 49 {
		assert.ErrorIs(t, <-errs, context.Canceled)
	}
	require.Equal(t, 1, p.Waiting())
	release(p, held)
	assert.Equal(t, 49, <-order)
	cancels[49]()
	assert.Equal(t, []int{0}, inFlight(p))

	// The slot is whole again: it can be taken, and only once.
	slot := acquire(t, p)
	_, err := p.Acquire(context.Background(), &Exclusion{}, 0)
	assert.ErrorIs(t, err, ErrNoCapacity)
	release(p, slot)
}

func TestPoolMaxWaitEndsWithErrNoCapacity(t *testing.T) {
	t.Parallel()
	p, clk := newTestPool(t, Config{}, testSpecs(1))
	held := acquire(t, p)
	done := make(chan error)
	go func() {
		_, err := p.Acquire(context.Background(), &Exclusion{}, time.Second)
		done <- err
	}()
	require.True(t, clk.WaitTimers(1, nil))
	clk.Advance(999 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("returned before the max wait: %v", err)
	default:
	}
	clk.Advance(time.Millisecond)
	assert.ErrorIs(t, <-done, ErrNoCapacity)
	assert.Equal(t, 0, p.Waiting())
	release(p, held)
}

func TestPoolDoneContextFailsEvenWithFreeSlots(t *testing.T) {
	t.Parallel()
	p := testPool(t, 5)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.Acquire(ctx, &Exclusion{}, -1)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, []int{0}, inFlight(p))
}

func TestPoolCloseReleasesWaiters(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1)
	held := acquire(t, p)
	_, errs := queueN(t, p, []context.Context{context.Background(), context.Background()})
	p.Close()
	assert.ErrorIs(t, <-errs, ErrClosed)
	assert.ErrorIs(t, <-errs, ErrClosed)
	_, err := p.Acquire(context.Background(), &Exclusion{}, -1)
	assert.ErrorIs(t, err, ErrClosed)
	release(p, held)
}

// A waiter that may not use the only free endpoint must not block the waiter
// behind it that may.
func TestPoolRestrictedWaiterDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1, 1)
	a, b := acquire(t, p), acquire(t, p)

	restricted := &Exclusion{On: true}
	restricted.Tried.Add(a.Ep)
	queued := make(chan struct{}, 2)
	p.OnQueue = func() { queued <- struct{}{} }
	got := make(chan Slot, 2)
	go func() { slot, _ := p.Acquire(context.Background(), restricted, -1); got <- slot }()
	<-queued
	go func() { slot, _ := p.Acquire(context.Background(), &Exclusion{}, -1); got <- slot }()
	<-queued

	release(p, a) // only the second waiter may use a
	sa := <-got
	assert.Same(t, a.Ep, sa.Ep)
	release(p, b) // the restricted one takes b
	sb := <-got
	assert.Same(t, b.Ep, sb.Ep)
	release(p, sa)
	release(p, sb)
}

func TestPoolNeverExceedsLimitUnderContention(t *testing.T) {
	t.Parallel()
	p := testPool(t, 3, 5, 7)
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := make([]int, 3)
	for range 64 {
		wg.Go(func() {
			for range 300 {
				slot, err := p.Acquire(context.Background(), &Exclusion{}, -1)
				if !assert.NoError(t, err) {
					return
				}
				n, i := slot.Ep.InFlight(), index(p, slot.Ep)
				mu.Lock()
				peak[i] = max(peak[i], n)
				mu.Unlock()
				release(p, slot)
			}
		})
	}
	wg.Wait()
	for i, e := range p.Set().Eps {
		assert.LessOrEqual(t, peak[i], e.Max(), e.Name())
	}
	assert.Equal(t, []int{0, 0, 0}, inFlight(p))
	assert.Equal(t, 0, p.Waiting())
}

// A call whose max wait ends as it is granted a slot keeps the slot: its
// only problem was the wait.
func TestPoolLateGrantServesAMaxWait(t *testing.T) {
	t.Parallel()
	p, clk := newTestPool(t, Config{}, testSpecs(1))
	held := acquire(t, p)
	queued := make(chan struct{}, 1)
	p.OnQueue = func() { queued <- struct{}{} }
	res := make(chan error)
	go func() {
		slot, err := p.Acquire(context.Background(), &Exclusion{}, time.Second)
		if err == nil {
			release(p, slot)
		}
		res <- err
	}()
	<-queued
	require.True(t, clk.WaitTimers(1, nil))
	// The grant and the timeout come together: the call is served.
	p.mu.Lock()
	p.giveBack(held.Ep)
	p.grantLocked()
	clk.Advance(time.Second)
	p.mu.Unlock()
	assert.NoError(t, <-res)
	assert.Equal(t, []int{0}, inFlight(p))
}

// panicky is a Picker that panics once each time it is armed.
func panicky(armed *atomic.Bool) Picker {
	return func(s *Set, x Exclusion) int {
		if armed.Swap(false) {
			panic("picker bug")
		}
		return PickRandom(s, &x)
	}
}

// recovered runs f and returns what it panicked with, or nil.
func recovered(f func()) (r any) {
	defer func() { r = recover() }()
	f()
	return nil
}

// A Picker that panics picking for a call makes that call panic, in its
// own goroutine, and no other: not the release that served the line,
// whose freed slot goes on to the next waiting call at once, nor the
// calls behind. Nothing is left held or in line.
func TestPoolPickerPanicReachesItsCallOnly(t *testing.T) {
	t.Parallel()
	var armed atomic.Bool
	p, _ := newTestPool(t, Config{Balance: Custom, Pick: panicky(&armed)}, testSpecs(1))
	held := acquire(t, p)
	queued := make(chan struct{})
	p.OnQueue = func() { queued <- struct{}{} }
	type end struct {
		slot     Slot
		err      error
		panicked any
	}
	ends := make([]chan end, 2)
	for i := range ends {
		ends[i] = make(chan end, 1)
		go func() {
			var e end
			e.panicked = recovered(func() { e.slot, e.err = p.Acquire(context.Background(), &Exclusion{}, -1) })
			ends[i] <- e
		}()
		<-queued
	}

	// The release's pass picks for the first waiting call, which panics;
	// the second takes the slot.
	armed.Store(true)
	require.Nil(t, recovered(func() { release(p, held) }), "the release does not panic")
	first := <-ends[0]
	assert.Equal(t, "picker bug", first.panicked)
	second := <-ends[1]
	require.Nil(t, second.panicked)
	require.NoError(t, second.err)
	assert.Equal(t, 0, p.Waiting())
	assert.Equal(t, []int{1}, inFlight(p))

	// A call that panics picking for itself holds nothing and leaves
	// nothing in line.
	for _, maxWait := range []time.Duration{0, -1} {
		armed.Store(true)
		assert.Equal(t, "picker bug", recovered(func() { _, _ = p.Acquire(context.Background(), &Exclusion{}, maxWait) }))
		assert.Equal(t, 0, p.Waiting())
		assert.Equal(t, []int{1}, inFlight(p))
	}
	release(p, second.slot)
	assert.Equal(t, []int{0}, inFlight(p))
}

// A built-in Picker that panics, which only a bug of this package's can
// make it do (here, in its random source), panics the call it was picking
// for, as a custom one does, and not the goroutine serving the line: a
// release of another call, Update, or Run, where a panic ends the program.
func TestPoolBuiltInPickerPanicReachesItsCallOnly(t *testing.T) {
	t.Parallel()
	var armed atomic.Bool
	rnd := lockedRand(1, 2)
	p, _ := newTestPool(t, Config{Balance: Random, Rand: func() uint64 {
		if armed.Swap(false) {
			panic("picker bug")
		}
		return rnd()
	}}, testSpecs(1, 1))
	a, b := acquire(t, p), acquire(t, p)
	queued := make(chan struct{})
	p.OnQueue = func() { close(queued) }
	panicked := make(chan any, 1)
	go func() {
		panicked <- recovered(func() { _, _ = p.Acquire(context.Background(), &Exclusion{}, -1) })
	}()
	<-queued

	armed.Store(true) // PickRandom draws for the waiting call in a's release
	require.Nil(t, recovered(func() { release(p, a) }), "the release does not panic")
	assert.Equal(t, "picker bug", <-panicked)
	assert.Zero(t, p.Waiting())
	release(p, b)
	assert.Equal(t, []int{0, 0}, inFlight(p))
}

// A call's Exclusion stays where its caller keeps it (a Client keeps it in
// the call, on the stack of Do): taking and giving back a slot allocates
// nothing, whatever the Picker.
func TestAcquireReleaseNoAllocs(t *testing.T) {
	// Not parallel: AllocsPerRun counts every goroutine's allocations.
	for name, balance := range balances {
		t.Run(name, func(t *testing.T) {
			p, clk := newTestPool(t, Config{Balance: balance, Pick: custom(balance)}, testSpecs(20, 20, 20))
			r := &Report{Result: OK, Start: clk.Now(), Latency: time.Millisecond}
			allocs := testing.AllocsPerRun(1000, func() {
				var x Exclusion
				slot, err := p.Acquire(context.Background(), &x, -1)
				if err == nil {
					p.Release(slot, r, nil)
				}
			})
			assert.Zero(t, allocs)
		})
	}
}

// A waiting call avoids the endpoints it tried only while another may take
// calls: once every untried one leaves rotation or the Set, it takes a free
// slot on one it tried, at once. (While one is usable, it waits for it:
// TestPoolRestrictedWaiterDoesNotBlockOthers.)
func TestPoolWaiterExclusionLapsesWhenTheOthersLeaveRotation(t *testing.T) {
	t.Parallel()
	cases := map[string]func(p *Pool, held Slot){
		"cool-down": func(p *Pool, held Slot) {
			released(p, held, &Report{Result: Full, Start: p.cfg.Clock.Now(), CoolDown: time.Minute})
		},
		"ejection": func(p *Pool, held Slot) {
			released(p, held, &Report{Result: Failed, Start: p.cfg.Clock.Now()})
		},
		"removal": func(p *Pool, held Slot) {
			s := p.Set().Eps
			p.Update([]Spec{testSpec(s[0].Name(), 1), testSpec(s[2].Name(), 1)})
			release(p, held)
		},
		"remote cool-down": func(p *Pool, held Slot) {
			p.CoolDown(held.Ep, time.Minute) // still full: only the cool-down wakes the line
			t.Cleanup(func() { release(p, held) })
		},
		"remote ejection": func(p *Pool, held Slot) {
			p.RemoteEject(held.Ep, time.Minute, false)
			t.Cleanup(func() { release(p, held) })
		},
		"remote failures": func(p *Pool, held Slot) {
			p.RemoteFailures(held.Ep, 1)
			t.Cleanup(func() { release(p, held) })
		},
	}
	for name, leave := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// Three endpoints, so that one ejected starts no panic.
			p, _ := newTestPool(t, Config{EjectAfter: 1, EjectFor: time.Minute}, testSpecs(1, 1, 1))
			tried0, untried, tried2 := p.Set().Eps[0], p.Set().Eps[1], p.Set().Eps[2]
			held, ok := p.TryTake(untried)
			require.True(t, ok)
			x := excluding(p, 0, 2)
			queued := make(chan struct{}, 1)
			p.OnQueue = func() { queued <- struct{}{} }
			got := make(chan Slot, 1)
			go func() {
				slot, _ := p.Acquire(context.Background(), x, -1) // ErrClosed if never served
				got <- slot
			}()
			<-queued
			require.Equal(t, 1, p.Waiting(), "the call waits for the one endpoint it has not tried")

			leave(p, held) // serves the line before it returns
			require.Zero(t, p.Waiting(), "the call still waits for an endpoint out of rotation")
			slot := <-got
			assert.Contains(t, []*Endpoint{tried0, tried2}, slot.Ep)
			release(p, slot)
		})
	}
}

// Queued is closed once a call waits in the line: not for a call served at
// once, at once while one waits.
func TestPoolQueuedClosesWhenACallWaits(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1)
	q := p.Queued()
	slot, err := p.Acquire(context.Background(), &Exclusion{}, -1) // a free slot: no wait
	require.NoError(t, err)
	select {
	case <-q:
		t.Fatal("closed for a call that did not wait")
	default:
	}
	queued := make(chan struct{})
	p.OnQueue = func() { close(queued) }
	done := make(chan error, 1)
	go func() {
		s, err := p.Acquire(context.Background(), &Exclusion{}, -1)
		if err == nil {
			release(p, s)
		}
		done <- err
	}()
	<-queued
	<-q          // closed: a call waits
	<-p.Queued() // closed at once while one waits
	release(p, slot)
	require.NoError(t, <-done)
	select {
	case <-p.Queued():
		t.Fatal("closed with no call waiting")
	default:
	}
}
