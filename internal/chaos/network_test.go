package chaos

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// netScenario is one network fault, on every endpoint's proxy for a whole
// run, with the servers' replies shaped to meet it.
type netScenario struct {
	name   string
	toxics []toxic
	fault  func(r *rand.Rand) amltest.Fault // nil: plain replies
	// check asserts the fault did what it is for, from the calls' outcomes
	// and the replies broken off after their headers.
	check func(t *testing.T, outcomes map[string]int64, cut, reset int64)
}

// wideBody is a request whose reply is about 2.5 KB: long enough for a
// bandwidth limit or a data limit to cut it mid-body.
var wideBody = func() []byte {
	var rows []string
	for i := range 40 {
		rows = append(rows, fmt.Sprintf(`["%d","row %d of a request wide enough to be cut"]`, i, i))
	}
	return []byte(`{"Inputs":{"input1":{"ColumnNames":["x","y"],"Values":[` + strings.Join(rows, ",") + `]}},"GlobalParameters":{}}`)
}()

var netScenarios = []netScenario{
	{
		name:   "latency with jitter",
		toxics: []toxic{latencyToxic(12, 10, 1)},
		check: func(t *testing.T, o map[string]int64, _, _ int64) {
			assert.Equal(t, o["ok"]+o["ctx deadline"], total(o), "a delay can only make a call succeed late or end at its deadline")
		},
	},
	{
		name:   "bandwidth limit",
		toxics: []toxic{bandwidthToxic(32, 1)}, // KB/s: a reply takes about 100 ms
		check: func(t *testing.T, o map[string]int64, _, _ int64) {
			assert.Equal(t, o["ok"]+o["ctx deadline"], total(o), "a slow link can only make a call succeed late or end at its deadline")
		},
	},
	{
		// limit_data cuts each connection's first reply after 1 KB, and
		// the armed reset_peer toxic makes that an RST: the connection is
		// reset mid-body.
		name:   "reset_peer mid-body",
		toxics: []toxic{armedReset, limitDataToxic(1024, 1)},
		check: func(t *testing.T, o map[string]int64, _, reset int64) {
			assert.Positive(t, reset, "replies reset mid-body")
			assert.Zero(t, o["ok"], "calls answered in spite of the resets")
		},
	},
	{
		// The servers cut half their replies and close the connection; the
		// proxy holds the close back for 300 ms.
		name:   "slow_close",
		toxics: []toxic{slowCloseToxic(300, 1)},
		fault: func(r *rand.Rand) amltest.Fault {
			if r.IntN(2) == 0 {
				return amltest.Fault{Truncate: true}
			}
			return amltest.Fault{}
		},
		check: func(t *testing.T, o map[string]int64, cut, _ int64) {
			assert.Positive(t, cut+o["ctx deadline"], "replies cut, or calls whose deadline came before the late close")
		},
	},
	{
		name:   "timeout (black hole)",
		toxics: []toxic{blackHoleToxic(1)},
		check: func(t *testing.T, o map[string]int64, _, _ int64) {
			assert.Zero(t, o["ok"], "calls answered through a black hole")
			assert.Positive(t, o["ctx deadline"], "calls that ended at their deadline")
		},
	},
	{
		// Each connection carries 4 KB: its first reply, and part of the
		// second, then it closes (a FIN).
		name:   "limit_data",
		toxics: []toxic{limitDataToxic(4096, 1)},
		check: func(t *testing.T, _ map[string]int64, cut, reset int64) {
			assert.Positive(t, cut-reset, "replies closed mid-body")
		},
	},
}

// TestNetworkFaults runs many callers through each network fault in turn
// and checks the invariants: no slot held and nobody waiting, no goroutine
// of amlpool's left, at most the cap in flight on the wire (and at each
// server while no call gave up on its deadline), every error typed and free
// of keys, every call back by its deadline plus a tick (see checkRun for the
// wall-clock bound); and that the fault did what it is for.
func TestNetworkFaults(t *testing.T) {
	seed := *flagSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -chaos.seed=%d)", seed, seed)
	d := *flagDuration
	if d == 0 {
		d = 700 * time.Millisecond
	}
	for _, sc := range netScenarios {
		t.Run(sc.name, func(t *testing.T) {
			before := goleak.IgnoreCurrent()
			runNetScenario(t, sc, d, seed)
			require.NoError(t, goleak.Find(before, ignoreToxiproxy, ignoreToxiproxyWriter), "goroutines left after the run")
		})
	}
}

// total is the number of calls in outcomes.
func total(outcomes map[string]int64) int64 {
	var n int64
	for _, v := range outcomes {
		n += v
	}
	return n
}

func runNetScenario(t *testing.T, sc netScenario, d time.Duration, seed uint64) {
	caps := []int{2, 3, 5}
	tl := &tally{outcomes: map[string]int64{}}
	servers := make([]*amltest.Server, len(caps))
	eps := make([]amlpool.Endpoint, len(caps))
	var ordinal atomic.Uint64
	for i, mcc := range caps {
		cfg := amltest.Config{Name: fmt.Sprintf("ep%d", i), MaxConcurrentCalls: mcc}
		if sc.fault != nil {
			cfg.Fault = func(int64) amltest.Fault {
				return sc.fault(rand.New(rand.NewPCG(seed, ordinal.Add(1))))
			}
		}
		servers[i] = amltest.NewServer(cfg)
		defer servers[i].Close()
		p := newNetProxy(t, fmt.Sprintf("ep%d", i), hostOf(servers[i].URL()))
		defer p.close()
		for _, tx := range sc.toxics {
			require.NoError(t, p.add(tx))
		}
		eps[i] = servers[i].Endpoint()
		eps[i].URL = p.via(t, eps[i].URL)
		tl.keys = append(tl.keys, eps[i].APIKey)
	}
	wire := newWireWitness()
	defer wire.base.CloseIdleConnections()
	c, err := amlpool.New(eps, amlpool.WithHTTPClient(&http.Client{Transport: wire}))
	require.NoError(t, err)
	defer c.Close()
	stopProbe := startProbe(tl)

	// Callers: deadlines of 50 to 400 ms, never cancelled early, so that
	// no request is abandoned on its way to its server (see netKinds).
	end := time.Now().Add(d)
	var callers sync.WaitGroup
	for g := range 16 {
		callers.Go(func() {
			r := rand.New(rand.NewPCG(seed, 1<<43|uint64(g)))
			for time.Now().Before(end) {
				timeout := millis(r, 50, 400)
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				ends := time.Now().Add(timeout)
				_, err := c.Do(ctx, wideBody)
				cancel()
				tl.record(kindOf(err), err, time.Since(ends), fmt.Sprintf("deadline %v", timeout))
			}
		})
	}
	callers.Wait()
	stopProbe()
	require.NoError(t, c.Close())
	tl.mu.Lock()
	outcomes := maps.Clone(tl.outcomes)
	tl.mu.Unlock()
	// The servers' count is a witness of the caps as long as no caller gave
	// up on a request that may still have been on its way to its server or
	// in it: the server notices a caller that went away only a moment later,
	// and meanwhile the freed slot may carry a new call. On a loaded machine
	// that moment is long enough to count, so once a call has ended at its
	// deadline the wire count alone is the witness, as in runChaos.
	checkRun(t, c, servers, eps, caps, wire, tl, outcomes["ctx deadline"] == 0)
	cut, reset := wire.cutMidBody.Load(), wire.resetMidBody.Load()
	t.Logf("calls %d: %v; replies broken off after their headers %d, by a reset %d", tl.calls.Load(), outcomes, cut, reset)
	sc.check(t, outcomes, cut, reset)
}
