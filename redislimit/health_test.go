package redislimit

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
)

// collector plays a Client: it records what its link applies.
type collector struct {
	got chan amlpool.HealthEvent
}

func newCollector() *collector { return &collector{got: make(chan amlpool.HealthEvent, 64)} }

func (c *collector) apply(ev amlpool.HealthEvent) { c.got <- ev }

// next returns the next event applied, failing the test if none comes.
func (c *collector) next(t *testing.T) amlpool.HealthEvent {
	t.Helper()
	select {
	case ev := <-c.got:
		return ev
	case <-time.After(testTimeout):
		t.Fatal("no health news arrived")
		return amlpool.HealthEvent{}
	}
}

// none fails the test if an event is waiting.
func (c *collector) none(t *testing.T) {
	t.Helper()
	select {
	case ev := <-c.got:
		t.Fatalf("unexpected health news %+v", ev)
	default:
	}
}

// subscribed waits until n Limiters of pool "t" listen on channel: a
// message published before a Limiter's subscription is in place reaches it
// only with its next tick.
func (f *fixture) subscribed(t *testing.T, channel string, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		return f.rdb.PubSubNumSub(testCtx(t), channel).Val()[channel] >= int64(n)
	}, testTimeout, time.Millisecond, "subscriptions")
}

// link connects a collector to l for the endpoints of eps(1, 1).
func link(t *testing.T, l *Limiter) (amlpool.HealthLink, *collector) {
	c := newCollector()
	hl := l.ShareHealth(eps(1, 1), c.apply)
	t.Cleanup(hl.Close)
	return hl, c
}

// A cool-down, failures, an ejection and a readmission seen by one replica
// reach another within one notification: the fake clock never moves, so no
// tick runs.
func TestHealthReachesOtherReplicasInOneNotification(t *testing.T) {
	f := newFixture(t)
	l1, l2 := f.limiter(t), f.limiter(t)
	f.subscribed(t, l1.keys.health, 2)
	r1, c1 := link(t, l1)
	_, c2 := link(t, l2)
	grace := l2.probeGrace()

	r1.Report(amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthCoolDown, For: 5 * time.Second})
	assert.Equal(t, amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthCoolDown, For: 5 * time.Second}, c2.next(t))
	r1.Report(amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthFailed, Failures: 2})
	assert.Equal(t, amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthFailed, Failures: 2}, c2.next(t))
	r1.Report(amlpool.HealthEvent{ID: "b", Kind: amlpool.HealthRecovered})
	assert.Equal(t, amlpool.HealthEvent{ID: "b", Kind: amlpool.HealthRecovered}, c2.next(t))
	r1.Report(amlpool.HealthEvent{ID: "b", Kind: amlpool.HealthEjected, For: 30 * time.Second, Fault: true})
	assert.Equal(t, amlpool.HealthEvent{ID: "b", Kind: amlpool.HealthEjected, For: 30*time.Second + grace, Fault: true},
		c2.next(t), "the others wait a grace longer for the owner's probe")
	r1.Report(amlpool.HealthEvent{ID: "b", Kind: amlpool.HealthReadmitted})
	assert.Equal(t, amlpool.HealthEvent{ID: "b", Kind: amlpool.HealthReadmitted}, c2.next(t))
	c1.none(t) // what a Client reports never comes back to it
	c2.none(t)
}

// Two replicas that eject at once: the first write owns the probe; the
// second hears so and waits for it like every other replica.
func TestHealthEjectionHasOneOwner(t *testing.T) {
	f := newFixture(t)
	l1, l2 := f.limiter(t), f.limiter(t)
	f.subscribed(t, l1.keys.health, 2)
	r1, _ := link(t, l1)
	r2, c2 := link(t, l2)
	grace := l2.probeGrace()

	r1.Report(amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthEjected, For: 30 * time.Second})
	require.Equal(t, amlpool.HealthKind(amlpool.HealthEjected), c2.next(t).Kind)
	r2.Report(amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthEjected, For: 40 * time.Second})
	ev := c2.next(t)
	assert.Equal(t, amlpool.HealthEjected, ev.Kind)
	assert.Equal(t, 30*time.Second+grace, ev.For, "l1's ejection stands: l2 does not probe at its own end")
	owner := f.rdb.HGet(testCtx(t), l1.keys.endpointHealth("a"), "owner").Val()
	assert.Equal(t, l1.proc, owner)
}

// Clients that share one Limiter hear each other's reports at once, as
// other replicas' Clients do.
func TestHealthReachesClientsOfTheSameLimiter(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	ra, ca := link(t, l)
	_, cb := link(t, l)
	ra.Report(amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthEjected, For: 30 * time.Second})
	assert.Equal(t, amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthEjected, For: 30 * time.Second}, cb.next(t))
	ca.none(t)
}

// A replica that missed the notification (here, the hash was written
// without one) catches up at its next tick; news it already applied does
// not come again.
func TestHealthMissedNotificationComesWithTheTick(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t, WithRenewInterval(3*time.Second))
	_, c := link(t, l)
	f.settle(t, 1)
	ctx := testCtx(t)
	key := l.keys.endpointHealth("a")
	now := f.clk.Now().UnixMilli()
	require.NoError(t, f.rdb.HSet(ctx, key, "v", now*1000, "cool", now+5000, "ej", now+20000, "fault", "0",
		"owner", "other", "last", wireEjected).Err())

	f.advance(l.cfg.renew)
	assert.Equal(t, amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthCoolDown, For: 5*time.Second - l.cfg.renew}, c.next(t))
	assert.Equal(t, amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthEjected, For: 20*time.Second - l.cfg.renew + l.probeGrace()}, c.next(t))
	f.settle(t, 1)
	f.advance(l.cfg.renew)
	f.settle(t, 1)
	c.none(t)

	require.NoError(t, f.rdb.HSet(ctx, key, "v", now*1000+1, "ej", 0, "owner", "", "last", wireReadmitted).Err())
	f.advance(l.cfg.renew)
	assert.Equal(t, amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthReadmitted}, c.next(t))
}

// An announcement older than what was applied is ignored.
func TestHealthOlderNewsIsIgnored(t *testing.T) {
	f := newFixture(t)
	l := f.limiter(t)
	_, c := link(t, l)
	l.heard("other|a|a|0|0|200")
	assert.Equal(t, amlpool.HealthKind(amlpool.HealthReadmitted), c.next(t).Kind)
	l.heard("other|e|a|1000|0|100")
	l.heard("other|e|a|1000|0|200")
	c.none(t)
	l.heard(l.proc + "|e|a|1000|0|300") // our own
	l.heard("garbage")
	c.none(t)
}

func TestHealthLinkClosed(t *testing.T) {
	f := newFixture(t)
	l1, l2, l3 := f.limiter(t), f.limiter(t), f.limiter(t)
	f.subscribed(t, l1.keys.health, 3)
	r1, _ := link(t, l1)
	r2, c2 := link(t, l2)
	_, c3 := link(t, l3)
	r2.Close()
	r2.Close() // idempotent
	r1.Report(amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthCoolDown, For: time.Second})
	assert.Equal(t, time.Second, c3.next(t).For, "the report went out")
	c2.none(t)
}

func TestWithoutHealth(t *testing.T) {
	f := newFixture(t)
	l1 := f.limiter(t, WithoutHealth())
	r1, c1 := link(t, l1)
	r2, _ := link(t, f.limiter(t))
	_, c3 := link(t, f.limiter(t))
	f.subscribed(t, l1.keys.health, 2)
	r1.Report(amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthCoolDown, For: time.Second})
	r2.Report(amlpool.HealthEvent{ID: "a", Kind: amlpool.HealthCoolDown, For: 2 * time.Second})
	assert.Equal(t, 2*time.Second, c3.next(t).For, "l1 sent nothing")
	c1.none(t) // and hears nothing
	c3.none(t)
}
