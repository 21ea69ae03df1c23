package pool

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// served is what a call lined up by lineUp came to.
type served struct {
	name string
	slot Slot
	err  error
}

// liner lines calls up in a pool, one at a time, and reports each one's end.
type liner struct {
	t      *testing.T
	p      *Pool
	queued chan struct{}
	ends   chan served
}

func newLiner(t *testing.T, p *Pool) *liner {
	l := &liner{t: t, p: p, queued: make(chan struct{}), ends: make(chan served, 100)}
	p.OnQueue = func() { l.queued <- struct{}{} }
	return l
}

// up starts a call named name at priority pri and returns once it is in
// line, or turned away on arrival (its end is then reported at once).
func (l *liner) up(name string, pri int8) {
	l.t.Helper()
	ctx := WithPriority(context.Background(), pri)
	refused := make(chan struct{})
	go func() {
		slot, err := l.p.Acquire(ctx, &Exclusion{}, -1)
		if errors.Is(err, ErrShed) && !errors.Is(err, errOutranked) {
			close(refused) // on arrival: it never joined, OnQueue never ran
		}
		l.ends <- served{name, slot, err}
	}()
	select {
	case <-l.queued: // OnQueue runs in the caller's goroutine before it waits
	case <-refused:
	}
}

// next releases slot and returns the call it went to.
func (l *liner) next(slot Slot) served {
	l.t.Helper()
	release(l.p, slot)
	s := <-l.ends
	require.NoError(l.t, s.err, s.name)
	return s
}

// drain serves the line through held, one call at a time, and returns the
// order.
func (l *liner) drain(held Slot, n int) []string {
	l.t.Helper()
	var order []string
	for range n {
		s := l.next(held)
		order = append(order, s.name)
		held = s.slot
	}
	release(l.p, held)
	return order
}

// A freed slot goes to the waiting call of highest priority; equal
// priorities go first come, first served.
func TestLineServesHigherPrioritiesFirst(t *testing.T) {
	t.Parallel()
	p := testPool(t, 1)
	held := acquire(t, p)
	l := newLiner(t, p)
	for _, c := range []struct {
		name string
		pri  int8
	}{{"low1", Low}, {"normal1", Normal}, {"high1", High}, {"low2", Low}, {"high2", High}, {"normal2", Normal}, {"high3", High}, {"low3", Low}} {
		l.up(c.name, c.pri)
	}
	require.Equal(t, 8, p.Waiting())
	assert.Equal(t, []string{"high1", "high2", "high3", "normal1", "normal2", "low1", "low2", "low3"}, l.drain(held, 8))
	assert.Equal(t, 0, p.Waiting())
	assert.Equal(t, []int{0}, inFlight(p))
}

// Within each priority the line is first come, first served.
func TestLineIsFIFOWithinAPriority(t *testing.T) {
	t.Parallel()
	for _, pri := range []int8{Low, Normal, High} {
		p := testPool(t, 1)
		held := acquire(t, p)
		l := newLiner(t, p)
		var want []string
		for i := range 10 {
			name := fmt.Sprint(i)
			l.up(name, pri)
			want = append(want, name)
		}
		assert.Equal(t, want, l.drain(held, 10), "priority %d", pri)
	}
}

// A ctx without a priority is Normal; values outside Low..High are
// clamped.
func TestPriorityOf(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	assert.Equal(t, Normal, PriorityOf(ctx))
	for in, want := range map[int8]int8{-128: Low, -2: Low, -1: Low, 0: Normal, 1: High, 2: High, 127: High} {
		assert.Equal(t, want, PriorityOf(WithPriority(ctx, in)), "%d", in)
	}
	type other struct{}
	assert.Equal(t, High, PriorityOf(context.WithValue(WithPriority(ctx, High), other{}, 1)), "inherited")
}

// No starvation: under a steady stream of High calls, a waiting Low call
// ranks Normal after one Aging and High after two, and then goes before
// the High calls that came after it. Each High call here waits 400 ms, a
// freed slot goes to it, and a new one comes: without aging the Low call
// would wait for ever.
func TestLineAgingEndsStarvation(t *testing.T) {
	t.Parallel()
	p, clk := newTestPool(t, Config{Aging: time.Second}, testSpecs(1))
	held := acquire(t, p)
	l := newLiner(t, p)
	l.up("low", Low)
	var order []string
	var servedAt []time.Duration
	start := clk.Now()
	for k := range 8 {
		l.up(fmt.Sprint("high", k), High)
		clk.Advance(400 * time.Millisecond)
		s := l.next(held)
		order, held = append(order, s.name), s.slot
		servedAt = append(servedAt, clk.Now().Sub(start))
	}
	assert.Equal(t, "high7", l.next(held).name)
	// At 2 s the Low call ranks High and came first.
	assert.Equal(t, []string{"high0", "high1", "high2", "high3", "low", "high4", "high5", "high6"}, order)
	assert.Equal(t, 2*time.Second, servedAt[4])
	assert.Equal(t, 0, p.Waiting())
}

// A Low call that has waited one Aging ranks as Normal: it goes before
// Normal calls that came after it, but not before a High one.
func TestLineAgingRaisesOneLevelPerAging(t *testing.T) {
	t.Parallel()
	p, clk := newTestPool(t, Config{Aging: time.Second}, testSpecs(1))
	held := acquire(t, p)
	l := newLiner(t, p)
	l.up("low", Low)
	clk.Advance(time.Second)
	l.up("normal", Normal)
	l.up("high", High)
	assert.Equal(t, []string{"high", "low", "normal"}, l.drain(held, 3))

	assert.Equal(t, DefaultAging, testPool(t, 1).cfg.Aging, "0 means the default")
}

// A full line turns a call away at once unless it outranks a waiting call:
// then the newest waiting call of the lowest priority is shed, and the new
// one takes its place.
func TestLineMaxWaitingSheds(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{MaxWaiting: 3}, testSpecs(1))
	held := acquire(t, p)
	l := newLiner(t, p)
	l.up("low1", Low)
	l.up("low2", Low)
	l.up("normal1", Normal)
	require.Equal(t, 3, p.Waiting())

	// A Low call outranks no one: no room.
	l.up("refused", Low)
	s := <-l.ends
	assert.Equal(t, "refused", s.name)
	assert.ErrorIs(t, s.err, ErrShed)
	assert.ErrorIs(t, s.err, ErrNoCapacity)
	assert.NotErrorIs(t, s.err, errOutranked, "turned away on arrival, not from the line")

	// A High call sheds the newest Low one.
	l.up("high1", High)
	s = <-l.ends
	assert.Equal(t, "low2", s.name)
	assert.ErrorIs(t, s.err, errOutranked)
	assert.ErrorIs(t, s.err, ErrShed)
	assert.ErrorIs(t, s.err, ErrNoCapacity)
	assert.Contains(t, s.err.Error(), "a call of higher priority took this one's place")
	require.Equal(t, 3, p.Waiting())

	// A Normal call sheds the last Low one; then another Normal call finds
	// no one below it.
	l.up("normal2", Normal)
	assert.Equal(t, "low1", (<-l.ends).name)
	l.up("normal3", Normal)
	s = <-l.ends
	assert.Equal(t, "normal3", s.name)
	assert.ErrorIs(t, s.err, ErrShed)

	assert.Equal(t, []int64{3, 1, 0}, []int64{p.Shed(Low), p.Shed(Normal), p.Shed(High)})
	assert.Equal(t, []string{"high1", "normal1", "normal2"}, l.drain(held, 3))
}

// Without shedding, a full line refuses calls of equal priority and lets
// calls in again once there is room.
func TestLineMaxWaitingRefusesWhenFull(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{MaxWaiting: 1}, testSpecs(1))
	held := acquire(t, p)
	l := newLiner(t, p)
	l.up("first", Normal)
	for range 3 {
		l.up("refused", Normal)
		s := <-l.ends
		assert.Equal(t, "refused", s.name)
		assert.ErrorIs(t, s.err, ErrShed)
	}
	assert.Equal(t, int64(3), p.Shed(Normal))
	assert.Equal(t, 1, p.Waiting())
	s := l.next(held)
	assert.Equal(t, "first", s.name)
	l.up("second", Normal) // room again
	assert.Equal(t, 1, p.Waiting())
	assert.Equal(t, []string{"second"}, l.drain(s.slot, 1))

	// A bounded line still serves at once while a slot is free.
	slot, err := p.Acquire(context.Background(), &Exclusion{}, -1)
	require.NoError(t, err)
	release(p, slot)
}

// A spell of shedding starts with a shed call and ends when the line is
// next empty. The error of the call shed first in a spell, and of no other,
// says so (StartedSpell), on arrival or from the line.
func TestLineShedSpells(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{MaxWaiting: 1}, testSpecs(1))
	held := acquire(t, p)
	l := newLiner(t, p)
	shed := func(name string, started bool, want error) {
		t.Helper()
		s := <-l.ends
		require.Equal(t, name, s.name)
		got, err := StartedSpell(s.err)
		assert.Equal(t, started, got, name)
		assert.Same(t, want, err, name)
		assert.ErrorIs(t, s.err, want, "the first form matches too")
	}
	l.up("a", Normal)
	l.up("refused1", Normal)
	shed("refused1", true, ErrShed)
	for range 2 {
		l.up("refused", Normal)
		shed("refused", false, ErrShed)
	}
	l.up("high", High) // sheds "a": the line never emptied
	shed("a", false, errOutranked)

	s := l.next(held) // the line is empty: the spell ends
	l.up("b", Normal)
	l.up("high2", High) // sheds "b": a second spell
	shed("b", true, errOutranked)
	l.up("refused", Normal)
	shed("refused", false, ErrShed)
	assert.Equal(t, []string{"high2"}, l.drain(s.slot, 1))

	ok, err := StartedSpell(context.Canceled)
	assert.False(t, ok)
	assert.Same(t, context.Canceled, err)
}

// A call shed while it gives up (ctx, max wait) reports one or the other,
// and holds no slot either way.
func TestLineShedRacesGivingUp(t *testing.T) {
	t.Parallel()
	for range 200 {
		p, _ := newTestPool(t, Config{MaxWaiting: 1}, testSpecs(1))
		held := acquire(t, p)
		queued := make(chan struct{}, 2)
		p.OnQueue = func() { queued <- struct{}{} }
		ctx, cancel := context.WithCancel(context.Background())
		res := make(chan error, 1)
		go func() {
			_, err := p.Acquire(ctx, &Exclusion{}, -1)
			res <- err
		}()
		<-queued
		go cancel()
		hi := make(chan Slot, 1)
		go func() {
			slot, err := p.Acquire(WithPriority(context.Background(), High), &Exclusion{}, -1)
			assert.NoError(t, err)
			hi <- slot
		}()
		err := <-res
		assert.True(t, errors.Is(err, context.Canceled) || errors.Is(err, errOutranked), "%v", err)
		release(p, held)
		release(p, <-hi)
		assert.Equal(t, []int{0}, inFlight(p))
		assert.Equal(t, 0, p.Waiting())
	}
}
