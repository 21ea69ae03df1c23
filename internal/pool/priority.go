package pool

import (
	"context"
	"time"
)

// Who goes first in the line: a call waits at the priority its ctx carries
// (WithPriority), and a freed slot goes to the waiting call of highest
// rank. A call's rank is its priority, plus one for each Aging it has
// waited, up to High; equal ranks go first come, first served. So a call
// of higher priority goes first, but none waits forever behind a steady
// stream of them: after two Agings even a Low call ranks High, and goes
// before every High call that came after it.
//
// The line is a FIFO per priority. The front of each ranks highest in its
// FIFO (it has waited longest), so the next call to serve is one of the
// three fronts. While calls of one priority alone wait, as when nobody sets
// one, serving them costs no clock read and no ranking.
//
// A bounded line (Config.MaxWaiting) sheds: a call that finds it full
// takes the place of the newest waiting call of the lowest priority, if it
// has a higher priority than that call; otherwise it fails at once. Either
// way the call turned away fails with an error matching ErrShed, which
// matches ErrNoCapacity. Shedding compares the priorities calls were given,
// not their ranks: aging orders the line, it does not protect a call from
// being shed.

// Priorities, as the root package numbers them.
const (
	Low    int8 = -1
	Normal int8 = 0
	High   int8 = 1

	numPriorities = int(High - Low + 1) // a queue per priority; queue i holds priority Low+i
)

// DefaultAging is Config.Aging's default: a waiting call ranks one
// priority higher for each second it has waited.
const DefaultAging = time.Second

// ErrShed is the error of a call turned away because the line was full:
// on arrival, or from the line to make room for a call of higher priority
// (errOutranked, which wraps it). errors.Is(err, ErrNoCapacity) holds too.
var ErrShed error = &shedError{msg: "amlpool: shed: no slot is free and the line of waiting calls is full"}

var errOutranked = &shedError{msg: ErrShed.Error() + "; a call of higher priority took this one's place"}

// The errors of the call shed first in a spell of shedding: they read and
// match as ErrShed and errOutranked, and StartedSpell turns them into those.
var (
	errShedFirst      = &shedError{msg: ErrShed.Error(), first: true}
	errOutrankedFirst = &shedError{msg: errOutranked.Error(), first: true}
)

type shedError struct {
	msg   string
	first bool // the call's shed started a spell of shedding
}

func (e *shedError) Error() string { return e.msg }

// Is makes a shed call match ErrNoCapacity, errOutranked ErrShed, and a
// first form (StartedSpell) the error it is the first form of.
func (e *shedError) Is(target error) bool {
	t, ok := target.(*shedError)
	return target == ErrNoCapacity || target == ErrShed || ok && t.msg == e.msg
}

type priorityKey struct{}

// WithPriority returns a copy of ctx under which calls wait in line at
// priority pri, clamped to Low..High.
func WithPriority(ctx context.Context, pri int8) context.Context {
	return context.WithValue(ctx, priorityKey{}, min(max(pri, Low), High))
}

// PriorityOf returns the priority of calls made under ctx: Normal unless
// WithPriority gave one. Acquire reads it only when a call has to wait.
func PriorityOf(ctx context.Context) int8 {
	pri, _ := ctx.Value(priorityKey{}).(int8)
	return pri
}

// queue is the waiting calls of one priority, oldest first.
type queue struct{ head, tail *waiter }

// first returns the waiter of cur (the front of each queue not yet passed
// by a grant pass) to serve next: the one of highest rank at pool time now,
// the earlier arrival of equal ones. With one front, now is not read.
func (p *Pool) first(cur *[numPriorities]*waiter, now int64) *waiter {
	var best *waiter
	bestRank := 0
	for _, w := range cur {
		if w == nil {
			continue
		}
		if best == nil {
			best, bestRank = w, p.rank(w, now)
			continue
		}
		if r := p.rank(w, now); r > bestRank || r == bestRank && w.seq < best.seq {
			best, bestRank = w, r
		}
	}
	return best
}

// rank is w's queue index plus one for each Aging it has waited by pool
// time now, at most High's index.
func (p *Pool) rank(w *waiter, now int64) int {
	r := int(w.pri)
	if waited := now - w.since; waited > 0 {
		r += int(min(waited/int64(p.cfg.Aging), int64(numPriorities)))
	}
	return min(r, numPriorities-1)
}

// shedLocked keeps the line within MaxWaiting after w joined it: it takes
// out the newest waiter of the lowest priority waiting, w itself when none
// has a lower priority than w, and counts it. A waiter other than w is
// told through its ready channel and errOutranked; for w it returns ErrShed.
// The call shed first in a spell of shedding gets the error's first form
// (StartedSpell).
func (p *Pool) shedLocked(w *waiter) error {
	for i := range p.queues {
		v := p.queues[i].tail
		if v == nil {
			continue
		}
		p.removeLocked(v)
		p.shed[i].Add(1)
		first := !p.shedding
		p.shedding = true // until the line is next empty (removeLocked)
		if v == w {
			if first {
				return errShedFirst
			}
			return ErrShed
		}
		v.shed = errOutranked
		if first {
			v.shed = errOutrankedFirst
		}
		close(v.ready)
		return nil
	}
	return nil
}

// Shed returns how many calls of priority pri were shed.
func (p *Pool) Shed(pri int8) int64 { return p.shed[pri-Low].Load() }

// StartedSpell reports whether err, an error of Acquire, is that of the
// call shed first in a spell of shedding, which starts with a shed call
// and ends when the line is next empty; and it returns err as callers are
// to see it (ErrShed rather than its first form, and so on). Each spell
// has exactly one such call, whatever order the calls shed in it return in.
func StartedSpell(err error) (bool, error) {
	switch err {
	case errShedFirst:
		return true, ErrShed
	case errOutrankedFirst:
		return true, errOutranked
	}
	return false, err
}
