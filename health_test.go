package amlpool

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
)

// testHealth builds the health of a pool of n one-slot endpoints on a fake
// clock. Its random source sits mid-range, so ejections last exactly their
// nominal time.
func testHealth(t *testing.T, n int, opts ...Option) (*health, *clock.Fake, *bytes.Buffer) {
	t.Helper()
	caps := make([]int, n)
	for i := range caps {
		caps[i] = 1
	}
	p := testPool(t, caps...)
	clk := p.clock.(*clock.Fake)
	var logs bytes.Buffer
	cfg, err := buildConfig(append([]Option{WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))}, opts...))
	require.NoError(t, err)
	cfg.clock, cfg.rand = clk, func() uint64 { return 1 << 63 }
	h := newHealth(p.eps, p, &cfg)
	p.health = h
	return h, clk, &logs
}

var (
	errTransient = apiErr(500, "InternalError", "ModuleExecutionFailed")
	errThrottle  = apiErr(503, "ServiceUnavailable", "RequestThrottled")
	errBadInput  = apiErr(400, "BadArgument", "RequestBodyInvalid")
)

// report tells h of an attempt on endpoint i that ended with err.
func report(h *health, i int, err error, probe bool) *outcome {
	o := &outcome{ep: h.eps[i], err: err, probe: probe}
	if err != nil {
		o.verdict = Classify(err)
	}
	h.observe(o, errors.Is(err, context.Canceled))
	return o
}

func fail(h *health, i, n int) {
	for range n {
		report(h, i, errTransient, false)
	}
}

func TestHealthEjectsAfterConsecutiveFailures(t *testing.T) {
	h, _, logs := testHealth(t, 5)
	fail(h, 0, 4)
	assert.True(t, h.admits(0))
	o := report(h, 0, errTransient, false)
	assert.True(t, o.ejected)
	assert.False(t, h.admits(0))
	assert.True(t, h.admits(1))
	out, total := h.ejected(0)
	assert.True(t, out)
	assert.EqualValues(t, 1, total)
	assert.Contains(t, logs.String(), "endpoint ejected")
	assert.Contains(t, logs.String(), "endpoint="+h.eps[0].name)
	assert.NotContains(t, logs.String(), "Bearer")
}

func TestHealthCountsOnlyRetryableFailures(t *testing.T) {
	tests := []struct {
		name    string
		between error // reported after 4 failures
		ejected bool  // after one more failure
	}{
		{"throttle does not count", errThrottle, true},
		{"cancellation does not count", context.Canceled, true},
		{"success resets", nil, false},
		{"a permanent error proves it alive", errBadInput, false},
		{"another failure ejects early", errTransient, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _, _ := testHealth(t, 5)
			fail(h, 0, 4)
			o := report(h, 0, tt.between, false)
			if o.ejected {
				assert.Equal(t, errTransient, tt.between)
				return
			}
			assert.Equal(t, tt.ejected, report(h, 0, errTransient, false).ejected)
		})
	}
}

func TestHealthProbeAfterEjection(t *testing.T) {
	h, clk, logs := testHealth(t, 5)
	fail(h, 0, 5)
	require.False(t, h.admits(0))

	clk.Advance(30*time.Second - time.Millisecond)
	h.expire(clk.Now())
	assert.False(t, h.admits(0), "still ejected just before 30 s")
	clk.Advance(time.Millisecond)
	h.expire(clk.Now())
	assert.True(t, h.admits(0), "probe-ready at 30 s")

	probe, ok := h.claim(0)
	assert.True(t, probe && ok, "the first call to take it probes")
	assert.False(t, h.admits(0), "nobody else while the probe is in flight")
	_, ok = h.claim(0)
	assert.False(t, ok, "a second call that raced for it gives it back")
	probe, ok = h.claim(1)
	assert.True(t, ok && !probe, "healthy endpoints need no probe")

	o := report(h, 0, nil, true)
	assert.True(t, o.readmitted)
	assert.True(t, h.admits(0))
	out, _ := h.ejected(0)
	assert.False(t, out)
	assert.Contains(t, logs.String(), "endpoint readmitted")
}

func TestHealthThrottledProbeReadmits(t *testing.T) {
	h, clk, _ := testHealth(t, 5)
	fail(h, 0, 5)
	clk.Advance(30 * time.Second)
	h.expire(clk.Now())
	probe, _ := h.claim(0)
	require.True(t, probe)
	assert.True(t, report(h, 0, errThrottle, true).readmitted, "a full endpoint is alive")
}

func TestHealthCancelledProbeLetsAnotherProbe(t *testing.T) {
	h, clk, _ := testHealth(t, 5)
	fail(h, 0, 5)
	clk.Advance(30 * time.Second)
	h.expire(clk.Now())
	probe, _ := h.claim(0)
	require.True(t, probe)
	o := report(h, 0, context.Canceled, true)
	assert.False(t, o.readmitted || o.ejected)
	probe, ok := h.claim(0)
	assert.True(t, probe && ok)
}

// TestHealthEjectionGrows: 30 s, 1 min, 2 min, 4 min, then 5 min (10 × base)
// while probes keep failing; back to 30 s once readmitted for 5 min.
func TestHealthEjectionGrows(t *testing.T) {
	h, clk, _ := testHealth(t, 5)
	fail(h, 0, 5)
	for _, want := range []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute} {
		assert.Equal(t, want, h.eh[0].until.Sub(clk.Now()))
		clk.Advance(want)
		h.expire(clk.Now())
		probe, ok := h.claim(0)
		require.True(t, probe && ok)
		report(h, 0, errTransient, true)
	}
	clk.Advance(5 * time.Minute)
	h.expire(clk.Now())
	h.claim(0)
	require.True(t, report(h, 0, nil, true).readmitted)

	fail(h, 0, 5)
	assert.Equal(t, 5*time.Minute, h.eh[0].until.Sub(clk.Now()), "soon after readmission: as long as the last")

	clk.Advance(5 * time.Minute)
	h.expire(clk.Now())
	h.claim(0)
	require.True(t, report(h, 0, nil, true).readmitted)
	clk.Advance(5 * time.Minute)
	fail(h, 0, 5)
	assert.Equal(t, 30*time.Second, h.eh[0].until.Sub(clk.Now()), "readmitted 5 min ago: from the base again")
	assert.EqualValues(t, 9, h.eh[0].total)
}

func TestHealthEjectionIsJittered(t *testing.T) {
	h, clk, _ := testHealth(t, 5)
	h.cfg.rand = func() uint64 { return 0 }
	fail(h, 0, 5)
	assert.Equal(t, 24*time.Second, h.eh[0].until.Sub(clk.Now()))
	h.cfg.rand = func() uint64 { return ^uint64(0) }
	fail(h, 1, 5)
	assert.InDelta(t, float64(36*time.Second), float64(h.eh[1].until.Sub(clk.Now())), float64(time.Millisecond))
}

func TestHealthPanicThreshold(t *testing.T) {
	h, _, logs := testHealth(t, 5)
	fail(h, 0, 5)
	fail(h, 1, 5)
	assert.False(t, h.admits(0) || h.admits(1), "2 of 5 ejected")
	assert.False(t, h.panicking())
	fail(h, 2, 5)
	assert.True(t, h.panicking(), "3 of 5 ejected")
	for i := range 5 {
		assert.True(t, h.admits(i), "endpoint %d", i)
		_, ok := h.claim(i)
		assert.True(t, ok)
	}
	assert.Contains(t, logs.String(), "using all of them")

	h2, _, _ := testHealth(t, 2)
	fail(h2, 0, 5)
	assert.True(t, h2.admits(0), "1 of 2 ejected is half: ignored")
}

func TestHealthWithoutEjection(t *testing.T) {
	h, _, _ := testHealth(t, 5, WithoutEjection)
	fail(h, 0, 100)
	assert.True(t, h.admits(0))
	o := &outcome{ep: h.eps[0], err: errTransient, verdict: VerdictRetry, retryAfter: time.Second}
	h.observe(o, false)
	assert.False(t, h.admits(0), "cool-downs still apply")
}

func TestHealthCoolDown(t *testing.T) {
	h, clk, _ := testHealth(t, 2, WithMaxRetryAfter(10*time.Second))
	cool := func(i int, d time.Duration) {
		h.observe(&outcome{ep: h.eps[i], err: errThrottle, verdict: VerdictFull, retryAfter: d}, false)
	}
	cool(0, 2*time.Second)
	assert.False(t, h.admits(0))
	assert.Equal(t, time.Duration(0), h.readyIn(), "endpoint 1 is usable")

	cool(1, time.Hour)
	assert.Equal(t, 2*time.Second, h.readyIn(), "both held back: the earliest end")
	cool(0, time.Second)
	assert.Equal(t, 2*time.Second, h.readyIn(), "a shorter hint does not shorten a cool-down")

	clk.Advance(2 * time.Second)
	next, ok := h.expire(clk.Now())
	assert.True(t, h.admits(0))
	require.True(t, ok)
	assert.Equal(t, 8*time.Second, next.Sub(clk.Now()), "the hour was capped at 10 s")
	assert.False(t, h.admits(1))
}

// TestHealthRunKicksWaiters: a call waiting for a slot is served by an
// endpoint the moment its ejection ends, through run's timer.
func TestHealthRunKicksWaiters(t *testing.T) {
	h, clk, _ := testHealth(t, 5)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); h.run(stop) }()
	defer func() { close(stop); <-done }()

	fail(h, 0, 5)
	p := h.pool
	var held []*endpoint
	for range 4 {
		ep, err := p.acquire(context.Background(), &exclusion{}, 0)
		require.NoError(t, err)
		held = append(held, ep)
	}
	assert.Equal(t, []int{0, 1, 1, 1, 1}, inFlight(p), "the ejected endpoint's slot is not capacity")
	_, err := p.acquire(context.Background(), &exclusion{}, 0)
	assert.ErrorIs(t, err, ErrNoCapacity)

	got := make(chan *endpoint)
	go func() {
		ep, _ := p.acquire(context.Background(), &exclusion{}, -1)
		got <- ep
	}()
	require.True(t, clk.WaitTimers(1, nil), "run waits for the ejection to end")
	clk.Advance(30 * time.Second)
	ep := <-got
	assert.Same(t, p.eps[0], ep)
	p.release(ep)
	for _, ep := range held {
		p.release(ep)
	}
}
