package pool

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
)

// TestLineHammer runs calls of every priority through a small, bounded
// line on the real clock while they are cancelled, time out, are shed and
// Updates move endpoints between tiers, then closes the pool on calls still
// waiting. It checks that no endpoint ever has more calls than its cap,
// that every slot comes back, that every call ends, and that every call
// turned away by the full line is counted, once.
func TestLineHammer(t *testing.T) {
	t.Parallel()
	const callers, moves = 16, 400
	caps := []int{1, 2, 1, 2}
	specs := func(r *rand.Rand) []Spec {
		tiers := make([]int, len(caps))
		for i := range tiers {
			tiers[i] = r.IntN(3)
		}
		return tieredSpecs(caps, tiers)
	}
	ur := rand.New(rand.NewPCG(7, 8))
	p := New(Config{Clock: clock.Real, Rand: lockedRand(5, 6), MaxWaiting: 2, Aging: 200 * time.Microsecond}, specs(ur))
	held := make(map[*Endpoint]*atomic.Int32)
	for _, e := range p.Set().Eps {
		held[e] = new(atomic.Int32)
	}

	stop := make(chan struct{})
	updated := make(chan struct{})
	go func() {
		defer close(updated)
		for {
			select {
			case <-stop:
				return
			default:
			}
			p.Update(specs(ur))
		}
	}()

	var shed, served atomic.Int64
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(c), 9))
			for range moves {
				ctx := WithPriority(context.Background(), int8(r.IntN(3))-1)
				maxWait := time.Duration(-1)
				var cancel context.CancelFunc = func() {}
				switch r.IntN(4) {
				case 0:
					maxWait = time.Duration(r.IntN(100)) * time.Microsecond
				case 1:
					ctx, cancel = context.WithCancel(ctx)
					if r.IntN(2) == 0 {
						go cancel() // racing the wait, and any grant
					} else {
						cancel() // before the call
					}
				}
				slot, err := p.Acquire(ctx, &Exclusion{}, maxWait)
				cancel()
				switch {
				case err == nil:
					served.Add(1)
					if n := held[slot.Ep].Add(1); int(n) > slot.Ep.Max() {
						assert.Failf(t, "over the cap", "%v: %d held, cap %d", slot.Ep, n, slot.Ep.Max())
					}
					if r.IntN(4) == 0 {
						// Hold it a while, so that the line grows past its
						// bound (not to wait for anything).
						time.Sleep(time.Duration(r.IntN(50)) * time.Microsecond)
					}
					held[slot.Ep].Add(-1)
					result := []Result{OK, Unsent, Cancelled}[r.IntN(3)]
					p.Release(slot, &Report{Result: result, Start: time.Now()}, nil)
				case errors.Is(err, ErrShed):
					shed.Add(1)
				case errors.Is(err, ErrNoCapacity), errors.Is(err, context.Canceled):
				default:
					assert.Failf(t, "unexpected error", "%v", err)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-updated

	t.Logf("%d served, %d shed", served.Load(), shed.Load())
	assert.Positive(t, served.Load())
	assert.Positive(t, shed.Load(), "the bound never shed a call: the hammer did not test it")
	assert.Equal(t, shed.Load(), p.Shed(Low)+p.Shed(Normal)+p.Shed(High), "every shed call counted once")
	assert.Equal(t, 0, p.Waiting())
	for _, e := range p.Set().Eps {
		assert.Zero(t, e.InFlight(), "%v", e)
	}

	// Close ends calls still waiting, with ErrClosed, and every slot comes
	// back.
	var slots []Slot
	for {
		slot, ok := p.TryAcquire(&Exclusion{})
		if !ok {
			break
		}
		slots = append(slots, slot)
	}
	require.Len(t, slots, 6)
	errs := make(chan error, 2)
	queued := make(chan struct{}, 2)
	p.OnQueue = func() { queued <- struct{}{} }
	for i := range 2 {
		go func() {
			_, err := p.Acquire(WithPriority(context.Background(), int8(i%3)-1), &Exclusion{}, -1)
			errs <- err
		}()
		<-queued
	}
	p.Close()
	for range 2 {
		assert.ErrorIs(t, <-errs, ErrClosed)
	}
	for _, slot := range slots {
		release(p, slot)
	}
	for _, e := range p.Set().Eps {
		assert.Zero(t, e.InFlight(), "%v", e)
	}
}
