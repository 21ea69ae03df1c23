package amlpool

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"time"

	"github.com/amlpool/amlpool/internal/clock"
)

// Limiter is a gate shared beyond one process: redislimit's, for example,
// keeps each endpoint's slots in Redis so that many replicas together never
// exceed its cap. A Client consults it after taking one of its own slots, so a
// process never has more calls waiting at the Limiter than an endpoint's cap.
//
// Implementations must be safe for concurrent use.
type Limiter interface {
	// Acquire blocks until it holds a slot on one of candidates, preferring
	// earlier ones, or until ctx ends (then it returns ctx's error, or another
	// error when the Limiter cannot decide; the call then fails with it).
	Acquire(ctx context.Context, candidates []LimitedEndpoint) (Lease, error)
}

// TryAcquirer is implemented by a Limiter that can take a slot without
// waiting. A Client with WithMaxWait(0) (fail fast) calls TryAcquire instead
// of Acquire, and fails with ErrNoCapacity when it returns no lease; a
// Limiter without it makes such a Client wait at Acquire as long as ctx allows.
type TryAcquirer interface {
	// TryAcquire takes a slot on the first of candidates with room now, as
	// Acquire would, or returns nil, nil at once when all are full.
	TryAcquire(ctx context.Context, candidates []LimitedEndpoint) (Lease, error)
}

// LimitedEndpoint names an endpoint to a Limiter.
type LimitedEndpoint struct {
	// ID is stable across processes that configure the same URL: the first
	// 16 hex digits of the URL's SHA-256. It never contains the key.
	ID    string
	Name  string // the endpoint's Name, for logs
	Limit int    // its configured MaxConcurrentCalls
}

// Lease is a slot held at a Limiter.
type Lease interface {
	// Index is the position, in the candidates given to Acquire, of the
	// endpoint whose slot this is.
	Index() int
	// Release gives the slot back. It is called exactly once, must not block
	// for long, and must be safe to call from any goroutine.
	Release()
}

func endpointID(url string) string {
	sum := sha256.Sum256([]byte(url))
	return hex.EncodeToString(sum[:8])
}

// pool is the in-process gate: one slot counter per endpoint and one FIFO
// line of calls waiting for any slot they may use.
//
// Taking a slot is lock-free (a CAS on the endpoint's in-flight count) while no
// call waits. Once one waits, new calls queue behind it (no barging) and every
// release hands its slot on under the lock.
type pool struct {
	eps   []*endpoint
	cum   []int32  // cum[i]: sum of eps[:i+1] caps, for drawing a slot by cap
	slots []uint32 // slots[s]: endpoint<<8 | offset of slot s in it; nil for huge pools
	total int32    // cum[len-1]
	bal   Balancer
	// builtin: bal is one of ours, whose picks are usable by construction,
	// so tryAcquire need not check them again.
	builtin bool
	random  bool // bal is Random(): tryAcquire calls pickRandom directly
	rand    func() uint64
	clock   clock.Clock
	epoch   time.Time     // pool time zero, for nanotime
	done    chan struct{} // closed by close

	// nwait counts calls in the waiters list or about to enter it. A release
	// reads it after freeing its slot; a caller raises it before looking for a
	// free slot under mu. So either the caller sees the free slot or the
	// releaser sees the caller (both are sequentially consistent atomics).
	nwait atomic.Int32

	// mu guards waiters and closed.
	mu      sync.Mutex
	waiters list.List // of *waiter, oldest first
	closed  bool

	onQueue func() // test hook: a call has joined the line

	health *health // endpoint health, set by New; nil in tests of the pool alone
}

type waiter struct {
	ex    exclusion
	elem  *list.Element
	ready chan struct{} // closed once ep is set
	ep    *endpoint
}

// maxSlotTable bounds the slot table: 4 MiB, enough for 5,000 endpoints of
// 200 slots.
const maxSlotTable = 1 << 20

func newPool(eps []*endpoint, bal Balancer, rnd func() uint64, clk clock.Clock) *pool {
	p := &pool{eps: eps, cum: make([]int32, len(eps)), bal: bal, rand: rnd, clock: clk, epoch: clk.Now(), done: make(chan struct{})}
	switch bal.(type) {
	case randomBalancer:
		p.builtin, p.random = true, true
	case leastLoaded, latencyAware:
		p.builtin = true
	}
	for i, ep := range eps {
		p.total += ep.max
		p.cum[i] = p.total
	}
	if p.total <= maxSlotTable {
		p.slots = make([]uint32, 0, p.total)
		for i, ep := range eps {
			for off := range uint32(ep.max) {
				p.slots = append(p.slots, uint32(i)<<8|off)
			}
		}
	}
	return p
}

// nanotime returns the pool's monotonic time in nanoseconds: cheap to store
// in an atomic, unlike a time.Time. LatencyAware reads it on every pick, so
// with the real clock it reads only the monotonic clock (time.Since), which
// costs a quarter of time.Now.
func (p *pool) nanotime() int64 {
	if p.clock == clock.Real {
		return int64(time.Since(p.epoch))
	}
	return p.nanotimeAt(p.clock.Now())
}

// nanotimeAt returns t in pool time.
func (p *pool) nanotimeAt(t time.Time) int64 { return int64(t.Sub(p.epoch)) }

// take claims one slot of e if it has one free.
func (e *endpoint) take() bool {
	for {
		n := e.inFlight.Load()
		if n >= e.limit.Load() {
			return false
		}
		if e.inFlight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// usable reports whether an attempt with exclusion x may go to ep now: not
// an endpoint it avoids, not ejected (unless too many are: see
// health.panicking), not cooling down.
func (p *pool) usable(x *exclusion, ep *endpoint) bool {
	return !x.excluded(ep.idx) && (p.health == nil || p.health.admits(ep.idx))
}

// tryAcquire takes a slot on an endpoint the balancer picks, or returns nil
// when no usable endpoint has one.
func (p *pool) tryAcquire(x *exclusion) *endpoint {
	for range 4 {
		var i int
		if p.random {
			i = p.pickRandom(x)
		} else {
			i = p.bal.Pick(Candidates{p: p, x: *x})
		}
		if i < 0 || i >= len(p.eps) {
			return nil
		}
		if ep := p.eps[i]; (p.builtin || p.usable(x, ep)) && ep.take() {
			return ep
		}
	}
	// The picks kept losing races for the slots they saw: take any.
	for _, ep := range p.eps {
		if p.usable(x, ep) && ep.take() {
			return ep
		}
	}
	return nil
}

// acquire takes a slot for an attempt that may not use x, waiting in line
// when none is free. maxWait < 0 means wait as long as ctx allows; 0 means do
// not wait.
func (p *pool) acquire(ctx context.Context, x *exclusion, maxWait time.Duration) (*endpoint, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if maxWait == 0 || p.nwait.Load() == 0 {
		if ep := p.tryAcquire(x); ep != nil {
			return ep, nil
		}
		if maxWait == 0 {
			return nil, ErrNoCapacity
		}
	}

	w, err := p.enqueue(x)
	if err != nil {
		return nil, err
	}
	if p.onQueue != nil {
		p.onQueue()
	}

	var timeout <-chan time.Time
	if maxWait > 0 {
		t := p.clock.NewTimer(maxWait)
		defer t.Stop()
		timeout = t.C()
	}
	select {
	case <-w.ready:
		return w.ep, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timeout:
		err = ErrNoCapacity
	case <-p.done:
		err = ErrClosed
	}

	p.mu.Lock()
	select {
	case <-w.ready:
		// Granted while giving up. A late grant still serves a call whose
		// only problem was the max wait; otherwise hand the slot on.
		p.mu.Unlock()
		if err == ErrNoCapacity {
			return w.ep, nil
		}
		p.release(w.ep)
		return nil, err
	default:
	}
	p.waiters.Remove(w.elem)
	p.nwait.Add(-1)
	p.mu.Unlock()
	return nil, err
}

// enqueue puts a call at the end of the line and serves the line, which
// serves the call at once if a slot it may use is free and no one ahead wants
// it. The lock is released even if a Balancer panics; the call then leaves
// the line (with any slot it was granted) before the panic goes on.
func (p *pool) enqueue(x *exclusion) (w *waiter, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	p.nwait.Add(1)
	w = &waiter{ex: *x, ready: make(chan struct{})}
	w.elem = p.waiters.PushBack(w)
	defer func() {
		if r := recover(); r != nil {
			select {
			case <-w.ready:
				w.ep.inFlight.Add(-1)
			default:
				p.waiters.Remove(w.elem)
				p.nwait.Add(-1)
			}
			panic(r)
		}
	}()
	p.grantLocked()
	return w, nil
}

// grantLocked gives free slots to waiting calls, oldest first. A waiter that
// may use every endpoint and finds none free ends the pass: nobody behind it
// can be served either.
func (p *pool) grantLocked() {
	for e := p.waiters.Front(); e != nil; {
		next := e.Next()
		w := e.Value.(*waiter)
		if ep := p.tryAcquire(&w.ex); ep != nil {
			w.ep = ep
			close(w.ready)
			p.waiters.Remove(e)
			p.nwait.Add(-1)
		} else if !w.ex.restricted() {
			return
		}
		e = next
	}
}

// release gives back a slot taken by acquire and serves waiting calls.
func (p *pool) release(ep *endpoint) {
	if ep.inFlight.Add(-1) < 0 {
		panic("amlpool: released more than held")
	}
	if p.nwait.Load() > 0 {
		p.kick()
	}
}

// kick serves waiting calls; call it whenever slots may have become usable
// (a release, a higher limit, an endpoint back from ejection).
func (p *pool) kick() {
	p.mu.Lock()
	defer p.mu.Unlock() // also when a Balancer panics
	p.grantLocked()
}

// close fails every waiting and future acquire with ErrClosed.
func (p *pool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.done)
	}
}

// waiting returns how many calls wait for a slot.
func (p *pool) waiting() int { return int(p.nwait.Load()) }
