package redislimit

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/amlpool/amlpool"
)

// Round trips to Redis, each bounded by the Limiter's timeout, and the
// wake-ups of the pump they lead to.

// remove deletes a lease from Redis: the release script when other
// processes may be waiting for notifications, a plain ZREM otherwise.
func (l *Limiter) remove(ls *lease) (bool, error) {
	if l.cfg.notify {
		res, err := l.eval(l.bg, releaseScript, []string{ls.ep.key}, []any{ls.id, ls.ep.limit.Load(), l.keys.freed})
		n, _ := res.(int64)
		return n == 1, err
	}
	res, err := l.exec(l.bg, func(ctx context.Context) (any, error) {
		return l.rdb.ZRem(ctx, ls.ep.key, ls.id).Result()
	})
	n, _ := res.(int64)
	return n == 1, err
}

// eval runs a script within the Limiter's timeout.
func (l *Limiter) eval(ctx context.Context, s *redis.Script, keys []string, args []any) (any, error) {
	return l.exec(ctx, func(ctx context.Context) (any, error) {
		return s.Run(ctx, l.rdb, keys, args...).Result()
	})
}

// exec runs one Redis operation bounded by the Limiter's timeout. With a
// client that ignores ctx deadlines on its sockets, the operation runs in
// its own goroutine and is abandoned, not cancelled, on timeout.
func (l *Limiter) exec(ctx context.Context, op func(context.Context) (any, error)) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.timeout)
	defer cancel()
	start := l.cfg.clock.Now()
	var res any
	var err error
	if l.ctxAware {
		res, err = op(ctx)
	} else {
		res, err = l.detached(ctx, op)
	}
	if err != nil {
		l.failures.Add(1)
		return nil, err
	}
	l.streak.Store(0)
	l.failingSince.Store(0)
	d := int64(l.cfg.clock.Now().Sub(start))
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

func (l *Limiter) detached(ctx context.Context, op func(context.Context) (any, error)) (any, error) {
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
	go func() {
		defer l.wg.Done()
		v, err := op(ctx)
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
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

// listen wakes the pump whenever another process frees a slot on a full
// endpoint.
func (l *Limiter) listen(ch <-chan *redis.Message) {
	defer l.wg.Done()
	for {
		select {
		case <-l.done:
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			l.mu.Lock()
			ep := l.byKey[m.Payload]
			l.mu.Unlock()
			if ep != nil {
				l.kick(ep)
			}
		}
	}
}
