package redislimit

import "time"

// Slots that change hands. Two mechanisms keep an endpoint's slots busy
// across a fleet without a round trip each way per call:
//
// Handoff, within a process: a lease freed while calls of this process wait
// for its endpoint goes straight to the oldest of them. The lease stays in
// Redis under the same id; only the call that uses it changes. The fleet's
// count stays exact, since one call ends before the next begins on the
// lease.
//
// Grants, between processes: a process whose calls find every candidate
// full says so in Redis (a want set per endpoint, refreshed by each failed
// try and expiring soon after its last). A release then hands the slot to
// the process that wants it and holds the fewest of the endpoint's leases,
// in the same round trip, and tells only that process (the grant channel),
// which gives it to its oldest waiting call.
//
// Every WithHandoff (500 ms) a process that keeps handing a lease on asks
// Redis, in the background, whether a process that wants the endpoint holds
// fewer of its leases than it would after giving one up; its calls go on
// meanwhile. If so, its next lease released on the endpoint goes back to
// Redis, which grants it to the process that holds the fewest. So replicas
// with calls waiting converge to equal shares, a replica that joins a busy
// fleet gets its share within about that time, and a slot changes hands
// with a gap (one round trip and a notification) only when it changes
// process.
//
// Without them, every slot that changed hands cost a release round trip, a
// notification to every process and an acquire round trip from each of
// them: at the seed workload over ten processes, 0.91 of the slots stayed
// busy, for 3.7 round trips per call.

// handoffLocked gives ls, just released, to a waiting call that may use its
// endpoint and reports whether it did.
func (l *Limiter) handoffLocked(ls *lease) bool {
	if l.cfg.handoff == 0 || l.closed || len(l.waiters) == 0 {
		return false
	}
	ep := ls.ep
	if ep.limit.Load() < ls.limit || ep.owed > 0 || ep.over {
		// The cap went down, another process is owed a slot, or the fleet
		// holds more leases than the cap: let Redis count again.
		return false
	}
	if share, ok := l.shareNowLocked(ep); ok && len(ep.held) > share {
		// In fallback or rejoining, this process holds more than its share
		// (leases taken before the outage): handed on, they would outlast
		// the calls that took them.
		return false
	}
	w, idx := l.nextWaiterLocked(ep)
	if w == nil {
		return false
	}
	since := ls.since
	if now := l.cfg.clock.Now(); now.Sub(since) >= l.cfg.handoff && ls.remote && l.cfg.notify {
		since = now
		l.askLocked(ep)
	}
	next := &lease{l: l, ep: ep, idx: idx, id: ls.id, remote: ls.remote, sent: ls.sent, renewed: ls.renewed,
		lost: ls.lost, since: since, limit: ls.limit}
	ep.held[ls.id] = next
	l.serveLocked(w, next)
	l.handoffs.Add(1)
	return true
}

// askLocked asks Redis, in the background, whether this process should give
// up one of ep's slots (yieldScript), unless it is asking already.
func (l *Limiter) askLocked(ep *endpoint) {
	if ep.asking || l.closed {
		return
	}
	ep.asking = true
	l.wg.Add(1) // under mu and not closed: never after Close began waiting
	go func() {
		defer l.wg.Done()
		res, err := l.eval(l.bg, yieldScript, []string{ep.key, ep.want}, []any{l.proc})
		l.mu.Lock()
		ep.asking = false
		if n, _ := res.(int64); err == nil && n == 1 && ep.owed < len(ep.held) {
			ep.owed++
		}
		l.mu.Unlock()
		if err != nil && l.bg.Err() == nil {
			l.failed(err)
		}
	}()
}

// serveLocked gives ls to the waiting call w.
func (l *Limiter) serveLocked(w *waiter, ls *lease) {
	l.removeWaiterLocked(w)
	w.lease = ls
	close(w.ready)
	l.acquired.Add(1)
}

// wantedLocked reports whether a waiting call may use ep.
func (l *Limiter) wantedLocked(ep *endpoint) bool {
	w, _ := l.nextWaiterLocked(ep)
	return w != nil
}

// nextWaiterLocked returns the oldest waiting call whose first candidate is
// ep, which holds its own Client's slot there, else the oldest that may use
// ep at all; and ep's index among its candidates. It returns nil when no
// waiting call may use ep.
func (l *Limiter) nextWaiterLocked(ep *endpoint) (*waiter, int) {
	var other *waiter
	at := -1
	for _, w := range l.waiters {
		for i, c := range w.cands {
			if c != ep {
				continue
			}
			if i == 0 {
				return w, 0
			}
			if other == nil {
				other, at = w, i
			}
			break
		}
	}
	return other, at
}

// granted takes the lease id on the lease set key that another process
// granted this one, once, however often it hears of it: every tick returns
// the grant again while it lives in Redis, which is as long as the TTL of
// the process that granted it, so each hearing keeps it in seen a TTL more.
func (l *Limiter) granted(key, id string) {
	l.mu.Lock()
	ep := l.byKey[key]
	_, dup := l.seen[id]
	l.seen[id] = l.cfg.clock.Now()
	l.mu.Unlock()
	if dup {
		return
	}
	if ep == nil {
		// Not an endpoint of ours (any more): free its slot.
		l.removeAll(l.bg, []removal{{key, id}})
		return
	}
	l.adopt(ep, id, true)
}

// adopt takes a lease on ep that Redis holds in this process's name, kept
// for it or granted to it, and gives it to the oldest waiting call that may
// use ep, or releases it when none may any more. One that would take the
// process past its share (roomLocked: a grant it asked for before it fell
// back or began to rejoin the fleet) goes back to Redis (giveBack).
func (l *Limiter) adopt(ep *endpoint, id string, grant bool) {
	l.mu.Lock()
	delete(l.releasing, id)
	if l.closed {
		// Close deletes it from Redis with its goodbye, which names its
		// lease set: ep may be one a tick forgot while the round trip that
		// brought the lease was under way.
		l.pending = appendPending(l.pending, removal{ep.key, id})
		l.mu.Unlock()
		return
	}
	if ep.held[id] != nil {
		l.mu.Unlock()
		return
	}
	if !l.roomLocked(ep) {
		l.mu.Unlock()
		l.giveBack(ep, id)
		return
	}
	now := l.cfg.clock.Now()
	ls := &lease{l: l, ep: ep, id: id, remote: true, renewed: now, since: now, limit: ep.limit.Load()}
	ep.held[id] = ls
	l.held++
	if grant {
		l.grants.Add(1)
	}
	if w, idx := l.nextWaiterLocked(ep); w != nil {
		ls.idx = idx
		l.serveLocked(w, ls)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	ls.Release() // its call gave up meanwhile
}

// giveBack ends a lease on ep that Redis holds in this process's name and
// that would take the process past its share (roomLocked), as a release
// does: Redis grants its slot at once to another process that waits for
// the endpoint, if one does, in the same round trip. Deleted instead, the
// slot would idle until that process's next try, up to a backoff later.
// What fails is deleted once Redis answers again, or at Close.
func (l *Limiter) giveBack(ep *endpoint, id string) {
	if _, _, err := l.remove(&lease{l: l, ep: ep, id: id}, false); err != nil {
		l.mu.Lock()
		l.pending = appendPending(l.pending, removal{ep.key, id})
		l.mu.Unlock()
		if l.bg.Err() == nil {
			l.failed(err)
		}
	}
}

// wantTTL is how long a failed try says that this process wants a slot: a
// few of the longest waits between two tries of a waiting call.
func (l *Limiter) wantTTL() time.Duration { return 4*l.cfg.maxBackoff + l.cfg.timeout }

// forgetSeenLocked drops grants last heard of longer ago than a lease
// lives: a tick that reached Redis since would have heard of them again had
// their entries not expired, so they cannot come again.
func (l *Limiter) forgetSeenLocked(now time.Time) {
	for id, t := range l.seen {
		if now.Sub(t) > l.cfg.ttl {
			delete(l.seen, id)
		}
	}
}
