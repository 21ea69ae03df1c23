package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
	"github.com/go-kit/kit/endpoint"
	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/lb"
	"github.com/hashicorp/go-retryablehttp"

	"github.com/amlpool/amlpool"
)

// A system is one way to send scoring calls to a set of endpoints: amlpool
// or what a user could assemble from a peer library instead.
type system struct {
	name  string
	about string // how it is set up, for the README
	new   func(s setup) (caller, error)
	// only, when set, names the one workload the system runs in: the
	// references each workload measures the others against.
	only string
}

// runsIn reports whether sys takes part in workload w.
func (sys system) runsIn(w workload) bool { return sys.only == "" || sys.only == w.name }

// isBaseline reports whether sys is the overhead workload's baseline.
func (sys system) isBaseline() bool { return sys.only == "overhead" }

// setup is what a system is built from.
type setup struct {
	eps     []amlpool.Endpoint
	callers int // goroutines that will call it at once
}

// caller sends one scoring call and reports whether it succeeded.
type caller interface {
	do(ctx context.Context, body []byte) error
	close()
}

// Knobs shared by the peers. Their own defaults are kept everywhere else.
const (
	peerAttempts    = 3                // failsafe-go's default: 2 retries = 3 attempts; go-kit set to match
	bulkheadMaxWait = time.Second      // failsafe-go's default 0 fails at once; a user who queues sets this
	gokitTimeout    = 10 * time.Second // lb.Retry needs one overall timeout
)

func systems() []system {
	return []system{
		{
			name:  "amlpool Random (default)",
			about: "`amlpool.New(eps)`: a slot gate per endpoint, random over free slots, FIFO wait, its default retries and ejection",
			new:   newAmlpool(nil),
		},
		{
			name:  "amlpool LeastLoaded",
			about: "`amlpool.New(eps, amlpool.WithBalancer(amlpool.LeastLoaded()))`: as the default, but P2C on in-flight ÷ limit",
			new:   newAmlpool(amlpool.LeastLoaded),
		},
		{
			name:  "amlpool LatencyAware",
			about: "`amlpool.New(eps, amlpool.WithBalancer(amlpool.LatencyAware()))`: as the default, but P2C on Peak-EWMA latency × load",
			new:   newAmlpool(amlpool.LatencyAware),
		},
		{
			name:  "failsafe-go",
			about: fmt.Sprintf("`retrypolicy.NewWithDefaults()` (%d attempts, no delay) around a random endpoint's `bulkhead.NewBuilder(MCC).WithMaxWaitTime(%v)`", peerAttempts, bulkheadMaxWait),
			new:   newFailsafe,
		},
		{
			name:  "go-retryablehttp",
			about: "`retryablehttp.NewClient()` defaults (4 retries, 1 s–30 s backoff without jitter) to a random endpoint; retries go to the same endpoint",
			new:   newRetryable,
		},
		{
			name:  "go-kit lb",
			about: fmt.Sprintf("`lb.Retry(%d, %v, lb.NewRandom(…))`: a new random endpoint per attempt, no backoff; NewRandom behind a mutex, as it is not safe for concurrent use", peerAttempts, gokitTimeout),
			new:   newGokit,
		},
		{
			name:  "ideal pool",
			about: "reference, not a library: every slot a token in one channel; a call takes any token, calls its endpoint, puts it back. No code is leaner, so its goodput is what these fakes allow",
			new:   newIdeal,
			only:  "saturation",
		},
		{
			name:  "naive",
			about: "a random endpoint per call, no limiter, no retry",
			new:   newNaive,
		},
		{
			name:  "net/http bare",
			about: "an `http.Client` POST loop to the one endpoint: the overhead workload's baseline",
			new:   newBare,
			only:  "overhead",
		},
	}
}

// newTransport returns the HTTP transport every peer uses: the same
// keep-alive room amlpool gives itself, so the comparison is of the libraries
// and not of connection churn.
func newTransport(s setup) *http.Transport {
	slots := 0
	for _, ep := range s.eps {
		slots += ep.MaxConcurrentCalls
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = max(slots, s.callers, 100)
	t.MaxIdleConnsPerHost = t.MaxIdleConns
	return t
}

// statusError is a non-2xx reply.
type statusError int

func (e statusError) Error() string { return fmt.Sprintf("HTTP %d", int(e)) }

// post makes one scoring call the way a user of a peer library would: one
// POST with the endpoint's key, the whole reply read.
func post(ctx context.Context, hc *http.Client, ep *amlpool.Endpoint, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	setHeaders(req.Header, ep)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	return readReply(resp)
}

func setHeaders(h http.Header, ep *amlpool.Endpoint) {
	h.Set("Authorization", "Bearer "+ep.APIKey)
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json")
}

func readReply(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, statusError(resp.StatusCode)
	}
	return data, nil
}

// amlpool, with the balancer b (nil: the default).

type amlpoolCaller struct{ c *amlpool.Client }

func newAmlpool(b func() amlpool.Balancer) func(setup) (caller, error) {
	return func(s setup) (caller, error) {
		var opts []amlpool.Option
		if b != nil {
			opts = append(opts, amlpool.WithBalancer(b()))
		}
		c, err := amlpool.New(s.eps, opts...)
		if err != nil {
			return nil, err
		}
		return amlpoolCaller{c}, nil
	}
}

func (a amlpoolCaller) do(ctx context.Context, body []byte) error {
	_, err := a.c.Do(ctx, body)
	return err
}

func (a amlpoolCaller) close() { a.c.Close() }

// naive: a random endpoint, no limiter, no retry.

type naiveCaller struct {
	hc  *http.Client
	eps []amlpool.Endpoint
}

func newNaive(s setup) (caller, error) {
	return &naiveCaller{hc: &http.Client{Transport: newTransport(s)}, eps: s.eps}, nil
}

func (n *naiveCaller) do(ctx context.Context, body []byte) error {
	_, err := post(ctx, n.hc, &n.eps[rand.IntN(len(n.eps))], body)
	return err
}

func (n *naiveCaller) close() { n.hc.CloseIdleConnections() }

// bare: net/http to the first endpoint, nothing else.

type bareCaller struct {
	hc *http.Client
	ep amlpool.Endpoint
}

func newBare(s setup) (caller, error) {
	return &bareCaller{hc: &http.Client{Transport: newTransport(s)}, ep: s.eps[0]}, nil
}

func (b *bareCaller) do(ctx context.Context, body []byte) error {
	_, err := post(ctx, b.hc, &b.ep, body)
	return err
}

func (b *bareCaller) close() { b.hc.CloseIdleConnections() }

// ideal: one channel holding a token per slot.

type idealCaller struct {
	hc     *http.Client
	eps    []amlpool.Endpoint
	tokens chan int // endpoint index per free slot
}

func newIdeal(s setup) (caller, error) {
	slots := 0
	for _, ep := range s.eps {
		slots += ep.MaxConcurrentCalls
	}
	c := &idealCaller{hc: &http.Client{Transport: newTransport(s)}, eps: s.eps, tokens: make(chan int, slots)}
	for i, ep := range s.eps {
		for range ep.MaxConcurrentCalls {
			c.tokens <- i
		}
	}
	return c, nil
}

func (c *idealCaller) do(ctx context.Context, body []byte) error {
	var i int
	select {
	case i = <-c.tokens:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { c.tokens <- i }()
	_, err := post(ctx, c.hc, &c.eps[i], body)
	return err
}

func (c *idealCaller) close() { c.hc.CloseIdleConnections() }

// failsafe-go: a retry policy around a bulkhead per endpoint; each attempt
// goes to a random endpoint and waits at its bulkhead.

type failsafeCaller struct {
	hc        *http.Client
	eps       []amlpool.Endpoint
	retry     failsafe.Executor[[]byte]
	bulkheads []failsafe.Executor[[]byte]
}

func newFailsafe(s setup) (caller, error) {
	f := &failsafeCaller{
		hc:    &http.Client{Transport: newTransport(s)},
		eps:   s.eps,
		retry: failsafe.With(retrypolicy.NewWithDefaults[[]byte]()),
	}
	for _, ep := range s.eps {
		bh := bulkhead.NewBuilder[[]byte](uint(ep.MaxConcurrentCalls)).WithMaxWaitTime(bulkheadMaxWait).Build()
		f.bulkheads = append(f.bulkheads, failsafe.With(bh))
	}
	return f, nil
}

func (f *failsafeCaller) do(ctx context.Context, body []byte) error {
	_, err := f.retry.WithContext(ctx).Get(func() ([]byte, error) {
		i := rand.IntN(len(f.eps))
		return f.bulkheads[i].WithContext(ctx).Get(func() ([]byte, error) {
			return post(ctx, f.hc, &f.eps[i], body)
		})
	})
	return err
}

func (f *failsafeCaller) close() { f.hc.CloseIdleConnections() }

// go-retryablehttp: its client with default retries, to a random endpoint.

type retryableCaller struct {
	rc  *retryablehttp.Client
	eps []amlpool.Endpoint
}

func newRetryable(s setup) (caller, error) {
	rc := retryablehttp.NewClient()
	rc.HTTPClient = &http.Client{Transport: newTransport(s)}
	rc.Logger = nil // its default logs every attempt to stderr
	return &retryableCaller{rc: rc, eps: s.eps}, nil
}

func (r *retryableCaller) do(ctx context.Context, body []byte) error {
	ep := &r.eps[rand.IntN(len(r.eps))]
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodPost, ep.URL, body)
	if err != nil {
		return err
	}
	setHeaders(req.Header, ep)
	resp, err := r.rc.Do(req)
	if err != nil {
		return err
	}
	_, err = readReply(resp)
	return err
}

func (r *retryableCaller) close() { r.rc.HTTPClient.CloseIdleConnections() }

// go-kit: lb.Retry over lb.NewRandom; each attempt asks for a new endpoint.

type gokitCaller struct {
	hc *http.Client
	ep endpoint.Endpoint
}

func newGokit(s setup) (caller, error) {
	g := &gokitCaller{hc: &http.Client{Transport: newTransport(s)}}
	eps := make(sd.FixedEndpointer, len(s.eps))
	for i := range s.eps {
		ep := &s.eps[i]
		eps[i] = func(ctx context.Context, req any) (any, error) {
			return post(ctx, g.hc, ep, req.([]byte))
		}
	}
	bal := &lockedBalancer{b: lb.NewRandom(eps, time.Now().UnixNano())}
	g.ep = lb.Retry(peerAttempts, gokitTimeout, bal)
	return g, nil
}

func (g *gokitCaller) do(ctx context.Context, body []byte) error {
	_, err := g.ep(ctx, body)
	return err
}

func (g *gokitCaller) close() { g.hc.CloseIdleConnections() }

// lockedBalancer makes go-kit's random balancer safe for concurrent use:
// NewRandom calls an unlocked *rand.Rand, which races and can panic.
type lockedBalancer struct {
	mu sync.Mutex // guards b
	b  lb.Balancer
}

func (l *lockedBalancer) Endpoint() (endpoint.Endpoint, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Endpoint()
}
