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
	assert.Equal(t, Counters{Calls: 2, Failures: 1, InFlight: 1}, before)
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
	assert.Equal(t, "https://other/workspaces/w/services/e0/execute", e.URL().String())
	assert.Equal(t, Counters{}, e.Counters())
	assert.Zero(t, e.health.fails.Load())
	slot := acquireOn(t, p, e)
	assert.Equal(t, []*Endpoint{e, old}, p.Endpoints())
	release(p, held)
	release(p, slot)
	assert.Equal(t, []*Endpoint{e}, p.Endpoints())
}

// A new name for the URL of an endpoint with calls in flight (a rename)
// takes no call until the old one's calls have ended: the server counts
// both together, so the URL never has two sets of slots. Its cap may
// change meanwhile; it applies once it is let in.
func TestUpdateRenameWaitsForTheOldNamesCalls(t *testing.T) {
	t.Parallel()
	const url = "https://h/workspaces/w/services/s/execute"
	p, _ := newTestPool(t, Config{}, []Spec{testSpecAt("old", url, 2)})
	old := p.Set().Eps[0]
	a, b := acquireOn(t, p, old), acquireOn(t, p, old)

	p.Update([]Spec{testSpecAt("new", url, 2)})
	renamed := p.Set().Eps[0]
	require.NotSame(t, old, renamed)
	_, ok := p.TryTake(renamed)
	require.False(t, ok, "the old name still has both slots")
	assert.Zero(t, renamed.Limit())
	_, err := p.Acquire(context.Background(), &Exclusion{}, 0)
	assert.ErrorIs(t, err, ErrNoCapacity, "a call that does not wait")
	got := waitInLine(t, p)

	p.Update([]Spec{testSpecAt("new", url, 3)}) // a new cap waits too
	assert.Zero(t, renamed.Limit())
	release(p, a)
	assert.Equal(t, 1, p.Waiting(), "one old call still in flight")
	assert.Zero(t, renamed.InFlight())
	// The URL has a slot free now, but the new name takes none until the
	// old name's last call ends: no waiting either way (documented).
	_, err = p.Acquire(context.Background(), &Exclusion{}, 0)
	assert.ErrorIs(t, err, ErrNoCapacity, "a call that does not wait, one old call in flight")

	release(p, b) // the last: the new name takes over, and serves the line
	slot := <-got
	assert.Same(t, renamed, slot.Ep)
	assert.Equal(t, 3, renamed.Limit())
	assert.Equal(t, []*Endpoint{renamed}, p.Endpoints())
	release(p, slot)
}

// An idle endpoint renamed has nothing to wait for; one renamed back while
// it drains is revived with its calls; a rename of a rename waits for the
// one with calls.
func TestUpdateRenameCases(t *testing.T) {
	t.Parallel()
	const url = "https://h/workspaces/w/services/s/execute"
	p, _ := newTestPool(t, Config{}, []Spec{testSpecAt("a", url, 1)})
	p.Update([]Spec{testSpecAt("b", url, 1)})
	b := p.Set().Eps[0]
	assert.Equal(t, 1, b.Limit(), "nothing in flight under the old name")

	held := acquireOn(t, p, b)
	p.Update([]Spec{testSpecAt("c", url, 1)})
	c := p.Set().Eps[0]
	assert.Zero(t, c.Limit())
	p.Update([]Spec{testSpecAt("d", url, 1)}) // c never took a call
	d := p.Set().Eps[0]
	assert.Zero(t, d.Limit())
	assert.Equal(t, []*Endpoint{d, b}, p.Endpoints())
	p.Update([]Spec{testSpecAt("b", url, 1)}) // back to the name with the call
	assert.Same(t, b, p.Set().Eps[0])
	assert.Equal(t, []*Endpoint{b}, p.Endpoints())
	release(p, held)
	assert.Zero(t, d.Limit(), "removed while held back: it stays out")
	release(p, acquireOn(t, p, b))
}

// The old name's last slot may go back where the line's lock is held (a
// take undone by a pick that lost the race with Update): Run then serves
// the line.
func TestUpdateRenameLetInServesTheLineThroughRun(t *testing.T) {
	t.Parallel()
	const url = "https://h/workspaces/w/services/s/execute"
	p, _ := newTestPool(t, Config{}, []Spec{testSpecAt("old", url, 1)})
	startRun(t, p)
	old := p.Set().Eps[0]
	held := acquireOn(t, p, old)
	p.Update([]Spec{testSpecAt("new", url, 1)})
	require.Zero(t, p.Set().Eps[0].Limit(), "held back")
	got := waitInLine(t, p)

	p.mu.Lock()
	p.untake(held.Ep)
	p.mu.Unlock()
	require.Eventually(t, func() bool { return p.Waiting() == 0 }, 10*time.Second, time.Millisecond, "nothing served the line")
	slot := <-got
	assert.Equal(t, "new", slot.Ep.Name())
	release(p, slot)
}

// An endpoint's Since is when New or the Update that made it ran, by the
// Pool's clock: kept and revived endpoints keep theirs, and a name's new
// endpoint (another URL, or added back after it drained) gets a later one,
// even when the clock has not moved.
func TestUpdateStampsNewEndpoints(t *testing.T) {
	t.Parallel()
	p, clk := newTestPool(t, Config{}, testSpecs(1, 1, 1))
	t0 := clk.Now()
	e0, e1, e2 := p.Set().Eps[0], p.Set().Eps[1], p.Set().Eps[2]
	for _, e := range p.Set().Eps {
		assert.Equal(t, t0, e.Since(), e.Name())
	}
	held := acquireOn(t, p, e0)

	clk.Advance(time.Minute)
	t1 := clk.Now()
	// e0 drains; e1 is kept; e2 gets another URL; e3 is new.
	p.Update([]Spec{testSpec("e1", 1), testSpecAt("e2", "https://other/x", 1), testSpec("e3", 1)})
	eps := p.Endpoints()
	require.Len(t, eps, 4)
	assert.Same(t, e1, eps[0])
	assert.Equal(t, t0, e1.Since(), "kept")
	assert.NotSame(t, e2, eps[1])
	assert.Equal(t, t1, eps[1].Since(), "another URL: a new endpoint")
	assert.Equal(t, t1, eps[2].Since(), "added")
	assert.Same(t, e0, eps[3], "draining")

	// The clock has not moved: a later Update still stamps later.
	p.Update([]Spec{testSpec("e0", 1), testSpec("e2", 1)})
	eps = p.Endpoints()
	require.Len(t, eps, 2)
	assert.Same(t, e0, eps[0], "added back while it drains: revived")
	assert.Equal(t, t0, e0.Since())
	assert.Equal(t, t1.Add(time.Nanosecond), eps[1].Since(), "e2 at its first URL again: a third endpoint of the name")
	release(p, held)
}

// An endpoint removed while its probe is in flight, whose probe ends while
// it drains, and which is added back before its other calls have ended,
// is probed again: the probe's end, which its health ignored while it was
// removed, must not leave it waiting for a probe that no one will send.
func TestUpdateRevivedAfterItsProbeEndedIsProbedAgain(t *testing.T) {
	t.Parallel()
	specs := []Spec{testSpec("e0", 2), testSpec("e1", 1), testSpec("e2", 1), testSpec("e3", 1)}
	for _, r := range []Result{OK, Failed, Unsent} {
		t.Run(resultName(r), func(t *testing.T) {
			t.Parallel()
			p, clk := newTestPool(t, Config{EjectAfter: 5, EjectFor: 30 * time.Second, Rand: func() uint64 { return 1 << 63 }}, specs)
			e := p.Set().Eps[0]
			long := acquireOn(t, p, e) // a call from before the ejection
			fail(p, 0, 5)
			require.False(t, admits(p, 0), "ejected")
			clk.Advance(30 * time.Second)
			expire(p, clk)
			probe, ok := p.TryTake(e)
			require.True(t, ok && probe.Probe)

			p.Update(specs[1:])
			released(p, probe, &Report{Result: r, Start: clk.Now()})
			require.Equal(t, 1, e.InFlight(), "still draining")
			p.Update(specs)
			require.Same(t, e, p.Set().Eps[0], "revived")
			release(p, long)

			assert.True(t, admits(p, 0), "no probe in flight: the next call probes")
			slot, ok := p.TryTake(e)
			require.True(t, ok, "no call may go to it")
			assert.True(t, slot.Probe)
			assert.True(t, released(p, slot, &Report{Result: OK, Start: clk.Now()}).Readmitted)
		})
	}
}

// Ejected endpoints that Update removes leave the count behind the panic
// threshold with them; one added back while it drains comes back ejected
// and counts again, and its ejection ends when due, though it ended while
// the endpoint was out of the Set; one added back once drained is new and
// in rotation.
func TestUpdateEjectedEndpointsAndThePanicThreshold(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 4)
	startRun(t, p)
	specs := testSpecs(1, 1, 1, 1)
	e0, e1 := p.Set().Eps[0], p.Set().Eps[1]
	fail(p, 0, 5)
	e1.addHeld(1) // a call from before its ejection
	fail(p, 1, 5)
	require.True(t, admits(p, 0) && admits(p, 1), "2 of 4 out: panic")

	p.Update(specs[1:]) // e0 out, idle
	assert.Equal(t, []*Endpoint{e1, p.Set().Eps[1], p.Set().Eps[2]}, p.Endpoints())
	assert.False(t, admits(p, 0), "1 of 3 out: e1 is out again")
	assert.EqualValues(t, 1, p.Set().out.Load())

	p.Update(specs) // e0 back: a new endpoint
	assert.NotSame(t, e0, p.Set().Eps[0])
	assert.True(t, admits(p, 0), "new, in rotation")
	assert.False(t, admits(p, 1))

	p.Update(append([]Spec{specs[0]}, specs[2:]...)) // e1 out, draining
	assert.Zero(t, p.Set().out.Load())
	assert.Contains(t, p.Endpoints(), e1)
	clk.Advance(30 * time.Second) // its ejection ends while it is out of the Set
	p.Update(specs)               // and back, with its call still in flight
	assert.Same(t, e1, p.Set().Eps[1])
	require.Eventually(t, func() bool { return admits(p, 1) }, 10*time.Second, time.Millisecond, "its ejection never ended")
	slot, ok := p.TryTake(e1)
	require.False(t, ok, "its old call holds its one slot")
	released(p, Slot{Ep: e1}, &Report{Result: OK, Start: clk.Now()})
	slot, ok = p.TryTake(e1)
	require.True(t, ok)
	assert.True(t, slot.Probe)
	assert.True(t, released(p, slot, &Report{Result: OK, Start: clk.Now()}).Readmitted)
	assert.Zero(t, p.Set().out.Load())
}

// A take that comes once Update has marked an endpoint removed, from a
// pick in the Set before (or TryTake), holds no slot there, not even for
// the moment before it sees the mark and gives it back: a snapshot of the
// endpoint's counters then (Stats, right after SetEndpoints) counted it in
// flight, one attempt too many that never came, and an endpoint with none
// in flight was listed as draining.
func TestUpdateRemovedEndpointTakesNoSlotForAMoment(t *testing.T) {
	t.Parallel()
	p := testPool(t, 2, 2, 2)
	gone, idle := p.Set().Eps[1], p.Set().Eps[2]
	held := acquireOn(t, p, gone)
	p.Update(testSpecs(2))
	assert.Equal(t, []*Endpoint{p.Set().Eps[0], gone}, p.Endpoints(), "one draining, the idle one gone")

	_, ok := gone.take()
	assert.False(t, ok, "a slot on a removed endpoint")
	_, ok = idle.take()
	assert.False(t, ok, "a slot on a removed endpoint")
	assert.Equal(t, Counters{InFlight: 1}, gone.Counters(), "the attempt in flight at the removal, no more")
	assert.Equal(t, Counters{}, idle.Counters())
	assert.Equal(t, []*Endpoint{p.Set().Eps[0], gone}, p.Endpoints())

	release(p, held)
	assert.Equal(t, Counters{Calls: 1}, gone.Counters(), "what the snapshot after the removal said")
	assert.Equal(t, []*Endpoint{p.Set().Eps[0]}, p.Endpoints(), "drained")
}

// The last release of a removed endpoint takes it out of draining under
// smu, after it gave its slot back. If an Update meanwhile brought the
// endpoint back, a call took a slot on it, and another Update removed it
// again, renaming its URL, that release must leave it draining, and its
// heir held back, until the new call ends: taken out, its call in flight
// left Endpoints (and Stats), and the heir took slots on the URL beside it.
// The release runs in its two steps, with the Updates between them.
func TestUpdateStaleLastReleaseKeepsTheEndpointDraining(t *testing.T) {
	t.Parallel()
	const url = "https://h/workspaces/w/services/s/execute"
	p, _ := newTestPool(t, Config{}, []Spec{testSpecAt("a", url, 2), testSpec("e", 1)})
	a := p.Set().Eps[0]
	acquireOn(t, p, a) // the first call
	p.Update([]Spec{testSpec("e", 1)})
	require.Equal(t, []*Endpoint{p.Set().Eps[0], a}, p.Endpoints(), "a drains")

	a.count(OK)
	a.slots.Add(^uint64(0)) // the first call's release gives its slot back, and stalls before emptied
	p.Update([]Spec{testSpecAt("a", url, 2), testSpec("e", 1)})
	require.Same(t, a, p.Set().Eps[0], "a revived")
	second := acquireOn(t, p, a)
	p.Update([]Spec{testSpecAt("b", url, 2), testSpec("e", 1)})
	b := p.Set().Eps[0]
	require.Zero(t, b.Limit(), "b waits for a's call")
	p.emptied(a) // the first call's release goes on

	assert.Equal(t, []*Endpoint{b, p.Set().Eps[1], a}, p.Endpoints(), "a still drains")
	assert.Equal(t, 1, a.InFlight())
	assert.Zero(t, b.Limit(), "b still waits")
	release(p, second)
	assert.Equal(t, []*Endpoint{b, p.Set().Eps[1]}, p.Endpoints(), "drained")
	assert.Equal(t, 2, b.Limit(), "let in by a's last release")
}
