package pool

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
)

// testHealth builds a pool of n one-slot endpoints that ejects after 5
// failures in a row for 30 s, on a fake clock. Its random source sits
// mid-range, so ejections last exactly their nominal time.
func testHealth(t *testing.T, n int, mods ...func(*Config)) (*Pool, *clock.Fake) {
	t.Helper()
	cfg := Config{EjectAfter: 5, EjectFor: 30 * time.Second, Rand: func() uint64 { return 1 << 63 }}
	for _, mod := range mods {
		mod(&cfg)
	}
	return newTestPool(t, cfg, testSpecs(equalCaps(n, 1)...))
}

// report tells p of an attempt on endpoint i that came to r and that held
// a slot there; probe says whether it was the endpoint's probe.
func report(p *Pool, i int, r Result, probe bool) Effects {
	return reportCool(p, i, r, probe, 0)
}

// reportCool is report of an attempt whose reply asked to hold the
// endpoint back for cool.
func reportCool(p *Pool, i int, r Result, probe bool, cool time.Duration) Effects {
	e := p.Set().Eps[i]
	e.addHeld(1) // the attempt's slot
	return released(p, Slot{Ep: e, Probe: probe}, &Report{Result: r, Start: p.cfg.Clock.Now(), CoolDown: cool})
}

func fail(p *Pool, i, n int) {
	for range n {
		report(p, i, Failed, false)
	}
}

// admits reports whether endpoint i may take calls now.
func admits(p *Pool, i int) bool {
	s := p.Set()
	return s.admits(s.Eps[i])
}

// claim claims endpoint i as a call that took a slot there would.
func claim(p *Pool, i int) (probe, ok bool) {
	s := p.Set()
	return p.claim(s, s.Eps[i])
}

// ejectedFor returns how long endpoint i's ejection has left to run.
func ejectedFor(p *Pool, clk *clock.Fake, i int) time.Duration {
	p.smu.Lock()
	defer p.smu.Unlock()
	return p.Set().Eps[i].health.until.Sub(clk.Now())
}

// expire ends the ejections and cool-downs due now, as Run would.
func expire(p *Pool, clk *clock.Fake) (time.Time, bool) { return p.expire(clk.Now()) }

func TestHealthEjectsAfterConsecutiveFailures(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 5)
	fail(p, 0, 4)
	assert.True(t, admits(p, 0))
	fx := report(p, 0, Failed, false)
	assert.Equal(t, 30*time.Second, fx.Ejected)
	assert.Equal(t, 1, fx.Ejections)
	assert.False(t, fx.Panic)
	assert.False(t, admits(p, 0))
	assert.True(t, admits(p, 1))
	out, total := p.Ejected(p.Set().Eps[0])
	assert.True(t, out)
	assert.EqualValues(t, 1, total)
	_, ok := claim(p, 0)
	assert.False(t, ok, "a call that took its slot anyway gives it back")
}

func TestHealthCountsOnlyRetryableFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		between Result // reported after 4 failures
		ejected bool   // after one more failure
	}{
		{"throttle does not count", Full, true},
		{"a rate limit does not count", Limited, true},
		{"cancellation does not count", Cancelled, true},
		{"an abandoned copy does not count", Abandoned, true},
		{"a replaced key does not count", KeyRejected, true},
		{"success resets", OK, false},
		{"a rejected request proves it alive", Rejected, false},
		{"another failure ejects early", Failed, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, _ := testHealth(t, 5)
			fail(p, 0, 4)
			fx := report(p, 0, tt.between, false)
			if fx.Ejected > 0 {
				assert.Equal(t, Failed, tt.between)
				return
			}
			assert.Equal(t, tt.ejected, report(p, 0, Failed, false).Ejected > 0)
		})
	}
}

func TestHealthProbeAfterEjection(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	fail(p, 0, 5)
	require.False(t, admits(p, 0))

	clk.Advance(30*time.Second - time.Millisecond)
	expire(p, clk)
	assert.False(t, admits(p, 0), "still ejected just before 30 s")
	clk.Advance(time.Millisecond)
	expire(p, clk)
	assert.True(t, admits(p, 0), "probe-ready at 30 s")

	probe, ok := claim(p, 0)
	assert.True(t, probe && ok, "the first call to take it probes")
	assert.False(t, admits(p, 0), "nobody else while the probe is in flight")
	_, ok = claim(p, 0)
	assert.False(t, ok, "a second call that raced for it gives it back")
	probe, ok = claim(p, 1)
	assert.True(t, ok && !probe, "healthy endpoints need no probe")

	fx := report(p, 0, OK, true)
	assert.True(t, fx.Readmitted)
	assert.True(t, admits(p, 0))
	out, _ := p.Ejected(p.Set().Eps[0])
	assert.False(t, out)
}

func TestHealthThrottledProbeReadmits(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	fail(p, 0, 5)
	clk.Advance(30 * time.Second)
	expire(p, clk)
	probe, _ := claim(p, 0)
	require.True(t, probe)
	assert.True(t, report(p, 0, Full, true).Readmitted, "a full endpoint is alive")
}

// A probe that tells nothing of the endpoint (cancelled, abandoned, sent
// with a key since replaced, turned away for the endpoint's rate, or never
// sent) leaves the probe to the next call.
func TestHealthProbeThatTellsNothingLetsAnotherProbe(t *testing.T) {
	t.Parallel()
	for _, r := range []Result{Cancelled, Abandoned, KeyRejected, Limited, Unsent} {
		t.Run(resultName(r), func(t *testing.T) {
			t.Parallel()
			p, clk := testHealth(t, 5)
			fail(p, 0, 5)
			clk.Advance(30 * time.Second)
			expire(p, clk)
			e := p.Set().Eps[0]
			slot, ok := p.TryTake(e)
			require.True(t, ok && slot.Probe)
			require.False(t, admits(p, 0), "the probe is out")
			fx := released(p, slot, &Report{Result: r, Start: clk.Now()})
			assert.Equal(t, Effects{}, fx, "neither readmitted nor ejected")
			assert.True(t, admits(p, 0))
			slot, ok = p.TryTake(e)
			assert.True(t, ok && slot.Probe, "the next call probes")
			assert.True(t, released(p, slot, &Report{Result: OK, Start: clk.Now()}).Readmitted)
		})
	}
}

func resultName(r Result) string {
	return [...]string{"OK", "Rejected", "Full", "Limited", "Failed", "Fault", "KeyRejected", "Cancelled", "Abandoned", "Unsent"}[r]
}

// TestHealthEjectionGrows: 30 s, 1 min, 2 min, 4 min, then 5 min (10 × base)
// while probes keep failing; back to 30 s once readmitted for 5 min.
func TestHealthEjectionGrows(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	fail(p, 0, 5)
	for i, want := range []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute} {
		assert.Equal(t, want, ejectedFor(p, clk, 0))
		clk.Advance(want)
		expire(p, clk)
		probe, ok := claim(p, 0)
		require.True(t, probe && ok)
		fx := report(p, 0, Failed, true)
		assert.Equal(t, i+2, fx.Ejections)
	}
	clk.Advance(5 * time.Minute)
	expire(p, clk)
	claim(p, 0)
	require.True(t, report(p, 0, OK, true).Readmitted)

	fail(p, 0, 5)
	assert.Equal(t, 5*time.Minute, ejectedFor(p, clk, 0), "soon after readmission: as long as the last")

	clk.Advance(5 * time.Minute)
	expire(p, clk)
	claim(p, 0)
	require.True(t, report(p, 0, OK, true).Readmitted)
	clk.Advance(5 * time.Minute)
	fail(p, 0, 5)
	assert.Equal(t, 30*time.Second, ejectedFor(p, clk, 0), "readmitted 5 min ago: from the base again")
	_, total := p.Ejected(p.Set().Eps[0])
	assert.EqualValues(t, 9, total)
}

func TestHealthEjectionIsJittered(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	p.cfg.Rand = func() uint64 { return 0 }
	fail(p, 0, 5)
	assert.Equal(t, 24*time.Second, ejectedFor(p, clk, 0))
	p.cfg.Rand = func() uint64 { return ^uint64(0) }
	fail(p, 1, 5)
	assert.InDelta(t, float64(36*time.Second), float64(ejectedFor(p, clk, 1)), float64(time.Millisecond))
}

// The longest base the root package allows (a day) grows to its ceiling,
// and jittered up it still fits a Duration.
func TestHealthEjectionOfTheLongestBase(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5, func(c *Config) {
		c.EjectFor = 24 * time.Hour
		c.Rand = func() uint64 { return ^uint64(0) }
	})
	fail(p, 0, 5)
	var d time.Duration
	for range 6 {
		d = ejectedFor(p, clk, 0)
		require.Positive(t, d)
		clk.Advance(d)
		expire(p, clk)
		probe, ok := claim(p, 0)
		require.True(t, probe && ok)
		report(p, 0, Failed, true)
	}
	assert.InDelta(t, float64(12*24*time.Hour), float64(d), float64(time.Second), "10 × base + 20 %")
}

func TestHealthPanicThreshold(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 5)
	fail(p, 0, 5)
	fail(p, 1, 5)
	assert.False(t, admits(p, 0) || admits(p, 1), "2 of 5 ejected")
	assert.False(t, p.Set().panicking())
	fail(p, 2, 4)
	fx := report(p, 2, Failed, false)
	assert.True(t, p.Set().panicking(), "3 of 5 ejected")
	assert.Equal(t, Effects{Ejected: 30 * time.Second, Ejections: 1, Panic: true, Out: 3, Of: 5}, fx)
	for i := range 5 {
		assert.True(t, admits(p, i), "endpoint %d", i)
		_, ok := claim(p, i)
		assert.True(t, ok)
	}

	p2, _ := testHealth(t, 2)
	fail(p2, 0, 5)
	assert.True(t, admits(p2, 0), "1 of 2 ejected is half: ignored")
}

func TestHealthWithoutEjection(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 5, func(c *Config) { c.EjectAfter = 0 })
	fail(p, 0, 100)
	assert.True(t, admits(p, 0))
	reportCool(p, 0, Failed, false, time.Second)
	assert.False(t, admits(p, 0), "cool-downs still apply")
}

func TestHealthCoolDown(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 2)
	cool := func(i int, d time.Duration) { reportCool(p, i, Full, false, d) }
	cool(0, 2*time.Second)
	assert.False(t, admits(p, 0))
	assert.Equal(t, time.Duration(0), p.ReadyIn(), "endpoint 1 is usable")

	cool(1, 10*time.Second) // the Client caps hints (WithMaxRetryAfter): an hour comes as 10 s
	assert.Equal(t, 2*time.Second, p.ReadyIn(), "both held back: the earliest end")
	cool(0, time.Second)
	assert.Equal(t, 2*time.Second, p.ReadyIn(), "a shorter hint does not shorten a cool-down")

	clk.Advance(2 * time.Second)
	next, ok := expire(p, clk)
	assert.True(t, admits(p, 0))
	require.True(t, ok)
	assert.Equal(t, 8*time.Second, next.Sub(clk.Now()))
	assert.False(t, admits(p, 1))
}

// TestHealthRunKicksWaiters: a call waiting for a slot is served by an
// endpoint the moment its ejection ends, through Run's timer.
func TestHealthRunKicksWaiters(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	startRun(t, p)

	fail(p, 0, 5)
	var held []Slot
	for range 4 {
		held = append(held, acquire(t, p))
	}
	assert.Equal(t, []int{0, 1, 1, 1, 1}, inFlight(p), "the ejected endpoint's slot is not capacity")
	_, err := p.Acquire(context.Background(), &Exclusion{}, 0)
	assert.ErrorIs(t, err, ErrNoCapacity)

	queued := make(chan struct{}, 1)
	p.OnQueue = func() { queued <- struct{}{} }
	got := make(chan Slot)
	go func() {
		slot, _ := p.Acquire(context.Background(), &Exclusion{}, -1)
		got <- slot
	}()
	<-queued
	require.True(t, clk.WaitTimers(1, nil), "Run waits for the ejection to end")
	clk.Advance(30 * time.Second)
	slot := <-got
	assert.Same(t, p.Set().Eps[0], slot.Ep)
	assert.True(t, slot.Probe)
	release(p, slot)
	for _, slot := range held {
		release(p, slot)
	}
}
