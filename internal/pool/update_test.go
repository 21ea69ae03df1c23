package pool

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// waitInLine starts an Acquire that must wait, returns once it is in line,
// and returns the channel its slot arrives on. The Acquire fails with
// ErrClosed when the test ends without it served.
func waitInLine(t *testing.T, p *Pool) <-chan Slot {
	t.Helper()
	queued := make(chan struct{}, 1)
	p.OnQueue = func() { queued <- struct{}{} }
	got := make(chan Slot, 1)
	go func() {
		if slot, err := p.Acquire(context.Background(), &Exclusion{}, -1); err == nil {
			got <- slot
		}
	}()
	<-queued
	require.Equal(t, 1, p.Waiting())
	return got
}

// A kept endpoint (same name, same URL) is the same Endpoint: its counters
// and calls in flight carry over.
func TestUpdateKeepsAnEndpointsState(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{EjectAfter: 5, EjectFor: time.Minute}, testSpecs(3, 3))
	e := p.Set().Eps[0]
	release(p, acquireOn(t, p, e))
	p.Release(acquireOn(t, p, e), &Report{Result: Failed}, nil)
	held := acquireOn(t, p, e)
	before := e.Counters()

	changes := p.Update([]Spec{testSpec("e1", 3), testSpec("e0", 3)})
	assert.Empty(t, changes, "same names, URLs, caps and keys")
	require.Len(t, p.Set().Eps, 2)
	assert.Same(t, e, p.Set().Eps[1], "in the order given")
	assert.Equal(t, before, e.Counters())
	assert.Equal(t, Counters{Calls: 2, Failures: 1}, before)
	assert.Equal(t, 1, e.InFlight())
	assert.EqualValues(t, 1, e.health.fails.Load(), "one failure in a row")
	release(p, held)
	assert.Zero(t, e.InFlight())
}

// acquireOn takes a slot on e itself; there must be one.
func acquireOn(t *testing.T, p *Pool, e *Endpoint) Slot {
	t.Helper()
	slot, ok := p.TryTake(e)
	require.True(t, ok, "no slot on %v", e)
	return slot
}

// A lower cap takes no new attempt until fewer are in flight; the calls
// over it finish.
func TestUpdateLowerCap(t *testing.T) {
	t.Parallel()
	p := testPool(t, 3)
	e := p.Set().Eps[0]
	held := []Slot{acquire(t, p), acquire(t, p), acquire(t, p)}
	changes := p.Update([]Spec{testSpec("e0", 2)})
	assert.Equal(t, []Change{{Name: "e0", Kind: Recapped, OldMax: 3, NewMax: 2}}, changes)
	assert.Equal(t, 2, e.Max())
	assert.Equal(t, 2, e.Limit())
	assert.Equal(t, 2, p.Set().Total())
	_, ok := p.TryTake(e)
	assert.False(t, ok, "3 in flight of 2")
	release(p, held[0])
	_, ok = p.TryAcquire(&Exclusion{})
	assert.False(t, ok, "2 in flight of 2")
	release(p, held[1])
	slot, ok := p.TryAcquire(&Exclusion{})
	assert.True(t, ok, "1 in flight of 2")
	_, ok = p.TryTake(e)
	assert.False(t, ok)
	release(p, slot)
	release(p, held[2])
}

// A higher cap serves a waiting call at once: before Update returns.
func TestUpdateHigherCapServesAWaiter(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1)
	e := p.Set().Eps[0]
	held := acquire(t, p)
	got := waitInLine(t, p)
	changes := p.Update([]Spec{testSpec("e0", 2)})
	assert.Equal(t, []Change{{Name: "e0", Kind: Recapped, OldMax: 1, NewMax: 2}}, changes)
	require.Equal(t, 0, p.Waiting(), "served by Update")
	slot := <-got
	assert.Same(t, e, slot.Ep)
	assert.Equal(t, 2, e.InFlight())
	release(p, slot)
	release(p, held)
}

// New keys apply to the next attempt; they end an ejection for a fault
// (most likely the key they replace) with a probe, and nothing else.
func TestUpdateNewKeys(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 5)
	e0, e1 := p.Set().Eps[0], p.Set().Eps[1]
	report(p, 0, Fault, false)
	fail(p, 1, 5)
	require.False(t, admits(p, 0) || admits(p, 1))

	same := testSpecs(1, 1, 1, 1, 1)
	assert.Empty(t, p.Update(same), "the same keys")
	assert.False(t, admits(p, 0), "the same keys forgive nothing")

	specs := append([]Spec{testSpec("e0", 1, "new"), testSpec("e1", 1, "new")}, same[2:]...)
	changes := p.Update(specs)
	assert.Equal(t, []Change{{Name: "e0", Kind: Rekeyed}, {Name: "e1", Kind: Rekeyed}}, changes)
	for i, e := range []*Endpoint{e0, e1} {
		a, k := e.Key()
		assert.Same(t, specs[i].Auth, a, "%v", e)
		assert.Equal(t, "new", a.Keys()[k])
	}
	assert.True(t, admits(p, 0), "out for a fault: probe-ready")
	assert.False(t, admits(p, 1), "ejected for failures: new keys change nothing")
	slot, ok := p.TryTake(e0)
	require.True(t, ok)
	assert.True(t, slot.Probe)
	assert.True(t, released(p, slot, &Report{Result: OK}).Readmitted)
}

// An added endpoint serves a call already waiting, before Update returns.
func TestUpdateAddedEndpointServesAWaiter(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1)
	held := acquire(t, p)
	got := waitInLine(t, p)
	changes := p.Update(testSpecs(1, 1))
	assert.Equal(t, []Change{{Name: "e1", Kind: Added, NewMax: 1}}, changes)
	require.Equal(t, 0, p.Waiting(), "served by Update")
	slot := <-got
	assert.Same(t, p.Set().Eps[1], slot.Ep)
	release(p, slot)
	release(p, held)
}

// A removed endpoint takes no new attempt once Update has returned; it
// drains, listed in Endpoints until its last call ends.
func TestUpdateRemovedEndpointDrains(t *testing.T) {
	t.Parallel()
	p := testPool(t, 2, 2)
	gone := p.Set().Eps[1]
	held := acquireOn(t, p, gone)
	changes := p.Update(testSpecs(2))
	assert.Equal(t, []Change{{Name: "e1", Kind: Removed, OldMax: 2}}, changes)
	assert.True(t, gone.Removed())
	assert.Equal(t, []*Endpoint{p.Set().Eps[0], gone}, p.Endpoints(), "draining")

	_, ok := p.TryTake(gone)
	assert.False(t, ok, "a free slot on a removed endpoint")
	for range 100 {
		slot, ok := p.TryAcquire(&Exclusion{})
		require.True(t, ok)
		assert.NotSame(t, gone, slot.Ep)
		release(p, slot)
	}
	assert.Equal(t, Counters{Calls: 100}, p.Set().Eps[0].Counters(), "all on the kept one")

	// Its reply still counts, and its health no longer matters.
	fx := released(p, held, &Report{Result: Fault})
	assert.Equal(t, Effects{}, fx)
	assert.Equal(t, Counters{Calls: 1, Failures: 1, Faults: 1}, gone.Counters())
	assert.Zero(t, gone.InFlight())
	assert.Equal(t, []*Endpoint{p.Set().Eps[0]}, p.Endpoints(), "drained")

	// An endpoint with nothing in flight leaves at once.
	idle := p.Set().Eps[0]
	p.Update([]Spec{testSpec("e2", 1)})
	assert.Equal(t, []*Endpoint{p.Set().Eps[0]}, p.Endpoints())
	assert.True(t, idle.Removed())
	_, ok = p.TryTake(idle)
	assert.False(t, ok)
}

// A kept name with another URL is another endpoint: the old one drains, the
// new one starts afresh.
func TestUpdateSameNameOtherURL(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 1)
	old := p.Set().Eps[0]
	held := acquireOn(t, p, old)
	report(p, 0, Failed, false)

	changes := p.Update([]Spec{testSpecAt("e0", "https://other/workspaces/w/services/e0/execute", 1)})
	assert.Equal(t, []Change{{Name: "e0", Kind: Added, NewMax: 1}, {Name: "e0", Kind: Removed, OldMax: 1}}, changes)
	e := p.Set().Eps[0]
	assert.NotSame(t, old, e)
	assert.True(t, old.Removed())
	assert.False(t, e.Removed())
	assert.Equal(t, "https://other/workspaces/w/services/e0/execute", e.RawURL())
	assert.Equal(t, Counters{}, e.Counters())
	assert.Zero(t, e.health.fails.Load())
	slot := acquireOn(t, p, e)
	assert.Equal(t, []*Endpoint{e, old}, p.Endpoints())
	release(p, held)
	release(p, slot)
	assert.Equal(t, []*Endpoint{e}, p.Endpoints())
}
