package redislimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/amlpool/amlpool"
)

// Limiter is an amlpool.Limiter whose slots live in Redis: every process
// that shares a Redis and a pool name (WithPool) shares each endpoint's
// MaxConcurrentCalls, so the fleet together never sends an endpoint more
// calls than its cap. Plug it into a Client with amlpool.WithLimiter.
//
// A slot is a lease: a member of a sorted set per endpoint, scored by its
// expiry on the Redis server's clock. Acquire takes one in one round trip
// (one Lua script); Release hands it to a call of this process that waits
// for its endpoint, without a round trip, or gives it back in the
// background, to the process that waits for it and holds the fewest; leases
// of calls still running are renewed before they expire, so a crashed
// process's slots come back within the TTL while a long call keeps its own.
//
// A Limiter also shares the endpoints' health between the replicas'
// Clients (amlpool.HealthSharer; WithoutHealth turns it off).
//
// Limiter is safe for concurrent use. Close it after the Clients that use it.
type Limiter struct {
	rdb      redis.UniversalClient
	cfg      config
	keys     keyspace
	proc     string // this process's id in Redis
	ctxAware bool   // the client's socket I/O honours ctx deadlines
	seq      atomic.Uint64

	wake   chan struct{} // buffered(1): the pump has work
	hwake  chan struct{} // buffered(1): health reports wait to be written
	retry  chan struct{} // buffered(1): the keeper must reschedule (fallback began)
	done   chan struct{} // closed by Close
	bg     context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup // every goroutine the Limiter starts
	pubsub *redis.PubSub

	// counters for Stats
	acquired, renewals, lost, fallbacks, failures, mismatches atomic.Int64
	roundTrips, handoffs, grants                              atomic.Int64
	subscribed                                                atomic.Bool  // grants can reach this process
	rtt                                                       atomic.Int64 // moving average, ns
	streak                                                    atomic.Int64 // Redis failures in a row (failed)
	failingSince                                              atomic.Int64 // unix ns of the first of them; 0 when none since the last success
	lastFailure                                               atomic.Int64 // unix ns of the last failure; 0 before any

	// hmu guards the Clients' health links and the reports waiting to be
	// written (health.go). When both are held, mu is taken first.
	hmu   sync.Mutex
	links []*healthLink
	hq    []healthReport

	// mu guards everything below.
	mu    sync.Mutex
	eps   map[string]*endpoint // by LimitedEndpoint.ID
	byKey map[string]*endpoint // by lease-set key, for grants
	seen  map[string]time.Time // ids of leases granted to us, when last heard of: each is taken once
	// releasing holds the ids of leases whose release round trip is under
	// way: a tick must not delete them, since the release may keep them.
	// True marks one that a tick may have added back to Redis after the
	// release deleted it there (the tick's script saw it missing): unless
	// the release kept it, the release deletes it again.
	releasing map[string]bool
	waiters   []*waiter          // oldest first
	hints     map[*endpoint]bool // endpoints that may have room since the pump's last pass
	hintAll   bool               // every waiter is worth a try
	held      int
	fallback  bool
	replicas  int // last seen in Redis; 0 until then
	// rejoin: after an outage, until then, FailStatic keeps this process
	// to its share of each cap, with replicas at least rejoinReplicas (the
	// count before the outage): the other replicas come back at their own
	// probes, and until each does, it holds its share outside Redis. The
	// count Redis gives meanwhile misses them, so rejoinReplicas also
	// floors the shares of a fallback (Redis gone again before they
	// returned) until Redis has counted the replicas after the window.
	// A process that was not in fallback rejoins too when it learns of an
	// outage (rejoinLocked).
	rejoin         time.Time
	rejoinReplicas int
	ticked         bool      // a tick has reached Redis: it holds this process's heartbeat
	pending        []removal // leases to delete from Redis at the next tick that reaches it
	closed         bool
}

// endpoint is what the Limiter knows of one endpoint.
type endpoint struct {
	id, name, key string
	want          string    // its want set's key
	health        string    // its health hash's key
	applied       int64     // the version of its shared health applied last; guarded by Limiter.mu
	used          time.Time // when a call last asked for it; guarded by Limiter.mu
	// owed counts slots this process should give up to processes that
	// hold fewer (handoff.go); asking says whether it is asking Redis.
	// Guarded by Limiter.mu.
	owed   int
	asking bool
	over   bool              // more leases in Redis than the cap, at the last tick
	trying int               // acquires under way that may take a lease on it; guarded by Limiter.mu
	limit  atomic.Int64      // as configured in this process
	held   map[string]*lease // by lease id; guarded by Limiter.mu
	seen   []int             // limits the fleet announces, when they disagree; guarded by Limiter.mu
}

// lease is one slot held by this process.
type lease struct {
	l   *Limiter
	ep  *endpoint
	idx int
	id  string

	// Guarded by Limiter.mu.
	remote   bool      // Redis has it, as far as we know
	sent     bool      // in a tick's batch: Redis may have it even while not remote (the tick's reply lost)
	renewed  time.Time // when Redis last got its expiry
	lost     bool      // counted in Stats.Lost already
	released bool
	// since is when Redis granted the lease to this process (acquired,
	// kept or granted): handoffs go on until WithHandoff's time has passed.
	// limit is its endpoint's limit then.
	since time.Time
	limit int64
}

type removal struct{ key, id string }

// New returns a Limiter that keeps its slots in Redis through client: a
// *redis.Client, a Sentinel failover client, a *redis.ClusterClient or a
// *redis.Ring. The Limiter never closes client.
//
// Every Redis round trip is bounded by WithTimeout (100 ms), whatever the
// client's own timeouts. Still, set the client up for a limiter: go-redis's
// defaults wait 5 s on a socket and retry three times. Recommended:
//
//	redis.Options{ContextTimeoutEnabled: true, DialTimeout: 250 * time.Millisecond,
//		ReadTimeout: 100 * time.Millisecond, WriteTimeout: 100 * time.Millisecond, MaxRetries: 1}
//
// Without ContextTimeoutEnabled a Redis call that times out is abandoned,
// not cancelled: its goroutine and connection stay busy until the client's
// ReadTimeout.
//
// New starts the Limiter's background work (heartbeat and renewal, the
// waiting pump, the subscription to grants and health news, the writer of
// health reports) and returns at once; it does not wait for Redis. It
// returns an *amlpool.ConfigError for a bad option.
func New(client redis.UniversalClient, opts ...Option) (*Limiter, error) {
	if client == nil {
		return nil, &amlpool.ConfigError{Field: "redislimit.New", Problem: "nil Redis client"}
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	l := &Limiter{
		rdb:       client,
		cfg:       cfg,
		keys:      newKeyspace(cfg.pool),
		proc:      strconv.FormatUint(cfg.rand(), 16),
		ctxAware:  honoursContext(client),
		wake:      make(chan struct{}, 1),
		hwake:     make(chan struct{}, 1),
		retry:     make(chan struct{}, 1),
		done:      make(chan struct{}),
		eps:       make(map[string]*endpoint),
		byKey:     make(map[string]*endpoint),
		seen:      make(map[string]time.Time),
		releasing: make(map[string]bool),
		hints:     make(map[*endpoint]bool),
	}
	l.bg, l.stop = context.WithCancel(context.Background())
	var channels []string
	if cfg.notify {
		channels = append(channels, l.keys.grant)
	}
	if cfg.health {
		channels = append(channels, l.keys.health)
		l.wg.Add(1)
		go l.writeHealth()
	}
	if len(channels) > 0 {
		l.pubsub = client.Subscribe(l.bg, channels...)
		l.wg.Add(1)
		go l.listen(l.pubsub)
	}
	l.wg.Add(2)
	go l.pump()
	go l.keep()
	return l, nil
}

// honoursContext reports whether client passes ctx deadlines to its sockets.
func honoursContext(c redis.UniversalClient) bool {
	switch c := c.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return c.Options().ContextTimeoutEnabled
	}
	return false
}

// Acquire implements amlpool.Limiter. It takes a lease on the first of
// candidates with room fleet-wide, in one Redis round trip. When all are
// full, the call waits in line behind this process's earlier waiting calls
// until a slot frees, ctx ends (ctx's error) or the Limiter is closed
// (amlpool.ErrClosed).
//
// When Redis fails, Acquire does not fail the call: the failure mode applies
// (FailStatic by default) until Redis is back. Under FailClosed the error
// wraps amlpool.ErrNoCapacity.
func (l *Limiter) Acquire(ctx context.Context, candidates []amlpool.LimitedEndpoint) (amlpool.Lease, error) {
	cands, queued, err := l.begin(ctx, "Acquire", candidates)
	if err != nil {
		return nil, err
	}
	if !queued {
		ls, err := l.try(ctx, cands, true)
		if err != nil {
			return nil, err
		}
		if ls != nil {
			return ls, nil
		}
	}

	w := &waiter{cands: cands, ready: make(chan struct{})}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, amlpool.ErrClosed
	}
	for i, ep := range cands {
		// A waiting call keeps its endpoints known, also one that a tick
		// forgot while the try above was under way: handoffs, grants and
		// the hints of releases find it by its live record.
		cands[i] = l.liveLocked(ep)
	}
	l.waiters = append(l.waiters, w)
	first := len(l.waiters) == 1
	l.mu.Unlock()
	if first {
		// A release may have come between the try above and now, and the
		// pump has no timer while nobody waits: start it.
		l.kickAll()
	}

	select {
	case <-w.ready:
		return w.result()
	case <-ctx.Done():
		err = ctx.Err()
	case <-l.done:
		err = amlpool.ErrClosed
	}
	l.mu.Lock()
	select {
	case <-w.ready:
		// Served while giving up: hand the lease back.
		l.mu.Unlock()
		if w.lease != nil {
			w.lease.Release()
		}
		return nil, err
	default:
	}
	l.removeWaiterLocked(w)
	l.mu.Unlock()
	return nil, err
}

// TryAcquire implements amlpool.TryAcquirer, for a Client that fails fast
// (amlpool.WithMaxWait(0)): it tries as Acquire does first, in one round
// trip, and returns nil, nil when every candidate is full fleet-wide or when
// calls of this process already wait in line (it never jumps the line).
func (l *Limiter) TryAcquire(ctx context.Context, candidates []amlpool.LimitedEndpoint) (amlpool.Lease, error) {
	cands, queued, err := l.begin(ctx, "TryAcquire", candidates)
	if err != nil || queued {
		return nil, err
	}
	ls, err := l.try(ctx, cands, false)
	if err != nil || ls == nil {
		return nil, err // never a typed nil in the interface
	}
	return ls, nil
}

// begin checks an acquisition named op and returns the Limiter's record of
// each candidate and whether calls of this process already wait in line.
func (l *Limiter) begin(ctx context.Context, op string, candidates []amlpool.LimitedEndpoint) ([]*endpoint, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	if len(candidates) == 0 {
		return nil, false, errors.New("redislimit: " + op + ": no candidate endpoints")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, false, amlpool.ErrClosed
	}
	return l.endpointsLocked(candidates), len(l.waiters) > 0, nil
}

// endpointsLocked returns the Limiter's record of each candidate, adding
// the ones it has not seen.
func (l *Limiter) endpointsLocked(cands []amlpool.LimitedEndpoint) []*endpoint {
	out := make([]*endpoint, len(cands))
	for i, c := range cands {
		ep := l.eps[c.ID]
		if ep == nil {
			ep = &endpoint{id: c.ID, name: c.Name, key: l.keys.endpoint(c.ID), want: l.keys.want(c.ID),
				health: l.keys.endpointHealth(c.ID), held: make(map[string]*lease)}
			l.eps[c.ID] = ep
			l.byKey[ep.key] = ep
		}
		ep.limit.Store(int64(c.Limit))
		ep.used = l.cfg.clock.Now()
		out[i] = ep
	}
	return out
}

// try takes a lease on one of cands if one is free now, in Redis or, in
// fallback, locally. It returns nil, nil when all are full; wait says that
// the caller will then wait, and Redis records that this process wants a
// slot on them.
func (l *Limiter) try(ctx context.Context, cands []*endpoint, wait bool) (*lease, error) {
	l.mu.Lock()
	fallback := l.fallback
	l.mu.Unlock()
	if !fallback {
		ls, err := l.tryRedis(ctx, cands, wait)
		if err == nil {
			return ls, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, amlpool.ErrClosed) {
			return nil, err
		}
		if !l.failed(err) {
			return nil, nil // not given up on Redis yet: wait and try again
		}
	}
	return l.tryLocal(cands)
}

// rejoinLocked starts, or lengthens, a rejoin window at now, when this
// process learns that Redis was out (before is the replica count it saw
// before): back from fallback, or not in fallback but with round trips
// failed since the last success, or with its heartbeat gone from Redis (a
// restart or a failover lost it). Other replicas may be in fallback,
// holding their shares outside Redis until their probes, however few calls
// this process made meanwhile; for a fleet that shares one
// WithProbeInterval every one of them has probed within two intervals.
func (l *Limiter) rejoinLocked(now time.Time, before int) {
	if l.cfg.mode != FailStatic {
		return
	}
	if end := now.Add(2 * l.cfg.probe); end.After(l.rejoin) {
		l.rejoin = end
	}
	l.rejoinReplicas = max(before, l.rejoinReplicas)
}

// rejoinLimitsLocked returns, for each of cands, the limit an acquire may
// use while the Limiter rejoins the fleet after an outage: the cap, or 0
// (no room) when this process already holds its share of it, counting the
// acquires under way there as held: each may take a lease.
func (l *Limiter) rejoinLimitsLocked(cands []*endpoint) []int64 {
	limits := make([]int64, len(cands))
	for i, ep := range cands {
		if len(ep.held)+ep.trying < l.rejoinShareLocked(ep) {
			limits[i] = ep.limit.Load()
		}
	}
	return limits
}

// rejoinShareLocked is what this process may hold of ep's cap while it
// rejoins the fleet.
func (l *Limiter) rejoinShareLocked(ep *endpoint) int {
	k := max(l.replicas, l.cfg.replicas, l.rejoinReplicas, 1)
	return (int(ep.limit.Load()) + k - 1) / k
}

// roomLocked reports whether this process may take one more lease on ep
// from Redis now: any time but in fallback, where it holds at most its share,
// or while it rejoins the fleet (FailStatic), where it holds at most its
// share too. Every lease that comes from Redis is checked as it comes (an
// acquire's reply, whatever the limits it was sent with; a grant; a lease
// kept at its release): so the process keeps to its share whatever was
// under way, or asked for, when it fell back or began to rejoin. (The
// acquires under way count only in the limits an acquire is sent with,
// rejoinLimitsLocked, so that Redis takes few leases that go back.)
func (l *Limiter) roomLocked(ep *endpoint) bool {
	share, ok := l.shareNowLocked(ep)
	return !ok || len(ep.held) < share
}

// shareNowLocked returns what this process may hold of ep's cap now, and
// whether that bounds it: in fallback and while it rejoins the fleet
// (FailStatic), not otherwise, when Redis's count of the fleet's leases does.
func (l *Limiter) shareNowLocked(ep *endpoint) (int, bool) {
	switch {
	case l.fallback:
		return l.shareLocked(ep), true
	case l.cfg.mode == FailStatic && l.cfg.clock.Now().Before(l.rejoin):
		return l.rejoinShareLocked(ep), true
	}
	return 0, false
}

// tryRedis runs the acquire script once. While the Limiter rejoins the
// fleet, or round trips fail (if this one succeeds, Redis is back from
// what may have been an outage, exec), it passes rejoinLimitsLocked's
// limits in place of the candidates' caps.
func (l *Limiter) tryRedis(ctx context.Context, cands []*endpoint, wait bool) (*lease, error) {
	// Close cuts the script short, waits for it, and only then says goodbye
	// to Redis, which deletes any lease the script took: one taken after the
	// goodbye would block its slot fleet-wide for a TTL. A script already
	// sent may still run after the goodbye: it finds the goodbye there and
	// takes nothing (goodbyeScript).
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, amlpool.ErrClosed
	}
	l.wg.Add(1) // under mu and not closed: never after Close began waiting
	// A heartbeat missing from Redis means an outage only once a tick has
	// written it before this script runs: a tick under way now may write
	// it after, and its reply come before this one's.
	ticked := l.ticked
	var limits []int64
	if l.cfg.mode == FailStatic && (l.cfg.clock.Now().Before(l.rejoin) || l.failingSince.Load() != 0) {
		limits = l.rejoinLimitsLocked(cands)
	}
	// Under way until its reply is in, when the lease it took, if any, is
	// held: the limits of acquires that begin meanwhile count it, on each
	// candidate it may take a lease on.
	var counted []*endpoint
	for i, ep := range cands {
		if limits == nil || limits[i] > 0 {
			ep.trying++
			counted = append(counted, ep)
		}
	}
	l.mu.Unlock()
	defer l.wg.Done()
	defer func() {
		if counted != nil { // no reply: it failed or closed
			l.mu.Lock()
			l.triedLocked(counted)
			l.mu.Unlock()
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(l.bg, cancel)()

	id := l.proc + ":" + strconv.FormatUint(l.seq.Add(1), 36)
	keys := make([]string, 2*len(cands)+2)
	args := make([]any, 0, 5+len(cands))
	args = append(args, id, l.cfg.ttl.Milliseconds())
	for i, ep := range cands {
		keys[i], keys[len(cands)+i] = ep.key, ep.want
		if limits != nil {
			args = append(args, limits[i])
		} else {
			args = append(args, ep.limit.Load())
		}
	}
	keys[2*len(cands)], keys[2*len(cands)+1] = l.keys.members, l.keys.done(l.proc)
	wantTTL := int64(0)
	if wait && limits == nil && l.subscribed.Load() {
		// Only once a grant can reach us: one sent earlier would hold its
		// slot unused until the next tick. Not while rejoining: a grant
		// would take this process past its share.
		wantTTL = l.wantTTL().Milliseconds()
	}
	args = append(args, l.proc, wantTTL, l.doneTTL().Milliseconds())
	sent := l.cfg.clock.Now()
	queueDeletion := func() {
		l.mu.Lock()
		for _, ep := range cands {
			l.pending = appendPending(l.pending, removal{ep.key, id})
		}
		l.mu.Unlock()
	}
	// The script may have run with its reply lost: delete the lease once
	// Redis answers again (or at Close), or let it expire. Not before the
	// client is done with the script: the deletion marks the lease id for
	// doneTTL, so that a run of the script that Redis makes after it takes
	// nothing, and only a copy sent before the mark, which Redis runs
	// within a TTL of its sending, is sure to find it there.
	res, err := l.evalThen(ctx, acquireScript, keys, args, queueDeletion)
	if l.bg.Err() != nil {
		if err == nil {
			// Its reply came as Close began: a lease it took is no call's.
			// Close's goodbye deletes it, also on an endpoint a tick forgot
			// while the script was under way, whose lease set only the
			// queued deletion names.
			queueDeletion()
		}
		return nil, amlpool.ErrClosed
	}
	if err != nil {
		return nil, err
	}
	reply, ok := res.([]any)
	if !ok || len(reply) != 4 {
		return nil, fmt.Errorf("redislimit: acquire script: unexpected reply %v", res)
	}
	i, ok1 := reply[0].(int64)
	replicas, ok2 := reply[2].(int64)
	gone, ok3 := reply[3].(int64)
	if !ok1 || !ok2 || !ok3 || i < 0 || int(i) > len(cands) {
		return nil, fmt.Errorf("redislimit: acquire script: unexpected reply %v", res)
	}
	l.mu.Lock()
	l.triedLocked(counted)
	counted = nil
	if gone == 1 && ticked {
		l.rejoinLocked(l.cfg.clock.Now(), l.replicas)
	}
	if replicas > 0 {
		// Every acquire refreshes the count, not only the tick: replicas
		// that start together see each other within a round trip.
		l.replicas = int(replicas)
		if !sent.Before(l.rejoin) {
			l.rejoinReplicas = 0 // counted after the rejoin window
		}
	}
	if i == 0 {
		l.mu.Unlock()
		return nil, nil
	}
	ep := cands[i-1]
	if cur := l.eps[ep.id]; cur != nil {
		ep = cur
	}
	now := l.cfg.clock.Now()
	if !l.roomLocked(ep) {
		// Sent with the cap before this process learnt of an outage (from
		// this reply or another round trip's), or with window limits that
		// leases taken since have overtaken (local ones, in a fallback that
		// other round trips began while this one was under way), it took
		// a lease that would take the process past its share: the lease
		// goes back, to a process that waits for it if one does.
		l.mu.Unlock()
		l.giveBack(ep, id)
		return nil, nil
	}
	ep = l.liveLocked(ep) // only now that it holds a lease: one given back leaves a forgotten endpoint forgotten
	ls := &lease{l: l, ep: ep, idx: int(i - 1), id: id, remote: true, renewed: now, since: now, limit: ep.limit.Load()}
	l.addLocked(ls)
	l.mu.Unlock()
	return ls, nil
}

// triedLocked ends the count of an acquire under way on eps.
func (l *Limiter) triedLocked(eps []*endpoint) {
	for _, ep := range eps {
		ep.trying--
	}
}

// tryLocal grants a lease from this process's share of a cap, for use while
// Redis is unreachable. Once Close has begun it grants none: Close forgets
// the leases it finds, and one taken after that would be held after Close.
func (l *Limiter) tryLocal(cands []*endpoint) (*lease, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, amlpool.ErrClosed
	}
	if l.cfg.mode == FailClosed {
		return nil, errUnavailable
	}
	for i, ep := range cands {
		if cur := l.eps[ep.id]; cur != nil {
			ep = cur // the live record, whose leases count against the share
		}
		if len(ep.held) < l.shareLocked(ep) {
			ep = l.liveLocked(ep) // only now: a candidate forgotten meanwhile, with no lease, stays forgotten
			ls := &lease{l: l, ep: ep, idx: i, id: l.proc + ":" + strconv.FormatUint(l.seq.Add(1), 36),
				since: l.cfg.clock.Now(), limit: ep.limit.Load()}
			l.addLocked(ls)
			return ls, nil
		}
	}
	return nil, nil
}

var errUnavailable = fmt.Errorf("redislimit: Redis unavailable and the failure mode is closed: %w", amlpool.ErrNoCapacity)

// shareLocked is what this process may hold of ep's cap in fallback.
func (l *Limiter) shareLocked(ep *endpoint) int {
	if l.cfg.mode == FailOpen {
		return int(ep.limit.Load())
	}
	k := max(l.replicas, l.cfg.replicas, l.rejoinReplicas)
	if k == 0 {
		// The fleet's size was never seen (Redis unreachable since New) and
		// WithExpectedReplicas was not given: any share could overload an
		// endpoint, so there is none until Redis answers.
		return 0
	}
	return (int(ep.limit.Load()) + k - 1) / k
}

// liveLocked returns the Limiter's record of ep's endpoint, which ep is
// unless a tick forgot ep while an acquire on it was under way (a round
// trip longer than three ticks, with a timeout longer than three renew
// intervals): then the record a later call made, or ep put back. A lease
// goes on the live record, whose leases every tick renews and Close
// deletes. Only a lease taken, or a call that waits, puts a forgotten
// endpoint back: a try that takes no lease on it leaves it forgotten.
func (l *Limiter) liveLocked(ep *endpoint) *endpoint {
	if cur := l.eps[ep.id]; cur != nil {
		return cur
	}
	l.eps[ep.id] = ep
	l.byKey[ep.key] = ep
	return ep
}

func (l *Limiter) addLocked(ls *lease) {
	ls.ep.held[ls.id] = ls
	l.held++
	l.acquired.Add(1)
}

func appendPending(p []removal, r removal) []removal {
	const maxPending = 10000 // past this, leases just expire
	if len(p) >= maxPending {
		return p
	}
	return append(p, r)
}

// Index implements amlpool.Lease.
func (ls *lease) Index() int { return ls.idx }

// Release implements amlpool.Lease: it hands the lease to a call of this
// process waiting for its endpoint (handoff) or forgets it at once and
// deletes it from Redis in the background. A lease Redis no longer had
// counts as lost.
func (ls *lease) Release() {
	l := ls.l
	l.mu.Lock()
	if ls.released {
		l.mu.Unlock()
		return
	}
	ls.released = true
	if l.handoffLocked(ls) {
		l.mu.Unlock()
		return
	}
	delete(ls.ep.held, ls.id)
	l.held--
	remote := ls.remote
	switch {
	case remote && (l.fallback || l.closed):
		// Deleted once Redis is back, or by Close.
		l.pending = appendPending(l.pending, removal{ls.ep.key, ls.id})
		remote = false
	case !remote && ls.sent:
		// Taken in fallback and written to Redis by a probe whose reply
		// was lost: deleted once Redis is back, or by Close.
		l.pending = appendPending(l.pending, removal{ls.ep.key, ls.id})
	}
	// A lease not handed on while calls here want it (its endpoint's cap
	// went down) goes back to Redis, which keeps it for them unless
	// another process that wants the endpoint holds fewer of its leases;
	// not past this process's share (roomLocked: rejoining).
	keep := remote && l.cfg.handoff > 0 && l.cfg.notify && !l.closed && l.wantedLocked(ls.ep) && l.roomLocked(ls.ep)
	if ls.ep.owed > 0 {
		ls.ep.owed-- // this one goes to a process that holds fewer
		keep = false
	}
	if remote {
		l.wg.Add(1) // under mu, so never after Close began waiting
		l.releasing[ls.id] = false
	}
	l.mu.Unlock()
	if !remote {
		l.kick(ls.ep)
		return
	}
	go func() {
		defer l.wg.Done()
		removed, outcome, err := l.remove(ls, keep)
		if l.cfg.onReleased != nil {
			l.cfg.onReleased()
		}
		l.mu.Lock()
		readded := l.releasing[ls.id]
		if err != nil || outcome != kept {
			delete(l.releasing, ls.id) // else adopt does, as it takes the lease
		}
		switch {
		case err != nil:
			// Delete it once Redis is back, or at Close.
			l.pending = appendPending(l.pending, removal{ls.ep.key, ls.id})
		case !removed && !ls.lost:
			ls.lost = true
			l.lost.Add(1)
		}
		l.mu.Unlock()
		if err != nil && l.bg.Err() == nil {
			l.failed(err)
		}
		if err == nil && outcome == kept {
			l.adopt(ls.ep, ls.id, false)
			return
		}
		if err == nil && readded {
			// A tick renewing it ran in Redis after this release: it is
			// there again, with no call on it.
			l.removeAll(l.bg, []removal{{ls.ep.key, ls.id}})
		}
		l.kick(ls.ep)
	}()
}
