package redislimit

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/internal/redistest"
)

// Redis set up for high availability: a Sentinel failover under load and a
// Cluster. The endpoints' own caps are set far above the fleet's, so that
// they never throttle and their in-flight count shows any over-cap as it
// is.

// sampler counts the calls in the endpoints' handlers every millisecond and
// keeps, per phase, the most seen at once on any endpoint.
type sampler struct {
	srvs []*amltest.Server
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex // guards phase and peaks
	phase string
	peaks map[string]int64
}

func sample(srvs []*amltest.Server, phase string) *sampler {
	s := &sampler{srvs: srvs, stop: make(chan struct{}), done: make(chan struct{}), phase: phase, peaks: map[string]int64{}}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(time.Millisecond):
			}
			var most int64
			for _, srv := range srvs {
				most = max(most, srv.Stats().InFlight)
			}
			s.mu.Lock()
			s.peaks[s.phase] = max(s.peaks[s.phase], most)
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *sampler) enter(phase string) {
	s.mu.Lock()
	s.phase = phase
	s.mu.Unlock()
}

func (s *sampler) end() map[string]int64 {
	close(s.stop)
	<-s.done
	return s.peaks
}

// highCapServers starts n endpoints that admit up to 1000 calls: the
// fleet's cap, mcc, is the client side's.
func highCapServers(t *testing.T, n, mcc int, latency time.Duration) ([]*amltest.Server, []amlpool.Endpoint) {
	var srvs []*amltest.Server
	var eps []amlpool.Endpoint
	for i := range n {
		s := amltest.NewServer(amltest.Config{Name: "ep" + string(rune('0'+i)), MaxConcurrentCalls: 1000, Latency: latency})
		t.Cleanup(s.Close)
		e := s.Endpoint()
		e.MaxConcurrentCalls = mcc
		srvs = append(srvs, s)
		eps = append(eps, e)
	}
	return srvs, eps
}

// Sentinel promotes the replica while three replicas call at full load:
// FailStatic carries them through the switch with no failed call, the
// over-cap while it lasts is measured, and once the new primary answers
// every Limiter is back on Redis within seconds and the caps hold again.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("a failover under load: skipped with -short")
	}
	s := redistest.StartSentinel(t)
	const (
		replicas = 3
		mcc      = 6
	)
	srvs, eps := highCapServers(t, 2, mcc, 50*time.Millisecond)
	var lims []*Limiter
	var trs []*traffic
	for range replicas {
		// The fleet's size is given, so that a start slowed by a loaded
		// host (a fallback before Redis was ever seen) does not stall it.
		r := newReplica(t, s.FailoverClient(t), eps, WithTTL(3*time.Second), WithProbeInterval(200*time.Millisecond),
			WithExpectedReplicas(replicas))
		lims = append(lims, r.lim)
		trs = append(trs, startCalls(t, r.c, 8)) // 24 callers for 12 slots
	}
	smp := sample(srvs, "before")
	ctx := testCtx(t)
	_, err := srvs[0].WaitFor(ctx, func(st amltest.Stats) bool { return st.Scored > 100 })
	require.NoError(t, err)
	// Each counts the fleet by its next round trip (a tick at the latest):
	// on a loaded host one may not have made it since the last one started.
	waitFor(t, "every Limiter counts the three replicas", func() bool {
		for _, l := range lims {
			if l.Stats().Replicas != replicas {
				return false
			}
		}
		return true
	})

	smp.enter("switch")
	killed := time.Now()
	s.Primary.Kill()
	// Long enough for a Sentinel that a starved host put in TILT mode (its
	// timer late by 2 s: no failover for 30 s) and for a failover retried
	// after its failover-timeout; promoted in about 1.7 s otherwise.
	pctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		a, err := s.PrimaryAddr(pctx)
		if err == nil && a == s.Replica.Addr {
			break
		}
		require.NoError(t, pctx.Err(), "the replica was never promoted; the Sentinel's log:\n%s\nthe replica's:\n%s",
			s.Sentinel.Log(), s.Replica.Log())
		time.Sleep(10 * time.Millisecond)
	}
	promoted := time.Since(killed)
	waitFor(t, "every Limiter back on Redis", func() bool {
		for _, l := range lims {
			if l.Stats().Fallback {
				return false
			}
		}
		return true
	})
	back := time.Since(killed)
	// Then a tick of each has registered every lease it holds.
	var renewed []int64
	for _, l := range lims {
		renewed = append(renewed, l.Stats().Renewals)
	}
	waitFor(t, "a tick of every Limiter on the new primary", func() bool {
		for i, l := range lims {
			if l.Stats().Renewals == renewed[i] {
				return false
			}
		}
		return true
	})
	smp.enter("after")
	time.Sleep(time.Second)

	var failed []error
	for _, tr := range trs {
		failed = append(failed, tr.end()...)
	}
	peaks := smp.end()
	var fallbacks, lost int64
	for _, l := range lims {
		st := l.Stats()
		fallbacks += st.Fallbacks
		lost += st.Lost
	}
	t.Logf("promoted %v after the kill; every Limiter back on Redis after %v; fallbacks %d, leases lost %d",
		promoted.Round(time.Millisecond), back.Round(time.Millisecond), fallbacks, lost)
	t.Logf("most calls on one endpoint (cap %d): before %d, during the switch %d, after %d",
		mcc, peaks["before"], peaks["switch"], peaks["after"])
	assert.Empty(t, failed, "calls failed during the failover")
	assert.LessOrEqual(t, peaks["before"], int64(mcc))
	assert.LessOrEqual(t, peaks["after"], int64(mcc), "the caps do not hold again after the switch")
	// During the switch: the calls admitted before it plus each replica's
	// share under FailStatic (the documented bound, 2 × cap + replicas − 1).
	assert.LessOrEqual(t, peaks["switch"], int64(2*mcc+replicas-1))
	assert.Less(t, back, 10*time.Second)
}

// On a Redis Cluster of three primaries every key of a pool hashes to one
// slot (the {pool} hash tag), so the scripts run; caps, grants and health
// work across replicas as on one node.
func TestClusterSharesCapsAndHealth(t *testing.T) {
	if testing.Short() {
		t.Skip("a Redis Cluster: skipped with -short")
	}
	cl := redistest.StartCluster(t, 3)
	const mcc = 4
	srvs, eps := highCapServers(t, 2, mcc, 20*time.Millisecond)
	var reps []*replica
	var trs []*traffic
	for range 2 {
		// Long timeouts: a loaded host is not the outage this is about.
		rdb := cl.Client(t, func(o *redis.ClusterOptions) { o.ReadTimeout, o.WriteTimeout = 3*time.Second, 3*time.Second })
		r := newReplica(t, rdb, eps, WithTimeout(3*time.Second))
		reps = append(reps, r)
		trs = append(trs, startCalls(t, r.c, 8))
	}
	smp := sample(srvs, "run")
	ctx := testCtx(t)
	_, err := srvs[1].WaitFor(ctx, func(st amltest.Stats) bool { return st.Scored > 200 })
	require.NoError(t, err)

	// Health: a cool-down one replica reports reaches the other.
	c2 := newCollector()
	hl := reps[1].lim.ShareHealth(nil, c2.apply)
	defer hl.Close()
	id := endpointID(eps[0].URL)
	hl0 := reps[0].lim.ShareHealth(nil, func(amlpool.HealthEvent) {})
	defer hl0.Close()
	hl0.Report(amlpool.HealthEvent{ID: id, Kind: amlpool.HealthCoolDown, For: time.Second})
	for {
		ev := c2.next(t)
		if ev.ID == id && ev.Kind == amlpool.HealthCoolDown {
			break
		}
	}

	for _, tr := range trs {
		assert.Empty(t, tr.end())
	}
	assert.LessOrEqual(t, smp.end()["run"], int64(mcc), "over the cap on a Cluster")
	var grants, errs int64
	for _, r := range reps {
		st := r.lim.Stats()
		assert.Zero(t, st.Fallbacks)
		grants += st.Grants
		errs += st.Errors
	}
	t.Logf("grants between the replicas: %d; Redis errors: %d", grants, errs)

	// Every key the pool wrote is in one slot.
	cc := cl.Client(t)
	slots := map[int64]bool{}
	err = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		for _, k := range n.Keys(ctx, "amlpool:*").Val() {
			slots[n.ClusterKeySlot(ctx, k).Val()] = true
		}
		return nil
	})
	require.NoError(t, err)
	assert.Len(t, slots, 1, "the pool's keys span slots")
}
