package amlpool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/amlpool/amlpool/internal/pool"
)

// Client makes several endpoints look like one. It gives each endpoint as
// many slots as its MaxConcurrentCalls, sends each call to a free slot, waits
// in line when all are busy, and fails over when an endpoint is full.
//
// Client is safe for concurrent use by any number of goroutines. Build it
// with New and Close it when done.
type Client struct {
	cfg      config
	kind     Kind // of every endpoint, fixed at New
	pool     *pool.Pool
	http     *http.Client
	ownsHTTP bool
	limiter  Limiter
	budget   *retryBudget // nil without a retry budget
	tel      *telemetry   // metrics, traces and logs; nil when none is configured
	hedge    *hedger      // nil unless WithHedging or WithHedgingQuantile
	attempts *deadlines   // ends attempts at WithAttemptTimeout
	// kinds counts the attempts of every Name the Client has, and of the
	// last keptRemovedNames it removed, by outcome (addExt); gone lists
	// those removed, oldest first (forget). New and SetEndpoints (under
	// update) write them.
	kinds map[string]*outcomeCounts
	gone  []string

	// With a Limiter (health_shared.go):
	health HealthLink                 // its shared health; nil without any
	gen    atomic.Pointer[generation] // ended by SetEndpoints and Close

	// resized is fired by each SetEndpoints: batches whose Parallelism
	// follows the Capacity look at it again (batch.go).
	resized broadcast

	update    sync.Mutex // serialises SetEndpoints
	closeOnce sync.Once
	closed    atomic.Bool
	wg        sync.WaitGroup // background goroutines, stopped by Close
}

// epExt is what the Client keeps beside the pool's state of one endpoint.
type epExt struct {
	id  string       // LimitedEndpoint.ID
	tel *epTelemetry // its name and attributes, for metrics, spans and logs
	// urlSecrets are its URL's query values scrubbed from replies and
	// transport errors (querySecrets).
	urlSecrets []string
}

// extOf returns the Client's data for e.
func extOf(e *pool.Endpoint) *epExt { return e.Ext().(*epExt) }

// New returns a Client for endpoints. It validates every endpoint (see
// Endpoint) and option and returns a *ConfigError naming the first problem; it
// never panics on bad input. New starts no network activity.
func New(endpoints []Endpoint, opts ...Option) (*Client, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	specs, err := newSpecs(endpoints, cfg.allowHTTP, nil)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, kind: endpoints[0].Kind, limiter: cfg.limiter, attempts: newDeadlines(cfg.attemptTimeout)}
	if c.tel, err = newTelemetry(&c.cfg); err != nil {
		return nil, err
	}
	c.addExt(specs)
	balance, pick := picker(cfg.balancer)
	pcfg := pool.Config{Clock: cfg.clock, Rand: cfg.rand, Balance: balance, Pick: pick,
		EjectFor: cfg.ejectFor, Adaptive: cfg.adaptive, Aging: cfg.priorityAging,
		// Only LatencyAware and a Balancer of the user's (Candidates.Latency)
		// read the latency estimate: the others do not pay for keeping it.
		TrackLatency: balance == pool.Latency || balance == pool.Custom}
	if cfg.maxWaitingSet {
		pcfg.MaxWaiting = cfg.maxWaiting
	}
	if !cfg.ejectOff {
		pcfg.EjectAfter = cfg.ejectAfter
	}
	c.pool = pool.New(pcfg, specs)
	if err := c.tel.start(c.pool); err != nil {
		return nil, err
	}
	if cfg.budget {
		c.budget = newRetryBudget(&c.cfg)
	}
	if h := cfg.hedge; h != nil {
		c.hedge = newHedger(h, c.pool.Nanotime)
	}
	c.http, c.ownsHTTP = newHTTPClient(cfg.httpClient, c.pool.Set().Total())
	if c.limiter != nil {
		c.nextGeneration()
		c.shareHealth()
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.pool.Run()
	}()
	return c, nil
}

// addExt gives each spec the Client's data for its endpoint. A spec that
// bears a Name the Client was given before, live, draining or removed,
// counts its attempts by outcome with that Name's counts: the metrics'
// series are the Name's, and a counter's must not go back when the Name
// is given another URL, or comes back after it was removed. The counts of
// a removed Name are kept until keptRemovedNames others have been removed
// since (forget).
func (c *Client) addExt(specs []pool.Spec) {
	if c.kinds == nil {
		c.kinds = make(map[string]*outcomeCounts, len(specs))
	}
	for i := range specs {
		s := &specs[i]
		kinds := c.kinds[s.Name]
		if kinds == nil {
			kinds = new(outcomeCounts)
			c.kinds[s.Name] = kinds
		}
		s.Ext = &epExt{id: endpointID(s.URL.String()), tel: newEpTelemetry(s.Name, s.URL, kinds), urlSecrets: querySecrets(s.URL)}
	}
}

// keptRemovedNames is how many removed Names the Client keeps the
// outcome counts of, 72 bytes each, for when one comes back: a Client
// given ever new Names (a pod's, say) keeps a bounded number, and one that
// takes an endpoint out for a while and gives it back again (maintenance)
// does not remove a thousand others meanwhile.
const keptRemovedNames = 1000

// forget follows an Update to the live endpoints specs that made changes:
// it notes the Names it removed, and forgets the counts of the oldest
// removed Names past keptRemovedNames, each once its endpoints have
// drained (one still listed may be given back, with its counts, by a
// later Update).
func (c *Client) forget(specs []pool.Spec, changes []pool.Change) {
	removed := false
	for _, ch := range changes {
		removed = removed || ch.Kind == pool.Removed
	}
	if !removed && len(c.gone) == 0 {
		return
	}
	live := make(map[string]bool, len(specs))
	for i := range specs {
		live[specs[i].Name] = true
	}
	// A Name given back is live again; one given another URL was never
	// gone (its old endpoint drains under it).
	c.gone = slices.DeleteFunc(c.gone, func(name string) bool { return live[name] })
	for _, ch := range changes {
		if ch.Kind == pool.Removed && !live[ch.Name] {
			c.gone = append(c.gone, ch.Name)
		}
	}
	excess := len(c.gone) - keptRemovedNames
	if excess <= 0 {
		return
	}
	listed := make(map[string]bool)
	for _, e := range c.pool.Endpoints() {
		listed[e.Name()] = true
	}
	kept := c.gone[:0]
	for _, name := range c.gone {
		if excess > 0 && !listed[name] {
			delete(c.kinds, name)
			excess--
			continue
		}
		kept = append(kept, name)
	}
	clear(c.gone[len(kept):])
	c.gone = kept
}

// SetEndpoints replaces the Client's endpoints while calls run. The set is
// validated as New validates it, and must be of the Kind given to New; a
// bad set is refused whole, with a *ConfigError, and the endpoints in use
// go on unchanged. After Close it
// returns ErrClosed.
//
// Endpoints are matched by Name (as New derives it when empty). An
// endpoint without a Name whose URL is in use under a Name derived from
// it keeps that Name, unless another endpoint of the set gives itself
// that Name: two endpoints whose derived Names collide ("abc", "abc#2")
// keep theirs when the set lists them in another order, or drops one, so
// no derived Name moves to another URL:
//
//   - a kept endpoint (same Name, same URL) keeps its state: calls in
//     flight, health, latency estimate, adaptive limit and counters. Its
//     new keys and cap apply from the next attempt: a lower cap admits no
//     new attempt until fewer calls are in flight, a higher one serves
//     waiting calls at once. New keys (or a new Credential) also end an
//     ejection for an endpoint fault, such as the rejected key they
//     replace: the next call probes it;
//   - an added endpoint takes calls at once, waiting ones included: in
//     line, or before a retry until the other endpoints are back from a
//     cool-down or an ejection (once their backoff is over);
//   - a removed endpoint, or a kept Name with another URL, takes no new
//     attempt once SetEndpoints has returned. Its calls in flight finish
//     and their replies are returned; Stats lists it, as Removed, until the
//     last one has;
//   - a renamed endpoint (same URL, another Name) is a new endpoint, held
//     back (its Limit is 0) until the old name's calls in flight have
//     ended: one URL never has two sets of slots. Until then it has no
//     free slot, even while the old name has fewer calls than its cap in
//     flight: a call that does not wait (WithMaxWait(0)) and finds no
//     other endpoint free fails with ErrNoCapacity;
//
// Every attempt that takes its slot after SetEndpoints returns uses the new
// set and keys. SetEndpoints is safe beside any number of calls; concurrent
// SetEndpoints are serialised and the last one wins. A HealthLink, or the
// logger's handler, that panics as SetEndpoints tells it of the change
// panics SetEndpoints with the same value, once the new set is in force
// in the Client, its calls waiting at the Limiter and the HealthLink.
func (c *Client) SetEndpoints(endpoints []Endpoint) error {
	c.update.Lock()
	defer c.update.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	// The endpoints in use, by URL: one without a Name keeps the Name
	// derived for it (newSpecs).
	live := c.pool.Set().Eps
	inUse := make(map[string]string, len(live))
	for _, e := range live {
		inUse[e.URL().String()] = e.Name()
	}
	specs, err := newSpecs(endpoints, c.cfg.allowHTTP, inUse)
	if err != nil {
		return err
	}
	if k := endpoints[0].Kind; k != c.kind {
		return &ConfigError{Endpoint: labelOf(endpoints, 0), Field: "Kind",
			Problem: fmt.Sprintf("%s, but the Client's endpoints are %s; SetEndpoints keeps the Kind given to New", k, c.kind)}
	}
	c.addExt(specs)
	changes := c.pool.Update(specs)
	c.forget(specs, changes)
	c.resized.fire()
	if c.limiter != nil {
		c.nextGeneration() // calls waiting at the Limiter choose again
	}
	// The user's hooks last, once the Client's own state is the new set
	// throughout: one that panics (the HealthLink, the logger's handler)
	// panics SetEndpoints, but leaves no part of the Client behind. The
	// changes are logged even if the HealthLink panics.
	defer func() {
		for _, ch := range changes {
			c.tel.changed(ch)
		}
	}()
	if c.health != nil {
		c.health.SetEndpoints(c.limitedAll())
	}
	return nil
}

// Do sends body, a JSON scoring request, to one endpoint and returns the
// reply body of the first attempt that succeeds.
//
// Do blocks while every endpoint is full, in line with other waiting calls
// (higher priorities first: WithPriority), for up to the max wait
// (WithMaxWait) or until ctx ends. A failed attempt is
// retried as its Verdict says (see Classify, WithClassifier): an endpoint
// that answers 503 RequestThrottled (online: 429 Too many pending requests)
// is full, not broken, and the call goes at once to another endpoint with a
// free slot; an endpoint that cannot serve anyone (401, 403, 404, a TLS
// certificate not trusted, an https:// URL or proxy that does not speak
// TLS) leaves rotation and the call goes at once to another; a transient
// failure is retried after a backoff (WithBackoff) on an endpoint the call
// has not tried. A call makes at most WithMaxAttempts
// attempts, within the retry budget (WithRetryBudget), and never starts a
// wait that would pass ctx's deadline.
//
// Errors: ctx's error when it ends first; ErrNoCapacity when the max wait
// passes, or ErrShed (an ErrNoCapacity) when the line is full
// (WithMaxWaiting); ErrClosed after Close; an *APIError for a non-2xx reply
// (errors.Is(err, ErrThrottled) for a throttle); ErrResponseTooLarge for a
// reply over WithMaxResponseBytes; ErrMalformedResponse for a 2xx reply that
// is not JSON or is the service's error body (Do checks that much of the
// reply, and no more: its shape is the caller's business); a *CredentialError
// when the endpoint's Credential gave no token; a transport error
// otherwise. A call that made several attempts, or stopped retrying for a reason of its
// own, returns a *CallError wrapping the last attempt's error and the reason.
func (c *Client) Do(ctx context.Context, body []byte) ([]byte, error) {
	var cl call
	data, _, err := c.do(ctx, "amlpool.Do", body, &cl)
	return data, err
}

// do is Do, also returning the name of the endpoint of the last attempt
// ("" when the call made none); cl, a
// zero call, is left as the call ended (its attempts, say). op names the
// call's span, which ends however the call does: a call that panics (a
// Balancer's Pick, say) ends it with errPanicked.
func (c *Client) do(ctx context.Context, op string, body []byte, cl *call) (data []byte, name string, err error) {
	if c.tel == nil || c.tel.tracer == nil {
		return c.run(ctx, cl, body)
	}
	ctx, span := c.tel.startCall(ctx, op)
	err = errPanicked // unless run returns
	defer func() { c.tel.endCall(span, cl, name, err) }()
	return c.run(ctx, cl, body)
}

// run makes the attempts of one call: acquire a slot, send, conclude, and
// again while the conclusion says so.
func (c *Client) run(ctx context.Context, cl *call, body []byte) ([]byte, string, error) {
	if c.closed.Load() {
		return nil, "", ErrClosed
	}
	for {
		if cl.attempts > 0 && c.closed.Load() {
			return nil, cl.lastEndpoint(), cl.result(ErrClosed)
		}
		var next attempt // on the stack: an attempt costs no allocation of its own
		if err := c.acquire(ctx, cl, &next); err != nil {
			return nil, cl.lastEndpoint(), cl.result(err)
		}
		cl.started(&next)
		a := c.attempt(ctx, cl, &next, body) // a hedge, maybe
		name := a.slot.Ep.Name()
		if a.err == nil {
			return a.data, name, nil
		}
		if a.final {
			return nil, name, cl.result(a.stop)
		}
		if err := c.sleep(ctx, a); err != nil {
			return nil, name, cl.result(err)
		}
	}
}

// attempt is one request of a call: the slot it went on, what came of it,
// and what the call does next. Only the call's own path writes it; the
// telemetry reads it once it is concluded.
type attempt struct {
	n       int       // 1 for a call's first attempt
	resends int       // requests the call sent before this one, hedged copies included: its http.request.resend_count
	slot    pool.Slot // the endpoint, and whether this attempt probes it
	lease   Lease     // the Limiter's slot, or nil
	// slotWait is how long the attempt waited for its slot, with telemetry.
	slotWait time.Duration
	hedge    bool // an extra copy racing one still in flight, not a retry
	// panicked is what the goroutine of a hedged copy panicked with
	// (runCopy), goexit{} if it called runtime.Goexit; nil if neither.
	panicked any
	// reason says, with telemetry, why this attempt is a retry: what the
	// attempt before came to (retryReason).
	reason string
	span   trace.Span // nil without a TracerProvider

	// What the exchange came to.
	auth       *pool.Auth
	key        int    // the index of the key sent, in auth
	tok        string // the token sent, when auth has a Credential; a secret
	refused    string // the token the endpoint refused the call before, when tok was asked for since; a secret
	start      time.Time
	latency    time.Duration
	data       []byte
	err        error         // nil on success
	status     int           // HTTP status; 0 when no reply came
	retryAfter time.Duration // the reply's delay hint, capped; 0 when none or ignored
	verdict    Verdict       // the classifier's verdict on err
	result     pool.Result
	rekeyed    bool         // a 401 for keys SetEndpoints replaced after the attempt took them (unauthorized)
	kind       outcomeKind  // for telemetry (kindOf)
	fx         pool.Effects // what the release changed: an ejection, a new limit

	// The call's decision after a failed attempt (decide).
	final bool          // no further attempt
	wait  time.Duration // the wait before the next attempt, when not final
	stop  error         // why a retryable error ends the call (CallError.Stop)
	// held is the end of wait that only holds the call until an endpoint
	// may take it again (every one cooling down or ejected, Pool.ReadyIn):
	// resized, closed by a SetEndpoints since, ends it (sleep).
	held    time.Duration
	resized <-chan struct{}
}

// acquire takes a slot for the call's next attempt, a, and, with
// telemetry, records how long that took (also when a Balancer or a Limiter
// panics), and logs a spell of shedding that the call's shed started. A
// MeterProvider's instrument that panics recording the wait panics the
// call, but the slot and the lease go back first.
func (c *Client) acquire(ctx context.Context, cl *call, a *attempt) error {
	if c.tel == nil {
		_, err := pool.StartedSpell(c.takeSlot(ctx, cl, a))
		return err
	}
	start := c.cfg.clock.Now()
	err := errPanicked // until takeSlot returns
	recorded := false
	defer func() {
		switch {
		case recorded:
		case err == errPanicked:
			// A Balancer or a Limiter panicked: the wait is recorded like
			// any other before the panic goes on.
			c.tel.waited(c.cfg.clock.Now().Sub(start), errPanicked)
		case err == nil:
			// The instrument panicked recording the wait for the slot
			// the attempt holds: the slot and the lease go back.
			c.unwind(a, holding)
		}
	}()
	var spell bool
	spell, err = pool.StartedSpell(c.takeSlot(ctx, cl, a))
	a.slotWait = c.cfg.clock.Now().Sub(start)
	c.tel.waited(a.slotWait, err)
	recorded = true
	if spell {
		c.tel.shed(Priority(pool.PriorityOf(ctx)), c.cfg.maxWaiting)
	}
	return err
}

// acquireSlot takes a slot: one of ours, then, with a Limiter, one of the
// fleet's. A call whose last attempt met a replaced key goes back to the
// same endpoint if it has a free slot and no call waits for one (those come
// first: the retry takes its turn in line, as any other does); otherwise an
// attempt avoids the endpoints the call tried while an untried one may take
// calls, which the line checks again while the call waits.
func (c *Client) acquireSlot(ctx context.Context, cl *call, a *attempt) error {
	maxWait := time.Duration(-1)
	if c.cfg.maxWaitSet {
		maxWait = c.cfg.maxWait
	}
	var start time.Time
	if c.limiter != nil && maxWait > 0 {
		start = c.cfg.clock.Now()
	}
	slot, ok := pool.Slot{}, false
	if pin := cl.pin; pin != nil {
		refused := cl.refused
		cl.pin, cl.refused = nil, ""
		if c.pool.Waiting() == 0 {
			slot, ok = c.pool.TryTake(pin)
		}
		// However the attempt gets back to pin (its turn in line, the
		// Limiter's choice), the token pin refused goes with it.
		defer func() {
			if a.slot.Ep == pin {
				a.refused = refused
			}
		}()
	}
	if !ok {
		cl.ex.On = cl.ex.Tried.Len() > 0 && c.usableOutside(&cl.ex.Tried)
		var err error
		if slot, err = c.pool.Acquire(ctx, &cl.ex, maxWait); err != nil {
			return err
		}
	}
	if c.limiter == nil {
		a.slot = slot
		return nil
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
		err := c.acquireShared(lctx, &cl.ex, slot, acquire, a)
		if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			err = ErrNoCapacity
		}
		return err
	}
	return c.acquireShared(ctx, &cl.ex, slot, acquire, a)
}

// limited names e to a Limiter.
func limited(e *pool.Endpoint) LimitedEndpoint {
	return LimitedEndpoint{ID: extOf(e).id, Name: e.Name(), Limit: e.Max()}
}

// acquireShared asks the Limiter, through acquire, for a slot on slot's
// endpoint or, failing that, on another endpoint this process has a free
// slot for; the local slot follows the Limiter's choice. It gives a the
// slot and the lease it ends with. Unless it does, slot and the lease go
// back, also when the Limiter or its Lease panics.
func (c *Client) acquireShared(ctx context.Context, x *pool.Exclusion, slot pool.Slot, acquire func(context.Context, []LimitedEndpoint) (Lease, error), a *attempt) error {
	kept := false
	defer func() {
		if !kept {
			c.pool.Release(slot, &pool.Report{Result: pool.Unsent}, nil)
		}
	}()
	cands := []LimitedEndpoint{limited(slot.Ep)}
	eps := []*pool.Endpoint{slot.Ep}
	set := c.pool.Set()
	for _, t := range set.Tiers() { // lowest tier first: the Limiter prefers earlier candidates
		for _, o := range t.Eps {
			if o != slot.Ep && set.Usable(x, o) && o.Free() > 0 {
				cands = append(cands, limited(o))
				eps = append(eps, o)
			}
		}
	}
	wctx, done := c.untilEndpointsChange(ctx)
	defer done()
	// held is a lease not yet given to a nor released: it goes back on the
	// way out, also when its Index panics, and before slot does (should
	// its Release panic, slot still goes back).
	var held Lease
	defer func() {
		if held != nil {
			held.Release()
		}
	}()
	lease, err := acquire(wctx, cands)
	if err != nil {
		return staleWait(ctx, wctx, err)
	}
	held = lease
	if i := lease.Index(); i > 0 && i < len(eps) {
		if other, ok := c.pool.TryTake(eps[i]); ok {
			a.slot, a.lease, held = other, lease, nil
			return nil
		}
	}
	if lease.Index() != 0 {
		// Our own slot there went meanwhile: keep the one we hold and wait
		// for the Limiter's slot on it instead.
		held = nil
		lease.Release()
		if lease, err = acquire(wctx, cands[:1]); err != nil {
			return staleWait(ctx, wctx, err)
		}
		held = lease
	}
	if slot.Ep.Removed() {
		// Removed while the call waited: no attempt starts there now (held
		// goes back).
		return errEndpointsChanged
	}
	a.slot, a.lease, held = slot, lease, nil
	kept = true
	return nil
}

// attempt sends attempt a of cl, hedged when hedging is on, and concludes
// it: the call's bookkeeping, the decision on what comes next, telemetry.
// It returns the attempt that counts: a, or its hedge when that won.
func (c *Client) attempt(ctx context.Context, cl *call, a *attempt, body []byte) *attempt {
	if c.hedge != nil {
		if delay, ok := c.hedge.after(); ok && len(c.pool.Set().Eps) > 1 {
			return c.attemptHedged(ctx, cl, a, body, delay)
		}
	}
	c.exchange(ctx, a, body)
	c.conclude(ctx, cl, a)
	return a
}

// exchange is the part of an attempt that touches no call state, so that two
// copies of one attempt can run it at once (hedge.go): it sends the request
// on a's slot, judges what came back, and gives the slot back.
//
// A callback of the user's that panics on the way (a TracerProvider as
// the attempt's span starts, a Credential, a RoundTripper, a propagator,
// the classifier, a Lease, a HealthLink) panics the call, but the slot
// goes back first (see unwind).
func (c *Client) exchange(ctx context.Context, a *attempt, body []byte) {
	stage := holding
	defer func() {
		if stage != exchanged {
			c.unwind(a, stage)
		}
	}()
	if c.tel != nil {
		ctx = c.tel.startAttempt(ctx, a)
	}
	a.auth, a.key = a.slot.Ep.Key()
	a.tok = ""
	a.data, a.err = c.send(ctx, a, body)
	a.latency = c.cfg.clock.Now().Sub(a.start)
	c.judge(ctx, a)
	if a.lease != nil {
		stage = leaseBack
		a.lease.Release()
	}
	stage = released
	c.pool.Release(a.slot, &pool.Report{Result: a.result, Start: a.start, Latency: a.latency, CoolDown: a.coolDown(&c.cfg)}, &a.fx)
	if c.health != nil {
		c.reportHealth(a)
	}
	stage = exchanged
}

// coolDown is how long a's endpoint is held back after a: the reply's
// delay hint, capped; or, for a rate limit (Limited: a 429 given
// VerdictRetry) without one, the backoff's first wait before jitter
// (Backoff.Initial). A 429 comes back fast, so the endpoint has free
// slots and would draw the calls that start meanwhile, each to meet the
// limit too; held back, they go to other endpoints, and the calls that
// met it come back once their backoff is over. The fleet hears only of
// the reply's own hint (reportHealth). With hints ignored
// (WithMaxRetryAfter(0)), nothing is held back.
func (a *attempt) coolDown(cfg *config) time.Duration {
	if a.retryAfter == 0 && a.result == pool.Limited {
		return min(cfg.backoff.Initial, cfg.maxRetryAfter)
	}
	return a.retryAfter
}

// exchangeStage is how far an exchange got: what it still holds.
type exchangeStage uint8

const (
	holding   exchangeStage = iota // the slot and the lease
	leaseBack                      // the slot; the lease's Release was called
	released                       // nothing: the slot was given back with the attempt's result
	exchanged                      // done
)

// unwind cleans up after an exchange that panicked at stage, as the panic
// goes on to the call. A slot still held goes back unsent, after the
// lease (unless the lease's own Release is what panicked), so the attempt
// counts as none, in Stats as in the metrics, and tells nothing of the
// endpoint; its span ends with errPanicked. An attempt that panicked once
// its slot was back with its result (in a HealthLink's Report) is
// concluded for the telemetry as Stats counts it.
func (c *Client) unwind(a *attempt, stage exchangeStage) {
	if stage == released {
		c.done(a)
		return
	}
	if a.span != nil {
		defer endPanicked(a)
	}
	defer c.pool.Release(a.slot, &pool.Report{Result: pool.Unsent}, nil) // even if the lease's Release panics
	if stage == holding && a.lease != nil {
		a.lease.Release()
	}
}

// judge sorts what an attempt made under ctx came to: its verdict, its
// result for the endpoint's state, and its kind for telemetry.
func (c *Client) judge(ctx context.Context, a *attempt) {
	ep := a.slot.Ep
	switch {
	case a.err == nil:
		a.result = pool.OK
	case context.Cause(ctx) == errAbandoned:
		a.result = pool.Abandoned
	case ctx.Err() != nil:
		a.result = pool.Cancelled
	default:
		a.verdict = c.classify(a.err)
		switch a.verdict {
		case VerdictFull:
			a.result = pool.Full
		case VerdictRetry:
			a.result = pool.Failed
			if a.status == http.StatusTooManyRequests {
				// The endpoint's rate limit (online: 429 Rate-limited), not
				// its health: the call backs off and its Retry-After cools
				// the endpoint, but no run of them ejects it.
				a.result = pool.Limited
			}
		case VerdictEndpointFault:
			a.result = pool.Fault
			if a.status == http.StatusUnauthorized {
				a.result = c.unauthorized(a)
			}
		default:
			a.result = pool.Rejected
		}
	}
	if a.status != 0 && a.status != http.StatusUnauthorized {
		ep.Authorized(a.auth, a.key)
	}
	a.kind = kindOf(a)
}

// unauthorized records a 401 to a's key or token and says what it means.
// KeyRejected: the endpoint is worth trying again at once, with its other
// key or with a fresh token from its Credential, which hears that this one
// was refused. Fault: the endpoint cannot serve anyone (its keys are both
// refused, or its Credential, told of a refused token, gave the same one
// again). Failed: a fresh token, a new one, was refused too; a caching
// Credential may have handed out one it held from before a revocation,
// so the endpoint is not out at once, but a run of these ejects it.
//
// A 401 for keys, or a Credential, that SetEndpoints replaced after the
// attempt took them is KeyRejected and marks a rekeyed: it is a key
// rotation's, and does not count towards the call's max attempts.
func (c *Client) unauthorized(a *attempt) pool.Result {
	ep := a.slot.Ep
	a.rekeyed = ep.Rekeyed(a.auth)
	if a.tok == "" {
		if ep.Unauthorized(a.auth, a.key) {
			return pool.KeyRejected
		}
		return pool.Fault
	}
	invalidate(a.auth.Credential(), a.tok)
	switch {
	case ep.TokenRejected(a.auth, a.refused != ""):
		return pool.KeyRejected
	case a.tok == a.refused:
		return pool.Fault
	}
	return pool.Failed
}

// conclude records a failed attempt in its call, decides what the call does
// next, and tells the telemetry: also when deciding panics (the logger, as
// the retry budget runs out), so that the attempt, which Stats counts,
// is in the metrics and its span ends.
func (c *Client) conclude(ctx context.Context, cl *call, a *attempt) {
	defer c.done(a)
	if a.n == 1 && c.budget != nil {
		c.budget.deposit(a.start) // each call counts once, when it first sends
	}
	if a.err != nil {
		cl.failed(a)
		c.decide(ctx, cl, a)
		if c.tel != nil && !a.final {
			cl.reason = retryReason(a)
		}
	}
}

// done hears of every attempt sent, once it is concluded: the hedging
// quantile learns from successful ones, and the telemetry from all.
func (c *Client) done(a *attempt) {
	if a.err == nil && c.hedge != nil && c.hedge.window != nil {
		c.hedge.window.add(c.pool.NanotimeAt(a.start.Add(a.latency)), int64(a.latency))
	}
	if c.tel != nil {
		c.tel.attemptDone(a)
	}
}

var jsonContentType = []string{"application/json"}

// maxErrorBody bounds how much of a non-2xx reply is read.
const maxErrorBody = 64 << 10

// send makes one POST on a's slot with a's key, or a token from its
// Credential, and reads its reply. It sets a.start, when the request is
// sent (after the token), a.status and, for a reply with a delay hint,
// a.retryAfter. The attempt timeout bounds the token and the request
// together.
func (c *Client) send(ctx context.Context, a *attempt, body []byte) ([]byte, error) {
	ep := a.slot.Ep
	actx := ctx
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > c.cfg.attemptTimeout {
		// Only when ctx would not end the attempt first (ctx deadlines are
		// in real time); a context of its own from the pool (deadline.go).
		a := c.attempts.start(ctx)
		defer c.attempts.finish(a)
		actx = a
	}
	if cred := a.auth.Credential(); cred != nil {
		err := a.token(actx, cred)
		a.start = c.cfg.clock.Now()
		if err != nil {
			if ctx.Err() == nil && actx.Err() != nil {
				err.Err = fmt.Errorf("timed out after %v (WithAttemptTimeout) waiting for a token: %w", c.cfg.attemptTimeout, timedOut(err.Err))
			}
			return nil, err // nothing sent
		}
	} else {
		a.start = c.cfg.clock.Now()
	}
	req, err := http.NewRequestWithContext(actx, http.MethodPost, "", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("amlpool: endpoint %s: %w", ep.Name(), err)
	}
	// The URL and, through our own http.Client, the headers are the
	// endpoint's, shared by every request: net/http only reads them. A
	// user's RoundTripper or a propagator may write headers, so they get a
	// copy. Building them anew cost about 10 % of the in-process path.
	req.URL, req.Host = ep.URL(), ep.Host()
	header := a.header()
	if c.ownsHTTP && c.cfg.propagator == nil {
		req.Header = header
	} else {
		for k, v := range header {
			req.Header[k] = v // the values are shared: no one may write into a value's slice
		}
		if c.cfg.propagator != nil {
			c.cfg.propagator.Inject(ctx, propagation.HeaderCarrier(req.Header))
		}
	}
	var buf [6]string // keys on the stack while they fit
	keys := a.secrets(buf[:0])
	resp, err := c.roundTrip(req, keys)
	if err != nil {
		if ctx.Err() == nil && actx.Err() != nil {
			return nil, fmt.Errorf("amlpool: endpoint %s: attempt timed out after %v: %w", ep.Name(), c.cfg.attemptTimeout, timedOut(err))
		}
		return nil, fmt.Errorf("amlpool: endpoint %s: %w", ep.Name(), err)
	}
	defer resp.Body.Close()
	a.status = resp.StatusCode
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		data, err := readBody(resp.Body, resp.ContentLength, c.cfg.maxResponseBytes)
		if err != nil {
			// A user's RoundTripper's body may fail quoting the URL.
			err = scrubError(err, req.URL, keys)
			if isDecodeError(err) {
				err = &malformedError{err}
			}
			if ctx.Err() == nil && actx.Err() != nil {
				return nil, fmt.Errorf("amlpool: endpoint %s: attempt timed out after %v reading the reply: %w", ep.Name(), c.cfg.attemptTimeout, timedOut(err))
			}
			return nil, fmt.Errorf("amlpool: endpoint %s: read reply: %w", ep.Name(), err)
		}
		if err := checkReply(data, resp.Header.Get("Content-Type"), keys); err != nil && (c.kind == Classic || !isErrorBody(err)) {
			return nil, fmt.Errorf("amlpool: endpoint %s: %w", ep.Name(), err)
		}
		return data, nil
	}
	data, cut := readBody(resp.Body, -1, maxErrorBody)
	if cut != nil && !errors.Is(cut, ErrResponseTooLarge) {
		// The status and headers came whole, the body did not (a reset,
		// the attempt timeout): the status still says what the reply was,
		// so a 400 is not retried nor a 401 taken for a network fault. The
		// part of the body that came is not quoted: a key it echoed may be
		// cut in two, out of the scrub's reach.
		data = nil
		cut = scrubError(cut, req.URL, keys)
	} else {
		cut = nil
	}
	apiErr := parseAPIError(ep.Name(), resp.StatusCode, data, keys)
	if c.kind == Online {
		parseOnlineError(apiErr, resp.Header, data, keys)
		apiErr.phrase = reasonPhrase(resp.Status)
	}
	apiErr.RetryAfter = retryAfter(resp.Header, c.cfg.clock.Now())
	a.retryAfter = min(apiErr.RetryAfter, c.cfg.maxRetryAfter)
	switch {
	case cut == nil:
		return nil, apiErr
	case ctx.Err() == nil && actx.Err() != nil:
		return nil, fmt.Errorf("%w (attempt timed out after %v reading its body: %w)", apiErr, c.cfg.attemptTimeout, timedOut(cut))
	}
	return nil, fmt.Errorf("%w (reading its body: %w)", apiErr, cut)
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
		// The declared size, up to maxPrealloc: past it the buffer grows
		// as the bytes come, so a length a server claims but does not
		// send costs nothing (under a large WithMaxResponseBytes, a
		// claimed terabyte would fail the allocation).
		n = min(plusOne(size), maxPrealloc)
	}
	buf := make([]byte, 0, n)
	lr := io.LimitedReader{R: r, N: plusOne(limit)}
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

// maxPrealloc bounds the buffer readBody makes for a body before reading
// it.
const maxPrealloc = 16 << 20

// plusOne returns n + 1, or n when that would overflow: no body is
// longer than math.MaxInt64 bytes anyway.
func plusOne(n int64) int64 {
	if n == math.MaxInt64 {
		return n
	}
	return n + 1
}

// Score sends a typed classic request (see Request) and decodes the reply.
// It behaves as Do for waiting, failover and errors; a reply that is not a
// valid scoring response is an error naming the endpoint that sent it and
// matching ErrMalformedResponse. Such a reply is not retried: it is the
// model's answer, and every endpoint would give the same. On a Client of
// online endpoints Score sends nothing and returns an error: their bodies
// are the deployment's own, for Do (or ScoreRows, for MLflow models).
func (c *Client) Score(ctx context.Context, req *Request) (*Response, error) {
	if req == nil {
		return nil, errors.New("amlpool: Score: nil request")
	}
	if c.kind == Online {
		return nil, errScoreOnline
	}
	body, err := encodeRequest(req)
	if err != nil {
		return nil, err
	}
	var cl call
	data, name, err := c.do(ctx, "amlpool.Score", body, &cl)
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
	// Endpoints are the live endpoints, in the order given to New or to the
	// last SetEndpoints, then removed ones whose calls are still in flight.
	Endpoints []EndpointStats
	Waiting   int // calls waiting for a free slot
	// Shed counts the calls turned away because the line of waiting calls
	// was full (WithMaxWaiting), by the priority they had: on arrival, or
	// from the line for a call of higher priority. Priorities with none
	// are left out; it is nil while no call was shed.
	Shed map[Priority]int64
}

// EndpointStats describes one endpoint at the moment Stats was called.
type EndpointStats struct {
	Name string
	// Since is when this endpoint, this life of its Name, was added: when
	// New, or the SetEndpoints that added it, ran, by the Client's clock.
	// Its counters count from then. A Name removed and added again later,
	// or given another URL, is a new endpoint with a later Since, listed
	// beside the old one while that drains; a kept endpoint, or one added
	// back while it drains, keeps its Since. So Name and Since together
	// tell the endpoints of a Client apart: no two share both. Since
	// carries no monotonic clock reading and compares with ==.
	Since              time.Time
	Tier               int   // the configured tier (Endpoint.Tier)
	MaxConcurrentCalls int   // the configured cap
	Limit              int   // the cap in force now (lower under an adaptive limit; 0 while a rename waits for the old name's calls)
	InFlight           int   // calls in flight now: those holding a slot (with a Limiter, also while they wait for the fleet's)
	Calls              int64 // attempts made, each counted once it ended
	Errors             int64 // attempts that failed, throttles and faults included; not cancelled ones
	Cancelled          int64 // attempts cut short because the call's ctx ended
	Throttles          int64 // attempts the endpoint answered as full (503 RequestThrottled by default)
	Faults             int64 // attempts that found the endpoint unable to serve anyone (401, 403, 404, a TLS certificate not trusted, a plain-HTTP server or proxy for an https:// URL, by default)
	Ejected            bool  // out of rotation after failures in a row or a fault (WithEjection)
	Ejections          int64 // times it was ejected
	Removed            bool  // taken out by SetEndpoints; listed until its calls in flight end
}

// Stats returns a snapshot of the counters. It never blocks on calls and
// never contains keys. Counters of different endpoints are read one after
// another, not atomically together; an endpoint's InFlight and Calls are
// read together, so an attempt that ends meanwhile counts in one of them,
// never in neither or both.
func (c *Client) Stats() Stats {
	eps := c.pool.Endpoints()
	s := Stats{Endpoints: make([]EndpointStats, len(eps)), Waiting: c.pool.Waiting()}
	for i, e := range eps {
		ejected, ejections := c.pool.Ejected(e)
		n := e.Counters()
		s.Endpoints[i] = EndpointStats{
			Name:               e.Name(),
			Since:              e.Since(),
			Tier:               e.Tier(),
			MaxConcurrentCalls: e.Max(),
			Limit:              e.Limit(),
			InFlight:           n.InFlight,
			Calls:              n.Calls,
			Errors:             n.Failures,
			Cancelled:          n.Cancelled,
			Throttles:          n.Throttles,
			Faults:             n.Faults,
			Ejected:            ejected,
			Ejections:          ejections,
			Removed:            e.Removed(),
		}
	}
	for p := PriorityLow; p <= PriorityHigh; p++ {
		if n := c.pool.Shed(int8(p)); n > 0 {
			if s.Shed == nil {
				s.Shed = make(map[Priority]int64, 3)
			}
			s.Shed[p] = n
		}
	}
	return s
}

// Close stops the Client: calls waiting for a slot return ErrClosed at once,
// later calls return ErrClosed, and calls already sending finish their
// current attempt, with no retry or hedge after it. Close waits for the
// Client's background goroutines and closes its idle connections. The first
// Close returns nil; later ones return ErrClosed. A HealthLink whose Close
// panics, or a MeterProvider whose Registration's Unregister does, panics
// Close with the same value, once the Client is closed all the same.
func (c *Client) Close() error {
	err := ErrClosed
	c.closeOnce.Do(func() {
		err = nil
		c.update.Lock()
		c.closed.Store(true)
		c.update.Unlock()
		// In defers, in this order, whatever the user's hooks do.
		defer func() {
			if c.ownsHTTP {
				c.http.CloseIdleConnections()
			}
		}()
		defer c.tel.close()
		defer func() {
			c.pool.Close()
			if c.limiter != nil {
				c.nextGeneration() // calls waiting at the Limiter see ErrClosed
			}
			c.wg.Wait()
		}()
		if c.health != nil {
			c.health.Close()
		}
	})
	return err
}
