package redislimit

import (
	"context"
	"slices"
	"time"

	"github.com/amlpool/amlpool"
)

// Stats is a snapshot of a Limiter's state and counters. It never contains
// URLs or keys: endpoints appear by the ID and Name the Client gave them.
type Stats struct {
	Held      int   // leases this process holds now, in Redis or in fallback
	Waiting   int   // Acquire calls waiting for a slot
	Acquired  int64 // leases granted since New, handoffs included
	Handoffs  int64 // leases handed from one call of this process to the next without a round trip
	Grants    int64 // leases other processes granted this one as they released them
	Renewals  int64 // lease renewals written to Redis
	Lost      int64 // leases Redis no longer had while their call still ran (expired, or lost with a restart or failover)
	Fallback  bool  // the failure mode applies now: Redis failed and no probe has succeeded since
	Fallbacks int64 // switches to the failure mode since New
	Errors    int64 // Redis operations that failed or timed out
	// RoundTrips counts Redis operations (scripts, commands, pipelines)
	// since New: per call, the cost of sharing.
	RoundTrips int64
	// Mismatches counts the times replicas were found to disagree on an
	// endpoint's limit; see EndpointStats.Limits.
	Mismatches int64
	Replicas   int           // processes sharing the pool, as last seen in Redis; 0 until Redis has answered
	RoundTrip  time.Duration // moving average of successful Redis round trips
	Endpoints  []EndpointStats
}

// EndpointStats describes one endpoint the Limiter has been asked about.
type EndpointStats struct {
	ID    string
	Name  string
	Limit int // the cap this process passes to Redis
	Held  int // leases this process holds on it
	Share int // what this process may hold in fallback
	// Limits lists the distinct caps the fleet announced for this endpoint
	// when they disagree; nil when every replica agrees.
	Limits []int
}

// Stats returns a snapshot of the Limiter. It never blocks on Redis.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	s := Stats{
		Held:     l.held,
		Waiting:  len(l.waiters),
		Fallback: l.fallback,
		Replicas: l.replicas,
	}
	for _, ep := range l.eps {
		s.Endpoints = append(s.Endpoints, EndpointStats{
			ID: ep.id, Name: ep.name, Limit: int(ep.limit.Load()), Held: len(ep.held),
			Share: l.shareLocked(ep), Limits: slices.Clone(ep.seen),
		})
	}
	l.mu.Unlock()
	slices.SortFunc(s.Endpoints, func(a, b EndpointStats) int { return cmpString(a.Name+a.ID, b.Name+b.ID) })
	s.Acquired = l.acquired.Load()
	s.Handoffs = l.handoffs.Load()
	s.Grants = l.grants.Load()
	s.Renewals = l.renewals.Load()
	s.Lost = l.lost.Load()
	s.Fallbacks = l.fallbacks.Load()
	s.Errors = l.failures.Load()
	s.RoundTrips = l.roundTrips.Load()
	s.Mismatches = l.mismatches.Load()
	s.RoundTrip = time.Duration(l.rtt.Load())
	return s
}

// Close stops the Limiter: waiting Acquire calls, those still taking a lease
// (a round trip to Redis under way, or a local lease in fallback), and later
// ones return amlpool.ErrClosed, the background goroutines end, and then, in
// one script, every lease of this process is deleted from Redis (calls still
// running are no longer counted fleet-wide; a lease Redis took from an
// acquire whose reply was lost, or another process granted this one
// unheard of, goes too, also on an endpoint that no Client uses any more)
// and the process leaves the replica count. A round trip
// that Close cut short may have been sent already, and Redis may run it
// after the goodbye: for a TTL plus WithTimeout Redis keeps a record of the
// goodbye (one small key, the process's done set), and such a script finds
// it and changes nothing. Close waits for Redis at most the Limiter's
// timeout, or the client's own timeouts when it ignores contexts. The first
// Close returns nil; later ones return amlpool.ErrClosed.
func (l *Limiter) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return amlpool.ErrClosed
	}
	l.closed = true
	l.stop()
	l.mu.Unlock()
	close(l.done)
	if l.pubsub != nil {
		_ = l.pubsub.Close()
	}
	l.wg.Wait()

	l.mu.Lock()
	keys := make([]string, 0, 2*len(l.eps)+4)
	var wants []string
	args := []any{l.proc, l.doneTTL().Milliseconds()}
	sets := make(map[string]bool, len(l.eps))
	for _, ep := range l.eps {
		for _, ls := range ep.held {
			ls.released = true
		}
		clear(ep.held)
		keys = append(keys, ep.key)
		wants = append(wants, ep.want)
		args = append(args, limitMember(ep.id, int(ep.limit.Load()), l.proc))
		sets[ep.key] = true
	}
	// The leases whose deletion is still queued go with the goodbye too,
	// those on endpoints this process has forgotten since included (a
	// Client's SetEndpoints removed them, or no call asked for them): their
	// lease sets join the others', or those leases would block their slots
	// for the rest of a TTL.
	for _, r := range l.pending {
		if !sets[r.key] {
			sets[r.key] = true
			keys = append(keys, r.key)
			wants = append(wants, l.keys.wantOf(r.key))
		}
	}
	l.pending = nil
	l.held = 0
	keys = append(append(keys, wants...), l.keys.grants, l.keys.limits, l.keys.members, l.keys.done(l.proc))
	l.mu.Unlock()

	// Nothing else runs now: say goodbye to Redis on this goroutine. Every
	// lease of this process goes, also one Redis holds without our knowing
	// (an acquire or a tick that ran there with its reply lost), so its
	// slots come back now, not a TTL later. A round trip given up on above
	// may still reach Redis after this, on another connection: the goodbye
	// stays in Redis, and stops it.
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.timeout)
	defer cancel()
	_ = goodbyeScript.Run(ctx, l.rdb, keys, args...).Err()
	return nil
}
