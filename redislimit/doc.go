// Package redislimit shares each endpoint's MaxConcurrentCalls across the
// replicas of a service through Redis.
//
// Each amlpool.Client enforces each endpoint's cap on its own, so ten
// replicas can send ten times the cap and be throttled. A Limiter keeps the
// slots in Redis instead, where every replica sees them:
//
//	rdb := redis.NewClient(&redis.Options{
//		Addr:                  addr,
//		ContextTimeoutEnabled: true, // let deadlines reach the socket
//		DialTimeout:           250 * time.Millisecond,
//		ReadTimeout:           100 * time.Millisecond,
//		WriteTimeout:          100 * time.Millisecond,
//		MaxRetries:            1,
//	})
//	lim, err := redislimit.New(rdb, redislimit.WithPool("scoring"))
//	if err != nil {
//		return err
//	}
//	defer lim.Close() // after the Client
//	c, err := amlpool.New(endpoints, amlpool.WithLimiter(lim))
//
// Every replica that uses the same Redis and pool name shares the caps of
// the endpoints it has in common with the others; endpoints are matched by
// URL (a hash of it: keys and URLs never reach Redis). New accepts any
// redis.UniversalClient: single node, Sentinel, Cluster or Ring. All of a
// pool's keys share the hash tag {pool}, so each script runs in one Cluster
// slot.
//
// # How a slot is held
//
// A slot is a lease: a member of one sorted set per endpoint, scored by its
// expiry on the Redis server's clock (replicas' clocks never matter). A call
// first takes one of its own Client's slots, then asks the Limiter, which
// runs one Lua script, one round trip: drop expired leases, then add a lease
// on the first candidate endpoint with room. A lease lives WithTTL (10 s)
// unless renewed; once per renew interval (TTL ÷ 3) each process renews, in
// one round trip, every lease it holds, so a long call keeps its slot while
// a crashed replica's slots come back within the TTL. A lease that Redis no
// longer has while its call runs (it expired, or Redis restarted empty or
// failed over before copying it) is counted in Stats.Lost and registered
// again.
//
// # How slots change hands
//
// A lease freed while calls of the same process wait for its endpoint goes
// straight to the oldest of them, without a round trip (handoff): the lease
// stays in Redis under the same id. A process whose calls find every
// candidate full says so in Redis; a release anywhere in the fleet then
// grants the slot, in its own round trip, to the waiting process that holds
// the fewest of the endpoint's leases, and tells that process alone on a
// pub/sub channel (a grant missed there is taken at the next tick). Every
// WithHandoff (500 ms) a process that keeps handing a lease on asks Redis in
// the background whether a waiting process holds at least two fewer; if so,
// its next release there goes to it. So replicas with calls waiting keep
// equal shares, and a slot idles for a round trip and a notification only
// when it changes process. At the seed workload (5 endpoints × 20 slots,
// 50 ms, 300 callers) over ten OS processes the endpoints saw 0.98 of
// their slots busy, for 0.27 Redis round trips per call.
//
// # When the fleet is full
//
// Calls wait in this process, first come first served, for a handoff, a
// grant, or, as a backstop, the next try of one goroutine that retries for
// the oldest after a jittered backoff from 5 to 50 ms (WithBackoff). A
// Client that fails fast (amlpool.WithMaxWait(0)) does not wait: it makes
// one try (Limiter.TryAcquire) and gets amlpool.ErrNoCapacity when the fleet
// is full.
//
// # When Redis fails
//
// Every Redis round trip is bounded by WithTimeout (100 ms), even with a
// client that ignores contexts. After three failed round trips in a row
// spread over at least two timeouts, each within two timeouts and the
// longest backoff (WithBackoff) of the one before (a failure says nothing of
// Redis long after it), the Limiter switches to its failure mode
// (WithFailureMode) and logs it:
//
//   - FailStatic (default): each process may hold ⌈cap ÷ replicas⌉ of each
//     endpoint, replicas as last counted in Redis and at least
//     WithExpectedReplicas. The fleet stays within cap + replicas − 1 once the
//     calls admitted before the outage have ended, when the replicas lose Redis
//     together (Redis down or failing over). As Redis comes back each replica
//     returns at its own probe, and the others still hold their shares outside
//     Redis: so a replica keeps to its share for two probe intervals after its
//     return (for a fleet that shares one WithProbeInterval, long enough for
//     every other replica's probe). A replica that had no calls through the
//     outage does not fall back, but keeps to its share the same way once it
//     reaches Redis after a failed round trip of its own (its tick) or finds
//     that Redis lost its heartbeat (restarted or failed over); any failed
//     round trip does that, at the cost of the share for two probe intervals;
//     its acquires already under way then, sent with the whole cap, and the
//     grants it asked for before give back a lease that would take it past
//     its share (a grant in fallback too; as a release does, it goes to a
//     process that waits for the endpoint), and a process that holds more than
//     its share then, or in fallback, hands no lease on to its waiting calls:
//     the leases past the share end with the calls admitted before the
//     outage. Redis's count misses the replicas not back yet, so the count
//     before the outage stands until Redis counts again after those two
//     intervals, also for a fallback that begins meanwhile (Redis gone
//     again). Not
//     bounded: a replica cut off alone, while the others still reach Redis,
//     uses its share on top of their whole cap for as long as it is cut off;
//     and one that made no round trip while Redis, its data kept, was out of
//     reach (a pause or a partition between two of its ticks) cannot tell
//     that it was, and until the others' probes takes what Redis shows free,
//     their shares outside it not counted; one that starts while the others
//     are still in fallback is no part of the shares they counted, and
//     takes what Redis shows free on top of them; and an acquire that Redis
//     runs just after the tick that finds the heartbeat gone, and whose
//     reply comes in before that tick's, keeps the lease it took where Redis
//     showed room. A process that has never reached Redis does not know the
//     fleet's size: without WithExpectedReplicas it takes no share, and its
//     calls wait until Redis answers, since any share, taken by enough
//     replicas, could overload an endpoint.
//   - FailOpen: each process uses the whole cap, as without a Limiter.
//   - FailClosed: calls fail with an error wrapping amlpool.ErrNoCapacity.
//
// An acquire sent before the switch whose reply comes in after gives its
// lease back if the process holds its share (the whole cap under FailOpen)
// already.
//
// A probe every WithProbeInterval (1 s) tries Redis again. When one succeeds,
// every lease still held, those taken in fallback included, is written back
// to Redis, even past the cap, so that new calls wait until the real number
// in flight drains; then the Limiter logs the switch back and uses Redis
// again.
//
// # Health across replicas
//
// A Limiter is an amlpool.HealthSharer: a Client that uses it reports what
// its attempts show of each endpoint, and applies what other replicas'
// Clients report, within one notification and at the latest one tick. A
// Retry-After cool-down holds the endpoint back everywhere; failures in a
// row count fleet-wide towards ejection; an ejection (for failures or an
// endpoint fault) takes it out everywhere, and only the replica that ejected
// it first probes it, the others waiting three ticks longer for the
// outcome; a readmission puts it back everywhere. WithoutHealth turns this
// off.
//
// # Sentinel and Cluster
//
// New accepts any redis.UniversalClient. With Sentinel
// (redis.NewFailoverClient) a promotion looks, for its few seconds, like an
// outage: the failure mode carries the calls, and leases the old primary had
// not copied are written back at the next tick. On a Cluster
// (redis.NewClusterClient) all of a pool's keys share the hash tag {pool},
// so every script runs in one slot; a pool lives on one shard.
//
// # Replicas that disagree
//
// Each process announces the cap it uses for each endpoint. When replicas
// announce different caps for the same endpoint (a config rolled out to some
// replicas only), each logs a warning and Stats shows the caps seen
// (EndpointStats.Limits); each replica still passes its own cap to Redis.
//
// # Timeouts of the Redis client
//
// go-redis's defaults suit a cache, not a limiter on every call: a 5 s
// socket timeout, three retries, and ContextTimeoutEnabled false, with which
// a caller's deadline does not reach the socket. The Limiter bounds each
// round trip by WithTimeout whatever the client does, but with
// ContextTimeoutEnabled false a timed-out call is only abandoned: its
// goroutine and connection stay busy until the client's own ReadTimeout.
// Use the settings above.
//
// A client that retries (MaxRetries) may send a script again after Redis
// ran it, when the connection breaks before the reply: go-redis does so
// within the round trip's deadline, WithTimeout after the first send. A
// release or a health report leaves a mark in Redis for a TTL plus
// WithTimeout, so that a copy Redis runs within a TTL of its sending
// changes nothing; an acquire or a tick sent again finds what its first
// run wrote and does not count it twice, and an acquire that Redis runs
// within a TTL of its sending, after the lease it took has ended, or after
// the deletion of the lease it had yet to take (its reply given up on, a
// slow network delivering it late), takes none. That deletion waits until
// the client is done with the acquire: with ContextTimeoutEnabled false a
// write under way at the deadline goes on for the client's WriteTimeout,
// and so may send the acquire after the Limiter gave up on it.
// Likewise a round trip that Close gave up on may reach Redis after Close's
// last script: for a TTL plus WithTimeout it changes nothing either.
package redislimit
