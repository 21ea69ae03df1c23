package amlpool

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

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
