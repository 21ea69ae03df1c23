// Package amlpool makes several Azure Machine Learning Classic scoring
// endpoints look like one, and gets from them all the throughput they can
// give without ever being throttled. Azure ML online endpoints, Classic's
// successor, are pooled the same way (see Online endpoints).
//
// # Capacity
//
// Each endpoint serves at most MaxConcurrentCalls (MCC) calls at once — 20 by
// default, 200 at most — and answers 503 RequestThrottled past that. One
// endpoint therefore delivers MCC × 1000 / latency_ms calls per second (20
// slots at 50 ms: 400 calls/s), and the service's advice for more is to add
// endpoints and spread calls at random across them. A Client does that: it
// gives every endpoint a slot gate sized to its MCC, and a pool of E endpoints
// delivers the sum of their capacities.
//
// # Quick start
//
//	c, err := amlpool.New([]amlpool.Endpoint{
//		{Name: "east", URL: eastURL, APIKey: eastKey, MaxConcurrentCalls: 20},
//		{Name: "west", URL: westURL, APIKey: westKey, MaxConcurrentCalls: 20},
//	})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	resp, err := c.Score(ctx, &amlpool.Request{Inputs: map[string]*amlpool.Table{
//		"input1": {ColumnNames: []string{"age"}, Values: [][]any{{"39"}}},
//	}})
//	if err != nil {
//		return err
//	}
//	fmt.Println(resp.Results["output1"].Value.Values)
//	return nil
//
// [Client.Do] takes and returns raw JSON instead.
//
// # Load balancing
//
// By default ([Random]) a call goes to a free slot drawn at random from all
// free slots, so each endpoint's share follows its free capacity: equal caps
// get equal shares, a 200-slot endpoint gets ten times a 20-slot one's. That
// is the service's own advice, but it sends a slow endpoint as many calls as
// a fast one. [WithBalancer] chooses another [Balancer]:
//
//   - [LeastLoaded]: power of two choices on in-flight ÷ limit (Envoy's
//     least_request). Evens out load over endpoints of different caps or
//     speeds.
//   - [LatencyAware]: power of two choices on each endpoint's Peak-EWMA
//     latency × (in-flight + 1) (Finagle, Linkerd). Steers calls away from a
//     slow endpoint, and probes it again as its estimate decays, so it wins
//     back its share once it has recovered. In simulation, with one endpoint
//     of five ten times slower, it keeps p99 at the healthy endpoints' p99
//     where Random and LeastLoaded sit at the slow one's.
//
// Every balancer only considers endpoints with a free slot that the call may
// use (not ejected, not cooling down, not already tried when another is
// left), and a pick costs no allocation.
//
// Endpoints may be given tiers ([Endpoint].Tier): a call takes a slot on the
// lowest tier with a free slot it may use, so a higher tier takes only the
// overflow, and the share of a lower tier's ejected or cooling endpoints. The
// balancer chooses within a tier.
//
// [WithAdaptiveLimit] lets each endpoint's limit sink below its cap when it
// throttles (another client shares it) or answers a 429 for its rate limit,
// and grow back on successes, so that
// replicas sharing endpoints stop throttling each other without
// coordination. [WithHedging] and [WithHedgingQuantile] send a second copy of
// a call that has had no reply for a while to another endpoint with a free
// slot, cutting the tail latency a stalling endpoint causes; the first
// success wins and the other copy is cancelled. Hedges never exceed caps and
// spend the retry budget (a copy that is not sent in the end spends none).
//
// # When every slot is busy
//
// The call waits until a slot frees on any endpoint it may use, its ctx
// ends, or the max wait ([WithMaxWait]) passes, when it fails with
// [ErrNoCapacity]. WithMaxWait(0) fails at once instead of waiting. With a
// [Limiter] the max wait covers the wait there too, and WithMaxWait(0) makes
// one try at it when it implements [TryAcquirer] (redislimit's does).
// Waiting costs no CPU: a release hands its slot to the first waiting call.
//
// The first is the one of highest [Priority] ([WithPriority]), and among
// equals the one that has waited longest; a waiting call ranks one priority
// higher for each second it has waited ([WithPriorityAging]), so none waits
// forever behind a stream of higher ones. Run batch work under
// WithPriority(ctx, PriorityLow) and calls a person waits for under
// PriorityHigh, and the batch uses every slot they leave. [WithMaxWaiting]
// bounds the line: past it, the call of lowest priority fails at once with
// [ErrShed].
//
// # Retries
//
// Each failed attempt gets a [Verdict] from [Classify], the service's error
// table, or from a classifier of your own ([WithClassifier]):
//
//   - Full (503 RequestThrottled, TooManyConcurrentRequests): the endpoint was
//     at its cap, not broken. The call goes at once to another endpoint with a
//     free slot, and backs off only once every endpoint has answered it so.
//   - Retry (other 503s, 408, 429, 500, 502, 504, refused or dropped
//     connections, the attempt timeout): the call backs off ([Backoff]: 50 ms,
//     doubling, at most 1 s, ±50 %), then tries an endpoint it has not tried.
//   - Endpoint fault (401, 403, 404, a TLS certificate not trusted, an
//     https:// URL or proxy that does not speak TLS): the endpoint cannot
//     serve anyone — its key was regenerated or is wrong, access was
//     revoked, it was deleted, its certificate, its URL or the proxy on
//     the way is bad.
//     It leaves rotation at once, and the call goes at once to an endpoint
//     it has not tried; only when every endpoint answers so does the call
//     return the error. After a 401, an endpoint with a second key
//     ([Endpoint].SecondaryKey) is first tried again with the other key.
//   - Give up (400, 413, 501 and other 4xx, a done ctx): the request is at
//     fault, and the error is returned.
//
// A call makes at most 4 attempts ([WithMaxAttempts], [WithoutRetries]),
// not counting those that met a 401 for a key SetEndpoints replaced while
// they were in flight, and never starts a wait that would pass its ctx
// deadline. Retries may add at most 20 % to the calls made over 10 s, plus
// 10 a second ([WithRetryBudget]): past that, a failed call returns at once
// with an error matching [ErrRetryBudgetExhausted] rather than pile load on
// a struggling service.
// A retry-after-ms, x-ms-retry-after-ms or Retry-After hint (the first of
// them above zero, in that order, as azcore reads them) holds its endpoint
// back for that long (at most 30 s, [WithMaxRetryAfter]) while calls go to
// the others; a 429 for the endpoint's rate limit without one holds it
// back for the backoff's first wait (50 ms). Each
// attempt is bounded by [WithAttemptTimeout] (100 s). A retry sends the
// request again, after an attempt that may have run on the service all the
// same (it timed out, lost its connection, got a 5xx): scoring is safe to
// repeat; for a deployment with side effects, see [WithMaxAttempts].
//
// # Endpoint health
//
// An endpoint that fails 5 attempts in a row with retryable errors (not
// throttles, not a 429 for its rate limit, not cancelled calls), or once
// with an endpoint fault, is ejected
// for 30 s, then one call probes it: success readmits it, failure ejects it
// again for twice as long, up to 5 min ([WithEjection], [WithoutEjection]).
// Waiting calls do not count an ejected endpoint's slots. When half or more
// of the endpoints are ejected for failures, ejection is ignored and all of
// them take calls; an endpoint out for a fault stays out. [Stats] shows which
// endpoints are out; ejections and readmissions are logged at Warn
// ([WithLogger]).
//
// # Changing endpoints while running
//
// [Client.SetEndpoints] replaces the endpoints while calls run: add one for
// more capacity, retire one, change a cap, rotate a key. Endpoints are
// matched by Name; one that stays keeps its calls in flight, health, latency
// estimate and counters, and takes its new cap and keys from its next
// attempt. A removed endpoint takes no new attempt once SetEndpoints returns;
// its calls in flight finish and return their replies. An added endpoint
// serves calls at once, those already waiting included (in line, or before
// a retry until the other endpoints are back from a cool-down or an
// ejection); one that renames an
// endpoint (same URL, another Name) waits until the old name's calls in
// flight have ended, so that the URL never has two sets of slots. A bad set
// is refused whole and the old one goes on.
//
// To rotate a key without a failed call, give each endpoint both of the
// service's keys (APIKey and SecondaryKey): regenerate one in the portal,
// then pass the new pair to SetEndpoints; calls in between use the key that
// still works.
//
// # Errors
//
// An [*APIError] is a non-2xx reply, with the service's error code and
// details; errors.Is(err, [ErrThrottled]) tells a throttle. A call that
// made several attempts, or stopped retrying early, returns a [*CallError]
// naming the endpoints it tried; errors.Is and errors.As see through it to the
// last attempt's error and to why the call stopped. The other errors of a
// call are transport errors, ctx's error, and:
//
//   - [ErrNoCapacity]: no endpoint had a free slot within the call's max
//     wait; [ErrShed], which matches ErrNoCapacity too, when a full line of
//     waiting calls turned the call away;
//   - [ErrClosed]: the Client was closed before or while the call waited;
//   - [ErrRetryBudgetExhausted]: the retry budget refused a retry (a
//     [*CallError]'s Stop);
//   - [ErrResponseTooLarge]: a reply longer than [WithMaxResponseBytes]
//     allows;
//   - [ErrMalformedResponse]: a 2xx reply that is not what the service sends;
//   - [*CredentialError]: an endpoint's [Credential] gave no usable token,
//     so nothing was sent.
//
// [New] and [Client.SetEndpoints] return a [*ConfigError], which matches
// [ErrInvalidConfig], for an invalid endpoint, endpoint set or option. Batch
// scoring ([Client.ScoreRows], [Client.ScoreTable]) reports the rows it
// could not score in a [*ChunkError], which wraps the cause: the call's
// error, a [*RowError] for a row the source could not read, or
// [ErrRequestTooLarge] for a row too large for a request. Keys never appear
// in errors, logs or [Stats].
//
// A function of yours that panics while a call runs it (a [Credential], the
// RoundTripper of [WithHTTPClient], a propagator, a classifier, a
// [Limiter], its [Lease] or HealthLink, a [Balancer], the TracerProvider,
// an instrument of the MeterProvider's, the logger's handler) panics that
// call with the same value, in the goroutine that made the call (for a
// hedged copy, which runs in a goroutine of its own, once the other copy
// has ended): the panic is never swallowed. One that calls
// [runtime.Goexit] instead (t.FailNow in a test's RoundTripper, say) ends
// that goroutine the same way, hedged copy or not: the call does not
// return (in ScoreRows, whose calls run on workers of its own, the chunk
// fails and the batch goes on). The Client stays as it was: the call's slot and lease are given
// back and its spans end first. An attempt that panicked before its slot
// went back counts as no attempt, in [Stats] as in the metrics, and tells
// nothing of its endpoint's health.
//
// # Observability
//
// [WithMeterProvider] records OpenTelemetry metrics: per endpoint, request
// durations (http.client.request.duration, after the HTTP client semantic
// conventions), attempts by outcome, calls in flight, the limit in force,
// the tier and ejections; per Client, slot waits, calls waiting, calls
// shed, retries, hedges and retry-budget refusals. [WithTracerProvider] makes a span per call and a
// client span per attempt; [WithTracePropagation] sends an attempt's trace
// context to the service, which is not done otherwise. [WithLogger] gets a
// Debug line per attempt. With none of them, a call does no telemetry work.
// [Client.Stats] is the dependency-free snapshot of the same counters, each
// endpoint's counted from its [EndpointStats.Since].
//
// # Sharing caps across replicas
//
// A Client enforces each endpoint's cap within its own process. When several
// replicas of a service share endpoints, give each Client the same
// [Limiter] through [WithLimiter]: package redislimit provides one that
// keeps the slots in Redis, so that the whole fleet stays within each cap.
// A Limiter that is also a [HealthSharer], as redislimit's is, carries the
// endpoints' health between the replicas too: a cool-down, an ejection or a
// readmission that one replica sees holds for all of them.
//
// # Online endpoints
//
// An [Endpoint] of [Kind] [Online] is an Azure ML managed (or Kubernetes)
// online endpoint, POST https://{endpoint}.{region}.inference.ml.azure.com/score.
// Its cap, required, is 2 × max_concurrent_requests_per_instance ×
// instance_count (1 to 10,000), past which it answers 429 Too many pending
// requests, which [Classify] takes as full; 429 Rate-limited, 408, 500, 502,
// 503 and 504 are retried; a 424 carries the model's own status
// ([APIError].ModelStatusCode): a 4xx other than 408 and 429 is the input's
// fault and is not retried, a 5xx, 408 or 429 is. [Endpoint].Header adds headers for one endpoint, such
// as azureml-model-deployment to pin a deployment, and [Endpoint].Credential
// gives each attempt a token instead of a key (module
// github.com/amlpool/amlpool/azureauth makes one from an Azure SDK
// credential); a 401 to a token asks the [Credential] once more. The bodies
// are the deployment's: send them with [Client.Do]; [Client.ScoreRows] and
// [Client.ScoreTable] send the MLflow input_data form. All endpoints of one
// Client are of one Kind.
//
// # Scoring many rows
//
// [Client.ScoreRows] scores every row of a [RowSource] through all the
// pool's slots at once, in chunks, and hands the results to a sink in input
// order, with flat memory; [Client.ScoreTable] does the same for a table in
// memory. Package rows reads CSV and JSON Lines files as a RowSource. Every
// input row reaches the sink exactly once: a row the source cannot read
// fails alone, and a chunk the service blames (HTTP 400; an online
// endpoint's 424 for the model's 4xx) is split until each bad row stands
// alone, so that the others are scored (see
// [BatchOptions.NoSplit]).
//
// # Concurrency
//
// A Client is safe for use by any number of goroutines; create one per set of
// endpoints and share it. [Client.Close] releases waiting calls and stops the
// Client's background work.
//
// For tests, package amltest serves fake endpoints that behave like the real
// service, caps and throttles included, Classic or online.
package amlpool
