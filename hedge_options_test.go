package amlpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Hedging's options, its quantile, and hedges under a Limiter. The rig is
// hedge_test.go's.

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
	n       atomic.Int32
	grant   int32
	held    atomic.Int32
	waiting chan struct{} // if not nil, gets a value each time an acquisition starts to block
	denied  chan struct{} // gets a value each time an acquisition gives up
}

func (l *fleetLimiter) Acquire(ctx context.Context, _ []LimitedEndpoint) (Lease, error) {
	if l.n.Add(1) > l.grant {
		if l.waiting != nil {
			l.waiting <- struct{}{}
		}
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
		lim := &fleetLimiter{grant: 1, waiting: make(chan struct{}, 1), denied: make(chan struct{}, 1)}
		release := make(chan struct{})
		rig := newHedgeRig(t, 2, func(_ int32, name string, w http.ResponseWriter, _ *http.Request) {
			<-release
			fmt.Fprint(w, `{}`)
		}, WithHedging(100*time.Millisecond), WithLimiter(lim))
		res := rig.do(context.Background())
		<-rig.arrived
		require.True(t, rig.clk.WaitTimers(1, t.Context().Done()))
		rig.clk.Advance(100 * time.Millisecond)
		<-lim.waiting  // the hedge waits at the Limiter
		close(release) // the first copy answers meanwhile
		require.NoError(t, (<-res).err)
		<-lim.denied
		assert.Empty(t, rig.arrived, "the hedge was never sent")
		assert.Zero(t, lim.held.Load(), "leases released")
		for _, e := range rig.c.Stats().Endpoints {
			assert.Zero(t, e.InFlight, e.Name)
		}
	})
}

// heldLimiter grants the first acquisition at once; the others wait, each
// saying so on waiting, until open is closed or their ctx ends (denied
// counts those). It counts leases held.
type heldLimiter struct {
	n, held, denied atomic.Int32
	waiting         chan struct{}
	open            chan struct{}
}

func newHeldLimiter() *heldLimiter {
	return &heldLimiter{waiting: make(chan struct{}, 8), open: make(chan struct{})}
}

func (l *heldLimiter) Acquire(ctx context.Context, _ []LimitedEndpoint) (Lease, error) {
	if l.n.Add(1) > 1 {
		l.waiting <- struct{}{}
		select {
		case <-l.open:
		case <-ctx.Done():
			l.denied.Add(1)
			return nil, ctx.Err()
		}
	}
	l.held.Add(1)
	return heldLease{l}, nil
}

type heldLease struct{ l *heldLimiter }

func (heldLease) Index() int { return 0 }
func (h heldLease) Release() { h.l.held.Add(-1) }

// heldRequest is a request a heldTransport holds until the test answers it
// with a status.
type heldRequest struct {
	host, body string
	answer     chan int
}

// heldTransport holds every request, in memory, until the test answers it
// (or the request's ctx ends, or quit is closed): it sends each on arrived.
type heldTransport struct {
	arrived chan heldRequest
	quit    chan struct{}
}

func (h *heldTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	body, _ := io.ReadAll(r.Body)
	req := heldRequest{host: r.URL.Host, body: string(body), answer: make(chan int, 1)}
	h.arrived <- req
	var status int
	select {
	case status = <-req.answer:
	case <-r.Context().Done():
		return nil, r.Context().Err()
	case <-h.quit:
		return nil, errors.New("test over")
	}
	reply := `{"Results":{}}`
	if status != http.StatusOK {
		reply = `{"error":{"code":"InternalError","message":"boom"}}`
	}
	return &http.Response{StatusCode: status, Status: http.StatusText(status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(reply)),
		ContentLength: int64(len(reply)), Request: r}, nil
}

// heldClient is, in a synctest bubble, a Client of two endpoints of one
// slot each, a.test and b.test, on a heldTransport, hedging after 100 ms,
// with lim for its Limiter.
func heldClient(t *testing.T, lim Limiter, opts ...Option) (*Client, *heldTransport) {
	rt := &heldTransport{arrived: make(chan heldRequest, 8), quit: make(chan struct{})}
	var eps []Endpoint
	for _, name := range []string{"a", "b"} {
		eps = append(eps, Endpoint{Name: name, APIKey: "k", MaxConcurrentCalls: 1,
			URL: "https://" + name + ".test/workspaces/w/services/" + name + "/execute?api-version=2.0&details=true"})
	}
	c, err := New(eps, append([]Option{WithHTTPClient(&http.Client{Transport: rt}),
		WithHedging(100 * time.Millisecond), WithLimiter(lim)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		close(rt.quit) // first: a request left held ends
		c.Close()
	})
	return c, rt
}

// A hedge waiting at the Limiter for the fleet's slot gives up once the
// first copy has ended, failed as much as succeeded: the attempt is over,
// and the call goes on at once (here, to its error) rather than waiting
// for a fleet slot to send a copy of it.
func TestHedgeWaitAtLimiterEndsWithTheFirstCopy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newHeldLimiter()
		c, rt := heldClient(t, lim, WithoutRetries())
		res := make(chan error, 1)
		go func() {
			_, err := c.Do(context.Background(), []byte(`{"id":"x"}`))
			res <- err
		}()
		first := <-rt.arrived
		<-lim.waiting // the hedge, after 100 ms, waits for the fleet's slot
		first.answer <- http.StatusInternalServerError
		err := <-res // without the fix: a deadlock, the call waiting on the hedge
		var apiErr *APIError
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, http.StatusInternalServerError, apiErr.StatusCode)
		assert.EqualValues(t, 1, lim.denied.Load(), "the hedge's wait ended")
		assert.Empty(t, rt.arrived, "no hedge sent")
		assert.Zero(t, budgetRetries(c.budget), "a hedge never sent spends no retry budget")
		assert.Zero(t, lim.held.Load(), "leases released")
		for _, e := range c.Stats().Endpoints {
			assert.Zero(t, e.InFlight, e.Name)
		}
	})
}

// A hedge that gets the fleet's slot once calls wait for ours is not sent:
// waiting calls come before hedges, with a Limiter too. Its slot goes to
// the waiting call.
func TestHedgeAtLimiterYieldsToWaitingCalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newHeldLimiter()
		c, rt := heldClient(t, lim)
		queued := make(chan struct{}, 1)
		SetQueueHook(c, func() { queued <- struct{}{} })
		res := make(chan error, 2)
		do := func(body string) {
			go func() {
				_, err := c.Do(context.Background(), []byte(body))
				res <- err
			}()
		}
		do(`{"id":"x"}`)
		first := <-rt.arrived
		<-lim.waiting // x's hedge holds the other endpoint's slot, and waits at the Limiter
		do(`{"id":"y"}`)
		<-queued // y waits for a slot of ours
		close(lim.open)
		second := <-rt.arrived
		assert.NotEqual(t, first.host, second.host)
		assert.Equal(t, `{"id":"y"}`, second.body, "the hedge went before the waiting call")
		second.answer <- http.StatusOK
		first.answer <- http.StatusOK
		for range 2 {
			assert.NoError(t, <-res)
		}
		assert.Zero(t, budgetRetries(c.budget), "a hedge never sent spends no retry budget")
		assert.Zero(t, lim.held.Load(), "leases released")
		for _, e := range c.Stats().Endpoints {
			assert.Zero(t, e.InFlight, e.Name)
			assert.EqualValues(t, 1, e.Calls, e.Name)
		}
	})
}

// A hedge waiting at the Limiter gives up as soon as a call comes to wait
// for our slots, rather than hold one of them until the first copy ends
// or the fleet's slot comes: it would not be sent anyway (waiting calls
// come first). The waiting call gets its slot at once, and a line bounded
// by WithMaxWaiting sheds no call for want of the slot the hedge held.
func TestHedgeAtLimiterGivesUpItsSlotToACallThatWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newHeldLimiter()
		c, rt := heldClient(t, lim, WithMaxWaiting(1))
		queued := make(chan struct{}, 4)
		SetQueueHook(c, func() { queued <- struct{}{} })
		res := make(chan error, 3)
		do := func(body string) {
			go func() {
				_, err := c.Do(context.Background(), []byte(body))
				res <- err
			}()
		}
		do(`{"id":"x"}`)
		first := <-rt.arrived
		<-lim.waiting // x's hedge holds the other endpoint's slot, and waits at the Limiter
		do(`{"id":"y"}`)
		<-queued // y waits for a slot of ours
		synctest.Wait()
		assert.EqualValues(t, 1, lim.denied.Load(), "the hedge's wait at the Limiter ended")
		assert.Zero(t, c.Stats().Waiting, "y still waits for the slot the hedge holds")
		do(`{"id":"z"}`) // no slot of ours: z waits, alone in line
		synctest.Wait()
		st := c.Stats()
		assert.Nil(t, st.Shed, "a call was shed")
		assert.Equal(t, 1, st.Waiting)

		close(lim.open)
		first.answer <- http.StatusOK
		for done := 0; done < 3; {
			select {
			case r := <-rt.arrived:
				r.answer <- http.StatusOK
			case err := <-res:
				assert.NoError(t, err)
				done++
			}
		}
		assert.Zero(t, budgetRetries(c.budget), "the hedge was never sent")
		assert.Zero(t, lim.held.Load(), "leases released")
		for _, e := range c.Stats().Endpoints {
			assert.Zero(t, e.InFlight, e.Name)
		}
	})
}

// A hedge whose wait at the Limiter SetEndpoints cuts short chooses again
// among the new endpoints, as a waiting call does, rather than give up.
func TestHedgeAtLimiterChoosesAgainAfterSetEndpoints(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newHeldLimiter()
		c, rt := heldClient(t, lim)
		res := make(chan error, 1)
		go func() {
			_, err := c.Do(context.Background(), []byte(`{"id":"x"}`))
			res <- err
		}()
		first := <-rt.arrived
		<-lim.waiting // the hedge waits at the Limiter
		eps := []Endpoint{}
		for _, name := range []string{"a", "b", "c"} {
			eps = append(eps, Endpoint{Name: name, APIKey: "k", MaxConcurrentCalls: 1,
				URL: "https://" + name + ".test/workspaces/w/services/" + name + "/execute?api-version=2.0&details=true"})
		}
		require.NoError(t, c.SetEndpoints(eps))
		synctest.Wait()
		assert.Len(t, lim.waiting, 1, "the hedge does not wait at the Limiter again")
		close(lim.open)
		synctest.Wait()
		select {
		case hedge := <-rt.arrived:
			assert.NotEqual(t, first.host, hedge.host)
			hedge.answer <- http.StatusOK
		default:
			t.Error("no hedge sent")
		}
		first.answer <- http.StatusOK
		require.NoError(t, <-res)
		synctest.Wait()
		assert.Zero(t, lim.held.Load(), "leases released")
		var calls int64
		for _, e := range c.Stats().Endpoints {
			assert.Zero(t, e.InFlight, e.Name)
			calls += e.Calls
		}
		assert.EqualValues(t, 2, calls, "the first copy and its hedge")
	})
}

// A hedged copy's wait for the fleet's slot is a wait for a slot, recorded
// in amlpool.slot.wait.duration as a call's is: the time it got a slot
// after, or, when the first copy ended meanwhile, as cancelled.
func TestHedgeWaitAtLimiterIsRecorded(t *testing.T) {
	for _, sent := range []bool{true, false} {
		t.Run(fmt.Sprintf("sent=%v", sent), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reader := sdkmetric.NewManualReader()
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
				defer mp.Shutdown(context.Background())
				lim := newHeldLimiter()
				c, rt := heldClient(t, lim, WithoutRetries(), WithMeterProvider(mp))
				res := make(chan error, 1)
				go func() {
					_, err := c.Do(context.Background(), []byte(`{"id":"x"}`))
					res <- err
				}()
				first := <-rt.arrived
				<-lim.waiting               // the hedge, after 100 ms, waits for the fleet's slot
				time.Sleep(2 * time.Second) // the bubble's clock: the hedge waits 2 s
				if sent {
					close(lim.open)
					hedge := <-rt.arrived
					hedge.answer <- http.StatusOK
				} else {
					first.answer <- http.StatusOK
				}
				require.NoError(t, <-res)
				var rm metricdata.ResourceMetrics
				require.NoError(t, reader.Collect(context.Background(), &rm))
				n, sum := histogram(t, rm, "amlpool.slot.wait.duration")
				assert.EqualValues(t, 2, n, "the first copy's wait and the hedge's")
				assert.Equal(t, 2.0, sum, "the hedge waited 2 s at the Limiter, the first copy none")
				n, _ = histogram(t, rm, "amlpool.slot.wait.duration", keyErrorType.String("cancelled"))
				if sent {
					assert.Zero(t, n)
				} else {
					assert.EqualValues(t, 1, n, "the hedge's wait ended with the first copy")
				}
			})
		})
	}
}
