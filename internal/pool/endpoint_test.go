package pool

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// take never goes past the limit, even when asked directly: the pickers
// only pick endpoints with a free slot, so only this catches an off-by-one.
func TestTakeStopsAtTheLimit(t *testing.T) {
	t.Parallel()
	var e Endpoint
	e.limit.Store(2)
	took := func() bool { _, ok := e.take(); return ok }
	assert.True(t, took())
	assert.True(t, took())
	assert.False(t, took(), "a third slot of two")
	assert.EqualValues(t, 2, e.held())
	e.limit.Store(1) // an adaptive limit came down
	assert.False(t, took())
}

// Endpoints keeps its first six endpoints inline and the rest in a slice:
// Has, Add and Clone must be right on both sides of that line.
func TestEndpointsBeyondTheInlineArray(t *testing.T) {
	t.Parallel()
	eps := make([]*Endpoint, 12)
	for i := range eps {
		eps[i] = &Endpoint{name: fmt.Sprint("e", i)}
	}
	var s Endpoints
	for i, e := range eps[:9] {
		assert.False(t, s.Has(e), "%d before Add", i)
		assert.True(t, s.Add(e), "%d is new", i)
		assert.True(t, s.Has(e), "%d after Add", i)
		assert.Equal(t, i+1, s.Len())
	}
	for i, e := range eps[:9] {
		assert.True(t, s.Has(e), "%d among nine", i)
		assert.False(t, s.Add(e), "%d again", i)
	}
	assert.Equal(t, 9, s.Len())
	assert.False(t, s.Has(eps[9]))
	assert.False(t, s.Has(nil), "an empty inline slot is not an endpoint")

	// A clone and its original grow apart, even when the original's slice
	// has room for more (three endpoints in a slice of four).
	require.Less(t, len(s.more), cap(s.more))
	c := s.Clone()
	require.True(t, s.Add(eps[9]))
	require.True(t, c.Add(eps[10]))
	assert.True(t, s.Has(eps[9]))
	assert.False(t, s.Has(eps[10]), "the clone's endpoint")
	assert.True(t, c.Has(eps[10]))
	assert.False(t, c.Has(eps[9]), "the original's endpoint")
	assert.Equal(t, 10, s.Len())
	assert.Equal(t, 10, c.Len())
	for i, e := range eps[:9] {
		assert.True(t, c.Has(e), "%d in the clone", i)
	}
	require.True(t, s.Add(eps[11]))
	assert.True(t, s.Has(eps[11]))
	assert.False(t, c.Has(eps[11]))
}

func TestEndpointCountsResults(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{}, testSpecs(equalCaps(1, 4)...))
	e := p.Set().Eps[0]
	for _, r := range []Result{OK, Rejected, Full, Limited, Failed, Fault, KeyRejected, Cancelled, Abandoned, Unsent} {
		slot, ok := p.TryAcquire(&Exclusion{})
		require.True(t, ok)
		p.Release(slot, &Report{Result: r}, nil)
	}
	slot, ok := p.TryAcquire(&Exclusion{})
	require.True(t, ok)
	assert.Equal(t, Counters{Calls: 9, Failures: 6, Cancelled: 1, Throttles: 1, Faults: 1, InFlight: 1}, e.Counters(),
		"an attempt never sent, or in flight, is no call yet")
	p.Release(slot, &Report{Result: OK}, nil)
	assert.EqualValues(t, 10, e.Counters().Calls)
}

// TestCountersReadCallsAndInFlightTogether: Calls and InFlight come from
// one read, so an attempt that ends as Counters reads counts in one of the
// two, and Calls + InFlight, the attempts started and not given back
// unsent, stays what it was. Read apart, it counted in neither. The
// attempt ends between Counters' reads, through its test hook.
func TestCountersReadCallsAndInFlightTogether(t *testing.T) {
	t.Parallel()
	p := testPool(t, 4)
	e := p.Set().Eps[0]
	first, second := acquire(t, p), acquire(t, p)
	e.countersRead = func() {
		e.countersRead = nil
		release(p, first)
	}
	n := e.Counters()
	assert.EqualValues(t, 2, n.Calls+int64(n.InFlight), "Calls %d + InFlight %d", n.Calls, n.InFlight)
	n = e.Counters()
	assert.Equal(t, Counters{Calls: 1, InFlight: 1}, n, "the attempt that ended meanwhile")
	release(p, second)
}

// TestCountersReadConcurrently: readers of an endpoint's counters at once
// (Stats called from two goroutines) never see a wrap of the packed count
// that did not happen. Each reads the word and widens the count in turn:
// a reader that read the word before another, but widened it after,
// took its older count for a wrap, and Calls jumped by 2⁴⁰.
func TestCountersReadConcurrently(t *testing.T) {
	t.Parallel()
	p := testPool(t, 4)
	e := p.Set().Eps[0]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var started, cycles atomic.Int64
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if slot, ok := p.TryAcquire(&Exclusion{}); ok {
					started.Add(1)
					p.Release(slot, &Report{Result: OK}, nil)
					cycles.Add(1)
				}
			}
		})
	}
	var readers sync.WaitGroup
	failed := make(chan string, 2)
	for range 2 {
		readers.Go(func() {
			for cycles.Load() < 200_000 {
				// An attempt counted in Calls has ended, so it started
				// before this read: Calls is at most the attempts started
				// as they are read after it.
				n := e.Counters()
				if made := started.Load(); n.Calls > made {
					failed <- fmt.Sprintf("Calls %d, of %d attempts started", n.Calls, made)
					return
				}
			}
		})
	}
	readers.Wait()
	close(stop)
	wg.Wait()
	close(failed)
	for msg := range failed {
		t.Error(msg)
	}
}

// TestEndedCountDoesNotWrap: the packed count of attempts ended wraps
// after 2⁴⁰; the count read does not, as long as it is read once a wrap.
func TestEndedCountDoesNotWrap(t *testing.T) {
	t.Parallel()
	var c ended
	pack := func(started, held uint64) uint64 { return started<<heldBits | held }
	assert.EqualValues(t, 5, c.widen(pack(7, 2)))
	assert.EqualValues(t, endedMod-1, c.widen(pack(endedMod+1, 2)), "started wrapped, ended not yet")
	assert.EqualValues(t, endedMod+3, c.widen(pack(5, 2)), "ended wrapped too")
	assert.EqualValues(t, endedMod+3, c.widen(pack(6, 3)), "a take changes nothing")
}

func TestUnauthorizedWithOneKey(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{}, []Spec{testSpec("e", 1, "k1")})
	e := p.Set().Eps[0]
	a, k := e.Key()
	require.Equal(t, 0, k)
	assert.False(t, e.Unauthorized(a, k), "no other key")
	a, k = e.Key()
	assert.Equal(t, 0, k)
	assert.Equal(t, "k1", a.Keys()[k])
}

// Concurrent 401s for one key switch keys once: each of them is told to
// try again, and the endpoint ends on the other key, with the first one
// marked as failed.
func TestUnauthorizedSwitchesKeysOnce(t *testing.T) {
	t.Parallel()
	for range 20 {
		p, _ := newTestPool(t, Config{}, []Spec{testSpec("e", 1, "k1", "k2")})
		e := p.Set().Eps[0]
		a, k := e.Key()
		require.Equal(t, 0, k)
		start := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		var answers []bool
		for range 8 {
			wg.Go(func() {
				<-start
				ok := e.Unauthorized(a, k)
				mu.Lock()
				answers = append(answers, ok)
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
		assert.Equal(t, []bool{true, true, true, true, true, true, true, true}, answers)
		_, k = e.Key()
		assert.Equal(t, 1, k, "switched once, not back and forth")
		assert.EqualValues(t, 1|1<<1, e.keys.Load(), "key 1 in use, key 0 marked")
	}
}

func TestUnauthorizedBothKeys(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{}, []Spec{testSpec("e", 1, "k1", "k2")})
	e := p.Set().Eps[0]
	a, _ := e.Key()
	require.True(t, e.Unauthorized(a, 0))
	assert.False(t, e.Unauthorized(a, 1), "both keys failed")
	_, k := e.Key()
	assert.Equal(t, 1, k, "the key in use stays")
	// The marks are gone: the endpoint's next attempts try both keys afresh.
	assert.True(t, e.Unauthorized(a, 1), "a fresh 401 switches again")
	_, k = e.Key()
	assert.Equal(t, 0, k)
}

func TestAuthorizedClearsTheMark(t *testing.T) {
	t.Parallel()
	p, _ := newTestPool(t, Config{}, []Spec{testSpec("e", 1, "k1", "k2")})
	e := p.Set().Eps[0]
	a, _ := e.Key()
	require.True(t, e.Unauthorized(a, 0))
	e.Authorized(a, 0) // key 0 worked after all (a reply other than 401)
	assert.True(t, e.Unauthorized(a, 1), "key 0 is worth trying again")
	_, k := e.Key()
	assert.Equal(t, 0, k)

	// A success with keys the endpoint no longer has clears nothing.
	e.Authorized(testAuth("old1", "old2"), 1)
	assert.False(t, e.Unauthorized(a, 0), "key 1 is still marked")
}

// A 401 for keys that Update has replaced since says nothing of the new
// ones: the call tries again with them.
func TestUnauthorizedAfterNewKeys(t *testing.T) {
	t.Parallel()
	for _, keys := range [][]string{{"k1"}, {"k1", "k2"}} {
		t.Run(fmt.Sprint(len(keys), " keys"), func(t *testing.T) {
			p, _ := newTestPool(t, Config{}, []Spec{testSpec("e", 1, keys...)})
			e := p.Set().Eps[0]
			old, _ := e.Key()
			if len(keys) == 2 {
				require.True(t, e.Unauthorized(old, 0)) // now on k2, k1 marked
			}
			next := testSpec("e", 1, "n1", "n2")
			changes := p.Update([]Spec{next})
			assert.Equal(t, []Change{{Name: "e", Kind: Rekeyed}}, changes)
			a, k := e.Key()
			assert.Same(t, next.Auth, a)
			assert.Equal(t, 0, k, "new keys start from the first")
			assert.Zero(t, e.keys.Load(), "no mark survives the old keys")
			assert.True(t, e.Unauthorized(old, len(keys)-1), "the old keys' last 401")
			a, k = e.Key()
			assert.Same(t, next.Auth, a)
			assert.Equal(t, 0, k, "an old key's 401 moves nothing")
			assert.True(t, e.Unauthorized(a, 0), "the new first key's 401 switches to the second")
			assert.False(t, e.Unauthorized(a, 1), "both new keys failed")
		})
	}
}

// An Update that gives an endpoint the keys it has (a new Auth, the same
// keys) changes nothing of them: a 401 in flight for one of them still
// counts, and the key in use and the marks stay.
func TestUpdateWithTheSameKeys(t *testing.T) {
	t.Parallel()
	for _, keys := range [][]string{{"k1"}, {"k1", "k2"}} {
		t.Run(fmt.Sprint(len(keys), " keys"), func(t *testing.T) {
			t.Parallel()
			p, _ := newTestPool(t, Config{}, []Spec{testSpec("e", 1, keys...)})
			e := p.Set().Eps[0]
			a, _ := e.Key()
			if len(keys) == 2 {
				require.True(t, e.Unauthorized(a, 0)) // now on k2, k1 marked
			}
			assert.Empty(t, p.Update([]Spec{testSpec("e", 1, keys...)}))
			got, k := e.Key()
			assert.Equal(t, a.Keys(), got.Keys())
			assert.Equal(t, len(keys)-1, k)
			assert.False(t, e.Unauthorized(a, k), "every key has failed")
		})
	}
}

// storeHeld sets the slots e holds to n, as if n attempts had just
// started, keeping the count of those that ended.
func (e *Endpoint) storeHeld(n int32) {
	v := e.slots.Load()
	ended := v>>heldBits - v&heldMask
	e.slots.Store((ended+uint64(n))<<heldBits | uint64(n))
}

// addHeld takes d more slots of e, whatever its limit.
func (e *Endpoint) addHeld(d int32) { e.slots.Add(uint64(d) * oneTake) }
