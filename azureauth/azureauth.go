// Package azureauth gives amlpool endpoints Azure AD tokens: it turns an
// Azure SDK credential (azcore.TokenCredential, such as azidentity's
// DefaultAzureCredential or ManagedIdentityCredential) into an
// amlpool.Credential for online endpoints in aad_token mode.
//
// It is a module of its own, so that amlpool itself does not depend on the
// Azure SDK.
//
//	cred, err := azidentity.NewDefaultAzureCredential(nil)
//	…
//	ep := amlpool.Endpoint{
//		URL:                "https://my-endpoint.westeurope.inference.ml.azure.com/score",
//		Kind:               amlpool.Online,
//		MaxConcurrentCalls: 8,
//		Credential:         azureauth.New(cred),
//	}
//
// A Credential caches the token and hands it to every attempt without
// asking Azure AD; it fetches a new one shortly before the old one
// expires, once for any number of callers. While fetches fail, it tries
// again after a back-off, not on every call.
package azureauth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"golang.org/x/sync/singleflight"

	"github.com/amlpool/amlpool"
)

const (
	// Scope is the scope of Azure ML online endpoints' tokens (audience
	// https://ml.azure.com).
	Scope = "https://ml.azure.com/.default"
	// DefaultRefreshBefore is how long before a token expires a new one is
	// fetched, when Azure AD suggests no refresh time of its own
	// (AccessToken.RefreshOn): azcore's own figure.
	DefaultRefreshBefore = 5 * time.Minute
	// expiryMargin is how long before its expiry a token is no longer
	// handed out: time for the request it goes with to reach the endpoint,
	// and for clocks that differ.
	expiryMargin = 30 * time.Second
	// retryAfterFailure is how long a failed early refresh waits before
	// the next one, while the cached token is still good.
	retryAfterFailure = 30 * time.Second
	// fetchTimeout bounds one GetToken.
	fetchTimeout = time.Minute
	// failureBackoff is how long after a failed fetch the callers that
	// have no usable token get its error rather than a new fetch; it
	// doubles with each failure in a row, up to maxFailureBackoff.
	failureBackoff    = time.Second
	maxFailureBackoff = 30 * time.Second
)

// Credential is an amlpool.Credential (and amlpool.TokenInvalidator) whose
// tokens come from an Azure SDK credential. Build it with New. It is safe
// for concurrent use.
//
// Token returns the cached token while it is fresh. Once it is due for
// refresh (at AccessToken.RefreshOn, else DefaultRefreshBefore before it
// expires, or halfway through a shorter life), one caller fetches a new
// token while the others go on with the cached one; should that fetch
// fail, or give a token that is due already (a credential's own cache may
// hand back the one it has), the next try is 30 seconds after it ended.
// Once the token is about to expire (30 seconds before ExpiresOn), or was
// rejected (Invalidate), callers wait for one fetch, which they share;
// each stops waiting when its own ctx ends. A fetch runs for at most a
// minute and is not cut short by the ctx of the caller that started it, so
// that the callers waiting with it still get its token. A token without an
// expiry (a zero ExpiresOn), or one that has expired or expires within 30
// seconds, is an error, which says which.
//
// A failed fetch is not followed by another at once, on every call,
// while the identity endpoint is failing: for a second after it, the
// callers that have no usable token get its error, at once and without a
// new fetch; the back-off doubles with each failure in a row, up to 30
// seconds, and ends with the first fetch that gives a token.
//
// A GetToken that panics panics, with the same value, every Token that
// waits for that fetch, in its own goroutine, where it can be recovered.
// An early refresh has no one waiting for it, as a rule (a Token joins it
// only when the cached token is about to expire, or was rejected, while
// it runs): its panic then panics no Token, as its error reaches none,
// rather than one that comes later and never asked for it; the cached
// token goes on, and the next early refresh is 30 seconds after it ended,
// as after a failure. A GetToken that keeps panicking thus panics the
// callers that wait for it once the cached token is about to expire.
//
// A GetToken that ends its goroutine without returning (runtime.Goexit,
// as a test's t.FailNow does in a fake credential) ends that goroutine, as
// Goexit must, and every Token that waits for that fetch gets an error, at
// once, that says so.
//
// Neither a panic nor a Goexit is a failure: it starts no back-off, and
// the next Token that needs a token fetches one. Only the next early
// refresh waits, after either, 30 seconds from the fetch's end.
type Credential struct {
	cred   azcore.TokenCredential
	opts   policy.TokenRequestOptions
	before time.Duration
	now    func() time.Time

	cur   atomic.Pointer[token] // nil until the first fetch, or after Invalidate
	fetch singleflight.Group

	mu          sync.Mutex // guards the fields below
	nextTry     time.Time  // no early refresh before then: one is in flight, or one ended without a token not yet due
	failed      error      // the last fetch's error, nil once one gave a token
	failures    int        // fetches failed in a row
	failedUntil time.Time  // no fetch for a caller without a usable token before then: it gets failed
}

// token is a fetched token and when to refresh it.
type token struct {
	azcore.AccessToken
	refreshAt time.Time
}

var (
	_ amlpool.Credential       = (*Credential)(nil)
	_ amlpool.TokenInvalidator = (*Credential)(nil)
)

// Option configures New.
type Option interface{ apply(*Credential) }

type scopesOption []string

func (o scopesOption) apply(c *Credential) { c.opts.Scopes = append([]string(nil), o...) }

// WithScopes asks for tokens of these scopes instead of Scope. New panics
// when it is given no scope, or a blank one: every fetch would fail.
func WithScopes(scopes ...string) Option { return scopesOption(scopes) }

type tenantOption string

func (o tenantOption) apply(c *Credential) { c.opts.TenantID = string(o) }

// WithTenantID asks for tokens of this Azure AD tenant instead of the
// credential's own.
func WithTenantID(id string) Option { return tenantOption(id) }

type refreshBeforeOption time.Duration

func (o refreshBeforeOption) apply(c *Credential) { c.before = time.Duration(o) }

// WithRefreshBefore fetches a new token this long before the cached one
// expires, when Azure AD suggests no time of its own. Default:
// DefaultRefreshBefore.
func WithRefreshBefore(d time.Duration) Option { return refreshBeforeOption(d) }

// New returns a Credential that takes tokens for Scope from cred. It
// fetches nothing until the first Token. It panics if cred is nil, or if
// WithScopes gave no scope or a blank one.
func New(cred azcore.TokenCredential, opts ...Option) *Credential {
	if cred == nil {
		panic("azureauth: New: nil TokenCredential")
	}
	c := &Credential{cred: cred, opts: policy.TokenRequestOptions{Scopes: []string{Scope}}, before: DefaultRefreshBefore, now: time.Now}
	for _, o := range opts {
		o.apply(c)
	}
	if len(c.opts.Scopes) == 0 {
		panic("azureauth: New: WithScopes gave no scope")
	}
	for _, s := range c.opts.Scopes {
		if strings.TrimSpace(s) == "" {
			panic(fmt.Sprintf("azureauth: New: WithScopes gave a blank scope in %q", c.opts.Scopes))
		}
	}
	if c.before <= 0 {
		c.before = DefaultRefreshBefore
	}
	return c
}

// String describes the Credential without its token.
func (c *Credential) String() string {
	return fmt.Sprintf("azureauth.Credential{Scopes:%v}", c.opts.Scopes)
}

// Token returns a token for the scope: the cached one while it is fresh,
// else a new one (see Credential). Its error wraps cred's.
func (c *Credential) Token(ctx context.Context) (string, error) {
	now := c.now()
	t := c.cur.Load()
	if t != nil && now.Before(t.refreshAt) {
		return t.Token, nil // fresh: the path of nearly every call
	}
	if t != nil && now.Before(t.ExpiresOn.Add(-expiryMargin)) {
		// Due for refresh, still good: one caller refreshes, no one waits.
		if c.tryEarly(now) {
			c.fetch.DoChan("token", c.get(ctx))
		}
		return t.Token, nil
	}
	if err := c.backingOff(now); err != nil {
		return "", err
	}
	ch := c.fetch.DoChan("token", c.get(ctx))
	select {
	case r := <-ch:
		if p, ok := r.Err.(*fetchPanic); ok {
			panic(p.v) // in this caller's goroutine, as in every other's waiting
		}
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(*token).Token, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// tryEarly reports whether an early refresh may start now: none is in
// flight, and none ended in the last 30 seconds without a token that is
// not yet due.
func (c *Credential) tryEarly(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Before(c.nextTry) {
		return false
	}
	c.nextTry = now.Add(retryAfterFailure) // until this fetch ends: no second one
	return true
}

// backingOff returns, while a failed fetch's back-off lasts, its error,
// saying so: the error of a Token that found no usable token then.
func (c *Credential) backingOff(now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed == nil || !now.Before(c.failedUntil) {
		return nil
	}
	return fmt.Errorf("%w (fetches failed in a row: %d; no new one for %v)", c.failed, c.failures, c.failedUntil.Sub(now).Round(time.Millisecond))
}

// fetchPanic is the error of a fetch whose GetToken panicked with v: the
// callers waiting for it panic with v (singleflight would panic in a
// goroutine of its own, which no one can recover).
type fetchPanic struct{ v any }

func (p *fetchPanic) Error() string {
	return fmt.Sprintf("azureauth: the credential's GetToken panicked: %v", p.v)
}

// errGoexit is the error of a fetch whose GetToken ended its goroutine
// without returning (runtime.Goexit).
var errGoexit = errors.New("azureauth: the credential's GetToken exited without returning (runtime.Goexit, as t.FailNow does when a fake credential calls it)")

// getToken is c.cred.GetToken, its panic made a *fetchPanic and its
// runtime.Goexit errGoexit. It runs GetToken on a goroutine of its own,
// which a Goexit ends as it must: one in singleflight's goroutine would
// end that one, and singleflight would then tell no waiting caller, each
// left waiting until its ctx ends.
func (c *Credential) getToken(ctx context.Context) (azcore.AccessToken, error) {
	type result struct {
		at  azcore.AccessToken
		err error
	}
	done := make(chan result, 1)
	go func() {
		r := result{err: errGoexit}  // unless GetToken returns or panics
		defer func() { done <- r }() // runs on a Goexit too
		defer func() {
			if v := recover(); v != nil {
				r.err = &fetchPanic{v}
			}
		}()
		at, err := c.cred.GetToken(ctx, c.opts)
		r = result{at, err}
	}()
	r := <-done
	return r.at, r.err
}

// get returns the fetch that singleflight runs, on a goroutine of its own:
// one GetToken, under ctx's values but not its end, for at most a minute.
func (c *Credential) get(ctx context.Context) func() (any, error) {
	return func() (any, error) {
		// A caller that found no fresh token may join only after the fetch
		// that made one ended: the token is here, fetch none. Nor after
		// one that failed: its back-off holds.
		if t := c.cur.Load(); t != nil && c.now().Before(t.refreshAt) {
			return t, nil
		}
		if err := c.backingOff(c.now()); err != nil {
			return nil, err
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		at, err := c.getToken(fctx)
		if _, ok := err.(*fetchPanic); ok || err == errGoexit {
			// No failure, no back-off: what follows would be a guess.
			// But no early refresh for 30 seconds after this fetch's end,
			// as after a failure: tryEarly counted them from its start,
			// and a GetToken that ran long before it panicked would be
			// tried again soon after. (Only an early refresh heeds
			// nextTry, and the next fetch that gives a token resets it.)
			// A panic goes to the callers waiting for this fetch, if any,
			// and to no one else (see Credential).
			c.mu.Lock()
			c.nextTry = c.now().Add(retryAfterFailure)
			c.mu.Unlock()
			return nil, err
		}
		now := c.now()
		if err != nil {
			err = fmt.Errorf("azureauth: get a token for %v: %w", c.opts.Scopes, err)
		} else {
			err = checkToken(at, now)
		}
		var t *token
		if err == nil {
			t = &token{AccessToken: at, refreshAt: c.refreshAt(at, now)}
			c.cur.Store(t)
		}
		// No early refresh for 30 seconds after this fetch, unless it
		// stores a token not yet due: after a failure, and after a token
		// that came back due already (a credential's own cache, or a
		// RefreshOn in the past), an early refresh at once would do no
		// better. Counted from the fetch's end, which may be long after its
		// start, as the back-off of a failure is.
		c.mu.Lock()
		defer c.mu.Unlock()
		c.nextTry = now.Add(retryAfterFailure)
		if err != nil {
			c.failed, c.failures = err, c.failures+1
			c.failedUntil = now.Add(min(failureBackoff<<min(c.failures-1, 16), maxFailureBackoff))
			return nil, err
		}
		c.failed, c.failures = nil, 0
		if now.Before(t.refreshAt) {
			c.nextTry = time.Time{}
		}
		return t, nil
	}
}

// checkToken returns what is wrong with a token the credential gave at
// now, if anything.
func checkToken(at azcore.AccessToken, now time.Time) error {
	switch {
	case at.Token == "":
		return errors.New("azureauth: the credential gave an empty token")
	case at.ExpiresOn.IsZero():
		return errors.New("azureauth: the credential gave a token without an expiry (AccessToken.ExpiresOn is zero): it is needed to know when to fetch the next")
	case !at.ExpiresOn.After(now):
		return fmt.Errorf("azureauth: the credential gave a token that expired at %v, %v ago", at.ExpiresOn.UTC(), now.Sub(at.ExpiresOn).Round(time.Second))
	case !at.ExpiresOn.After(now.Add(expiryMargin)):
		return fmt.Errorf("azureauth: the credential gave a token that expires at %v, within %v", at.ExpiresOn.UTC(), expiryMargin)
	}
	return nil
}

// refreshAt is when to fetch a token after at, fetched at now: never
// after expiryMargin before it expires, when it stops being handed out
// (a RefreshOn that late, or the halfway point of a life under a minute,
// would hand it out past that).
func (c *Credential) refreshAt(at azcore.AccessToken, now time.Time) time.Time {
	last := at.ExpiresOn.Add(-expiryMargin)
	if !at.RefreshOn.IsZero() && at.RefreshOn.Before(at.ExpiresOn) {
		return earlier(at.RefreshOn, last)
	}
	life := at.ExpiresOn.Sub(now)
	if life < 2*c.before {
		return earlier(now.Add(life/2), last)
	}
	return earlier(at.ExpiresOn.Add(-c.before), last)
}

// earlier returns the earlier of a and b.
func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// Invalidate forgets tok when it is the cached token, so that the next
// Token fetches a new one: amlpool calls it when an endpoint answers 401.
// Azure SDK credentials keep tokens of their own, though, and may give the
// same token again until it expires.
func (c *Credential) Invalidate(tok string) {
	if t := c.cur.Load(); t != nil && t.Token == tok {
		c.cur.CompareAndSwap(t, nil)
	}
}
