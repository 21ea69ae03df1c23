package amlpool

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
)

// aimdFixture drives an adaptive limit by hand: attempts start and end on a
// fake clock.
type aimdFixture struct {
	p   *pool
	a   *adaptive
	clk *clock.Fake
}

func newAIMDFixture(t *testing.T, caps ...int) *aimdFixture {
	p := testPool(t, caps...)
	return &aimdFixture{p: p, a: newAdaptive(p), clk: p.clock.(*clock.Fake)}
}

// done reports an attempt on endpoint i that started at start and ends now.
func (f *aimdFixture) done(i int, start time.Time, throttled bool) *outcome {
	o := &outcome{ep: f.p.eps[i], start: start, latency: f.clk.Now().Sub(start), throttled: throttled}
	if throttled {
		o.err = ErrThrottled
	}
	f.a.attemptDone(o)
	return o
}

func (f *aimdFixture) limit(i int) int { return int(f.p.eps[i].limit.Load()) }

func TestAdaptiveCutsOnThrottleOncePerRoundTrip(t *testing.T) {
	f := newAIMDFixture(t, 20)
	sentEarly := f.clk.Now()
	f.clk.Advance(time.Millisecond)
	sentLater := f.clk.Now()
	f.clk.Advance(time.Millisecond)

	o := f.done(0, sentLater, true)
	assert.Equal(t, 14, f.limit(0), "20 × 0.7")
	assert.EqualValues(t, 14, o.newLimit)

	// Sent before that throttle came back: it tells of the old limit.
	o = f.done(0, sentEarly, true)
	assert.Equal(t, 14, f.limit(0))
	assert.Zero(t, o.newLimit)

	// Sent after: the endpoint is still full at 14.
	next := f.clk.Now()
	f.clk.Advance(time.Millisecond)
	f.done(0, next, true)
	assert.Equal(t, 9, f.limit(0), "14 × 0.7 = 9.8")
}

func TestAdaptiveNeverBelowOne(t *testing.T) {
	f := newAIMDFixture(t, 20)
	for range 10 {
		start := f.clk.Now()
		f.clk.Advance(time.Millisecond)
		f.done(0, start, true)
	}
	assert.Equal(t, 1, f.limit(0))
}

func TestAdaptiveGrowsOnlyWhileInUse(t *testing.T) {
	f := newAIMDFixture(t, 20)
	start := f.clk.Now()
	f.clk.Advance(time.Millisecond)
	f.done(0, start, true)
	require.Equal(t, 14, f.limit(0))

	// Idle: 1 of 14 in use once this one ended. No growth.
	for range 1000 {
		f.done(0, f.clk.Now(), false)
	}
	assert.Equal(t, 14, f.limit(0))

	// Busy: 8 in use with this one, half of 16. One slot per
	// 1/adaptiveIncrease successes.
	f.p.eps[0].inFlight.Store(7)
	perSlot := int(1 / adaptiveIncrease)
	var raised []int32
	for range 2 * perSlot {
		if o := f.done(0, f.clk.Now(), false); o.newLimit != 0 {
			raised = append(raised, o.newLimit)
		}
	}
	assert.Equal(t, []int32{15, 16}, raised)
	assert.Equal(t, 16, f.limit(0))

	// Never above the configured cap.
	f.p.eps[0].inFlight.Store(19)
	for range 20 * perSlot {
		f.done(0, f.clk.Now(), false)
	}
	assert.Equal(t, 20, f.limit(0))
	assert.EqualValues(t, 20, f.a.limits[0].cur)
}

// A rising limit serves a call waiting for a slot at once.
func TestAdaptiveRaiseServesWaiter(t *testing.T) {
	f := newAIMDFixture(t, 2)
	start := f.clk.Now()
	f.clk.Advance(time.Millisecond)
	f.done(0, start, true)
	require.Equal(t, 1, f.limit(0), "2 × 0.7")
	held, err := f.p.acquire(context.Background(), &exclusion{}, 0)
	require.NoError(t, err)

	queued := make(chan struct{}, 1)
	f.p.onQueue = func() { queued <- struct{}{} }
	got := make(chan *endpoint)
	go func() {
		ep, err := f.p.acquire(context.Background(), &exclusion{}, -1)
		assert.NoError(t, err)
		got <- ep
	}()
	<-queued
	for range int(1 / adaptiveIncrease) {
		f.done(0, f.clk.Now(), false) // 1 in flight of 1: in use
	}
	ep := <-got // hangs if the raise does not kick the line
	assert.Equal(t, 2, f.limit(0))
	f.p.release(ep)
	f.p.release(held)
}

// End to end: an endpoint that throttles everything brings the limit down;
// without the option it stays at the configured cap.
func TestClientAdaptiveLimitOnThrottles(t *testing.T) {
	throttle, err := os.ReadFile("testdata/rrs/error_throttled.json")
	require.NoError(t, err)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write(throttle)
	}))
	defer srv.Close()
	ep := Endpoint{URL: srv.URL + "/workspaces/w/services/e/execute", APIKey: "k", MaxConcurrentCalls: 16}

	for _, tt := range []struct {
		name string
		opts []Option
		want int
	}{
		{"without", []Option{WithoutRetries}, 16},
		{"with", []Option{WithoutRetries, WithAdaptiveLimit()}, 11}, // 16 × 0.7
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New([]Endpoint{ep}, tt.opts...)
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Do(context.Background(), []byte(`{}`))
			require.ErrorIs(t, err, ErrThrottled)
			st := c.Stats().Endpoints[0]
			assert.Equal(t, tt.want, st.Limit)
			assert.Equal(t, 16, st.MaxConcurrentCalls)
		})
	}
}
