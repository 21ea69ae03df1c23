package clock_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/amlpool/amlpool/internal/clock"
)

func TestFakeFiresTimersInOrderWhenDue(t *testing.T) {
	f := clock.NewFake()
	start := f.Now()
	late := f.NewTimer(2 * time.Second)
	early := f.NewTimer(time.Second)
	assert.Equal(t, 2, f.Timers())

	f.Advance(999 * time.Millisecond)
	assert.Empty(t, early.C())
	f.Advance(time.Millisecond)
	assert.Equal(t, start.Add(time.Second), <-early.C())
	assert.Empty(t, late.C())
	assert.Equal(t, 1, f.Timers())

	f.Advance(time.Hour)
	assert.Equal(t, start.Add(2*time.Second), <-late.C())
	assert.Equal(t, start.Add(time.Hour+time.Second), f.Now())
}

func TestFakeStopAndZeroTimers(t *testing.T) {
	f := clock.NewFake()
	tm := f.NewTimer(time.Second)
	assert.True(t, tm.Stop())
	assert.False(t, tm.Stop())
	f.Advance(time.Minute)
	assert.Empty(t, tm.C())

	now := f.NewTimer(0)
	assert.Equal(t, f.Now(), <-now.C())
	assert.Zero(t, f.Timers())
}

func TestFakeWaitTimers(t *testing.T) {
	f := clock.NewFake()
	done := make(chan struct{})
	close(done)
	assert.False(t, f.WaitTimers(1, done), "gives up when done is closed")

	got := make(chan bool)
	go func() { got <- f.WaitTimers(2, nil) }()
	f.NewTimer(time.Second)
	f.NewTimer(time.Second)
	require.True(t, <-got)
}

func TestRealTimerFires(t *testing.T) {
	tm := clock.Real.NewTimer(time.Nanosecond)
	<-tm.C()
	assert.False(t, tm.Stop())
	assert.False(t, clock.Real.Now().IsZero())
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
