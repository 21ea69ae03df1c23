package pool

import (
	"context"
	"time"
)

// The line of calls waiting for a slot, served by releases: a FIFO per
// priority, the highest first with aging (priority.go). Taking a slot is
// lock-free (a CAS on the endpoint's in-flight count) while no call waits.
// Once one waits, new calls queue behind it (no barging) and every release
// hands its slot on under the lock.

// Slot is a slot held on an endpoint: the right to send it one request.
type Slot struct {
	Ep *Endpoint
	// Probe: this attempt probes an endpoint whose ejection ended; its
	// outcome readmits the endpoint or ejects it again.
	Probe bool
}

type waiter struct {
	x     Exclusion
	ready chan struct{} // closed once slot is set, once shed, or once the Picker panicked for it
	slot  Slot
	shed  error // errOutranked when taken out of the line for a call of higher priority (shedLocked)
	// panicked holds what the Picker panicked with while picking for this
	// call, in whatever goroutine served the line: the call panics with it
	// in its own (Acquire).
	panicked any
	pri      int8   // its queue: priority − Low
	seq      uint64 // its arrival: the order of ties
	since    int64  // pool time it joined the line
	prev     *waiter
	next     *waiter
}

// err returns the error of a waiter whose ready channel is closed: nil
// when it was granted a slot. It panics, in the waiting call's goroutine,
// when the Picker panicked picking for the call.
func (w *waiter) err() error {
	if w.panicked != nil {
		panic(w.panicked)
	}
	if w.shed != nil {
		return w.shed
	}
	return nil
}

// TryAcquire takes a slot on an endpoint the Picker picks for an attempt
// with exclusion x, on the lowest tier with one free, or reports false when
// no usable endpoint has one free.
func (p *Pool) TryAcquire(x *Exclusion) (Slot, bool) {
	s := p.set.Load()
	// A Set of one tier is its own only tier: one turn of this loop, and
	// no call more than before tiers.
tiers:
	for _, t := range s.tiers {
		if len(t.Eps) == 1 && p.cfg.Balance != Custom {
			// Nothing to pick, and a take fails only when the endpoint is
			// full. Not reading the slots word before the take's CAS saves
			// fetching its cache line twice when other cores write it.
			if e := t.Eps[0]; t.usable(x, e) {
				if slot, ok := p.takeOn(s, e); ok {
					return slot, true
				}
			}
			continue
		}
		for range 4 {
			i := p.pick(t, x)
			if i < 0 || i >= len(t.Eps) {
				continue tiers
			}
			// This package's pickers pick usable endpoints by construction.
			if e := t.Eps[i]; p.cfg.Balance != Custom || t.usable(x, e) {
				if slot, ok := p.takeOn(s, e); ok {
					return slot, true
				}
			}
		}
		// The picks kept losing races for the slots they saw: take any.
		for _, e := range t.Eps {
			if t.usable(x, e) {
				if slot, ok := p.takeOn(s, e); ok {
					return slot, true
				}
			}
		}
	}
	return Slot{}, false
}

// TryTake takes a slot on e itself, if e is live, usable as far as health
// goes and has one free.
func (p *Pool) TryTake(e *Endpoint) (Slot, bool) {
	s := p.set.Load()
	if !s.admits(e) {
		return Slot{}, false
	}
	return p.takeOn(s, e)
}

// takeOn takes a slot on e, picked from s, and claims it: e must still be
// live (a removed endpoint takes no new attempt once Update has returned)
// and its health must still let the call in.
func (p *Pool) takeOn(s *Set, e *Endpoint) (Slot, bool) {
	n, ok := e.take()
	if !ok {
		return Slot{}, false
	}
	// After the take: Update stores a lower cap before it returns, so a
	// take that comes after that sees it here, even one that read the old
	// cap before its swap. A removed endpoint's mark is in the word take
	// swaps: a take after it fails, and one before it is an attempt that
	// Update counted in flight there, which goes ahead.
	if n > e.limit.Load() {
		p.untake(e)
		return Slot{}, false
	}
	if e.health.state.Load() == phaseHealthy {
		return Slot{Ep: e}, true // the usual case: no lock
	}
	probe, ok := p.claim(s, e)
	if !ok {
		p.untake(e)
		return Slot{}, false
	}
	return Slot{Ep: e, Probe: probe}, true
}

// Acquire takes a slot for an attempt with exclusion x, waiting in line at
// ctx's priority (WithPriority) when none is free. maxWait < 0 means wait
// as long as ctx allows; 0 means do not wait. It returns ctx's error,
// ErrNoCapacity when maxWait passes, an error matching ErrShed when the
// line is full (Config.MaxWaiting), or ErrClosed.
func (p *Pool) Acquire(ctx context.Context, x *Exclusion, maxWait time.Duration) (Slot, error) {
	if err := ctx.Err(); err != nil {
		return Slot{}, err
	}
	if maxWait == 0 || p.nwait.Load() == 0 {
		if slot, ok := p.TryAcquire(x); ok {
			return slot, nil
		}
		if maxWait == 0 {
			return Slot{}, ErrNoCapacity
		}
	}

	w, err := p.enqueue(x, PriorityOf(ctx))
	if err != nil {
		return Slot{}, err
	}
	if p.OnQueue != nil {
		p.OnQueue()
	}

	var timeout <-chan time.Time
	if maxWait > 0 {
		t := p.cfg.Clock.NewTimer(maxWait)
		defer t.Stop()
		timeout = t.C()
	}
	select {
	case <-w.ready:
		return w.slot, w.err()
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
		// Granted, shed, or its pick panicked, while giving up. A late
		// grant still serves a call whose only problem was the max wait;
		// otherwise hand the slot on.
		p.mu.Unlock()
		if werr := w.err(); werr != nil {
			return Slot{}, werr
		}
		if err == ErrNoCapacity {
			return w.slot, nil
		}
		p.Release(w.slot, &Report{Result: Unsent}, nil)
		return Slot{}, err
	default:
	}
	p.removeLocked(w)
	p.mu.Unlock()
	return Slot{}, err
}

// enqueue puts a call of priority pri at the end of its queue and serves
// the line, which serves the call at once if a slot it may use is free and
// no one ahead wants it. A line over MaxWaiting then sheds a call: one of
// lower priority, or this one (ErrShed).
func (p *Pool) enqueue(x *Exclusion, pri int8) (*waiter, error) {
	since := p.Nanotime()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	p.arrivals++
	w := &waiter{x: *x, ready: make(chan struct{}), pri: pri - Low, seq: p.arrivals, since: since}
	p.pushLocked(w)
	p.grantLocked()
	if p.queued != nil && p.nwait.Load() > 0 {
		close(p.queued)
		p.queued = nil
	}
	if n := p.cfg.MaxWaiting; n > 0 && int(p.nwait.Load()) > n {
		if err := p.shedLocked(w); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// closedChan is a channel closed from the start.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// Queued returns a channel that is closed once a call waits in the line:
// at once if one waits now, else when a call joins the line and is not
// served at once. Something that holds a slot it does not need, and gives
// it up to waiting calls (a hedge waiting for a Limiter's slot), watches it.
func (p *Pool) Queued() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nwait.Load() > 0 {
		return closedChan
	}
	if p.queued == nil {
		p.queued = make(chan struct{})
	}
	return p.queued
}

func (p *Pool) pushLocked(w *waiter) {
	p.nwait.Add(1)
	q := &p.queues[w.pri]
	if q.tail == nil {
		q.head, q.tail = w, w
		return
	}
	w.prev, q.tail.next, q.tail = q.tail, w, w
}

func (p *Pool) removeLocked(w *waiter) {
	if p.nwait.Add(-1) == 0 {
		p.shedding = false
	}
	q := &p.queues[w.pri]
	if w.prev == nil {
		q.head = w.next
	} else {
		w.prev.next = w.next
	}
	if w.next == nil {
		q.tail = w.prev
	} else {
		w.next.prev = w.prev
	}
	w.prev, w.next = nil, nil
}

// grantLocked gives free slots to waiting calls in the line's order: the
// highest rank first, first come first served within a rank (first). A
// waiter's exclusion holds only while an endpoint outside it may take
// calls: one whose untried endpoints all left rotation since it joined the
// line may use those it tried. A waiter that may use every endpoint and
// finds none free ends the pass: nobody behind it can be served either.
//
// A Picker that panics picking for a waiter ends that waiter's wait: it
// leaves the line and panics with the same value in its own goroutine
// (Acquire), as it would have had it picked itself; the pass goes on with
// the others. So the panic reaches the caller whose call it was, and never
// the goroutine that serves the line (a release of another call, Update,
// Run), and a freed slot is not left unserved.
func (p *Pool) grantLocked() {
	var cur [numPriorities]*waiter
	fronts := 0
	for i := range p.queues {
		if cur[i] = p.queues[i].head; cur[i] != nil {
			fronts++
		}
	}
	var now int64
	if fronts > 1 {
		now = p.Nanotime() // ranks matter only between queues
	}
	for {
		w := p.first(&cur, now)
		if w == nil {
			return
		}
		cur[w.pri] = w.next
		slot, ok, wide := p.serve(w)
		switch {
		case ok || w.panicked != nil:
			w.slot = slot
			p.removeLocked(w)
			close(w.ready)
		case wide:
			return
		}
	}
}

// serve looks for a free slot for w. wide reports whether w's pick could
// use every endpoint (its exclusion was off or had lapsed). A Picker's
// panic is kept in w.panicked, with no slot taken (a pick takes none):
// a custom Picker's, and a built-in one's too, which only a bug of this
// package's could cause, since the goroutine serving the line may be Run's,
// where a panic ends the program. (The recover costs nothing measurable:
// serve runs under the line's lock, once per waiter served.)
func (p *Pool) serve(w *waiter) (slot Slot, ok, wide bool) {
	defer func() {
		if r := recover(); r != nil {
			w.panicked, slot, ok = r, Slot{}, false
		}
	}()
	x := &w.x
	slot, ok = p.TryAcquire(x)
	if !ok && x.On && !p.set.Load().UsableOutside(&x.Tried) {
		// Every endpoint the call has not tried left rotation (or the
		// Set) since it joined the line: it may use those it tried.
		all := *x
		all.On = false
		x = &all
		slot, ok = p.TryAcquire(x)
	}
	return slot, ok, !x.On
}

// kick serves waiting calls; call it whenever slots may have become usable
// (a release, a higher limit, an endpoint back from ejection, a new Set).
func (p *Pool) kick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.grantLocked()
}

// Waiting returns how many calls wait for a slot.
func (p *Pool) Waiting() int { return int(p.nwait.Load()) }
