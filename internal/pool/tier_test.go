package pool

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tieredSpecs describes endpoints e0, e1 ... with the given caps, endpoint
// i in tier tiers[i].
func tieredSpecs(caps, tiers []int) []Spec {
	specs := testSpecs(caps...)
	for i := range specs {
		specs[i].Tier = tiers[i]
	}
	return specs
}

// holdN takes n slots without waiting and returns them.
func holdN(t *testing.T, p *Pool, n int) []Slot {
	t.Helper()
	held := make([]Slot, n)
	for i := range held {
		held[i] = acquire(t, p)
	}
	return held
}

func releaseAll(p *Pool, held []Slot) {
	for _, slot := range held {
		release(p, slot)
	}
}

// Two tier-0 endpoints of 4 slots beside a tier-1 one of 8: 8 callers fill
// tier 0 and leave tier 1 alone; 8 more go to tier 1. Whatever the picker.
func TestTierTakesOnlyTheOverflow(t *testing.T) {
	t.Parallel()
	for name, balance := range balances {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := newTestPool(t, Config{Balance: balance, Pick: custom(balance)}, tieredSpecs([]int{4, 4, 8}, []int{0, 0, 1}))
			held := holdN(t, p, 8)
			assert.Equal(t, []int{4, 4, 0}, inFlight(p), "8 callers: tier 1 gets nothing")
			held = append(held, holdN(t, p, 8)...)
			assert.Equal(t, []int{4, 4, 8}, inFlight(p), "16 callers: tier 1 takes the overflow")
			_, ok := p.TryAcquire(&Exclusion{})
			assert.False(t, ok, "all full")

			// A freed tier-0 slot is taken again before tier 1's.
			release(p, held[0])
			release(p, held[15])
			slot := acquire(t, p)
			assert.Equal(t, 0, slot.Ep.Tier(), "%v", slot.Ep)
			releaseAll(p, append(held[1:15], slot))
			assert.Equal(t, []int{0, 0, 0}, inFlight(p))
		})
	}
}

// At light load, one call at a time, every call goes to tier 0, and tier
// 0's calls are shared by its picker as without tiers.
func TestTierSharesWithinTheLowestTier(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{}, tieredSpecs([]int{20, 20, 20, 20}, []int{1, 0, 2, 0}))
	counts := pickCounts(t, p, 20000)
	assert.Zero(t, counts[0], "tier 1: %v", counts)
	assert.Zero(t, counts[2], "tier 2: %v", counts)
	x := chiSquare([]int{counts[1], counts[3]}, []float64{1, 1})
	assert.Less(t, x, chi001[1], "tier 0 shared evenly: %v", counts)
}

// Tiers are ordered by number, not by where their endpoints are listed, and
// a Set's tiers hold their endpoints in the order given.
func TestTierSetsAreOrdered(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{}, tieredSpecs([]int{1, 2, 3, 4, 5}, []int{7, 3, 7, 0, 3}))
	s := p.Set()
	var got []string
	for _, tier := range s.Tiers() {
		got = append(got, fmt.Sprint(tier.Tier(), tier.Eps, tier.Total()))
	}
	assert.Equal(t, []string{"0 [e3] 4", "3 [e1 e4] 7", "7 [e0 e2] 4"}, got)
	assert.Equal(t, 15, s.Total())
	assert.Equal(t, 0, s.Tier(), "the lowest")

	one := testPool(t, 1, 2)
	assert.Equal(t, []*Set{one.Set()}, one.Set().Tiers(), "one tier: the Set itself")
}

// A call that may not use tier 0's free endpoints (it tried them) goes to
// tier 1 rather than wait for them.
func TestTierExclusionSpills(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{}, tieredSpecs([]int{1, 1, 1}, []int{0, 0, 1}))
	slot, ok := p.TryAcquire(excluding(p, 0, 1))
	require.True(t, ok)
	assert.Equal(t, "e2", slot.Ep.Name())
	release(p, slot)
}

// Ejected or cooling tier-0 endpoints spill their calls to tier 1; once
// back, tier 0 takes them again. With half or more of all the endpoints
// ejected (the panic threshold, over every tier), the ejected ones take
// calls again, tier 0 first.
func TestTierFailover(t *testing.T) {
	t.Parallel()
	// Tier 0: e0 and e1; tier 1: e2, e3 and e4. One slot each.
	p, clk := testHealth(t, 5)
	specs := tieredSpecs([]int{1, 1, 1, 1, 1}, []int{0, 0, 1, 1, 1})
	p.Update(specs)
	tierOf := func() int {
		slot := acquire(t, p)
		defer release(p, slot)
		return slot.Ep.Tier()
	}
	require.Equal(t, 0, tierOf())

	fail(p, 0, 5)
	clk.Advance(10 * time.Second)
	fail(p, 1, 5)
	require.False(t, admits(p, 0))
	require.False(t, admits(p, 1))
	for range 20 {
		assert.Equal(t, 1, tierOf(), "tier 0 ejected: calls fail over to tier 1")
	}

	// e0's ejection ends: its probe goes to tier 0 at once, and readmits it.
	clk.Advance(20 * time.Second)
	expire(p, clk)
	slot := acquire(t, p)
	require.Equal(t, "e0", slot.Ep.Name())
	require.True(t, slot.Probe)
	p.Release(slot, &Report{Result: OK, Start: clk.Now()}, nil)
	assert.Equal(t, 0, tierOf())

	// A cool-down (a Retry-After) spills the same way.
	p.Update(tieredSpecs([]int{1, 1}, []int{0, 1}))
	reportCool(p, 0, Full, false, time.Minute)
	assert.Equal(t, 1, tierOf(), "tier 0 cooling down")

	// Three of five ejected: panic, and the ejected ones serve again.
	p2, _ := testHealth(t, 5)
	p2.Update(specs)
	for i := range 3 {
		fail(p2, []int{0, 1, 2}[i], 5)
	}
	require.True(t, p2.Set().panicking())
	held := holdN(t, p2, 2)
	assert.Equal(t, []int{1, 1, 0, 0, 0}, inFlight(p2), "in panic every endpoint is usable, tier 0 first")
	releaseAll(p2, held)
}

// A waiting call takes the first slot that frees, on any tier.
func TestTierWaiterTakesFirstFreeSlotOnAnyTier(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{}, tieredSpecs([]int{1, 1}, []int{0, 1}))
	held := holdN(t, p, 2)
	got := make(chan Slot, 1)
	queued := make(chan struct{})
	p.OnQueue = func() { close(queued) }
	go func() {
		slot, err := p.Acquire(context.Background(), &Exclusion{}, -1)
		assert.NoError(t, err)
		got <- slot
	}()
	<-queued
	release(p, held[1]) // tier 1's: the release serves the line before it returns
	require.Equal(t, 0, p.Waiting(), "the waiter did not take tier 1's slot")
	slot := <-got
	assert.Equal(t, "e1", slot.Ep.Name())
	release(p, slot)
	release(p, held[0])
}

// Update moves a kept endpoint to another tier: picks follow the new Set,
// and the change is reported.
func TestTierUpdateMovesAnEndpoint(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{}, tieredSpecs([]int{1, 1}, []int{0, 1}))
	e0, e1 := p.Set().Eps[0], p.Set().Eps[1]
	slot := acquire(t, p)
	require.Same(t, e0, slot.Ep)

	changes := p.Update(tieredSpecs([]int{1, 1}, []int{2, 1}))
	assert.Equal(t, []Change{{Name: "e0", Kind: Retiered, OldTier: 0, NewTier: 2}}, changes)
	assert.Same(t, e0, p.Set().Eps[0], "kept, with its call in flight")
	assert.Equal(t, 2, e0.Tier())
	release(p, slot)
	slot = acquire(t, p)
	assert.Same(t, e1, slot.Ep, "e1 now comes first")
	release(p, slot)

	// Back to one tier: the Set is its own tier again.
	changes = p.Update(tieredSpecs([]int{1, 1}, []int{1, 1}))
	assert.Equal(t, []Change{{Name: "e0", Kind: Retiered, OldTier: 2, NewTier: 1}}, changes)
	assert.Equal(t, []*Set{p.Set()}, p.Set().Tiers())
	assert.Equal(t, 1, p.Set().Tier())

	// An added endpoint's tier is in its change.
	specs := append(tieredSpecs([]int{1, 1}, []int{1, 1}), testSpec("e9", 1))
	specs[2].Tier = 3
	assert.Equal(t, []Change{{Name: "e9", Kind: Added, NewMax: 1, NewTier: 3}}, p.Update(specs))
}

// A custom Picker sees one tier at a time, lowest first, and may pass on
// one by answering -1.
func TestTierCustomPickerSeesOneTier(t *testing.T) {
	t.Parallel()
	var seen []string
	pick := func(s *Set, x Exclusion) int {
		seen = append(seen, fmt.Sprint(s.Tier(), s.Eps))
		if s.Tier() == 0 {
			return -1
		}
		return PickRandom(s, &x)
	}
	p, _ := newTestPool(t, Config{Balance: Custom, Pick: pick}, tieredSpecs([]int{1, 1, 1}, []int{1, 0, 1}))
	slot := acquire(t, p)
	assert.Equal(t, 1, slot.Ep.Tier())
	assert.Equal(t, []string{"0 [e1]", "1 [e0 e2]"}, seen)
	release(p, slot)
}
