package pool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Health news from other replicas, applied with the invariants of local
// events.

func TestRemoteFailuresCountWithLocalOnes(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 5)
	e := p.Set().Eps[0]
	fail(p, 0, 2)
	fx := p.RemoteFailures(e, 2)
	assert.Zero(t, fx.Ejected, "4 failures in a row, wherever seen, are below the threshold")
	assert.True(t, admits(p, 0))
	fx = report(p, 0, Failed, false)
	assert.Equal(t, 30*time.Second, fx.Ejected, "the fifth, seen here, ejects")

	// Remote failures alone eject too, and say so: this replica decided.
	p.RemoteFailures(p.Set().Eps[1], 4)
	fx = p.RemoteFailures(p.Set().Eps[1], 1)
	assert.Equal(t, 30*time.Second, fx.Ejected)
	assert.Equal(t, 1, fx.Ejections)
	assert.False(t, admits(p, 1))
}

func TestRemoteRecoveredRestartsTheCount(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 5)
	e := p.Set().Eps[0]
	fail(p, 0, 4)
	p.RemoteRecovered(e)
	fx := report(p, 0, Failed, false)
	assert.Zero(t, fx.Ejected, "the count started again")
	assert.True(t, admits(p, 0))
	fail(p, 0, 3)
	fx = report(p, 0, Failed, false)
	assert.Equal(t, 30*time.Second, fx.Ejected)
}

func TestRecoveredIsAnEffect(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 5)
	assert.False(t, report(p, 0, OK, false).Recovered, "no failures to forget")
	fail(p, 0, 1)
	assert.True(t, report(p, 0, OK, false).Recovered)
	fail(p, 0, 1)
	assert.True(t, report(p, 0, Rejected, false).Recovered, "a 400 proves it alive too")
	fail(p, 0, 1)
	assert.False(t, report(p, 0, Full, false).Recovered, "a throttle proves nothing")
}

func TestRemoteEjectLeavesTheProbeToItsOwner(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	e := p.Set().Eps[0]
	fx := p.RemoteEject(e, 40*time.Second, false)
	assert.Equal(t, 40*time.Second, fx.Ejected)
	assert.False(t, fx.Panic)
	assert.False(t, admits(p, 0))
	out, total := p.Ejected(e)
	assert.True(t, out)
	assert.EqualValues(t, 1, total)
	assert.Equal(t, 40*time.Second, ejectedFor(p, clk, 0))

	clk.Advance(30 * time.Second) // the owner's own ejection ends: its probe, not ours
	expire(p, clk)
	assert.False(t, admits(p, 0))
	p.RemoteReadmit(e)
	assert.True(t, admits(p, 0), "the owner's probe readmitted it")
	probe, ok := claim(p, 0)
	assert.True(t, ok)
	assert.False(t, probe, "readmitted: no probe here")
	out, _ = p.Ejected(e)
	assert.False(t, out)
}

func TestRemoteEjectThatNobodyEndsEndsWithAProbeHere(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	p.RemoteEject(p.Set().Eps[0], 40*time.Second, false)
	clk.Advance(40 * time.Second)
	expire(p, clk)
	probe, ok := claim(p, 0)
	assert.True(t, ok)
	assert.True(t, probe, "no news from the owner: this replica probes")
}

func TestRemoteEjectExtendsNeverShortens(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	e := p.Set().Eps[0]
	fail(p, 0, 5) // ejected here for 30 s
	assert.Zero(t, p.RemoteEject(e, 45*time.Second, false).Ejected, "out already: no new ejection")
	assert.Equal(t, 45*time.Second, ejectedFor(p, clk, 0))
	p.RemoteEject(e, 10*time.Second, false)
	assert.Equal(t, 45*time.Second, ejectedFor(p, clk, 0))
	_, total := p.Ejected(e)
	assert.EqualValues(t, 1, total)
}

func TestRemoteEjectOfAnEndpointAwaitingItsProbe(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 5)
	e := p.Set().Eps[0]
	fail(p, 0, 5)
	clk.Advance(30 * time.Second)
	expire(p, clk) // the probe is due here
	// Another replica's probe failed meanwhile, and it ejected again.
	p.RemoteEject(e, time.Minute, false)
	assert.False(t, admits(p, 0), "out again, without a probe here")
	assert.Equal(t, time.Minute, ejectedFor(p, clk, 0))

	// A probe in flight here is left to decide.
	clk.Advance(time.Minute)
	expire(p, clk)
	probe, ok := claim(p, 0)
	require.True(t, probe && ok)
	p.RemoteEject(e, time.Hour, false)
	fx := report(p, 0, OK, true)
	assert.True(t, fx.Readmitted)
	assert.True(t, admits(p, 0))
}

func TestRemoteEjectForAFault(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 2)
	e := p.Set().Eps[0]
	fx := p.RemoteEject(e, time.Minute, true)
	assert.False(t, fx.Panic, "an endpoint fault does not count towards panic")
	assert.False(t, admits(p, 0), "one of two out for a fault stays out: no panic")

	// A failure ejection of the other one is a panic, as it would be here.
	fx = p.RemoteEject(p.Set().Eps[1], time.Minute, false)
	assert.True(t, fx.Panic)
	assert.Equal(t, 1, fx.Out)
	assert.True(t, admits(p, 1), "panic: ejection ignored")
	assert.False(t, admits(p, 0), "but not for a fault")
}

func TestRemoteEjectUpgradesToAFault(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 3)
	e := p.Set().Eps[0]
	p.RemoteEject(e, time.Minute, false)
	p.RemoteEject(e, time.Minute, true)
	s := p.Set()
	assert.EqualValues(t, 1, s.faulted.Load())
	assert.EqualValues(t, 0, s.out.Load())
}

func TestRemoteReadmitServesWaitingCalls(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 3)
	e := p.Set().Eps[0]
	fail(p, 0, 5)
	a, b := acquire(t, p), acquire(t, p) // the other two
	got := waitInLine(t, p)
	assert.True(t, p.RemoteReadmit(e))
	slot := <-got
	assert.Same(t, e, slot.Ep)
	assert.False(t, slot.Probe)
	for _, s := range []Slot{slot, a, b} {
		release(p, s)
	}
	assert.False(t, p.RemoteReadmit(e), "in rotation already")
}

func TestRemoteNewsOfARemovedEndpointIsIgnored(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 2)
	e := p.Set().Eps[0]
	p.Update([]Spec{testSpec("e1", 1)})
	assert.Zero(t, p.RemoteEject(e, time.Minute, true))
	assert.Zero(t, p.RemoteFailures(e, 10))
	p.CoolDown(e, time.Minute)
	assert.Zero(t, e.health.state.Load(), "nothing applied to a removed endpoint")
	assert.Zero(t, p.Set().faulted.Load()+p.Set().out.Load())
}

func TestRemoteHealthWithoutEjection(t *testing.T) {
	t.Parallel()
	p, _ := testHealth(t, 2, func(c *Config) { c.EjectAfter = 0 })
	e := p.Set().Eps[0]
	assert.Zero(t, p.RemoteFailures(e, 100))
	assert.Zero(t, p.RemoteEject(e, time.Minute, false))
	assert.True(t, admits(p, 0), "ejection is off here")
	p.CoolDown(e, time.Minute)
	assert.False(t, admits(p, 0), "delay hints still hold it back")
}

func TestRemoteCoolDownEnds(t *testing.T) {
	t.Parallel()
	p, clk := testHealth(t, 2)
	e := p.Set().Eps[0]
	p.CoolDown(e, 5*time.Second)
	p.CoolDown(e, 2*time.Second) // never shortens
	assert.False(t, admits(p, 0))
	clk.Advance(4 * time.Second)
	expire(p, clk)
	assert.False(t, admits(p, 0))
	clk.Advance(time.Second)
	expire(p, clk)
	assert.True(t, admits(p, 0))
}
