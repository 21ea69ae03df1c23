package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
)

// aimdFixture drives an adaptive limit by hand: attempts start and end on a
// fake clock.
type aimdFixture struct {
	p   *Pool
	clk *clock.Fake
}

func newAIMDFixture(t *testing.T, caps ...int) *aimdFixture {
	p, clk := newTestPool(t, Config{Adaptive: true}, testSpecs(caps...))
	return &aimdFixture{p: p, clk: clk}
}

// done reports an attempt on endpoint i that started at start and ends now.
// It holds a slot until the report, as every attempt does, beside those
// already in flight.
func (f *aimdFixture) done(i int, start time.Time, throttled bool) Effects {
	e := f.p.Set().Eps[i]
	r := OK
	if throttled {
		r = Full
	}
	e.addHeld(1)
	return released(f.p, Slot{Ep: e}, &Report{Result: r, Start: start, Latency: f.clk.Now().Sub(start)})
}

func (f *aimdFixture) limit(i int) int { return f.p.Set().Eps[i].Limit() }

func TestAdaptiveCutsOnThrottleOncePerRoundTrip(t *testing.T) {
	t.Parallel()
	f := newAIMDFixture(t, 20)
	sentEarly := f.clk.Now()
	f.clk.Advance(time.Millisecond)
	sentLater := f.clk.Now()
	f.clk.Advance(time.Millisecond)

	fx := f.done(0, sentLater, true)
	assert.Equal(t, 14, f.limit(0), "20 × 0.7")
	assert.EqualValues(t, 14, fx.Limit)

	// Sent before that throttle came back: it tells of the old limit.
	fx = f.done(0, sentEarly, true)
	assert.Equal(t, 14, f.limit(0))
	assert.Zero(t, fx.Limit)

	// Sent after: the endpoint is still full at 14.
	next := f.clk.Now()
	f.clk.Advance(time.Millisecond)
	f.done(0, next, true)
	assert.Equal(t, 9, f.limit(0), "14 × 0.7 = 9.8")
}

func TestAdaptiveNeverBelowOne(t *testing.T) {
	t.Parallel()
	f := newAIMDFixture(t, 20)
	for range 10 {
		start := f.clk.Now()
		f.clk.Advance(time.Millisecond)
		f.done(0, start, true)
	}
	assert.Equal(t, 1, f.limit(0))
}

func TestAdaptiveOffKeepsTheCap(t *testing.T) {
	t.Parallel()
	p, clk := newTestPool(t, Config{}, testSpecs(20))
	e := p.Set().Eps[0]
	e.addHeld(1)
	start := clk.Now()
	clk.Advance(time.Millisecond)
	fx := released(p, Slot{Ep: e}, &Report{Result: Full, Start: start, Latency: time.Millisecond})
	assert.Zero(t, fx.Limit)
	assert.Equal(t, 20, e.Limit())
}

func TestAdaptiveGrowsOnlyWhileInUse(t *testing.T) {
	t.Parallel()
	f := newAIMDFixture(t, 20)
	start := f.clk.Now()
	f.clk.Advance(time.Millisecond)
	f.done(0, start, true)
	require.Equal(t, 14, f.limit(0))

	// Idle: 1 of 14 in use, this attempt's slot. No growth.
	for range 1000 {
		f.done(0, f.clk.Now(), false)
	}
	assert.Equal(t, 14, f.limit(0))

	// Busy: 8 in use with this one, half of 16. One slot per
	// 1/adaptiveIncrease successes.
	e := f.p.Set().Eps[0]
	e.storeHeld(7)
	perSlot := int(1 / adaptiveIncrease)
	var raised []int32
	for range 2 * perSlot {
		if fx := f.done(0, f.clk.Now(), false); fx.Limit != 0 {
			raised = append(raised, fx.Limit)
		}
	}
	assert.Equal(t, []int32{15, 16}, raised)
	assert.Equal(t, 16, f.limit(0))

	// Never above the configured cap.
	e.storeHeld(19)
	for range 20 * perSlot {
		f.done(0, f.clk.Now(), false)
	}
	assert.Equal(t, 20, f.limit(0))
	assert.EqualValues(t, 20, e.aimd.cur)
}

// A rising limit serves a call waiting for a slot at once: by the time the
// release that raised it returns.
func TestAdaptiveRaiseServesWaiter(t *testing.T) {
	t.Parallel()
	f := newAIMDFixture(t, 2)
	start := f.clk.Now()
	f.clk.Advance(time.Millisecond)
	f.done(0, start, true)
	require.Equal(t, 1, f.limit(0), "2 × 0.7")
	held := acquire(t, f.p)

	got := waitInLine(t, f.p)
	for i := 0; ; i++ {
		require.Less(t, i, int(1/adaptiveIncrease), "no raise")
		require.Equal(t, 1, f.p.Waiting(), "served before the raise, at %d", i)
		if fx := f.done(0, f.clk.Now(), false); fx.Limit != 0 { // 1 in flight of 1: in use
			require.EqualValues(t, 2, fx.Limit)
			break
		}
	}
	require.Equal(t, 0, f.p.Waiting(), "served by the release that raised the limit")
	slot := <-got // hangs if the raise does not kick the line
	assert.Equal(t, 2, f.limit(0))
	release(f.p, slot)
	release(f.p, held)
}

// setMax: without an adaptive limit the limit is the cap; with one, a limit
// at the old cap follows the new cap, and a cut limit keeps its value under
// the new cap.
func TestAdaptiveNewCap(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		adaptive bool
		cut      bool // a throttle cut the limit from 20 to 14 first
		newMax   int
		want     int
	}{
		{"off, lower", false, false, 10, 10},
		{"off, higher", false, false, 30, 30},
		{"at the cap, lower", true, false, 10, 10},
		{"at the cap, higher", true, false, 30, 30},
		{"cut, higher", true, true, 30, 14},
		{"cut, lower above the cut", true, true, 16, 14},
		{"cut, lower below the cut", true, true, 10, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, clk := newTestPool(t, Config{Adaptive: tt.adaptive}, []Spec{testSpec("e", 20)})
			e := p.Set().Eps[0]
			if tt.cut {
				e.addHeld(1)
				p.Release(Slot{Ep: e}, &Report{Result: Full, Start: clk.Now()}, nil)
				require.Equal(t, 14, e.Limit())
			}
			p.Update([]Spec{testSpec("e", tt.newMax)})
			assert.Equal(t, tt.newMax, e.Max())
			assert.Equal(t, tt.want, e.Limit())
		})
	}
}

// A rate limit (Limited: an online endpoint's 429 Rate-limited) cuts the
// limit as a throttle does, once per round trip, and still counts neither
// way towards ejection nor as a throttle.
func TestAdaptiveCutsOnRateLimit(t *testing.T) {
	t.Parallel()
	p, clk := newTestPool(t, Config{Adaptive: true, EjectAfter: 2, EjectFor: time.Minute}, testSpecs(20, 20))
	e := p.Set().Eps[0]
	limited := func(start time.Time) Effects {
		e.addHeld(1)
		return released(p, Slot{Ep: e}, &Report{Result: Limited, Start: start, Latency: clk.Now().Sub(start)})
	}
	sentEarly := clk.Now()
	clk.Advance(time.Millisecond)
	sentLater := clk.Now()
	clk.Advance(time.Millisecond)

	fx := limited(sentLater)
	assert.Equal(t, 14, e.Limit(), "20 × 0.7")
	assert.EqualValues(t, 14, fx.Limit)
	fx = limited(sentEarly)
	assert.Zero(t, fx.Limit, "sent before the cut: it tells of the old limit")
	next := clk.Now()
	clk.Advance(time.Millisecond)
	limited(next)
	assert.Equal(t, 9, e.Limit(), "14 × 0.7 = 9.8")

	for range 5 {
		next := clk.Now()
		clk.Advance(time.Millisecond)
		fx = limited(next)
		assert.Zero(t, fx.Ejected)
	}
	out, ejections := p.Ejected(e)
	assert.False(t, out, "a rate limit is no failure")
	assert.Zero(t, ejections)
	n := e.Counters()
	assert.EqualValues(t, 8, n.Failures)
	assert.Zero(t, n.Throttles, "a rate limit is no throttle")
}
