package amlpool

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refuseOnce is a Balancer that picks the first candidate with a free
// slot, except for the one pick after refuse is set, which it answers
// with -1: no endpoint for that call.
type refuseOnce struct{ refuse atomic.Bool }

func (b *refuseOnce) Pick(s Candidates) int {
	if b.refuse.CompareAndSwap(true, false) {
		return -1
	}
	for i := range s.Len() {
		if s.Free(i) > 0 {
			return i
		}
	}
	return -1
}

// A call that goes back to its endpoint with the other key after a 401
// takes its turn in line like any retry: it does not take a free slot
// there ahead of a call already waiting, here of higher priority. (The
// Balancer declines the waiting call once, so that the slot the 401 freed
// is still free as the retry comes for it: the moment between a release
// freeing a slot and serving the line with it.)
func TestKeyRetryTakesItsTurnInLine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &heldTransport{arrived: make(chan heldRequest, 8), quit: make(chan struct{})}
		bal := &refuseOnce{}
		c, err := New([]Endpoint{{Name: "a", APIKey: "k1", SecondaryKey: "k2", MaxConcurrentCalls: 1,
			URL: "https://a.test/workspaces/w/services/a/execute?api-version=2.0&details=true"}},
			WithHTTPClient(&http.Client{Transport: rt}), WithBalancer(bal))
		require.NoError(t, err)
		t.Cleanup(func() {
			close(rt.quit)
			c.Close()
		})
		queued := make(chan struct{}, 2)
		SetQueueHook(c, func() { queued <- struct{}{} })
		res := make(chan error, 2)
		do := func(p Priority, body string) {
			go func() {
				_, err := c.Do(WithPriority(context.Background(), p), []byte(body))
				res <- err
			}()
		}
		do(PriorityLow, `{"id":"x"}`)
		x := <-rt.arrived
		do(PriorityHigh, `{"id":"w"}`)
		<-queued // w waits for x's slot
		bal.refuse.Store(true)
		x.answer <- http.StatusUnauthorized // k1 refused: x goes again with k2

		next := <-rt.arrived
		assert.Equal(t, `{"id":"w"}`, next.body, "x's retry went ahead of a call waiting in line")
		next.answer <- http.StatusOK
		last := <-rt.arrived
		last.answer <- http.StatusOK
		for range 2 {
			assert.NoError(t, <-res)
		}
		st := c.Stats()
		assert.Zero(t, st.Waiting)
		assert.Zero(t, st.Endpoints[0].InFlight)
		assert.EqualValues(t, 3, st.Endpoints[0].Calls)
	})
}

// A call whose token an endpoint refused, back at that endpoint after its
// turn in line, still knows the token it asked afresh for: the
// Credential's giving the refused one again takes the endpoint out of
// rotation at once, as it does when the call goes back without waiting.
func TestTokenRetryInLineKeepsTheRefusedToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &heldTransport{arrived: make(chan heldRequest, 8), quit: make(chan struct{})}
		bal := &refuseOnce{}
		same := CredentialFunc(func(context.Context) (string, error) { return "the-same-token-every-time", nil })
		c, err := New([]Endpoint{{Name: "a", Credential: same, MaxConcurrentCalls: 1,
			URL: "https://a.test/workspaces/w/services/a/execute?api-version=2.0&details=true"}},
			WithHTTPClient(&http.Client{Transport: rt}), WithBalancer(bal))
		require.NoError(t, err)
		t.Cleanup(func() {
			close(rt.quit)
			c.Close()
		})
		queued := make(chan struct{}, 2)
		SetQueueHook(c, func() { queued <- struct{}{} })
		type result struct {
			id  string
			err error
		}
		res := make(chan result, 2)
		do := func(p Priority, id string) {
			go func() {
				_, err := c.Do(WithPriority(context.Background(), p), []byte(`{"id":"`+id+`"}`))
				res <- result{id, err}
			}()
		}
		do(PriorityLow, "x")
		x := <-rt.arrived
		do(PriorityHigh, "w")
		<-queued
		bal.refuse.Store(true)
		x.answer <- http.StatusUnauthorized // x asks its Credential afresh, and takes its turn

		w := <-rt.arrived
		require.Equal(t, `{"id":"w"}`, w.body)
		w.answer <- http.StatusOK
		xs := 1
		errs := map[string]error{}
		for len(errs) < 2 {
			select {
			case r := <-rt.arrived:
				xs++
				r.answer <- http.StatusUnauthorized
			case r := <-res:
				errs[r.id] = r.err
			}
		}
		assert.NoError(t, errs["w"])
		var apiErr *APIError
		require.ErrorAs(t, errs["x"], &apiErr)
		assert.Equal(t, http.StatusUnauthorized, apiErr.StatusCode)
		assert.Equal(t, 2, xs, "x's requests: the token, then the same token again")
		st := c.Stats().Endpoints[0]
		assert.True(t, st.Ejected, "the Credential gave the refused token again: a")
		assert.EqualValues(t, 1, st.Faults)
	})
}
