package amlpool

import (
	"context"
	"log/slog"

	"github.com/amlpool/amlpool/internal/pool"
)

// logAttempt writes an attempt's debug line. The endpoint is named, never
// its URL's key or its key: keys live in request headers only.
func (t *telemetry) logAttempt(a *attempt) {
	ctx := context.Background()
	if !t.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.String("endpoint", a.slot.Ep.Name()),
		slog.Int("attempt", a.n),
		slog.String("outcome", a.kind.String()),
		slog.Int("status", a.status),
		slog.Duration("latency", a.latency),
		slog.Duration("wait", a.slotWait))
	switch {
	case a.hedge:
		attrs = append(attrs, slog.Bool("hedge", true))
	case a.reason != "":
		attrs = append(attrs, slog.String("retry_reason", a.reason))
	}
	if a.err != nil {
		attrs = append(attrs, slog.String("error", a.err.Error()))
	}
	t.log.LogAttrs(ctx, slog.LevelDebug, "amlpool: attempt", attrs...)
}

// logEffects writes the warnings an attempt's effects call for: an
// endpoint ejected, readmitted, or half or more of them out.
func (t *telemetry) logEffects(a *attempt) {
	fx := &a.fx
	name := a.slot.Ep.Name()
	switch {
	case fx.Ejected > 0 && a.result == pool.Fault:
		t.warn.Warn("amlpool: endpoint cannot serve calls; out of rotation",
			slog.String("endpoint", name), slog.Int("status", a.status),
			slog.Int("ejections", fx.Ejections), slog.Duration("for", fx.Ejected), slog.Any("error", a.err))
	case fx.Ejected > 0:
		t.warn.Warn("amlpool: endpoint ejected",
			slog.String("endpoint", name), slog.Int("ejections", fx.Ejections),
			slog.Duration("for", fx.Ejected), slog.Any("error", a.err))
	case fx.Readmitted:
		t.warn.Warn("amlpool: endpoint readmitted", slog.String("endpoint", name))
	}
	if fx.Panic {
		t.warn.Warn("amlpool: half or more of the endpoints are ejected; using all of them",
			slog.Int("ejected", fx.Out), slog.Int("endpoints", fx.Of))
	}
}

// changed logs one change SetEndpoints made, at Info. It is safe on a nil
// *telemetry.
func (t *telemetry) changed(ch pool.Change) {
	if t == nil {
		return
	}
	attrs := []slog.Attr{slog.String("endpoint", ch.Name)}
	msg := ""
	switch ch.Kind {
	case pool.Added:
		msg = "amlpool: endpoint added"
		attrs = append(attrs, slog.Int("max_concurrent_calls", ch.NewMax))
	case pool.Removed:
		msg = "amlpool: endpoint removed; its calls in flight finish"
	case pool.Recapped:
		msg = "amlpool: endpoint cap changed"
		attrs = append(attrs, slog.Int("from", ch.OldMax), slog.Int("to", ch.NewMax))
	case pool.Rekeyed:
		msg = "amlpool: endpoint keys changed"
	case pool.Retiered:
		msg = "amlpool: endpoint tier changed"
		attrs = append(attrs, slog.Int("from", ch.OldTier), slog.Int("to", ch.NewTier))
	}
	t.warn.LogAttrs(context.Background(), slog.LevelInfo, msg, attrs...)
}

// shed writes a Warn line for a spell of shedding: its first shed call, of
// priority pri, from a full line of at most max waiting calls.
func (t *telemetry) shed(pri Priority, max int) {
	t.warn.Warn("amlpool: the line of waiting calls is full; shedding calls until it empties",
		slog.Int("max_waiting", max), slog.String("priority", pri.String()))
}
