package main

import (
	"cmp"
	"context"
	"fmt"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/amlpool/amlpool"
)

// A workload is a set of endpoints and a number of callers that call them in
// a closed loop: each caller sends its next call as soon as the last returns.
type workload struct {
	name      string
	about     string
	endpoints []endpointSpec
	callers   int
	// ceiling is the goodput, in calls/s, that no client can beat here.
	ceiling float64
	// overhead workloads run their endpoint in a child process, so that the
	// CPU time measured is the client's alone.
	overhead bool
}

// params are the command-line knobs the workloads are built from.
type params struct {
	endpoints       int
	mcc             int
	latency         time.Duration
	callers         int // saturation callers; 0: 1.5 × slots
	overheadCallers int
}

func workloads(p params) []workload {
	slots := p.endpoints * p.mcc
	perSlot := float64(time.Second) / float64(p.latency) // calls/s one slot serves
	uniform := func() []endpointSpec {
		eps := make([]endpointSpec, p.endpoints)
		for i := range eps {
			eps[i] = endpointSpec{mcc: p.mcc, latency: p.latency}
		}
		return eps
	}
	satCallers := p.callers
	if satCallers == 0 {
		satCallers = slots * 3 / 2
	}
	half := max(slots/2, 1)

	slow := uniform()
	slow[0].latency = 10 * p.latency
	down := uniform()
	down[0].down = true
	live := float64((p.endpoints - 1) * p.mcc)

	return []workload{
		{
			name: "saturation",
			about: fmt.Sprintf("%d endpoints × %d slots, %v latency, %d callers; ceiling = E × MCC × 1000 / latency_ms = %.0f calls/s",
				p.endpoints, p.mcc, p.latency, satCallers, float64(slots)*perSlot),
			endpoints: uniform(),
			callers:   satCallers,
			ceiling:   float64(slots) * perSlot,
		},
		{
			name: "heterogeneous",
			about: fmt.Sprintf("as saturation, but endpoint 1 takes %v; %d callers (half the slots); ceiling = every call on a fast endpoint at once = %.0f calls/s",
				10*p.latency, half, min(float64(half), live)*perSlot),
			endpoints: slow,
			callers:   half,
			ceiling:   min(float64(half), live) * perSlot,
		},
		{
			name: "failure",
			about: fmt.Sprintf("as saturation, but endpoint 1 refuses connections; %d callers; ceiling = the live endpoints' share = %.0f calls/s",
				half, min(float64(half), live)*perSlot),
			endpoints: down,
			callers:   half,
			ceiling:   min(float64(half), live) * perSlot,
		},
		{
			name: "overhead",
			about: fmt.Sprintf("1 endpoint, 0 ms latency; %d callers; CPU = user+sys of the client process per successful call",
				p.overheadCallers),
			endpoints: []endpointSpec{{mcc: amlpool.MaxMaxConcurrentCalls}},
			callers:   p.overheadCallers,
			overhead:  true,
		},
	}
}

// result is what one system did in one workload.
type result struct {
	ok, failed int64
	window     time.Duration
	throttled  int64           // 503 throttles the servers sent
	lats       []time.Duration // of successful calls
	cpu        time.Duration   // user+sys of this process over the window
	allocs     uint64          // heap objects this process allocated over the window
}

func (r result) goodput() float64 { return float64(r.ok) / r.window.Seconds() }

// add folds o, measured in another window, into r.
func (r *result) add(o result) {
	r.ok += o.ok
	r.failed += o.failed
	r.window += o.window
	r.throttled += o.throttled
	r.lats = append(r.lats, o.lats...)
	r.cpu += o.cpu
	r.allocs += o.allocs
}

// summary is a result as the tables show it.
type summary struct {
	goodput    float64 // successful calls/s
	errRate    float64 // failed / all calls
	throttles  int64
	p50, p99   time.Duration
	cpuPerCall time.Duration // per successful call
	allocs     float64       // heap allocations per successful call
}

func (r result) summary() summary {
	slices.Sort(r.lats)
	s := summary{goodput: r.goodput(), throttles: r.throttled, p50: quantile(r.lats, 0.50), p99: quantile(r.lats, 0.99)}
	if n := r.ok + r.failed; n > 0 {
		s.errRate = float64(r.failed) / float64(n)
	}
	if r.ok > 0 {
		s.cpuPerCall = r.cpu / time.Duration(r.ok)
		s.allocs = float64(r.allocs) / float64(r.ok)
	}
	return s
}

// timing bounds one run.
type timing struct {
	warmup, window time.Duration
}

// body is the scoring request every call sends.
var body = []byte(`{"Inputs":{"input1":{"ColumnNames":["age","workclass","education"],` +
	`"Values":[["39","State-gov","Bachelors"]]}},"GlobalParameters":{}}`)

// startEndpoints starts w's endpoints with launch.
func startEndpoints(w workload, launch launcher) (*endpoints, error) {
	e, err := launch(w.endpoints)
	if err != nil {
		return nil, err
	}
	if w.overhead {
		// The endpoint serves up to 200 at once; clients get the default
		// cap, which the callers never reach.
		e.eps[0].MaxConcurrentCalls = amlpool.DefaultMaxConcurrentCalls
	}
	return e, nil
}

// runOne starts w's endpoints, builds sys on them and drives it.
func runOne(ctx context.Context, w workload, sys system, t timing, launch launcher) (result, error) {
	e, err := startEndpoints(w, launch)
	if err != nil {
		return result{}, err
	}
	defer e.close()
	c, err := sys.new(setup{eps: e.eps, callers: w.callers})
	if err != nil {
		return result{}, fmt.Errorf("%s: %w", sys.name, err)
	}
	defer c.close()
	return drive(ctx, c, w.callers, t, e.throttled)
}

// overheadSlice is how long each system runs at a time in an interleaved
// measurement.
const overheadSlice = 200 * time.Millisecond

// runInterleaved measures syss on one set of w's endpoints, taking turns in
// short slices until each has run for runs × t.window, and adds up each
// one's slices. CPU per call differs by a few percent between systems, less
// than the machine's load drifts in a second; turns this short make the
// drift fall on every system alike.
func runInterleaved(ctx context.Context, w workload, syss []system, t timing, runs int, launch launcher) ([]result, error) {
	e, err := startEndpoints(w, launch)
	if err != nil {
		return nil, err
	}
	defer e.close()
	cs := make([]caller, len(syss))
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.close()
			}
		}
	}()
	for i, sys := range syss {
		if cs[i], err = sys.new(setup{eps: e.eps, callers: w.callers}); err != nil {
			return nil, fmt.Errorf("%s: %w", sys.name, err)
		}
	}
	total := t.window * time.Duration(runs)
	n := max(int((total+overheadSlice/2)/overheadSlice), 1)
	rs := make([]result, len(syss))
	for k := range n {
		for i, c := range cs {
			st := timing{window: total / time.Duration(n)}
			if k == 0 {
				st.warmup = t.warmup
			}
			r, err := drive(ctx, c, w.callers, st, e.throttled)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", syss[i].name, err)
			}
			rs[i].add(r)
		}
	}
	return rs, nil
}

// drive runs callers goroutines in a closed loop on c for t.warmup, then
// measures for t.window. Calls that end outside the window are not counted.
func drive(ctx context.Context, c caller, callers int, t timing, throttled func() (int64, error)) (result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		measuring atomic.Bool
		wg        sync.WaitGroup
		mu        sync.Mutex // guards lats, ok, failed
		lats      []time.Duration
		ok        int64
		failed    int64
	)
	for range callers {
		wg.Go(func() {
			var (
				mine      = make([]time.Duration, 0, 1024)
				nok, nerr int64
			)
			for ctx.Err() == nil {
				start := time.Now()
				err := c.do(ctx, body)
				d := time.Since(start)
				if !measuring.Load() || ctx.Err() != nil {
					continue
				}
				if err != nil {
					nerr++
					continue
				}
				nok++
				mine = append(mine, d)
			}
			mu.Lock()
			lats = append(lats, mine...)
			ok += nok
			failed += nerr
			mu.Unlock()
		})
	}

	if !sleep(ctx, t.warmup) {
		cancel()
		wg.Wait()
		return result{}, ctx.Err()
	}
	th0, err0 := throttled()
	cpu0, al0 := cpuTime(), heapAllocs()
	start := time.Now()
	measuring.Store(true)
	sleep(ctx, t.window)
	measuring.Store(false)
	window := time.Since(start)
	cpu1, al1 := cpuTime(), heapAllocs()
	th1, err1 := throttled()
	cancel()
	wg.Wait()
	if err := cmp.Or(err0, err1); err != nil {
		return result{}, err
	}

	return result{
		ok:        ok,
		failed:    failed,
		window:    window,
		throttled: th1 - th0,
		lats:      lats,
		cpu:       cpu1 - cpu0,
		allocs:    al1 - al0,
	}, nil
}

// sleep waits for d or until ctx ends, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// heapAllocs returns how many heap objects this process has allocated.
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// cpuTime returns the user+sys CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
