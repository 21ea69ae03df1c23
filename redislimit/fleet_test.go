package redislimit

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/internal/redistest"
)

// The multi-process proof: the test binary runs itself again as several
// worker processes (TestMain hands over to runWorker when workerEnv is set),
// each with its own Client and Limiter, against amltest endpoints hosted by
// the parent test and one real redis-server. The endpoints are the witness.

const workerEnv = "AMLPOOL_FLEET_WORKER" // its value is the worker's JSON config

// workerConfig is what the parent tells a worker.
type workerConfig struct {
	// Mode "run": say "ready", wait for the parent's go (launch), then call
	// for Run; "hold": take Goroutines slots, say "holding", then block
	// for Run.
	Mode       string
	Redis      string
	Endpoints  []workerEndpoint
	Goroutines int
	Run        time.Duration
	Warmup     time.Duration // calls that end later than this after the go count in workerResult.Window
	TTL        time.Duration
	// Timeout bounds each Redis round trip. The steady-state proof uses 1 s,
	// not the 100 ms default: CI runs it beside other packages' race-enabled
	// tests on 2 cores, where Redis itself can miss a few hundred ms of CPU,
	// and that stall is not the outage this run is about (the fault tests
	// cover the fallback with the default).
	Timeout time.Duration
	// Health: NoHealth turns sharing off (WithoutHealth); EjectAfter and
	// EjectFor, when set, are the Client's WithEjection.
	NoHealth   bool
	EjectAfter int
	EjectFor   time.Duration
}

// workerEndpoint carries the key, which amlpool.Endpoint's JSON redacts.
type workerEndpoint struct {
	Name, URL, Key string
	MCC            int
}

// workerResult is a worker's last line on stdout.
type workerResult struct {
	Calls, Errors int64
	Window        int64 // calls that ended after Warmup and before Run
	FirstError    string
	Limiter       Stats
	Client        amlpool.Stats
	// MaxReplicas is the most replicas the Limiter counted at once while
	// calls ran (at the end, some may have left already).
	MaxReplicas int
}

var body = []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}},"GlobalParameters":{}}`)

// runWorker runs the worker and exits when this process is one.
func runWorker() bool {
	raw := os.Getenv(workerEnv)
	if raw == "" {
		return false
	}
	var cfg workerConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	if err := work(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

func work(cfg workerConfig) error {
	opts := redistest.Options(cfg.Redis)
	opts.ReadTimeout, opts.WriteTimeout = cfg.Timeout, cfg.Timeout
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	lopts := []Option{WithPool("fleet"), WithTTL(cfg.TTL), WithTimeout(cfg.Timeout), WithLogger(log)}
	if cfg.NoHealth {
		lopts = append(lopts, WithoutHealth())
	}
	lim, err := New(rdb, lopts...)
	if err != nil {
		return err
	}
	defer lim.Close()
	eps := make([]amlpool.Endpoint, len(cfg.Endpoints))
	for i, e := range cfg.Endpoints {
		eps[i] = amlpool.Endpoint{Name: e.Name, URL: e.URL, APIKey: e.Key, MaxConcurrentCalls: e.MCC}
	}
	copts := []amlpool.Option{amlpool.WithLimiter(lim)}
	if cfg.EjectAfter > 0 {
		copts = append(copts, amlpool.WithEjection(cfg.EjectAfter, cfg.EjectFor))
	}
	c, err := amlpool.New(eps, copts...)
	if err != nil {
		return err
	}
	defer c.Close()

	if cfg.Mode == "hold" {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Run)
		defer cancel()
		for range cfg.Goroutines {
			go func() { _, _ = c.Do(ctx, body) }()
		}
		for lim.Stats().Held < cfg.Goroutines {
			time.Sleep(time.Millisecond)
		}
		fmt.Println("holding")
		<-ctx.Done()
		return nil
	}

	// Every worker is ready before any starts: a loaded host can take
	// seconds to start a process.
	fmt.Println("ready")
	var startNs int64
	if _, err := fmt.Fscanf(os.Stdin, "go %d\n", &startNs); err != nil {
		return fmt.Errorf("no go from the parent: %w", err)
	}
	start := time.Unix(0, startNs)
	// ctx ends the run: no call starts after it. The calls themselves run
	// on callCtx, so that those in flight then end as the server answers.
	// Were they cancelled, their slots would go back at once while the
	// server still counted them for a moment, and a process whose clock
	// fired a little later could fill them meanwhile: an over-cap made by
	// the test's own end, not by the fleet's sharing.
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(cfg.Run))
	defer cancel()
	callCtx, callCancel := context.WithTimeout(context.Background(), cfg.Run+time.Minute)
	defer callCancel()
	measure := start.Add(cfg.Warmup)
	time.Sleep(time.Until(start))
	var res workerResult
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			n := lim.Stats().Replicas
			mu.Lock()
			res.MaxReplicas = max(res.MaxReplicas, n)
			mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	for range cfg.Goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				_, err := c.Do(callCtx, body)
				mu.Lock()
				switch {
				case err == nil:
					res.Calls++
					if now := time.Now(); now.After(measure) && now.Before(start.Add(cfg.Run)) {
						res.Window++
					}
				default:
					res.Errors++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Limiter = lim.Stats()
	res.Client = c.Stats()
	return json.NewEncoder(os.Stdout).Encode(res)
}

// worker is one started worker process.
type worker struct {
	cmd    *exec.Cmd
	out    *bufio.Scanner
	in     io.WriteCloser
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

func startWorker(t testing.TB, cfg workerConfig) *worker {
	t.Helper()
	raw, err := json.Marshal(cfg)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), workerEnv+"="+string(raw))
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	w := &worker{cmd: cmd, out: bufio.NewScanner(stdout), in: stdin, stderr: &lockedBuffer{}}
	cmd.Stderr = w.stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return w
}

// launch waits until every worker of mode "run" is ready, then starts them
// all at once, shortly after, and returns when they start.
func launch(t testing.TB, ws []*worker) time.Time {
	t.Helper()
	for i, w := range ws {
		ready := make(chan bool, 1)
		go func() { ready <- w.out.Scan() && w.out.Text() == "ready" }()
		select {
		case ok := <-ready:
			require.True(t, ok, "worker %d did not get ready: %s", i, w.stderr.String())
		case <-time.After(time.Minute):
			t.Fatalf("worker %d did not get ready within a minute: %s", i, w.stderr.String())
		}
	}
	start := time.Now().Add(100 * time.Millisecond)
	for _, w := range ws {
		_, err := fmt.Fprintf(w.in, "go %d\n", start.UnixNano())
		require.NoError(t, err)
	}
	return start
}

// result waits for the worker to exit and returns its report.
func (w *worker) result(t testing.TB) workerResult {
	t.Helper()
	var last string
	for w.out.Scan() {
		last = w.out.Text()
	}
	err := w.cmd.Wait()
	require.NoError(t, err, "worker failed: %s", w.stderr.String())
	var res workerResult
	require.NoError(t, json.Unmarshal([]byte(last), &res), "worker said %q; stderr: %s", last, w.stderr.String())
	return res
}

func fleetEndpoints(t testing.TB, latency time.Duration, mccs ...int) ([]*amltest.Server, []workerEndpoint) {
	var srvs []*amltest.Server
	var eps []workerEndpoint
	for i, n := range mccs {
		s := amltest.NewServer(amltest.Config{Name: "ep" + strconv.Itoa(i), MaxConcurrentCalls: n, Latency: latency})
		t.Cleanup(s.Close)
		e := s.Endpoint()
		srvs = append(srvs, s)
		eps = append(eps, workerEndpoint{Name: e.Name, URL: e.URL, Key: e.APIKey, MCC: n})
	}
	return srvs, eps
}

// TestFleetSharesCapsAcrossProcesses: K processes, each offering far more
// calls than the caps, never put more than an endpoint's cap in flight,
// keep it busy, and are never throttled.
func TestFleetSharesCapsAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process run: skipped with -short")
	}
	rs := redistest.Start(t)
	const (
		procs      = 4
		goroutines = 12 // per process: 48 in all, well past the fleet's 18 slots
		latency    = 400 * time.Millisecond
		warmup     = 500 * time.Millisecond
		window     = 4 * time.Second // ten calls per slot
	)
	mccs := []int{4, 6, 8}
	srvs, eps := fleetEndpoints(t, latency, mccs...)
	cfg := workerConfig{Mode: "run", Redis: rs.Addr, Endpoints: eps, Goroutines: goroutines,
		Run: warmup + window + warmup, TTL: DefaultTTL, Timeout: time.Second}
	var ws []*worker
	for range procs {
		ws = append(ws, startWorker(t, cfg))
	}
	start := launch(t, ws)

	// Utilization as the endpoints see it: calls in their handlers, sampled
	// through the window, over the caps.
	time.Sleep(time.Until(start.Add(warmup)))
	var samples, busy int64
	for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(time.Millisecond) {
		for _, s := range srvs {
			busy += s.Stats().InFlight
		}
		samples++
	}

	var results []workerResult
	for _, w := range ws {
		results = append(results, w.result(t))
	}

	capacity := 0
	for i, s := range srvs {
		st := s.Stats()
		assert.LessOrEqual(t, st.PeakInFlight, int64(mccs[i]), "endpoint %d: server saw more than its cap in flight", i)
		assert.Zero(t, st.Throttled, "endpoint %d throttled", i)
		capacity += mccs[i]
	}
	util := float64(busy) / float64(samples) / float64(capacity)
	t.Logf("utilization %.1f%% of %d slots (%d samples)", 100*util, capacity, samples)
	assert.GreaterOrEqual(t, util, 0.90, "the fleet left slots idle")
	for i, r := range results {
		t.Logf("process %d: %d calls, limiter %+v, client %s", i, r.Calls, r.Limiter, attemptCounts(r.Client))
		assert.Positive(t, r.Calls, "process %d starved", i)
		assert.Zero(t, r.Errors, "process %d: %s", i, r.FirstError)
		assert.Zero(t, r.Limiter.Lost, "process %d lost leases", i)
		assert.Zero(t, r.Limiter.Fallbacks, "process %d fell back: %s", i, ws[i].stderr.String())
		assert.Equal(t, procs, r.MaxReplicas)
	}
	// Every process closed its Limiter: nothing is left in Redis but their
	// goodbyes, each of which expires.
	rdb := rs.Client(t)
	keys, err := rdb.Keys(context.Background(), "amlpool:*").Result()
	require.NoError(t, err)
	for _, k := range keys {
		assert.Contains(t, k, ":done:", "a key left after every process closed")
		assert.Equal(t, []string{"bye"}, rdb.ZRange(context.Background(), k, 0, -1).Val())
		assert.Positive(t, rdb.PTTL(context.Background(), k).Val())
	}
}

// attemptCounts sums up a process's attempts per endpoint, for a failure's
// log: which process drew a throttle, and whether any attempt was cut short.
func attemptCounts(st amlpool.Stats) string {
	var b strings.Builder
	for _, e := range st.Endpoints {
		fmt.Fprintf(&b, "[%s: %d attempts, %d errors, %d throttles, %d cancelled] ", e.Name, e.Calls, e.Errors, e.Throttles, e.Cancelled)
	}
	return b.String()
}

// TestFleetKilledProcessSlotsReturnWithinTTL: a process killed with SIGKILL
// while holding every slot gives them back within the TTL plus a renewal
// tick, and no key outlives its leases.
func TestFleetKilledProcessSlotsReturnWithinTTL(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process run: skipped with -short")
	}
	rs := redistest.Start(t)
	const mcc = 5
	ttl := time.Second
	srvs, eps := fleetEndpoints(t, time.Minute, mcc) // calls that outlive the test
	w := startWorker(t, workerConfig{Mode: "hold", Redis: rs.Addr, Endpoints: eps, Goroutines: mcc,
		Run: time.Minute, TTL: ttl, Timeout: ttl / 2})
	require.True(t, w.out.Scan(), "worker never held its slots: %s", w.stderr.String())
	require.Equal(t, "holding", w.out.Text())

	rdb := rs.Client(t)
	ctx := context.Background()
	key := newKeyspace("fleet").endpoint(endpointID(eps[0].URL))
	require.EqualValues(t, mcc, rdb.ZCard(ctx, key).Val())

	// Another process finds the endpoint full.
	// Timeouts of half the TTL, here and in the worker: on a loaded CI host a
	// 100 ms timeout can trip the fallback, which is not what this test is
	// about.
	opts := redistest.Options(rs.Addr)
	opts.ReadTimeout, opts.WriteTimeout = ttl/2, ttl/2
	rdb = redis.NewClient(opts)
	defer rdb.Close()
	lim, err := New(rdb, WithPool("fleet"), WithTTL(ttl), WithTimeout(ttl/2))
	require.NoError(t, err)
	defer lim.Close()
	cand := []amlpool.LimitedEndpoint{{ID: endpointID(eps[0].URL), Name: "ep0", Limit: mcc}}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = lim.Acquire(short, cand)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)

	killed := time.Now()
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGKILL))
	_ = w.cmd.Wait()
	// The dead process renewed its leases at most one tick before it died.
	// A second of slack for a starved host; without expiry they would never
	// come back.
	deadline := killed.Add(ttl + ttl/3 + time.Second)
	var held []amlpool.Lease
	for len(held) < mcc {
		ctx, cancel := context.WithDeadline(ctx, deadline)
		ls, err := lim.Acquire(ctx, cand)
		cancel()
		require.NoError(t, err, "slot %d of the killed process did not come back within TTL + tick", len(held)+1)
		held = append(held, ls)
		if pttl := rdb.PTTL(context.Background(), key).Val(); pttl < 0 {
			t.Fatalf("lease set without a TTL: %v", pttl)
		}
	}
	t.Logf("all %d slots back %v after the kill (TTL %v)", mcc, time.Since(killed).Round(time.Millisecond), ttl)
	assert.Zero(t, srvs[0].Stats().Throttled)
	for _, ls := range held {
		ls.Release()
	}
	require.NoError(t, lim.Close())
	// What the dead process wrote besides leases (its heartbeat and limits)
	// expires too, and so does lim's goodbye: every key has a TTL, and all
	// are gone within three ticks.
	require.Eventually(t, func() bool {
		keys := rdb.Keys(ctx, "amlpool:*").Val()
		for _, k := range keys {
			if pttl := rdb.PTTL(ctx, k).Val(); pttl < 0 && rdb.Exists(ctx, k).Val() == 1 {
				t.Fatalf("immortal key %s", k)
			}
		}
		return len(keys) == 0
	}, ttl+ttl/2+time.Second, 10*time.Millisecond, "keys left after every process closed or died")
}

// endpointID is amlpool's LimitedEndpoint.ID for url, as documented there.
func endpointID(url string) string {
	sum := sha256.Sum256([]byte(url))
	return hex.EncodeToString(sum[:8])
}
