package redislimit

import (
	"slices"
	"time"

	"github.com/amlpool/amlpool/internal/clock"
)

// Waiting when the fleet is full: calls queue in this process, oldest first,
// and one pump goroutine tries for them. It wakes when a call starts to
// wait, when this process releases a slot, when another process publishes a
// release on a full endpoint, and otherwise after a jittered backoff
// doubling from WithBackoff's min to its max. So a full fleet costs each
// process at most one script per endpoint per backoff, never a hot loop.

// waiter is one Acquire waiting for a lease.
type waiter struct {
	cands []*endpoint
	ready chan struct{} // closed once lease or err is set
	lease *lease
	err   error
}

func (w *waiter) result() (*lease, error) {
	if w.err != nil {
		return nil, w.err
	}
	return w.lease, nil
}

// pump serves waiting calls until Close. A wake-up for some endpoints (a
// release here or elsewhere) tries only the calls that may use them; the
// backoff timer, armed while calls wait, tries them all. Wake-ups do not
// postpone the timer, so a slot freed by an expiry, which nobody announces,
// is found within the backoff.
func (l *Limiter) pump() {
	defer l.wg.Done()
	var t clock.Timer
	var tc <-chan time.Time
	step := 0
	for {
		all := false
		select {
		case <-l.done:
			if t != nil {
				t.Stop()
			}
			return
		case <-l.wake:
		case <-tc:
			t, tc, all = nil, nil, true
		}
		granted, waiting := l.serve(all)
		switch {
		case !waiting:
			step = 0
			if t != nil {
				t.Stop()
				t, tc = nil, nil
			}
			continue
		case granted:
			step = 0
		case all && step < 16:
			step++
		}
		if t == nil {
			t = l.cfg.clock.NewTimer(l.backoff(step))
			tc = t.C()
		}
	}
}

// backoff returns a jittered wait for the given number of failed rounds:
// uniform in [d/2, d), d doubling from the min to the max.
func (l *Limiter) backoff(step int) time.Duration {
	d := l.cfg.minBackoff
	for i := 0; i < step && d < l.cfg.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, l.cfg.maxBackoff)
	half := d / 2
	return half + time.Duration(l.cfg.rand()%uint64(half+1))
}

// serve makes one pass over the waiting calls, oldest first. A call is
// tried only if one of its candidates is not already known full in this
// pass, so a pass costs at most one script per endpoint plus one per grant,
// and a later call passes an earlier one only when it may use an endpoint
// the earlier one may not.
func (l *Limiter) serve(all bool) (granted, waiting bool) {
	l.mu.Lock()
	ws := slices.Clone(l.waiters)
	hints := l.hints
	all = all || l.hintAll
	l.hints, l.hintAll = make(map[*endpoint]bool), false
	l.mu.Unlock()
	full := make(map[*endpoint]bool)
	for _, w := range ws {
		if allFull(w.cands, full) || (!all && !hinted(w.cands, hints)) {
			continue
		}
		ls, err := l.try(l.bg, w.cands, true)
		if err != nil && l.bg.Err() != nil {
			break // closing
		}
		if err == nil && ls == nil {
			for _, ep := range w.cands {
				full[ep] = true
			}
			continue
		}
		if l.finish(w, ls, err) {
			granted = granted || ls != nil
		} else if ls != nil {
			ls.Release() // its caller gave up meanwhile
		}
	}
	l.mu.Lock()
	waiting = len(l.waiters) > 0
	l.mu.Unlock()
	return granted, waiting
}

func hinted(cands []*endpoint, hints map[*endpoint]bool) bool {
	for _, ep := range cands {
		if hints[ep] {
			return true
		}
	}
	return false
}

func allFull(cands []*endpoint, full map[*endpoint]bool) bool {
	for _, ep := range cands {
		if !full[ep] {
			return false
		}
	}
	return true
}

// finish hands a result to w if it still waits.
func (l *Limiter) finish(w *waiter, ls *lease, err error) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.removeWaiterLocked(w) {
		return false
	}
	w.lease, w.err = ls, err
	close(w.ready)
	return true
}

func (l *Limiter) removeWaiterLocked(w *waiter) bool {
	i := slices.Index(l.waiters, w)
	if i < 0 {
		return false
	}
	l.waiters = slices.Delete(l.waiters, i, i+1)
	return true
}
