package amlpool

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/amlpool/amlpool/internal/pool"
)

type meterProviderOption struct{ mp metric.MeterProvider }

func (o meterProviderOption) apply(c *config) { c.meterProvider = o.mp }

// WithMeterProvider records OpenTelemetry metrics through mp, on a Meter
// named "github.com/amlpool/amlpool". Per endpoint (attribute
// amlpool.endpoint, the endpoint's Name):
//
//	http.client.request.duration  histogram, s   each attempt's HTTP request, with the HTTP client
//	                                             conventions' http.request.method, server.address,
//	                                             server.port, http.response.status_code, error.type
//	                                             (the status of a 4xx or 5xx reply, else
//	                                             the amlpool.outcome of a failed attempt)
//	amlpool.endpoint.calls        counter        attempts by amlpool.outcome: success, throttled,
//	                                             endpoint_fault (401, 403, 404, an untrusted
//	                                             TLS certificate, a plain-HTTP server or
//	                                             proxy for an https:// URL), client_error,
//	                                             server_error, transport_error, cancelled,
//	                                             abandoned (a hedge's slower copy)
//	amlpool.endpoint.in_flight    gauge          calls in flight now
//	amlpool.endpoint.limit        gauge          the cap in force now
//	amlpool.endpoint.tier         gauge          its tier (Endpoint.Tier)
//	amlpool.endpoint.ejections    counter        times the endpoint was taken out of rotation
//
// Per Client:
//
//	amlpool.slot.wait.duration        histogram, s  time each attempt waited for a slot, a hedged
//	                                                copy's wait for a Limiter's slot included
//	                                                (error.type no_capacity, shed, cancelled or
//	                                                closed when it got none; a copy's wait that
//	                                                the first copy's end cut short is cancelled;
//	                                                _OTHER for a Limiter's error, or when a
//	                                                Balancer or Limiter panicked)
//	amlpool.slot.waiting              gauge         calls waiting for a slot now
//	amlpool.slot.shed                 counter       calls turned away by a full line (WithMaxWaiting),
//	                                                by amlpool.priority: low, normal, high
//	amlpool.retries                   counter       attempts after a call's first, by
//	                                                amlpool.retry.reason (what the previous came to)
//	amlpool.hedges                    counter       extra attempts raced against a slow one
//	amlpool.retry_budget.rejections   counter       retries and hedges the retry budget refused
//
// The counters agree with Stats: per endpoint, the sum of
// amlpool.endpoint.calls is EndpointStats.Calls, its throttled part
// Throttles, its endpoint_fault part Faults, and all but its success,
// abandoned and cancelled parts Errors; amlpool.slot.shed is Stats.Shed.
// The per-endpoint series read when the reader collects (amlpool.endpoint.calls
// and the gauges) follow the live endpoints: after SetEndpoints, an added
// endpoint's appear and a removed one's stop. http.client.request.duration
// and amlpool.endpoint.ejections are recorded as attempts end, so the SDK
// keeps a removed endpoint's series: a cumulative reader (Prometheus's)
// reports them, unchanged, until the process ends; a delta one drops them.
// For a Client given ever new Names, the SDK's cardinality limit (2,000
// attribute sets per instrument by default) bounds them. The series are the
// Name's: when SetEndpoints gives a Name another URL, an endpoint takes
// the Name of one still draining, or a removed Name comes back,
// amlpool.endpoint.calls goes on from where it was (a counter never goes
// back) and counts the old endpoint's last attempts too, while Stats lists
// the new endpoint with its own counts from 0. The Client keeps a removed
// Name's counts until it has removed 1,000 other Names since, so that one
// given ever new Names (a pod's, say) does not keep counts for each: a
// Name that comes back after that starts again from 0.
//
// Two Clients on one MeterProvider report the same series for endpoints of
// the same name; give them distinct names or distinct providers.
//
// Default: no metrics, and no cost for them on the call path. A nil mp means
// the default.
func WithMeterProvider(mp metric.MeterProvider) Option { return meterProviderOption{mp} }

// metrics holds a Client's instruments and, per endpoint, the attribute sets
// of the common measurements, built once so that recording them allocates
// nothing.
//
// What can be counted on the hot path with an atomic is: amlpool.endpoint.calls
// and the gauges are observed from atomics when the reader collects, so an
// attempt pays for its two histograms and one atomic add, not for an SDK
// counter too (which costs about as much as a histogram).
type metrics struct {
	duration  metric.Float64Histogram
	ejections metric.Int64Counter
	wait      metric.Float64Histogram
	retries   metric.Int64Counter
	hedges    metric.Int64Counter
	budget    metric.Int64Counter
	reg       metric.Registration // the gauges' callback

	waitErrs map[string][]metric.RecordOption
	shedBy   [3]metric.ObserveOption // amlpool.priority, by priority − PriorityLow
}

// epMetrics is one endpoint's part of the metrics: its counts by outcome
// and the attribute sets of its common measurements.
type epMetrics struct {
	// kinds counts attempts by outcome kind. Endpoints that bear one Name,
	// at once or one after another, share it, so that the Name's series
	// never goes back (addExt).
	kinds  *outcomeCounts
	calls  [numKinds]metric.ObserveOption // amlpool.endpoint, amlpool.outcome=kind
	ok     []metric.RecordOption          // request attributes with status 200
	only   []metric.AddOption             // amlpool.endpoint alone
	gauges metric.ObserveOption           // amlpool.endpoint alone
}

// outcomeCounts counts an endpoint's attempts by outcome kind.
type outcomeCounts [numKinds]atomic.Int64

// init builds the attribute sets of t's endpoint, which counts its
// attempts in kinds.
func (e *epMetrics) init(t *epTelemetry, kinds *outcomeCounts) {
	e.kinds = kinds
	name := keyEndpoint.String(t.name)
	for k := kindSuccess; k < numKinds; k++ {
		e.calls[k] = metric.WithAttributeSet(attribute.NewSet(name, keyOutcome.String(k.String())))
	}
	e.ok = recordOpts(append(slices.Clip(t.attrs), keyStatus.Int(200))...)
	e.only = addOpts(name)
	e.gauges = metric.WithAttributeSet(attribute.NewSet(name))
}

// durationBuckets are the conventions' advice for http.client.request.duration.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// waitBuckets reach further: a call may wait for a slot up to its deadline.
var waitBuckets = []float64{0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(m metric.Meter, p *pool.Pool) (*metrics, error) {
	var errs []error
	check := func(err error) { errs = append(errs, err) }
	x := &metrics{}
	var err error
	x.duration, err = m.Float64Histogram("http.client.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of HTTP client requests: one per attempt."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	check(err)
	calls, err := m.Int64ObservableCounter("amlpool.endpoint.calls", metric.WithUnit("{call}"),
		metric.WithDescription("Attempts an endpoint served, by outcome."))
	check(err)
	x.ejections, err = m.Int64Counter("amlpool.endpoint.ejections", metric.WithUnit("{ejection}"),
		metric.WithDescription("Times an endpoint was taken out of rotation."))
	check(err)
	inFlight, err := m.Int64ObservableGauge("amlpool.endpoint.in_flight", metric.WithUnit("{call}"),
		metric.WithDescription("Calls in flight to an endpoint."))
	check(err)
	limit, err := m.Int64ObservableGauge("amlpool.endpoint.limit", metric.WithUnit("{call}"),
		metric.WithDescription("An endpoint's cap on calls in flight, as in force now."))
	check(err)
	x.wait, err = m.Float64Histogram("amlpool.slot.wait.duration", metric.WithUnit("s"),
		metric.WithDescription("Time an attempt waited for a free slot."),
		metric.WithExplicitBucketBoundaries(waitBuckets...))
	check(err)
	waiting, err := m.Int64ObservableGauge("amlpool.slot.waiting", metric.WithUnit("{call}"),
		metric.WithDescription("Calls waiting for a free slot."))
	check(err)
	tier, err := m.Int64ObservableGauge("amlpool.endpoint.tier", metric.WithUnit("{tier}"),
		metric.WithDescription("An endpoint's tier: 0 takes calls first, higher tiers the overflow."))
	check(err)
	shed, err := m.Int64ObservableCounter("amlpool.slot.shed", metric.WithUnit("{call}"),
		metric.WithDescription("Calls turned away because the line of waiting calls was full, by priority."))
	check(err)
	x.retries, err = m.Int64Counter("amlpool.retries", metric.WithUnit("{attempt}"),
		metric.WithDescription("Attempts after a call's first, by what the previous attempt came to."))
	check(err)
	x.hedges, err = m.Int64Counter("amlpool.hedges", metric.WithUnit("{attempt}"),
		metric.WithDescription("Extra attempts raced against a slow one."))
	check(err)
	x.budget, err = m.Int64Counter("amlpool.retry_budget.rejections", metric.WithUnit("{retry}"),
		metric.WithDescription("Retries and hedges the retry budget refused."))
	check(err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	x.waitErrs = map[string][]metric.RecordOption{}
	for _, s := range []string{"no_capacity", "shed", "cancelled", "closed", "_OTHER"} {
		x.waitErrs[s] = recordOpts(keyErrorType.String(s))
	}
	for pri := PriorityLow; pri <= PriorityHigh; pri++ {
		x.shedBy[pri-PriorityLow] = metric.WithAttributeSet(attribute.NewSet(keyPriority.String(pri.String())))
	}
	x.reg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, ep := range p.Set().Eps {
			e := &extOf(ep).tel.m
			o.ObserveInt64(inFlight, int64(ep.InFlight()), e.gauges)
			o.ObserveInt64(limit, int64(ep.Limit()), e.gauges)
			o.ObserveInt64(tier, int64(ep.Tier()), e.gauges)
			for k := kindSuccess; k < numKinds; k++ {
				o.ObserveInt64(calls, e.kinds[k].Load(), e.calls[k])
			}
		}
		o.ObserveInt64(waiting, int64(p.Waiting()))
		for pri := PriorityLow; pri <= PriorityHigh; pri++ {
			o.ObserveInt64(shed, p.Shed(int8(pri)), x.shedBy[pri-PriorityLow])
		}
		return nil
	}, inFlight, limit, waiting, calls, tier, shed)
	if err != nil {
		return nil, err
	}
	return x, nil
}

func addOpts(kv ...attribute.KeyValue) []metric.AddOption {
	return []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
}

func recordOpts(kv ...attribute.KeyValue) []metric.RecordOption {
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
}

// attemptDone records one attempt.
func (x *metrics) attemptDone(a *attempt) {
	ctx := context.Background()
	t := extOf(a.slot.Ep).tel
	e := &t.m
	e.kinds[a.kind].Add(1)
	if a.kind == kindSuccess && a.status == 200 {
		x.duration.Record(ctx, a.latency.Seconds(), e.ok...)
	} else {
		attrs := slices.Clip(t.attrs)
		if a.status != 0 {
			attrs = append(attrs, keyStatus.Int(a.status))
		}
		if a.kind != kindSuccess {
			attrs = append(attrs, keyErrorType.String(errorType(a)))
		}
		x.duration.Record(ctx, a.latency.Seconds(), recordOpts(attrs...)...)
	}
	switch {
	case a.hedge:
		x.hedges.Add(ctx, 1)
	case a.n > 1:
		x.retries.Add(ctx, 1, addOpts(keyRetryReason.String(a.reason))...)
	}
	if a.fx.Ejected > 0 {
		x.ejections.Add(ctx, 1, e.only...)
	}
	if errors.Is(a.stop, ErrRetryBudgetExhausted) {
		x.budget.Add(ctx, 1)
	}
}

// hedgeRefused records a hedge the retry budget refused: no attempt
// carries it, so attemptDone cannot.
func (x *metrics) hedgeRefused() { x.budget.Add(context.Background(), 1) }

// waited records a wait for a slot that ended with err (nil: a slot).
func (x *metrics) waited(d time.Duration, err error) {
	var opts []metric.RecordOption
	switch {
	case err == nil:
	case errors.Is(err, ErrShed):
		opts = x.waitErrs["shed"]
	case errors.Is(err, ErrNoCapacity):
		opts = x.waitErrs["no_capacity"]
	case errors.Is(err, ErrClosed):
		opts = x.waitErrs["closed"]
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		opts = x.waitErrs["cancelled"]
	default:
		opts = x.waitErrs["_OTHER"]
	}
	x.wait.Record(context.Background(), d.Seconds(), opts...)
}

func (x *metrics) close() {
	_ = x.reg.Unregister() // fails only if already unregistered
}
