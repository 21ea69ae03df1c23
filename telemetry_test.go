package amlpool

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/amlpool/amlpool/internal/clock"
)

const throttleBody = `{"error":{"code":"ServiceUnavailable","message":"Service is temporarily unavailable.","details":[{"code":"RequestThrottled","message":"Request is throttled."}]}}`

// fakeAML serves one endpoint whose n-th request (from 1) gets reply(n), a
// status; 503 comes with a throttle body. It records every request's
// traceparent header.
type fakeAML struct {
	*httptest.Server
	n       atomic.Int64
	parents chan string
}

func newFakeAML(t *testing.T, reply func(n int64) int) *fakeAML {
	t.Helper()
	f := &fakeAML{parents: make(chan string, 100)}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		f.parents <- r.Header.Get("traceparent")
		w.Header().Set("Content-Type", "application/json")
		switch st := reply(f.n.Add(1)); st {
		case 200:
			io.WriteString(w, `{"Results":{}}`)
		case 503:
			w.WriteHeader(st)
			io.WriteString(w, throttleBody)
		default:
			w.WriteHeader(st)
			io.WriteString(w, `{"error":{"code":"BadArgument","message":"bad input"}}`)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func always(status int) func(int64) int { return func(int64) int { return status } }

func (f *fakeAML) endpoint(name string, mcc int) Endpoint {
	return Endpoint{Name: name, URL: f.URL + "/workspaces/w/services/" + name + "/execute", APIKey: secretKey, SecondaryKey: secondaryKey, MaxConcurrentCalls: mcc}
}

// firstFree is a Balancer that always picks the first endpoint with a free
// slot, so tests know where each attempt goes.
type firstFree struct{}

func (firstFree) Pick(s Candidates) int {
	for i := range s.Len() {
		if s.Free(i) > 0 {
			return i
		}
	}
	return -1
}

// observed is a Client with every kind of telemetry on, read back in memory.
type observed struct {
	*Client
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	logs   *bytes.Buffer
	clock  *clock.Fake
}

func newObserved(t *testing.T, eps []Endpoint, opts ...Option) *observed {
	t.Helper()
	o := &observed{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder(), logs: &bytes.Buffer{}, clock: clock.NewFake()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(o.reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(o.spans))
	t.Cleanup(func() { mp.Shutdown(context.Background()); tp.Shutdown(context.Background()) })
	log := slog.New(slog.NewJSONHandler(o.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	all := append([]Option{WithMeterProvider(mp), WithTracerProvider(tp), WithLogger(log),
		WithClock(o.clock), WithBalancer(firstFree{})}, opts...)
	c, err := New(eps, all...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	o.Client = c
	return o
}

// collect reads every metric now.
func (o *observed) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, o.reader.Collect(context.Background(), &rm))
	return rm
}

// logLines returns the logged records with the given message.
func (o *observed) logLines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(o.logs.String()) {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m))
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

func hasAll(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// intValue adds up the points of an int64 sum or gauge that carry every
// attribute of want.
func intValue(t *testing.T, rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		return 0
	}
	var pts []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		pts = d.DataPoints
	case metricdata.Gauge[int64]:
		pts = d.DataPoints
	default:
		t.Fatalf("%s is a %T", name, m.Data)
	}
	var n int64
	for _, p := range pts {
		if hasAll(p.Attributes, want) {
			n += p.Value
		}
	}
	return n
}

// histogram returns the count and sum of a histogram's points that carry
// every attribute of want.
func histogram(t *testing.T, rm metricdata.ResourceMetrics, name string, want ...attribute.KeyValue) (uint64, float64) {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		return 0, 0
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	require.True(t, ok, "%s is a %T", name, m.Data)
	var n uint64
	var sum float64
	for _, p := range h.DataPoints {
		if hasAll(p.Attributes, want) {
			n += p.Count
			sum += p.Sum
		}
	}
	return n, sum
}

// assertStatsAgree checks that Stats and the metrics tell the same story.
func assertStatsAgree(t *testing.T, o *observed) {
	t.Helper()
	st := o.Stats()
	rm := o.collect(t)
	for _, e := range st.Endpoints {
		ep := keyEndpoint.String(e.Name)
		assert.Equal(t, e.Calls, intValue(t, rm, "amlpool.endpoint.calls", ep), "calls of %s", e.Name)
		assert.Equal(t, e.Throttles, intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("throttled")), "throttles of %s", e.Name)
		assert.Equal(t, e.Errors, e.Calls-intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("success"))-
			intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("abandoned"))-
			intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("cancelled")), "errors of %s", e.Name)
		assert.Equal(t, e.Cancelled, intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("cancelled")), "cancelled at %s", e.Name)
		assert.Equal(t, e.Faults, intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("endpoint_fault")), "faults of %s", e.Name)
		assert.EqualValues(t, e.InFlight, intValue(t, rm, "amlpool.endpoint.in_flight", ep), "in flight at %s", e.Name)
		assert.EqualValues(t, e.Limit, intValue(t, rm, "amlpool.endpoint.limit", ep), "limit of %s", e.Name)
		assert.EqualValues(t, e.Tier, intValue(t, rm, "amlpool.endpoint.tier", ep), "tier of %s", e.Name)
		n, _ := histogram(t, rm, "http.client.request.duration", ep)
		assert.EqualValues(t, e.Calls, n, "requests timed at %s", e.Name)
	}
	assert.EqualValues(t, st.Waiting, intValue(t, rm, "amlpool.slot.waiting"))
	for p := PriorityLow; p <= PriorityHigh; p++ {
		assert.Equal(t, st.Shed[p], intValue(t, rm, "amlpool.slot.shed", keyPriority.String(p.String())), "shed at %v", p)
	}
}

func TestMetricsCountThrottlesAndFailovers(t *testing.T) {
	busy := newFakeAML(t, always(503))
	ok := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{busy.endpoint("busy", 2), ok.endpoint("ok", 3)})
	const calls = 4
	for range calls {
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.NoError(t, err)
	}

	rm := o.collect(t)
	busyEp, okEp := keyEndpoint.String("busy"), keyEndpoint.String("ok")
	assert.EqualValues(t, calls, intValue(t, rm, "amlpool.endpoint.calls", busyEp, keyOutcome.String("throttled")))
	assert.EqualValues(t, calls, intValue(t, rm, "amlpool.endpoint.calls", busyEp), "busy had only throttles")
	assert.EqualValues(t, calls, intValue(t, rm, "amlpool.endpoint.calls", okEp, keyOutcome.String("success")))
	assert.EqualValues(t, calls, intValue(t, rm, "amlpool.endpoint.calls", okEp), "ok had only successes")
	assert.EqualValues(t, calls, intValue(t, rm, "amlpool.retries", keyRetryReason.String("throttled")))
	assert.EqualValues(t, calls, intValue(t, rm, "amlpool.retries"))
	assert.EqualValues(t, 0, intValue(t, rm, "amlpool.hedges"))

	n, _ := histogram(t, rm, "http.client.request.duration", busyEp, keyMethod.String("POST"),
		keyServerAddr.String("127.0.0.1"), keyStatus.Int(503), keyErrorType.String("503"))
	assert.EqualValues(t, calls, n, "throttled requests timed with status and error.type")
	n, _ = histogram(t, rm, "http.client.request.duration", okEp, keyStatus.Int(200))
	assert.EqualValues(t, calls, n)
	n, sum := histogram(t, rm, "amlpool.slot.wait.duration")
	assert.EqualValues(t, 2*calls, n, "one wait per attempt")
	assert.Zero(t, sum, "no attempt waited: the fake clock did not move")

	assert.EqualValues(t, 2, intValue(t, rm, "amlpool.endpoint.limit", busyEp))
	assert.EqualValues(t, 3, intValue(t, rm, "amlpool.endpoint.limit", okEp))
	assertStatsAgree(t, o)
}

func TestMetricsCountOutcomes(t *testing.T) {
	srv := newFakeAML(t, func(n int64) int { return []int{200, 400, 500, 200}[(n-1)%4] })
	o := newObserved(t, []Endpoint{srv.endpoint("only", 1)}, WithoutRetries())
	for range 8 {
		o.Do(t.Context(), []byte(`{}`))
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := o.Do(ctx, []byte(`{}`))
	require.ErrorIs(t, err, context.Canceled) // never reaches an attempt

	rm := o.collect(t)
	ep := keyEndpoint.String("only")
	for kind, want := range map[string]int64{"success": 4, "client_error": 2, "server_error": 2, "throttled": 0} {
		assert.Equal(t, want, intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String(kind)), kind)
	}
	n, _ := histogram(t, rm, "http.client.request.duration", ep, keyStatus.Int(500), keyErrorType.String("500"))
	assert.EqualValues(t, 2, n)
	n, _ = histogram(t, rm, "amlpool.slot.wait.duration", keyErrorType.String("cancelled"))
	assert.EqualValues(t, 1, n, "a call whose ctx had ended got no slot")
	n, _ = histogram(t, rm, "amlpool.slot.wait.duration")
	assert.EqualValues(t, 9, n, "every attempt's wait")
	assertStatsAgree(t, o)
}

func TestMetricsRecordSlotWaits(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			close(arrived)
			<-release
		}
		io.WriteString(w, `{}`)
	}))
	defer srv.Close()
	ep := Endpoint{Name: "one", URL: srv.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1}
	o := newObserved(t, []Endpoint{ep}, WithMaxWait(time.Minute))

	done := make(chan error, 2)
	go func() { _, err := o.Do(t.Context(), nil); done <- err }()
	<-arrived
	go func() { _, err := o.Do(t.Context(), nil); done <- err }()
	require.True(t, o.clock.WaitTimers(1, t.Context().Done()), "second call waits with a max-wait timer")

	rm := o.collect(t)
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.slot.waiting"), "live: one call waiting")
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.in_flight", keyEndpoint.String("one")), "live: one in flight")
	assertStatsAgree(t, o)

	o.clock.Advance(3 * time.Second)
	close(release)
	require.NoError(t, <-done)
	require.NoError(t, <-done)

	rm = o.collect(t)
	count, sum := histogram(t, rm, "amlpool.slot.wait.duration")
	assert.EqualValues(t, 2, count)
	assert.Equal(t, 3.0, sum, "the second call waited the 3 s the first one held the slot")
	_, sum = histogram(t, rm, "http.client.request.duration")
	assert.Equal(t, 3.0, sum, "the first request took 3 s, the second none")
	assert.EqualValues(t, 0, intValue(t, rm, "amlpool.slot.waiting"))
	assertStatsAgree(t, o)
}

func TestMetricsRecordFailedWaits(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
	}))
	defer srv.Close()
	o := newObserved(t, []Endpoint{{URL: srv.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1}}, WithMaxWait(0))
	done := make(chan error)
	go func() { _, err := o.Do(t.Context(), nil); done <- err }()
	<-arrived
	_, err := o.Do(t.Context(), nil)
	require.ErrorIs(t, err, ErrNoCapacity)
	close(release)
	require.NoError(t, <-done)

	n, _ := histogram(t, o.collect(t), "amlpool.slot.wait.duration", keyErrorType.String("no_capacity"))
	assert.EqualValues(t, 1, n)
}

func TestMetricsOfRetriesAndEjections(t *testing.T) {
	flaky := newFakeAML(t, always(500))
	ok := newFakeAML(t, always(200))
	eps := []Endpoint{flaky.endpoint("flaky", 1), ok.endpoint("ok1", 1), ok.endpoint("ok2", 1)}
	// The real clock, for the backoff: waits of a millisecond or two.
	o := newObserved(t, eps, WithClock(clock.Real), WithEjection(2, time.Hour),
		WithBackoff(Backoff{Initial: time.Millisecond, Max: time.Millisecond}))
	for range 3 {
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.NoError(t, err)
	}
	// Calls 1 and 2 fail on flaky, the second failure ejects it, and both
	// retry on ok1; call 3 goes to ok1 at once.
	rm := o.collect(t)
	assert.EqualValues(t, 2, intValue(t, rm, "amlpool.endpoint.calls", keyEndpoint.String("flaky"), keyOutcome.String("server_error")))
	assert.EqualValues(t, 3, intValue(t, rm, "amlpool.endpoint.calls", keyEndpoint.String("ok1"), keyOutcome.String("success")))
	assert.EqualValues(t, 2, intValue(t, rm, "amlpool.retries", keyRetryReason.String("500")))
	assert.EqualValues(t, 2, intValue(t, rm, "amlpool.retries"))
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.ejections", keyEndpoint.String("flaky")))
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.ejections"))
	assert.EqualValues(t, 0, intValue(t, rm, "amlpool.retry_budget.rejections"))
	assertStatsAgree(t, o)
	assert.Len(t, o.logLines(t, "amlpool: endpoint ejected"), 1, "a warn line for the ejection")
}

func TestMetricsOfAnExhaustedRetryBudget(t *testing.T) {
	flaky := newFakeAML(t, always(500))
	ok := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{flaky.endpoint("flaky", 1), ok.endpoint("ok", 1)}, WithRetryBudget(0, 0))
	for range 3 {
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.ErrorIs(t, err, ErrRetryBudgetExhausted)
	}
	rm := o.collect(t)
	assert.EqualValues(t, 3, intValue(t, rm, "amlpool.retry_budget.rejections"))
	assert.EqualValues(t, 0, intValue(t, rm, "amlpool.retries"))
	assertStatsAgree(t, o)
	assert.Len(t, o.logLines(t, "amlpool: retry budget exhausted; failed calls return without retrying"), 1,
		"one warn line per spell of exhaustion")
}

func TestMetricsAndSpansOfAHedge(t *testing.T) {
	slowArrived := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that the server notices the client going away
		slowArrived <- struct{}{}
		<-r.Context().Done() // answers only by being abandoned
	}))
	defer slow.Close()
	fast := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{{Name: "slow", URL: slow.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1},
		fast.endpoint("fast", 1)}, WithHedging(time.Second))
	done := make(chan error)
	go func() { _, err := o.Do(t.Context(), []byte(`{}`)); done <- err }()
	<-slowArrived
	require.True(t, o.clock.WaitTimers(1, t.Context().Done()), "the hedge delay is waiting")
	o.clock.Advance(time.Second)
	require.NoError(t, <-done)

	rm := o.collect(t)
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.hedges"))
	assert.EqualValues(t, 0, intValue(t, rm, "amlpool.retries"), "a hedge is not a retry")
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.calls", keyEndpoint.String("slow"), keyOutcome.String("abandoned")))
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.calls", keyEndpoint.String("fast"), keyOutcome.String("success")))
	assertStatsAgree(t, o)

	var hedges int
	for _, s := range o.spans.Ended() {
		if spanAttrs(s)[keyHedge] == attribute.BoolValue(true) {
			hedges++
			assert.Equal(t, attribute.StringValue("fast"), spanAttrs(s)[keyEndpoint])
		}
	}
	assert.Equal(t, 1, hedges, "one attempt span marked as the hedge")
	for _, s := range o.spans.Ended() {
		if s.SpanKind() != trace.SpanKindClient {
			continue // the call's
		}
		switch a := spanAttrs(s); a[keyEndpoint] {
		case attribute.StringValue("slow"):
			assert.NotContains(t, a, keyResendCount, "the call's first request")
		case attribute.StringValue("fast"):
			assert.Equal(t, attribute.IntValue(1), a[keyResendCount], "the hedge resends the request")
		}
	}
	var hedgeLines int
	for _, l := range o.logLines(t, "amlpool: attempt") {
		if l["hedge"] == true {
			hedgeLines++
		}
	}
	assert.Equal(t, 1, hedgeLines)
}

// http.request.resend_count counts every request a call sent before, as
// the conventions ask ("each time an HTTP request gets resent by the
// client, regardless of ... the cause"): a hedged copy resends its
// attempt's request, and a retry after a hedged attempt comes after both
// copies.
func TestResendCountCountsHedgedCopies(t *testing.T) {
	slowArrived, answer := make(chan struct{}, 1), make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		slowArrived <- struct{}{}
		<-answer
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, throttleBody)
	}))
	defer slow.Close()
	busy := newFakeAML(t, always(503))
	ok := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{{Name: "slow", URL: slow.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1},
		busy.endpoint("busy", 1), ok.endpoint("ok", 1)}, WithHedging(time.Second))
	done := make(chan error)
	go func() { _, err := o.Do(t.Context(), []byte(`{}`)); done <- err }()
	<-slowArrived
	require.True(t, o.clock.WaitTimers(1, t.Context().Done()), "the hedge delay is waiting")
	o.clock.Advance(time.Second)
	<-busy.parents // the hedged copy reached busy, which throttles it
	close(answer)  // and so does slow: the retry goes to ok
	require.NoError(t, <-done)

	resends := map[string]attribute.Value{}
	for _, s := range o.spans.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			a := spanAttrs(s)
			resends[a[keyEndpoint].AsString()] = a[keyResendCount]
		}
	}
	assert.Equal(t, map[string]attribute.Value{
		"slow": {},                    // the first request: none
		"busy": attribute.IntValue(1), // the hedged copy
		"ok":   attribute.IntValue(2), // the retry, after both copies
	}, resends)
}

// A hedge the retry budget refuses counts in amlpool.retry_budget.rejections,
// as a refused retry does: hedges spend the same budget.
func TestMetricsOfAHedgeTheBudgetRefused(t *testing.T) {
	slowArrived := make(chan struct{}, 1)
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		slowArrived <- struct{}{}
		<-release
		io.WriteString(w, `{}`)
	}))
	defer slow.Close()
	fast := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{{Name: "slow", URL: slow.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1},
		fast.endpoint("fast", 1)}, WithHedging(time.Second), WithRetryBudget(0, 0))
	done := make(chan error)
	go func() { _, err := o.Do(t.Context(), []byte(`{}`)); done <- err }()
	<-slowArrived
	require.True(t, o.clock.WaitTimers(1, t.Context().Done()), "the hedge delay is waiting")
	o.clock.Advance(time.Second)
	refused := func() bool {
		return intValue(t, o.collect(t), "amlpool.retry_budget.rejections") == 1
	}
	assert.Eventually(t, refused, 10*time.Second, time.Millisecond, "the refused hedge is counted")
	close(release)
	require.NoError(t, <-done)

	rm := o.collect(t)
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.retry_budget.rejections"))
	assert.EqualValues(t, 0, intValue(t, rm, "amlpool.hedges"), "no hedge was sent")
	assert.EqualValues(t, 0, intValue(t, rm, "amlpool.endpoint.calls", keyEndpoint.String("fast")))
	assertStatsAgree(t, o)
}

func spanAttrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

func TestTracesOfAFailover(t *testing.T) {
	busy := newFakeAML(t, always(503))
	ok := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{busy.endpoint("busy", 1), ok.endpoint("ok", 1)})
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.NoError(t, err)

	spans := o.spans.Ended()
	require.Len(t, spans, 3, "two attempts, then the call")
	first, second, call := spans[0], spans[1], spans[2]
	assert.Equal(t, "amlpool.Do", call.Name())
	assert.Equal(t, trace.SpanKindInternal, call.SpanKind())
	assert.Equal(t, codes.Unset, call.Status().Code)
	assert.Equal(t, attribute.IntValue(2), spanAttrs(call)[keyAttempts])
	assert.Equal(t, attribute.StringValue("ok"), spanAttrs(call)[keyEndpoint])

	for _, s := range []sdktrace.ReadOnlySpan{first, second} {
		assert.Equal(t, "POST", s.Name())
		assert.Equal(t, trace.SpanKindClient, s.SpanKind())
		assert.Equal(t, call.SpanContext().SpanID(), s.Parent().SpanID(), "attempts are children of the call")
		assert.Equal(t, attribute.StringValue("POST"), spanAttrs(s)[keyMethod])
		assert.Equal(t, attribute.StringValue("127.0.0.1"), spanAttrs(s)[keyServerAddr])
	}
	a := spanAttrs(first)
	assert.Equal(t, attribute.StringValue("busy"), a[keyEndpoint])
	assert.Equal(t, attribute.IntValue(503), a[keyStatus])
	assert.Equal(t, attribute.StringValue("503"), a[keyErrorType])
	assert.Equal(t, attribute.StringValue("throttled"), a[keyOutcome])
	assert.NotContains(t, a, keyResendCount)
	assert.NotContains(t, a, keyRetryReason)
	assert.Equal(t, codes.Error, first.Status().Code)
	assert.Contains(t, first.Status().Description, "RequestThrottled")

	a = spanAttrs(second)
	assert.Equal(t, attribute.StringValue("ok"), a[keyEndpoint])
	assert.Equal(t, attribute.IntValue(200), a[keyStatus])
	assert.Equal(t, attribute.StringValue("success"), a[keyOutcome])
	assert.Equal(t, attribute.IntValue(1), a[keyResendCount])
	assert.Equal(t, attribute.StringValue("throttled"), a[keyRetryReason])
	assert.NotContains(t, a, keyErrorType)
	assert.Equal(t, codes.Unset, second.Status().Code)

	assert.Empty(t, <-busy.parents, "no trace context sent unless asked")
	assert.Empty(t, <-ok.parents)
}

func TestTraceOfAFailedScore(t *testing.T) {
	srv := newFakeAML(t, always(400))
	o := newObserved(t, []Endpoint{srv.endpoint("a", 1)})
	_, err := o.Score(t.Context(), &Request{Inputs: map[string]*Table{"input1": {ColumnNames: []string{"x"}, Values: [][]any{{"1"}}}}})
	require.Error(t, err)
	spans := o.spans.Ended()
	require.Len(t, spans, 2)
	assert.Equal(t, "amlpool.Score", spans[1].Name())
	assert.Equal(t, codes.Error, spans[1].Status().Code)
	assert.Equal(t, attribute.StringValue("client_error"), spanAttrs(spans[0])[keyOutcome])
}

// A call whose Balancer panics panics, and its span still ends, with an
// error status: no span is left open.
func TestTraceOfACallWhoseBalancerPanics(t *testing.T) {
	srv := newFakeAML(t, always(200))
	var armed atomic.Bool
	o := newObserved(t, []Endpoint{srv.endpoint("a", 1)}, WithBalancer(panicky{&armed}))
	armed.Store(true)
	assert.PanicsWithValue(t, "balancer bug", func() { _, _ = o.Do(t.Context(), []byte(`{}`)) })
	require.Len(t, o.spans.Started(), 1)
	spans := o.spans.Ended()
	require.Len(t, spans, 1, "the call's span ended")
	assert.Equal(t, "amlpool.Do", spans[0].Name())
	assert.Equal(t, codes.Error, spans[0].Status().Code)
	assert.Equal(t, attribute.IntValue(0), spanAttrs(spans[0])[keyAttempts])
}

// A call waiting in line whose Balancer panics picking for it (in the
// release of the call ahead) records its wait for a slot, like any call
// that leaves the line, before it panics.
func TestSlotWaitOfACallWhoseBalancerPanicsInLine(t *testing.T) {
	arrived, reply := make(chan struct{}, 1), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		<-reply
		io.WriteString(w, `{"Results":{}}`)
	}))
	defer srv.Close()
	var armed atomic.Bool
	o := newObserved(t, []Endpoint{{Name: "a", URL: srv.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1}},
		WithBalancer(panicky{&armed}))
	queued := make(chan struct{}, 1)
	o.pool.OnQueue = func() { queued <- struct{}{} }
	first := make(chan error, 1)
	go func() {
		_, err := o.Do(t.Context(), []byte(`{}`))
		first <- err
	}()
	<-arrived
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = o.Do(t.Context(), []byte(`{}`))
	}()
	<-queued
	o.clock.Advance(time.Second)
	armed.Store(true) // the pick for the waiting call, in the first call's release
	close(reply)
	require.NoError(t, <-first)
	require.Equal(t, "balancer bug", <-panicked)

	rm := o.collect(t)
	n, sum := histogram(t, rm, "amlpool.slot.wait.duration", keyErrorType.String("_OTHER"))
	assert.EqualValues(t, 1, n, "the waiting call's wait")
	assert.Equal(t, 1.0, sum)
	n, _ = histogram(t, rm, "amlpool.slot.wait.duration")
	assert.EqualValues(t, 2, n, "both calls' waits")
	assertStatsAgree(t, o)
}

// panickyFirstFree is firstFree, but for the pick it panics in each time
// it is armed.
type panickyFirstFree struct{ armed *atomic.Bool }

func (b panickyFirstFree) Pick(s Candidates) int {
	if b.armed.Swap(false) {
		panic("balancer bug")
	}
	return firstFree{}.Pick(s)
}

// A Balancer that panics picking for a hedge panics the call; the first
// copy, cancelled, is counted by the metrics as by Stats, and every span
// of the call ends.
func TestTelemetryOfAHedgeWhoseBalancerPanics(t *testing.T) {
	slowArrived := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		slowArrived <- struct{}{}
		<-r.Context().Done()
	}))
	defer slow.Close()
	fast := newFakeAML(t, always(200))
	var armed atomic.Bool
	o := newObserved(t, []Endpoint{{Name: "slow", URL: slow.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1},
		fast.endpoint("fast", 1)}, WithHedging(time.Second), WithBalancer(panickyFirstFree{&armed}))
	panicked := make(chan any)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = o.Do(t.Context(), []byte(`{}`))
	}()
	<-slowArrived
	require.True(t, o.clock.WaitTimers(1, t.Context().Done()), "the hedge delay is waiting")
	armed.Store(true) // the hedge's pick panics
	o.clock.Advance(time.Second)
	require.Equal(t, "balancer bug", <-panicked)

	assert.Len(t, o.spans.Ended(), len(o.spans.Started()), "every span ended")
	require.Len(t, o.spans.Ended(), 2, "the first copy's and the call's")
	assert.Equal(t, attribute.StringValue("cancelled"), spanAttrs(o.spans.Ended()[0])[keyOutcome])
	assert.EqualValues(t, 1, intValue(t, o.collect(t), "amlpool.endpoint.calls", keyEndpoint.String("slow"), keyOutcome.String("cancelled")))
	assertStatsAgree(t, o)
}

func TestTracePropagationOnlyWhenAsked(t *testing.T) {
	srv := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{srv.endpoint("a", 1)}, WithTracePropagation(propagation.TraceContext{}))
	_, err := o.Do(t.Context(), nil)
	require.NoError(t, err)
	attempt := o.spans.Ended()[0]
	got := <-srv.parents
	want := "00-" + attempt.SpanContext().TraceID().String() + "-" + attempt.SpanContext().SpanID().String() + "-01"
	assert.Equal(t, want, got, "the attempt's span is the service's parent")
}

func TestLogsOneDebugLinePerAttempt(t *testing.T) {
	busy := newFakeAML(t, always(503))
	ok := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{busy.endpoint("busy", 1), ok.endpoint("ok", 1)})
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.NoError(t, err)

	lines := o.logLines(t, "amlpool: attempt")
	require.Len(t, lines, 2)
	assert.Equal(t, "DEBUG", lines[0]["level"])
	assert.Equal(t, "busy", lines[0]["endpoint"])
	assert.EqualValues(t, 1, lines[0]["attempt"])
	assert.Equal(t, "throttled", lines[0]["outcome"])
	assert.EqualValues(t, 503, lines[0]["status"])
	assert.Contains(t, lines[0]["error"], "RequestThrottled")
	assert.Equal(t, "ok", lines[1]["endpoint"])
	assert.EqualValues(t, 2, lines[1]["attempt"])
	assert.Equal(t, "success", lines[1]["outcome"])
	assert.Equal(t, "throttled", lines[1]["retry_reason"])
	assert.NotContains(t, lines[1], "error")
}

func TestLogsNothingAboveDebug(t *testing.T) {
	srv := newFakeAML(t, always(200))
	var buf bytes.Buffer
	c, err := New([]Endpoint{srv.endpoint("a", 1)}, WithLogger(slog.New(slog.NewTextHandler(&buf, nil))))
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Do(t.Context(), nil)
	require.NoError(t, err)
	assert.Empty(t, buf.String())
}

func TestTelemetryOffCostsNothing(t *testing.T) {
	for name, opts := range map[string][]Option{
		"no options":       nil,
		"discard logger":   {WithLogger(slog.New(slog.DiscardHandler))},
		"nil logger":       {WithLogger(nil)},
		"nil providers":    {WithMeterProvider(nil), WithTracerProvider(nil)},
		"propagation only": {WithTracePropagation(propagation.TraceContext{})},
	} {
		c, err := New([]Endpoint{good(nil)}, opts...)
		require.NoError(t, err)
		assert.Nil(t, c.tel, name)
		c.Close()
	}
	var tel *telemetry
	tel.close() // Close calls it whether or not there is telemetry
}

func TestMetricsCountTransportErrorsAndCancels(t *testing.T) {
	arrived := make(chan struct{}, 1)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			conn, _, err := w.(http.Hijacker).Hijack() // drop the connection: no reply at all
			require.NoError(t, err)
			conn.Close()
			return
		}
		io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		<-r.Context().Done()
	}))
	defer srv.Close()
	o := newObserved(t, []Endpoint{{Name: "a", URL: srv.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1}}, WithoutRetries())
	_, err := o.Do(t.Context(), nil)
	require.Error(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-arrived; cancel() }()
	_, err = o.Do(ctx, nil)
	require.ErrorIs(t, err, context.Canceled)

	rm := o.collect(t)
	ep := keyEndpoint.String("a")
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("transport_error")))
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("cancelled")))
	c, _ := histogram(t, rm, "http.client.request.duration", ep, keyErrorType.String("cancelled"))
	assert.EqualValues(t, 1, c)
	assertStatsAgree(t, o)
}

// The per-endpoint series follow the live set: an added endpoint's appear,
// a removed one's stop, and an endpoint fault is counted as one.
func TestMetricsFollowSetEndpoints(t *testing.T) {
	a, b := newFakeAML(t, always(200)), newFakeAML(t, always(401))
	c := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{b.endpoint("b", 1), a.endpoint("a", 1)}, WithRand(func() uint64 { return 0 }))
	_, err := o.Do(t.Context(), []byte(`{}`)) // b answers 401: a fault; then a
	require.NoError(t, err)
	rm := o.collect(t)
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.calls", keyEndpoint.String("b"), keyOutcome.String("endpoint_fault")))
	assertStatsAgree(t, o)

	require.NoError(t, o.SetEndpoints([]Endpoint{a.endpoint("a", 1), c.endpoint("c", 3)}))
	rm = o.collect(t)
	for _, name := range []string{"amlpool.endpoint.in_flight", "amlpool.endpoint.limit", "amlpool.endpoint.calls"} {
		m, ok := findMetric(rm, name)
		require.True(t, ok, name)
		var endpoints []string
		for _, set := range pointAttrs(m.Data) {
			v, _ := set.Value(keyEndpoint)
			endpoints = append(endpoints, v.AsString())
		}
		assert.NotContains(t, endpoints, "b", "%s of a removed endpoint", name)
		assert.Contains(t, endpoints, "c", "%s of an added endpoint", name)
	}
	assert.EqualValues(t, 3, intValue(t, rm, "amlpool.endpoint.limit", keyEndpoint.String("c")))
	n, _ := histogram(t, rm, "http.client.request.duration", keyEndpoint.String("b"))
	assert.NotZero(t, n, "recorded as attempts end: the SDK keeps a removed endpoint's series, as documented")
	assertStatsAgree(t, o)
}

// A Name that SetEndpoints gives another URL keeps its series: its
// amlpool.endpoint.calls goes on from where it was, since a counter's
// series never goes back, while Stats lists the new endpoint from 0.
func TestMetricsOfANameGivenANewURL(t *testing.T) {
	before, after := newFakeAML(t, always(200)), newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{before.endpoint("a", 1)})
	for range 3 {
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.NoError(t, err)
	}
	ep := keyEndpoint.String("a")
	assert.EqualValues(t, 3, intValue(t, o.collect(t), "amlpool.endpoint.calls", ep, keyOutcome.String("success")))

	require.NoError(t, o.SetEndpoints([]Endpoint{after.endpoint("a", 1)}))
	assert.EqualValues(t, 3, intValue(t, o.collect(t), "amlpool.endpoint.calls", ep, keyOutcome.String("success")),
		"the series does not go back")
	for range 2 {
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.NoError(t, err)
	}
	assert.EqualValues(t, 5, intValue(t, o.collect(t), "amlpool.endpoint.calls", ep, keyOutcome.String("success")))
	st := o.Stats()
	require.Len(t, st.Endpoints, 1)
	assert.EqualValues(t, 2, st.Endpoints[0].Calls, "Stats lists the new endpoint's own calls")
}

// A Name removed and, once drained, given again goes on with its series:
// while it is out no point is reported, and when it is back its
// amlpool.endpoint.calls goes on from where it was, never back to 0, while
// Stats lists the new endpoint from 0.
func TestMetricsOfANameRemovedAndAddedBack(t *testing.T) {
	a, b := newFakeAML(t, always(200)), newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{a.endpoint("a", 1), b.endpoint("b", 1)})
	for range 3 {
		_, err := o.Do(t.Context(), []byte(`{}`)) // firstFree: to a
		require.NoError(t, err)
	}
	ep := keyEndpoint.String("a")
	assert.EqualValues(t, 3, intValue(t, o.collect(t), "amlpool.endpoint.calls", ep, keyOutcome.String("success")))

	require.NoError(t, o.SetEndpoints([]Endpoint{b.endpoint("b", 1)}))
	require.Len(t, o.Stats().Endpoints, 1, "a has no call in flight: gone at once")
	require.NoError(t, o.SetEndpoints([]Endpoint{a.endpoint("a", 1), b.endpoint("b", 1)}))
	assert.EqualValues(t, 3, intValue(t, o.collect(t), "amlpool.endpoint.calls", ep, keyOutcome.String("success")),
		"the series does not go back")
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.NoError(t, err)
	assert.EqualValues(t, 4, intValue(t, o.collect(t), "amlpool.endpoint.calls", ep, keyOutcome.String("success")))
	assert.EqualValues(t, 1, o.Stats().Endpoints[0].Calls, "Stats lists the new endpoint's own calls")
}

// A removed Name's counts are kept while fewer than keptRemovedNames other
// Names were removed since: given back then, its calls counter goes on.
// After that many, they are forgotten, so that a Client given ever new
// Names (a pod's) keeps a bounded number, and the Name starts from 0.
func TestMetricsForgetANameLongRemoved(t *testing.T) {
	a, b, pods := newFakeAML(t, always(200)), newFakeAML(t, always(200)), newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{a.endpoint("a", 1), b.endpoint("b", 1)})
	ep := keyEndpoint.String("a")
	successes := func() int64 {
		return intValue(t, o.collect(t), "amlpool.endpoint.calls", ep, keyOutcome.String("success"))
	}
	pod := 0
	// churn removes a, then n other Names, one pod's at a time.
	churn := func(n int) {
		require.NoError(t, o.SetEndpoints([]Endpoint{b.endpoint("b", 1)}))
		for range n + 1 {
			pod++
			require.NoError(t, o.SetEndpoints([]Endpoint{b.endpoint("b", 1), pods.endpoint(fmt.Sprint("pod-", pod), 1)}))
		}
	}
	for range 3 {
		_, err := o.Do(t.Context(), []byte(`{}`)) // firstFree: to a
		require.NoError(t, err)
	}

	churn(keptRemovedNames - 1)
	require.NoError(t, o.SetEndpoints([]Endpoint{a.endpoint("a", 1), b.endpoint("b", 1)}))
	assert.EqualValues(t, 3, successes(), "kept: the series goes on")

	churn(keptRemovedNames)
	assert.LessOrEqual(t, len(o.kinds), keptRemovedNames+2, "b's, the last pod's, and the removed ones kept")
	require.NoError(t, o.SetEndpoints([]Endpoint{a.endpoint("a", 1), b.endpoint("b", 1)}))
	assert.EqualValues(t, 0, successes(), "forgotten")
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.NoError(t, err)
	assert.EqualValues(t, 1, successes())
	assert.EqualValues(t, 1, o.Stats().Endpoints[0].Calls)
}

// A removed Name whose endpoint still drains is not forgotten, however many
// Names were removed since: SetEndpoints may give it back, the draining
// endpoint with its counts. Once drained, the next SetEndpoints forgets it.
func TestMetricsKeepADrainingName(t *testing.T) {
	arrived, reply := make(chan struct{}, 1), make(chan struct{})
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		<-reply
		io.WriteString(w, `{"Results":{}}`)
	}))
	defer a.Close()
	b, pods := newFakeAML(t, always(200)), newFakeAML(t, always(200))
	epA := Endpoint{Name: "a", URL: a.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1}
	o := newObserved(t, []Endpoint{epA, b.endpoint("b", 1)})
	done := make(chan error, 1)
	go func() {
		_, err := o.Do(t.Context(), []byte(`{}`)) // firstFree: to a
		done <- err
	}()
	<-arrived
	require.NoError(t, o.SetEndpoints([]Endpoint{b.endpoint("b", 1)}))
	for i := range keptRemovedNames + 1 {
		require.NoError(t, o.SetEndpoints([]Endpoint{b.endpoint("b", 1), pods.endpoint(fmt.Sprint("pod-", i), 1)}))
	}
	_, kept := o.kinds["a"]
	assert.True(t, kept, "draining: kept")
	close(reply)
	require.NoError(t, <-done)

	require.NoError(t, o.SetEndpoints([]Endpoint{b.endpoint("b", 1)}))
	_, kept = o.kinds["a"]
	assert.False(t, kept, "drained: forgotten")
	assert.Len(t, o.gone, keptRemovedNames)
}

// headersRead is a RoundTripper that says when a reply's headers are in,
// its body not read yet.
type headersRead struct {
	rt  http.RoundTripper
	got chan struct{}
}

func (h *headersRead) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.rt.RoundTrip(r)
	if err == nil {
		h.got <- struct{}{}
	}
	return resp, err
}

// A call that gives up while an error reply's body is being read is a
// cancelled attempt for the metrics, as for Stats: not a server error.
func TestMetricsCountACancelMidReplyAsCancelled(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"error":`) // the rest never comes
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	rt := &headersRead{rt: tr, got: make(chan struct{}, 1)}
	o := newObserved(t, []Endpoint{{Name: "a", URL: srv.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1}},
		WithoutRetries(), WithHTTPClient(&http.Client{Transport: rt}))
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-rt.got; cancel() }()
	_, err := o.Do(ctx, nil)
	require.ErrorIs(t, err, context.Canceled)

	rm := o.collect(t)
	ep := keyEndpoint.String("a")
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("cancelled")))
	assert.EqualValues(t, 0, intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("server_error")))
	assertStatsAgree(t, o)
}

// A reply whose status is no error but which fails the attempt (a 2xx
// body over WithMaxResponseBytes) has an error.type that says what went
// wrong, not its status: the conventions set error.type to the status only
// when the status itself is an error (4xx, 5xx).
func TestErrorTypeOfAFailedSuccessReply(t *testing.T) {
	srv := newFakeAML(t, always(200))
	o := newObserved(t, []Endpoint{srv.endpoint("big", 1)}, WithoutRetries(), WithMaxResponseBytes(4))
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.ErrorIs(t, err, ErrResponseTooLarge)

	rm := o.collect(t)
	ep := keyEndpoint.String("big")
	n, _ := histogram(t, rm, "http.client.request.duration", ep, keyStatus.Int(200), keyErrorType.String("transport_error"))
	assert.EqualValues(t, 1, n, "the request timed with its status and error.type transport_error")
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.endpoint.calls", ep, keyOutcome.String("transport_error")))
	var types []string
	for _, s := range o.spans.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			types = append(types, spanAttrs(s)[keyErrorType].AsString())
			assert.Equal(t, codes.Error, s.Status().Code)
		}
	}
	assert.Equal(t, []string{"transport_error"}, types, "the attempt span's error.type")
	assertStatsAgree(t, o)
}
