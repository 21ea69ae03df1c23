package amlpool

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chiSquare returns Pearson's statistic for observed counts against expected
// proportions (which need not be normalised).
func chiSquare(observed []int, weights []float64) float64 {
	var n, w float64
	for i := range observed {
		n += float64(observed[i])
		w += weights[i]
	}
	var x float64
	for i, o := range observed {
		e := n * weights[i] / w
		x += (float64(o) - e) * (float64(o) - e) / e
	}
	return x
}

// Critical values of the chi-square distribution at p = 0.001.
var chi001 = map[int]float64{1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 9: 27.88}

// pickCounts picks n times at light load (one call at a time) and counts
// where each went.
func pickCounts(t *testing.T, p *pool, n int) []int {
	t.Helper()
	counts := make([]int, len(p.eps))
	for range n {
		ep, err := p.acquire(context.Background(), &exclusion{}, 0)
		require.NoError(t, err)
		counts[ep.idx]++
		p.release(ep)
	}
	return counts
}

func TestRandomSharesAreEqualForEqualCaps(t *testing.T) {
	p := testPool(t, 20, 20, 20, 20, 20)
	counts := pickCounts(t, p, 50000)
	x := chiSquare(counts, []float64{1, 1, 1, 1, 1})
	assert.Less(t, x, chi001[4], "counts %v", counts)
}

func TestRandomSharesFollowCaps(t *testing.T) {
	p := testPool(t, 20, 20, 200)
	counts := pickCounts(t, p, 48000)
	x := chiSquare(counts, []float64{20, 20, 200})
	assert.Less(t, x, chi001[2], "counts %v", counts)
}

// With some slots held, a free slot anywhere is equally likely: shares follow
// free slots, not caps.
func TestRandomSharesFollowFreeSlots(t *testing.T) {
	p := testPool(t, 10, 10, 10)
	var held []*endpoint
	for range 8 { // endpoint 0 keeps 2 free, the others 10
		require.True(t, p.eps[0].take())
		held = append(held, p.eps[0])
	}
	counts := pickCounts(t, p, 22000)
	x := chiSquare(counts, []float64{2, 10, 10})
	assert.Less(t, x, chi001[2], "counts %v", counts)
	for _, ep := range held {
		p.release(ep)
	}
}

func TestRandomNeverPicksFullOrExcludedEndpoints(t *testing.T) {
	p := testPool(t, 1, 1, 1, 1)
	require.True(t, p.eps[1].take())
	c := &exclusion{on: true}
	c.tried.add(2)
	for range 1000 {
		i := Random().Pick(Candidates{p: p, x: *c})
		require.Contains(t, []int{0, 3}, i)
	}
	require.True(t, p.eps[0].take())
	require.True(t, p.eps[3].take())
	assert.Equal(t, -1, Random().Pick(Candidates{p: p, x: *c}))
}

func TestBitsetBeyond64(t *testing.T) {
	var b bitset
	for _, i := range []int{0, 63, 64, 127, 128, 999} {
		assert.False(t, b.has(i))
		b.add(i)
		assert.True(t, b.has(i))
	}
	assert.False(t, b.has(500))
}
