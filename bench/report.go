package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// report is everything one run of the command measured.
type report struct {
	cfg                   config
	started               time.Time
	loadBefore, loadAfter string
	timerLate             time.Duration // mean lateness of a latency-long timer
	sections              []section
}

// section is one workload's table.
type section struct {
	w    workload
	rows []row
}

type row struct {
	sys system
	r   summary
}

// table returns the section's header and cells.
func (s section) table() (header []string, cells [][]string) {
	if s.w.overhead {
		header = []string{"system", "calls/s", "CPU per call", "× bare net/http", "allocs per call", "errors", "p50", "p99"}
		var bare time.Duration
		for _, r := range s.rows {
			if r.sys.isBaseline() {
				bare = r.r.cpuPerCall
			}
		}
		for _, r := range s.rows {
			ratio := "—"
			if bare > 0 {
				ratio = fmt.Sprintf("%.2f", float64(r.r.cpuPerCall)/float64(bare))
			}
			cells = append(cells, []string{
				r.sys.name, fmt.Sprintf("%.0f", r.r.goodput), fmtDur(r.r.cpuPerCall), ratio, fmt.Sprintf("%.0f", r.r.allocs),
				fmtPct(r.r.errRate), fmtDur(r.r.p50), fmtDur(r.r.p99),
			})
		}
		return header, cells
	}
	header = []string{"system", "goodput (calls/s)", "of ceiling", "errors", "throttles", "p50", "p99"}
	for _, r := range s.rows {
		cells = append(cells, []string{
			r.sys.name, fmt.Sprintf("%.0f", r.r.goodput), fmtPct(r.r.goodput / s.w.ceiling),
			fmtPct(r.r.errRate), fmt.Sprint(r.r.throttles), fmtDur(r.r.p50), fmtDur(r.r.p99),
		})
	}
	return header, cells
}

func fmtPct(f float64) string {
	if f == 0 {
		return "0 %"
	}
	return fmt.Sprintf("%.1f %%", 100*f)
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "—"
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

// machine describes where the run happened.
func (rep *report) machine() string {
	return fmt.Sprintf("%s %s/%s, %s, %d CPUs (GOMAXPROCS %d)",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0))
}

func (rep *report) settings() string {
	t := rep.cfg.timing
	return fmt.Sprintf("window %v after %v warm-up, %d run(s) per row (median); load average %s before, %s after; "+
		"a %v timer fires %v late on average",
		t.window, t.warmup, rep.cfg.runs, rep.loadBefore, rep.loadAfter, rep.cfg.params.latency, fmtDur(rep.timerLate))
}

// markdown writes the report as Markdown tables.
func (rep *report) markdown(w io.Writer) {
	fmt.Fprintf(w, "Machine: %s.  \n", rep.machine())
	fmt.Fprintf(w, "Settings: %s.\n\n", rep.settings())
	fmt.Fprintf(w, "| system | set up as |\n|---|---|\n")
	for _, sys := range rep.systems() {
		fmt.Fprintf(w, "| %s | %s |\n", sys.name, sys.about)
	}
	for _, s := range rep.sections {
		fmt.Fprintf(w, "\n**%s** — %s.\n\n", s.w.name, s.w.about)
		header, cells := s.table()
		fmt.Fprintf(w, "| %s |\n", strings.Join(header, " | "))
		align := make([]string, len(header))
		for i := range align {
			align[i] = "---:"
		}
		align[0] = "---"
		fmt.Fprintf(w, "|%s|\n", strings.Join(align, "|"))
		for _, c := range cells {
			fmt.Fprintf(w, "| %s |\n", strings.Join(c, " | "))
		}
	}
}

// systems returns the systems that appear in the report, in table order.
func (rep *report) systems() []system {
	var out []system
	for _, sys := range systems() {
		for _, s := range rep.sections {
			if slices.ContainsFunc(s.rows, func(r row) bool { return r.sys.name == sys.name }) {
				out = append(out, sys)
				break
			}
		}
	}
	return out
}

// text writes the report as aligned plain-text tables.
func (rep *report) text(w io.Writer) {
	fmt.Fprintf(w, "%s\n%s\n", rep.machine(), rep.settings())
	for _, s := range rep.sections {
		fmt.Fprintf(w, "\n%s: %s\n", s.w.name, s.w.about)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		header, cells := s.table()
		fmt.Fprintf(tw, "%s\t\n", strings.Join(header, "\t"))
		for _, c := range cells {
			fmt.Fprintf(tw, "%s\t\n", strings.Join(c, "\t"))
		}
		tw.Flush()
	}
}

// cpuModel returns the processor's name, or "unknown CPU".
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// loadAvg returns the 1, 5 and 15 minute load averages, or "unknown".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], "/")
}
