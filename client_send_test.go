package amlpool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hangingServer answers nothing until the client goes away.
func hangingServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // only then does the server watch for a hang-up
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestAttemptTimeoutWithoutCallerDeadline(t *testing.T) {
	srv := hangingServer(t)
	c, err := New([]Endpoint{{URL: srv.URL + "/services/a/execute", APIKey: "k"}},
		WithAttemptTimeout(20*time.Millisecond), WithoutRetries())
	require.NoError(t, err)
	defer c.Close()

	ctx := context.Background()
	_, err = c.Do(ctx, []byte(`{}`))
	assert.ErrorIs(t, err, context.DeadlineExceeded, "the attempt timeout must end a call whose ctx has no deadline")
	assert.NoError(t, ctx.Err())
}

func TestCallerDeadlineBeforeAttemptTimeout(t *testing.T) {
	srv := hangingServer(t)
	c, err := New([]Endpoint{{URL: srv.URL + "/services/a/execute", APIKey: "k"}}, WithoutRetries())
	require.NoError(t, err)
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = c.Do(ctx, []byte(`{}`))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, 0, c.Stats().Endpoints[0].InFlight, "slot released")
}

func TestReadBody(t *testing.T) {
	body := strings.Repeat("x", 700) // more than one 512-byte growth step
	tests := []struct {
		name    string
		r       func() io.Reader
		size    int64
		limit   int64
		want    string
		tooLong bool
	}{
		{name: "known size", r: func() io.Reader { return strings.NewReader(body) }, size: 700, limit: 1000, want: body},
		{name: "unknown size", r: func() io.Reader { return strings.NewReader(body) }, size: -1, limit: 1000, want: body},
		{name: "one byte at a time", r: func() io.Reader { return iotest.OneByteReader(strings.NewReader(body)) }, size: -1, limit: 1000, want: body},
		{name: "EOF with the data", r: func() io.Reader { return iotest.DataErrReader(strings.NewReader(body)) }, size: 700, limit: 1000, want: body},
		{name: "empty", r: func() io.Reader { return strings.NewReader("") }, size: 0, limit: 10, want: ""},
		{name: "exactly the limit", r: func() io.Reader { return strings.NewReader(body) }, size: -1, limit: 700, want: body},
		{name: "declared size over the limit", r: func() io.Reader { return strings.NewReader(body) }, size: 700, limit: 699, tooLong: true},
		{name: "undeclared size over the limit", r: func() io.Reader { return strings.NewReader(body) }, size: -1, limit: 699, tooLong: true},
		{name: "size understated", r: func() io.Reader { return strings.NewReader(body) }, size: 10, limit: 699, tooLong: true},
		// The largest limit: limit + 1 must not wrap to a read of nothing.
		{name: "no limit, known size", r: func() io.Reader { return strings.NewReader(body) }, size: 700, limit: math.MaxInt64, want: body},
		{name: "no limit, unknown size", r: func() io.Reader { return strings.NewReader(body) }, size: -1, limit: math.MaxInt64, want: body},
		// A length claimed and not sent is not allocated up front: 1<<50
		// bytes is past what make can give (a panic).
		{name: "no limit, size overstated", r: func() io.Reader { return strings.NewReader(body) }, size: 1 << 50, limit: math.MaxInt64, want: body},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readBody(tt.r(), tt.size, tt.limit)
			if tt.tooLong {
				assert.ErrorIs(t, err, ErrResponseTooLarge)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(got))
		})
	}
}

func TestReadBodyReadError(t *testing.T) {
	_, err := readBody(iotest.TimeoutReader(strings.NewReader("abc")), -1, 10)
	assert.ErrorIs(t, err, iotest.ErrTimeout)
}

// A body of known size costs one allocation: the buffer it is read into.
func TestReadBodyKnownSizeAllocatesOnce(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 300)
	r := bytes.NewReader(data)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(data)
		if _, err := readBody(r, int64(len(data)), 1000); err != nil {
			t.Fatal(err)
		}
	})
	assert.Equal(t, 1.0, allocs)
}

// TestAttemptTimeoutWithCancellableCaller: a ctx that can be cancelled but
// has no deadline (an http.Request's) is followed, and the timeout still
// ends the attempt.
func TestAttemptTimeoutWithCancellableCaller(t *testing.T) {
	srv := hangingServer(t)
	c, err := New([]Endpoint{{URL: srv.URL + "/services/a/execute", APIKey: "k"}},
		WithAttemptTimeout(20*time.Millisecond), WithoutRetries())
	require.NoError(t, err)
	defer c.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err = c.Do(ctx, []byte(`{}`))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "attempt timed out after 20ms")
	assert.NoError(t, ctx.Err())
}

// TestCallerCancelEndsAttempt: cancelling the caller's ctx ends the
// attempt in flight at once, with the caller's cause.
func TestCallerCancelEndsAttempt(t *testing.T) {
	arrived := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		close(arrived)
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	c, err := New([]Endpoint{{URL: srv.URL + "/services/a/execute", APIKey: "k"}}, WithoutRetries())
	require.NoError(t, err)
	defer c.Close()

	errGone := errors.New("caller gone")
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() {
		<-arrived
		cancel(errGone)
	}()
	_, err = c.Do(ctx, []byte(`{}`))
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 0, c.Stats().Endpoints[0].InFlight, "slot released")
}
