package amlpool

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/amlpool/amlpool/internal/clock"
)

// Defaults of the options below.
const (
	// DefaultMaxResponseBytes is the longest reply body read: room for the
	// scored results of a 4 MB request (the service's payload limit) and more.
	DefaultMaxResponseBytes = 32 << 20
	// DefaultAttemptTimeout bounds one attempt: the service's own limit, after
	// which it abandons a request (docs/azureml.md).
	DefaultAttemptTimeout = 100 * time.Second

	// DefaultMaxAttempts is how many attempts a call makes at most: the first
	// and 3 retries.
	DefaultMaxAttempts = 4

	// DefaultBackoffInitial, DefaultBackoffMultiplier, DefaultBackoffMax and
	// DefaultBackoffJitter make the default backoff schedule (see Backoff),
	// sized for a service that answers in 50–500 ms: the first retry comes
	// about one call's time after the failure, and no wait passes 1.5 s.
	DefaultBackoffInitial    = 50 * time.Millisecond
	DefaultBackoffMultiplier = 2.0
	DefaultBackoffMax        = time.Second
	DefaultBackoffJitter     = 0.5

	// DefaultMaxRetryAfter caps how long a Retry-After hint holds an
	// endpoint back.
	DefaultMaxRetryAfter = 30 * time.Second

	// DefaultRetryBudgetRatio and DefaultRetryBudgetMinPerSecond make the
	// default retry budget: retries may add 20 % to the calls made over
	// RetryBudgetWindow, plus 10 per second at any load (Finagle's and
	// Linkerd's defaults).
	DefaultRetryBudgetRatio        = 0.2
	DefaultRetryBudgetMinPerSecond = 10
	// RetryBudgetWindow is the sliding window the retry budget counts over.
	RetryBudgetWindow = 10 * time.Second

	// DefaultEjectAfter is how many failures in a row eject an endpoint.
	DefaultEjectAfter = 5
	// DefaultEjectFor is how long a first ejection lasts (±20 %).
	DefaultEjectFor = 30 * time.Second
)

// An Option configures a Client. Options are applied in order by New; a later
// option of the same kind wins.
type Option interface {
	apply(*config)
}

// config is everything New needs; defaults come from defaultConfig.
type config struct {
	maxWait          time.Duration
	maxWaitSet       bool // false: wait as long as the call's ctx allows
	httpClient       *http.Client
	maxResponseBytes int64
	attemptTimeout   time.Duration
	allowHTTP        bool
	logger           *slog.Logger
	limiter          Limiter
	balancer         Balancer
	meterProvider    metric.MeterProvider          // nil: no metrics
	tracerProvider   trace.TracerProvider          // nil: no spans
	propagator       propagation.TextMapPropagator // nil: no trace headers sent
	adaptive         bool
	hedge            *hedgingOption // nil: no hedging
	maxWaiting       int            // with maxWaitingSet (priority.go)
	maxWaitingSet    bool           // false: no bound on the line
	priorityAging    time.Duration

	// Retries and health (retry.go, health.go).
	maxAttempts        int
	classifier         func(error) Verdict
	backoff            Backoff
	backoffSet         Backoff // the fields a WithBackoff set, for checkRetries' errors
	maxRetryAfter      time.Duration
	budget             bool
	budgetRatio        float64
	budgetMinPerSecond int
	ejectOff           bool
	ejectAfter         int
	ejectFor           time.Duration

	// Test seams, set through export_test.go or internal packages.
	clock clock.Clock
	rand  func() uint64
}

func defaultConfig() config {
	return config{
		maxResponseBytes: DefaultMaxResponseBytes,
		attemptTimeout:   DefaultAttemptTimeout,
		priorityAging:    DefaultPriorityAging,
		logger:           slog.New(slog.DiscardHandler),
		clock:            clock.Real,
		rand:             rand.Uint64,

		// Retries and health.
		maxAttempts: DefaultMaxAttempts,
		classifier:  Classify,
		backoff: Backoff{
			Initial:    DefaultBackoffInitial,
			Multiplier: DefaultBackoffMultiplier,
			Max:        DefaultBackoffMax,
			Jitter:     DefaultBackoffJitter,
		},
		maxRetryAfter:      DefaultMaxRetryAfter,
		budget:             true,
		budgetRatio:        DefaultRetryBudgetRatio,
		budgetMinPerSecond: DefaultRetryBudgetMinPerSecond,
		ejectAfter:         DefaultEjectAfter,
		ejectFor:           DefaultEjectFor,
	}
}

func buildConfig(opts []Option) (config, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o.apply(&cfg)
		}
	}
	switch {
	case cfg.maxWaitSet && cfg.maxWait < 0:
		return cfg, &ConfigError{Field: "WithMaxWait", Problem: "negative"}
	case cfg.maxResponseBytes <= 0:
		return cfg, &ConfigError{Field: "WithMaxResponseBytes", Problem: "must be positive"}
	case cfg.attemptTimeout <= 0:
		return cfg, &ConfigError{Field: "WithAttemptTimeout", Problem: "must be positive"}
	case cfg.maxWaitingSet && cfg.maxWaiting < 1:
		return cfg, &ConfigError{Field: "WithMaxWaiting", Problem: fmt.Sprintf("%d is not positive; want 1 or more calls", cfg.maxWaiting)}
	case cfg.priorityAging <= 0:
		return cfg, &ConfigError{Field: "WithPriorityAging", Problem: fmt.Sprintf("%v is not positive", cfg.priorityAging)}
	case cfg.hedge != nil && !cfg.hedge.byQuantile && cfg.hedge.delay <= 0:
		return cfg, &ConfigError{Field: "WithHedging", Problem: fmt.Sprintf("delay %v is not positive", cfg.hedge.delay)}
	case cfg.hedge != nil && cfg.hedge.byQuantile && !(cfg.hedge.q > 0 && cfg.hedge.q < 1):
		return cfg, &ConfigError{Field: "WithHedgingQuantile", Problem: fmt.Sprintf("%v is not strictly between 0 and 1", cfg.hedge.q)}
	}
	if err := cfg.checkRetries(); err != nil {
		return cfg, err
	}
	if cfg.logger == nil {
		cfg.logger = slog.New(slog.DiscardHandler)
	}
	if cfg.balancer == nil {
		cfg.balancer = Random()
	}
	return cfg, nil
}

type maxWaitOption time.Duration

func (o maxWaitOption) apply(c *config) { c.maxWait, c.maxWaitSet = time.Duration(o), true }

// WithMaxWait bounds how long a call waits for a free slot when every
// endpoint is full. After d the call fails with ErrNoCapacity. Zero means fail
// fast: ErrNoCapacity at once when no slot is free.
//
// Default: no bound of its own; a call waits, in line with the others, for as
// long as its ctx allows.
func WithMaxWait(d time.Duration) Option { return maxWaitOption(d) }

type httpClientOption struct{ hc *http.Client }

func (o httpClientOption) apply(c *config) { c.httpClient = o.hc }

// WithHTTPClient sends the calls through hc instead of the Client's own.
// The Client uses a shallow copy that never follows redirects (a scoring
// call carries a key, and the key goes to its endpoint's URL only); hc's
// Transport, TLS settings, Jar and Timeout are kept.
//
// Size hc's transport for the calls in flight: an *http.Transport keeps
// only MaxIdleConnsPerHost idle connections per host, 2 when it is zero (as
// in http.DefaultTransport), so at 20 calls in flight to one host most
// connections are closed after each reply and dialled again (with TLS) for
// the next. Set MaxIdleConnsPerHost to at least the sum of the caps of the
// endpoints on one host; all the endpoints of a Classic web service share
// their region's host.
//
// Default: a dedicated client with keep-alive connections enough for every
// endpoint's cap, never http.DefaultClient.
func WithHTTPClient(hc *http.Client) Option { return httpClientOption{hc} }

type maxResponseBytesOption int64

func (o maxResponseBytesOption) apply(c *config) { c.maxResponseBytes = int64(o) }

// WithMaxResponseBytes bounds the reply body read from an endpoint; a longer
// reply fails the attempt with ErrResponseTooLarge. Default:
// DefaultMaxResponseBytes (32 MiB).
func WithMaxResponseBytes(n int64) Option { return maxResponseBytesOption(n) }

type attemptTimeoutOption time.Duration

func (o attemptTimeoutOption) apply(c *config) { c.attemptTimeout = time.Duration(o) }

// WithAttemptTimeout bounds each attempt, separately from the call's ctx,
// which bounds all of them. An attempt's time includes its Credential's
// Token, if any. Default: DefaultAttemptTimeout (100 s).
func WithAttemptTimeout(d time.Duration) Option { return attemptTimeoutOption(d) }

type insecureHTTPOption struct{}

func (insecureHTTPOption) apply(c *config) { c.allowHTTP = true }

// WithInsecureHTTP allows http:// endpoint URLs on non-loopback hosts, which
// sends keys in clear text. Loopback hosts (an address in 127.0.0.0/8, ::1
// or ::ffff:127.0.0.0/104, with a zone or without, and the name localhost)
// are allowed without it, for tests; a name that only starts so, such as
// 127.0.0.1.example.com, is not, and neither is "localhost." with a
// trailing dot, which Go's resolver does not find in /etc/hosts and asks
// DNS for. Default: https required.
func WithInsecureHTTP() Option { return insecureHTTPOption{} }

type loggerOption struct{ l *slog.Logger }

func (o loggerOption) apply(c *config) { c.logger = o.l }

// WithLogger logs through l: one Debug line per attempt ("amlpool: attempt",
// with its endpoint, outcome, status, latency and wait), Warn lines when
// an endpoint is ejected or readmitted, when half or more of them are
// ejected, when the retry budget runs out, and when a full line starts
// shedding calls (WithMaxWaiting), and an Info line for each change
// SetEndpoints makes. Keys are never logged. Default: no logging; a nil l means the default.
func WithLogger(l *slog.Logger) Option { return loggerOption{l} }

type limiterOption struct{ l Limiter }

func (o limiterOption) apply(c *config) { c.limiter = o.l }

// WithLimiter adds a Limiter shared beyond this process, such as
// redislimit's, behind the Client's own per-endpoint slots. A call first
// takes one of the Client's slots, then a Limiter lease; WithMaxWait, when
// positive, bounds the two waits together. A Limiter that is also a
// HealthSharer carries the endpoints' health between the replicas too.
// Default: none; each Client enforces each endpoint's cap on its own.
func WithLimiter(l Limiter) Option { return limiterOption{l} }

type balancerOption struct{ b Balancer }

func (o balancerOption) apply(c *config) { c.balancer = o.b }

// WithBalancer chooses how a call picks among endpoints with a free slot.
// Default: Random().
func WithBalancer(b Balancer) Option { return balancerOption{b} }

type adaptiveLimitOption struct{}

func (adaptiveLimitOption) apply(c *config) { c.adaptive = true }

// WithAdaptiveLimit lets each endpoint's limit move between 1 and its
// MaxConcurrentCalls by AIMD: a throttle (VerdictFull: Classic's 503
// RequestThrottled, an online endpoint's 429 Too many pending requests) or
// a rate limit (a 429 given VerdictRetry, such as an online endpoint's 429
// Rate-limited) cuts it by 30 % (at most once per round trip), and each
// success while at least half of it is in use adds 1/256 of a slot. A rate
// limit still counts neither way towards ejection. Use it when other clients (replicas of your service, say)
// share the endpoints: each then settles on a share that keeps the endpoint
// just under its cap, without coordination, and throttles become rare. In
// simulation, 10 replicas sharing 5 endpoints of 20 slots went from 59 % of
// requests throttled to under 1 % within 2 s, at 93 % of capacity.
// EndpointStats.Limit shows the limit in force.
//
// Default: off; each endpoint's limit is its MaxConcurrentCalls.
func WithAdaptiveLimit() Option { return adaptiveLimitOption{} }

type hedgingOption struct {
	byQuantile bool
	delay      time.Duration // unless byQuantile
	q          float64       // if byQuantile
}

func (o hedgingOption) apply(c *config) { c.hedge = &o }

// WithHedging sends a second copy of an attempt that has had no reply after
// delay to another endpoint, if one has a free slot and no call is waiting
// for a slot. The first success wins; the other copy is cancelled and its slot
// released at once. A call makes at most one copy per attempt, copies never
// exceed an endpoint's limit, and they spend the retry budget as retries do
// (a copy that is not sent in the end, one that gave up waiting at a
// Limiter, spends none).
// Hedging cuts the tail latency that one stalling endpoint causes, at the
// price of extra calls. Only hedge calls that are safe to run twice: scoring
// is, unless the model has side effects.
//
// Default: off. A later WithHedging or WithHedgingQuantile replaces this one.
func WithHedging(delay time.Duration) Option { return hedgingOption{delay: delay} }

// WithHedgingQuantile is WithHedging with a delay that follows the q-quantile
// (0 < q < 1; 0.95 is a good start) of the latencies of the pool's successful
// attempts over the last 10 to 20 seconds. No attempt is hedged until the
// window holds 10 / (1 − q) replies (200 for 0.95), so after a quiet spell
// of 20 seconds or more hedging waits for that many again.
func WithHedgingQuantile(q float64) Option { return hedgingOption{byQuantile: true, q: q} }
