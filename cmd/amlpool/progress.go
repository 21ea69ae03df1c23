package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"
)

// progress shows how a score run goes: a bar redrawn in place on a
// terminal, a plain line every interval otherwise (logs, CI), nothing when
// quiet. The figures cover the whole input, rows settled by an earlier run
// included, while the rate and the ETA count only this run's work: a
// resumed run does not claim the earlier run's rows as its own speed.
//
// update is called from one goroutine at a time; finish after the last
// update; say from any goroutine.
type progress struct {
	out   io.Writer // where messages go, quiet or not
	w     io.Writer // nil: quiet
	bar   bool      // redraw one line in place
	every time.Duration
	now   func() time.Time
	start time.Time
	last  time.Time     // when the last bar or line was written
	base  int           // rows settled by an earlier run
	total *atomic.Int64 // rows in the input; -1 while unknown

	mu   sync.Mutex // guards done
	done int        // rows settled by this run

	wmu sync.Mutex // guards writing to out and w, and drawn
	// drawn: a bar is on the terminal's last line, not ended by a newline.
	drawn bool
}

// barEvery is how often the bar is redrawn at most.
const barEvery = 100 * time.Millisecond

func newProgress(w io.Writer, mode string, every time.Duration, base int, total *atomic.Int64, now func() time.Time) *progress {
	p := &progress{out: w, w: w, every: every, now: now, start: now(), base: base, total: total}
	p.last = p.start // the first line after one interval
	if mode == "auto" {
		mode = "lines"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	switch mode {
	case "bar":
		p.bar, p.every = true, barEvery
	case "none":
		p.w = nil
	}
	return p
}

// update is the batch's Progress callback: done rows settled by this run,
// of total in this run's input, or -1 while the batch has not seen its
// end. A total from the batch stands in for the count of the input's rows
// when that has not ended first (the scoring of a short file can outrun
// it), so that the last line says the total.
func (p *progress) update(done, total int) {
	if total >= 0 {
		p.total.CompareAndSwap(-1, int64(p.base+total))
	}
	p.mu.Lock()
	p.done = done
	p.mu.Unlock()
	if p.w == nil {
		return
	}
	now := p.now()
	if now.Sub(p.last) < p.every {
		return
	}
	p.last = now
	p.write(now)
}

func (p *progress) write(now time.Time) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if p.bar {
		fmt.Fprintf(p.w, "\r%s\x1b[K", p.line(now))
		p.drawn = true
		return
	}
	fmt.Fprintln(p.w, p.line(now))
}

// say prints msg on a line of its own, over the bar when one is drawn (the
// next update draws it again below).
func (p *progress) say(msg string) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if p.drawn {
		fmt.Fprint(p.out, "\r\x1b[K")
		p.drawn = false
	}
	fmt.Fprintln(p.out, msg)
}

// line describes the progress as of now: "amlpool score: 2700/5000 rows
// (54.0%), 450 rows/s, ETA 5s", with a bar in front in bar mode.
func (p *progress) line(now time.Time) string {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	settled := p.base + done
	total := int(p.total.Load())
	rate := 0.0
	if el := now.Sub(p.start).Seconds(); el > 0 {
		rate = float64(done) / el
	}
	var b strings.Builder
	b.WriteString("amlpool score: ")
	if total >= 0 {
		frac := float64(settled) / float64(max(total, 1))
		if p.bar {
			const width = 20
			full := min(int(frac*width), width)
			fmt.Fprintf(&b, "[%s%s] ", strings.Repeat("#", full), strings.Repeat("-", width-full))
		}
		fmt.Fprintf(&b, "%d/%d rows (%.1f%%)", settled, total, 100*frac)
	} else {
		fmt.Fprintf(&b, "%d rows", settled)
	}
	fmt.Fprintf(&b, ", %.0f rows/s", rate)
	if total >= 0 && rate > 0 {
		eta := time.Duration(float64(total-settled) / rate * float64(time.Second))
		b.WriteString(", ETA " + max(eta, 0).Round(time.Second).String())
	}
	return b.String()
}

// finish draws the bar's final state and ends its line, so that the
// summary starts on a line of its own.
func (p *progress) finish() {
	if p.w != nil && p.bar {
		p.write(p.now())
		p.wmu.Lock()
		fmt.Fprintln(p.w)
		p.drawn = false
		p.wmu.Unlock()
	}
}
