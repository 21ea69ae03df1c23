package amlpool

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
)

// Limiter is a gate shared beyond one process: redislimit's, for example,
// keeps each endpoint's slots in Redis so that many replicas together never
// exceed its cap. A Client consults it after taking one of its own slots, so a
// process never has more calls waiting at the Limiter than an endpoint's cap.
//
// The candidates follow the Client's live endpoints: after SetEndpoints, an
// added endpoint appears among them, a removed one no longer does, and
// LimitedEndpoint.Limit carries an endpoint's new cap. Leases on a removed
// endpoint are released as usual when their calls end, and a call waiting
// at the Limiter when SetEndpoints changes the set gives up its wait (its
// ctx ends) and chooses again among the new endpoints.
//
// A Limiter may also share endpoints' health across replicas: see
// HealthSharer.
//
// Implementations must be safe for concurrent use.
type Limiter interface {
	// Acquire blocks until it holds a slot on one of candidates, preferring
	// earlier ones, or until ctx ends (then it returns ctx's error, or another
	// error when the Limiter cannot decide; the call then fails with it).
	Acquire(ctx context.Context, candidates []LimitedEndpoint) (Lease, error)
}

// TryAcquirer is implemented by a Limiter that can take a slot without
// waiting. A Client with WithMaxWait(0) (fail fast) calls TryAcquire instead
// of Acquire, and fails with ErrNoCapacity when it returns no lease; a
// Limiter without it makes such a Client wait at Acquire as long as ctx allows.
type TryAcquirer interface {
	// TryAcquire takes a slot on the first of candidates with room now, as
	// Acquire would, or returns nil, nil at once when all are full.
	TryAcquire(ctx context.Context, candidates []LimitedEndpoint) (Lease, error)
}

// LimitedEndpoint names an endpoint to a Limiter.
type LimitedEndpoint struct {
	// ID is stable across processes that configure the same URL: the first
	// 16 hex digits of the URL's SHA-256. It never contains the key.
	ID    string
	Name  string // the endpoint's Name, for logs
	Limit int    // its configured MaxConcurrentCalls
}

// Lease is a slot held at a Limiter.
type Lease interface {
	// Index is the position, in the candidates given to Acquire, of the
	// endpoint whose slot this is.
	Index() int
	// Release gives the slot back. It is called exactly once, must not block
	// for long, and must be safe to call from any goroutine.
	Release()
}

func endpointID(url string) string {
	sum := sha256.Sum256([]byte(url))
	return hex.EncodeToString(sum[:8])
}
