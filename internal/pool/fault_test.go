package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An endpoint fault (a rejected key, no access, no such endpoint) ejects at
// once, with no run of failures first.
func TestFaultEjectsAtOnce(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 5)
	fx := report(p, 0, Fault, false)
	assert.Equal(t, Effects{Ejected: 30 * time.Second, Ejections: 1}, fx)
	assert.False(t, admits(p, 0))
	out, total := p.Ejected(p.Set().Eps[0])
	assert.True(t, out)
	assert.EqualValues(t, 1, total)
	assert.Equal(t, Counters{Calls: 1, Failures: 1, Faults: 1}, p.Set().Eps[0].Counters())

	p, _ = testHealth(t, 5, func(c *Config) { c.EjectAfter = 0 })
	assert.Zero(t, report(p, 0, Fault, false).Ejected, "without ejection, faults eject nothing either")
	assert.True(t, admits(p, 0))
}

// The panic threshold readmits endpoints ejected for failures, never those
// out for a fault, which cannot serve anyone; and it counts only the
// endpoints that can serve at all.
func TestFaultIsNotReadmittedByThePanicThreshold(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 5)
	for i := range 3 {
		report(p, i, Fault, false)
	}
	assert.False(t, p.Set().panicking(), "faults are no failures")
	assert.True(t, admits(p, 3))
	fail(p, 3, 4)
	fx := report(p, 3, Failed, false)
	assert.True(t, fx.Panic, "1 of the 2 endpoints that can serve is out")
	assert.True(t, admits(p, 3), "ejected for failures: readmitted by the panic")
	assert.True(t, admits(p, 4))
	for i := range 3 {
		assert.False(t, admits(p, i), "endpoint %d is out for a fault", i)
		_, ok := claim(p, i)
		assert.False(t, ok, "endpoint %d", i)
	}
	_, ok := claim(p, 3)
	assert.True(t, ok)
}

// When every endpoint of the Set is out for a fault, calls go to them all
// again (and fail with the endpoint's own error) rather than wait forever.
func TestAllFaultedAdmitsThemAll(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 3)
	report(p, 0, Fault, false)
	report(p, 1, Fault, false)
	assert.False(t, p.Set().allFaulted())
	assert.False(t, admits(p, 0) || admits(p, 1), "2 of 3 out for a fault")
	assert.Equal(t, time.Duration(0), p.ReadyIn())
	report(p, 2, Fault, false)
	assert.True(t, p.Set().allFaulted())
	assert.Equal(t, time.Duration(0), p.ReadyIn())
	var held []Slot
	for i := range 3 {
		assert.True(t, admits(p, i), "endpoint %d", i)
		held = append(held, acquire(t, p))
	}
	assert.Equal(t, []int{1, 1, 1}, inFlight(p))
	for _, slot := range held {
		release(p, slot)
	}
}

// A probe answered with a fault ejects the endpoint again, for longer, and
// still for a fault.
func TestFaultedProbeReejectsLonger(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	report(p, 0, Fault, false)
	clk.Advance(30 * time.Second)
	expire(p, clk)
	require.True(t, admits(p, 0), "probe-ready")
	slot, ok := p.TryTake(p.Set().Eps[0])
	require.True(t, ok && slot.Probe)
	fx := released(p, slot, &Report{Result: Fault, Start: clk.Now()})
	assert.Equal(t, Effects{Ejected: time.Minute, Ejections: 2}, fx)
	assert.Equal(t, time.Minute, ejectedFor(p, clk, 0))
	assert.False(t, admits(p, 0))

	// A panic of the others does not bring it back.
	for i := 1; i <= 3; i++ {
		fail(p, i, 5)
	}
	require.True(t, p.Set().panicking())
	assert.True(t, admits(p, 1))
	assert.False(t, admits(p, 0), "still out for a fault")

	// Its next probe succeeds: back in rotation, as a healthy endpoint.
	clk.Advance(time.Minute)
	expire(p, clk)
	slot, ok = p.TryTake(p.Set().Eps[0])
	require.True(t, ok && slot.Probe)
	assert.True(t, released(p, slot, &Report{Result: OK, Start: clk.Now()}).Readmitted)
	assert.Equal(t, uint32(phaseHealthy), p.Set().Eps[0].health.state.Load())
	assert.EqualValues(t, 0, p.Set().faulted.Load())
}
