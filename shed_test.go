package amlpool

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stepServer is an endpoint whose calls each wait for a value on step
// (or for their client to go, or the test to end), after saying on
// arrived that they came.
func stepServer(t *testing.T) (srv *httptest.Server, arrived, step chan struct{}) {
	arrived, step = make(chan struct{}, 10), make(chan struct{})
	quit := make(chan struct{})
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		select {
		case <-step:
		case <-r.Context().Done():
		case <-quit:
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"Results":{}}`)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(quit) }) // first, should the test stop early: Close waits for the handlers
	return srv, arrived, step
}

// Shed calls fail with ErrShed, are counted in Stats and the metrics by
// priority, and are logged once per spell of shedding.
func TestShedCallsAreCountedAndLogged(t *testing.T) {
	srv, arrived, step := stepServer(t)
	o := newObserved(t, []Endpoint{{Name: "one", URL: srv.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1}}, WithMaxWaiting(2))
	queued := make(chan struct{}, 10)
	SetQueueHook(o.Client, func() { queued <- struct{}{} })
	type end struct {
		id  string
		err error
	}
	ends := make(chan end, 10)
	call := func(id string, p Priority) {
		go func() {
			_, err := o.Do(WithPriority(context.Background(), p), []byte(`{}`))
			ends <- end{id, err}
		}()
	}
	const warn = "amlpool: the line of waiting calls is full; shedding calls until it empties"

	// One spell: the line holds two Low calls; a High one sheds the newer,
	// a Normal one the other, and a second Normal one is refused.
	call("first", PriorityNormal)
	<-arrived
	for _, id := range []string{"low1", "low2"} {
		call(id, PriorityLow)
		<-queued
	}
	call("high", PriorityHigh)
	<-queued
	got := <-ends
	assert.Equal(t, "low2", got.id)
	assert.ErrorIs(t, got.err, ErrShed)
	assert.ErrorIs(t, got.err, ErrNoCapacity)
	assert.Contains(t, got.err.Error(), "a call of higher priority took this one's place")
	call("normal1", PriorityNormal)
	<-queued
	assert.Equal(t, "low1", (<-ends).id)
	call("normal2", PriorityNormal)
	got = <-ends
	assert.Equal(t, "normal2", got.id)
	assert.ErrorIs(t, got.err, ErrShed)

	assert.Equal(t, map[Priority]int64{PriorityLow: 2, PriorityNormal: 1}, o.Stats().Shed)
	rm := o.collect(t)
	assert.EqualValues(t, 2, intValue(t, rm, "amlpool.slot.shed", keyPriority.String("low")))
	assert.EqualValues(t, 1, intValue(t, rm, "amlpool.slot.shed", keyPriority.String("normal")))
	n, _ := histogram(t, rm, "amlpool.slot.wait.duration", keyErrorType.String("shed"))
	assert.EqualValues(t, 3, n)
	assertStatsAgree(t, o)
	lines := o.logLines(t, warn)
	require.Len(t, lines, 1, "one line per spell")
	assert.Equal(t, "low", lines[0]["priority"])
	assert.EqualValues(t, 2, lines[0]["max_waiting"])

	// The line empties: the spell ends, and the next shed call starts a
	// new one.
	for range 2 { // first, then high and normal1
		step <- struct{}{}
		<-arrived
	}
	step <- struct{}{}
	for range 3 {
		assert.NoError(t, (<-ends).err)
	}
	require.Equal(t, 0, o.Stats().Waiting)
	call("again", PriorityNormal)
	<-arrived
	for _, id := range []string{"w1", "w2", "refused"} {
		call(id, PriorityHigh)
		if id != "refused" {
			<-queued
		}
	}
	got = <-ends
	assert.Equal(t, "refused", got.id)
	assert.ErrorIs(t, got.err, ErrShed)
	assert.Len(t, o.logLines(t, warn), 2, "a second spell")
	assert.Equal(t, map[Priority]int64{PriorityLow: 2, PriorityNormal: 1, PriorityHigh: 1}, o.Stats().Shed)
	for range 2 {
		step <- struct{}{}
		<-arrived
	}
	step <- struct{}{}
	for range 3 {
		assert.NoError(t, (<-ends).err)
	}
	assertStatsAgree(t, o)
}

func TestMetricsShowTiers(t *testing.T) {
	ok := newFakeAML(t, always(200))
	eps := []Endpoint{ok.endpoint("near", 1), ok.endpoint("far", 1)}
	eps[1].Tier = 3
	o := newObserved(t, eps)
	rm := o.collect(t)
	assert.EqualValues(t, 0, intValue(t, rm, "amlpool.endpoint.tier", keyEndpoint.String("near")))
	assert.EqualValues(t, 3, intValue(t, rm, "amlpool.endpoint.tier", keyEndpoint.String("far")))
	assertStatsAgree(t, o)
}

// gatedCtx is a context whose Value waits, once armed, until open is
// closed: it holds its call back at the first look it takes at its ctx.
type gatedCtx struct {
	context.Context
	armed atomic.Bool
	open  chan struct{}
}

func (g *gatedCtx) Value(key any) any {
	if g.armed.Load() {
		<-g.open
	}
	return g.Context.Value(key)
}

// Each spell of shedding gets its Warn line, even when the call shed first
// in it is slow to get back (here, held back until a second spell has
// begun and been logged): the spells are told apart where calls are shed,
// not by counting them afterwards.
func TestShedSpellsAreLoggedApart(t *testing.T) {
	srv, arrived, step := stepServer(t)
	o := newObserved(t, []Endpoint{{Name: "one", URL: srv.URL + "/x", APIKey: secretKey, MaxConcurrentCalls: 1}}, WithMaxWaiting(1))
	queued := make(chan struct{}, 10)
	SetQueueHook(o.Client, func() { queued <- struct{}{} })
	type end struct {
		id  string
		err error
	}
	ends := make(chan end, 10)
	call := func(id string, ctx context.Context) {
		go func() {
			_, err := o.Do(ctx, []byte(`{}`))
			ends <- end{id, err}
		}()
	}
	const warn = "amlpool: the line of waiting calls is full; shedding calls until it empties"

	call("first", context.Background())
	<-arrived
	slow := &gatedCtx{Context: WithPriority(context.Background(), PriorityLow), open: make(chan struct{})}
	call("slow", slow)
	<-queued
	slow.armed.Store(true)
	call("high", WithPriority(context.Background(), PriorityHigh)) // sheds slow: spell 1
	<-queued
	step <- struct{}{} // first ends; high takes its slot: the line is empty
	<-arrived
	assert.Equal(t, "first", (<-ends).id)
	require.Equal(t, 0, o.Stats().Waiting)
	call("waits", context.Background())
	<-queued
	call("refused", context.Background()) // spell 2
	got := <-ends
	require.Equal(t, "refused", got.id)
	assert.ErrorIs(t, got.err, ErrShed)
	assert.Len(t, o.logLines(t, warn), 1, "spell 2's")

	close(slow.open)
	got = <-ends
	require.Equal(t, "slow", got.id)
	assert.ErrorIs(t, got.err, ErrShed)
	lines := o.logLines(t, warn)
	if assert.Len(t, lines, 2, "spell 1's too") {
		assert.Equal(t, "normal", lines[0]["priority"])
		assert.Equal(t, "low", lines[1]["priority"])
	}
	step <- struct{}{} // high ends; waits takes its slot
	<-arrived
	step <- struct{}{}
	for range 2 {
		assert.NoError(t, (<-ends).err)
	}
	assertStatsAgree(t, o)
}
