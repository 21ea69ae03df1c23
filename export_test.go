package amlpool

import "github.com/amlpool/amlpool/internal/clock"

// Test-only options: a fake clock and a deterministic random source.

type clockOption struct{ c clock.Clock }

func (o clockOption) apply(c *config) { c.clock = o.c }

func WithClock(c clock.Clock) Option { return clockOption{c} }

type randOption struct{ r func() uint64 }

func (o randOption) apply(c *config) { c.rand = o.r }

func WithRand(r func() uint64) Option { return randOption{r} }

// SetQueueHook makes c call f each time a call joins the line of waiting calls.
func SetQueueHook(c *Client, f func()) { c.pool.OnQueue = f }

// ReplyTransport answers every request in memory with a scoring reply, for
// benchmarks of amlpool's own cost from the external test package.
type ReplyTransport = replyTransport
