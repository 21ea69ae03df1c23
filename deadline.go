package amlpool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Attempt deadlines. Every attempt is bounded by WithAttemptTimeout, apart
// from the call's ctx. When that ctx would not end the attempt first,
// context.WithTimeout made a context and a runtime timer per attempt: four
// allocations and the timer heap's locking, about a twentieth of a call's
// CPU on loopback. Instead one timer per Client ends the attempts whose
// deadline passed. The attempts all get the same timeout, so a list in the
// order they started is in the order of their deadlines: the timer waits
// for the oldest, and a finished attempt unlinks itself from anywhere.
//
// An attempt's context is a small value of its own (net/http may read its
// values after the attempt, from a dial it started, so it is never reused),
// over a cancellable context that is reused while nothing cancelled it. A
// caller's ctx that can end is followed with context.AfterFunc.

// deadlines bounds the attempts of one Client.
type deadlines struct {
	timeout time.Duration
	pool    sync.Pool // of *attemptCancel not cancelled
	timer   *time.Timer

	// mu guards the list of attempts in flight, the list fields of each,
	// and armed.
	mu         sync.Mutex
	head, tail *attemptCtx // oldest first
	armed      bool        // timer will fire
}

func newDeadlines(timeout time.Duration) *deadlines {
	d := &deadlines{timeout: timeout}
	d.timer = time.AfterFunc(time.Hour, d.fire)
	d.timer.Stop()
	return d
}

// attemptCancel is the reusable part of an attempt's context: a context
// of Background's that the deadline or the caller's ctx cancels.
type attemptCancel struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	follow func()          // cancels ctx with caller's cause; bound once
	caller context.Context // for follow: the ctx it follows now
}

// attemptCtx is the context of one attempt: Done, Err and the cancellation
// tree are its attemptCancel's; Value is the caller's ctx's (a trace's
// span, an httptrace hook), apart from the key by which a context derived
// from it (net/http derives one) joins the cancellation tree without a
// goroutine of its own. It never changes once made.
type attemptCtx struct {
	c        *attemptCancel
	caller   context.Context
	deadline time.Time
	stop     func() bool // stops following caller; nil when caller cannot end

	// Guarded by deadlines.mu.
	prev, next *attemptCtx
	listed     bool
}

var _ context.Context = (*attemptCtx)(nil)

func (a *attemptCtx) Deadline() (time.Time, bool) { return a.deadline, true }
func (a *attemptCtx) Done() <-chan struct{}       { return a.c.ctx.Done() }

// Err is context.DeadlineExceeded once the timeout ended the attempt, as
// for a context of context.WithTimeout; a context derived from this one
// has context.Canceled for its Err and DeadlineExceeded for its cause.
func (a *attemptCtx) Err() error {
	err := a.c.ctx.Err()
	if err != nil && context.Cause(a.c.ctx) == context.DeadlineExceeded {
		return context.DeadlineExceeded
	}
	return err
}

func (a *attemptCtx) Value(key any) any {
	if v := a.c.ctx.Value(key); v != nil {
		return v
	}
	return a.caller.Value(key)
}

// start returns the context of an attempt made under ctx: ended by ctx, or
// by the timeout, whichever comes first. finish must follow.
func (d *deadlines) start(ctx context.Context) *attemptCtx {
	c, _ := d.pool.Get().(*attemptCancel)
	if c == nil {
		c = &attemptCancel{}
		c.ctx, c.cancel = context.WithCancelCause(context.Background())
		c.follow = func() { c.cancel(context.Cause(c.caller)) }
	}
	a := &attemptCtx{c: c, caller: ctx, deadline: time.Now().Add(d.timeout)}
	d.mu.Lock()
	a.prev, a.listed = d.tail, true
	if d.tail == nil {
		d.head = a
	} else {
		d.tail.next = a
	}
	d.tail = a
	if !d.armed {
		d.armed = true
		d.timer.Reset(d.timeout)
	}
	d.mu.Unlock()
	if ctx.Done() != nil {
		c.caller = ctx
		a.stop = context.AfterFunc(ctx, c.follow)
	}
	return a
}

// finish ends a's attempt. Its cancellable part is kept for another when
// nothing cancelled it, nor can any more.
func (d *deadlines) finish(a *attemptCtx) {
	reuse := true
	if a.stop != nil {
		reuse = a.stop() // false: follow ran, or runs now
	}
	d.mu.Lock()
	if a.listed {
		d.unlinkLocked(a)
	} else {
		reuse = false // fire took it out: the deadline passed
	}
	d.mu.Unlock()
	if c := a.c; reuse && c.ctx.Err() == nil {
		c.caller = nil // not while follow may run: it reads caller
		d.pool.Put(c)
	}
}

func (d *deadlines) unlinkLocked(a *attemptCtx) {
	if a.prev == nil {
		d.head = a.next
	} else {
		a.prev.next = a.next
	}
	if a.next == nil {
		d.tail = a.prev
	} else {
		a.next.prev = a.prev
	}
	a.prev, a.next, a.listed = nil, nil, false
}

// fire cancels the attempts whose deadline passed and sets the timer for
// the oldest one left. While attempts end in time the timer fires about
// once per timeout: at a deadline whose attempt already ended, it finds
// nothing to do and waits for the oldest one in flight.
func (d *deadlines) fire() {
	now := time.Now()
	var due []*attemptCtx
	d.mu.Lock()
	for a := d.head; a != nil && !a.deadline.After(now); a = d.head {
		d.unlinkLocked(a)
		due = append(due, a)
	}
	d.armed = d.head != nil
	if d.armed {
		d.timer.Reset(d.head.deadline.Sub(now))
	}
	d.mu.Unlock()
	for _, a := range due {
		a.c.cancel(context.DeadlineExceeded)
	}
}

// timedOut is err, of an attempt its timeout ended, matching
// context.DeadlineExceeded whatever net/http made of the cancellation.
func timedOut(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
}
