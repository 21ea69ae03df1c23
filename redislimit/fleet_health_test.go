package redislimit

import (
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/internal/redistest"
)

// Health across OS processes: each worker its own Client and Limiter, the
// endpoints in this process as the witness, one real redis-server.

// noHealthEnv runs these tests with sharing off, to watch them fail:
//
//	AMLPOOL_FLEET_NO_HEALTH=1 go test -run TestFleetShares -v ./redislimit
const noHealthEnv = "AMLPOOL_FLEET_NO_HEALTH"

// witness is an endpoint that records when it last admitted a call and
// can be switched to reset every call it admits (a dead backend).
type witness struct {
	*amltest.Server
	last  atomic.Int64 // unix ns of the last admitted call
	dead  atomic.Bool
	reset atomic.Int64 // calls reset while dead
}

func newWitness(t *testing.T, name string, mcc int, latency time.Duration) *witness {
	w := &witness{}
	w.Server = amltest.NewServer(amltest.Config{Name: name, MaxConcurrentCalls: mcc, Latency: latency,
		Fault: func(int64) amltest.Fault {
			w.last.Store(time.Now().UnixNano())
			if w.dead.Load() {
				w.reset.Add(1)
				return amltest.Fault{Reset: true}
			}
			return amltest.Fault{}
		}})
	t.Cleanup(w.Close)
	return w
}

// fleetOf starts procs workers running cfg against srvs and returns them
// and when they start calling.
func fleetOf(t *testing.T, procs int, cfg workerConfig, srvs ...*witness) ([]*worker, time.Time) {
	t.Helper()
	cfg.NoHealth = os.Getenv(noHealthEnv) == "1"
	for _, s := range srvs {
		e := s.Endpoint()
		cfg.Endpoints = append(cfg.Endpoints, workerEndpoint{Name: e.Name, URL: e.URL, Key: e.APIKey, MCC: 8})
	}
	var ws []*worker
	for range procs {
		ws = append(ws, startWorker(t, cfg))
	}
	return ws, launch(t, ws)
}

// A Retry-After cool-down that one replica meets holds every replica back:
// an endpoint answers one call 503 with Retry-After: 5, and no call reaches
// it from any replica for the rest of the measured window. The time from
// that reply to the last call the endpoint admitted is logged; the unit
// tests bound it by one notification.
func TestFleetSharesACoolDown(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process run: skipped with -short")
	}
	rs := redistest.Start(t)
	const procs = 4
	a, b, c := newWitness(t, "ep0", 8, 20*time.Millisecond), newWitness(t, "ep1", 8, 20*time.Millisecond),
		newWitness(t, "ep2", 8, 20*time.Millisecond)
	ws, start := fleetOf(t, procs, workerConfig{Mode: "run", Redis: rs.Addr, Goroutines: 8,
		Run: 4 * time.Second, TTL: DefaultTTL, Timeout: time.Second}, a, b, c)

	time.Sleep(time.Until(start.Add(500 * time.Millisecond)))
	require.Positive(t, a.Stats().Scored, "the fleet is not calling ep0")
	a.Script(amltest.Throttle().WithRetryAfter(5 * time.Second))
	ctx := testCtx(t)
	_, err := a.WaitFor(ctx, func(s amltest.Stats) bool { return s.Faults > 0 })
	require.NoError(t, err)
	cooled := time.Now()
	before := a.Stats().Requests

	time.Sleep(time.Until(cooled.Add(time.Second)))
	quiet := a.Stats().Requests
	time.Sleep(time.Until(cooled.Add(2500 * time.Millisecond)))
	after := a.Stats().Requests
	lag := time.Duration(a.last.Load() - cooled.UnixNano())
	t.Logf("last call admitted by ep0 %v after its 503 was sent; %d calls reached it in the second after", lag.Round(time.Millisecond), quiet-before)
	assert.Equal(t, quiet, after, "replicas kept sending to an endpoint that asked every caller to wait 5 s")
	assert.Less(t, lag, time.Second, "news of the cool-down took a second or more")

	for i, w := range ws {
		r := w.result(t)
		assert.Zero(t, r.Errors, "process %d: %s", i, r.FirstError)
		assert.Positive(t, r.Calls)
	}
	for _, s := range []*witness{b, c} {
		assert.Zero(t, s.Stats().Throttled)
	}
}

// An endpoint that resets every call is ejected fleet-wide once the fleet
// has seen the ejection threshold of failures in a row, not once each
// replica has: fewer than threshold × replicas calls fail there, and every
// replica ejects it, some without having seen the threshold themselves.
// (That one replica probes, not all, is proven without processes:
// TestHealthEjectionHasOneOwner and internal/pool's remote tests; the later
// resets logged here are mostly its probes.)
func TestFleetSharesAnEjection(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process run: skipped with -short")
	}
	rs := redistest.Start(t)
	const (
		procs      = 5
		ejectAfter = 5
	)
	a, b, c := newWitness(t, "ep0", 8, 20*time.Millisecond), newWitness(t, "ep1", 8, 20*time.Millisecond),
		newWitness(t, "ep2", 8, 20*time.Millisecond)
	ws, start := fleetOf(t, procs, workerConfig{Mode: "run", Redis: rs.Addr, Goroutines: 6,
		Run: 2500 * time.Millisecond, TTL: DefaultTTL, Timeout: time.Second,
		EjectAfter: ejectAfter, EjectFor: 500 * time.Millisecond}, a, b, c)

	time.Sleep(time.Until(start.Add(500 * time.Millisecond)))
	require.Positive(t, a.Stats().Scored, "the fleet is not calling ep0")
	a.dead.Store(true)
	dead := time.Now()
	// Ejected everywhere well before the first ejection (0.4 to 0.6 s)
	// ends; what fails after this are probes: about 0.5 s and 1.5 s after.
	time.Sleep(time.Until(dead.Add(300 * time.Millisecond)))
	burst := a.reset.Load()

	var own []int64
	for i, w := range ws {
		r := w.result(t)
		assert.Zero(t, r.Errors, "process %d: %s", i, r.FirstError)
		ep := r.Client.Endpoints[0]
		require.Equal(t, "ep0", ep.Name)
		assert.True(t, ep.Ejected, "process %d still sends to the dead endpoint", i)
		own = append(own, ep.Errors)
	}
	t.Logf("calls the dead endpoint reset in the first 300 ms: %d, later (probes, and on a loaded host the end of that burst): %d; failures each replica saw there itself: %v",
		burst, a.reset.Load()-burst, own)
	assert.Less(t, burst, int64(ejectAfter*procs), "the fleet paid for the ejection once per replica")
	assert.Less(t, minOf(own), int64(ejectAfter), "every replica ejected on its own count")
}

func minOf(xs []int64) int64 {
	m := xs[0]
	for _, x := range xs[1:] {
		m = min(m, x)
	}
	return m
}
