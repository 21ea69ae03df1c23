package amlpool

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/amlpool/amlpool/internal/pool"
)

// telemetry turns what a Client does into metrics (metrics.go), spans
// (trace.go) and log lines (log.go). A Client has none when no MeterProvider,
// TracerProvider or logger is configured; then nothing below runs, and the
// call path pays one nil check per hook.
//
// The Client calls it at a few points: around the wait for a slot (waited),
// at the start of an attempt (startAttempt), once an attempt is concluded
// (attemptDone), around the whole call (startCall, endCall), for a hedge
// the retry budget refused (hedgeRefused), and for each change
// SetEndpoints makes (changed). It only reads: everything it learns
// of an attempt is in the attempt's value, the effects of its release
// (attempt.fx: an ejection, a readmission, a new limit) and the call's
// decision (attempt.stop) included. The warn line for an exhausted retry
// budget is budget.go's.
type telemetry struct {
	log     *slog.Logger // nil: no log lines
	warn    *slog.Logger // the configured logger, for warnings; never nil
	metrics *metrics     // nil: no MeterProvider
	tracer  trace.Tracer // nil: no TracerProvider
	meter   metric.Meter // nil: no MeterProvider
}

// epTelemetry is what telemetry knows of one endpoint.
type epTelemetry struct {
	name  string
	url   string               // its URL as spans show it (spanURL)
	attrs []attribute.KeyValue // semantic-convention attributes of every request to it
	m     epMetrics            // its instruments' attributes and counts, with metrics
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
	keyPriority    = attribute.Key("amlpool.priority") // a Priority's String
	keyAttempts    = attribute.Key("amlpool.attempts")
	keyWait        = attribute.Key("amlpool.slot.wait") // seconds
)

// newTelemetry returns the Client's telemetry, or nil when cfg asks for none.
// Its metrics start with start, once the pool exists.
func newTelemetry(cfg *config) (*telemetry, error) {
	t := &telemetry{warn: cfg.logger}
	if cfg.logger.Handler() != slog.DiscardHandler {
		t.log = cfg.logger
	}
	if cfg.tracerProvider != nil {
		t.tracer = cfg.tracerProvider.Tracer(scopeName)
	}
	if cfg.meterProvider != nil {
		t.meter = cfg.meterProvider.Meter(scopeName)
	}
	if t.log == nil && t.tracer == nil && t.meter == nil {
		return nil, nil
	}
	return t, nil
}

// start registers the metrics, which read the pool's live endpoints. It is
// safe on a nil *telemetry.
func (t *telemetry) start(p *pool.Pool) error {
	if t == nil || t.meter == nil {
		return nil
	}
	m, err := newMetrics(t.meter, p)
	if err != nil {
		return &ConfigError{Field: "WithMeterProvider", Problem: err.Error()}
	}
	t.metrics = m
	return nil
}

// newEpTelemetry returns what telemetry keeps of the endpoint named name at
// u, counting its attempts in kinds, its Name's. The
// attributes are built once here, so that recording allocates nothing.
func newEpTelemetry(name string, u *url.URL, kinds *outcomeCounts) *epTelemetry {
	t := &epTelemetry{name: name, url: spanURL(u), attrs: endpointAttrs(name, u)}
	t.m.init(t, kinds)
	return t
}

// endpointAttrs are the attributes of every request to the endpoint named
// name at u. The URL carries no key (keys go in a header, and New refuses
// a URL whose query holds one), and url.full shows its query's values
// redacted (spanURL), which may hold another secret.
func endpointAttrs(name string, u *url.URL) []attribute.KeyValue {
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
		keyEndpoint.String(name),
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
	kindCancelled                         // the call's ctx ended before a reply was read in full
	kindAbandoned                         // a hedged copy cancelled because the other copy answered first
	kindEndpointFault                     // the endpoint cannot serve anyone (401, 403, 404, an untrusted TLS certificate, a plain-HTTP server or proxy for an https:// URL, by default)
	numKinds
)

var kindNames = [numKinds]string{"", "success", "throttled", "client_error", "server_error", "transport_error", "cancelled", "abandoned", "endpoint_fault"}

func (k outcomeKind) String() string { return kindNames[k] }

// kindOf sorts an attempt, once judged.
func kindOf(a *attempt) outcomeKind {
	switch {
	case a.err == nil:
		return kindSuccess
	case a.result == pool.Abandoned:
		return kindAbandoned
	case a.result == pool.Full:
		return kindThrottled
	case a.result == pool.Fault:
		return kindEndpointFault
	case a.result == pool.Cancelled:
		// Before the status: a call that gave up while an error reply was
		// being read counts as cancelled, as Stats counts it.
		return kindCancelled
	case a.status >= 500:
		return kindServerError
	case a.status >= 300:
		return kindClientError
	default:
		return kindTransportError
	}
}

// errorType is the error.type attribute of a failed attempt: the status code
// when the reply's status is an error (4xx, 5xx), as the conventions ask,
// else the outcome's kind (a 2xx whose body was too large or unreadable is
// a transport_error, not a "200").
func errorType(a *attempt) string {
	if a.status >= 400 {
		return strconv.Itoa(a.status)
	}
	return a.kind.String()
}

// retryReason names, for metrics, why a failed attempt was worth retrying:
// "throttled", "timeout", "transport" or the HTTP status.
func retryReason(a *attempt) string {
	switch {
	case a.verdict == VerdictFull:
		return "throttled"
	case a.status != 0:
		return strconv.Itoa(a.status)
	case errors.Is(a.err, context.DeadlineExceeded):
		return "timeout"
	}
	return "transport"
}

// waited records a wait for a slot that ended with err (nil: a slot).
func (t *telemetry) waited(d time.Duration, err error) {
	if t.metrics != nil {
		t.metrics.waited(d, err)
	}
}

// hedgeRefused records a hedge the retry budget refused (the budget logs
// its own warning).
func (t *telemetry) hedgeRefused() {
	if t.metrics != nil {
		t.metrics.hedgeRefused()
	}
}

// attemptDone records a concluded attempt: its metrics, the end of its
// span, its debug line, and the warnings its effects call for. The span
// ends even if an instrument of the MeterProvider's, or the logger,
// panics: the panic goes on to the call.
func (t *telemetry) attemptDone(a *attempt) {
	if a.span != nil {
		defer endAttempt(a)
	}
	if t.metrics != nil {
		t.metrics.attemptDone(a)
	}
	if t.log != nil {
		t.logAttempt(a)
	}
	t.logEffects(a)
}

// close stops the metrics' callbacks. It is safe on a nil *telemetry.
func (t *telemetry) close() {
	if t != nil && t.metrics != nil {
		t.metrics.close()
	}
}
