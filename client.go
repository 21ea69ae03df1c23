package amlpool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Client makes several endpoints look like one. It gives each endpoint as
// many slots as its MaxConcurrentCalls, sends each call to a free slot, waits
// in line when all are busy, and fails over when an endpoint is full.
//
// Client is safe for concurrent use by any number of goroutines. Build it
// with New and Close it when done.
type Client struct {
	cfg       config
	eps       []*endpoint
	pool      *pool
	http      *http.Client
	ownsHTTP  bool
	limiter   Limiter
	limitIDs  []LimitedEndpoint // per endpoint, for the Limiter
	health    *health
	budget    *retryBudget // nil without a retry budget
	observers []observer
	tel       *telemetry // metrics, traces and logs; nil when none is configured
	hedge     *hedger    // nil unless WithHedging or WithHedgingQuantile

	closeOnce sync.Once
	closed    atomic.Bool
	wg        sync.WaitGroup // background goroutines, stopped by Close
}

// observer hears of every attempt once its slot has been released. Endpoint
// health, adaptive limits and metrics plug in here.
type observer interface {
	attemptDone(o *outcome)
}

// outcome is what one attempt came to, and what the call does next.
type outcome struct {
	ep         *endpoint
	attempt    int   // 1 for a call's first attempt
	err        error // nil on success
	status     int   // HTTP status; 0 when no reply came
	start      time.Time
	latency    time.Duration
	throttled  bool          // the classifier said VerdictFull
	verdict    Verdict       // the classifier's verdict on err
	retryAfter time.Duration // the reply's delay hint, uncapped; 0 when none

	// Telemetry: filled by attempt from the call (and set by hedging).
	kind      outcomeKind   // success, throttled, client error, ... (see kindOf)
	reason    string        // for a retry, the retryReason of the attempt before
	hedge     bool          // an extra attempt racing one still in flight, not a retry
	abandoned bool          // a copy cancelled because the other one answered first; not a failure
	slotWait  time.Duration // how long the attempt waited for its slot (measured only with telemetry)
	span      trace.Span    // the attempt's span; nil without a TracerProvider

	// Health: set before the observers hear of the outcome.
	probe      bool // the attempt probed an endpoint whose ejection ended
	ejected    bool // its outcome ejected ep
	readmitted bool // its outcome readmitted ep

	// The call's decision after a failed attempt (decide).
	final bool          // no further attempt
	wait  time.Duration // the wait before the next attempt, when not final
	stop  error         // why a retryable error ends the call (CallError.Stop)

	newLimit int32 // the endpoint's limit, when this outcome moved it (adaptive.go); else 0
}

// retryReason names, for metrics, why a failed attempt was worth retrying:
// "throttled", "timeout", "transport" or the HTTP status.
func (o *outcome) retryReason() string {
	switch {
	case o.verdict == VerdictFull:
		return "throttled"
	case o.status != 0:
		return strconv.Itoa(o.status)
	case errors.Is(o.err, context.DeadlineExceeded):
		return "timeout"
	}
	return "transport"
}

// New returns a Client for endpoints. It validates every endpoint (see
// Endpoint) and option and returns a *ConfigError naming the first problem; it
// never panics on bad input. New starts no network activity.
func New(endpoints []Endpoint, opts ...Option) (*Client, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	eps, err := newEndpoints(endpoints, cfg.allowHTTP)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, eps: eps, limiter: cfg.limiter}
	c.pool = newPool(eps, cfg.balancer, cfg.rand, cfg.clock)
	c.health = newHealth(eps, c.pool, &c.cfg)
	c.pool.health = c.health
	if cfg.budget {
		c.budget = newRetryBudget(&c.cfg)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.health.run(c.pool.done)
	}()
	c.http, c.ownsHTTP = newHTTPClient(cfg.httpClient, int(c.pool.total))
	// The adaptive limit goes first so that later observers (metrics) see
	// the limit it set in outcome.newLimit.
	if cfg.adaptive {
		c.observers = append(c.observers, newAdaptive(c.pool))
	}
	c.observers = append(c.observers, latencyTracker{c.pool})
	if h := cfg.hedge; h != nil && h.byQuantile {
		w := newLatencyWindow(h.q)
		c.hedge = &hedger{window: w}
		c.observers = append(c.observers, latencyWindowObserver{c.pool, w})
	} else if h != nil {
		c.hedge = &hedger{delay: h.delay}
	}
	if c.tel, err = newTelemetry(&c.cfg, eps, c.pool); err != nil {
		return nil, err
	}
	if c.tel != nil {
		c.observers = append(c.observers, c.tel)
	}
	if c.limiter != nil {
		c.limitIDs = make([]LimitedEndpoint, len(eps))
		for i, ep := range eps {
			c.limitIDs[i] = LimitedEndpoint{ID: endpointID(ep.url), Name: ep.name, Limit: int(ep.max)}
		}
	}
	return c, nil
}

// Do sends body, a JSON scoring request, to one endpoint and returns the
// reply body of the first attempt that succeeds.
//
// Do blocks while every endpoint is full, in line with other waiting calls,
// for up to the max wait (WithMaxWait) or until ctx ends. A failed attempt is
// retried as its Verdict says (see Classify, WithClassifier): an endpoint
// that answers 503 RequestThrottled is full, not broken, and the call goes at
// once to another endpoint with a free slot; a transient failure is retried
// after a backoff (WithBackoff) on an endpoint the call has not tried. A call
// makes at most WithMaxAttempts attempts, within the retry budget
// (WithRetryBudget), and never starts a wait that would pass ctx's deadline.
//
// Errors: ctx's error when it ends first; ErrNoCapacity when the max wait
// passes; ErrClosed after Close; an *APIError for a non-2xx reply
// (errors.Is(err, ErrThrottled) for a throttle); ErrResponseTooLarge for a
// reply over WithMaxResponseBytes; ErrMalformedResponse for a 2xx reply that
// is not JSON or is the service's error body (Do checks that much of the
// reply, and no more: its shape is the caller's business); a transport error
// otherwise. A call that made several attempts, or stopped retrying for a reason of its
// own, returns a *CallError wrapping the last attempt's error and the reason.
func (c *Client) Do(ctx context.Context, body []byte) ([]byte, error) {
	data, _, err := c.do(ctx, "amlpool.Do", body)
	return data, err
}

// do is Do, also returning the name of the endpoint that answered. op names
// the call's span.
func (c *Client) do(ctx context.Context, op string, body []byte) ([]byte, string, error) {
	var cl call
	if c.tel == nil || c.tel.tracer == nil {
		return c.run(ctx, &cl, body)
	}
	ctx, span := c.tel.startCall(ctx, op)
	data, name, err := c.run(ctx, &cl, body)
	c.tel.endCall(span, &cl, name, err)
	return data, name, err
}

// run makes the attempts of one call.
func (c *Client) run(ctx context.Context, cl *call, body []byte) ([]byte, string, error) {
	if c.closed.Load() {
		return nil, "", ErrClosed
	}
	maxWait := time.Duration(-1)
	if c.cfg.maxWaitSet {
		maxWait = c.cfg.maxWait
	}
	for {
		if cl.attempts > 0 && c.closed.Load() {
			return nil, "", cl.result(ErrClosed)
		}
		// Avoid the endpoints tried so far while an untried one may take calls.
		cl.ex.on = cl.ntried > 0 && c.usableOutside(&cl.ex.tried)
		ep, lease, err := c.acquire(ctx, cl, maxWait)
		if err != nil {
			return nil, "", cl.result(err)
		}
		probe, ok := c.health.claim(ep.idx)
		if !ok {
			// Ejected or cooled down since it was picked: pick again.
			c.releaseSlot(ep, lease)
			continue
		}
		cl.started(ep)
		data, o := c.attemptHedged(ctx, cl, ep, lease, body, probe)
		if o.err == nil {
			return data, o.ep.name, nil // a hedge's endpoint, maybe
		}
		if o.final {
			return nil, ep.name, cl.result(o.stop)
		}
		if err := c.sleep(ctx, o.wait); err != nil {
			return nil, ep.name, cl.result(err)
		}
	}
}

// acquire takes a slot for one attempt and, with telemetry, records how long
// that took in cl.wait.
func (c *Client) acquire(ctx context.Context, cl *call, maxWait time.Duration) (*endpoint, Lease, error) {
	if c.tel == nil {
		return c.acquireSlot(ctx, cl, maxWait)
	}
	start := c.cfg.clock.Now()
	ep, lease, err := c.acquireSlot(ctx, cl, maxWait)
	cl.wait = c.cfg.clock.Now().Sub(start)
	c.tel.waited(cl.wait, err)
	return ep, lease, err
}

// acquireSlot takes a slot: one of ours, then, with a Limiter, one of the
// fleet's.
func (c *Client) acquireSlot(ctx context.Context, cl *call, maxWait time.Duration) (*endpoint, Lease, error) {
	var start time.Time
	if c.limiter != nil && maxWait > 0 {
		start = c.cfg.clock.Now()
	}
	ep, err := c.pool.acquire(ctx, &cl.ex, maxWait)
	if err != nil || c.limiter == nil {
		return ep, nil, err
	}
	// The max wait covers both waits: what the local one left is the
	// Limiter's.
	left := maxWait
	if maxWait > 0 {
		left -= c.cfg.clock.Now().Sub(start)
	}
	acquire := c.limiter.Acquire
	switch t, ok := c.limiter.(TryAcquirer); {
	case maxWait >= 0 && left <= 0 && ok:
		// Fail fast at the Limiter too: one try.
		acquire = func(ctx context.Context, cands []LimitedEndpoint) (Lease, error) {
			lease, err := t.TryAcquire(ctx, cands)
			if err == nil && lease == nil {
				err = ErrNoCapacity
			}
			return lease, err
		}
	case maxWait > 0:
		lctx, cancel := context.WithTimeout(ctx, left)
		defer cancel()
		ep, lease, err := c.acquireShared(lctx, cl, ep, acquire)
		if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			err = ErrNoCapacity
		}
		return ep, lease, err
	}
	return c.acquireShared(ctx, cl, ep, acquire)
}

// acquireShared asks the Limiter, through acquire, for a slot on ep or,
// failing that, on another endpoint this process has a free slot for; the
// local slot follows the Limiter's choice.
func (c *Client) acquireShared(ctx context.Context, cl *call, ep *endpoint, acquire func(context.Context, []LimitedEndpoint) (Lease, error)) (*endpoint, Lease, error) {
	cands := []LimitedEndpoint{c.limitIDs[ep.idx]}
	idx := []*endpoint{ep}
	for _, o := range c.eps {
		if o != ep && c.pool.usable(&cl.ex, o) && o.inFlight.Load() < o.limit.Load() {
			cands = append(cands, c.limitIDs[o.idx])
			idx = append(idx, o)
		}
	}
	lease, err := acquire(ctx, cands)
	if err != nil {
		c.pool.release(ep)
		return nil, nil, err
	}
	i := lease.Index()
	if i == 0 {
		return ep, lease, nil
	}
	if i < 0 || i >= len(idx) || !idx[i].take() {
		// Our own slot there went meanwhile: keep the one we hold and wait
		// for the Limiter's slot on it instead.
		lease.Release()
		lease, err = acquire(ctx, cands[:1])
		if err != nil {
			c.pool.release(ep)
			return nil, nil, err
		}
		return ep, lease, nil
	}
	c.pool.release(ep)
	return idx[i], lease, nil
}

// attempt sends one request on a slot already held and gives the slot back
// whatever happens. After a failure it classifies the error, updates the
// endpoint's health and decides what the call does next. Then it reports the
// outcome to the observers.
func (c *Client) attempt(ctx context.Context, cl *call, ep *endpoint, lease Lease, body []byte, probe bool) ([]byte, outcome) {
	o := outcome{ep: ep, attempt: cl.attempts, probe: probe, reason: cl.reason, slotWait: cl.wait}
	data := c.exchange(ctx, &o, lease, body)
	c.conclude(ctx, cl, &o)
	return data, o
}

// exchange is the part of an attempt that touches no call state, so that two
// copies of one attempt can run it at once (hedge.go): it sends the request
// on o.ep's slot, gives the slot back whatever happens, classifies a failure,
// and updates the endpoint's counters and health.
func (c *Client) exchange(ctx context.Context, o *outcome, lease Lease, body []byte) []byte {
	ep := o.ep
	if c.tel != nil {
		ctx = c.tel.startAttempt(ctx, o)
	}
	data := c.sendAndRelease(ctx, ep, lease, body, o)
	if o.err != nil {
		o.verdict = c.classify(ctx, o.err)
		o.throttled = o.verdict == VerdictFull
		o.abandoned = context.Cause(ctx) == errAbandoned
	}
	o.kind = kindOf(ctx, o)
	ep.calls.Add(1)
	switch o.kind {
	case kindSuccess, kindAbandoned:
	case kindCancelled:
		ep.cancelled.Add(1) // the caller gave up: no fault of the endpoint's
	default:
		ep.failures.Add(1)
		if o.throttled {
			ep.throttles.Add(1)
		}
	}
	c.health.observe(o, ctx.Err() != nil)
	return data
}

// conclude records a failed attempt in its call, decides what the call does
// next, and reports the outcome to the observers.
func (c *Client) conclude(ctx context.Context, cl *call, o *outcome) {
	if o.attempt == 1 && c.budget != nil {
		c.budget.deposit(o.start) // each call counts once, when it first sends
	}
	if o.err != nil {
		cl.failed(o)
		c.decide(ctx, cl, o)
		if c.tel != nil && !o.final {
			cl.reason = o.retryReason()
		}
	}
	c.notify(o)
}

// notify reports an outcome to the observers.
func (c *Client) notify(o *outcome) {
	for _, obs := range c.observers {
		obs.attemptDone(o)
	}
}

func (c *Client) sendAndRelease(ctx context.Context, ep *endpoint, lease Lease, body []byte, o *outcome) []byte {
	defer c.releaseSlot(ep, lease)
	o.start = c.cfg.clock.Now()
	data, err := c.send(ctx, ep, body, o)
	o.latency = c.cfg.clock.Now().Sub(o.start)
	if err != nil {
		o.err = err
		return nil
	}
	return data
}

// releaseSlot gives back the slots an attempt held.
func (c *Client) releaseSlot(ep *endpoint, lease Lease) {
	if lease != nil {
		lease.Release()
	}
	c.pool.release(ep)
}

var jsonContentType = []string{"application/json"}

// maxErrorBody bounds how much of a non-2xx reply is read.
const maxErrorBody = 64 << 10

// send makes one POST to ep and reads its reply.
func (c *Client) send(ctx context.Context, ep *endpoint, body []byte, o *outcome) ([]byte, error) {
	actx := ctx
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > c.cfg.attemptTimeout {
		// Only when ctx would not end the attempt first (ctx deadlines are
		// in real time): the timer and its context cost seven allocations,
		// about a twentieth of an attempt's CPU.
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, c.cfg.attemptTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(actx, http.MethodPost, "", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("amlpool: endpoint %s: %w", ep.name, err)
	}
	// The URL and, through our own http.Client, the headers are the
	// endpoint's, shared by every request: net/http only reads them. A
	// user's RoundTripper or a propagator may write headers, so they get a
	// copy. Building them anew cost about 10 % of the in-process path.
	req.URL, req.Host = ep.u, ep.host
	if c.ownsHTTP && c.cfg.propagator == nil {
		req.Header = *ep.header
	} else {
		for k, v := range *ep.header {
			req.Header[k] = v // the values are shared: no one may write into a value's slice
		}
		if c.cfg.propagator != nil {
			c.cfg.propagator.Inject(ctx, propagation.HeaderCarrier(req.Header))
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() == nil && actx.Err() != nil {
			return nil, fmt.Errorf("amlpool: endpoint %s: attempt timed out after %v: %w", ep.name, c.cfg.attemptTimeout, err)
		}
		return nil, fmt.Errorf("amlpool: endpoint %s: %w", ep.name, err)
	}
	defer resp.Body.Close()
	o.status = resp.StatusCode
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		data, err := readBody(resp.Body, resp.ContentLength, c.cfg.maxResponseBytes)
		if err != nil {
			if isDecodeError(err) {
				err = &malformedError{err}
			}
			return nil, fmt.Errorf("amlpool: endpoint %s: read reply: %w", ep.name, err)
		}
		if err := checkReply(data, resp.Header.Get("Content-Type"), ep.key()); err != nil {
			return nil, fmt.Errorf("amlpool: endpoint %s: %w", ep.name, err)
		}
		return data, nil
	}
	data, err := readBody(resp.Body, -1, maxErrorBody)
	if err != nil && !errors.Is(err, ErrResponseTooLarge) {
		return nil, fmt.Errorf("amlpool: endpoint %s: read HTTP %d reply: %w", ep.name, resp.StatusCode, err)
	}
	apiErr := parseAPIError(ep.name, resp.StatusCode, data, ep.key())
	apiErr.RetryAfter = retryAfter(resp.Header, c.cfg.clock.Now())
	if c.cfg.maxRetryAfter > 0 {
		o.retryAfter = apiErr.RetryAfter
	}
	return nil, apiErr
}

// readBody reads at most limit bytes; a longer body is ErrResponseTooLarge.
// A body of known size is read into one buffer of that size plus one byte,
// the byte that lets the read see EOF, which hands the connection back for
// reuse.
func readBody(r io.Reader, size, limit int64) ([]byte, error) {
	if size > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrResponseTooLarge, size, limit)
	}
	n := int64(512)
	if size >= 0 {
		n = size + 1
	}
	buf := make([]byte, 0, n)
	lr := io.LimitedReader{R: r, N: limit + 1}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)] // grow
		}
		m, err := lr.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if int64(len(buf)) > limit {
		return buf[:limit], fmt.Errorf("%w: over %d bytes", ErrResponseTooLarge, limit)
	}
	return buf, nil
}

// Score sends a typed classic request (see Request) and decodes the reply.
// It behaves as Do for waiting, failover and errors; a reply that is not a
// valid scoring response is an error naming the endpoint that sent it and
// matching ErrMalformedResponse. Such a reply is not retried: it is the
// model's answer, and every endpoint would give the same.
func (c *Client) Score(ctx context.Context, req *Request) (*Response, error) {
	if req == nil {
		return nil, errors.New("amlpool: Score: nil request")
	}
	body, err := encodeRequest(req)
	if err != nil {
		return nil, err
	}
	data, name, err := c.do(ctx, "amlpool.Score", body)
	if err != nil {
		return nil, err
	}
	resp, err := decodeResponse(data)
	if err != nil {
		return nil, fmt.Errorf("amlpool: endpoint %s: %w", name, err)
	}
	return resp, nil
}

// Stats is a snapshot of a Client's endpoints and waiting calls.
type Stats struct {
	Endpoints []EndpointStats // in the order given to New
	Waiting   int             // calls waiting for a free slot
}

// EndpointStats describes one endpoint at the moment Stats was called.
type EndpointStats struct {
	Name               string
	MaxConcurrentCalls int   // the configured cap
	Limit              int   // the cap in force now (lower under an adaptive limit)
	InFlight           int   // calls in flight now
	Calls              int64 // attempts made, each counted once it ended
	Errors             int64 // attempts that failed, throttles included; not cancelled ones
	Cancelled          int64 // attempts cut short because the call's ctx ended
	Throttles          int64 // attempts the endpoint answered as full (503 RequestThrottled by default)
	Ejected            bool  // out of rotation after failures in a row (WithEjection)
	Ejections          int64 // times it was ejected
}

// Stats returns a snapshot of the counters. It never blocks on calls and
// never contains keys. Counters of different endpoints are read one after
// another, not atomically together.
func (c *Client) Stats() Stats {
	s := Stats{Endpoints: make([]EndpointStats, len(c.eps)), Waiting: c.pool.waiting()}
	for i, ep := range c.eps {
		ejected, ejections := c.health.ejected(i)
		s.Endpoints[i] = EndpointStats{
			Ejected:            ejected,
			Ejections:          ejections,
			Name:               ep.name,
			MaxConcurrentCalls: int(ep.max),
			Limit:              int(ep.limit.Load()),
			InFlight:           int(ep.inFlight.Load()),
			Calls:              ep.calls.Load(),
			Errors:             ep.failures.Load(),
			Cancelled:          ep.cancelled.Load(),
			Throttles:          ep.throttles.Load(),
		}
	}
	return s
}

// Close stops the Client: calls waiting for a slot return ErrClosed at once,
// later calls return ErrClosed, and calls already sending finish their
// current attempt. Close waits for the Client's background goroutines and
// closes its idle connections. The first Close returns nil; later ones
// return ErrClosed.
func (c *Client) Close() error {
	err := ErrClosed
	c.closeOnce.Do(func() {
		err = nil
		c.closed.Store(true)
		c.pool.close()
		c.wg.Wait()
		c.tel.close()
		if c.ownsHTTP {
			c.http.CloseIdleConnections()
		}
	})
	return err
}
