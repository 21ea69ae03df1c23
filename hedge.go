package amlpool

import (
	"context"
	"errors"
	"runtime"
	"time"

	"github.com/amlpool/amlpool/internal/pool"
)

// errAbandoned is the cause given to the copy of an attempt that lost the
// race: the other copy answered first.
var errAbandoned = errors.New("amlpool: abandoned: the other copy answered first")

// hedger decides when an attempt gets a second copy (WithHedging,
// WithHedgingQuantile).
type hedger struct {
	delay  time.Duration  // fixed delay, when window is nil
	window *latencyWindow // the pool's latency quantile, when the delay follows it
	now    func() int64   // pool time (the Client's clock), for window
}

func newHedger(o *hedgingOption, now func() int64) *hedger {
	if o.byQuantile {
		return &hedger{window: newLatencyWindow(o.q), now: now}
	}
	return &hedger{delay: o.delay}
}

// after returns how long an attempt may go without a reply before it is
// hedged, or false for no hedge (the quantile is not known yet).
func (h *hedger) after() (time.Duration, bool) {
	if h.window == nil {
		return h.delay, true
	}
	d := h.window.quantile(h.now())
	return d, d > 0
}

// attemptHedged is attempt with hedging: once the attempt a has had no reply
// for delay, a second copy goes to another endpoint with a free slot. The
// first success wins; the other copy is cancelled, its slot released, and
// it counts as abandoned. When both fail, the first copy is the attempt:
// the call records and decides on it alone. The hedge is part of the
// attempt, not one more: it does not count towards the attempt cap, but its
// endpoint is marked tried so that a retry goes elsewhere. attemptHedged
// returns only once both copies have ended, so no goroutine or slot
// outlives the attempt; the telemetry hears of both then, from the calling
// goroutine. A copy that panics (a callback of the user's: a RoundTripper,
// a Credential, a Limiter) cancels the other and, once both have ended,
// panics the call with the same value, in the call's goroutine; one whose
// goroutine calls runtime.Goexit ends the call's goroutine so, likewise.
func (c *Client) attemptHedged(ctx context.Context, cl *call, first *attempt, body []byte, delay time.Duration) *attempt {
	// The copies go to goroutines: they live on the heap, so that the
	// caller's attempt need not.
	a := new(attempt)
	*a = *first
	copies := make(chan *attempt, 2)
	firstCtx, cancelFirst := context.WithCancelCause(ctx)
	defer cancelFirst(nil)
	go runCopy(a, copies, func() { c.exchange(firstCtx, a, body) })

	t := c.cfg.clock.NewTimer(delay)
	select {
	case <-copies:
		t.Stop()
		a.repanic()
		c.conclude(ctx, cl, a)
		return a
	case <-t.C():
	}
	hedgeCtx, cancelHedge := context.WithCancelCause(ctx)
	defer cancelHedge(nil)
	// With a Limiter the copy may have to wait for the fleet's slot: only
	// while the first copy is out. Once that has ended, failed or not, the
	// attempt is over and the call goes on without its copy. Nor does it
	// wait once a call waits for our slots: it would not be sent (they
	// come first), and holds one of ours meanwhile.
	wait, endWait := hedgeCtx, context.CancelFunc(nil)
	if c.limiter != nil {
		wait, endWait = context.WithCancel(hedgeCtx)
		defer endWait()
	}
	picked := false
	defer func() {
		if !picked && c.tel != nil {
			// startHedge panicked (a Balancer's Pick): the call panics on,
			// and its first copy, cancelled, is still told to the telemetry
			// as Stats counts it, its span ended (unless it panicked too,
			// and was told already).
			cancelFirst(nil)
			if f := <-copies; f.panicked == nil {
				c.tel.attemptDone(f)
			}
		}
	}()
	h := c.startHedge(hedgeCtx, wait, cl, a, body, copies)
	picked = true
	if h == nil {
		<-copies
		a.repanic()
		c.conclude(ctx, cl, a)
		return a
	}

	var queued <-chan struct{}
	if endWait != nil {
		queued = c.pool.Queued() // closed at once if a call has come to wait since startHedge looked
	}
	var winner, panicked *attempt
	for left := 2; left > 0; {
		var r *attempt
		select {
		case r = <-copies:
			left--
		case <-queued:
			endWait()
			queued = nil
			continue
		}
		if r == a && endWait != nil {
			endWait()
		}
		switch {
		case r.panicked != nil:
			// The call panics with it: the other copy is of no use.
			panicked = r
			cancelFirst(nil)
			cancelHedge(nil)
		case winner == nil && panicked == nil && r.slot.Ep != nil && r.err == nil:
			// The first success wins: the other copy is abandoned.
			winner = r
			cancelFirst(errAbandoned)
			cancelHedge(errAbandoned)
		}
	}
	if panicked != nil {
		// Once both copies are in: the one that did not panic, if it was
		// sent, is told to the telemetry as Stats counts it.
		for _, r := range [...]*attempt{a, h} {
			if r.panicked == nil && r.slot.Ep != nil {
				c.done(r)
			}
		}
		panicked.repanic()
	}
	ret, other := a, h
	if winner == h {
		ret, other = h, a
	}
	if h.slot.Ep != nil {
		cl.ex.Tried.Add(h.slot.Ep)
		cl.sent++ // a retry's resend count counts the copy too
		// After ret, and whatever ret's telemetry does: a MeterProvider's
		// instrument that panics for one copy leaves neither span open.
		defer c.done(other)
	}
	c.conclude(ctx, cl, ret)
	return ret
}

// startHedge sends the second copy of attempt a in a goroutine that reports
// to copies, and returns it; nil when it sends none. The copy goes to an
// endpoint the call has not tried with a free slot; it is not sent once the
// Client is closed, while calls wait for slots (they come first), when the
// retry budget is spent, when the first copy has answered (copies holds it:
// the timer fired as it came) or when the call's ctx has ended. With a
// Limiter, the copy waits for the fleet's slot until wait (ctx, or one
// shorter) ends, that is until the first copy ends, whatever it came to, or
// a call comes to wait for our slots (a wait SetEndpoints cuts short
// chooses again among the new endpoints), and is not sent if calls have
// come to wait for slots meanwhile; a copy that
// gets no slot in the end, or gives it up, reports with no endpoint and
// gives back the retry it took from the budget. It is sent under ctx.
func (c *Client) startHedge(ctx, wait context.Context, cl *call, a *attempt, body []byte, copies chan<- *attempt) *attempt {
	if c.closed.Load() || c.pool.Waiting() > 0 {
		return nil
	}
	hx := pool.Exclusion{On: true, Tried: cl.ex.Tried.Clone()}
	hx.Tried.Add(a.slot.Ep)
	slot, ok := c.pool.TryAcquire(&hx)
	if !ok {
		return nil
	}
	sent := false
	defer func() {
		if !sent {
			// Given back unsent, it serves the line (Release): also when
			// the logger panics as the retry budget refuses the copy.
			c.pool.Release(slot, &pool.Report{Result: pool.Unsent}, nil)
		}
	}()
	if ctx.Err() != nil || len(copies) > 0 || c.pool.Waiting() > 0 {
		// The call ended, or the first copy answered (it is in copies),
		// while its timer fired: a copy would be abandoned at once, an
		// attempt and a withdrawal from the budget for nothing. (Checked
		// after Waiting: a waiting call that took the slot the first copy
		// freed as it ended leaves the line after that end, and so after
		// ctx's and the reply's.) Or a call joined the line since Waiting
		// was read: the slot, taken without the line's lock, may be the
		// one a release freed for it and had yet to hand on.
		return nil
	}
	var spent int64
	if c.budget != nil {
		// Hedges and retries share the budget, so together they add at
		// most its share of extra load.
		if spent, ok = c.budget.spend(); !ok {
			if c.tel != nil {
				c.tel.hedgeRefused()
			}
			return nil
		}
	}
	// The copy resends the attempt's request: it comes after every
	// request the call sent, a's included (see call.sent).
	h := &attempt{n: a.n, hedge: true, resends: cl.sent}
	sent = true // the copy's goroutine has the slot
	go runCopy(h, copies, func() {
		if c.budget != nil {
			defer func() {
				if h.slot.Ep == nil {
					// Not sent: a hedge that gave up at the Limiter costs
					// nothing. (Given back before the copy reports, so
					// before the call goes on.)
					c.budget.refund(spent)
				}
			}()
		}
		got := attempt{slot: slot}
		if c.limiter != nil {
			// The copy's wait for the fleet's slot is a wait for a slot, in
			// amlpool.slot.wait.duration as a call's is (a Limiter that
			// panics included). Without a Limiter a copy takes a free
			// slot or is not sent: no wait.
			start := c.cfg.clock.Now()
			err := errPanicked // until the wait ends
			if c.tel != nil {
				defer func() {
					if err == errPanicked {
						c.tel.waited(c.cfg.clock.Now().Sub(start), err)
					}
				}()
			}
			err = c.hedgeFleetSlot(wait, &hx, &got)
			if c.tel != nil {
				h.slotWait = c.cfg.clock.Now().Sub(start)
				if err == nil {
					// An instrument that panics recording the wait: the
					// slot and the lease the copy holds go back.
					recorded := false
					defer func() {
						if !recorded {
							c.unwind(&got, holding)
						}
					}()
					c.tel.waited(h.slotWait, nil)
					recorded = true
				} else {
					c.tel.waited(h.slotWait, err)
				}
			}
			if err != nil {
				return
			}
			if wait.Err() != nil || c.pool.Waiting() > 0 {
				// The first copy ended, or calls came to wait for our
				// slots, while this one waited for the fleet's: it is not
				// sent, and its slot goes to the line.
				defer c.pool.Release(got.slot, &pool.Report{Result: pool.Unsent}, nil) // even if the lease's Release panics
				got.lease.Release()
				return
			}
		}
		h.slot, h.lease = got.slot, got.lease
		c.exchange(ctx, h, body)
	})
	return h
}

// hedgeFleetSlot waits, for a hedged copy holding got's slot, for the
// fleet's slot until wait ends (see startHedge), and leaves got holding
// the slot and the lease it ends with. Unless it returns nil, it holds
// neither: the error says why (ErrNoCapacity when SetEndpoints cut the
// wait short and no new endpoint has a free slot, or calls came to wait
// for ours).
func (c *Client) hedgeFleetSlot(wait context.Context, hx *pool.Exclusion, got *attempt) error {
	for {
		err := c.acquireShared(wait, hx, got.slot, c.limiter.Acquire, got)
		switch {
		case err == nil:
			return nil
		case err != errEndpointsChanged || wait.Err() != nil:
			return err
		case c.closed.Load():
			return ErrClosed
		case c.pool.Waiting() > 0:
			return ErrNoCapacity
		}
		// SetEndpoints cut the wait short (the slot went back): the copy
		// chooses again among the new endpoints, as a call does
		// (takeSlot), if one has a free slot for it.
		slot, ok := c.pool.TryAcquire(hx)
		if !ok {
			return ErrNoCapacity
		}
		*got = attempt{slot: slot}
	}
}

// runCopy runs send, the work of a copy of an attempt, a, in the copy's
// goroutine, and reports a to copies however send ends. A panic there (a
// callback of the user's: exchange has cleaned up after it) is stopped
// and kept in a.panicked, so that the call panics with it in its own
// goroutine (repanic), where the caller may recover it, and not in this
// one, where it would end the program. A runtime.Goexit there (a test's
// RoundTripper calling t.FailNow, say) is kept as goexit{}: the call's
// goroutine exits in turn, as it would have had the callback run in it,
// rather than take the copy for one that ended with a reply.
func runCopy(a *attempt, copies chan<- *attempt, send func()) {
	returned := false
	defer func() {
		if v := recover(); v != nil {
			a.panicked = v
		} else if !returned {
			a.panicked = goexit{}
		}
		copies <- a
	}()
	send()
	returned = true
}

// goexit is attempt.panicked for a copy whose goroutine called
// runtime.Goexit.
type goexit struct{}

// repanic panics with what a's goroutine panicked with, if it did, or
// calls runtime.Goexit if that goroutine did.
func (a *attempt) repanic() {
	switch a.panicked.(type) {
	case nil:
	case goexit:
		runtime.Goexit()
	default:
		panic(a.panicked)
	}
}
