package azureauth

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a settable time.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeCred is an azcore.TokenCredential issuing "t1", "t2", … that live
// for life. While gate is set, GetToken waits for it to close; err, when
// set, is its error.
type fakeCred struct {
	clock *fakeClock
	life  time.Duration

	mu        sync.Mutex // guards the fields below
	gate      chan struct{}
	err       error
	panicWith any           // when set, GetToken panics with it (after the gate)
	goexit    bool          // when set, GetToken calls runtime.Goexit (after the gate), as t.FailNow does
	refreshOn time.Duration // from issue; 0: none
	scopes    []string

	calls   atomic.Int64
	entered chan struct{} // a value per GetToken entered
}

func newFake(clock *fakeClock, life time.Duration) *fakeCred {
	return &fakeCred{clock: clock, life: life, entered: make(chan struct{}, 1000)}
}

func (f *fakeCred) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	n := f.calls.Add(1)
	f.entered <- struct{}{}
	f.mu.Lock()
	gate, err, refreshOn, panicWith, goexit := f.gate, f.err, f.refreshOn, f.panicWith, f.goexit
	f.scopes = opts.Scopes
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return azcore.AccessToken{}, ctx.Err()
		}
	}
	if panicWith != nil {
		panic(panicWith)
	}
	if goexit {
		runtime.Goexit()
	}
	if err != nil {
		return azcore.AccessToken{}, err
	}
	now := f.clock.Now()
	at := azcore.AccessToken{Token: "t" + strconv.FormatInt(n, 10), ExpiresOn: now.Add(f.life)}
	if refreshOn > 0 {
		at.RefreshOn = now.Add(refreshOn)
	}
	return at, nil
}

func (f *fakeCred) set(mod func(f *fakeCred)) {
	f.mu.Lock()
	mod(f)
	f.mu.Unlock()
}

// settle waits for c's fetch in flight, if any, to end, its token stored:
// a call joining a flight returns once the flight's function has.
func settle(c *Credential) {
	<-c.fetch.DoChan("token", func() (any, error) { return nil, nil })
}

func newTest(t *testing.T, life time.Duration, opts ...Option) (*Credential, *fakeCred, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	f := newFake(clock, life)
	c := New(f, opts...)
	c.now = clock.Now
	return c, f, clock
}

func tokenOf(t *testing.T, c *Credential) string {
	t.Helper()
	tok, err := c.Token(context.Background())
	require.NoError(t, err)
	return tok
}

// TestCachesUntilDue: one fetch serves every call until the token is due
// for refresh, for the ml.azure.com scope.
func TestCachesUntilDue(t *testing.T) {
	c, f, clock := newTest(t, time.Hour)
	for range 100 {
		assert.Equal(t, "t1", tokenOf(t, c))
	}
	clock.Advance(time.Hour - DefaultRefreshBefore - time.Second)
	assert.Equal(t, "t1", tokenOf(t, c))
	assert.Equal(t, int64(1), f.calls.Load())
	assert.Equal(t, []string{Scope}, f.scopes)
}

// TestEarlyRefresh: once due (5 minutes before expiry), the cached token
// is still handed out at once while one fetch, started by the first
// caller, gets the next; later calls get that one.
func TestEarlyRefresh(t *testing.T) {
	c, f, clock := newTest(t, time.Hour)
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	gate := make(chan struct{})
	f.set(func(f *fakeCred) { f.gate = gate })
	clock.Advance(time.Hour - DefaultRefreshBefore + time.Second)
	for range 50 {
		assert.Equal(t, "t1", tokenOf(t, c), "nobody waits for the refresh")
	}
	close(gate)
	settle(c)
	assert.Equal(t, "t2", tokenOf(t, c))
	assert.Equal(t, int64(2), f.calls.Load(), "one refresh for 50 callers")
}

// TestRefreshOn: Azure AD's suggested refresh time wins; a short-lived
// token is refreshed halfway through its life.
func TestRefreshOn(t *testing.T) {
	c, f, clock := newTest(t, time.Hour)
	f.set(func(f *fakeCred) { f.refreshOn = 10 * time.Minute })
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	clock.Advance(10*time.Minute - time.Second)
	assert.Equal(t, "t1", tokenOf(t, c))
	assert.Equal(t, int64(1), f.calls.Load())
	clock.Advance(2 * time.Second)
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	assert.Equal(t, "t2", tokenOf(t, c))

	c, f, clock = newTest(t, 4*time.Minute) // under 2 × DefaultRefreshBefore
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	clock.Advance(2*time.Minute - time.Second)
	assert.Equal(t, "t1", tokenOf(t, c))
	assert.Equal(t, int64(1), f.calls.Load())
}

// TestExpiredWaits: a token about to expire is not handed out: callers
// wait for the new one.
func TestExpiredWaits(t *testing.T) {
	c, f, clock := newTest(t, time.Hour)
	assert.Equal(t, "t1", tokenOf(t, c))
	gate := make(chan struct{})
	f.set(func(f *fakeCred) { f.gate = gate })
	clock.Advance(time.Hour - expiryMargin)
	got := make(chan string, 1)
	go func() { got <- tokenOf(t, c) }()
	<-f.entered // t1's
	<-f.entered // the caller waits in t2's fetch
	select {
	case tok := <-got:
		t.Fatalf("got %q before the fetch ended", tok)
	default:
	}
	close(gate)
	assert.Equal(t, "t2", <-got)
}

// TestNoTokenWithinTheMarginWhateverItsRefreshTime: a token is not handed
// out within expiryMargin of its expiry even when its refresh time falls
// later (a RefreshOn that late, or the halfway point of a life under a
// minute): the caller gets a new one.
func TestNoTokenWithinTheMarginWhateverItsRefreshTime(t *testing.T) {
	for _, tt := range []struct {
		name      string
		life      time.Duration
		refreshOn time.Duration
	}{
		{name: "RefreshOn 10s before expiry", life: time.Hour, refreshOn: time.Hour - 10*time.Second},
		{name: "50s life, halfway at 25s", life: 50 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, f, clock := newTest(t, tt.life)
			f.set(func(f *fakeCred) { f.refreshOn = tt.refreshOn })
			assert.Equal(t, "t1", tokenOf(t, c))
			clock.Advance(tt.life - expiryMargin)
			assert.Equal(t, "t2", tokenOf(t, c), "t1 expires within the margin")
			assert.Equal(t, int64(2), f.calls.Load())
		})
	}
}

// TestManyCallersOneFetch: 200 callers without a token share one fetch.
func TestManyCallersOneFetch(t *testing.T) {
	c, f, _ := newTest(t, time.Hour)
	gate := make(chan struct{})
	f.set(func(f *fakeCred) { f.gate = gate })
	const callers = 200
	var wg sync.WaitGroup
	toks := make(chan string, callers)
	for range callers {
		wg.Go(func() {
			tok, err := c.Token(context.Background())
			assert.NoError(t, err)
			toks <- tok
		})
	}
	<-f.entered
	close(gate)
	wg.Wait()
	close(toks)
	for tok := range toks {
		assert.Equal(t, "t1", tok)
	}
	assert.Equal(t, int64(1), f.calls.Load())
}

// TestErrors: the credential's error reaches the caller, wrapped; an empty
// or expired token is an error; a failed fetch is tried again by the first
// caller after its back-off.
func TestErrors(t *testing.T) {
	errAAD := errors.New("AADSTS7000215: invalid client secret")
	c, f, clock := newTest(t, time.Hour)
	f.set(func(f *fakeCred) { f.err = errAAD })
	_, err := c.Token(context.Background())
	require.ErrorIs(t, err, errAAD)
	assert.Contains(t, err.Error(), Scope)
	f.set(func(f *fakeCred) { f.err = nil })
	clock.Advance(time.Second) // failureBackoff
	assert.Equal(t, "t2", tokenOf(t, c))

	c, _, _ = newTest(t, 10*time.Second) // expires within the margin
	_, err = c.Token(context.Background())
	require.ErrorContains(t, err, "expires")

	empty := New(credFunc(func() (azcore.AccessToken, error) {
		return azcore.AccessToken{ExpiresOn: time.Now().Add(time.Hour)}, nil
	}))
	_, err = empty.Token(context.Background())
	require.ErrorContains(t, err, "empty token")
}

// TestTokenWithoutOrPastExpiry: a token whose ExpiresOn is zero (a
// credential that wraps a static token and leaves it unset), or in the
// past, is refused with an error saying which, and never handed out.
func TestTokenWithoutOrPastExpiry(t *testing.T) {
	for _, tc := range []struct {
		name    string
		expires func(now time.Time) time.Time
		want    string
	}{
		{"zero", func(time.Time) time.Time { return time.Time{} }, "azureauth: the credential gave a token without an expiry (AccessToken.ExpiresOn is zero)"},
		{"past", func(now time.Time) time.Time { return now.Add(-time.Hour) }, "azureauth: the credential gave a token that expired at 2026-12-01 11:00:00 +0000 UTC, 1h0m0s ago"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
			c := New(credFunc(func() (azcore.AccessToken, error) {
				return azcore.AccessToken{Token: "secret-tok", ExpiresOn: tc.expires(clock.Now())}, nil
			}))
			c.now = clock.Now
			tok, err := c.Token(context.Background())
			require.ErrorContains(t, err, tc.want)
			assert.Empty(t, tok)
			assert.NotContains(t, err.Error(), "secret-tok")
		})
	}
}

// TestFailureBackoff: while the identity endpoint fails, callers without
// a usable token do not each start a fetch: after a failure, those within
// its back-off (1 s, doubling with each failure in a row, up to 30 s) get
// its error, at once, saying so; the first caller after it fetches again.
// A fetch that gives a token ends the back-off; the next failure's is 1 s
// again.
func TestFailureBackoff(t *testing.T) {
	errAAD := errors.New("ManagedIdentityCredential: IMDS: 503 Service Unavailable")
	c, f, clock := newTest(t, time.Hour)
	f.set(func(f *fakeCred) { f.err = errAAD })
	want := int64(0)
	for _, backoff := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second} {
		_, err := c.Token(context.Background())
		require.ErrorIs(t, err, errAAD)
		want++
		require.Equal(t, want, f.calls.Load(), "a fetch once the back-off is over")
		clock.Advance(backoff - time.Millisecond)
		for range 100 {
			_, err := c.Token(context.Background())
			require.ErrorIs(t, err, errAAD, "the last fetch's error, within its back-off of %v", backoff)
			assert.ErrorContains(t, err, "; no new one for 1ms)")
		}
		require.Equal(t, want, f.calls.Load(), "no fetch within the back-off of %v", backoff)
		clock.Advance(time.Millisecond)
	}

	f.set(func(f *fakeCred) { f.err = nil })
	assert.Equal(t, "t8", tokenOf(t, c))
	c.Invalidate("t8")
	f.set(func(f *fakeCred) { f.err = errAAD })
	_, err := c.Token(context.Background())
	require.ErrorIs(t, err, errAAD)
	clock.Advance(time.Second - time.Millisecond)
	_, err = c.Token(context.Background())
	require.ErrorContains(t, err, "(fetches failed in a row: 1;", "the run of failures starts again after a token")
	clock.Advance(time.Millisecond)
	f.set(func(f *fakeCred) { f.err = nil })
	assert.Equal(t, "t10", tokenOf(t, c))
	assert.Equal(t, int64(10), f.calls.Load())
}

// TestFailureBackoffManyCallers: callers that arrive while a failing
// fetch is under way share it; those that come after it ended, within its
// back-off, start no other, however many: the identity endpoint sees one
// fetch per back-off, not one per call.
func TestFailureBackoffManyCallers(t *testing.T) {
	errAAD := errors.New("AADSTS50058: silent sign-in failed")
	c, f, clock := newTest(t, time.Hour)
	gate := make(chan struct{})
	f.set(func(f *fakeCred) { f.err, f.gate = errAAD, gate })
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			_, err := c.Token(context.Background())
			assert.ErrorIs(t, err, errAAD)
		})
	}
	<-f.entered
	close(gate)
	wg.Wait()
	for range 50 {
		wg.Go(func() {
			_, err := c.Token(context.Background())
			assert.ErrorIs(t, err, errAAD)
		})
	}
	wg.Wait()
	settle(c)
	assert.Equal(t, int64(1), f.calls.Load())
	clock.Advance(time.Second)
	_, err := c.Token(context.Background())
	require.ErrorIs(t, err, errAAD)
	assert.Equal(t, int64(2), f.calls.Load())
}

type credFunc func() (azcore.AccessToken, error)

func (f credFunc) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return f()
}

// TestEarlyRefreshFailure: a failed early refresh keeps the cached token
// in use and is not tried again for 30 seconds.
func TestEarlyRefreshFailure(t *testing.T) {
	c, f, clock := newTest(t, time.Hour)
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	f.set(func(f *fakeCred) { f.err = errors.New("AAD is down") })
	clock.Advance(time.Hour - DefaultRefreshBefore)
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	for range 10 {
		assert.Equal(t, "t1", tokenOf(t, c))
		settle(c) // a refresh this call started, if any, has ended
	}
	assert.Equal(t, int64(2), f.calls.Load(), "no second try within 30 s")
	f.set(func(f *fakeCred) { f.err = nil })
	clock.Advance(retryAfterFailure)
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	assert.Equal(t, "t3", tokenOf(t, c))
}

// TestEarlyRefreshFailureCountsFromItsEnd: a failed early refresh that
// ran long is not tried again until 30 seconds after it ended.
func TestEarlyRefreshFailureCountsFromItsEnd(t *testing.T) {
	c, f, clock := newTest(t, time.Hour)
	assert.Equal(t, "t1", tokenOf(t, c))
	clock.Advance(time.Hour - DefaultRefreshBefore)
	gate := make(chan struct{})
	f.set(func(f *fakeCred) { f.gate, f.err = gate, errors.New("AAD is slow, then down") })
	assert.Equal(t, "t1", tokenOf(t, c)) // starts the early refresh
	<-f.entered
	<-f.entered
	clock.Advance(time.Minute) // the fetch runs its full minute
	close(gate)
	settle(c)
	f.set(func(f *fakeCred) { f.gate, f.err = nil, nil })
	clock.Advance(retryAfterFailure - time.Second)
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	assert.Equal(t, int64(2), f.calls.Load(), "no second try within 30 s of the failure")
	clock.Advance(time.Second)
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	assert.Equal(t, "t3", tokenOf(t, c))
}

// TestRefreshGivesATokenDueAlready: a fetch that gives a token due for
// refresh already (an SDK credential's cache handing back the token it
// has, its RefreshOn past) is not followed by another at once, on every
// call, but 30 seconds later.
func TestRefreshGivesATokenDueAlready(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	var calls atomic.Int64
	c := New(credFunc(func() (azcore.AccessToken, error) {
		calls.Add(1)
		now := clock.Now()
		return azcore.AccessToken{Token: "cached", ExpiresOn: now.Add(time.Hour), RefreshOn: now.Add(-time.Minute)}, nil
	}))
	c.now = clock.Now
	for range 10 {
		assert.Equal(t, "cached", tokenOf(t, c))
		settle(c)
	}
	assert.Equal(t, int64(1), calls.Load(), "one fetch, then none for 30 s")
	clock.Advance(retryAfterFailure)
	for range 10 {
		assert.Equal(t, "cached", tokenOf(t, c))
		settle(c)
	}
	assert.Equal(t, int64(2), calls.Load(), "one early refresh after 30 s")
}

// TestCallerGivesUp: a caller whose ctx ends stops waiting; the fetch it
// started goes on for the others.
func TestCallerGivesUp(t *testing.T) {
	c, f, _ := newTest(t, time.Hour)
	gate := make(chan struct{})
	f.set(func(f *fakeCred) { f.gate = gate })
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() {
		_, err := c.Token(ctx)
		errs <- err
	}()
	<-f.entered
	other := make(chan string, 1)
	go func() { other <- tokenOf(t, c) }()
	cancel()
	require.ErrorIs(t, <-errs, context.Canceled)
	close(gate)
	assert.Equal(t, "t1", <-other)
	assert.Equal(t, int64(1), f.calls.Load())
}

// TestInvalidate: a rejected token is not handed out again; invalidating
// another token changes nothing.
func TestInvalidate(t *testing.T) {
	c, f, _ := newTest(t, time.Hour)
	assert.Equal(t, "t1", tokenOf(t, c))
	c.Invalidate("t0")
	assert.Equal(t, "t1", tokenOf(t, c))
	c.Invalidate("t1")
	c.Invalidate("t1")
	assert.Equal(t, "t2", tokenOf(t, c))
	assert.Equal(t, int64(2), f.calls.Load())
}

// TestOptions: scopes and tenant go to GetToken.
func TestOptions(t *testing.T) {
	var got policy.TokenRequestOptions
	c := New(optsCred(func(o policy.TokenRequestOptions) { got = o }), WithScopes("api://x/.default"), WithTenantID("tenant"))
	_, err := c.Token(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"api://x/.default"}, got.Scopes)
	assert.Equal(t, "tenant", got.TenantID)
	assert.Equal(t, "azureauth.Credential{Scopes:[api://x/.default]}", c.String())
	assert.Panics(t, func() { New(nil) })
	cred := optsCred(func(policy.TokenRequestOptions) {})
	assert.PanicsWithValue(t, "azureauth: New: WithScopes gave no scope", func() { New(cred, WithScopes()) })
	assert.Panics(t, func() { New(cred, WithScopes("api://x/.default", " ")) })
}

type optsCred func(policy.TokenRequestOptions)

func (f optsCred) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	f(o)
	return azcore.AccessToken{Token: "x", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// TestWithAmlpool: an amlpool Client scores on an online fake with the
// Credential's tokens; a revoked token is replaced after one 401.
func TestWithAmlpool(t *testing.T) {
	c, f, _ := newTest(t, time.Hour)
	var valid atomic.Pointer[string]
	srv := amltest.NewServer(amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: 4,
		AcceptToken: func(tok string) bool { v := valid.Load(); return v != nil && *v == tok }})
	t.Cleanup(srv.Close)
	ep := srv.Endpoint()
	ep.APIKey, ep.SecondaryKey, ep.Credential = "", "", c
	client, err := amlpool.New([]amlpool.Endpoint{ep})
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	body := []byte(`{"input_data":{"columns":["a"],"data":[[1]]}}`)

	t1 := "t1"
	valid.Store(&t1)
	_, err = client.Do(context.Background(), body)
	require.NoError(t, err)
	t2 := "t2"
	valid.Store(&t2) // t1 revoked
	_, err = client.Do(context.Background(), body)
	require.NoError(t, err)
	st := srv.Stats()
	assert.Equal(t, int64(1), st.Unauthorized)
	assert.Equal(t, []string{"t1", "t2"}, st.KeysSeen)
	assert.Equal(t, int64(2), f.calls.Load())
}

// TestFailureBackoffScrubbed: the error a failed fetch left, which callers
// get again through its back-off, reaches an amlpool call scrubbed of the
// token reply it quotes, as the fetch's own does.
func TestFailureBackoffScrubbed(t *testing.T) {
	const secret = "secret-in-a-token-reply"
	c, f, _ := newTest(t, time.Hour)
	f.set(func(f *fakeCred) {
		f.err = errors.New(`MSAL: could not decode the reply {"token_type":"Bearer","access_token":"` + secret + `"}`)
	})
	srv := amltest.NewServer(amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: 4, AcceptToken: func(string) bool { return true }})
	t.Cleanup(srv.Close)
	ep := srv.Endpoint()
	ep.APIKey, ep.SecondaryKey, ep.Credential = "", "", c
	client, err := amlpool.New([]amlpool.Endpoint{ep}, amlpool.WithoutRetries(), amlpool.WithoutEjection())
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	body := []byte(`{"input_data":{"columns":["a"],"data":[[1]]}}`)
	for _, when := range []string{"the fetch", "its back-off"} {
		_, err = client.Do(context.Background(), body)
		var ce *amlpool.CredentialError
		require.ErrorAs(t, err, &ce, when)
		assert.NotContains(t, fmt.Sprintf("%v %+v %#v", err, err, err), secret, when)
		assert.Contains(t, err.Error(), "access_token", when)
	}
	assert.Equal(t, int64(1), f.calls.Load(), "the second call came within the back-off")
}

// tokenPanic returns what c.Token panicked with, nil if it did not.
func tokenPanic(c *Credential) (v any) {
	defer func() { v = recover() }()
	_, _ = c.Token(context.Background())
	return nil
}

// TestGetTokenPanicReachesEveryWaiter: a GetToken that panics panics every
// Token waiting for that fetch, in its own goroutine, with the same value
// (not the program, from singleflight's goroutine); the Credential stays
// usable and starts no back-off: the next Token fetches a token.
func TestGetTokenPanicReachesEveryWaiter(t *testing.T) {
	c, f, _ := newTest(t, time.Hour)
	gate := make(chan struct{})
	f.set(func(f *fakeCred) { f.gate, f.panicWith = gate, "boom" })
	const waiters = 3
	got := make(chan any, waiters)
	go func() { got <- tokenPanic(c) }()
	<-f.entered // the fetch runs, held by the gate
	for range waiters - 1 {
		go func() { got <- tokenPanic(c) }()
	}
	// The others join the flight while the gate holds it (or, should one
	// come late, run a fetch of their own that panics as well).
	close(gate)
	for range waiters {
		assert.Equal(t, "boom", <-got)
	}
	f.set(func(f *fakeCred) { f.gate, f.panicWith = nil, nil })
	assert.Equal(t, "t"+strconv.FormatInt(f.calls.Load()+1, 10), tokenOf(t, c), "usable after the panic, with no back-off")
}

// TestEarlyRefreshPanic: a panic in an early refresh, which no caller
// waits for, panics no Token, neither then nor later, as its error would
// reach none: the cached token goes on, and the next early refresh, 30
// seconds later as after a failure, works.
func TestEarlyRefreshPanic(t *testing.T) {
	c, f, clock := newTest(t, time.Hour)
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	f.set(func(f *fakeCred) { f.panicWith = "early boom" })
	clock.Advance(time.Hour - DefaultRefreshBefore + time.Second)
	assert.Equal(t, "t1", tokenOf(t, c), "nobody waits for the refresh")
	settle(c)
	require.Equal(t, int64(2), f.calls.Load(), "the early refresh ran, and panicked")
	for range 10 {
		assert.Nil(t, tokenPanic(c), "a later Token is no place for the refresh's panic")
	}
	assert.Equal(t, "t1", tokenOf(t, c), "the cached token goes on")
	settle(c)
	assert.Equal(t, int64(2), f.calls.Load(), "no second refresh within 30 s")
	f.set(func(f *fakeCred) { f.panicWith = nil })
	clock.Advance(retryAfterFailure)
	assert.Equal(t, "t1", tokenOf(t, c))
	settle(c)
	assert.Equal(t, "t3", tokenOf(t, c))
}

// TestEarlyRefreshPanicCountsFromItsEnd: an early refresh that ran long
// and then panicked, or called runtime.Goexit, is not tried again until
// 30 seconds after it ended, as after a failure, not 30 seconds after it
// started.
func TestEarlyRefreshPanicCountsFromItsEnd(t *testing.T) {
	for _, goexit := range []bool{false, true} {
		t.Run(map[bool]string{false: "panic", true: "Goexit"}[goexit], func(t *testing.T) {
			c, f, clock := newTest(t, time.Hour)
			assert.Equal(t, "t1", tokenOf(t, c))
			clock.Advance(time.Hour - DefaultRefreshBefore)
			gate := make(chan struct{})
			f.set(func(f *fakeCred) {
				f.gate = gate
				if f.goexit = goexit; !goexit {
					f.panicWith = "early boom"
				}
			})
			assert.Equal(t, "t1", tokenOf(t, c)) // starts the early refresh
			<-f.entered
			<-f.entered
			clock.Advance(20 * time.Second) // the fetch runs long
			close(gate)
			settle(c)
			require.Equal(t, int64(2), f.calls.Load(), "the early refresh ran")
			f.set(func(f *fakeCred) { f.gate, f.panicWith, f.goexit = nil, nil, false })
			clock.Advance(retryAfterFailure - time.Second)
			assert.Equal(t, "t1", tokenOf(t, c))
			settle(c)
			assert.Equal(t, int64(2), f.calls.Load(), "no second try within 30 s of the refresh's end")
			clock.Advance(time.Second)
			assert.Equal(t, "t1", tokenOf(t, c))
			settle(c)
			assert.Equal(t, "t3", tokenOf(t, c))
		})
	}
}

// TestEarlyRefreshPanicReachesWhoJoinedIt: a Token that joins an early
// refresh, its cached token about to expire while the refresh runs, waits
// for that fetch, and so panics with its GetToken's value, as any waiting
// Token does; the Token that started the refresh had its token already.
func TestEarlyRefreshPanicReachesWhoJoinedIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, f, clock := newTest(t, time.Hour)
		assert.Equal(t, "t1", tokenOf(t, c))
		settle(c)
		gate := make(chan struct{})
		f.set(func(f *fakeCred) { f.gate, f.panicWith = gate, "early boom" })
		clock.Advance(time.Hour - DefaultRefreshBefore + time.Second)
		assert.Equal(t, "t1", tokenOf(t, c), "starts the early refresh")
		<-f.entered // t1's
		<-f.entered // the early refresh's, held by the gate
		clock.Advance(DefaultRefreshBefore - expiryMargin)
		got := make(chan any, 1)
		go func() { got <- tokenPanic(c) }()
		synctest.Wait() // it waits in the early refresh's flight
		close(gate)
		assert.Equal(t, "early boom", <-got)
		assert.Equal(t, int64(2), f.calls.Load(), "it joined the early refresh")
	})
}

// TestGetTokenGoexit: a GetToken that ends its goroutine without
// returning (runtime.Goexit, as t.FailNow in a fake credential does) ends
// it, and every Token waiting for that fetch gets an error saying so at
// once, not when its ctx ends; it is no failure: the next Token fetches.
func TestGetTokenGoexit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, f, _ := newTest(t, time.Hour)
		gate := make(chan struct{})
		f.set(func(f *fakeCred) { f.gate, f.goexit = gate, true })
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		start := time.Now() // synctest's clock
		const waiters = 3
		errs := make(chan error, waiters)
		for range waiters {
			go func() {
				_, err := c.Token(ctx)
				errs <- err
			}()
		}
		<-f.entered
		synctest.Wait() // every waiter is in the flight
		close(gate)
		for range waiters {
			err := <-errs
			require.ErrorIs(t, err, errGoexit)
			assert.ErrorContains(t, err, "azureauth: the credential's GetToken exited without returning (runtime.Goexit")
		}
		assert.Zero(t, time.Since(start), "at once, not when the ctx ends")
		assert.Equal(t, int64(1), f.calls.Load(), "one fetch for the three")
		f.set(func(f *fakeCred) { f.gate, f.goexit = nil, false })
		assert.Equal(t, "t2", tokenOf(t, c), "usable after the Goexit, with no back-off")
	})
}
