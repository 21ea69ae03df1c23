package amlpool

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

type tracerProviderOption struct{ tp trace.TracerProvider }

func (o tracerProviderOption) apply(c *config) { c.tracerProvider = o.tp }

// WithTracerProvider records OpenTelemetry spans through tp, on a Tracer
// named "github.com/amlpool/amlpool": one span per call ("amlpool.Do" or
// "amlpool.Score", kind internal, with amlpool.attempts and the
// amlpool.endpoint that answered last) and, under it, one per attempt. An
// attempt's span follows the conventions for HTTP client spans (name
// "POST", kind client, http.request.method, server.address, server.port,
// url.full, http.response.status_code, error.type,
// http.request.resend_count on retries) and adds amlpool.endpoint,
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

// startAttempt starts the span of attempt o, when tracing, and returns the
// context the request is made in.
func (t *telemetry) startAttempt(ctx context.Context, o *outcome) context.Context {
	if t.tracer == nil {
		return ctx
	}
	e := &t.eps[o.ep.idx]
	attrs := make([]attribute.KeyValue, 0, len(e.attrs)+5)
	attrs = append(attrs, e.attrs...)
	attrs = append(attrs, keyURL.String(o.ep.url))
	if o.attempt > 1 {
		attrs = append(attrs, keyResendCount.Int(o.attempt-1))
	}
	switch {
	case o.hedge:
		attrs = append(attrs, keyHedge.Bool(true))
	case o.reason != "":
		attrs = append(attrs, keyRetryReason.String(o.reason))
	}
	ctx, o.span = t.tracer.Start(ctx, "POST", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

// endAttempt ends the span of attempt o.
func endAttempt(o *outcome) {
	o.span.SetAttributes(keyOutcome.String(o.kind.String()), keyWait.Float64(o.slotWait.Seconds()))
	if o.status != 0 {
		o.span.SetAttributes(keyStatus.Int(o.status))
	}
	if o.err != nil {
		o.span.SetAttributes(keyErrorType.String(errorType(o)))
		o.span.SetStatus(codes.Error, o.err.Error())
	}
	o.span.End()
}
