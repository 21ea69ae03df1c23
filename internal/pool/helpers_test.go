package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
)

// testAuth returns the Auth of keys, each sent as a bearer token.
func testAuth(keys ...string) *Auth {
	headers := make([]http.Header, len(keys))
	for i, k := range keys {
		headers[i] = http.Header{"Authorization": {"Bearer " + k}}
	}
	return NewAuth(keys, headers)
}

// testSpec describes the endpoint name of cap max at a URL of its own, with
// keys (one key, "k", when none are given).
func testSpec(name string, max int, keys ...string) Spec {
	return testSpecAt(name, "https://h/workspaces/w/services/"+name+"/execute", max, keys...)
}

// testSpecAt is testSpec at the URL raw.
func testSpecAt(name, raw string, max int, keys ...string) Spec {
	u, err := url.Parse(raw)
	if err != nil {
		panic(err)
	}
	if len(keys) == 0 {
		keys = []string{"k"}
	}
	return Spec{Name: name, URL: u, Max: max, Auth: testAuth(keys...)}
}

// testSpecs describes endpoints e0, e1 ... with the given caps.
func testSpecs(caps ...int) []Spec {
	specs := make([]Spec, len(caps))
	for i, n := range caps {
		specs[i] = testSpec(fmt.Sprint("e", i), n)
	}
	return specs
}

// equalCaps returns n caps of c.
func equalCaps(n, c int) []int {
	caps := make([]int, n)
	for i := range caps {
		caps[i] = c
	}
	return caps
}

// lockedRand returns a deterministic random source that is safe for
// concurrent use.
func lockedRand(seed1, seed2 uint64) func() uint64 {
	r := rand.New(rand.NewPCG(seed1, seed2))
	var mu sync.Mutex
	return func() uint64 { mu.Lock(); defer mu.Unlock(); return r.Uint64() }
}

// newTestPool returns a Pool over specs with cfg, on a fake clock and a
// seeded random source unless cfg names its own. Run is not started.
func newTestPool(t testing.TB, cfg Config, specs []Spec) (*Pool, *clock.Fake) {
	t.Helper()
	clk, _ := cfg.Clock.(*clock.Fake)
	if cfg.Clock == nil {
		clk = clock.NewFake()
		cfg.Clock = clk
	}
	if cfg.Rand == nil {
		cfg.Rand = lockedRand(1, 2)
	}
	p := New(cfg, specs)
	t.Cleanup(p.Close)
	return p, clk
}

// testPool builds a pool over endpoints with the given caps: the default
// Picker (PickRandom), no ejection, a fake clock.
func testPool(t testing.TB, caps ...int) *Pool {
	t.Helper()
	p, _ := newTestPool(t, Config{}, testSpecs(caps...))
	return p
}

// startRun runs p.Run until the test ends.
func startRun(t *testing.T, p *Pool) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); p.Run() }()
	t.Cleanup(func() { p.Close(); <-done })
}

// inFlight returns the slots held on each live endpoint.
func inFlight(p *Pool) []int {
	eps := p.Set().Eps
	out := make([]int, len(eps))
	for i, e := range eps {
		out[i] = e.InFlight()
	}
	return out
}

// index returns e's index in p's Set, or -1.
func index(p *Pool, e *Endpoint) int {
	for i, o := range p.Set().Eps {
		if o == e {
			return i
		}
	}
	return -1
}

// acquire takes a slot without waiting; there must be one.
func acquire(t testing.TB, p *Pool) Slot {
	t.Helper()
	slot, err := p.Acquire(context.Background(), &Exclusion{}, 0)
	require.NoError(t, err)
	return slot
}

// release gives slot back after a successful attempt that took no time.
func release(p *Pool, slot Slot) Effects {
	return released(p, slot, &Report{Result: OK, Start: p.cfg.Clock.Now()})
}

// excluding returns an exclusion that avoids the endpoints of p's Set at
// the given indexes.
func excluding(p *Pool, idx ...int) *Exclusion {
	x := &Exclusion{On: true}
	for _, i := range idx {
		x.Tried.Add(p.Set().Eps[i])
	}
	return x
}

// queueN starts one waiting Acquire per ctx, each in line before the next
// starts, and returns the channels on which the index of each served call
// (it gives its slot back at once) or the error of each failed one arrive.
func queueN(t *testing.T, p *Pool, ctxs []context.Context) (order chan int, errs chan error) {
	t.Helper()
	queued := make(chan struct{})
	p.OnQueue = func() { queued <- struct{}{} }
	order = make(chan int, len(ctxs))
	errs = make(chan error, len(ctxs))
	for i, ctx := range ctxs {
		go func() {
			slot, err := p.Acquire(ctx, &Exclusion{}, -1)
			if err != nil {
				errs <- err
				return
			}
			order <- i
			release(p, slot)
		}()
		<-queued
	}
	return order, errs
}

// took takes a slot of e directly and reports whether it could.
func took(e *Endpoint) bool {
	_, ok := e.take()
	return ok
}

// released releases slot as r says and returns the Effects.
func released(p *Pool, slot Slot, r *Report) Effects {
	var fx Effects
	p.Release(slot, r, &fx)
	return fx
}
