package amlpool_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// authority issues tokens "tok-<generation>" and revokes them: what the
// service and Azure AD are to a Credential.
type authority struct {
	gen        atomic.Int64 // the newest generation issued
	minValid   atomic.Int64 // older generations are refused
	requests   atomic.Int64 // tokens presented to servers
	revokeEach int64        // revoke all but the newest every revokeEach presented tokens; 0: never
}

func (a *authority) issue() string { return "tok-" + strconv.FormatInt(a.gen.Add(1), 10) }

// accepts is a server's amltest.Config.AcceptToken.
func (a *authority) accepts(token string) bool {
	if a.revokeEach > 0 && a.requests.Add(1)%a.revokeEach == 0 {
		a.minValid.Store(a.gen.Load()) // every token in flight but the newest fails
	}
	g, err := strconv.ParseInt(strings.TrimPrefix(token, "tok-"), 10, 64)
	return err == nil && strings.HasPrefix(token, "tok-") && g >= a.minValid.Load() && g <= a.gen.Load()
}

// rotating is a caching Credential that takes a new token from its
// authority every `every` calls, and at once after Invalidate of the
// token it holds.
type rotating struct {
	auth  *authority
	every int

	mu          sync.Mutex // guards tok, n and invalidated
	tok         string
	n           int
	invalidated int
}

func (r *rotating) Token(context.Context) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tok == "" || r.n%r.every == 0 {
		r.tok = r.auth.issue()
	}
	r.n++
	return r.tok, nil
}

func (r *rotating) Invalidate(token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.invalidated++
	if token == r.tok {
		r.tok = r.auth.issue()
	}
}

// tokenEndpoints turns the servers' endpoints into ones whose tokens come
// from cred.
func tokenEndpoints(srvs []*amltest.Server, cred amlpool.Credential) []amlpool.Endpoint {
	eps := endpoints(srvs)
	for i := range eps {
		eps[i].APIKey, eps[i].SecondaryKey, eps[i].Credential = "", "", cred
	}
	return eps
}

// TestCredentialRotatingUnderLoad: a Credential whose token changes every
// few calls, on servers that revoke every token but the newest every 50
// requests (so calls in flight meet 401s), serves 1,600 calls from 16
// goroutines with none failed: each 401 asks the Credential once more and
// tries again at once.
func TestCredentialRotatingUnderLoad(t *testing.T) {
	auth := &authority{revokeEach: 50}
	cred := &rotating{auth: auth, every: 3}
	srvs := onlineServers(t, 2, 8, func(c *amltest.Config) {
		c.AcceptToken = auth.accepts
		c.LatencyFunc = func() time.Duration { return time.Duration(1+auth.requests.Load()%3) * time.Millisecond }
	})
	c := newClient(t, tokenEndpoints(srvs, cred))
	errs := hammerWith(t, c, onlineBody, 16, 100)
	require.Empty(t, errs)

	var unauthorized, scored int64
	for _, s := range srvs {
		st := s.Stats()
		unauthorized += st.Unauthorized
		scored += st.Scored
		assert.Greater(t, len(st.KeysSeen), 10, "tokens seen: they changed")
	}
	assert.Equal(t, int64(1600), scored)
	assert.Positive(t, unauthorized, "401s to revoked tokens")
	cred.mu.Lock()
	assert.Equal(t, int(unauthorized), cred.invalidated, "each 401 told the Credential")
	cred.mu.Unlock()
	for _, e := range c.Stats().Endpoints {
		assert.Zero(t, e.Ejections, "%s: a refused token, then a fresh one accepted, is no fault", e.Name)
	}
}

// TestCredentialErrorSendsNothing: when the Credential fails, the attempt
// fails without a request, the error reaches the Credential's own with
// errors.Is and errors.As, and the call stops after its attempts.
func TestCredentialErrorSendsNothing(t *testing.T) {
	errAAD := errors.New("AADSTS700016: application not found")
	var calls atomic.Int64
	cred := amlpool.CredentialFunc(func(context.Context) (string, error) {
		calls.Add(1)
		return "", errAAD
	})
	srvs := onlineServers(t, 2, 4)
	clk := newStepClock(2 * time.Second)
	c := newClient(t, tokenEndpoints(srvs, cred), amlpool.WithClock(clk), amlpool.WithEjection(100, time.Second))

	_, err := c.Do(t.Context(), onlineBody)

	require.ErrorIs(t, err, errAAD)
	var credErr *amlpool.CredentialError
	require.ErrorAs(t, err, &credErr)
	assert.Contains(t, []string{"o0", "o1"}, credErr.Endpoint)
	var callErr *amlpool.CallError
	require.ErrorAs(t, err, &callErr)
	assert.Equal(t, amlpool.DefaultMaxAttempts, callErr.Attempts)
	assert.Equal(t, int64(amlpool.DefaultMaxAttempts), calls.Load())
	assert.Len(t, clk.Waits(), amlpool.DefaultMaxAttempts-1, "backoff between attempts")
	assert.Equal(t, []int64{0, 0}, requests(srvs), "nothing sent")
	assert.Contains(t, err.Error(), "credential: AADSTS700016")
}

// TestCredentialBoundedByTheAttemptTimeout: a Token that hangs (a token
// service that never answers) ends with its attempt, at the attempt
// timeout, with an error that says so; the call then retries as after any
// attempt timeout.
func TestCredentialBoundedByTheAttemptTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		cred := amlpool.CredentialFunc(func(ctx context.Context) (string, error) {
			calls.Add(1)
			<-ctx.Done()
			return "", ctx.Err()
		})
		// Nothing is sent: no server needed.
		ep := amlpool.Endpoint{Name: "e", URL: "https://e.invalid/score", Credential: cred}
		c, err := amlpool.New([]amlpool.Endpoint{ep}, amlpool.WithAttemptTimeout(time.Second), amlpool.WithMaxAttempts(2))
		require.NoError(t, err)
		defer c.Close()

		start := time.Now()
		_, err = c.Do(context.Background(), []byte(body)) // without the bound: a deadlock, which fails the test
		var credErr *amlpool.CredentialError
		require.ErrorAs(t, err, &credErr)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Contains(t, err.Error(), "e: credential: timed out after 1s (WithAttemptTimeout) waiting for a token")
		assert.EqualValues(t, 2, calls.Load(), "one Token per attempt")
		assert.Less(t, time.Since(start), 3*time.Second, "two attempts of 1 s and a backoff") // the bubble's clock
	})
}

// TestCredentialBadToken: a token that is empty, could split headers or
// has white space around or in it (no token has any: "Bearer s3cr3t", a
// whole header value, would be sent as "Bearer Bearer s3cr3t" and meet a
// 401 that says nothing of why) is refused before sending, and never
// quoted.
func TestCredentialBadToken(t *testing.T) {
	for _, tok := range []string{"", "s3cr3t-tok\r\nX-Injected: 1", "s3cr3t-tok\x00", "s3cr3t-tok ", " s3cr3t-tok", "  ", "Bearer s3cr3t-tok", "s3cr3t tok"} {
		srvs := onlineServers(t, 1, 4)
		c := newClient(t, tokenEndpoints(srvs, amlpool.CredentialFunc(func(context.Context) (string, error) { return tok, nil })),
			amlpool.WithoutRetries())
		_, err := c.Do(t.Context(), onlineBody)
		var credErr *amlpool.CredentialError
		require.ErrorAs(t, err, &credErr, "%q", tok)
		assert.Zero(t, srvs[0].Stats().Requests)
		if tok != "" {
			assert.NotContains(t, err.Error(), "s3cr3t", "the token is not quoted")
		}
	}
	srvs := onlineServers(t, 1, 4)
	c := newClient(t, tokenEndpoints(srvs, amlpool.CredentialFunc(func(context.Context) (string, error) { return "Bearer s3cr3t-tok", nil })),
		amlpool.WithoutRetries())
	_, err := c.Do(t.Context(), onlineBody)
	require.ErrorContains(t, err, `credential: the token begins with "Bearer ": give the token alone; amlpool adds the scheme`)
}

// TestCredentialRejectedTwice: a Credential whose fresh token is refused
// too takes its endpoint out of rotation; the call goes elsewhere.
func TestCredentialRejectedTwice(t *testing.T) {
	srvs := onlineServers(t, 2, 4)
	bad := amlpool.CredentialFunc(func(context.Context) (string, error) { return "never-valid", nil })
	good := &rotating{auth: &authority{}, every: 1000}
	srvs[1].Close()
	srvs[1] = amltest.NewServer(amltest.Config{Name: "o1", Kind: amlpool.Online, MaxConcurrentCalls: 4, AcceptToken: good.auth.accepts})
	t.Cleanup(srvs[1].Close)
	eps := tokenEndpoints(srvs, bad)
	eps[1].Credential = good
	clk := newStepClock(2 * time.Second)
	c := newClient(t, eps, amlpool.WithClock(clk), amlpool.WithRand(firstFree))

	_, err := c.Do(t.Context(), onlineBody)
	require.NoError(t, err)
	assert.Equal(t, int64(2), srvs[0].Stats().Unauthorized, "the token, then one fresh token")
	assert.Equal(t, int64(1), srvs[1].Stats().Scored)
	assert.Empty(t, clk.Waits(), "no backoff: an endpoint fault fails over at once")
	st := c.Stats().Endpoints[0]
	assert.True(t, st.Ejected, "o0 is out of rotation")
	_, err = c.Do(t.Context(), onlineBody)
	require.NoError(t, err)
	assert.Equal(t, int64(2), srvs[0].Stats().Requests, "the next call skips o0")
}

// TestCredentialChangedBySetEndpoints: a new Credential ends an ejection
// for its refused tokens, as new keys do.
func TestCredentialChangedBySetEndpoints(t *testing.T) {
	auth := &authority{}
	srvs := onlineServers(t, 1, 4, func(c *amltest.Config) { c.AcceptToken = auth.accepts })
	bad := amlpool.CredentialFunc(func(context.Context) (string, error) { return "never-valid", nil })
	clk := newStepClock(2 * time.Second)
	c := newClient(t, tokenEndpoints(srvs, bad), amlpool.WithClock(clk))
	_, err := c.Do(t.Context(), onlineBody)
	require.Error(t, err)
	require.True(t, c.Stats().Endpoints[0].Ejected)

	require.NoError(t, c.SetEndpoints(tokenEndpoints(srvs, &rotating{auth: auth, every: 10})))
	_, err = c.Do(t.Context(), onlineBody)
	require.NoError(t, err, "the new Credential's probe")
	assert.False(t, c.Stats().Endpoints[0].Ejected)
}

// TestCredentialConfig: a Credential goes instead of keys.
func TestCredentialConfig(t *testing.T) {
	cred := amlpool.CredentialFunc(func(context.Context) (string, error) { return "t", nil })
	base := amlpool.Endpoint{Name: "e", URL: "https://e.westeurope.inference.ml.azure.com/score", Kind: amlpool.Online, MaxConcurrentCalls: 4}
	for _, tt := range []struct {
		mod   func(*amlpool.Endpoint)
		field string
	}{
		{func(e *amlpool.Endpoint) { e.Credential, e.APIKey = cred, "k" }, "Credential"},
		{func(e *amlpool.Endpoint) { e.Credential, e.SecondaryKey = cred, "k2" }, "SecondaryKey"},
		{func(e *amlpool.Endpoint) {}, "APIKey"},
	} {
		e := base
		tt.mod(&e)
		_, err := amlpool.New([]amlpool.Endpoint{e})
		var ce *amlpool.ConfigError
		require.ErrorAs(t, err, &ce, tt.field)
		assert.Equal(t, tt.field, ce.Field)
	}
	e := base
	e.Credential = cred
	c, err := amlpool.New([]amlpool.Endpoint{e})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	assert.Equal(t, "amlpool.CredentialFunc", fmt.Sprint(e)[strings.LastIndex(fmt.Sprint(e), "Credential:")+len("Credential:"):len(fmt.Sprint(e))-1])
}

// staleCache is a caching Credential that, told its token was refused,
// hands out the next of its tokens: ones it fetched before a revocation
// first, then a good one.
type staleCache struct {
	mu     sync.Mutex // guards tokens
	tokens []string
}

func (s *staleCache) Token(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens[0], nil
}

func (s *staleCache) Invalidate(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.tokens) > 1 && s.tokens[0] == token {
		s.tokens = s.tokens[1:]
	}
}

// TestCredentialStaleFreshToken: a fresh token that is refused too, but is
// not the one refused before, is a failure of the endpoint, not proof
// that it cannot serve anyone: the call goes elsewhere, the endpoint stays
// in rotation, and its next call's token works.
func TestCredentialStaleFreshToken(t *testing.T) {
	srvs := onlineServers(t, 2, 4, func(c *amltest.Config) {
		c.AcceptToken = func(tok string) bool { return tok == "good" }
	})
	cred := &staleCache{tokens: []string{"revoked-1", "revoked-2", "good"}}
	clk := newStepClock(2 * time.Second)
	c := newClient(t, tokenEndpoints(srvs, cred), amlpool.WithClock(clk), amlpool.WithRand(firstFree))

	_, err := c.Do(t.Context(), onlineBody)
	require.NoError(t, err)
	assert.Equal(t, int64(2), srvs[0].Stats().Unauthorized, "the token, then a fresh one refused too")
	assert.Equal(t, int64(1), srvs[1].Stats().Scored, "the call went elsewhere")
	st := c.Stats().Endpoints[0]
	assert.False(t, st.Ejected, "o0 stays in rotation")
	assert.Zero(t, st.Faults)

	_, err = c.Do(t.Context(), onlineBody)
	require.NoError(t, err)
	assert.Equal(t, int64(1), srvs[0].Stats().Scored, "o0 serves the next call with the good token")
}
