package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows how a score run goes: a bar with rate and ETA on a
// terminal, a plain line every interval otherwise (logs, CI), nothing when
// quiet. Its methods are called from one goroutine at a time.
type progress struct {
	w        io.Writer
	bar      *progressbar.ProgressBar
	every    time.Duration
	start    time.Time
	lastLine time.Time
	base     int           // rows settled by an earlier run
	total    *atomic.Int64 // rows in the input; -1 until counted
	barMax   bool          // the bar knows the total

	mu   sync.Mutex // guards done, for the final line from another goroutine
	done int
}

func newProgress(w io.Writer, mode string, every time.Duration, base int, total *atomic.Int64) *progress {
	p := &progress{w: w, every: every, start: time.Now(), base: base, total: total}
	p.lastLine = p.start
	if mode == "auto" {
		mode = "lines"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	switch mode {
	case "bar":
		p.bar = progressbar.NewOptions64(-1, // spinner until the rows are counted
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("scoring"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("rows"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		if base > 0 {
			p.bar.Set64(int64(base))
		}
	case "none":
		p.w = nil
	}
	return p
}

// update is the batch's Progress callback: done rows of this run.
func (p *progress) update(done, total int) {
	p.mu.Lock()
	p.done = done
	p.mu.Unlock()
	if p.w == nil {
		return
	}
	if p.bar != nil {
		if n := p.total.Load(); n >= 0 && !p.barMax {
			p.bar.ChangeMax64(n)
			p.barMax = true
		}
		p.bar.Set64(int64(p.base + done))
		return
	}
	now := time.Now()
	if now.Sub(p.lastLine) < p.every {
		return
	}
	p.lastLine = now
	fmt.Fprintln(p.w, p.line(now))
}

// line describes the progress so far: "scored 45000/100000 rows (45.0%),
// 12000 rows/s, ETA 5s".
func (p *progress) line(now time.Time) string {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	el := now.Sub(p.start)
	rate := float64(done) / max(el.Seconds(), 1e-9)
	total := int(p.total.Load())
	s := fmt.Sprintf("amlpool score: %d", p.base+done)
	if total >= 0 {
		s += fmt.Sprintf("/%d rows (%.1f%%)", total, 100*float64(p.base+done)/float64(max(total, 1)))
	} else {
		s += " rows"
	}
	s += fmt.Sprintf(", %.0f rows/s", rate)
	if total >= 0 && rate > 0 {
		eta := time.Duration(float64(total-p.base-done) / rate * float64(time.Second))
		s += ", ETA " + eta.Round(time.Second).String()
	}
	return s
}

// finish ends the bar, so that the summary starts on a clean line.
func (p *progress) finish() {
	if p.bar != nil {
		p.bar.Exit()
	}
}
