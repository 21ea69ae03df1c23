package amlpool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
)

// testPool builds a pool over endpoints with the given caps, no network.
func testPool(t testing.TB, caps ...int) *pool {
	t.Helper()
	cfgs := make([]Endpoint, len(caps))
	for i, n := range caps {
		cfgs[i] = Endpoint{URL: fmt.Sprintf("https://h/workspaces/w/services/e%d/execute", i), APIKey: "k", MaxConcurrentCalls: n}
	}
	eps, err := newEndpoints(cfgs, false)
	require.NoError(t, err)
	r := rand.New(rand.NewPCG(1, 2))
	var mu sync.Mutex
	rnd := func() uint64 { mu.Lock(); defer mu.Unlock(); return r.Uint64() }
	return newPool(eps, Random(), rnd, clock.NewFake())
}

func inFlight(p *pool) []int {
	out := make([]int, len(p.eps))
	for i, ep := range p.eps {
		out[i] = int(ep.inFlight.Load())
	}
	return out
}

func TestPoolFillsEverySlotThenFailsFast(t *testing.T) {
	p := testPool(t, 2, 3)
	var got []*endpoint
	for range 5 {
		ep, err := p.acquire(context.Background(), &exclusion{}, 0)
		require.NoError(t, err)
		got = append(got, ep)
	}
	assert.Equal(t, []int{2, 3}, inFlight(p))
	_, err := p.acquire(context.Background(), &exclusion{}, 0)
	assert.ErrorIs(t, err, ErrNoCapacity)
	for _, ep := range got {
		p.release(ep)
	}
	assert.Equal(t, []int{0, 0}, inFlight(p))
}

func TestPoolReleaseMoreThanHeldPanics(t *testing.T) {
	p := testPool(t, 1)
	assert.PanicsWithValue(t, "amlpool: released more than held", func() { p.release(p.eps[0]) })
}

// queueN starts n waiting acquires one after another, each in line before the
// next starts, and returns the channel their endpoints (or nil) arrive on in
// order of service.
func queueN(t *testing.T, p *pool, ctxs []context.Context) (order chan int, errs chan error) {
	t.Helper()
	queued := make(chan struct{})
	p.onQueue = func() { queued <- struct{}{} }
	order = make(chan int, len(ctxs))
	errs = make(chan error, len(ctxs))
	for i, ctx := range ctxs {
		go func() {
			ep, err := p.acquire(ctx, &exclusion{}, -1)
			if err != nil {
				errs <- err
				return
			}
			order <- i
			p.release(ep)
		}()
		<-queued
	}
	return order, errs
}

func TestPoolServesWaitersFirstComeFirstServed(t *testing.T) {
	p := testPool(t, 1, 1)
	a, err := p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)
	b, err := p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)

	ctxs := make([]context.Context, 8)
	for i := range ctxs {
		ctxs[i] = context.Background()
	}
	order, _ := queueN(t, p, ctxs)
	require.Equal(t, 8, p.waiting())

	// Each waiter releases its slot as soon as it has it, so the line drains
	// through one slot; the other stays held.
	p.release(a)
	var got []int
	for range 8 {
		got = append(got, <-order)
	}
	assert.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7}, got)
	p.release(b)
	assert.Equal(t, 0, p.waiting())
	assert.Equal(t, []int{0, 0}, inFlight(p))
}

func TestPoolCancelWhileWaitingLeaksNoSlot(t *testing.T) {
	p := testPool(t, 1)
	held, err := p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)

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
	require.Equal(t, 1, p.waiting())
	p.release(held)
	assert.Equal(t, 49, <-order)
	cancels[49]()
	assert.Equal(t, []int{0}, inFlight(p))

	// The slot is whole again: it can be taken, and only once.
	ep, err := p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)
	_, err = p.acquire(context.Background(), &exclusion{}, 0)
	assert.ErrorIs(t, err, ErrNoCapacity)
	p.release(ep)
}

func TestPoolMaxWaitEndsWithErrNoCapacity(t *testing.T) {
	p := testPool(t, 1)
	fake := p.clock.(*clock.Fake)
	held, err := p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)
	done := make(chan error)
	go func() {
		_, err := p.acquire(context.Background(), &exclusion{}, time.Second)
		done <- err
	}()
	require.True(t, fake.WaitTimers(1, nil))
	fake.Advance(999 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("returned before the max wait: %v", err)
	default:
	}
	fake.Advance(time.Millisecond)
	assert.ErrorIs(t, <-done, ErrNoCapacity)
	assert.Equal(t, 0, p.waiting())
	p.release(held)
}

func TestPoolDoneContextFailsEvenWithFreeSlots(t *testing.T) {
	p := testPool(t, 5)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.acquire(ctx, &exclusion{}, -1)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, []int{0}, inFlight(p))
}

func TestPoolCloseReleasesWaiters(t *testing.T) {
	p := testPool(t, 1)
	held, err := p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)
	_, errs := queueN(t, p, []context.Context{context.Background(), context.Background()})
	p.close()
	assert.ErrorIs(t, <-errs, ErrClosed)
	assert.ErrorIs(t, <-errs, ErrClosed)
	_, err = p.acquire(context.Background(), &exclusion{}, -1)
	assert.ErrorIs(t, err, ErrClosed)
	p.release(held)
}

// A waiter that may not use the only free endpoint must not block the waiter
// behind it that may.
func TestPoolRestrictedWaiterDoesNotBlockOthers(t *testing.T) {
	p := testPool(t, 1, 1)
	a, err := p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)
	b, err := p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)

	restricted := &exclusion{on: true}
	restricted.tried.add(a.idx)
	queued := make(chan struct{}, 2)
	p.onQueue = func() { queued <- struct{}{} }
	got := make(chan *endpoint, 2)
	go func() { ep, _ := p.acquire(context.Background(), restricted, -1); got <- ep }()
	<-queued
	go func() { ep, _ := p.acquire(context.Background(), &exclusion{}, -1); got <- ep }()
	<-queued

	p.release(a) // only the second waiter may use a
	assert.Same(t, a, <-got)
	p.release(b) // the restricted one takes b
	assert.Same(t, b, <-got)
	p.release(a)
	p.release(b)
}

func TestPoolNeverExceedsLimitUnderContention(t *testing.T) {
	p := testPool(t, 3, 5, 7)
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := make([]int32, 3)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 300 {
				ep, err := p.acquire(context.Background(), &exclusion{}, -1)
				if !assert.NoError(t, err) {
					return
				}
				n := ep.inFlight.Load()
				mu.Lock()
				peak[ep.idx] = max(peak[ep.idx], n)
				mu.Unlock()
				p.release(ep)
			}
		}()
	}
	wg.Wait()
	for i, ep := range p.eps {
		assert.LessOrEqual(t, peak[i], ep.max, ep.name)
	}
	assert.Equal(t, []int{0, 0, 0}, inFlight(p))
	assert.Equal(t, 0, p.waiting())
}

type panicky struct{ armed *atomic.Bool }

func (b panicky) Pick(s Candidates) int {
	if b.armed.Load() {
		panic("balancer bug")
	}
	return Random().Pick(s)
}

// A Balancer that panics must not leave the line locked or a slot held:
// once it behaves again, calls go through.
func TestPoolSurvivesAPanickingBalancer(t *testing.T) {
	p := testPool(t, 1)
	var armed atomic.Bool
	p.bal, p.builtin, p.random = panicky{&armed}, false, false
	held, err := p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)

	// A call joining the line while the balancer panics leaves the line.
	armed.Store(true)
	assert.PanicsWithValue(t, "balancer bug", func() { _, _ = p.acquire(context.Background(), &exclusion{}, -1) })
	assert.Equal(t, 0, p.waiting())

	// A release that serves the line while it panics frees its slot and
	// the lock; the waiting call is served at the next chance.
	armed.Store(false)
	got, _ := queueN(t, p, []context.Context{context.Background()})
	armed.Store(true)
	assert.PanicsWithValue(t, "balancer bug", func() { p.release(held) })
	assert.Equal(t, []int{0}, inFlight(p))
	armed.Store(false)
	p.kick()
	assert.Equal(t, 0, <-got)
}
