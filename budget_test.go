package amlpool

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/amlpool/amlpool/internal/clock"
)

func testBudget(ratio float64, minPerSecond int) (*retryBudget, *clock.Fake, *bytes.Buffer) {
	clk := clock.NewFake()
	var logs bytes.Buffer
	cfg := defaultConfig()
	cfg.clock = clk
	cfg.logger = slog.New(slog.NewTextHandler(&logs, nil))
	cfg.budgetRatio, cfg.budgetMinPerSecond = ratio, minPerSecond
	return newRetryBudget(&cfg), clk, &logs
}

func withdrawAll(b *retryBudget) int {
	n := 0
	for b.withdraw() {
		n++
		if n > 1e6 {
			panic("budget never runs out")
		}
	}
	return n
}

func TestRetryBudgetFloor(t *testing.T) {
	b, _, _ := testBudget(0.2, 1)
	assert.Equal(t, 10, withdrawAll(b), "1 per second over a 10 s window, no calls")
}

func TestRetryBudgetRatio(t *testing.T) {
	b, clk, logs := testBudget(0.2, 0)
	for range 1000 {
		b.deposit(clk.Now())
	}
	assert.Equal(t, 200, withdrawAll(b))
	assert.False(t, b.withdraw())
	assert.Equal(t, 1, strings.Count(logs.String(), "retry budget exhausted"), "logged once per spell: %s", logs)

	b.deposit(clk.Now()) // 1001 calls: 200.2 allowed
	assert.True(t, b.withdraw())
	assert.False(t, b.withdraw())
	assert.Equal(t, 2, strings.Count(logs.String(), "retry budget exhausted"), "a new spell is logged again")
}

// TestRetryBudgetSlides: calls and retries older than the window stop
// counting, a tenth of the window at a time.
func TestRetryBudgetSlides(t *testing.T) {
	b, clk, _ := testBudget(0.5, 0)
	for range 100 {
		b.deposit(clk.Now())
	}
	assert.Equal(t, 50, withdrawAll(b))

	clk.Advance(RetryBudgetWindow / 2)
	for range 100 {
		b.deposit(clk.Now())
	}
	assert.Equal(t, 50, withdrawAll(b), "200 calls, 50 retries spent: 50 more")

	clk.Advance(RetryBudgetWindow / 2)
	// The first 100 calls and their 50 retries have left the window.
	assert.Equal(t, 0, withdrawAll(b), "100 calls, 50 retries in the window")
	for range 100 {
		b.deposit(clk.Now())
	}
	assert.Equal(t, 50, withdrawAll(b))

	clk.Advance(3 * RetryBudgetWindow)
	assert.Equal(t, 0, withdrawAll(b), "an idle window holds nothing")
	b.deposit(clk.Now())
	b.deposit(clk.Now())
	assert.Equal(t, 1, withdrawAll(b))
}

// TestRetryBudgetRefund: a retry given back (a hedge never sent) is one
// more to spend, while the slot it was spent in is in the window; after
// that it counts no more, and there is nothing to give back.
func TestRetryBudgetRefund(t *testing.T) {
	b, clk, _ := testBudget(0, 1)
	e, ok := b.spend()
	assert.True(t, ok)
	assert.Equal(t, 9, withdrawAll(b))
	b.refund(e)
	assert.Equal(t, 1, withdrawAll(b), "the retry given back")

	// A window later, e's slot holds the retries of another time.
	clk.Advance(RetryBudgetWindow)
	assert.Equal(t, 10, withdrawAll(b))
	b.refund(e)
	assert.Zero(t, withdrawAll(b), "a retry that left the window is not given back from a later one")
}

func TestRetryBudgetBoundsRetriesOverTime(t *testing.T) {
	b, clk, _ := testBudget(0.2, 1)
	calls, retries := 0, 0
	for range 300 { // 30 s in 100 ms steps, 20 calls per step, each wanting 3 retries
		for range 20 {
			b.deposit(clk.Now())
			calls++
			for range 3 {
				if b.withdraw() {
					retries++
				}
			}
		}
		clk.Advance(100 * time.Millisecond)
	}
	// At most 20 % of the calls plus 1/s, over 30 s and one extra window.
	assert.LessOrEqual(t, float64(retries), 0.2*float64(calls)+40)
	assert.Greater(t, float64(retries), 0.15*float64(calls), "the budget is used, not starved")
}
