package amlpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/clock"
)

// hedgeRig is a Client over two loopback endpoints, each with a cap of mcc,
// on a fake clock. handle serves the n-th request (1-based, across both
// endpoints) to endpoint name.
type hedgeRig struct {
	c       *Client
	clk     *clock.Fake
	arrived chan string  // the endpoint of each request, in arrival order
	ended   chan outcome // every attempt's outcome, as observers see it
}

func newHedgeRig(t *testing.T, mcc int, handle func(n int32, name string, w http.ResponseWriter, r *http.Request), opts ...Option) *hedgeRig {
	t.Helper()
	rig := &hedgeRig{clk: clock.NewFake(), arrived: make(chan string, 64), ended: make(chan outcome, 64)}
	var n atomic.Int32
	var eps []Endpoint
	for _, name := range []string{"a", "b"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Read the body, so the server notices a client that gives up
			// (it watches the connection only once the body is consumed).
			io.Copy(io.Discard, r.Body)
			k := n.Add(1) // before the test hears of it: arrival order
			rig.arrived <- name
			handle(k, name, w, r)
		}))
		t.Cleanup(srv.Close)
		eps = append(eps, Endpoint{Name: name, URL: srv.URL, APIKey: "k", MaxConcurrentCalls: mcc})
	}
	c, err := New(eps, append([]Option{WithClock(rig.clk)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.observers = append(c.observers, rig)
	rig.c = c
	return rig
}

func (rig *hedgeRig) attemptDone(o *outcome) { rig.ended <- *o }

// hangFirst: the first request hangs until the client gives up on it; the
// others answer at once.
func hangFirst(cancelled chan<- string) func(int32, string, http.ResponseWriter, *http.Request) {
	return func(n int32, name string, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			<-r.Context().Done()
			cancelled <- name
			return
		}
		fmt.Fprintf(w, `{"from":%q}`, name)
	}
}

type doResult struct {
	data []byte
	err  error
}

func (rig *hedgeRig) do(ctx context.Context) <-chan doResult {
	ch := make(chan doResult, 1)
	go func() {
		data, err := rig.c.Do(ctx, []byte(`{}`))
		ch <- doResult{data, err}
	}()
	return ch
}

func TestHedgeAfterDelayFirstSuccessWins(t *testing.T) {
	cancelled := make(chan string, 1)
	rig := newHedgeRig(t, 2, hangFirst(cancelled), WithHedging(100*time.Millisecond))
	res := rig.do(context.Background())
	first := <-rig.arrived
	require.True(t, rig.clk.WaitTimers(1, t.Context().Done()))
	rig.clk.Advance(99 * time.Millisecond)
	select {
	case name := <-rig.arrived:
		t.Fatalf("hedged to %s before the delay", name)
	default:
	}
	rig.clk.Advance(time.Millisecond)

	second := <-rig.arrived
	r := <-res
	require.NoError(t, r.err)
	assert.NotEqual(t, first, second, "the copy goes to another endpoint")
	assert.JSONEq(t, fmt.Sprintf(`{"from":%q}`, second), string(r.data))
	assert.Equal(t, first, <-cancelled, "the losing copy is cancelled")

	st := rig.c.Stats()
	for _, e := range st.Endpoints {
		assert.Zero(t, e.InFlight, "%s: slot released", e.Name)
		assert.EqualValues(t, 1, e.Calls, "%s", e.Name)
		assert.Zero(t, e.Errors, "%s: an abandoned copy is no failure", e.Name)
	}
	require.Len(t, rig.ended, 2)
	for range 2 {
		o := <-rig.ended
		if o.ep.name == first {
			assert.True(t, o.abandoned, "loser abandoned")
			assert.False(t, o.hedge)
		} else {
			assert.True(t, o.hedge, "winner is the hedge")
			assert.NoError(t, o.err)
		}
	}
}

func TestHedgeNotSentWhenReplyComesFirst(t *testing.T) {
	rig := newHedgeRig(t, 2, func(_ int32, name string, w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{}`)
	}, WithHedging(100*time.Millisecond))
	for range 5 {
		_, err := rig.c.Do(context.Background(), []byte(`{}`))
		require.NoError(t, err)
	}
	assert.Len(t, rig.arrived, 5, "one request per call")
	assert.Zero(t, rig.clk.Timers(), "hedge timers stopped")
}

func TestHedgeNotSent(t *testing.T) {
	noop := func(*Client, *endpoint) func() { return func() {} }
	tests := []struct {
		name  string
		opts  []Option
		block func(c *Client, other *endpoint) (undo func())
	}{
		{"other endpoint full", nil, func(c *Client, other *endpoint) func() {
			require.True(t, other.take())
			return func() { c.pool.release(other) }
		}},
		{"calls waiting for slots", nil, func(c *Client, _ *endpoint) func() {
			c.pool.nwait.Add(1) // as if a call waited in line; it has priority
			return func() { c.pool.nwait.Add(-1) }
		}},
		{"retry budget spent", []Option{WithRetryBudget(0, 0)}, noop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cancelled := make(chan string, 1)
			opts := append([]Option{WithHedging(100 * time.Millisecond)}, tt.opts...)
			rig := newHedgeRig(t, 1, hangFirst(cancelled), opts...)
			ctx, cancel := context.WithCancel(context.Background())
			res := rig.do(ctx)
			first := <-rig.arrived
			other := rig.c.eps[0]
			if other.name == first {
				other = rig.c.eps[1]
			}
			undo := tt.block(rig.c, other)
			require.True(t, rig.clk.WaitTimers(1, t.Context().Done()))
			rig.clk.Advance(time.Second)
			cancel()
			r := <-res
			undo()
			assert.ErrorIs(t, r.err, context.Canceled)
			assert.Empty(t, rig.arrived, "no hedge")
			assert.Equal(t, first, <-cancelled)
		})
	}
}

// After both copies fail, the retry goes to the endpoint neither tried.
func TestHedgeEndpointCountsAsTried(t *testing.T) {
	var n atomic.Int32
	arrived := make(chan string, 8)
	releaseFirst := make(chan struct{})
	var eps []Endpoint
	for _, name := range []string{"a", "b", "c"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			k := n.Add(1)
			arrived <- name
			switch k {
			case 1:
				<-releaseFirst
				w.WriteHeader(http.StatusInternalServerError)
			case 2:
				w.WriteHeader(http.StatusInternalServerError)
			default:
				fmt.Fprintf(w, `{"from":%q}`, name)
			}
		}))
		t.Cleanup(srv.Close)
		eps = append(eps, Endpoint{Name: name, URL: srv.URL, APIKey: "k"})
	}
	clk := clock.NewFake()
	c, err := New(eps, WithClock(clk), WithHedging(time.Second),
		WithBackoff(Backoff{Initial: time.Millisecond, Multiplier: 1, Max: time.Millisecond, Jitter: 0.5}))
	require.NoError(t, err)
	defer c.Close()
	res := make(chan doResult, 1)
	go func() { data, err := c.Do(context.Background(), []byte(`{}`)); res <- doResult{data, err} }()

	first := <-arrived
	require.True(t, clk.WaitTimers(1, t.Context().Done()))
	clk.Advance(time.Second)
	hedge := <-arrived
	close(releaseFirst)
	require.True(t, clk.WaitTimers(1, t.Context().Done())) // the backoff
	clk.Advance(time.Second)
	third := <-arrived
	r := <-res
	require.NoError(t, r.err)
	assert.ElementsMatch(t, []string{"a", "b", "c"}, []string{first, hedge, third})
	assert.JSONEq(t, fmt.Sprintf(`{"from":%q}`, third), string(r.data))
}

func TestHedgeBothFailFirstCopyErrorReturned(t *testing.T) {
	releaseFirst := make(chan struct{})
	hedgeRead := make(chan struct{})
	rt := &bodyClosed{closed: hedgeRead, nth: 1} // the hedge answers first
	rig := newHedgeRig(t, 2, func(n int32, _ string, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			<-releaseFirst
		}
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"error":{"code":"BadArgument","message":"copy %d"}}`, n)
	}, WithHedging(100*time.Millisecond), WithHTTPClient(&http.Client{Transport: rt}))
	res := rig.do(context.Background())
	first := <-rig.arrived
	require.True(t, rig.clk.WaitTimers(1, t.Context().Done()))
	rig.clk.Advance(100 * time.Millisecond)
	<-rig.arrived
	<-hedgeRead // the hedge has its 400
	select {
	case <-res:
		t.Fatal("returned before the first copy ended")
	default:
	}
	close(releaseFirst)
	r := <-res
	var apiErr *APIError
	require.True(t, errors.As(r.err, &apiErr), "%v", r.err)
	assert.Equal(t, first, apiErr.Endpoint)
	assert.Contains(t, apiErr.Message, "copy 1")
	assert.Len(t, rig.ended, 2, "observers heard of both copies")
}

// bodyClosed is a RoundTripper that closes closed once the client has read
// and closed the body of the nth response to come back.
type bodyClosed struct {
	n      atomic.Int32
	nth    int32
	closed chan struct{}
}

func (b *bodyClosed) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && b.n.Add(1) == b.nth {
		resp.Body = &onClose{ReadCloser: resp.Body, f: func() { close(b.closed) }}
	}
	return resp, err
}

type onClose struct {
	io.ReadCloser
	f func()
}

func (o *onClose) Close() error {
	err := o.ReadCloser.Close()
	o.f()
	return err
}

func TestHedgeCtxCancelEndsBothCopies(t *testing.T) {
	cancelled := make(chan string, 2)
	rig := newHedgeRig(t, 2, func(_ int32, name string, _ http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		cancelled <- name
	}, WithHedging(100*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	res := rig.do(ctx)
	<-rig.arrived
	require.True(t, rig.clk.WaitTimers(1, t.Context().Done()))
	rig.clk.Advance(100 * time.Millisecond)
	<-rig.arrived
	cancel()
	r := <-res
	assert.ErrorIs(t, r.err, context.Canceled)
	assert.ElementsMatch(t, []string{"a", "b"}, []string{<-cancelled, <-cancelled})
	for _, e := range rig.c.Stats().Endpoints {
		assert.Zero(t, e.InFlight, e.Name)
	}
}

func TestHedgeQuantileWaitsForSamples(t *testing.T) {
	rig := newHedgeRig(t, 2, func(_ int32, _ string, w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{}`)
	}, WithHedgingQuantile(0.5))
	for i := range 20 { // 10 / (1 − 0.5) samples needed
		_, ok := rig.c.hedge.after()
		require.False(t, ok, "hedging after %d samples", i)
		_, err := rig.c.Do(context.Background(), []byte(`{}`))
		require.NoError(t, err)
		<-rig.arrived
	}
	d, ok := rig.c.hedge.after()
	assert.True(t, ok)
	// The fake clock never moved: every latency was 0, in the first bucket.
	assert.Equal(t, time.Duration(bucketTop(0)), d)
}

func TestHedgeOptionsValidated(t *testing.T) {
	ep := []Endpoint{{URL: "https://h/workspaces/w/services/e/execute", APIKey: "k"}}
	tests := []struct {
		opt   Option
		field string
	}{
		{WithHedging(0), "WithHedging"},
		{WithHedging(-time.Second), "WithHedging"},
		{WithHedgingQuantile(0), "WithHedgingQuantile"},
		{WithHedgingQuantile(1), "WithHedgingQuantile"},
		{WithHedgingQuantile(math.NaN()), "WithHedgingQuantile"},
	}
	for _, tt := range tests {
		_, err := New(ep, tt.opt)
		var ce *ConfigError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, tt.field, ce.Field)
		assert.ErrorIs(t, err, ErrInvalidConfig)
	}
	c, err := New(ep, WithHedging(time.Second), WithHedgingQuantile(0.9))
	require.NoError(t, err, "the later option wins")
	assert.NotNil(t, c.hedge.window)
	c.Close()
}

// fleetLimiter grants the first n acquisitions at once and blocks the rest
// until their ctx ends; it counts leases held.
type fleetLimiter struct {
	n      atomic.Int32
	grant  int32
	held   atomic.Int32
	denied chan struct{} // gets a value each time an acquisition gives up
}

func (l *fleetLimiter) Acquire(ctx context.Context, _ []LimitedEndpoint) (Lease, error) {
	if l.n.Add(1) > l.grant {
		<-ctx.Done()
		l.denied <- struct{}{}
		return nil, ctx.Err()
	}
	l.held.Add(1)
	return fleetLease{l}, nil
}

type fleetLease struct{ l *fleetLimiter }

func (fleetLease) Index() int { return 0 }
func (f fleetLease) Release() { f.l.held.Add(-1) }

// With a Limiter, a hedge also needs the fleet's slot: it waits for one
// until the first copy answers, and holds none afterwards.
func TestHedgeWithLimiter(t *testing.T) {
	t.Run("fleet slot free", func(t *testing.T) {
		lim := &fleetLimiter{grant: 2, denied: make(chan struct{}, 1)}
		cancelled := make(chan string, 1)
		rig := newHedgeRig(t, 2, hangFirst(cancelled), WithHedging(100*time.Millisecond), WithLimiter(lim))
		res := rig.do(context.Background())
		first := <-rig.arrived
		require.True(t, rig.clk.WaitTimers(1, t.Context().Done()))
		rig.clk.Advance(100 * time.Millisecond)
		assert.NotEqual(t, first, <-rig.arrived)
		require.NoError(t, (<-res).err)
		assert.Equal(t, first, <-cancelled)
		assert.Zero(t, lim.held.Load(), "leases released")
	})
	t.Run("fleet full", func(t *testing.T) {
		lim := &fleetLimiter{grant: 1, denied: make(chan struct{}, 1)}
		release := make(chan struct{})
		rig := newHedgeRig(t, 2, func(_ int32, name string, w http.ResponseWriter, _ *http.Request) {
			<-release
			fmt.Fprint(w, `{}`)
		}, WithHedging(100*time.Millisecond), WithLimiter(lim))
		res := rig.do(context.Background())
		<-rig.arrived
		require.True(t, rig.clk.WaitTimers(1, t.Context().Done()))
		rig.clk.Advance(100 * time.Millisecond)
		close(release) // the first copy answers while the hedge waits at the Limiter
		require.NoError(t, (<-res).err)
		<-lim.denied
		assert.Empty(t, rig.arrived, "the hedge was never sent")
		assert.Zero(t, lim.held.Load(), "leases released")
		for _, e := range rig.c.Stats().Endpoints {
			assert.Zero(t, e.InFlight, e.Name)
		}
	})
}
