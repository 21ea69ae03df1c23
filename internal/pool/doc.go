// Package pool is the home of amlpool's per-endpoint state and of the line
// of calls waiting for a slot.
//
// An Endpoint owns everything a Client knows of one endpoint: its slots and
// limit, its health (ejection, cool-down, probe), its latency estimate, its
// adaptive limit, its counters and its keys. Each part keeps its invariants
// behind the methods of this package; nothing outside it writes them.
//
// The live endpoints form a Set, an immutable snapshot that Update replaces
// atomically, as grpc-go swaps its picker: a pick loads the Set without a
// lock and never sees half a change. An endpoint that Update removes leaves
// the Set at once and drains outside it until its last call ends. A Set
// whose endpoints are in several tiers holds a Set per tier, and a call
// takes a slot on the lowest tier with one free (tier.go).
//
// Calls that find no free slot wait in one line per Pool, which serves the
// highest priority first, with aging, and may be bounded (priority.go).
//
// One attempt goes through the Pool in three steps:
//
//	slot, err := p.Acquire(ctx, &x, maxWait) // or TryAcquire, TryTake
//	... send the request on slot.Ep ...
//	p.Release(slot, &Report{...}, &fx)       // what the attempt came to
//
// Release gives the slot back exactly once and writes the Effects of the
// report (an ejection, a readmission, a new limit) into the caller's own
// fx, for it to log and count: no observer writes into shared state.
package pool
