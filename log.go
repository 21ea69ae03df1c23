package amlpool

import (
	"context"
	"log/slog"
)

// logAttempt writes an attempt's debug line. The endpoint is named, never
// its URL's key or its key: keys live in request headers only.
func (t *telemetry) logAttempt(o *outcome) {
	ctx := context.Background()
	if !t.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.String("endpoint", o.ep.name),
		slog.Int("attempt", o.attempt),
		slog.String("outcome", o.kind.String()),
		slog.Int("status", o.status),
		slog.Duration("latency", o.latency),
		slog.Duration("wait", o.slotWait))
	switch {
	case o.hedge:
		attrs = append(attrs, slog.Bool("hedge", true))
	case o.reason != "":
		attrs = append(attrs, slog.String("retry_reason", o.reason))
	}
	if o.err != nil {
		attrs = append(attrs, slog.String("error", o.err.Error()))
	}
	t.log.LogAttrs(ctx, slog.LevelDebug, "amlpool: attempt", attrs...)
}
