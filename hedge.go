package amlpool

import (
	"context"
	"errors"
	"slices"
	"time"
)

// errAbandoned is the cause given to the copy of an attempt that lost the
// race: the other copy answered first.
var errAbandoned = errors.New("amlpool: abandoned: the other copy answered first")

// hedger decides when an attempt gets a second copy (WithHedging,
// WithHedgingQuantile).
type hedger struct {
	delay  time.Duration  // fixed delay, when window is nil
	window *latencyWindow // the pool's latency quantile, when the delay follows it
}

// after returns how long an attempt may go without a reply before it is
// hedged, or false for no hedge (the quantile is not known yet).
func (h *hedger) after() (time.Duration, bool) {
	if h.window == nil {
		return h.delay, true
	}
	d := h.window.quantile()
	return d, d > 0
}

// copyResult is what one copy of an attempt came to.
type copyResult struct {
	hedge bool // the second copy, not the first
	sent  bool // false when the second copy got no slot in the end
	data  []byte
	o     outcome
}

// attemptHedged is attempt, plus hedging when it is on: once the attempt on
// ep has had no reply for the hedge delay, a second copy goes to another
// endpoint with a free slot. The first success wins; the other copy is
// cancelled, its slot released, and its outcome marked abandoned. When both
// fail, the first copy's outcome is the attempt's: the call records and
// decides on it alone. The hedge is part of the attempt, not one more: it
// does not count towards the attempt cap, but its endpoint is marked tried
// so that a retry goes elsewhere. attemptHedged returns only once both copies
// have ended, so no goroutine or slot outlives the attempt; the observers
// hear of both copies then, from the calling goroutine.
func (c *Client) attemptHedged(ctx context.Context, cl *call, ep *endpoint, lease Lease, body []byte, probe bool) ([]byte, outcome) {
	if c.hedge == nil || len(c.eps) < 2 {
		return c.attempt(ctx, cl, ep, lease, body, probe)
	}
	delay, ok := c.hedge.after()
	if !ok {
		return c.attempt(ctx, cl, ep, lease, body, probe)
	}

	results := make(chan copyResult, 2)
	firstCtx, cancelFirst := context.WithCancelCause(ctx)
	defer cancelFirst(nil)
	first := outcome{ep: ep, attempt: cl.attempts, probe: probe, reason: cl.reason, slotWait: cl.wait}
	go func() {
		o := first
		data := c.exchange(firstCtx, &o, lease, body)
		results <- copyResult{sent: true, data: data, o: o}
	}()

	t := c.cfg.clock.NewTimer(delay)
	select {
	case r := <-results:
		t.Stop()
		c.conclude(ctx, cl, &r.o)
		return r.data, r.o
	case <-t.C():
	}
	hedgeCtx, cancelHedge := context.WithCancelCause(ctx)
	defer cancelHedge(nil)
	if !c.startHedge(hedgeCtx, cl, ep, body, results) {
		r := <-results
		c.conclude(ctx, cl, &r.o)
		return r.data, r.o
	}

	var firstRes, hedgeRes copyResult
	won, hedgeWon := false, false
	for range 2 {
		r := <-results
		if r.hedge {
			hedgeRes = r
		} else {
			firstRes = r
		}
		if !won && r.sent && r.o.err == nil {
			// The first success wins: the other copy is abandoned.
			won, hedgeWon = true, r.hedge
			cancelFirst(errAbandoned)
			cancelHedge(errAbandoned)
		}
	}
	if hedgeRes.sent && !cl.ex.tried.has(hedgeRes.o.ep.idx) {
		cl.ex.tried.add(hedgeRes.o.ep.idx)
		cl.ntried++
	}
	ret, other := &firstRes, &hedgeRes
	if hedgeWon {
		ret, other = &hedgeRes, &firstRes
	}
	if other.sent {
		c.notify(&other.o)
	}
	c.conclude(ctx, cl, &ret.o)
	return ret.data, ret.o
}

// startHedge sends the second copy of an attempt on ep, in a goroutine that
// reports to results, and reports whether it did. The copy goes to an
// endpoint the call has not tried with a free slot; it is not sent while
// calls wait for slots (they come first) or when the retry budget is spent.
// With a Limiter, the copy waits for the fleet's slot until ctx ends, that
// is until the first copy answers.
func (c *Client) startHedge(ctx context.Context, cl *call, ep *endpoint, body []byte, results chan<- copyResult) bool {
	if c.pool.nwait.Load() > 0 {
		return false
	}
	hx := exclusion{on: true, tried: cl.ex.tried.clone()}
	hx.tried.add(ep.idx)
	hep := c.pool.tryAcquire(&hx)
	if hep == nil {
		return false
	}
	if !c.hedgeAllowed() {
		c.pool.release(hep)
		return false
	}
	attempt := cl.attempts
	go func() {
		ep, lease := hep, Lease(nil)
		if c.limiter != nil {
			var err error
			hcl := call{ex: hx}
			if ep, lease, err = c.acquireShared(ctx, &hcl, hep, c.limiter.Acquire); err != nil {
				results <- copyResult{hedge: true}
				return
			}
		}
		probe, ok := c.health.claim(ep.idx)
		if !ok {
			c.releaseSlot(ep, lease)
			results <- copyResult{hedge: true}
			return
		}
		o := outcome{ep: ep, attempt: attempt, probe: probe, hedge: true}
		data := c.exchange(ctx, &o, lease, body)
		results <- copyResult{hedge: true, sent: true, data: data, o: o}
	}()
	return true
}

// hedgeAllowed spends one retry from the retry budget, when there is one, and
// reports whether it could: hedges and retries share the budget, so together
// they add at most its share of extra load.
func (c *Client) hedgeAllowed() bool { return c.budget == nil || c.budget.withdraw() }

// clone returns a copy of b that shares no memory with it.
func (b bitset) clone() bitset {
	b.hi = slices.Clone(b.hi)
	return b
}
