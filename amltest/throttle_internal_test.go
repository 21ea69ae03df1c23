package amltest

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestThrottledCallHoldsNoPlace: a call the cap turns away never counts
// against the cap, not even while its 503 is on the way, so it cannot make
// the server refuse a call that finds a free place. The hook holds the
// throttled call just before its reply.
func TestThrottledCallHoldsNoPlace(t *testing.T) {
	release := make(chan struct{})
	var held atomic.Bool
	s := NewUnstartedServer(Config{MaxConcurrentCalls: 1, LatencyFunc: func() time.Duration {
		if held.CompareAndSwap(false, true) {
			<-release // the first call keeps the only place until released
		}
		return 0
	}})
	inHook, proceed := make(chan struct{}), make(chan struct{})
	var hooked atomic.Bool
	s.testHookThrottled = func() {
		if hooked.CompareAndSwap(false, true) {
			close(inHook)
			<-proceed
		}
	}
	s.Start()
	defer s.Close()

	post := func() int {
		ep := s.Endpoint()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, ep.URL,
			strings.NewReader(`{"Inputs": {"input1": {"ColumnNames": ["a"], "Values": [["1"]]}}}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+ep.APIKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	first := make(chan int, 1)
	go func() { first <- post() }()
	_, err := s.WaitFor(t.Context(), func(st Stats) bool { return st.PeakAdmitted == 1 })
	require.NoError(t, err)
	throttled := make(chan int, 1)
	go func() { throttled <- post() }()
	<-inHook // turned away, its reply not sent yet
	close(release)
	require.Equal(t, http.StatusOK, <-first)

	// The place is free: the throttled call, still in the handler, must
	// not hold it.
	assert.Equal(t, http.StatusOK, post(), "a call that finds the place free")
	close(proceed)
	assert.Equal(t, http.StatusServiceUnavailable, <-throttled)
	assert.Equal(t, int64(1), s.Stats().Throttled)
}
