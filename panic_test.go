package amlpool

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// armedRT is a RoundTripper that panics once each time it is armed, and
// otherwise sends through http.DefaultTransport.
type armedRT struct{ armed *atomic.Bool }

func (rt armedRT) RoundTrip(r *http.Request) (*http.Response, error) {
	if rt.armed.Swap(false) {
		panic("callback bug")
	}
	return http.DefaultTransport.RoundTrip(r)
}

// armedPropagator is a propagator whose Inject panics once each time it
// is armed.
type armedPropagator struct {
	propagation.TraceContext
	armed *atomic.Bool
}

func (p armedPropagator) Inject(ctx context.Context, c propagation.TextMapCarrier) {
	if p.armed.Swap(false) {
		panic("callback bug")
	}
	p.TraceContext.Inject(ctx, c)
}

// armedLimiter grants the first candidate's slot at once. Its Acquire, or
// with onRelease its leases' Release, panics once each time it is armed.
// It counts the leases it holds.
type armedLimiter struct {
	armed     *atomic.Bool
	onRelease bool // its Lease's Release panics, not Acquire
	onIndex   bool // its Lease's Index panics, not Acquire
	held      atomic.Int64
}

func (l *armedLimiter) Acquire(ctx context.Context, cands []LimitedEndpoint) (Lease, error) {
	if !l.onRelease && !l.onIndex && l.armed.Swap(false) {
		panic("callback bug")
	}
	l.held.Add(1)
	return armedLease{l}, nil
}

type armedLease struct{ l *armedLimiter }

func (a armedLease) Index() int {
	if a.l.onIndex && a.l.armed.Swap(false) {
		panic("callback bug")
	}
	return 0
}
func (a armedLease) Release() {
	a.l.held.Add(-1)
	if a.l.onRelease && a.l.armed.Swap(false) {
		panic("callback bug")
	}
}

// armedSharer is an armedLimiter that shares health through link.
type armedSharer struct {
	armedLimiter // never armed
	link         armedLink
}

func (s *armedSharer) ShareHealth([]LimitedEndpoint, func(HealthEvent)) HealthLink { return s.link }

// armedLink is a HealthLink whose Report panics once each time it is
// armed.
type armedLink struct{ armed *atomic.Bool }

func (l armedLink) Report(HealthEvent) {
	if l.armed.Swap(false) {
		panic("callback bug")
	}
}
func (armedLink) SetEndpoints([]LimitedEndpoint) {}
func (armedLink) Close()                         {}

// A callback of the user's that panics during an attempt (a RoundTripper,
// a Credential, a propagator, the classifier, a Limiter, its Lease or its
// HealthLink) panics the call with the same value, but leaves nothing
// behind: the slot and the Limiter's lease are back, every span ended, the
// metrics agree with Stats, and the next call goes through on the same
// one slot. An attempt that panicked before its slot went back counts as
// none.
func TestAPanickingCallbackLeavesNothingHeld(t *testing.T) {
	firstFails := func(n int64) int { // the classifier and the HealthLink hear of a failure
		if n == 1 {
			return 500
		}
		return 200
	}
	for _, tc := range []struct {
		name  string
		reply func(int64) int
		opts  func(armed *atomic.Bool, ep *Endpoint) []Option
		// counted: the attempt had its result when the callback panicked.
		counted bool
		lim     *armedLimiter // the Limiter whose leases must all be back
	}{
		{name: "RoundTripper", opts: func(armed *atomic.Bool, _ *Endpoint) []Option {
			return []Option{WithHTTPClient(&http.Client{Transport: armedRT{armed}})}
		}},
		{name: "Credential", opts: func(armed *atomic.Bool, ep *Endpoint) []Option {
			ep.APIKey, ep.SecondaryKey = "", ""
			ep.Credential = CredentialFunc(func(context.Context) (string, error) {
				if armed.Swap(false) {
					panic("callback bug")
				}
				return "a-token-of-some-length", nil
			})
			return nil
		}},
		{name: "propagator", opts: func(armed *atomic.Bool, _ *Endpoint) []Option {
			return []Option{WithTracePropagation(armedPropagator{armed: armed})}
		}},
		{name: "classifier", reply: firstFails, opts: func(armed *atomic.Bool, _ *Endpoint) []Option {
			return []Option{WithClassifier(func(err error) Verdict {
				if armed.Swap(false) {
					panic("callback bug")
				}
				return Classify(err)
			})}
		}},
		{name: "Limiter", lim: &armedLimiter{}},
		{name: "Lease", lim: &armedLimiter{onRelease: true}},
		{name: "Lease's Index", lim: &armedLimiter{onIndex: true}},
		{name: "HealthLink", reply: firstFails, counted: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var armed atomic.Bool
			reply := tc.reply
			if reply == nil {
				reply = always(200)
			}
			srv := newFakeAML(t, reply)
			ep := srv.endpoint("a", 1)
			var opts []Option
			switch {
			case tc.opts != nil:
				opts = tc.opts(&armed, &ep)
			case tc.lim != nil:
				tc.lim.armed = &armed
				opts = []Option{WithLimiter(tc.lim)}
			default: // HealthLink
				opts = []Option{WithLimiter(&armedSharer{armedLimiter{armed: new(atomic.Bool)}, armedLink{&armed}})}
			}
			o := newObserved(t, []Endpoint{ep}, opts...)

			armed.Store(true)
			assert.PanicsWithValue(t, "callback bug", func() { _, _ = o.Do(t.Context(), []byte(`{}`)) })
			require.False(t, armed.Load(), "the callback ran")
			st := o.Stats().Endpoints[0]
			require.Zero(t, st.InFlight, "the slot is back")
			if tc.lim != nil {
				require.Zero(t, tc.lim.held.Load(), "the lease is back")
			}
			calls := int64(0)
			if tc.counted {
				calls = 1
			}
			assert.Equal(t, calls, st.Calls)
			assert.Len(t, o.spans.Ended(), len(o.spans.Started()), "every span ended")
			for _, s := range o.spans.Ended() {
				assert.Equal(t, codes.Error, s.Status().Code, "span %s", s.Name())
			}
			assertStatsAgree(t, o)

			_, err := o.Do(t.Context(), []byte(`{}`))
			require.NoError(t, err, "the one slot serves the next call")
			assertStatsAgree(t, o)
		})
	}
}

// twiceLimiter's leases panic in Index, once, and then in Release, once.
type twiceLimiter struct {
	index, release atomic.Bool // armed
	held           atomic.Int64
}

func (l *twiceLimiter) Acquire(context.Context, []LimitedEndpoint) (Lease, error) {
	l.held.Add(1)
	return twiceLease{l}, nil
}

type twiceLease struct{ l *twiceLimiter }

func (t twiceLease) Index() int {
	if t.l.index.Swap(false) {
		panic("index bug")
	}
	return 0
}

func (t twiceLease) Release() {
	t.l.held.Add(-1)
	if t.l.release.Swap(false) {
		panic("release bug")
	}
}

// A Lease whose Index panics, and whose Release then panics too as the
// lease is given back, still leaves the slot back: the call panics (with
// the later value), and the next call goes through on the same one slot.
func TestALeasePanickingInIndexThenReleaseLeavesTheSlotBack(t *testing.T) {
	srv := newFakeAML(t, always(200))
	lim := &twiceLimiter{}
	c, err := New([]Endpoint{srv.endpoint("a", 1)}, WithLimiter(lim))
	require.NoError(t, err)
	defer c.Close()
	lim.index.Store(true)
	lim.release.Store(true)
	assert.PanicsWithValue(t, "release bug", func() { _, _ = c.Do(t.Context(), []byte(`{}`)) })
	require.False(t, lim.index.Load() || lim.release.Load(), "both panicked")
	assert.Zero(t, c.Stats().Endpoints[0].InFlight, "the slot is back")
	assert.Zero(t, lim.held.Load(), "the lease is back")
	_, err = c.Do(t.Context(), []byte(`{}`))
	require.NoError(t, err, "the one slot serves the next call")
}

// A callback that panics in a hedged copy, which runs in a goroutine of
// its own, panics the call in the caller's goroutine, where it can be
// recovered, not the program; the other copy is cancelled, and nothing
// is left held or open. Either copy may be the one: the first (before or
// after the hedge went), or the hedge. A callback that calls
// runtime.Goexit there (as t.FailNow does) ends the caller's goroutine
// likewise, as it would have unhedged: the call neither returns nor hangs.
func TestAPanickingCallbackInAHedgedCopyPanicsTheCall(t *testing.T) {
	type testCase struct {
		name   string
		which  string // the endpoint whose request panics
		hedge  bool   // the hedge goes before the panic
		goexit bool   // runtime.Goexit, not a panic
	}
	var cases []testCase
	for _, goexit := range []bool{false, true} {
		for _, tc := range []testCase{
			{name: "first copy, alone", which: "slow"},
			{name: "first copy, hedged", which: "slow", hedge: true},
			{name: "hedge", which: "fast", hedge: true},
		} {
			if tc.goexit = goexit; goexit {
				tc.name = "Goexit, " + tc.name
			}
			cases = append(cases, tc)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			slowArrived, slowReply := make(chan struct{}, 1), make(chan struct{})
			slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				slowArrived <- struct{}{}
				select {
				case <-r.Context().Done():
				case <-slowReply:
				}
			}))
			defer slow.Close()
			fastArrived, fastReply := make(chan struct{}, 1), make(chan struct{})
			fast := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				fastArrived <- struct{}{}
				select {
				case <-r.Context().Done():
				case <-fastReply:
				}
			}))
			defer fast.Close()
			// The RoundTripper panics for which's request once it is back.
			target := map[string]*httptest.Server{"slow": slow, "fast": fast}[tc.which].Listener.Addr().String()
			var armed atomic.Bool
			rt := rtFunc(func(r *http.Request) (*http.Response, error) {
				resp, err := http.DefaultTransport.RoundTrip(r)
				if r.URL.Host == target && armed.Swap(false) {
					if resp != nil {
						resp.Body.Close()
					}
					if tc.goexit {
						runtime.Goexit()
					}
					panic("callback bug")
				}
				return resp, err
			})
			o := newObserved(t, []Endpoint{
				{Name: "slow", URL: slow.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1},
				{Name: "fast", URL: fast.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1},
			}, WithHedging(time.Second), WithHTTPClient(&http.Client{Transport: rt}))
			armed.Store(true)
			// How the call ended: "returned", "Goexit", or what it panicked with.
			ended := make(chan any, 1)
			go func() {
				returned := false
				defer func() {
					switch v := recover(); {
					case v != nil:
						ended <- v
					case returned:
						ended <- "returned"
					default:
						ended <- "Goexit"
					}
				}()
				_, _ = o.Do(t.Context(), []byte(`{}`))
				returned = true
			}()
			<-slowArrived
			if tc.hedge {
				require.True(t, o.clock.WaitTimers(1, t.Context().Done()), "the hedge delay is waiting")
				o.clock.Advance(time.Second)
				<-fastArrived
			}
			close(map[string]chan struct{}{"slow": slowReply, "fast": fastReply}[tc.which])
			want := "callback bug"
			if tc.goexit {
				want = "Goexit"
			}
			require.Equal(t, want, <-ended)
			require.False(t, armed.Load(), "the RoundTripper panicked")

			for _, e := range o.Stats().Endpoints {
				assert.Zero(t, e.InFlight, "%s's slot is back", e.Name)
			}
			assert.Len(t, o.spans.Ended(), len(o.spans.Started()), "every span ended")
			assertStatsAgree(t, o)
		})
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// armedTelemetry is an Option, given after those it wraps, that makes the
// Client's telemetry panic once each time armed is: its MeterProvider's
// histogram named instrument as it records, its TracerProvider as it
// starts a span named span, its logger as it handles a line whose message
// is log.
type armedTelemetry struct {
	armed      *atomic.Bool
	instrument string
	span       string
	log        string
}

func (o armedTelemetry) apply(c *config) {
	if o.instrument != "" {
		c.meterProvider = armedMeterProvider{c.meterProvider, o}
	}
	if o.span != "" {
		c.tracerProvider = armedTracerProvider{c.tracerProvider, o}
	}
	if o.log != "" {
		c.logger = slog.New(armedHandler{c.logger.Handler(), o})
	}
}

type armedMeterProvider struct {
	metric.MeterProvider
	o armedTelemetry
}

func (p armedMeterProvider) Meter(name string, opts ...metric.MeterOption) metric.Meter {
	return armedMeter{p.MeterProvider.Meter(name, opts...), p.o}
}

type armedMeter struct {
	metric.Meter
	o armedTelemetry
}

func (m armedMeter) Float64Histogram(name string, opts ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	h, err := m.Meter.Float64Histogram(name, opts...)
	if name == m.o.instrument {
		h = armedHistogram{h, m.o.armed}
	}
	return h, err
}

type armedHistogram struct {
	metric.Float64Histogram
	armed *atomic.Bool
}

func (h armedHistogram) Record(ctx context.Context, v float64, opts ...metric.RecordOption) {
	if h.armed.Swap(false) {
		panic("callback bug")
	}
	h.Float64Histogram.Record(ctx, v, opts...)
}

type armedTracerProvider struct {
	trace.TracerProvider
	o armedTelemetry
}

func (p armedTracerProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return armedTracer{p.TracerProvider.Tracer(name, opts...), p.o}
}

type armedTracer struct {
	trace.Tracer
	o armedTelemetry
}

func (t armedTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if name == t.o.span && t.o.armed.Swap(false) {
		panic("callback bug")
	}
	return t.Tracer.Start(ctx, name, opts...)
}

type armedHandler struct {
	slog.Handler
	o armedTelemetry
}

func (h armedHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.o.log && h.o.armed.Swap(false) {
		panic("callback bug")
	}
	return h.Handler.Handle(ctx, r)
}

// A MeterProvider's instrument, or a logger, that panics as an attempt
// ends panics the call with the same value, but the attempt's span ends
// (as does the call's) and its slot is back: the next call goes through
// on the same one slot.
func TestAPanickingMeterOrLoggerEndsTheAttemptsSpan(t *testing.T) {
	for _, tc := range []struct {
		name  string
		arm   armedTelemetry
		reply func(int64) int
		opts  []Option
	}{
		{name: "meter", arm: armedTelemetry{instrument: "http.client.request.duration"}},
		{name: "logger, as the retry budget runs out", reply: always(500), opts: []Option{WithRetryBudget(0, 0)},
			arm: armedTelemetry{log: "amlpool: retry budget exhausted; failed calls return without retrying"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reply := tc.reply
			if reply == nil {
				reply = always(200)
			}
			srv := newFakeAML(t, reply)
			var armed atomic.Bool
			tc.arm.armed = &armed
			o := newObserved(t, []Endpoint{srv.endpoint("a", 1)}, append(tc.opts, tc.arm)...)

			armed.Store(true)
			assert.PanicsWithValue(t, "callback bug", func() { _, _ = o.Do(t.Context(), []byte(`{}`)) })
			require.False(t, armed.Load(), "the callback ran")
			assert.Zero(t, o.Stats().Endpoints[0].InFlight, "the slot is back")
			require.Len(t, o.spans.Started(), 2, "the call's and the attempt's")
			assert.Len(t, o.spans.Ended(), len(o.spans.Started()), "every span ended")

			_, err := o.Do(t.Context(), []byte(`{}`))
			if tc.reply == nil {
				require.NoError(t, err, "the one slot serves the next call")
			} else {
				require.Error(t, err) // the server's 500, this time without a retry
			}
			assert.Len(t, o.spans.Ended(), len(o.spans.Started()), "every span ended")
		})
	}
}

// A MeterProvider's instrument that panics as a hedged attempt ends, for
// either copy, panics the call with the same value, but both copies' spans
// end and both slots are back.
func TestAPanickingMeterEndsBothCopiesSpans(t *testing.T) {
	slowArrived := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		slowArrived <- struct{}{}
		<-r.Context().Done() // answers only by being abandoned
	}))
	defer slow.Close()
	fast := newFakeAML(t, always(200))
	var armed atomic.Bool
	o := newObserved(t, []Endpoint{{Name: "slow", URL: slow.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1},
		fast.endpoint("fast", 1)}, WithHedging(time.Second),
		armedTelemetry{armed: &armed, instrument: "http.client.request.duration"})
	armed.Store(true)
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = o.Do(t.Context(), []byte(`{}`))
	}()
	<-slowArrived
	require.True(t, o.clock.WaitTimers(1, t.Context().Done()), "the hedge delay is waiting")
	o.clock.Advance(time.Second)
	require.Equal(t, "callback bug", <-panicked)

	for _, e := range o.Stats().Endpoints {
		assert.Zero(t, e.InFlight, "%s's slot is back", e.Name)
	}
	require.Len(t, o.spans.Started(), 3, "the call's and the copies'")
	assert.Len(t, o.spans.Ended(), len(o.spans.Started()), "every span ended")
}

// A TracerProvider that panics starting an attempt's span, or a
// MeterProvider's instrument that panics recording the wait for its slot,
// panics the call, but the slot and the Limiter's lease, taken already,
// are back, the attempt counts as none, and the next call goes through on
// the same one slot.
func TestAPanickingTelemetryLeavesTheSlotBack(t *testing.T) {
	for _, arm := range []armedTelemetry{{span: "POST"}, {instrument: "amlpool.slot.wait.duration"}} {
		t.Run(arm.span+arm.instrument, func(t *testing.T) {
			srv := newFakeAML(t, always(200))
			var armed atomic.Bool
			arm.armed = &armed
			lim := &armedLimiter{armed: new(atomic.Bool)} // never armed
			o := newObserved(t, []Endpoint{srv.endpoint("a", 1)}, WithLimiter(lim), arm)

			armed.Store(true)
			assert.PanicsWithValue(t, "callback bug", func() { _, _ = o.Do(t.Context(), []byte(`{}`)) })
			require.False(t, armed.Load(), "the callback ran")
			st := o.Stats().Endpoints[0]
			require.Zero(t, st.InFlight, "the slot is back")
			require.Zero(t, lim.held.Load(), "the lease is back")
			assert.Zero(t, st.Calls)
			assert.Len(t, o.spans.Ended(), len(o.spans.Started()), "every span ended")
			assertStatsAgree(t, o)

			_, err := o.Do(t.Context(), []byte(`{}`))
			require.NoError(t, err, "the one slot serves the next call")
			assertStatsAgree(t, o)
		})
	}
}

// A logger that panics as the retry budget refuses a hedge panics the
// call, but the slot taken for the hedge is back, as is the first copy's,
// cancelled, and every span ended.
func TestAPanickingLoggerAsTheBudgetRefusesAHedgeLeavesNothingHeld(t *testing.T) {
	slowArrived := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		slowArrived <- struct{}{}
		<-r.Context().Done() // answers only by being cancelled
	}))
	defer slow.Close()
	fast := newFakeAML(t, always(200))
	var armed atomic.Bool
	o := newObserved(t, []Endpoint{{Name: "slow", URL: slow.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1},
		fast.endpoint("fast", 1)}, WithHedging(time.Second), WithRetryBudget(0, 0),
		armedTelemetry{armed: &armed, log: "amlpool: retry budget exhausted; failed calls return without retrying"})
	armed.Store(true)
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = o.Do(t.Context(), []byte(`{}`))
	}()
	<-slowArrived
	require.True(t, o.clock.WaitTimers(1, t.Context().Done()), "the hedge delay is waiting")
	o.clock.Advance(time.Second)
	require.Equal(t, "callback bug", <-panicked)

	for _, e := range o.Stats().Endpoints {
		assert.Zero(t, e.InFlight, "%s's slot is back", e.Name)
	}
	assert.Len(t, o.spans.Ended(), len(o.spans.Started()), "every span ended")
	assertStatsAgree(t, o)
}

// endpointsSharer is a Limiter that shares health through a link that
// keeps the endpoints it was last told of, and panics in SetEndpoints
// once each time armed is.
type endpointsSharer struct {
	armedLimiter // never armed
	link         endpointsLink
}

func (s *endpointsSharer) ShareHealth(eps []LimitedEndpoint, _ func(HealthEvent)) HealthLink {
	s.link.last.Store(&eps)
	return s.link
}

type endpointsLink struct {
	last  *atomic.Pointer[[]LimitedEndpoint]
	armed *atomic.Bool
}

func (endpointsLink) Report(HealthEvent) {}
func (endpointsLink) Close()             {}
func (l endpointsLink) SetEndpoints(eps []LimitedEndpoint) {
	l.last.Store(&eps)
	if l.armed.Swap(false) {
		panic("callback bug")
	}
}

// A logger, or a HealthLink, that panics as SetEndpoints tells it of the
// new set panics SetEndpoints with the same value, but leaves no party
// behind: the pool has the new set, calls waiting at the Limiter choose
// again, the HealthLink has the new set, the changes are logged, and the
// next SetEndpoints goes through.
func TestAPanickingHookInSetEndpointsLeavesEveryPartyTold(t *testing.T) {
	for _, tc := range []struct {
		name   string
		logger bool // the logger panics, not the HealthLink
	}{{"logger", true}, {"HealthLink", false}} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newFakeAML(t, always(200)), newFakeAML(t, always(200))
			var armed atomic.Bool
			sh := &endpointsSharer{armedLimiter: armedLimiter{armed: new(atomic.Bool)},
				link: endpointsLink{last: new(atomic.Pointer[[]LimitedEndpoint]), armed: new(atomic.Bool)}}
			opts := []Option{WithLimiter(sh)}
			if tc.logger {
				opts = append(opts, armedTelemetry{armed: &armed, log: "amlpool: endpoint added"})
			} else {
				sh.link.armed = &armed
			}
			o := newObserved(t, []Endpoint{a.endpoint("a", 1)}, opts...)
			gen := o.gen.Load()
			names := func(eps []LimitedEndpoint) (out []string) {
				for _, e := range eps {
					out = append(out, e.Name)
				}
				return out
			}

			armed.Store(true)
			assert.PanicsWithValue(t, "callback bug", func() {
				_ = o.SetEndpoints([]Endpoint{a.endpoint("a", 1), b.endpoint("b", 1)})
			})
			require.False(t, armed.Load(), "the callback ran")
			st := o.Stats()
			require.Len(t, st.Endpoints, 2)
			assert.Equal(t, "b", st.Endpoints[1].Name, "the pool has the new set")
			assert.Error(t, gen.ctx.Err(), "calls waiting at the Limiter choose again")
			assert.Equal(t, []string{"a", "b"}, names(*sh.link.last.Load()), "the HealthLink has the new set")
			if !tc.logger {
				assert.Len(t, o.logLines(t, "amlpool: endpoint added"), 1, "the change is logged")
			}

			require.NoError(t, o.SetEndpoints([]Endpoint{b.endpoint("b", 1)}))
			assert.Equal(t, []string{"b"}, names(*sh.link.last.Load()))
			_, err := o.Do(t.Context(), []byte(`{}`))
			require.NoError(t, err)
		})
	}
}

// closePanickingSharer is a Limiter that shares health through a link
// whose Close panics.
type closePanickingSharer struct{ armedLimiter }

func (*closePanickingSharer) ShareHealth([]LimitedEndpoint, func(HealthEvent)) HealthLink {
	return closePanickingLink{}
}

type closePanickingLink struct{}

func (closePanickingLink) Report(HealthEvent)             {}
func (closePanickingLink) SetEndpoints([]LimitedEndpoint) {}
func (closePanickingLink) Close()                         { panic("callback bug") }

// A HealthLink whose Close panics panics Client.Close with the same
// value, but the Client is closed all the same: a call waiting for a slot
// returns ErrClosed at once, the call in flight finishes, and no goroutine
// of the Client's is left (goleak, in TestMain).
func TestAPanickingHealthLinkClosesTheClientAllTheSame(t *testing.T) {
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		<-release
		io.WriteString(w, `{}`)
	}))
	defer srv.Close()
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce()
	c, err := New([]Endpoint{{Name: "a", URL: srv.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1}},
		WithLimiter(&closePanickingSharer{armedLimiter{armed: new(atomic.Bool)}}))
	require.NoError(t, err)
	first, second := make(chan error, 1), make(chan error, 1)
	go func() { _, err := c.Do(t.Context(), []byte(`{}`)); first <- err }()
	<-arrived
	go func() { _, err := c.Do(t.Context(), []byte(`{}`)); second <- err }()
	require.Eventually(t, func() bool { return c.Stats().Waiting == 1 }, 10*time.Second, time.Millisecond)

	assert.PanicsWithValue(t, "callback bug", func() { _ = c.Close() })
	var got error
	require.Eventually(t, func() bool {
		select {
		case got = <-second:
			return true
		default:
			return false
		}
	}, 10*time.Second, time.Millisecond, "the waiting call returns")
	require.ErrorIs(t, got, ErrClosed)
	releaseOnce()
	require.NoError(t, <-first, "the call in flight finishes")
	assert.ErrorIs(t, c.Close(), ErrClosed)
}

// A Credential whose Token calls runtime.Goexit (t.FailNow in a fake
// credential) ends the goroutine of the call that asked for the token, as
// it would any other callback's, hedged copy or not: no call waits for a
// token another call's Token was fetching (each attempt asks its
// Credential itself), so none is left waiting, not even with a ctx that
// never ends. The slot goes back, and the next call gets its token. In a
// bubble, a call left waiting for ever would fail the test as a deadlock.
func TestACredentialGoexitEndsTheCallNotOthers(t *testing.T) {
	ok := func(r *http.Request) (*http.Response, error) {
		if r.Host == "slow.invalid" {
			<-r.Context().Done() // the first copy, while the hedge goes
			return nil, r.Context().Err()
		}
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(`{"Results":{}}`)), Request: r}, nil
	}
	for _, hedged := range []bool{false, true} {
		t.Run(map[bool]string{false: "unhedged", true: "hedge"}[hedged], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var exits atomic.Int64 // Token calls left that call Goexit
				cred := CredentialFunc(func(context.Context) (string, error) {
					if exits.Add(-1) >= 0 {
						runtime.Goexit()
					}
					return "a-token-of-some-length", nil
				})
				const callers = 3
				eps := []Endpoint{{Name: "fast", URL: "https://fast.invalid/x", Credential: cred, MaxConcurrentCalls: callers}}
				opts := []Option{WithoutRetries(), WithHTTPClient(&http.Client{Transport: rtFunc(ok)})}
				exits.Store(callers)
				if hedged {
					// Each call goes first to slow, the lower tier, and
					// its hedge, a second later, to fast.
					eps[0].Tier = 1
					eps = append(eps, Endpoint{Name: "slow", URL: "https://slow.invalid/x", APIKey: secretKey, MaxConcurrentCalls: callers})
					opts = append(opts, WithHedging(time.Second))
				}
				c, err := New(eps, opts...)
				require.NoError(t, err)
				defer c.Close()
				ended := make(chan string, callers)
				for range callers {
					go func() {
						returned := false
						defer func() {
							if !returned {
								ended <- "Goexit"
							}
						}()
						_, _ = c.Do(context.Background(), []byte(`{}`))
						returned = true
						ended <- "returned"
					}()
				}
				for range callers {
					assert.Equal(t, "Goexit", <-ended)
				}
				for _, e := range c.Stats().Endpoints {
					assert.Zero(t, e.InFlight, "%s's slot is back", e.Name)
				}
				assert.EqualValues(t, -1, exits.Add(-1), "each call asked for its token")
				exits.Store(0)
				_, err = c.Do(context.Background(), []byte(`{}`))
				require.NoError(t, err, "the next call gets its token")
			})
		})
	}
}
