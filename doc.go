// Package amlpool makes several Azure Machine Learning Classic scoring
// endpoints look like one, and gets from them all the throughput they can
// give without ever being throttled.
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
//
// [Client.Do] takes and returns raw JSON instead.
//
// # Load balancing
//
// A call goes to a free slot drawn at random from all free slots, so each
// endpoint's share follows its free capacity: equal caps get equal shares, a
// 200-slot endpoint gets ten times a 20-slot one's. Other strategies plug in
// with [WithBalancer].
//
// # When every slot is busy
//
// The call waits, first come first served, until a slot frees on any endpoint
// it may use, its ctx ends, or the max wait ([WithMaxWait]) passes, when it
// fails with [ErrNoCapacity]. WithMaxWait(0) fails at once instead of waiting.
// Waiting costs no CPU: a release hands its slot to the oldest waiting call.
//
// # Failures
//
// A 503 RequestThrottled reply means the endpoint was full (another client
// shares it, or its cap is set lower than configured): the call goes, at
// once, to another endpoint with a free slot. Other errors are returned as
// they are: an [*APIError] for a non-2xx reply, with the service's error code
// and details; a transport error otherwise. errors.Is(err, [ErrThrottled])
// tells a throttle. Keys never appear in errors, logs or [Stats].
//
// # Concurrency
//
// A Client is safe for use by any number of goroutines; create one per set of
// endpoints and share it. [Client.Close] releases waiting calls and stops the
// Client's background work.
//
// For tests, package amltest serves fake endpoints that behave like the real
// service, caps and throttles included.
package amlpool
