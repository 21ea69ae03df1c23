package redislimit

import "github.com/amlpool/amlpool/internal/clock"

// Test-only options: a fake clock and a deterministic random source.

type clockOption struct{ c clock.Clock }

func (o clockOption) apply(c *config) { c.clock = o.c }

func WithClock(c clock.Clock) Option { return clockOption{c} }

type randOption struct{ r func() uint64 }

func (o randOption) apply(c *config) { c.rand = o.r }

func WithRand(r func() uint64) Option { return randOption{r} }

type onTickOption struct{ f func(bool) }

func (o onTickOption) apply(c *config) { c.onTick = o.f }

// WithOnTick makes every tick that reaches Redis call f(false) between its
// round trip and the use of its reply, and f(true) when it is over.
func WithOnTick(f func(done bool)) Option { return onTickOption{f} }

type onReleasedOption struct{ f func() }

func (o onReleasedOption) apply(c *config) { c.onReleased = o.f }

// WithOnReleased makes every release that reaches Redis call f after its
// round trip, before its reply is used.
func WithOnReleased(f func()) Option { return onReleasedOption{f} }
