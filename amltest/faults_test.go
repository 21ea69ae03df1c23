package amltest_test

import (
	"context"
	"errors"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// TestFaultHelpers checks that each helper makes the reply it names: the
// same bytes as the server's own reply of that kind, and the error amlpool
// makes of it.
func TestFaultHelpers(t *testing.T) {
	t.Run("Throttle is the server's own throttle", func(t *testing.T) {
		srv := newServer(t, amltest.Config{})
		srv.Script(amltest.Throttle())
		got := score(t, srv)
		assert.Equal(t, http.StatusServiceUnavailable, got.status)
		assert.Equal(t, throttleBody20, string(got.body))
		assert.Empty(t, got.header.Get("Retry-After"))
	})
	t.Run("ModelError is a Score error's reply", func(t *testing.T) {
		srv := newServer(t, amltest.Config{})
		srv.Script(amltest.ModelError("could not convert 'abc' to float"))
		got := score(t, srv)
		failing := newServer(t, amltest.Config{Score: func(*amlpool.Request) (*amlpool.Response, error) {
			return nil, errors.New("could not convert 'abc' to float")
		}})
		want := score(t, failing)
		assert.Equal(t, http.StatusBadRequest, got.status)
		assert.Equal(t, string(want.body), string(got.body))
		assert.Equal(t, want.header.Get("Content-Type"), got.header.Get("Content-Type"))
	})
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{0, "0"}, {time.Second, "1"}, {1500 * time.Millisecond, "2"}, {time.Minute, "60"},
		// Never negative: the header's seconds are a non-negative integer.
		{-time.Nanosecond, "0"}, {-2 * time.Second, "0"}, {-time.Hour, "0"},
		// Rounding up does not overflow.
		{time.Duration(math.MaxInt64), "9223372037"}} {
		t.Run("WithRetryAfter "+tt.d.String(), func(t *testing.T) {
			srv := newServer(t, amltest.Config{})
			srv.Script(amltest.Throttle().WithRetryAfter(tt.d))
			got := score(t, srv)
			assert.Equal(t, http.StatusServiceUnavailable, got.status)
			assert.Equal(t, tt.want, got.header.Get("Retry-After"))
			assert.Equal(t, throttleBody20, string(got.body), "the fault it was given, unchanged")
		})
	}
}

// TestFaultHelpersThroughAClient reads the helpers' replies as amlpool does.
func TestFaultHelpersThroughAClient(t *testing.T) {
	srv := newServer(t, amltest.Config{})
	c, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()}, amlpool.WithMaxAttempts(1))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	body := []byte(classicBody)

	srv.Script(amltest.Throttle().WithRetryAfter(2 * time.Second))
	_, err = c.Do(context.Background(), body)
	var apiErr *amlpool.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.ErrorIs(t, err, amlpool.ErrThrottled)
	assert.Equal(t, 2*time.Second, apiErr.RetryAfter)

	srv.Script(amltest.ModelError("could not convert 'abc' to float"))
	_, err = c.Do(context.Background(), body)
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, "could not convert 'abc' to float", apiErr.Reason(), "the model's words, not the generic class message")
	assert.Equal(t, "Module execution encountered an internal library error.", apiErr.Message)
	assert.Equal(t, amlpool.VerdictGiveUp, amlpool.Classify(err))
	assert.Contains(t, err.Error(), "HTTP 400 LibraryExecutionError/FailedToEvaluateRScript: could not convert 'abc' to float")
}
