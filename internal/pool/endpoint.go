package pool

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint is everything known of one endpoint while it is live or
// draining. Its identity (name and URL) never changes; its cap and keys may,
// through Update, and the rest is state that only this package writes. At
// most one endpoint of a URL holds slots at a time (Update, heldBack).
//
// Endpoint's Format prints its name whatever the verb, so no verb can
// reach its keys.
type Endpoint struct {
	name string
	url  string   // canonical URL: the endpoint's identity, with name
	u    *url.URL // url parsed, shared by every request and never mutated
	host string   // u.Host without an empty port, the requests' Host
	ext  any      // the caller's data for this endpoint (Spec.Ext), fixed
	// since is when New or the Update that made the endpoint ran, by the
	// Pool's clock: unique among the endpoints of its name (Pool.stamp).
	since time.Time

	max     atomic.Int32 // the configured cap
	tier    atomic.Int32 // the configured tier; the Set places the endpoint by it when built
	limit   atomic.Int32 // the cap in force: max, unless an adaptive limit lowers it
	removed atomic.Bool  // no longer in the Set: takes no new attempt
	health  health       // health.go: its state, read by every pick, shares this line

	// slots holds the slots held now (the low bits, heldMask) and, above
	// them, the attempts started (wrapping): a take adds one to both in one
	// CAS, and a release takes one from the first, so the attempts that
	// ended are the difference, with no counter of their own to update.
	// Between the two, goneBit marks the endpoint removed (Update), in the
	// word every take swaps: a take either comes before the mark, and its
	// slot counts in the held ones Update sees with it, or fails, and
	// holds no slot there even for a moment.
	//
	// It is the one word every call writes twice, alone on its cache line:
	// the fields every pick reads (limit, removed, health) then stay in
	// each core's cache while other cores take and release (at one
	// endpoint from two goroutines, about 10 % less CPU per acquire and
	// release, BenchmarkAcquireRelease).
	_     [64]byte
	slots atomic.Uint64
	_     [56]byte

	auth atomic.Pointer[Auth]
	// keys holds the index of the key in use (bit 0) and, in bits 1 and 2, a
	// mark for each key that got a 401 since it last worked.
	keys atomic.Uint32

	ended     ended        // attempts that ended: read from slots
	failures  atomic.Int64 // attempts that did not succeed, throttles included, cancelled ones not
	cancelled atomic.Int64 // attempts whose call's ctx ended first
	throttles atomic.Int64 // attempts answered as full
	faults    atomic.Int64 // attempts answered with an endpoint fault (bad key, no access, gone)

	// Guarded by Pool.smu: an endpoint renamed by Update (a new name for a
	// URL whose old endpoint still has calls in flight) starts held back,
	// with a limit of 0, and the old one, draining, names it its heir; the
	// old one's last release lets it in (Pool.emptied). One URL thus never
	// has two sets of slots.
	heldBack bool
	heir     *Endpoint

	// countersRead, when set, is called by Counters once it has read
	// Calls and InFlight, before it reads the rest (a test hook: an
	// attempt that ends there must count in one of the two).
	countersRead func()

	lat  peakEWMA // latency.go
	aimd aimd     // adaptive.go
}

// Spec describes an endpoint to New and Update.
type Spec struct {
	Name string
	URL  *url.URL // parsed and checked; its String is the endpoint's identity
	Max  int      // the cap, ≥ 1
	Tier int      // 0 first; higher tiers take only the overflow (tier.go)
	Auth *Auth
	Ext  any // kept by a new endpoint (Endpoint.Ext); ignored for a kept one
}

func newEndpoint(s *Spec, since time.Time) *Endpoint {
	e := &Endpoint{name: s.Name, url: s.URL.String(), u: s.URL, host: strings.TrimSuffix(s.URL.Host, ":"), ext: s.Ext, since: since}
	e.max.Store(int32(s.Max))
	e.limit.Store(int32(s.Max))
	e.tier.Store(int32(s.Tier))
	e.aimd.cur = float64(s.Max)
	e.auth.Store(s.Auth)
	return e
}

// Name returns the endpoint's name.
func (e *Endpoint) Name() string { return e.name }

// URL returns the endpoint's URL, shared: the caller must not modify it.
func (e *Endpoint) URL() *url.URL { return e.u }

// Host returns the Host of requests to the endpoint.
func (e *Endpoint) Host() string { return e.host }

// Since returns when New, or the Update that made the endpoint, ran: its
// counters count from then. No two endpoints of one name a Pool makes have
// the same Since.
func (e *Endpoint) Since() time.Time { return e.since }

// Ext returns the caller's data given in the endpoint's first Spec.
func (e *Endpoint) Ext() any { return e.ext }

// Max returns the configured cap.
func (e *Endpoint) Max() int { return int(e.max.Load()) }

// Tier returns the configured tier. A change by Update applies to picks
// from the Set that Update stores.
func (e *Endpoint) Tier() int { return int(e.tier.Load()) }

// Limit returns the cap in force.
func (e *Endpoint) Limit() int { return int(e.limit.Load()) }

// InFlight returns the slots held now.
func (e *Endpoint) InFlight() int { return int(e.held()) }

// Free returns how many more slots could be taken now.
func (e *Endpoint) Free() int { return max(int(e.limit.Load()-e.held()), 0) }

// Removed reports whether Update took the endpoint out of the Set.
func (e *Endpoint) Removed() bool { return e.removed.Load() }

// Counters is a snapshot of an endpoint's counters.
type Counters struct {
	Calls, Failures, Cancelled, Throttles, Faults int64
	// InFlight is the slots held as Calls was read, from the same word,
	// so that an attempt ending meanwhile counts in one of the two: read
	// apart, it could count in neither, and Calls + InFlight, what the
	// endpoint's attempts will have come to once those in flight end,
	// would fall short by one.
	InFlight int
}

// Counters returns the endpoint's counters, read one after another but
// for Calls and InFlight, read together.
func (e *Endpoint) Counters() Counters {
	calls, slots := e.ended.read(&e.slots)
	if e.countersRead != nil {
		e.countersRead()
	}
	return Counters{
		InFlight:  int(slots & heldMask),
		Calls:     calls,
		Failures:  e.failures.Load(),
		Cancelled: e.cancelled.Load(),
		Throttles: e.throttles.Load(),
		Faults:    e.faults.Load(),
	}
}

// Format prints the endpoint's name whatever the verb: never its keys.
func (e *Endpoint) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, "endpoint("+e.name+")")
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), e.name)
}

// take claims one slot if one is free under the limit in force and the
// endpoint is not removed, and returns the slots held with it.
func (e *Endpoint) take() (int32, bool) {
	for {
		v := e.slots.Load()
		// With goneBit, n is past any limit: one test refuses both.
		n := int32(v & (heldMask | goneBit))
		if n >= e.limit.Load() {
			return n, false
		}
		if e.slots.CompareAndSwap(v, v+oneTake) {
			return n + 1, true
		}
	}
}

// held returns the slots held now.
func (e *Endpoint) held() int32 { return int32(e.slots.Load() & heldMask) }

const (
	heldBits = 24                  // the slots held and goneBit; caps are at most 10,000
	heldMask = 1<<(heldBits-1) - 1 // the slots held
	goneBit  = 1 << (heldBits - 1) // removed by Update: no take succeeds
	oneTake  = 1<<heldBits | 1     // one slot more held, one attempt more started
	endedMod = 1 << (64 - heldBits)
)

// ended turns the attempts started and the slots held, packed in slots,
// into a count of the attempts that ended that does not wrap: the packed
// count wraps after 2⁴⁰ attempts, and a reader sees the wraps as long as
// it reads at least once in 2⁴⁰ attempts.
type ended struct {
	mu         sync.Mutex
	last, base uint64
}

// read loads slots, the packed word, and returns the count of attempts
// ended in it, and the word. The word is loaded under c's lock: readers
// at once (Stats from two goroutines) then widen their words in the order
// they read them, whereas one that read its word before another, and
// widened it after, would take its smaller count for a wrap.
func (c *ended) read(slots *atomic.Uint64) (int64, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := slots.Load()
	return c.widen(v), v
}

// widen returns the count of attempts ended in slots, the packed word,
// counting the wraps seen since the last word widened. c.mu is held.
func (c *ended) widen(slots uint64) int64 {
	n := (slots>>heldBits - slots&heldMask) % endedMod
	if n < c.last {
		c.base += endedMod
	}
	c.last = n
	return int64(c.base + n)
}

// count adds an attempt's result to the counters.
func (e *Endpoint) count(r Result) {
	switch r {
	case OK, Abandoned:
	case Cancelled:
		e.cancelled.Add(1) // the caller gave up: no fault of the endpoint's
	default:
		e.failures.Add(1)
		switch r {
		case Full:
			e.throttles.Add(1)
		case Fault:
			e.faults.Add(1)
		}
	}
}

// Auth is an endpoint's keys, or its token source, and the headers of a
// request that carries each key. Both are shared by every request to the
// endpoint and never written after NewAuth or NewTokenAuth: a request may
// use the headers as they are.
type Auth struct {
	keys    []string
	headers []http.Header
	cred    Credential // nil for keys
	secrets []string   // keys, then the headers' secret values (Secrets)
}

// Credential is a source of bearer tokens (the root package's Credential).
type Credential interface {
	Token(ctx context.Context) (string, error)
}

// NewAuth returns the Auth of keys (one or two), whose requests carry
// headers[i] for keys[i]. hidden are values of the headers that are
// secrets beside the keys (Secrets).
func NewAuth(keys []string, headers []http.Header, hidden ...string) *Auth {
	if len(keys) == 0 || len(keys) > 2 || len(keys) != len(headers) {
		panic("pool: NewAuth: want one or two keys, each with its headers")
	}
	secrets := keys
	if len(hidden) > 0 {
		secrets = append(slices.Clip(keys), hidden...)
	}
	return &Auth{keys: keys, headers: headers, secrets: secrets}
}

// NewTokenAuth returns the Auth of an endpoint whose tokens come from cred:
// its requests carry header plus, each, an Authorization of its own.
// hidden are values of header that are secrets (Secrets).
func NewTokenAuth(cred Credential, header http.Header, hidden ...string) *Auth {
	if cred == nil {
		panic("pool: NewTokenAuth: nil Credential")
	}
	return &Auth{headers: []http.Header{header}, cred: cred, secrets: hidden}
}

// Keys returns every key; none for a token source.
func (a *Auth) Keys() []string { return a.keys }

// Secrets returns what no reply or error may show, for scrubbing them:
// every key (none for a token source), then the secret values of the
// requests' headers that NewAuth or NewTokenAuth was given.
func (a *Auth) Secrets() []string { return a.secrets }

// Credential returns the token source, or nil for keys.
func (a *Auth) Credential() Credential { return a.cred }

// Header returns the headers of a request with key k. For a token source
// (k is 0) they lack the Authorization, which each request adds.
func (a *Auth) Header(k int) http.Header { return a.headers[k] }

// sameKeys reports whether a and b hold the same keys, in the same order,
// or the same token source.
func (a *Auth) sameKeys(b *Auth) bool {
	if a == b {
		return true
	}
	if len(a.keys) != len(b.keys) || !sameCred(a.cred, b.cred) {
		return false
	}
	for i := range a.keys {
		if a.keys[i] != b.keys[i] {
			return false
		}
	}
	return true
}

// sameCred reports whether a and b are the same token source. Values of
// a type that cannot be compared (a func, say) are never the same.
func sameCred(a, b Credential) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// Key returns the endpoint's keys and the index of the one an attempt
// should use now.
func (e *Endpoint) Key() (*Auth, int) {
	// Load the keys' state before the Auth: an Update stores the Auth,
	// then resets the state, so a new Auth is never paired with the old
	// state's second key unless that Auth has one.
	k := int(e.keys.Load() & 1)
	a := e.auth.Load()
	if k >= len(a.keys) {
		k = 0
	}
	return a, k
}

// Rekeyed reports whether Update has given e other keys, or another
// Credential, since an attempt took a from it (Key).
func (e *Endpoint) Rekeyed(a *Auth) bool { return !e.auth.Load().sameKeys(a) }

// Unauthorized records that key k of a answered 401 and reports whether
// the endpoint has a key worth trying at once instead: the other key, or
// a key Update gave it since. It reports false when every key has failed:
// the endpoint cannot serve calls until its keys change or one of them
// works again. Concurrent 401s for one key switch keys once.
func (e *Endpoint) Unauthorized(a *Auth, k int) bool {
	if e.Rekeyed(a) {
		return true
	}
	if len(a.keys) < 2 {
		return false
	}
	for {
		s := e.keys.Load()
		cur, failed := int(s&1), s>>1
		if cur != k {
			return true // another call already switched keys
		}
		other := 1 - k
		if failed&(1<<other) != 0 {
			// Both keys failed. Forget it, so that the endpoint's probe
			// tries them afresh after its ejection.
			e.keys.CompareAndSwap(s, uint32(cur))
			return false
		}
		if e.keys.CompareAndSwap(s, uint32(other)|(failed|1<<k)<<1) {
			return true
		}
	}
}

// Authorized records that key k of a was accepted: a reply other than
// 401 came back with it.
func (e *Endpoint) Authorized(a *Auth, k int) {
	for {
		s := e.keys.Load()
		if s&(2<<k) == 0 || !e.auth.Load().sameKeys(a) {
			return
		}
		if e.keys.CompareAndSwap(s, s&^(2<<k)) {
			return
		}
	}
}

// TokenRejected reports whether a 401 to a token of a is worth a fresh
// try at once: always, unless the attempt's token was already the fresh
// one its call asked for after a 401 (reasked). A 401 for a token of a
// Credential that Update has replaced since says nothing of the new one.
// The re-ask is the call's, not the endpoint's: tokens of one generation
// refused together, from calls in flight together, each get their fresh
// try, and one stale token of another call's proves nothing.
func (e *Endpoint) TokenRejected(a *Auth, reasked bool) bool {
	return e.Rekeyed(a) || !reasked
}
