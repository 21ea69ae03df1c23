package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// tracker is what the hammer knows of one Endpoint, through its Ext.
type tracker struct {
	top    int32        // the highest cap its name ever has
	held   atomic.Int32 // slots the hammer holds on it now
	goneAt atomic.Int64 // the epoch at which an Update that removed it had returned; 0 while live
}

func track(e *Endpoint) *tracker { return e.Ext().(*tracker) }

// hammer is the state TestUpdateHammer's goroutines share.
type hammer struct {
	p     *Pool
	epoch atomic.Int64  // raised after each removal, once its Update has returned
	done  chan struct{} // closed when the Updates are over
}

// TestUpdateHammer runs Updates that add, remove, re-cap, re-key, re-tier
// and re-point endpoints while calls of every priority take slots every way
// there is, and checks
// that no endpoint ever has more calls than its cap, and that no take that
// starts after an Update has returned gets an endpoint that Update removed.
func TestUpdateHammer(t *testing.T) {
	t.Parallel()
	const names, rounds, callers = 6, 400, 6
	// Names 0 to 2 keep their cap; 3 to 5 move between two.
	capOf := func(n, round int) int {
		if n < 3 {
			return 1 + n
		}
		return 1 + n%3 + round%2
	}
	specsFor := func(round int, r *rand.Rand) []Spec {
		var specs []Spec
		for n := range names {
			if len(specs) > 0 && r.IntN(3) == 0 {
				continue // left out of this round's set
			}
			name := fmt.Sprint("n", n)
			raw := fmt.Sprintf("https://h%d/workspaces/w/services/%s/execute", r.IntN(2), name)
			sp := testSpecAt(name, raw, capOf(n, round), fmt.Sprint("k", r.IntN(2)), "second")
			sp.Ext = &tracker{top: int32(max(capOf(n, 0), capOf(n, 1)))}
			sp.Tier = r.IntN(2) // a kept endpoint may change tier

			specs = append(specs, sp)
		}
		return specs
	}
	ur := rand.New(rand.NewPCG(3, 4))
	p, _ := newTestPool(t, Config{EjectAfter: 2, EjectFor: time.Second, Adaptive: true}, specsFor(0, ur))
	h := &hammer{p: p, done: make(chan struct{})}

	var removed []*Endpoint
	go func() {
		defer close(h.done)
		for round := 1; round <= rounds; round++ {
			old := p.Set().Eps
			next := specsFor(round, ur)
			// A removed endpoint whose name and URL come back is revived
			// if it still drains: taking it is right again, from the
			// moment Update may revive it.
			for _, e := range removed {
				for _, sp := range next {
					if e.name == sp.Name && e.url == sp.URL.String() {
						track(e).goneAt.Store(0)
					}
				}
			}
			p.Update(next)
			live := map[*Endpoint]bool{}
			for _, e := range p.Set().Eps {
				live[e] = true
			}
			for _, e := range old {
				if !live[e] {
					track(e).goneAt.Store(h.epoch.Add(1))
					removed = append(removed, e)
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() { h.call(t, rand.New(rand.NewPCG(uint64(c), 5))) })
	}
	wg.Wait() // every caller saw done closed: removed is complete

	assert.Equal(t, 0, p.Waiting())
	assert.Equal(t, p.Set().Eps, p.Endpoints(), "nothing left draining")
	for _, e := range append(p.Endpoints(), removed...) {
		assert.Zero(t, e.InFlight(), "%v", e)
		assert.Zero(t, track(e).held.Load(), "%v", e)
	}
	live := map[*Endpoint]bool{}
	for _, e := range p.Set().Eps {
		live[e] = true
	}
	for _, e := range removed {
		assert.Equal(t, !live[e], e.Removed(), "%v", e)
	}
	assert.NotEmpty(t, removed)
}

var hammerResults = []Result{OK, OK, OK, Failed, Full, Fault, KeyRejected, Rejected, Unsent, Cancelled}

// call takes and gives back slots, holding up to three at a time, until the
// Updates are over and it has made 1000 moves.
func (h *hammer) call(t *testing.T, r *rand.Rand) {
	p := h.p
	seen := p.Set().Eps // a Set seen some time ago
	var held []Slot
	for i := 0; ; i++ {
		select {
		case <-h.done:
			if i >= 1000 {
				for _, slot := range held {
					h.give(r, slot)
				}
				return
			}
		default:
		}
		if len(held) > 0 && (len(held) == 3 || r.IntN(2) == 0) {
			k := r.IntN(len(held))
			h.give(r, held[k])
			held = append(held[:k], held[k+1:]...)
			continue
		}
		if r.IntN(16) == 0 {
			seen = p.Set().Eps
		}
		var start int64 // the epoch when the take started
		var slot Slot
		var ok bool
		switch r.IntN(3) {
		case 0:
			if len(held) > 0 {
				continue // waiting while holding slots could wait for ever
			}
			start = h.epoch.Load()
			var err error
			slot, err = p.Acquire(WithPriority(context.Background(), int8(r.IntN(3))-1), &Exclusion{}, -1)
			ok = assert.NoError(t, err)
		case 1:
			start = h.epoch.Load()
			slot, ok = p.TryAcquire(&Exclusion{})
		case 2:
			// Back to an endpoint seen earlier, as a pinned call goes.
			e := seen[r.IntN(len(seen))]
			start = h.epoch.Load()
			slot, ok = p.TryTake(e)
		}
		if !ok {
			continue
		}
		tr := track(slot.Ep)
		if g := tr.goneAt.Load(); g != 0 && g <= start {
			assert.Failf(t, "removed endpoint handed out", "%v removed at epoch %d, take started at %d", slot.Ep, g, start)
		}
		if n := tr.held.Add(1); n > tr.top {
			assert.Failf(t, "over the cap", "%v: %d in flight, cap %d", slot.Ep, n, tr.top)
		}
		held = append(held, slot)
	}
}

// give gives slot back, its attempt having come to a random result.
func (h *hammer) give(r *rand.Rand, slot Slot) {
	if a, k := slot.Ep.Key(); r.IntN(8) == 0 {
		slot.Ep.Unauthorized(a, k)
	} else {
		slot.Ep.Authorized(a, k)
	}
	track(slot.Ep).held.Add(-1)
	h.p.Release(slot, &Report{Result: hammerResults[r.IntN(len(hammerResults))]}, nil)
}
