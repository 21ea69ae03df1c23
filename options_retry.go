package amlpool

import (
	"fmt"
	"math"
	"time"
)

// Options for retries, backoff, the retry budget and endpoint health. Their
// defaults are the Default… constants in options.go.

type maxAttemptsOption int

func (o maxAttemptsOption) apply(c *config) { c.maxAttempts = int(o) }

// WithMaxAttempts bounds the attempts of one call, the first included: 3
// attempts are the first and 2 retries. Every attempt counts (each request
// sent, failovers after a throttle too, and an attempt whose Credential gave
// no token, which sent nothing), but for one that met a 401 for a key (or
// Credential) that SetEndpoints replaced while it was in flight: the call
// goes again with the new key, and only another replacement can cost it
// another such attempt. n must be at least 1. Default: DefaultMaxAttempts
// (4).
//
// A retry sends the request again, and an attempt that timed out, lost its
// connection after sending, or got a 5xx may have run on the service all the
// same. Scoring is safe to repeat; for a deployment with side effects, use
// WithoutRetries, or a classifier (WithClassifier) that retries only what
// was refused before it ran: throttles, endpoint faults, a refused
// connection (a *net.OpError whose Op is "dial").
func WithMaxAttempts(n int) Option { return maxAttemptsOption(n) }

// WithoutRetries makes every call a single attempt: its error is returned as
// it is, a throttle included. It is WithMaxAttempts(1), so an attempt that
// met a 401 for a key SetEndpoints replaced while it was in flight is still
// followed by one with the new key.
func WithoutRetries() Option { return maxAttemptsOption(1) }

type classifierOption func(error) Verdict

func (o classifierOption) apply(c *config) { c.classifier = o }

// WithClassifier decides with f which failed attempts are retried and how
// (see Verdict). f gets the attempt's error: an *APIError for a non-2xx
// reply (wrapped when its body was cut short: reach it with errors.As), a
// *CredentialError when the endpoint's Credential gave no token, a
// transport error otherwise; it is never called for a call whose ctx is
// done. A Verdict other than the four constants means VerdictGiveUp. f must
// be safe for concurrent use and should return fast. nil means Classify.
// Default: Classify, the services' tables (classic and online).
func WithClassifier(f func(err error) Verdict) Option { return classifierOption(f) }

// Backoff is the schedule of waits before retries after a VerdictRetry
// failure, and after a throttle once every endpoint has throttled the call.
// The k-th wait of a call is Initial × Multiplier^(k−1), at most Max, then
// drawn uniformly from ±Jitter of that (cenkalti/backoff's exponential
// backoff, a fresh one per call). A zero field takes its default. Jitter
// cannot be turned off: calls failing together must not retry in step.
//
// The default schedule (DefaultBackoffInitial 50 ms, DefaultBackoffMultiplier
// 2, DefaultBackoffMax 1 s, DefaultBackoffJitter 0.5):
//
//	wait   nominal   drawn from
//	1      50 ms     25–75 ms
//	2      100 ms    50–150 ms
//	3      200 ms    100–300 ms
//	4      400 ms    200–600 ms
//	5      800 ms    400 ms–1.2 s
//	6+     1 s       0.5–1.5 s
//
// With the default 4 attempts a call waits at most 3 times: 350 ms in all on
// average, 525 ms at most. A failover to another endpoint after a throttle
// does not wait and does not advance the schedule.
type Backoff struct {
	Initial    time.Duration // the first wait, before jitter; > 0
	Multiplier float64       // growth from one wait to the next; ≥ 1
	Max        time.Duration // cap on a wait before jitter; ≥ Initial, ≤ 24 h
	Jitter     float64       // spread of each wait, as a share of it; in (0, 1]
}

type backoffOption Backoff

func (o backoffOption) apply(c *config) {
	b := Backoff(o)
	d, set := &c.backoff, &c.backoffSet
	if b.Initial != 0 {
		d.Initial, set.Initial = b.Initial, b.Initial
	}
	if b.Multiplier != 0 {
		d.Multiplier = b.Multiplier
	}
	if b.Max != 0 {
		d.Max, set.Max = b.Max, b.Max
	}
	if b.Jitter != 0 {
		d.Jitter = b.Jitter
	}
}

// WithBackoff sets the backoff schedule; zero fields keep their defaults, so
// WithBackoff(Backoff{Max: 5 * time.Second}) only raises the cap. Max must
// not be below Initial, a default included: an Initial over 1 s needs a Max
// too (WithBackoff(Backoff{Initial: 2 * time.Second, Max: 30 * time.Second}));
// a Max under 50 ms, an Initial. A wait
// that would pass the call's ctx deadline is not started: the call returns
// its last error at once. Default: see Backoff.
func WithBackoff(b Backoff) Option { return backoffOption(b) }

type maxRetryAfterOption time.Duration

func (o maxRetryAfterOption) apply(c *config) { c.maxRetryAfter = time.Duration(o) }

// WithMaxRetryAfter caps the delay hints of failed replies: retry-after-ms,
// x-ms-retry-after-ms and Retry-After (seconds or an HTTP date), read in that
// order, as azcore reads them: a millisecond header that reads zero or
// cannot be read gives way to the next. A hint cools its endpoint down: no
// call is sent there until it passes, while calls go on to other endpoints.
// A call waits for a hint only when every endpoint is held back. A 429
// given VerdictRetry without a hint holds its endpoint back for the
// backoff's first wait (Backoff.Initial), at most d. Zero ignores hints,
// and holds nothing back. Default: DefaultMaxRetryAfter (30 s).
func WithMaxRetryAfter(d time.Duration) Option { return maxRetryAfterOption(d) }

type retryBudgetOption struct {
	on           bool
	ratio        float64
	minPerSecond int
}

func (o retryBudgetOption) apply(c *config) {
	c.budget, c.budgetRatio, c.budgetMinPerSecond = o.on, o.ratio, o.minPerSecond
}

// WithRetryBudget bounds the load retries add: over the last
// RetryBudgetWindow (10 s), retries may number at most ratio × the calls
// made, plus minPerSecond × 10 whatever the load. When the budget is spent a
// failed call returns its error at once, wrapped in a *CallError that
// matches ErrRetryBudgetExhausted, instead of piling retries on a struggling
// service. Every attempt after a call's first counts as a retry. ratio must
// be at least 0 and minPerSecond at least 0. Default: DefaultRetryBudgetRatio
// (0.2) and DefaultRetryBudgetMinPerSecond (10).
func WithRetryBudget(ratio float64, minPerSecond int) Option {
	return retryBudgetOption{true, ratio, minPerSecond}
}

// WithoutRetryBudget lets every call make all its attempts whatever the load
// retries add.
func WithoutRetryBudget() Option { return retryBudgetOption{on: false} }

// maxBackoff bounds Backoff.Max: a wait drawn from ±Jitter of a longer one
// could overflow a time.Duration and come out negative, no wait at all.
const maxBackoff = 24 * time.Hour

// maxEjectFor bounds WithEjection's base: the longest ejection, 10 × base
// + 20 %, then fits a time.Duration many times over.
const maxEjectFor = 24 * time.Hour

type ejectionOption struct {
	off   bool
	after int
	base  time.Duration
}

func (o ejectionOption) apply(c *config) {
	c.ejectOff, c.ejectAfter, c.ejectFor = o.off, o.after, o.base
}

// WithEjection takes an endpoint out of rotation after failures in a row
// that are worth retrying (VerdictRetry: 5xx, timeouts, refused or dropped
// connections; throttles, 429s for the endpoint's rate limit and cancelled
// calls count neither way, any other reply resets the count), and at once
// after an endpoint fault
// (VerdictEndpointFault: 401, 403, 404, a TLS certificate not trusted, an
// https:// URL or proxy that does not speak TLS), which is logged at Warn
// with the endpoint's name and the status. The first ejection lasts base,
// each one in a row twice the last, up to 10 × base, each ±20 %; then one
// call probes the endpoint and its outcome readmits it or ejects it again.
// Calls waiting for a slot do not wait for an ejected endpoint's. When half or more of the
// endpoints are out, ejection is ignored and every endpoint takes calls (the
// panic threshold); an endpoint out for a fault is not counted and stays
// out, unless every endpoint is, when calls go to them and fail at once
// with the endpoint's error. failures must be at least 1 and base positive
// and at most 24 h. Default: DefaultEjectAfter (5) and DefaultEjectFor
// (30 s: 30 s, 1 min, 2 min, 4 min, 5 min, 5 min ...).
func WithEjection(failures int, base time.Duration) Option {
	return ejectionOption{after: failures, base: base}
}

// WithoutEjection keeps every endpoint in rotation however it fails, an
// endpoint fault included (the call still fails over from it at once).
// Retry-After cool-downs still apply.
func WithoutEjection() Option {
	return ejectionOption{off: true, after: DefaultEjectAfter, base: DefaultEjectFor}
}

// checkRetries validates the options above.
func (cfg *config) checkRetries() error {
	b := cfg.backoff
	switch {
	case cfg.maxAttempts < 1:
		return &ConfigError{Field: "WithMaxAttempts", Problem: fmt.Sprintf("%d; want at least 1 (WithoutRetries for a single attempt)", cfg.maxAttempts)}
	case b.Initial < 0:
		return &ConfigError{Field: "WithBackoff", Problem: "negative Initial"}
	case b.Max < b.Initial && cfg.backoffSet.Max == 0:
		return &ConfigError{Field: "WithBackoff", Problem: fmt.Sprintf("Initial %v is over Max, which defaults to %v (DefaultBackoffMax): set Max too, at least Initial", b.Initial, b.Max)}
	case b.Max < b.Initial && cfg.backoffSet.Initial == 0:
		return &ConfigError{Field: "WithBackoff", Problem: fmt.Sprintf("Max %v is below Initial, which defaults to %v (DefaultBackoffInitial): set Initial too, at most Max", b.Max, b.Initial)}
	case b.Max < b.Initial:
		return &ConfigError{Field: "WithBackoff", Problem: fmt.Sprintf("Max %v is below Initial %v", b.Max, b.Initial)}
	case b.Max > maxBackoff:
		return &ConfigError{Field: "WithBackoff", Problem: fmt.Sprintf("Max %v is over %v", b.Max, maxBackoff)}
	case !(b.Multiplier >= 1) || math.IsInf(b.Multiplier, 0):
		return &ConfigError{Field: "WithBackoff", Problem: fmt.Sprintf("Multiplier %v; want a finite number ≥ 1", b.Multiplier)}
	case !(b.Jitter > 0 && b.Jitter <= 1):
		return &ConfigError{Field: "WithBackoff", Problem: fmt.Sprintf("Jitter %v; want more than 0, at most 1", b.Jitter)}
	case cfg.maxRetryAfter < 0:
		return &ConfigError{Field: "WithMaxRetryAfter", Problem: "negative"}
	case cfg.budget && (!(cfg.budgetRatio >= 0) || math.IsInf(cfg.budgetRatio, 0)):
		return &ConfigError{Field: "WithRetryBudget", Problem: fmt.Sprintf("ratio %v; want a finite number ≥ 0", cfg.budgetRatio)}
	case cfg.budget && cfg.budgetMinPerSecond < 0:
		return &ConfigError{Field: "WithRetryBudget", Problem: "negative minPerSecond"}
	case cfg.ejectAfter < 1:
		return &ConfigError{Field: "WithEjection", Problem: fmt.Sprintf("failures %d; want at least 1 (WithoutEjection to turn it off)", cfg.ejectAfter)}
	case cfg.ejectFor <= 0:
		return &ConfigError{Field: "WithEjection", Problem: "base must be positive"}
	case cfg.ejectFor > maxEjectFor:
		return &ConfigError{Field: "WithEjection", Problem: fmt.Sprintf("base %v is over %v (ejections grow to 10 × base); to keep an endpoint out, remove it with SetEndpoints", cfg.ejectFor, maxEjectFor)}
	}
	if cfg.classifier == nil {
		cfg.classifier = Classify
	}
	return nil
}
