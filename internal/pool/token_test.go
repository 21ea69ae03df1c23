package pool

import (
	"context"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

type credFunc func(context.Context) (string, error)

func (f credFunc) Token(ctx context.Context) (string, error) { return f(ctx) }

type credPtr struct{ tok string }

func (c *credPtr) Token(context.Context) (string, error) { return c.tok, nil }

// A token's 401 is worth one fresh try; a fresh token's 401 is not, until
// a reply accepts a token again.
func TestTokenRejected(t *testing.T) {
	t.Parallel()
	a := NewTokenAuth(&credPtr{"t"}, http.Header{})
	e := newEndpoint(&Spec{Name: "e", URL: testSpec("e", 1).URL, Max: 1, Auth: a})
	got, k := e.Key()
	assert.Same(t, a, got)
	assert.Zero(t, k)
	assert.Empty(t, got.Keys())

	assert.False(t, e.Reasked())
	assert.True(t, e.TokenRejected(a, false), "a token taken before any rejection: try a fresh one")
	assert.True(t, e.Reasked(), "tokens taken now come after a rejection")
	assert.True(t, e.TokenRejected(a, false), "another call's stale token: a fresh try too")
	assert.False(t, e.TokenRejected(a, true), "a fresh token refused: an endpoint fault")
	assert.False(t, e.Reasked(), "forgotten, so that the probe asks afresh")

	e.TokenRejected(a, false)
	e.Authorized(a, 0)
	assert.False(t, e.Reasked(), "a reply that accepted a token clears the mark")

	b := NewTokenAuth(&credPtr{"u"}, http.Header{})
	e.auth.Store(b)
	assert.True(t, e.TokenRejected(a, true), "the Credential was replaced since: try the new one")
}

// Many stale tokens refused at once each get their fresh try, and the
// endpoint then knows of the rejection.
func TestTokenRejectedConcurrently(t *testing.T) {
	t.Parallel()
	a := NewTokenAuth(&credPtr{"t"}, http.Header{})
	e := newEndpoint(&Spec{Name: "e", URL: testSpec("e", 1).URL, Max: 1, Auth: a})
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { assert.True(t, e.TokenRejected(a, false)) })
	}
	wg.Wait()
	assert.True(t, e.Reasked())
}

// sameKeys compares token sources by identity and never panics on one
// that cannot be compared.
func TestSameCredential(t *testing.T) {
	t.Parallel()
	c1, c2 := &credPtr{"t"}, &credPtr{"t"}
	h := http.Header{}
	assert.True(t, NewTokenAuth(c1, h).sameKeys(NewTokenAuth(c1, h)))
	assert.False(t, NewTokenAuth(c1, h).sameKeys(NewTokenAuth(c2, h)), "equal values, different sources")
	f := credFunc(func(context.Context) (string, error) { return "t", nil })
	assert.NotPanics(t, func() {
		assert.False(t, NewTokenAuth(f, h).sameKeys(NewTokenAuth(f, h)), "funcs cannot be compared")
	})
	assert.False(t, NewTokenAuth(c1, h).sameKeys(testAuth("k")))
	assert.Panics(t, func() { NewTokenAuth(nil, h) })
}
