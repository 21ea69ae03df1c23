package pool

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

type credFunc func(context.Context) (string, error)

func (f credFunc) Token(ctx context.Context) (string, error) { return f(ctx) }

type credPtr struct{ tok string }

func (c *credPtr) Token(context.Context) (string, error) { return c.tok, nil }

// A token's 401 is worth a fresh try, unless the token was the fresh one
// the call asked for; after the Credential is replaced, always.
func TestTokenRejected(t *testing.T) {
	t.Parallel()
	a := NewTokenAuth(&credPtr{"t"}, http.Header{})
	e := newEndpoint(&Spec{Name: "e", URL: testSpec("e", 1).URL, Max: 1, Auth: a}, time.Time{})
	got, k := e.Key()
	assert.Same(t, a, got)
	assert.Zero(t, k)
	assert.Empty(t, got.Keys())

	assert.True(t, e.TokenRejected(a, false), "a token of before: try a fresh one")
	assert.True(t, e.TokenRejected(a, false), "another call's stale token: a fresh try too")
	assert.False(t, e.TokenRejected(a, true), "the fresh token refused too")

	b := NewTokenAuth(&credPtr{"u"}, http.Header{})
	e.auth.Store(b)
	assert.True(t, e.TokenRejected(a, true), "the Credential was replaced since: try the new one")
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
