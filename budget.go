package amlpool

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/amlpool/amlpool/internal/clock"
)

// budgetSlots is how many slots the retry budget's window is cut into: the
// window slides by a tenth of its length.
const budgetSlots = 10

// retryBudget caps retries to a share of the calls made over a sliding
// window, plus a floor, as Finagle's and Linkerd's budgets do: over any
// window, retries ≤ floor + ratio × calls. Every attempt after a call's first
// is a retry, failovers after a throttle included.
//
// Counting a call is lock-free (two atomic operations in the usual case);
// spending on a retry takes the lock, so that concurrent retries cannot
// overdraw the budget together.
type retryBudget struct {
	ratio  float64
	floor  float64       // retries allowed per window at any load
	slot   time.Duration // window / budgetSlots
	clock  clock.Clock
	origin time.Time
	logger *slog.Logger

	// mu guards slot resets, retries and exhausted.
	mu        sync.Mutex
	slots     [budgetSlots]budgetSlot
	exhausted bool // the last withdrawal was refused; logged once per spell
}

type budgetSlot struct {
	epoch   atomic.Int64 // which slot-length period of time the counts are for
	calls   atomic.Int64
	retries int64
}

func newRetryBudget(cfg *config) *retryBudget {
	return &retryBudget{
		ratio:  cfg.budgetRatio,
		floor:  float64(cfg.budgetMinPerSecond) * RetryBudgetWindow.Seconds(),
		slot:   RetryBudgetWindow / budgetSlots,
		clock:  cfg.clock,
		origin: cfg.clock.Now(),
		logger: cfg.logger,
	}
}

// epoch returns the number of the slot-length period t falls in.
func (b *retryBudget) epoch(t time.Time) int64 {
	return max(int64(t.Sub(b.origin)/b.slot), 0)
}

// current returns the slot for epoch e, emptied if it last held an older one.
func (b *retryBudget) current(e int64) *budgetSlot {
	s := &b.slots[e%budgetSlots]
	if s.epoch.Load() != e {
		b.mu.Lock()
		b.resetLocked(s, e)
		b.mu.Unlock()
	}
	return s
}

func (b *retryBudget) resetLocked(s *budgetSlot, e int64) {
	if old := s.epoch.Load(); old < e {
		s.calls.Store(0)
		s.retries = 0
		s.epoch.Store(e) // after the reset: who sees e sees empty counts
	}
}

// deposit counts a call made at t. Taking the time from the caller saves a
// clock read on every call.
func (b *retryBudget) deposit(t time.Time) { b.current(b.epoch(t)).calls.Add(1) }

// withdraw spends one retry if the budget has one and reports whether it did.
func (b *retryBudget) withdraw() bool {
	_, ok := b.spend()
	return ok
}

// spend is withdraw, also returning the epoch the retry was spent in, for
// refund.
func (b *retryBudget) spend() (int64, bool) {
	e := b.epoch(b.clock.Now())
	b.mu.Lock()
	defer b.mu.Unlock()
	var calls, retries int64
	for i := range b.slots {
		s := &b.slots[i]
		if ep := s.epoch.Load(); ep > e-budgetSlots && ep <= e {
			calls += s.calls.Load()
			retries += s.retries
		}
	}
	if float64(retries) >= b.floor+b.ratio*float64(calls) {
		if !b.exhausted {
			b.exhausted = true
			b.logger.Warn("amlpool: retry budget exhausted; failed calls return without retrying",
				slog.Int64("calls", calls), slog.Int64("retries", retries), slog.Duration("window", RetryBudgetWindow))
		}
		return e, false
	}
	b.exhausted = false
	s := &b.slots[e%budgetSlots]
	b.resetLocked(s, e)
	s.retries++
	return e, true
}

// refund gives back a retry spent in epoch e that was never made: a hedge
// that got no slot in the end. One spent in a slot the window has left
// since counts no more: there is nothing to give back.
func (b *retryBudget) refund(e int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := &b.slots[e%budgetSlots]; s.epoch.Load() == e && s.retries > 0 {
		s.retries--
	}
}
