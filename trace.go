package amlpool

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

type tracerProviderOption struct{ tp trace.TracerProvider }

func (o tracerProviderOption) apply(c *config) { c.tracerProvider = o.tp }

// WithTracerProvider records OpenTelemetry spans through tp, on a Tracer
// named "github.com/amlpool/amlpool": one span per call ("amlpool.Do",
// "amlpool.Score", or "amlpool.ScoreRows" for each chunk ScoreRows or
// ScoreTable sends; kind internal, with amlpool.attempts and the
// amlpool.endpoint of the last attempt) and, under it, one per attempt. An
// attempt's span follows the conventions for HTTP client spans (name
// "POST", kind client, http.request.method, server.address, server.port,
// url.full (its query's values but api-version's, details' and format's
// replaced by the literal REDACTED, as the conventions ask: see
// Endpoint.URL), http.response.status_code, error.type, and
// http.request.resend_count on every request but the call's first: the
// requests the call sent before it, retries and hedged copies alike, each
// being a resend of the same request) and adds amlpool.endpoint,
// amlpool.outcome, amlpool.retry.reason (what the previous attempt came
// to), amlpool.hedge and amlpool.slot.wait (seconds waited for the slot).
// Failed calls and attempts get an error status with the error's text,
// which never contains a key.
//
// Spans are not sent to the endpoints: see WithTracePropagation.
//
// Default: no spans. A nil tp means the default.
func WithTracerProvider(tp trace.TracerProvider) Option { return tracerProviderOption{tp} }

type propagatorOption struct{ p propagation.TextMapPropagator }

func (o propagatorOption) apply(c *config) { c.propagator = o.p }

// WithTracePropagation adds the trace context of each attempt to its
// request's headers through p, e.g. propagation.TraceContext{} for the W3C
// traceparent header, so that a traced service can join the trace.
//
// Default: none. Azure ML does not read these headers, and headers can tell
// the service about the caller's traces, so none are sent unless asked for.
func WithTracePropagation(p propagation.TextMapPropagator) Option { return propagatorOption{p} }

// errPanicked is the error of a traced call, or attempt, that panicked,
// for its span.
var errPanicked = errors.New("amlpool: the call panicked")

// startCall starts the span of one call.
func (t *telemetry) startCall(ctx context.Context, op string) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, op, trace.WithSpanKind(trace.SpanKindInternal))
}

// endCall ends the span of a call that made cl's attempts, the last on the
// endpoint named name, and ended with err.
func (t *telemetry) endCall(span trace.Span, cl *call, name string, err error) {
	span.SetAttributes(keyAttempts.Int(cl.attempts))
	if name != "" {
		span.SetAttributes(keyEndpoint.String(name))
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// startAttempt starts the span of attempt a, when tracing, and returns the
// context the request is made in.
func (t *telemetry) startAttempt(ctx context.Context, a *attempt) context.Context {
	if t.tracer == nil {
		return ctx
	}
	e := extOf(a.slot.Ep).tel
	attrs := make([]attribute.KeyValue, 0, len(e.attrs)+5)
	attrs = append(attrs, e.attrs...)
	attrs = append(attrs, keyURL.String(e.url))
	if a.resends > 0 {
		attrs = append(attrs, keyResendCount.Int(a.resends))
	}
	switch {
	case a.hedge:
		attrs = append(attrs, keyHedge.Bool(true))
	case a.reason != "":
		attrs = append(attrs, keyRetryReason.String(a.reason))
	}
	ctx, a.span = t.tracer.Start(ctx, "POST", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

// endAttempt ends the span of attempt a.
func endAttempt(a *attempt) {
	a.span.SetAttributes(keyOutcome.String(a.kind.String()), keyWait.Float64(a.slotWait.Seconds()))
	if a.status != 0 {
		a.span.SetAttributes(keyStatus.Int(a.status))
	}
	if a.err != nil {
		a.span.SetAttributes(keyErrorType.String(errorType(a)))
		a.span.SetStatus(codes.Error, a.err.Error())
	}
	a.span.End()
}

// endPanicked ends the span of attempt a, which panicked before it had an
// outcome.
func endPanicked(a *attempt) {
	a.span.SetAttributes(keyWait.Float64(a.slotWait.Seconds()))
	a.span.SetStatus(codes.Error, errPanicked.Error())
	a.span.End()
}
