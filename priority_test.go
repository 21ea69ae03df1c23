package amlpool_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// gated is an endpoint of one slot whose model takes calls one at a time,
// as the test says: each call it scores reports its id (its input's first
// cell) on started, then waits for step.
type gated struct {
	*amltest.Server
	started chan string
	step    chan struct{}
}

func newGated(t *testing.T) *gated {
	t.Helper()
	g := &gated{started: make(chan string, 100), step: make(chan struct{})}
	quit := make(chan struct{})
	g.Server = amltest.NewServer(amltest.Config{Name: "gated", MaxConcurrentCalls: 1,
		Score: func(in *amlpool.Request) (*amlpool.Response, error) {
			g.started <- fmt.Sprint(in.Inputs["input1"].Values[0][0])
			select {
			case <-g.step:
			case <-quit:
			}
			return amltest.Echo(in)
		}})
	t.Cleanup(g.Close)
	t.Cleanup(func() { close(quit) }) // first: the server waits for its calls
	return g
}

// next lets the call in the model answer and returns the id of the one
// that follows it.
func (g *gated) next() string {
	g.step <- struct{}{}
	return <-g.started
}

// caller makes calls to a Client whose line it watches (SetQueueHook).
type caller struct {
	t      *testing.T
	c      *amlpool.Client
	queued chan struct{}
	wg     sync.WaitGroup
}

func newCaller(t *testing.T, c *amlpool.Client) *caller {
	cl := &caller{t: t, c: c, queued: make(chan struct{}, 100)}
	amlpool.SetQueueHook(c, func() { cl.queued <- struct{}{} })
	t.Cleanup(cl.wg.Wait)
	return cl
}

// call starts a call with id at priority p under ctx, in a goroutine.
func (cl *caller) call(ctx context.Context, id string, p amlpool.Priority) {
	cl.wg.Go(func() {
		body := fmt.Sprintf(`{"Inputs":{"input1":{"ColumnNames":["id"],"Values":[[%q]]}},"GlobalParameters":{}}`, id)
		_, err := cl.c.Do(amlpool.WithPriority(ctx, p), []byte(body))
		assert.NoError(cl.t, err, id)
	})
}

// line makes a call and returns once it waits in line.
func (cl *caller) line(id string, p amlpool.Priority) {
	cl.call(context.Background(), id, p)
	<-cl.queued
}

// Waiting calls are served highest priority first, first come first served
// within one; priorities outside the three are clamped.
func TestPrioritiesOrderTheLine(t *testing.T) {
	g := newGated(t)
	c := newClient(t, []amlpool.Endpoint{g.Endpoint()})
	cl := newCaller(t, c)
	cl.call(context.Background(), "first", amlpool.PriorityNormal)
	require.Equal(t, "first", <-g.started)
	for _, w := range []struct {
		id string
		p  amlpool.Priority
	}{
		{"low1", amlpool.PriorityLow}, {"normal1", amlpool.PriorityNormal}, {"high1", amlpool.PriorityHigh},
		{"low2", amlpool.PriorityLow}, {"below low", -9}, {"high2", amlpool.PriorityHigh},
		{"normal2", amlpool.PriorityNormal}, {"above high", 9},
	} {
		cl.line(w.id, w.p)
	}
	require.Equal(t, 8, c.Stats().Waiting)
	var order []string
	for range 8 {
		order = append(order, g.next())
	}
	g.step <- struct{}{}
	assert.Equal(t, []string{"high1", "high2", "above high", "normal1", "normal2", "low1", "low2", "below low"}, order)
}

// A retry waits for its slot at its call's priority: a High call whose
// first attempt failed goes before a Normal call that was waiting before
// the retry joined the line.
func TestRetriesKeepTheirPriority(t *testing.T) {
	g := newGated(t)
	c := newClient(t, []amlpool.Endpoint{g.Endpoint()},
		amlpool.WithBackoff(amlpool.Backoff{Initial: time.Millisecond, Max: time.Millisecond}))
	cl := newCaller(t, c)
	cl.call(context.Background(), "first", amlpool.PriorityNormal)
	require.Equal(t, "first", <-g.started)
	cl.line("normal1", amlpool.PriorityNormal)
	cl.line("high", amlpool.PriorityHigh)
	cl.line("normal2", amlpool.PriorityNormal)
	g.Script(amltest.Fault{Status: 500}) // the high call's first attempt, served next

	// The high call's first attempt fails; its slot goes to normal1 while
	// it backs off; then it waits again.
	require.Equal(t, "normal1", g.next())
	<-cl.queued // the retry, in line
	assert.Equal(t, "high", g.next(), "the retry lost its priority")
	assert.Equal(t, "normal2", g.next())
	g.step <- struct{}{}
	assert.EqualValues(t, 1, g.Stats().Faults)
}

// Batch scoring runs at its ctx's priority: a batch at PriorityLow lets an
// ordinary call go before its waiting chunks.
func TestBatchRunsAtItsContextsPriority(t *testing.T) {
	g := newGated(t)
	c := newClient(t, []amlpool.Endpoint{g.Endpoint()})
	cl := newCaller(t, c)
	in := &amlpool.Table{ColumnNames: []string{"id"}, Values: [][]any{{"row0"}, {"row1"}, {"row2"}}}
	done := make(chan error, 1)
	go func() {
		_, err := c.ScoreTable(amlpool.WithPriority(context.Background(), amlpool.PriorityLow), in,
			&amlpool.BatchOptions{ChunkRows: 1, Parallelism: 3})
		done <- err
	}()
	first := <-g.started
	<-cl.queued
	<-cl.queued // the two other chunks wait
	cl.line("interactive", amlpool.PriorityNormal)
	assert.Equal(t, "interactive", g.next())
	rest := []string{g.next(), g.next()}
	g.step <- struct{}{}
	require.NoError(t, <-done)
	assert.ElementsMatch(t, []string{"row0", "row1", "row2"}, append(rest, first))
}

func TestPriorityString(t *testing.T) {
	for p, want := range map[amlpool.Priority]string{amlpool.PriorityLow: "low", amlpool.PriorityNormal: "normal",
		amlpool.PriorityHigh: "high", 7: "Priority(7)"} {
		assert.Equal(t, want, p.String())
	}
}

func TestPriorityOptionsAreChecked(t *testing.T) {
	_, eps := fakes(t, 0, 1)
	for _, tt := range []struct {
		name  string
		opt   amlpool.Option
		field string
	}{
		{"zero waiting", amlpool.WithMaxWaiting(0), "WithMaxWaiting"},
		{"negative waiting", amlpool.WithMaxWaiting(-3), "WithMaxWaiting"},
		{"zero aging", amlpool.WithPriorityAging(0), "WithPriorityAging"},
		{"negative aging", amlpool.WithPriorityAging(-time.Second), "WithPriorityAging"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := amlpool.New(eps, tt.opt)
			var ce *amlpool.ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tt.field, ce.Field)
		})
	}
	c := newClient(t, eps, amlpool.WithMaxWaiting(1), amlpool.WithPriorityAging(time.Minute))
	_, err := c.Do(amlpool.WithPriority(context.Background(), amlpool.PriorityHigh), []byte(body))
	assert.NoError(t, err)
}
