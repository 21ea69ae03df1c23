package amlpool

import (
	"context"
	"fmt"
	"time"

	"github.com/amlpool/amlpool/internal/pool"
)

// Priority orders the calls waiting for a slot: when one frees, it goes to
// the waiting call of highest priority, and among calls of equal priority
// to the one that has waited longest. Give a call a priority with
// WithPriority; without one it has PriorityNormal.
//
// Priorities order the line only: they never hold a free slot back for a
// later call, and never stop a call that holds a slot. So a call of any
// priority is served at once while a slot is free; priorities matter when
// every slot is busy, as while a batch run fills them.
//
// No call waits forever behind a steady stream of higher ones: a waiting
// call ranks one priority higher for each WithPriorityAging (1 s by
// default) it has waited, up to PriorityHigh, and equal ranks go first come,
// first served. So after 2 s in line a PriorityLow call ranks with
// PriorityHigh ones, and goes before every call that came after it.
type Priority int8

// The priorities, lowest first. Values outside them are clamped by
// WithPriority: below PriorityLow is PriorityLow, above PriorityHigh is
// PriorityHigh.
const (
	PriorityLow    Priority = -1 // batch work, which may wait for others
	PriorityNormal Priority = 0  // the default
	PriorityHigh   Priority = 1  // calls a person is waiting for
)

// String returns "low", "normal" or "high".
func (p Priority) String() string {
	switch p {
	case PriorityLow:
		return "low"
	case PriorityNormal:
		return "normal"
	case PriorityHigh:
		return "high"
	}
	return fmt.Sprintf("Priority(%d)", int8(p))
}

// WithPriority returns a copy of ctx under which a Client's calls wait for
// slots at priority p: Do, Score, and every request of ScoreRows and
// ScoreTable, each retry included. p outside PriorityLow..PriorityHigh is
// clamped to the nearer of them.
//
// Priorities order each Client's own line of waiting calls. With a Limiter
// (WithLimiter) a call first takes one of its Client's slots, in priority
// order, then waits at the Limiter, which knows no priorities: across
// replicas, calls of every priority share each endpoint's cap first come,
// first served.
func WithPriority(ctx context.Context, p Priority) context.Context {
	return pool.WithPriority(ctx, int8(p))
}

// DefaultPriorityAging is how long a waiting call waits before it ranks one
// priority higher, unless WithPriorityAging says otherwise.
const DefaultPriorityAging = pool.DefaultAging

type maxWaitingOption int

func (o maxWaitingOption) apply(c *config) { c.maxWaiting, c.maxWaitingSet = int(o), true }

// WithMaxWaiting bounds the line of calls waiting for a slot: at most n
// (n ≥ 1) wait at once. A call that finds every slot busy and n calls
// waiting fails at once with an error matching ErrShed (and so
// ErrNoCapacity), unless it has a higher priority than one of them: then
// the newest waiting call of the lowest priority fails so instead, and the
// new call takes its place in line. A bounded line turns overload into
// fast, clear refusals of the least important calls, where an unbounded one
// makes every call slower.
//
// Stats.Shed and the metric amlpool.slot.shed count the calls turned away,
// by priority; the logger gets one Warn line when shedding starts, and no
// other until the line has been empty. A shed call is not retried.
//
// Default: no bound; calls wait as long as their ctx and WithMaxWait allow.
func WithMaxWaiting(n int) Option { return maxWaitingOption(n) }

type priorityAgingOption time.Duration

func (o priorityAgingOption) apply(c *config) { c.priorityAging = time.Duration(o) }

// WithPriorityAging sets how long a waiting call waits before it ranks one
// priority higher (see Priority): d > 0. A shorter d serves low-priority
// calls sooner under a steady stream of higher ones; a longer one keeps
// higher ones first for longer. Pick it above the waits a busy pool gives
// low-priority calls anyway, or priorities fade as calls age.
//
// Default: DefaultPriorityAging (1 s).
func WithPriorityAging(d time.Duration) Option { return priorityAgingOption(d) }
