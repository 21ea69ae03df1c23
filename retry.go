package amlpool

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/amlpool/amlpool/internal/pool"
)

// This file decides whether a call goes on after a failed attempt (the
// Verdict), how long it waits first (backoff, Retry-After) and whether the
// retry budget allows it. The loop itself is Client.do.

// Verdict is what a call does after an attempt failed. A classifier (Classify
// by default, or one given with WithClassifier) gives one per failed attempt.
type Verdict uint8

const (
	// VerdictGiveUp: the error is permanent (bad input, a redirect, a body
	// over the limit). The call returns it. The zero Verdict.
	VerdictGiveUp Verdict = iota
	// VerdictFull: the endpoint was at its cap, not broken. The call goes at
	// once, with no backoff, to another endpoint with a free slot; it backs
	// off only once every usable endpoint has answered it so. A full endpoint
	// gets no health penalty.
	VerdictFull
	// VerdictRetry: a transient failure. The call waits out a backoff, then
	// tries an endpoint it has not tried yet when one is usable. The attempt
	// counts towards the endpoint's ejection (WithEjection), unless it was
	// a 429 reply (Classic's 429, an online endpoint's 429 Rate-limited):
	// the endpoint's rate limit, which its Retry-After (or, without one,
	// the backoff's first wait) enforces by holding it back, is no sign
	// that it is sick.
	VerdictRetry
	// VerdictEndpointFault: the endpoint cannot serve anyone (its key was
	// regenerated or is wrong, access was revoked, it was deleted, its TLS
	// certificate is not trusted, its https:// URL or https:// proxy
	// does not speak TLS), not the request is bad. The endpoint leaves
	// rotation at once (WithEjection's back-off and probe) and the call goes
	// at once, with no backoff, to an endpoint it has not tried; when none
	// is left, the call returns the error. After a 401, an endpoint with a
	// second key (SecondaryKey) is first tried again at once with the other
	// key.
	VerdictEndpointFault
)

// String returns "give up", "full", "retry" or "endpoint fault".
func (v Verdict) String() string {
	switch v {
	case VerdictGiveUp:
		return "give up"
	case VerdictFull:
		return "full"
	case VerdictRetry:
		return "retry"
	case VerdictEndpointFault:
		return "endpoint fault"
	}
	return "Verdict(" + strconv.Itoa(int(v)) + ")"
}

// Classify is the default classifier: the tables of docs/azureml.md, one
// for each Kind of endpoint. It sees the error of one failed attempt: an
// *APIError for a non-2xx reply (its Kind says which table applies), a
// *CredentialError when the endpoint's Credential gave no token, a
// transport error otherwise.
//
//	                      Classic                    Online
//	VerdictFull           503 RequestThrottled,      429 Too many pending
//	                      503 TooManyConcurrent-     requests
//	                      Requests
//	VerdictRetry          408 (but RequestCanceled), 408, 429 Rate-limited
//	                      429, 500, 502, 503, 504    (it cools the
//	                                                 endpoint), 424 with
//	                                                 a model 5xx, 408 or 429,
//	                                                 500, 502, 503, 504
//	VerdictEndpointFault  401, 403, 404              401, 403, 404
//	VerdictGiveUp         400, 413, 501, every       400, 424 with a model
//	                      other status               4xx (the input's fault),
//	                                                 every other status
//
// For both kinds: a transport error (connection refused or reset, EOF
// before the reply, the attempt timeout of WithAttemptTimeout, a 2xx reply
// cut short), a 2xx reply that is not JSON or is an error body
// (ErrMalformedResponse), and a *CredentialError are VerdictRetry; a TLS
// trust error (a certificate not trusted, expired, or for another host) and
// a server or https:// proxy that does not speak TLS (a server that answers
// an https:// URL in plain HTTP, http.ErrSchemeMismatch; a proxy's "tls:
// first record does not look like a TLS handshake") are
// VerdictEndpointFault; ErrResponseTooLarge is VerdictGiveUp. An error reply
// whose body is cut short is judged by its status all the same: it is an
// *APIError, wrapped with what ended the body.
//
// A 429 reply given VerdictRetry (Classic's 429, an online endpoint's 429
// Rate-limited), by Classify or by a classifier of your own, does not count
// towards its endpoint's ejection: it is the endpoint's rate limit, not a
// sign that it is sick. The call backs off all the same, and the reply's
// Retry-After holds the endpoint back; without one, the endpoint is held
// back for the backoff's first wait (Backoff.Initial, 50 ms by default),
// so that the calls that start meanwhile go to other endpoints rather
// than meet the limit too. With WithAdaptiveLimit, it also cuts the
// endpoint's limit.
//
// A call whose ctx is done never retries, whatever the classifier says, so a
// classifier need not check for it. To change one entry, wrap Classify:
//
//	amlpool.WithClassifier(func(err error) amlpool.Verdict {
//		if apiErr, ok := errors.AsType[*amlpool.APIError](err); ok && apiErr.StatusCode == 409 {
//			return amlpool.VerdictRetry // a Kubernetes endpoint's conflict, retried
//		}
//		return amlpool.Classify(err)
//	})
func Classify(err error) Verdict {
	if err == nil {
		return VerdictGiveUp
	}
	var credErr *CredentialError
	if errors.As(err, &credErr) {
		return VerdictRetry // nothing was sent, whatever the Credential met; bounded by the attempts
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		if apiErr.Kind == Online {
			return classifyOnline(apiErr)
		}
		return classifyStatus(apiErr)
	}
	if errors.Is(err, ErrResponseTooLarge) {
		return VerdictGiveUp
	}
	if isTLSFault(err) {
		// The endpoint's certificate will not be trusted on the next try
		// either, nor will a server or proxy that speaks plain HTTP start
		// speaking TLS; another endpoint may serve the call. An endpoint that
		// cannot serve anyone, as for a 401.
		return VerdictEndpointFault
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) && urlErr.Op != "Post" {
		return VerdictGiveUp // a bad URL, not a failed exchange
	}
	return VerdictRetry // refused, reset, EOF, attempt timeout, short read, malformed 2xx
}

func classifyStatus(e *APIError) Verdict {
	switch {
	case e.Throttled():
		return VerdictFull
	case e.StatusCode == http.StatusRequestTimeout:
		if e.hasDetail("RequestCanceled") { // in any detail, in any case, as a throttle's
			return VerdictGiveUp // the service says the client cancelled
		}
		return VerdictRetry
	case e.StatusCode == http.StatusUnauthorized,
		e.StatusCode == http.StatusForbidden,
		e.StatusCode == http.StatusNotFound:
		return VerdictEndpointFault
	case e.StatusCode == http.StatusTooManyRequests,
		e.StatusCode == http.StatusInternalServerError,
		e.StatusCode == http.StatusBadGateway,
		e.StatusCode == http.StatusServiceUnavailable,
		e.StatusCode == http.StatusGatewayTimeout:
		return VerdictRetry
	default:
		return VerdictGiveUp // 4xx input errors, 501, 3xx
	}
}

// isTLSFault reports whether err says no TLS connection to the endpoint
// can be made: its certificate, or that of the https:// proxy it goes
// through, is not trusted (unknown authority, expired, for another host),
// or the server or the https:// proxy does not speak TLS: its first record
// is no TLS handshake (a tls.RecordHeaderError whose Conn is set, or whose
// header is "HTTP/", a plain-HTTP answer). net/http turns the latter into
// http.ErrSchemeMismatch only when it comes unwrapped, from the server; a
// proxy's comes wrapped in a "proxyconnect" *net.OpError.
func isTLSFault(err error) bool {
	if errors.Is(err, http.ErrSchemeMismatch) {
		return true
	}
	if rh, ok := errors.AsType[tls.RecordHeaderError](err); ok && (rh.Conn != nil || string(rh.RecordHeader[:]) == "HTTP/") {
		return true
	}
	var verifyErr *tls.CertificateVerificationError
	var authErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidErr x509.CertificateInvalidError
	return errors.As(err, &verifyErr) || errors.As(err, &authErr) ||
		errors.As(err, &hostErr) || errors.As(err, &invalidErr)
}

// classify judges an attempt's error with the classifier; a verdict the
// classifier made up gives up. (An attempt whose ctx is done is never
// classified: it gives up.)
func (c *Client) classify(err error) Verdict {
	if v := c.cfg.classifier(err); v <= VerdictEndpointFault {
		return v
	}
	return VerdictGiveUp
}

// retryAfter reads a reply's delay hint, in azcore's order: retry-after-ms,
// x-ms-retry-after-ms, then Retry-After in whole seconds or as an HTTP date.
// As in azcore, a millisecond header that cannot be read or reads zero is
// skipped: the next header is read (retry-after-ms: 0 with Retry-After: 5
// is a 5 s hint). A date in the past is no delay. Huge values saturate
// instead of overflowing; the caller caps the result.
func retryAfter(h http.Header, now time.Time) time.Duration {
	if len(h) == 0 {
		return 0
	}
	for _, name := range [...]string{"Retry-After-Ms", "X-Ms-Retry-After-Ms"} {
		if d, ok := parseDelay(h.Get(name), time.Millisecond); ok && d > 0 {
			return d
		}
	}
	v := h.Get("Retry-After")
	if d, ok := parseDelay(v, time.Second); ok {
		return d
	}
	if t, err := http.ParseTime(strings.TrimSpace(v)); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// parseDelay reads a count of units made of ASCII digits only: no sign, no
// fraction, no exponent (RFC 9110 delay-seconds).
func parseDelay(v string, unit time.Duration) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n > uint64(math.MaxInt64/unit) {
		return math.MaxInt64, true // only digits: too many of them
	}
	return time.Duration(n) * unit, true
}

// call is the state of one Do across its attempts.
type call struct {
	attempts  int
	sent      int                         // attempts and hedged copies sent: the next one's http.request.resend_count
	rekeyed   int                         // attempts that met a 401 for keys SetEndpoints replaced meanwhile: not counted towards the max
	names     []string                    // the endpoint of each failed attempt, kept for the error
	last      error                       // the last attempt's error
	ex        pool.Exclusion              // what the next attempt avoids: the endpoints tried
	throttled pool.Endpoints              // endpoints that answered this call VerdictFull
	pin       *pool.Endpoint              // the endpoint the next attempt goes back to, if free
	refused   string                      // the token pin refused: the next attempt's is asked for afresh; a secret
	backoff   *backoff.ExponentialBackOff // made at the call's first wait

	reason string // why the next attempt is a retry (retryReason), with telemetry
}

// started records that the call's next attempt, a, has its slot.
func (c *call) started(a *attempt) {
	c.attempts++
	a.n, a.reason, a.resends = c.attempts, c.reason, c.sent
	c.sent++
	c.ex.Tried.Add(a.slot.Ep)
}

// failed records the failed attempt a.
func (c *call) failed(a *attempt) {
	c.last = a.err
	if c.names == nil {
		c.names = make([]string, 0, 4)
	}
	c.names = append(c.names, a.slot.Ep.Name())
	if a.result == pool.KeyRejected && a.rekeyed {
		c.rekeyed++
	}
	if a.verdict == VerdictFull {
		c.throttled.Add(a.slot.Ep)
	}
}

// lastEndpoint is the endpoint of the call's last failed attempt, "" when
// it made none: a call that ends waiting for a later attempt's slot is
// still one that went there (CallError.Endpoints ends with it).
func (c *call) lastEndpoint() string {
	if len(c.names) == 0 {
		return ""
	}
	return c.names[len(c.names)-1]
}

// result is the call's error once it makes no further attempt. stop says
// why, when the last attempt's error alone does not (see CallError.Stop).
// A call that ends on its first attempt's own error returns that error
// unwrapped; one that never got a slot returns why.
func (c *call) result(stop error) error {
	switch {
	case c.attempts == 0:
		return stop
	case c.attempts == 1 && stop == nil:
		return c.last
	}
	return &CallError{Attempts: c.attempts, Endpoints: c.names, Err: c.last, Stop: stop}
}

// nextBackoff returns the call's next backoff wait.
func (c *call) nextBackoff(cfg *config) time.Duration {
	if c.backoff == nil {
		c.backoff = &backoff.ExponentialBackOff{
			InitialInterval:     cfg.backoff.Initial,
			RandomizationFactor: cfg.backoff.Jitter,
			Multiplier:          cfg.backoff.Multiplier,
			MaxInterval:         cfg.backoff.Max,
			MaxElapsedTime:      0, // the attempt cap and the ctx bound a call
			Stop:                backoff.Stop,
			Clock:               cfg.clock,
		}
		c.backoff.Reset()
	}
	return c.backoff.NextBackOff()
}

// decide sets a.final, a.wait and a.stop: whether the call makes another
// attempt after the failed one a, and after how long.
func (c *Client) decide(ctx context.Context, cl *call, a *attempt) {
	a.final = true
	switch {
	case a.verdict == VerdictGiveUp:
		if err := ctx.Err(); err != nil && !errors.Is(a.err, err) {
			a.stop = err
		}
		return
	case cl.attempts-cl.rekeyed >= c.cfg.maxAttempts:
		// An attempt that met a key SetEndpoints replaced while it was in
		// flight does not count: each needs a replacement of its own.
		return
	case c.closed.Load():
		a.stop = ErrClosed
		return
	}
	var wait time.Duration
	switch {
	case a.verdict == VerdictRetry:
		wait = cl.nextBackoff(&c.cfg)
	case a.verdict == VerdictFull:
		if !c.usableOutside(&cl.throttled) {
			wait = cl.nextBackoff(&c.cfg) // every endpoint throttled the call
		}
	case a.result == pool.KeyRejected:
		// The endpoint's other key, or a fresh token, at once.
		cl.pin, cl.refused = a.slot.Ep, a.tok
	case !c.usableOutside(&cl.ex.Tried):
		return // an endpoint fault, and no endpoint left to try
	}
	// Taken before ReadyIn: an endpoint that SetEndpoints adds from now on
	// ends the wait for the others.
	resized := c.resized.wait()
	if d := c.pool.ReadyIn(); d > wait {
		// Nothing is usable before then: every endpoint is cooling down
		// or ejected. Once the backoff is over, an endpoint added meanwhile
		// takes the call.
		a.held, a.resized = d-wait, resized
		wait = d
	}
	if deadline, ok := ctx.Deadline(); ok && wait > 0 && time.Until(deadline) <= wait {
		// ctx deadlines are on the wall clock, whatever clock we are given.
		a.stop = &deadlineError{wait: wait}
		return
	}
	if c.budget != nil && !c.budget.withdraw() {
		a.stop = ErrRetryBudgetExhausted
		return
	}
	a.final, a.wait = false, wait
}

// usableOutside reports whether an endpoint outside set may take calls now,
// as far as health and cool-downs go.
func (c *Client) usableOutside(set *pool.Endpoints) bool {
	return c.pool.Set().UsableOutside(set)
}

// deadlineError says a call stopped because its next wait would pass the
// ctx deadline. It matches context.DeadlineExceeded.
type deadlineError struct{ wait time.Duration }

func (e *deadlineError) Error() string {
	// To the millisecond: a cool-down's remainder is 4.999991944s, a
	// drawn backoff 73.412907ms, more digits than anyone needs.
	wait := e.wait.Round(time.Millisecond)
	if wait == 0 {
		wait = e.wait.Round(time.Microsecond)
	}
	return fmt.Sprintf("amlpool: a retry after %v would pass the ctx deadline", wait)
}

func (e *deadlineError) Unwrap() error { return context.DeadlineExceeded }

// sleep waits a.wait before the call's next attempt, on the Client's
// clock. A SetEndpoints meanwhile (a.resized is closed) ends a.held, the
// end of the wait that only holds the call until an endpoint may take it
// again (Pool.ReadyIn), when an endpoint of the new set may take it now,
// and otherwise holds it until one of them may; the backoff before it is
// waited out all the same.
func (c *Client) sleep(ctx context.Context, a *attempt) error {
	d := a.wait
	if d <= 0 {
		return nil
	}
	var resized <-chan struct{}
	var start time.Time
	if a.held > 0 {
		resized, start = a.resized, c.cfg.clock.Now()
	}
	t := c.cfg.clock.NewTimer(d)
	defer func() { t.Stop() }()
	for {
		select {
		case <-t.C():
			return nil
		case <-resized:
			resized = c.resized.wait()
			now := c.cfg.clock.Now()
			left := max(a.wait-a.held-now.Sub(start), c.pool.ReadyIn())
			if left <= 0 {
				return nil
			}
			t.Stop()
			t = c.cfg.clock.NewTimer(left)
		case <-ctx.Done():
			return ctx.Err()
		case <-c.pool.Done():
			return ErrClosed
		}
	}
}
