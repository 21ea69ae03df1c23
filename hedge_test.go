package amlpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/amlpool/amlpool/internal/clock"
	"github.com/amlpool/amlpool/internal/pool"
)

// hedgeRig is a Client over two loopback endpoints, each with a cap of mcc,
// on a fake clock. handle serves the n-th request (1-based, across both
// endpoints) to endpoint name.
type hedgeRig struct {
	c       *Client
	clk     *clock.Fake
	arrived chan string       // the endpoint of each request, in arrival order
	ended   chan attemptEnded // every attempt, as the telemetry hears of it once concluded
}

// attemptEnded is what an attempt's span says of it.
type attemptEnded struct {
	endpoint string
	outcome  string // an outcomeKind's name
	hedge    bool
	failed   bool // the span's status is an error
}

// attemptSpans is a SpanProcessor that sends every ended attempt span on.
type attemptSpans chan attemptEnded

func (attemptSpans) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (attemptSpans) Shutdown(context.Context) error                  { return nil }
func (attemptSpans) ForceFlush(context.Context) error                { return nil }

func (ch attemptSpans) OnEnd(s sdktrace.ReadOnlySpan) {
	if s.Name() != "POST" {
		return // the call's span
	}
	a := spanAttrs(s)
	ch <- attemptEnded{endpoint: a[keyEndpoint].AsString(), outcome: a[keyOutcome].AsString(),
		hedge: a[keyHedge].AsBool(), failed: s.Status().Code == codes.Error}
}

func newHedgeRig(t *testing.T, mcc int, handle func(n int32, name string, w http.ResponseWriter, r *http.Request), opts ...Option) *hedgeRig {
	t.Helper()
	rig := &hedgeRig{clk: clock.NewFake(), arrived: make(chan string, 64), ended: make(chan attemptEnded, 64)}
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
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(attemptSpans(rig.ended)))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	c, err := New(eps, append([]Option{WithClock(rig.clk), WithTracerProvider(tp)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	rig.c = c
	return rig
}

// other returns the endpoint of c that is not named name.
func other(c *Client, name string) *pool.Endpoint {
	eps := c.pool.Set().Eps
	if eps[0].Name() == name {
		return eps[1]
	}
	return eps[0]
}

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
		a := <-rig.ended
		if a.endpoint == first {
			assert.Equal(t, "abandoned", a.outcome, "loser abandoned")
			assert.False(t, a.hedge)
		} else {
			assert.True(t, a.hedge, "winner is the hedge")
			assert.Equal(t, "success", a.outcome)
			assert.False(t, a.failed)
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
	noop := func(*testing.T, *Client, *pool.Endpoint) func() { return func() {} }
	tests := []struct {
		name  string
		opts  []Option
		block func(t *testing.T, c *Client, other *pool.Endpoint) (undo func())
	}{
		{"other endpoint full", nil, func(t *testing.T, c *Client, other *pool.Endpoint) func() {
			slot, ok := c.pool.TryTake(other)
			require.True(t, ok)
			return func() { c.pool.Release(slot, &pool.Report{Result: pool.Unsent}, nil) }
		}},
		{"calls waiting for slots", nil, func(t *testing.T, c *Client, other *pool.Endpoint) func() {
			// A call that may not use the other endpoint waits for the
			// first one's slot; it has priority over a hedge.
			queued := make(chan struct{})
			c.pool.OnQueue = func() { close(queued) }
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				x := pool.Exclusion{On: true}
				x.Tried.Add(other)
				if slot, err := c.pool.Acquire(ctx, &x, -1); err == nil {
					c.pool.Release(slot, &pool.Report{Result: pool.Unsent}, nil)
				}
			}()
			<-queued
			require.Equal(t, 1, c.pool.Waiting())
			return func() { cancel(); <-done }
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
			undo := tt.block(t, rig.c, other(rig.c, first))
			require.True(t, rig.clk.WaitTimers(1, t.Context().Done()))
			rig.clk.Advance(time.Second)
			cancel()
			r := <-res
			undo()
			assert.ErrorIs(t, r.err, context.Canceled)
			assert.Empty(t, rig.arrived, "no hedge")
			// A hedge cancelled before its request went out would not have
			// arrived, but would be an attempt all the same.
			assert.Len(t, rig.ended, 1, "one attempt")
			assert.Equal(t, first, <-cancelled)
			calls := int64(0)
			for _, e := range rig.c.Stats().Endpoints {
				assert.Zero(t, e.InFlight, e.Name)
				calls += e.Calls
			}
			assert.EqualValues(t, 1, calls)
		})
	}
}

// A call whose ctx ended as its hedge timer fired gets no copy, though an
// endpoint has a free slot for one: the copy would be cancelled at once, an
// attempt (and a withdrawal from the retry budget) for nothing.
func TestHedgeNotStartedForEndedCall(t *testing.T) {
	rig := newHedgeRig(t, 1, hangFirst(make(chan string, 1)), WithHedging(100*time.Millisecond))
	eps := rig.c.pool.Set().Eps
	first, ok := rig.c.pool.TryTake(eps[0])
	require.True(t, ok)
	defer rig.c.pool.Release(first, &pool.Report{Result: pool.Unsent}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cl := &call{ex: pool.Exclusion{On: true}}
	copies := make(chan *attempt, 1)
	assert.Nil(t, rig.c.startHedge(ctx, ctx, cl, &attempt{n: 1, slot: first}, []byte(`{}`), copies))
	assert.Equal(t, 1, eps[1].Free(), "the other endpoint's slot is given back")
	assert.Empty(t, copies)
	assert.Empty(t, rig.arrived)
}

// A hedge timer that fires as the first copy answers (select picks either
// of two ready cases) sends no copy: it would be abandoned at once, or be a
// retry without backoff, and it would spend the retry budget.
func TestHedgeNotStartedAfterFirstAnswered(t *testing.T) {
	rig := newHedgeRig(t, 1, hangFirst(make(chan string, 1)), WithHedging(100*time.Millisecond))
	eps := rig.c.pool.Set().Eps
	first, ok := rig.c.pool.TryTake(eps[0])
	require.True(t, ok)
	defer rig.c.pool.Release(first, &pool.Report{Result: pool.Unsent}, nil)
	a := &attempt{n: 1, slot: first}
	copies := make(chan *attempt, 2)
	copies <- a // the first copy's reply, in before the hedge is weighed
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cl := &call{ex: pool.Exclusion{On: true}}
	if h := rig.c.startHedge(ctx, ctx, cl, a, []byte(`{}`), copies); h != nil {
		cancel()
		<-copies
		<-copies
		t.Fatal("a hedge was sent after the first copy had answered")
	}
	assert.Equal(t, 1, eps[1].Free(), "the other endpoint's slot is given back")
	assert.Len(t, copies, 1, "only the first copy")
	assert.Zero(t, budgetRetries(rig.c.budget), "nothing withdrawn from the retry budget")
	assert.Empty(t, rig.arrived)
}

// A hedge timer that fires after Close sends no copy: Close lets calls in
// flight finish their attempt, and starts no new request (it has closed the
// idle connections a copy would open again).
func TestHedgeNotStartedAfterClose(t *testing.T) {
	rig := newHedgeRig(t, 1, hangFirst(make(chan string, 1)), WithHedging(100*time.Millisecond))
	eps := rig.c.pool.Set().Eps
	first, ok := rig.c.pool.TryTake(eps[0])
	require.True(t, ok)
	defer rig.c.pool.Release(first, &pool.Report{Result: pool.Unsent}, nil)
	require.NoError(t, rig.c.Close())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cl := &call{ex: pool.Exclusion{On: true}}
	copies := make(chan *attempt, 1)
	if h := rig.c.startHedge(ctx, ctx, cl, &attempt{n: 1, slot: first}, []byte(`{}`), copies); h != nil {
		cancel()
		<-copies
		t.Fatal("a hedge was sent after Close")
	}
	assert.Equal(t, 1, eps[1].Free(), "the other endpoint's slot is free")
	assert.Empty(t, copies)
	assert.Empty(t, rig.arrived)
}

// errHook is a context whose Err runs hook once, the first time it is
// called: startHedge calls it first after taking the hedge's slot.
type errHook struct {
	context.Context
	hook func()
	once sync.Once
}

func (c *errHook) Err() error {
	c.once.Do(c.hook)
	return c.Context.Err()
}

// A call that joins the line after the hedge has read that none waits, and
// finds no slot free because the hedge took the last one (without the
// line's lock, as a release was about to hand it on), gets that slot: the
// hedge gives it back unsent and is not sent. Calls waiting for slots come
// before hedges.
func TestHedgeYieldsToCallThatJoinedLineAsItTookSlot(t *testing.T) {
	rig := newHedgeRig(t, 1, func(_ int32, name string, w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `{"from":%q}`, name)
	}, WithHedging(100*time.Millisecond))
	queued := make(chan struct{}, 1)
	SetQueueHook(rig.c, func() { queued <- struct{}{} })
	eps := rig.c.pool.Set().Eps
	first, ok := rig.c.pool.TryTake(eps[0])
	require.True(t, ok)
	defer rig.c.pool.Release(first, &pool.Report{Result: pool.Unsent}, nil)
	var waiting <-chan doResult
	ctx := &errHook{Context: context.Background(), hook: func() {
		// The hedge holds the other endpoint's slot: a call finds none
		// free, and joins the line.
		waiting = rig.do(context.Background())
		<-queued
	}}
	cl := &call{ex: pool.Exclusion{On: true}}
	copies := make(chan *attempt, 1)
	if h := rig.c.startHedge(ctx, ctx, cl, &attempt{n: 1, slot: first}, []byte(`{}`), copies); h != nil {
		<-copies
		<-waiting
		t.Fatal("the hedge was sent while a call waited for its slot")
	}
	require.NotNil(t, waiting, "the hook ran")
	r := <-waiting
	require.NoError(t, r.err)
	assert.JSONEq(t, `{"from":"b"}`, string(r.data))
	assert.Equal(t, "b", <-rig.arrived)
	assert.Empty(t, rig.arrived, "no hedge sent")
	assert.Empty(t, copies)
}

// WithHedgingQuantile's delay follows the last 10 to 20 seconds: after a
// quiet spell longer than that, the samples from before it no longer count,
// and no attempt is hedged until enough new ones are in.
func TestHedgeQuantileForgetsAfterQuietSpell(t *testing.T) {
	rig := newHedgeRig(t, 1, hangFirst(make(chan string, 1)), WithHedgingQuantile(0.5))
	h, p := rig.c.hedge, rig.c.pool
	for range 100 {
		h.window.add(p.Nanotime(), int64(50*time.Millisecond))
	}
	d, ok := h.after()
	require.True(t, ok, "the quantile is known")
	assert.InDelta(t, float64(50*time.Millisecond), float64(d), float64(5*time.Millisecond))

	rig.clk.Advance(25 * time.Second) // no attempt ends meanwhile
	d, ok = h.after()
	assert.False(t, ok, "no hedge on samples from 25 s ago: the delay would be %v", d)
}

// budgetRetries returns the retries withdrawn from b over its window.
func budgetRetries(b *retryBudget) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int64
	for i := range b.slots {
		n += b.slots[i].retries
	}
	return n
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
	assert.Len(t, rig.ended, 2, "the telemetry heard of both copies")
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
