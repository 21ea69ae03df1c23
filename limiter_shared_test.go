package amlpool_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// stubLimiter grants what pick says, or blocks until ctx ends when pick
// returns -1, and records what it was asked.
type stubLimiter struct {
	pick func(cands []amlpool.LimitedEndpoint) int
	err  error

	mu       sync.Mutex
	asked    [][]amlpool.LimitedEndpoint
	held     int
	released int
}

func (s *stubLimiter) Acquire(ctx context.Context, cands []amlpool.LimitedEndpoint) (amlpool.Lease, error) {
	s.mu.Lock()
	s.asked = append(s.asked, cands)
	s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	i := s.pick(cands)
	if i < 0 {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	s.mu.Lock()
	s.held++
	s.mu.Unlock()
	return stubLease{s, i}, nil
}

type stubLease struct {
	s *stubLimiter
	i int
}

func (l stubLease) Index() int { return l.i }
func (l stubLease) Release() {
	l.s.mu.Lock()
	l.s.held--
	l.s.released++
	l.s.mu.Unlock()
}

func TestClientFollowsTheLimitersChoice(t *testing.T) {
	a := amltest.NewServer(amltest.Config{Name: "a"})
	b := amltest.NewServer(amltest.Config{Name: "b"})
	defer a.Close()
	defer b.Close()
	lim := &stubLimiter{pick: func(cands []amlpool.LimitedEndpoint) int {
		for i, c := range cands {
			if c.Name == "b" {
				return i
			}
		}
		return -1
	}}
	c, err := amlpool.New([]amlpool.Endpoint{a.Endpoint(), b.Endpoint()}, amlpool.WithLimiter(lim))
	require.NoError(t, err)
	defer c.Close()
	for range 10 {
		_, err := c.Do(context.Background(), scoreBody)
		require.NoError(t, err)
	}
	assert.Zero(t, a.Stats().Requests, "the Limiter granted b only")
	assert.EqualValues(t, 10, b.Stats().Scored)
	lim.mu.Lock()
	defer lim.mu.Unlock()
	assert.Zero(t, lim.held, "every lease released")
	for _, cands := range lim.asked {
		require.Len(t, cands, 2, "both endpoints had free local slots")
		assert.NotEqual(t, cands[0].ID, cands[1].ID)
		assert.Equal(t, cands[0].Limit, amltest.DefaultMaxConcurrentCalls)
	}
}

func TestMaxWaitBoundsTheWaitAtTheLimiter(t *testing.T) {
	a := amltest.NewServer(amltest.Config{Name: "a"})
	defer a.Close()
	lim := &stubLimiter{pick: func([]amlpool.LimitedEndpoint) int { return -1 }} // fleet full
	c, err := amlpool.New([]amlpool.Endpoint{a.Endpoint()}, amlpool.WithLimiter(lim), amlpool.WithMaxWait(10*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Do(context.Background(), scoreBody)
	assert.ErrorIs(t, err, amlpool.ErrNoCapacity)
	assert.Zero(t, c.Stats().Endpoints[0].InFlight, "the local slot was not given back")
}

func TestLimiterErrorFailsTheCall(t *testing.T) {
	a := amltest.NewServer(amltest.Config{Name: "a"})
	defer a.Close()
	boom := errors.New("limiter broke")
	c, err := amlpool.New([]amlpool.Endpoint{a.Endpoint()}, amlpool.WithLimiter(&stubLimiter{err: boom}))
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Do(context.Background(), scoreBody)
	assert.ErrorIs(t, err, boom)
	assert.Zero(t, a.Stats().Requests)
	assert.Zero(t, c.Stats().Endpoints[0].InFlight)
}

// tryStubLimiter is a stubLimiter that can also try without waiting.
type tryStubLimiter struct {
	stubLimiter
	tries int
}

func (s *tryStubLimiter) TryAcquire(ctx context.Context, cands []amlpool.LimitedEndpoint) (amlpool.Lease, error) {
	s.mu.Lock()
	s.tries++
	s.mu.Unlock()
	if s.pick(cands) < 0 {
		return nil, nil
	}
	return s.Acquire(ctx, cands)
}

// With WithMaxWait(0) a full fleet fails the call at once: the Client tries
// the Limiter instead of waiting at it. (A Client that waited would end with
// the safety net's DeadlineExceeded, not ErrNoCapacity.)
func TestMaxWaitZeroTriesTheLimiter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := amltest.NewServer(amltest.Config{Name: "a"})
	defer a.Close()
	full := true
	lim := &tryStubLimiter{stubLimiter: stubLimiter{pick: func([]amlpool.LimitedEndpoint) int {
		if full {
			return -1
		}
		return 0
	}}}
	c, err := amlpool.New([]amlpool.Endpoint{a.Endpoint()}, amlpool.WithLimiter(lim), amlpool.WithMaxWait(0))
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Do(ctx, scoreBody)
	assert.ErrorIs(t, err, amlpool.ErrNoCapacity)
	assert.Zero(t, c.Stats().Endpoints[0].InFlight, "the local slot was not given back")
	assert.Zero(t, a.Stats().Requests)

	full = false
	_, err = c.Do(ctx, scoreBody)
	require.NoError(t, err)
	lim.mu.Lock()
	defer lim.mu.Unlock()
	assert.Equal(t, 2, lim.tries)
	assert.Len(t, lim.asked, 1, "Acquire only through TryAcquire")
	assert.Zero(t, lim.held)
}

// A Limiter follows the live set: an endpoint added by SetEndpoints is
// among its candidates, with its cap; a removed one is not, and its lease
// is released when its call ends.
func TestLimiterFollowsSetEndpoints(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	slow := amltest.NewServer(amltest.Config{Name: "slow", Score: func(in *amlpool.Request) (*amlpool.Response, error) {
		arrived <- struct{}{}
		<-release
		return amltest.Echo(in)
	}})
	defer slow.Close()
	added := amltest.NewServer(amltest.Config{Name: "added", MaxConcurrentCalls: 7})
	defer added.Close()
	lim := &stubLimiter{pick: func(cands []amlpool.LimitedEndpoint) int {
		for i, c := range cands {
			if c.Name == "added" {
				return i
			}
		}
		return 0
	}}
	c, err := amlpool.New([]amlpool.Endpoint{slow.Endpoint()}, amlpool.WithLimiter(lim))
	require.NoError(t, err)
	defer c.Close()

	done := make(chan error)
	go func() { _, err := c.Do(context.Background(), scoreBody); done <- err }()
	<-arrived // a call holds a lease on slow
	require.NoError(t, c.SetEndpoints([]amlpool.Endpoint{added.Endpoint()}))
	_, err = c.Do(context.Background(), scoreBody)
	require.NoError(t, err)
	assert.EqualValues(t, 1, added.Stats().Scored, "the added endpoint, granted by the Limiter")

	lim.mu.Lock()
	last := lim.asked[len(lim.asked)-1]
	lim.mu.Unlock()
	require.Len(t, last, 1, "only the live endpoint is a candidate")
	assert.Equal(t, "added", last[0].Name)
	assert.Equal(t, 7, last[0].Limit)

	close(release)
	require.NoError(t, <-done, "the call on the removed endpoint finishes and returns its reply")
	lim.mu.Lock()
	defer lim.mu.Unlock()
	assert.Zero(t, lim.held, "every lease released, the removed endpoint's included")
	assert.Equal(t, 2, lim.released)
}
