package amlpool

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func ended(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

// TestDeadlinesEndEachAttemptAtItsOwnTime: one timer ends each attempt
// when its own timeout has passed, oldest first, and a context derived
// from an attempt's (as net/http derives one) ends with it.
func TestDeadlinesEndEachAttemptAtItsOwnTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDeadlines(time.Second)
		first := d.start(context.Background())
		derived, cancel := context.WithCancel(first)
		defer cancel()
		time.Sleep(300 * time.Millisecond)
		second := d.start(context.Background())
		dl, ok := second.Deadline()
		assert.True(t, ok)
		assert.Equal(t, time.Now().Add(time.Second), dl)

		time.Sleep(700 * time.Millisecond)
		synctest.Wait()
		assert.ErrorIs(t, first.Err(), context.DeadlineExceeded)
		assert.True(t, ended(derived), "a derived context ends with the attempt's")
		assert.False(t, ended(second), "the second attempt has 300 ms left")

		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		assert.ErrorIs(t, second.Err(), context.DeadlineExceeded)
		d.finish(first)
		d.finish(second)
	})
}

// TestDeadlinesFinishedInTime: an attempt that finished is never ended by
// the timer, and the next attempt's context starts alive.
func TestDeadlinesFinishedInTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDeadlines(time.Second)
		a := d.start(context.Background())
		time.Sleep(500 * time.Millisecond)
		d.finish(a)
		time.Sleep(time.Second)
		synctest.Wait()
		assert.NoError(t, a.Err(), "finished in time: not ended later")

		b := d.start(context.Background())
		assert.NoError(t, b.Err())
		time.Sleep(time.Second)
		synctest.Wait()
		assert.ErrorIs(t, b.Err(), context.DeadlineExceeded)
		d.finish(b)
		c := d.start(context.Background())
		assert.NoError(t, c.Err(), "an ended context is not reused")
		d.finish(c)
	})
}

type ctxKey struct{}

// TestDeadlinesFollowTheCaller: the caller's cancellation and its cause
// reach the attempt at once; its values are the attempt's.
func TestDeadlinesFollowTheCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDeadlines(time.Minute)
		errGone := errors.New("caller gone")
		ctx, cancel := context.WithCancelCause(context.WithValue(context.Background(), ctxKey{}, "span"))
		a := d.start(ctx)
		assert.Equal(t, "span", a.Value(ctxKey{}))
		assert.False(t, ended(a))

		cancel(errGone)
		synctest.Wait()
		assert.ErrorIs(t, a.Err(), context.Canceled)
		assert.ErrorIs(t, context.Cause(a), errGone)
		d.finish(a)

		b := d.start(context.Background())
		assert.NoError(t, b.Err(), "a cancelled context is not reused")
		d.finish(b)
	})
}

// TestDeadlinesFinishStopsFollowing: a caller that ends after its attempt
// finished does not end the context kept for the next attempt.
func TestDeadlinesFinishStopsFollowing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDeadlines(time.Minute)
		for range 10 {
			ctx, cancel := context.WithCancel(context.Background())
			a := d.start(ctx)
			d.finish(a)
			cancel()
			synctest.Wait()
			require.NoError(t, d.start(context.Background()).Err())
		}
	})
}
