package main

import (
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/rows"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func newClock() *fakeClock               { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }
func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }

func total(n int64) *atomic.Int64 {
	var a atomic.Int64
	a.Store(n)
	return &a
}

func lines(b *bytes.Buffer) []string {
	return strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
}

// TestProgressAfterResume is the case: a run resumed after 2,250
// of 5,000 rows. The figures cover the whole file from the first line on,
// while the rate and the ETA count only this run's rows and time.
func TestProgressAfterResume(t *testing.T) {
	clk := newClock()
	var out bytes.Buffer
	p := newProgress(&out, "lines", time.Second, 2250, total(5000), clk.now)
	p.update(100, -1)
	assert.Empty(t, out.String(), "nothing before the first interval")
	clk.add(time.Second)
	p.update(450, -1)
	clk.add(time.Second)
	p.update(1350, -1)
	clk.add(500 * time.Millisecond)
	p.update(1400, -1) // within the interval: no line
	clk.add(1500 * time.Millisecond)
	p.update(2750, -1)
	p.finish()
	assert.Equal(t, []string{
		"amlpool score: 2700/5000 rows (54.0%), 450 rows/s, ETA 5s",
		"amlpool score: 3600/5000 rows (72.0%), 675 rows/s, ETA 2s",
		"amlpool score: 5000/5000 rows (100.0%), 688 rows/s, ETA 0s",
	}, lines(&out))
}

// TestProgressBar checks the bar redraws one line in place and ends it, so
// that the summary starts on a line of its own.
func TestProgressBar(t *testing.T) {
	clk := newClock()
	var out bytes.Buffer
	p := newProgress(&out, "bar", 0, 2250, total(5000), clk.now)
	clk.add(50 * time.Millisecond)
	p.update(50, -1) // before the first redraw
	clk.add(50 * time.Millisecond)
	p.update(100, -1)
	clk.add(900 * time.Millisecond)
	p.update(700, -1)
	p.update(750, -1) // at the same instant: no redraw
	p.finish()
	assert.Equal(t, "\ramlpool score: [#########-----------] 2350/5000 rows (47.0%), 1000 rows/s, ETA 3s\x1b[K"+
		"\ramlpool score: [###########---------] 2950/5000 rows (59.0%), 700 rows/s, ETA 3s\x1b[K"+
		"\ramlpool score: [############--------] 3000/5000 rows (60.0%), 750 rows/s, ETA 3s\x1b[K\n", out.String())
}

// TestProgressTotalFromTheBatch: when the scoring outruns the count of the
// input's rows, the total the batch reports at its end stands in for it,
// counting the rows of earlier runs (--resume) too; a count that came
// first is kept.
func TestProgressTotalFromTheBatch(t *testing.T) {
	clk := newClock()
	var out bytes.Buffer
	p := newProgress(&out, "lines", time.Second, 20, total(-1), clk.now)
	clk.add(time.Second)
	p.update(50, -1)
	clk.add(time.Second)
	p.update(80, 80)
	assert.Equal(t, []string{
		"amlpool score: 70 rows, 50 rows/s",
		"amlpool score: 100/100 rows (100.0%), 40 rows/s, ETA 0s",
	}, lines(&out))

	out.Reset()
	q := newProgress(&out, "lines", time.Second, 0, total(120), clk.now)
	clk.add(time.Second)
	q.update(80, 80)
	assert.Contains(t, out.String(), "80/120 rows", "the count came first")
}

func TestProgressUnknownTotalAndQuiet(t *testing.T) {
	clk := newClock()
	var out bytes.Buffer
	p := newProgress(&out, "lines", time.Second, 0, total(-1), clk.now)
	clk.add(2 * time.Second)
	p.update(900, -1)
	assert.Equal(t, "amlpool score: 900 rows, 450 rows/s\n", out.String())

	out.Reset()
	q := newProgress(&out, "none", time.Second, 0, total(10), clk.now)
	clk.add(2 * time.Second)
	q.update(5, -1)
	q.finish()
	assert.Empty(t, out.String())
}

// The count of the input's rows, for the progress figures, stops at its
// next read once the run ends, rather than read a large file to the end
// first (closeFiles waits for it).
func TestCountRowsStops(t *testing.T) {
	in := filepath.Join(t.TempDir(), "rows.csv")
	writeIDs(t, in, 1000)
	n, err := countRows(in, rows.CSV, make(chan struct{}))
	require.NoError(t, err)
	assert.Equal(t, 1000, n)

	stop := make(chan struct{})
	close(stop)
	_, err = countRows(in, rows.CSV, stop)
	assert.ErrorIs(t, err, errCountStopped)

	// An input as good as endless: the count stops where it is.
	stop = make(chan struct{})
	_, err = rows.Count(rows.CSV, stopReader{&endlessRows{stopAt: 100, stop: stop}, stop})
	assert.ErrorIs(t, err, errCountStopped)
}

// endlessRows is a CSV of rows "1,a"; it closes stop at its stopAt-th
// read, and ends only at its 100·stopAt-th (so that a count that does not
// stop ends too).
type endlessRows struct {
	reads, stopAt int
	stop          chan struct{}
}

func (e *endlessRows) Read(b []byte) (int, error) {
	if e.reads++; e.reads == e.stopAt {
		close(e.stop)
	} else if e.reads >= 100*e.stopAt {
		return 0, io.EOF
	}
	if e.reads == 1 {
		return copy(b, "id,name\n"), nil
	}
	n := 0
	for n+4 <= len(b) {
		n += copy(b[n:], "1,a\n")
	}
	return n, nil
}

// With --progress none nobody reads the progress figures, so the input is
// not read a second time to count its rows; any other mode counts them.
func TestScoreCountsRowsOnlyForProgress(t *testing.T) {
	dir := t.TempDir()
	p := newFakePool(t, dir, []amltest.Config{{}}, "")
	for _, env := range p.env {
		k, v, _ := strings.Cut(env, "=")
		t.Setenv(k, v)
	}
	in := filepath.Join(dir, "rows.csv")
	writeIDs(t, in, 1000)
	for mode, want := range map[string]int64{"none": -1, "lines": 1000, "bar": 1000, "auto": 1000} {
		out := filepath.Join(dir, mode+".csv")
		s, err := prepare(scoreOptions{config: p.config, in: in, out: out, progress: mode,
			rejects: filepath.Join(dir, mode+".rejects.csv"), stats: filepath.Join(dir, mode+".stats.json")})
		require.NoError(t, err)
		<-s.counted
		assert.Equal(t, want, s.total.Load(), "--progress %s", mode)
		s.closeFiles()
	}
}
