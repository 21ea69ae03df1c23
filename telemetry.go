package amlpool

import (
	"context"
	"log/slog"
	"net/url"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// telemetry turns what a Client does into metrics (metrics.go), spans
// (trace.go) and log lines (log.go). A Client has none when no MeterProvider,
// TracerProvider or logger is configured; then nothing below runs, and the
// call path pays one nil check per hook.
//
// The Client calls it at four points: around the wait for a slot (waited),
// at the start of an attempt (startAttempt), as an observer when the attempt
// is done (attemptDone), and around the whole call (startCall, endCall).
// Everything else it learns from the outcome: the retry and health code mark
// ejections (outcome.ejected) and budget refusals (outcome.stop), and the
// hedging code marks hedges (outcome.hedge). The warn lines for ejection,
// readmission and an exhausted retry budget are health.go's and budget.go's.
type telemetry struct {
	log     *slog.Logger // nil: no log lines
	metrics *metrics     // nil: no MeterProvider
	tracer  trace.Tracer // nil: no TracerProvider

	eps []epTelemetry // by endpoint index
}

// epTelemetry is what telemetry knows of one endpoint.
type epTelemetry struct {
	name  string
	attrs []attribute.KeyValue // semantic-convention attributes of every request to it
}

// scopeName names amlpool's Meter and Tracer.
const scopeName = "github.com/amlpool/amlpool"

// Attribute keys: OpenTelemetry's semantic conventions for HTTP clients
// (https://opentelemetry.io/docs/specs/semconv/http/), then amlpool's own.
const (
	keyMethod      = attribute.Key("http.request.method")
	keyStatus      = attribute.Key("http.response.status_code")
	keyResendCount = attribute.Key("http.request.resend_count")
	keyServerAddr  = attribute.Key("server.address")
	keyServerPort  = attribute.Key("server.port")
	keyURL         = attribute.Key("url.full")
	keyErrorType   = attribute.Key("error.type")

	keyEndpoint    = attribute.Key("amlpool.endpoint")     // the endpoint's Name
	keyOutcome     = attribute.Key("amlpool.outcome")      // an outcomeKind
	keyRetryReason = attribute.Key("amlpool.retry.reason") // outcome.retryReason of the attempt before
	keyHedge       = attribute.Key("amlpool.hedge")
	keyAttempts    = attribute.Key("amlpool.attempts")
	keyWait        = attribute.Key("amlpool.slot.wait") // seconds
)

// newTelemetry returns the Client's telemetry, or nil when cfg asks for none.
func newTelemetry(cfg *config, eps []*endpoint, p *pool) (*telemetry, error) {
	t := &telemetry{}
	if cfg.logger.Handler() != slog.DiscardHandler {
		t.log = cfg.logger
	}
	if cfg.tracerProvider != nil {
		t.tracer = cfg.tracerProvider.Tracer(scopeName)
	}
	if t.log == nil && t.tracer == nil && cfg.meterProvider == nil {
		return nil, nil
	}
	t.eps = make([]epTelemetry, len(eps))
	for i, ep := range eps {
		t.eps[i] = epTelemetry{name: ep.name, attrs: endpointAttrs(ep)}
	}
	if cfg.meterProvider != nil {
		m, err := newMetrics(cfg.meterProvider.Meter(scopeName), t.eps, eps, p)
		if err != nil {
			return nil, &ConfigError{Field: "WithMeterProvider", Problem: err.Error()}
		}
		t.metrics = m
	}
	return t, nil
}

// endpointAttrs are the attributes of every request to ep. The URL carries
// no key (keys go in a header), so url.full is safe to record.
func endpointAttrs(ep *endpoint) []attribute.KeyValue {
	u, _ := url.Parse(ep.url) // parsed once already by New
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	n, _ := strconv.Atoi(port)
	return []attribute.KeyValue{
		keyMethod.String("POST"),
		keyServerAddr.String(u.Hostname()),
		keyServerPort.Int(n),
		keyEndpoint.String(ep.name),
	}
}

// outcomeKind sorts attempts for metrics, spans and logs.
type outcomeKind uint8

const (
	kindNone           outcomeKind = iota // not sorted yet
	kindSuccess                           // a 2xx reply, read in full
	kindThrottled                         // 503 RequestThrottled: the endpoint was full
	kindClientError                       // another 3xx or 4xx reply
	kindServerError                       // another 5xx reply
	kindTransportError                    // no usable reply: refused, reset, timed out, body unreadable or too large
	kindCancelled                         // the call's ctx ended before a reply came
	kindAbandoned                         // a hedged copy cancelled because the other copy answered first
	numKinds
)

var kindNames = [numKinds]string{"", "success", "throttled", "client_error", "server_error", "transport_error", "cancelled", "abandoned"}

func (k outcomeKind) String() string { return kindNames[k] }

// kindOf sorts the outcome of an attempt made under ctx.
func kindOf(ctx context.Context, o *outcome) outcomeKind {
	switch {
	case o.err == nil:
		return kindSuccess
	case o.abandoned:
		return kindAbandoned
	case o.throttled:
		return kindThrottled
	case o.status >= 500:
		return kindServerError
	case o.status >= 300:
		return kindClientError
	case ctx.Err() != nil:
		return kindCancelled
	default:
		return kindTransportError
	}
}

// errorType is the error.type attribute of a failed attempt: the status code
// when a reply came, as the conventions ask, else the outcome's kind.
func errorType(o *outcome) string {
	if o.status != 0 {
		return strconv.Itoa(o.status)
	}
	return o.kind.String()
}

// waited records a wait for a slot that ended with err (nil: a slot).
func (t *telemetry) waited(d time.Duration, err error) {
	if t.metrics != nil {
		t.metrics.waited(d, err)
	}
}

// attemptDone is telemetry's observer: the attempt's metrics, the end of its
// span and its debug line.
func (t *telemetry) attemptDone(o *outcome) {
	if t.metrics != nil {
		t.metrics.attemptDone(o)
	}
	if o.span != nil {
		endAttempt(o)
	}
	if t.log != nil {
		t.logAttempt(o)
	}
}

// close stops the metrics' callbacks. It is safe on a nil *telemetry.
func (t *telemetry) close() {
	if t != nil && t.metrics != nil {
		t.metrics.close()
	}
}
