package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/amlpool/amlpool"
)

// live prints a Client's per-endpoint picture every interval while a run
// goes on: calls in flight against the limit, calls per second since the
// last picture, and throttles so far. On a terminal each picture replaces
// the last; elsewhere (logs, CI, tests) they follow one another.
type live struct {
	w       io.Writer
	c       *amlpool.Client
	redraw  bool // a terminal: move up over the last picture
	start   time.Time
	last    time.Time
	calls   []int64 // each endpoint's Calls at the last picture
	printed int     // lines of the last picture
}

func newLive(w io.Writer, c *amlpool.Client) *live {
	f, ok := w.(*os.File)
	now := time.Now()
	l := &live{w: w, c: c, redraw: ok && term.IsTerminal(int(f.Fd())), start: now, last: now}
	for _, e := range c.Stats().Endpoints {
		l.calls = append(l.calls, e.Calls)
	}
	return l
}

// run prints a picture every interval until stop is closed.
func (l *live) run(every time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			l.print(now)
		}
	}
}

// print writes one picture, as of now.
func (l *live) print(now time.Time) {
	st := l.c.Stats()
	secs := now.Sub(l.last).Seconds()
	l.last = now
	var b strings.Builder
	fmt.Fprintf(&b, "live %5.1fs  waiting for a slot: %d\n", now.Sub(l.start).Seconds(), st.Waiting)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	for i, e := range st.Endpoints {
		rate := float64(e.Calls-l.calls[i]) / secs
		l.calls[i] = e.Calls
		fmt.Fprintf(tw, "  %s\tin flight %d/%d\t%.0f calls/s\tthrottles %d\t\n", e.Name, e.InFlight, e.Limit, rate, e.Throttles)
	}
	tw.Flush()
	if l.redraw && l.printed > 0 {
		fmt.Fprintf(l.w, "\x1b[%dA\x1b[J", l.printed) // up over the last picture, clear to the end
	}
	io.WriteString(l.w, b.String())
	l.printed = strings.Count(b.String(), "\n")
}
