package redislimit

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/amlpool/amlpool"
)

// Round trips to Redis, each bounded by the Limiter's timeout, and the
// wake-ups of the pump they lead to.

// What a release did with the slot (releaseScript's outcome).
const (
	freed   = 0 // set free
	kept    = 1 // kept for this process, under the same lease id
	granted = 2 // granted to another process that wanted it
)

// remove ends a lease in Redis: it frees its slot, or grants it to another
// process that wants it, or, with keep, keeps it for this process unless
// another one holds fewer of the endpoint's leases. It reports whether
// Redis still had the lease.
func (l *Limiter) remove(ls *lease, keep bool) (removed bool, outcome int64, err error) {
	ep := ls.ep
	keepArg, grantArg := 0, 0
	if keep {
		keepArg = 1
	}
	if l.cfg.notify {
		grantArg = 1 // without the channel a grant would go unheard
	}
	gid := l.proc + "." + strconv.FormatUint(l.seq.Add(1), 36)
	res, err := l.eval(l.bg, releaseScript, []string{ep.key, ep.want, l.keys.grants, l.keys.done(l.proc)},
		[]any{ls.id, ep.limit.Load(), l.proc, l.cfg.ttl.Milliseconds(), keepArg, grantArg, l.keys.grant, gid,
			l.doneTTL().Milliseconds()})
	if err != nil {
		return false, freed, err
	}
	r, ok := res.([]any)
	if !ok || len(r) != 2 {
		return false, freed, fmt.Errorf("redislimit: release script: unexpected reply %v", res)
	}
	n, _ := r[0].(int64)
	outcome, _ = r[1].(int64)
	return n == 1, outcome, nil
}

// eval runs a script within the Limiter's timeout.
func (l *Limiter) eval(ctx context.Context, s *redis.Script, keys []string, args []any) (any, error) {
	return l.evalThen(ctx, s, keys, args, nil)
}

// evalThen is eval that, when the script fails, calls failed once the
// client is done with it: once no copy of it can be sent any more (exec).
func (l *Limiter) evalThen(ctx context.Context, s *redis.Script, keys []string, args []any, failed func()) (any, error) {
	return l.exec(ctx, func(ctx context.Context) (any, error) {
		return s.Run(ctx, l.rdb, keys, args...).Result()
	}, failed)
}

// exec runs one Redis operation bounded by the Limiter's timeout. With a
// client that ignores ctx deadlines on its sockets, the operation runs in
// its own goroutine and is abandoned, not cancelled, on timeout.
//
// When the operation fails, exec calls failed (if not nil) once the client
// is done with it. With a client that honours ctx, that is before exec
// returns. An abandoned operation goes on: go-redis starts no new attempt
// once ctx has ended (it waits for a connection, dials, and sleeps between
// retries under ctx), but one under way then (a write blocked on the
// socket, a TLS dial, a connection's set-up) may still send the command,
// for as long as the client's own timeouts allow; so failed waits for the
// abandoned operation to return, and is called from its goroutine.
func (l *Limiter) exec(ctx context.Context, op func(context.Context) (any, error), failed func()) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.timeout)
	defer cancel()
	l.roundTrips.Add(1)
	start := l.cfg.clock.Now()
	var res any
	var err error
	if l.ctxAware {
		res, err = op(ctx)
		if err != nil && failed != nil {
			failed()
		}
	} else {
		res, err = l.detached(ctx, op, failed)
	}
	if err != nil {
		l.failures.Add(1)
		return nil, err
	}
	l.streak.Store(0)
	now := l.cfg.clock.Now()
	if l.failingSince.Swap(0) != 0 {
		// Round trips failed since the last success, which no call of this
		// process may have needed: other replicas may have fallen back.
		l.mu.Lock()
		l.rejoinLocked(now, l.replicas)
		l.mu.Unlock()
	}
	d := int64(now.Sub(start))
	for {
		old := l.rtt.Load()
		next := d
		if old != 0 {
			next = old + (d-old)/8
		}
		if l.rtt.CompareAndSwap(old, next) {
			break
		}
	}
	return res, nil
}

// detached runs op in a goroutine of its own and waits for it until ctx
// ends. When op fails, it calls failed once op has returned: at once, or,
// for an op it gave up on, from op's goroutine when op returns, whatever
// op's outcome (its caller has gone: a lease it took is no call's).
func (l *Limiter) detached(ctx context.Context, op func(context.Context) (any, error), failed func()) (any, error) {
	type result struct {
		v   any
		err error
	}
	ch := make(chan result, 1)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, amlpool.ErrClosed
	}
	l.wg.Add(1)
	l.mu.Unlock()
	var (
		mu           sync.Mutex
		over, gaveUp bool // op has returned; its caller has gone
	)
	go func() {
		defer l.wg.Done()
		v, err := op(ctx)
		mu.Lock()
		over = true
		late := gaveUp
		mu.Unlock()
		ch <- result{v, err}
		if late && failed != nil {
			failed()
		}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		mu.Lock()
		if !over {
			gaveUp = true
			mu.Unlock()
			return nil, ctx.Err()
		}
		mu.Unlock()
		r = <-ch
	}
	if r.err != nil && failed != nil {
		failed()
	}
	return r.v, r.err
}

// kick wakes the pump for the calls that may use ep, which may have room.
func (l *Limiter) kick(ep *endpoint) {
	l.mu.Lock()
	l.hints[ep] = true
	l.mu.Unlock()
	l.signal()
}

// kickAll wakes the pump for every waiting call.
func (l *Limiter) kickAll() {
	l.mu.Lock()
	l.hintAll = true
	l.mu.Unlock()
	l.signal()
}

func (l *Limiter) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// listen takes the leases other processes grant this one, and their news
// of the endpoints' health.
func (l *Limiter) listen(ps *redis.PubSub) {
	defer l.wg.Done()
	// The subscription's confirmation first: only then can a grant reach
	// this process, and only then may it say that it wants one.
	for {
		if _, err := ps.Receive(l.bg); err == nil {
			break
		}
		t := l.cfg.clock.NewTimer(l.cfg.probe) // Redis down: try again
		select {
		case <-l.done:
			t.Stop()
			return
		case <-t.C():
		}
	}
	l.subscribed.Store(l.cfg.notify)
	ch := ps.Channel()
	for {
		select {
		case <-l.done:
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			if m.Channel == l.keys.health {
				l.heard(m.Payload)
				continue
			}
			// "g|<process id>|<lease set>|<lease id>"
			rest, ok := strings.CutPrefix(m.Payload, "g|"+l.proc+"|")
			if !ok {
				continue // another process's
			}
			if key, id, ok := splitGrant(rest); ok {
				l.granted(key, id)
			}
		}
	}
}
