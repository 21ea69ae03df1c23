package amlpool

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
	"github.com/amlpool/amlpool/internal/pool"
)

func apiErr(status int, code, detail string) *APIError {
	e := &APIError{Endpoint: "e", StatusCode: status, Code: code}
	if detail != "" {
		e.Details = []ErrorDetail{{Code: detail}}
	}
	return e
}

func postErr(err error) error {
	return fmt.Errorf("amlpool: endpoint e: %w", &url.Error{Op: "Post", URL: "https://h/x", Err: err})
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Verdict
	}{
		{"nil", nil, VerdictGiveUp},
		{"503 RequestThrottled", apiErr(503, "ServiceUnavailable", "RequestThrottled"), VerdictFull},
		{"503 TooManyConcurrentRequests", apiErr(503, "ServiceUnavailable", "TooManyConcurrentRequests"), VerdictFull},
		{"503 throttle detail in other case", apiErr(503, "ServiceUnavailable", "requestthrottled"), VerdictFull},
		{"503 InitializingContainers", apiErr(503, "InitializingContainers", ""), VerdictRetry},
		{"503 TooManyHostsBeingInitialized", apiErr(503, "ServiceUnavailable", "TooManyHostsBeingInitialized"), VerdictRetry},
		{"503 NoMoreResources", apiErr(503, "ServiceUnavailable", "NoMoreResources"), VerdictRetry},
		{"503 unparsed body", &APIError{StatusCode: 503, Body: "<html>"}, VerdictRetry},
		{"408 ScoreRequestTimeout", apiErr(408, "RequestTimeout", "ScoreRequestTimeout"), VerdictRetry},
		{"408 RequestCanceled", apiErr(408, "RequestTimeout", "RequestCanceled"), VerdictGiveUp},
		{"408 RequestCanceled in other case", apiErr(408, "RequestTimeout", "requestcanceled"), VerdictGiveUp},
		{"408 RequestCanceled as a later detail", &APIError{StatusCode: 408, Code: "RequestTimeout",
			Details: []ErrorDetail{{Code: "ScoreRequestTimeout"}, {Code: "RequestCanceled"}}}, VerdictGiveUp},
		{"503 throttle as a later detail", &APIError{StatusCode: 503, Code: "ServiceUnavailable",
			Details: []ErrorDetail{{Code: "Unknown"}, {Code: "TooManyConcurrentRequests"}}}, VerdictFull},
		{"429", apiErr(429, "TooManyRequests", ""), VerdictRetry},
		{"500", apiErr(500, "InternalError", "ModuleExecutionFailed"), VerdictRetry},
		{"502", apiErr(502, "", ""), VerdictRetry},
		{"504", apiErr(504, "GatewayTimeout", "BackendScoreTimeout"), VerdictRetry},
		{"400", apiErr(400, "BadArgument", "RequestBodyInvalid"), VerdictGiveUp},
		{"401", apiErr(401, "Unauthorized", "ScoreRequestUnauthorized"), VerdictEndpointFault},
		{"403", apiErr(403, "", ""), VerdictEndpointFault},
		{"404", apiErr(404, "NotFound", "WebServiceNotFound"), VerdictEndpointFault},
		{"413", apiErr(413, "MemoryQuotaViolation", "OutOfMemoryLimit"), VerdictGiveUp},
		{"422", apiErr(422, "", ""), VerdictGiveUp},
		{"501", apiErr(501, "", ""), VerdictGiveUp},
		{"302", apiErr(302, "", ""), VerdictGiveUp},
		{"wrapped 500", fmt.Errorf("x: %w", apiErr(500, "", "")), VerdictRetry},
		{"connection refused", postErr(syscall.ECONNREFUSED), VerdictRetry},
		{"connection reset", postErr(syscall.ECONNRESET), VerdictRetry},
		{"EOF before reply", postErr(io.EOF), VerdictRetry},
		{"DNS failure", postErr(&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "h", IsNotFound: true}}), VerdictRetry},
		{"malformed HTTP/1 reply", postErr(errors.New(`net/http: HTTP/1.x transport connection broken: malformed HTTP response "garbage"`)), VerdictRetry},
		{"header timeout", postErr(errors.New("net/http: timeout awaiting response headers")), VerdictRetry},
		{"TLS handshake timeout", postErr(errors.New("net/http: TLS handshake timeout")), VerdictRetry},
		{"attempt timeout", fmt.Errorf("attempt timed out: %w", postErr(context.DeadlineExceeded)), VerdictRetry},
		{"short read", fmt.Errorf("read reply: %w", io.ErrUnexpectedEOF), VerdictRetry},
		{"response too large", fmt.Errorf("%w: over 10 bytes", ErrResponseTooLarge), VerdictGiveUp},
		{"unknown authority", postErr(x509.UnknownAuthorityError{}), VerdictEndpointFault},
		{"hostname", postErr(x509.HostnameError{Host: "h"}), VerdictEndpointFault},
		{"invalid certificate", postErr(x509.CertificateInvalidError{}), VerdictEndpointFault},
		{"tls verification", postErr(&tls.CertificateVerificationError{Err: errors.New("x")}), VerdictEndpointFault},
		{"https to a plain HTTP server", postErr(http.ErrSchemeMismatch), VerdictEndpointFault},
		{"https proxy speaking plain HTTP", postErr(&net.OpError{Op: "proxyconnect", Net: "tcp", Err: tls.RecordHeaderError{
			Msg: "first record does not look like a TLS handshake", RecordHeader: [5]byte{'H', 'T', 'T', 'P', '/'}}}), VerdictEndpointFault},
		{"https proxy speaking no TLS", postErr(&net.OpError{Op: "proxyconnect", Net: "tcp", Err: tls.RecordHeaderError{
			Msg: "first record does not look like a TLS handshake", RecordHeader: [5]byte{'S', 'S', 'H', '-', '2'}, Conn: &net.TCPConn{}}}), VerdictEndpointFault},
		{"damaged record after the handshake", postErr(tls.RecordHeaderError{
			Msg: "received record with version 9 when expecting version 303", RecordHeader: [5]byte{23, 0, 9, 0, 1}}), VerdictRetry},
		{"bad URL", &url.Error{Op: "parse", URL: "::", Err: errors.New("missing scheme")}, VerdictGiveUp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, Classify(tt.err))
		})
	}
}

func TestClassifyNeverRetriesADoneCtx(t *testing.T) {
	c := &Client{cfg: defaultConfig()}
	c.cfg.classifier = func(error) Verdict { return VerdictRetry }
	ep := pool.New(pool.Config{Clock: clock.NewFake()}, testSpecs(t, 1)).Set().Eps[0]
	judged := func(ctx context.Context) *attempt {
		a := &attempt{slot: pool.Slot{Ep: ep}, err: apiErr(500, "", ""), status: 500}
		a.auth, a.key = ep.Key()
		c.judge(ctx, a)
		return a
	}
	assert.Equal(t, VerdictRetry, judged(context.Background()).verdict)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	a := judged(ctx)
	assert.Equal(t, VerdictGiveUp, a.verdict, "the classifier is not asked once ctx is done")
	assert.Equal(t, pool.Cancelled, a.result)

	c.cfg.classifier = func(error) Verdict { return 9 }
	assert.Equal(t, VerdictGiveUp, c.classify(apiErr(500, "", "")), "an unknown verdict gives up")
}

// testSpecs returns the specs of n endpoints of one slot each.
func testSpecs(t *testing.T, n int) []pool.Spec {
	t.Helper()
	eps := make([]Endpoint, n)
	for i := range eps {
		eps[i] = Endpoint{URL: fmt.Sprintf("https://h/workspaces/w/services/e%d/execute", i), APIKey: "k", MaxConcurrentCalls: 1}
	}
	specs, err := newSpecs(eps, false, nil)
	require.NoError(t, err)
	return specs
}

func TestVerdictString(t *testing.T) {
	assert.Equal(t, "give up", VerdictGiveUp.String())
	assert.Equal(t, "full", VerdictFull.String())
	assert.Equal(t, "retry", VerdictRetry.String())
	assert.Equal(t, "Verdict(7)", Verdict(7).String())
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h := func(kv ...string) http.Header {
		out := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			out.Add(kv[i], kv[i+1])
		}
		return out
	}
	tests := []struct {
		name string
		h    http.Header
		want time.Duration
	}{
		{"none", nil, 0},
		{"seconds", h("Retry-After", "3"), 3 * time.Second},
		{"seconds with spaces", h("Retry-After", " 3 "), 3 * time.Second},
		{"zero", h("Retry-After", "0"), 0},
		{"negative", h("Retry-After", "-3"), 0},
		{"plus sign", h("Retry-After", "+3"), 0},
		{"fraction", h("Retry-After", "1.5"), 0},
		{"garbage", h("Retry-After", "soon"), 0},
		{"HTTP date", h("Retry-After", now.Add(90*time.Second).Format(http.TimeFormat)), 90 * time.Second},
		{"RFC 850 date", h("Retry-After", now.Add(time.Minute).Format(time.RFC850)), time.Minute},
		{"date in the past", h("Retry-After", now.Add(-time.Minute).Format(http.TimeFormat)), 0},
		{"huge seconds saturate", h("Retry-After", "99999999999999999999999"), math.MaxInt64},
		{"seconds just past int64 nanoseconds", h("Retry-After", "9223372037"), math.MaxInt64},
		{"retry-after-ms", h("retry-after-ms", "250"), 250 * time.Millisecond},
		{"x-ms-retry-after-ms", h("x-ms-retry-after-ms", "40"), 40 * time.Millisecond},
		{"retry-after-ms first", h("Retry-After", "9", "x-ms-retry-after-ms", "40", "retry-after-ms", "250"), 250 * time.Millisecond},
		{"x-ms before Retry-After", h("Retry-After", "9", "x-ms-retry-after-ms", "40"), 40 * time.Millisecond},
		{"bad ms header falls through", h("retry-after-ms", "x", "Retry-After", "2"), 2 * time.Second},
		{"zero ms header falls through", h("retry-after-ms", "0", "x-ms-retry-after-ms", "40"), 40 * time.Millisecond},
		{"zero x-ms header falls through", h("x-ms-retry-after-ms", "000", "Retry-After", "2"), 2 * time.Second},
		{"zero ms headers, no Retry-After", h("retry-after-ms", "0", "x-ms-retry-after-ms", "0"), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, retryAfter(tt.h, now))
		})
	}
}

func TestCallErrorReachesLastErrorAndStop(t *testing.T) {
	last := apiErr(503, "ServiceUnavailable", "NoMoreResources")
	err := error(&CallError{Attempts: 2, Endpoints: []string{"a", "b"}, Err: last, Stop: ErrRetryBudgetExhausted})
	assert.ErrorIs(t, err, ErrRetryBudgetExhausted)
	var got *APIError
	require.ErrorAs(t, err, &got)
	assert.Same(t, last, got)
	assert.Equal(t, "amlpool: endpoint e: HTTP 503 ServiceUnavailable/NoMoreResources (after 2 attempts: a, b; stopped: amlpool: retry budget exhausted)", err.Error())

	one := &CallError{Attempts: 1, Endpoints: []string{"a"}, Err: last, Stop: &deadlineError{wait: time.Second}}
	assert.ErrorIs(t, one, context.DeadlineExceeded)
	assert.Contains(t, one.Error(), "(after 1 attempt: a; stopped: amlpool: a retry after 1s would pass the ctx deadline)")

	plain := &CallError{Attempts: 3, Endpoints: []string{"a", "b", "c"}, Err: last}
	assert.NotErrorIs(t, plain, ErrRetryBudgetExhausted)
	assert.Len(t, plain.Unwrap(), 1)
}

func TestCallResult(t *testing.T) {
	last := errors.New("last")
	var cl call
	assert.Equal(t, ErrNoCapacity, cl.result(ErrNoCapacity), "no attempt: why")

	cl.attempts, cl.last, cl.names = 1, last, []string{"a"}
	assert.Equal(t, last, cl.result(nil), "one attempt, its own error: bare")
	var ce *CallError
	require.ErrorAs(t, cl.result(ErrRetryBudgetExhausted), &ce, "one attempt stopped by the budget")
	assert.Equal(t, &CallError{Attempts: 1, Endpoints: []string{"a"}, Err: last, Stop: ErrRetryBudgetExhausted}, ce)

	cl.attempts, cl.names = 2, []string{"a", "b"}
	require.ErrorAs(t, cl.result(nil), &ce)
	assert.Equal(t, &CallError{Attempts: 2, Endpoints: []string{"a", "b"}, Err: last}, ce)
}

// TestBackoffSchedule checks the documented default table: the k-th wait
// lies within ±50 % of 50 ms × 2^(k−1), capped at 1 s before jitter.
func TestBackoffSchedule(t *testing.T) {
	cfg := defaultConfig()
	cfg.clock = clock.NewFake()
	nominal := []time.Duration{50, 100, 200, 400, 800, 1000, 1000, 1000}
	for range 200 {
		var cl call
		for k, n := range nominal {
			n *= time.Millisecond
			d := cl.nextBackoff(&cfg)
			assert.GreaterOrEqual(t, d, n/2, "wait %d", k+1)
			assert.LessOrEqual(t, d, n*3/2+1, "wait %d", k+1)
		}
	}
}

// TestBackoffFreshPerCall: one call's waits do not advance another's.
func TestBackoffFreshPerCall(t *testing.T) {
	cfg := defaultConfig()
	cfg.clock = clock.NewFake()
	cfg.backoff = Backoff{Initial: time.Second, Multiplier: 10, Max: time.Hour, Jitter: 0.01}
	var a, b call
	a.nextBackoff(&cfg)
	a.nextBackoff(&cfg)
	assert.Less(t, b.nextBackoff(&cfg), 2*time.Second)
	assert.Greater(t, a.nextBackoff(&cfg), 50*time.Second)
}

func TestRetryOptionsValidation(t *testing.T) {
	tests := []struct {
		name  string
		opt   Option
		field string
	}{
		{"zero attempts", WithMaxAttempts(0), "WithMaxAttempts"},
		{"negative initial", WithBackoff(Backoff{Initial: -1}), "WithBackoff"},
		{"multiplier below 1", WithBackoff(Backoff{Multiplier: 0.5}), "WithBackoff"},
		{"multiplier NaN", WithBackoff(Backoff{Multiplier: math.NaN()}), "WithBackoff"},
		{"multiplier Inf", WithBackoff(Backoff{Multiplier: math.Inf(1)}), "WithBackoff"},
		{"jitter above 1", WithBackoff(Backoff{Jitter: 1.5}), "WithBackoff"},
		{"jitter negative", WithBackoff(Backoff{Jitter: -0.1}), "WithBackoff"},
		{"negative retry-after cap", WithMaxRetryAfter(-time.Second), "WithMaxRetryAfter"},
		{"negative budget ratio", WithRetryBudget(-0.1, 10), "WithRetryBudget"},
		{"NaN budget ratio", WithRetryBudget(math.NaN(), 10), "WithRetryBudget"},
		{"negative budget floor", WithRetryBudget(0.2, -1), "WithRetryBudget"},
		{"zero failures to eject", WithEjection(0, time.Second), "WithEjection"},
		{"zero ejection time", WithEjection(5, 0), "WithEjection"},
		{"ejection time over a day", WithEjection(5, 24*time.Hour+1), "WithEjection"},
		{"ejection time whose 10 × overflows", WithEjection(5, 1e18), "WithEjection"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := buildConfig([]Option{tt.opt})
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tt.field, ce.Field)
			assert.ErrorIs(t, err, ErrInvalidConfig)
		})
	}
}

// Max below Initial: the error names the default the user did not set,
// and says to set it, rather than blame a value the user never gave.
func TestBackoffMaxBelowInitial(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts []Option
		want string
	}{
		{"Initial alone, over the default Max", []Option{WithBackoff(Backoff{Initial: 2 * time.Second})},
			"Initial 2s is over Max, which defaults to 1s (DefaultBackoffMax): set Max too, at least Initial"},
		{"Max alone, under the default Initial", []Option{WithBackoff(Backoff{Max: 10 * time.Millisecond})},
			"Max 10ms is below Initial, which defaults to 50ms (DefaultBackoffInitial): set Initial too, at most Max"},
		{"both given", []Option{WithBackoff(Backoff{Initial: time.Second, Max: time.Millisecond})},
			"Max 1ms is below Initial 1s"},
		{"both given, in two options", []Option{WithBackoff(Backoff{Max: time.Millisecond}), WithBackoff(Backoff{Initial: time.Second})},
			"Max 1ms is below Initial 1s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := buildConfig(tt.opts)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, "WithBackoff", ce.Field)
			assert.Equal(t, tt.want, ce.Problem)
		})
	}
	_, err := buildConfig([]Option{WithBackoff(Backoff{Initial: 2 * time.Second, Max: 2 * time.Second})})
	assert.NoError(t, err)
}

// The wait a deadline cut short is said to the millisecond (a microsecond
// below that), not to the nanosecond.
func TestDeadlineErrorRoundsTheWait(t *testing.T) {
	for wait, want := range map[time.Duration]string{
		4999991944 * time.Nanosecond: "5s",
		73412907 * time.Nanosecond:   "73ms",
		time.Second:                  "1s",
		412345 * time.Nanosecond:     "412µs",
	} {
		assert.Equal(t, "amlpool: a retry after "+want+" would pass the ctx deadline", (&deadlineError{wait: wait}).Error())
	}
}

func TestRetryOptionsApply(t *testing.T) {
	cfg, err := buildConfig(nil)
	require.NoError(t, err)
	assert.Equal(t, DefaultMaxAttempts, cfg.maxAttempts)
	assert.Equal(t, Backoff{Initial: 50 * time.Millisecond, Multiplier: 2, Max: time.Second, Jitter: 0.5}, cfg.backoff)
	assert.True(t, cfg.budget)

	cfg, err = buildConfig([]Option{
		WithoutRetries(), WithBackoff(Backoff{Max: 5 * time.Second}), WithoutRetryBudget(),
		WithoutEjection(), WithClassifier(nil), WithMaxRetryAfter(0),
	})
	require.NoError(t, err)
	assert.Equal(t, 1, cfg.maxAttempts)
	assert.Equal(t, Backoff{Initial: 50 * time.Millisecond, Multiplier: 2, Max: 5 * time.Second, Jitter: 0.5}, cfg.backoff)
	assert.False(t, cfg.budget)
	assert.True(t, cfg.ejectOff)
	_, err = buildConfig([]Option{WithEjection(1, 24*time.Hour)})
	assert.NoError(t, err, "the longest base")
	assert.Equal(t, VerdictFull, cfg.classifier(apiErr(503, "", "RequestThrottled")), "nil classifier means Classify")

	cfg, err = buildConfig([]Option{WithMaxAttempts(3), WithRetryBudget(0.5, 1), WithEjection(2, time.Minute)})
	require.NoError(t, err)
	assert.Equal(t, 3, cfg.maxAttempts)
	assert.Equal(t, 0.5, cfg.budgetRatio)
	assert.Equal(t, 1, cfg.budgetMinPerSecond)
	assert.Equal(t, 2, cfg.ejectAfter)
	assert.Equal(t, time.Minute, cfg.ejectFor)
}

// What each failed attempt does to its endpoint's health (WithEjection):
// a retryable failure counts towards ejection, an endpoint fault ejects at
// once, a request's fault proves the endpoint alive, and a throttle, a 429
// for the endpoint's rate limit, a cancelled call and a hedge's slower
// copy (one slow reply the other copy outran) count neither way.
func TestJudgeFeedsEjection(t *testing.T) {
	c := &Client{cfg: defaultConfig()}
	c.cfg.classifier = Classify
	ep := pool.New(pool.Config{Clock: clock.NewFake()}, testSpecs(t, 1)).Set().Eps[0]
	online := func(status int, msg string) *APIError {
		return &APIError{StatusCode: status, Kind: Online, Message: msg}
	}
	abandoned, abandon := context.WithCancelCause(context.Background())
	abandon(errAbandoned)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tt := range []struct {
		name   string
		ctx    context.Context
		err    error
		status int
		want   pool.Result
	}{
		{"500", nil, apiErr(500, "InternalError", ""), 500, pool.Failed},
		{"502", nil, apiErr(502, "", ""), 502, pool.Failed},
		{"504", nil, apiErr(504, "GatewayTimeout", "BackendScoreTimeout"), 504, pool.Failed},
		{"503 other", nil, apiErr(503, "ServiceUnavailable", "NoMoreResources"), 503, pool.Failed},
		{"503 throttle", nil, apiErr(503, "ServiceUnavailable", "RequestThrottled"), 503, pool.Full},
		{"online 429 pending", nil, online(429, "Too many pending requests"), 429, pool.Full},
		{"online 429 rate-limited", nil, online(429, "Rate-limited"), 429, pool.Limited},
		{"classic 429", nil, apiErr(429, "", ""), 429, pool.Limited},
		{"online 424 model 429", nil, &APIError{StatusCode: 424, Kind: Online, ModelStatusCode: 429}, 424, pool.Failed},
		{"online 424 model 500", nil, &APIError{StatusCode: 424, Kind: Online, ModelStatusCode: 500}, 424, pool.Failed},
		{"online 424 model 400", nil, &APIError{StatusCode: 424, Kind: Online, ModelStatusCode: 400}, 424, pool.Rejected},
		{"online 404 no deployment", nil, online(404, "No valid deployments to route to"), 404, pool.Fault},
		{"403", nil, apiErr(403, "", ""), 403, pool.Fault},
		{"400", nil, apiErr(400, "BadArgument", ""), 400, pool.Rejected},
		{"attempt timeout", nil, fmt.Errorf("attempt timed out: %w", postErr(context.DeadlineExceeded)), 0, pool.Failed},
		{"refused", nil, postErr(syscall.ECONNREFUSED), 0, pool.Failed},
		{"untrusted certificate", nil, postErr(x509.UnknownAuthorityError{}), 0, pool.Fault},
		{"slower hedged copy", abandoned, postErr(context.Canceled), 0, pool.Abandoned},
		{"call cancelled", cancelled, postErr(context.Canceled), 0, pool.Cancelled},
	} {
		ctx := tt.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		a := &attempt{slot: pool.Slot{Ep: ep}, err: tt.err, status: tt.status}
		a.auth, a.key = ep.Key()
		c.judge(ctx, a)
		assert.Equal(t, tt.want, a.result, tt.name)
	}
}
