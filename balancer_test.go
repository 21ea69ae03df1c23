package amlpool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
	"github.com/amlpool/amlpool/internal/pool"
)

// The built-in pickers' own tests (shares, P2C, latency, allocations) are
// internal/pool's. These run Balancers as a Client does: through picker
// and Candidates.

// balancerPool returns the pool a Client with Balancer b would have over
// endpoints with the given caps, on a fake clock, ejecting after one
// failure.
func balancerPool(t *testing.T, b Balancer, caps ...int) *pool.Pool {
	t.Helper()
	eps := make([]Endpoint, len(caps))
	for i, n := range caps {
		eps[i] = Endpoint{URL: fmt.Sprintf("https://h/workspaces/w/services/e%d/execute", i), APIKey: "k", MaxConcurrentCalls: n}
	}
	specs, err := newSpecs(eps, false, nil)
	require.NoError(t, err)
	balance, pick := picker(b)
	r := rand.New(rand.NewPCG(1, 2))
	p := pool.New(pool.Config{Clock: clock.NewFake(), Rand: r.Uint64, Balance: balance, Pick: pick, TrackLatency: true,
		EjectAfter: 1, EjectFor: time.Minute}, specs)
	t.Cleanup(p.Close)
	return p
}

var balancers = map[string]func() Balancer{
	"Random":       Random,
	"LeastLoaded":  LeastLoaded,
	"LatencyAware": LatencyAware,
}

func TestBuiltinBalancersRunTheirPickers(t *testing.T) {
	t.Parallel()
	for name, newBal := range balancers {
		balance, _ := picker(newBal())
		assert.NotEqual(t, pool.Custom, balance, name)
	}
	balance, pick := picker(firstFree{})
	assert.Equal(t, pool.Custom, balance, "a user's Balancer is checked")
	assert.NotNil(t, pick)
}

// TestBalancerNeverFullOrExcluded runs every built-in Balancer through
// Candidates, in random states, and checks each answer: a usable endpoint,
// or -1 only when none is.
func TestBalancerNeverFullOrExcluded(t *testing.T) {
	t.Parallel()
	for name, newBal := range balancers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newBal()
			p := balancerPool(t, b, 1, 4, 7, 10, 13, 16, 19, 1, 4, 7)
			s := p.Set()
			p.Release(take(t, p, s.Eps[9]), &pool.Report{Result: pool.Failed}, nil) // ejected
			r := rand.New(rand.NewPCG(3, 7))
			for range 2000 {
				x := pool.Exclusion{On: r.IntN(2) == 0}
				var held []pool.Slot
				usable := 0
				for _, e := range s.Eps[:9] {
					for range r.IntN(e.Max() + 1) {
						held = append(held, take(t, p, e))
					}
					if r.IntN(4) == 0 {
						x.Tried.Add(e)
					}
					if !x.Excludes(e) && e.Free() > 0 {
						usable++
					}
				}
				got := b.Pick(Candidates{s: s, x: x})
				if usable == 0 {
					require.Equal(t, -1, got, "nothing usable")
				} else {
					require.GreaterOrEqual(t, got, 0, "%d usable, none picked", usable)
					require.Less(t, got, 9, "picked the ejected endpoint")
					require.False(t, x.Excludes(s.Eps[got]), "picked excluded %d", got)
					require.Positive(t, s.Eps[got].Free(), "picked full %d", got)
				}
				for _, slot := range held {
					p.Release(slot, &pool.Report{Result: pool.Unsent}, nil)
				}
			}
		})
	}
}

// take takes a slot on e; there must be one.
func take(t *testing.T, p *pool.Pool, e *pool.Endpoint) pool.Slot {
	t.Helper()
	slot, ok := p.TryTake(e)
	require.True(t, ok, "no slot on %v", e)
	return slot
}

// TestCandidates: what a user's Balancer sees of the endpoints.
func TestCandidates(t *testing.T) {
	t.Parallel()
	p := balancerPool(t, Random(), 3, 3, 3, 3)
	s := p.Set()
	clk := clock.NewFake()
	held := []pool.Slot{take(t, p, s.Eps[0]), take(t, p, s.Eps[1]), take(t, p, s.Eps[1]), take(t, p, s.Eps[1])}
	p.Release(take(t, p, s.Eps[2]), &pool.Report{Result: pool.Failed, Start: clk.Now(), Latency: 40 * time.Millisecond}, nil) // ejected
	x := pool.Exclusion{On: true}
	x.Tried.Add(s.Eps[3])
	c := Candidates{s: s, x: x}

	assert.Equal(t, 4, c.Len())
	for i, want := range []struct{ free, inFlight, limit int }{
		{2, 1, 3}, // in use
		{0, 3, 3}, // full
		{0, 0, 3}, // ejected
		{0, 0, 3}, // tried by the call
	} {
		assert.Equal(t, want.free, c.Free(i), "Free(%d)", i)
		assert.Equal(t, want.inFlight, c.InFlight(i), "InFlight(%d)", i)
		assert.Equal(t, want.limit, c.Limit(i), "Limit(%d)", i)
	}
	assert.Equal(t, 3, Candidates{s: s}.Free(3), "free for a call that has not tried it")
	assert.Zero(t, c.Latency(0), "no attempt yet")
	assert.Positive(t, c.Latency(2), "a failure's latency is a lower bound")
	assert.NotEqual(t, c.Rand(), c.Rand())
	for _, slot := range held {
		p.Release(slot, &pool.Report{Result: pool.Unsent}, nil)
	}
}

// wrongBalancer picks whatever index it is told to.
type wrongBalancer struct{ i *atomic.Int32 }

func (b wrongBalancer) Pick(Candidates) int { return int(b.i.Load()) }

// A user's Balancer may pick an endpoint the call may not use: the pool
// does not take it, and takes a usable one instead if there is one.
func TestBalancerPicksAreChecked(t *testing.T) {
	t.Parallel()
	var i atomic.Int32
	p := balancerPool(t, wrongBalancer{&i}, 1, 1, 1, 1)
	s := p.Set()
	held := take(t, p, s.Eps[0])
	p.Release(take(t, p, s.Eps[1]), &pool.Report{Result: pool.Failed}, nil) // ejected
	x := pool.Exclusion{On: true}
	x.Tried.Add(s.Eps[2])
	for _, tt := range []struct {
		name string
		i    int32
		ok   bool // a slot on the one usable endpoint, 3
	}{
		{"full", 0, true}, {"ejected", 1, true}, {"excluded", 2, true}, {"usable", 3, true},
		{"out of range", 4, false}, {"none", -1, false},
	} {
		i.Store(tt.i)
		slot, ok := p.TryAcquire(&x)
		if assert.Equal(t, tt.ok, ok, tt.name) && ok {
			assert.Same(t, s.Eps[3], slot.Ep, tt.name)
			p.Release(slot, &pool.Report{Result: pool.Unsent}, nil)
		}
	}
	p.Release(held, &pool.Report{Result: pool.Unsent}, nil)
}

// panicky is a Balancer that panics once each time it is armed.
type panicky struct{ armed *atomic.Bool }

func (b panicky) Pick(s Candidates) int {
	if b.armed.Swap(false) {
		panic("balancer bug")
	}
	return Random().Pick(s)
}

// A Balancer that panics picking for a call makes that call panic, and no
// other: a release that serves the line hands its slot to the next
// waiting call, and nothing is left locked, held or in line.
func TestPoolSurvivesAPanickingBalancer(t *testing.T) {
	t.Parallel()
	var armed atomic.Bool
	p := balancerPool(t, panicky{&armed}, 1)
	e := p.Set().Eps[0]
	held := take(t, p, e)
	queued := make(chan struct{})
	p.OnQueue = func() { queued <- struct{}{} }
	type end struct {
		slot     pool.Slot
		err      error
		panicked any
	}
	ends := make([]chan end, 2)
	for i := range ends {
		ends[i] = make(chan end, 1)
		go func() {
			var got end
			defer func() {
				got.panicked = recover()
				ends[i] <- got
			}()
			got.slot, got.err = p.Acquire(context.Background(), &pool.Exclusion{}, -1)
		}()
		<-queued
	}

	armed.Store(true)
	require.NotPanics(t, func() { p.Release(held, &pool.Report{Result: pool.OK}, nil) })
	assert.Equal(t, "balancer bug", (<-ends[0]).panicked, "the call picked for")
	second := <-ends[1]
	require.Nil(t, second.panicked)
	require.NoError(t, second.err)
	assert.Same(t, e, second.slot.Ep, "the next call in line, served by the same release")
	assert.Zero(t, p.Waiting())

	// A call that panics picking for itself holds nothing.
	armed.Store(true)
	assert.PanicsWithValue(t, "balancer bug", func() { _, _ = p.Acquire(context.Background(), &pool.Exclusion{}, 0) })
	p.Release(second.slot, &pool.Report{Result: pool.OK}, nil)
	assert.Zero(t, e.InFlight())
}

// TestBalancerPickNoAllocs: a built-in Balancer's pick through Candidates
// allocates nothing.
func TestBalancerPickNoAllocs(t *testing.T) {
	// Not parallel: AllocsPerRun counts every goroutine's allocations.
	for name, newBal := range balancers {
		t.Run(name, func(t *testing.T) {
			b := newBal()
			p := balancerPool(t, b, 20, 20, 20, 20)
			c := Candidates{s: p.Set()}
			assert.Zero(t, testing.AllocsPerRun(1000, func() { b.Pick(c) }))
		})
	}
}
