package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/rows"
)

const scoreHelp = `Usage: amlpool score --config pool.json --in rows.csv --out scored.csv [flags]

Scores every row of a file through the pool's endpoints, using all their
slots at once, and writes the input columns plus the service's output
columns, in input order. Rows go in chunks (--chunk-rows, default 100; a
chunk over the service's 4 MB limit is split).

Files are CSV with a header line, or JSON Lines (one object per line) when
the name ends in .jsonl or .ndjson (--format overrides this for the input).
The output, reject and statistics files must each be another file than
the input, the config, the key and token files it names, and each other
(a symlink to it counts as the same file); the input must not be the
config or one of its key or token files, whose lines would be sent as rows.
Rows that cannot be scored, because the input row is malformed or its
chunk failed after retries, go to the reject file with their line, row
number and the error; nothing is dropped. A line that could not be read
as a row keeps its text, as the input has it, in the column "text"
(empty for a row read fine, and for a line over 4,000,000 bytes, too
long to copy: its error gives its length); in JSON Lines rejects a text or cell that is
not valid UTF-8 is written as {"base64": "..."}, so that its bytes
survive. A quote left open in a CSV is the error of the line where it
opens, and the lines after it are read as rows. When the service blames
a chunk's input (HTTP 400), the chunk is split until each bad row stands
alone: the other rows are scored, and each bad row is rejected with the
service's message for it (--no-split turns this off). The exit status is
0 when every row was scored, 1 when some were rejected, the run failed or
its statistics could not be written, 2 for bad flags, config or input
(an output, reject or statistics file it cannot write included), 130 when
interrupted.

Requests wait for free slots at --priority, low by default: batch work,
which calls of higher priority on the same Client pass in line.

SIGHUP reloads the config's endpoints while the run goes on: added ones
take calls at once (the requests in flight follow the total slots, unless
--parallelism is given), removed ones finish their calls in flight, new caps,
keys, headers and tiers apply to the next call (a key file, "apiKeyFile"
or "secondaryKeyFile", is read again); the config's other settings apply
to the next run. The change is printed; a config that fails to
load or check (the checks of the start: a key or token file it names must
not be one of the run's files) is reported and the endpoints in use go on,
until the config is fixed and SIGHUP sent again.
A SIGHUP never stops the command: one sent before the scoring starts
(while the input's header is read from a pipe, say) is applied when it
starts, and one sent after the scoring ends is ignored; both are said.

Ctrl-C stops cleanly: the output holds every row up to some point (in the
output or the reject file) and nothing after it. The same command with
--resume goes on from there without scoring a row twice; so does a run
killed outright. It first checks that the input is the one the files were
written from: a file whose header lacks an input column, as no run on
this input wrote it, is refused before any row is sent, and left as it
is; so is a row the output holds scored that the input now holds
otherwise, or cannot read, naming the row, line and column.

Each run writes statistics (rows, rate, request latency, per-endpoint calls)
as JSON to --stats, for "amlpool plan --from-stats", when it ends. A --stats
file the run cannot write (its directory missing or read-only) is refused
at the start, before any row is sent, as a bad --out is: the check creates
the file, and a run that stops before writing it removes it again.

While it scores, the command keeps the Go scheduler to the cores its work
needs: waiting on endpoints, one core is usually plenty, and a second one
costs CPU (a thread woken with each reply that finds nothing to do) for
next to no speed. It starts on one, reads the CPU it used every 250 ms, and adds
cores at once when its work grows, up to what Go chose for the machine.
Setting GOMAXPROCS in the environment turns this off.

The config file (keys come from the environment variables or files it
names):

  {"endpoints": [
     {"name": "east", "url": "https://ussouthcentral.services.azureml.net/workspaces/WS/services/ID/execute?api-version=2.0&details=true",
      "apiKeyEnv": "AML_KEY_EAST", "maxConcurrentCalls": 20, "tier": 0}],
   "input": "input1", "output": "output1",
   "inputColumns": ["age", "income"], "outputColumns": ["Scored Labels", "Scored Probabilities"],
   "globalParameters": {}, "chunkRows": 100}

Only "endpoints" is required. An endpoint's "tier" (default 0) orders the
endpoints: requests go to the lowest tier with a free slot, so a higher
tier takes only the overflow. "inputColumns", when given, is checked against
the input's header before anything is sent; "outputColumns" keeps only those
of the service's columns.

The first reply fixes the output's columns. An online model whose
predictions are objects may add a key in a later reply: it is not written,
and the run says so once per key (list the columns you want in
"outputColumns"); a key a prediction leaves out is an empty cell (null in
JSON Lines). A later online reply whose predictions are of another shape
(plain values, arrays, objects) than the first's is rejected, the reason
naming both shapes; so is a later Classic reply with other columns (an
endpoint serving another model), the reason naming both column lists.

Examples:
  amlpool score --config pool.json --in rows.csv --out scored.csv
  amlpool score --config pool.json --in rows.jsonl --out scored.jsonl --chunk-rows 500
  amlpool score --config pool.json --in rows.csv --out scored.csv --resume

Flags:
`

type scoreOptions struct {
	config, in, out, rejects, stats, format string
	chunkRows, parallelism                  int
	resume, noSplit                         bool
	progress                                string
	every                                   time.Duration
	priority                                amlpool.Priority
}

func runScore(args []string, stdout, stderr io.Writer) int {
	stderr = &syncWriter{w: stderr}
	hup := handleHUP(stderr)
	defer hup.stop()
	fs := flag.NewFlagSet("score", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), scoreHelp); fs.PrintDefaults() }
	var o scoreOptions
	fs.StringVar(&o.config, "config", "", "pool config file (JSON; required)")
	fs.StringVar(&o.in, "in", "", "input rows, CSV or JSON Lines (required)")
	fs.StringVar(&o.out, "out", "", "scored output; its format follows its extension (required)")
	fs.StringVar(&o.rejects, "rejects", "", "reject file (default: the output's name with .rejects before the extension)")
	fs.StringVar(&o.stats, "stats", "", "run statistics, JSON (default: the output's name with .stats.json for the extension)")
	fs.StringVar(&o.format, "format", "", "input format, csv or jsonl (default: from the input's extension)")
	fs.IntVar(&o.chunkRows, "chunk-rows", 0, "rows per request (default: the config's chunkRows, else 100)")
	fs.IntVar(&o.parallelism, "parallelism", 0, "requests in flight at most, up to 65536 (default: the pool's total slots, as SIGHUP changes them)")
	fs.BoolVar(&o.resume, "resume", false, "continue the output and reject files of an interrupted run")
	fs.BoolVar(&o.noSplit, "no-split", false, "reject a chunk the service blames (HTTP 400) whole, instead of splitting it to find its bad rows")
	fs.StringVar(&o.progress, "progress", "auto", "auto (a bar on a terminal, lines otherwise), bar, lines or none (which does not count the input's rows ahead either)")
	fs.DurationVar(&o.every, "progress-every", 10*time.Second, "how often to print a progress line when not on a terminal (0: for every chunk)")
	priority := fs.String("priority", "low", "the priority at which requests wait for a free slot: low, normal or high")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	if fs.NArg() > 0 { // flag stops at it: the flags after it would go unread
		fmt.Fprintf(stderr, "amlpool score: unexpected argument %q (see amlpool score --help)\n", fs.Arg(0))
		return 2
	}
	var missing []string
	for _, f := range []struct{ name, v string }{{"--config", o.config}, {"--in", o.in}, {"--out", o.out}} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "amlpool score: need %s (see amlpool score --help)\n", strings.Join(missing, ", "))
		return 2
	}
	if !slices.Contains([]string{"auto", "bar", "lines", "none"}, o.progress) {
		fmt.Fprintf(stderr, "amlpool score: --progress %q: want auto, bar, lines or none\n", o.progress)
		return 2
	}
	var ok bool
	if o.priority, ok = parsePriority(*priority); !ok {
		fmt.Fprintf(stderr, "amlpool score: --priority %q: want low, normal or high\n", *priority)
		return 2
	}
	for _, f := range []struct {
		name, zero string
		v          int
	}{{"--chunk-rows", "the config's chunkRows, else 100", o.chunkRows}, {"--parallelism", "the pool's total slots", o.parallelism}} {
		if f.v < 0 {
			fmt.Fprintf(stderr, "amlpool score: %s %d: must not be negative (0: %s)\n", f.name, f.v, f.zero)
			return 2
		}
	}
	if o.every < 0 {
		fmt.Fprintf(stderr, "amlpool score: --progress-every %v: must not be negative (0: a line for every chunk)\n", o.every)
		return 2
	}
	if o.parallelism > amlpool.MaxParallelism {
		fmt.Fprintf(stderr, "amlpool score: --parallelism %d: must be at most %d\n", o.parallelism, amlpool.MaxParallelism)
		return 2
	}
	ext := filepath.Ext(o.out)
	if o.rejects == "" {
		o.rejects = strings.TrimSuffix(o.out, ext) + ".rejects" + ext
	}
	if o.stats == "" {
		o.stats = strings.TrimSuffix(o.out, ext) + ".stats.json"
	}
	if err := distinctFiles(o, false); err != nil {
		return failed(stderr, "score", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return score(ctx, o, stderr, hup)
}

// syncWriter makes a writer safe for concurrent use: the SIGHUP handler
// writes to stderr beside the run.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

// runFile is a file a run reads, named as its user gave it: a flag, or a
// config field.
type runFile struct{ name, path, what string }

// distinctFiles refuses a run that would write over a file it reads (its
// input, its config, and read: the key and token files the config names)
// or write two of its files to one: --out, --rejects and --stats must each
// be another file than those and than each other. It also refuses an input
// that is the config or a key or token file (checkInput): its lines would
// be sent as rows, and copied to the output or the reject file. Paths name the same
// file when they are spelled alike (once made absolute and clean), or when
// both exist as regular files and are the same file (another spelling, a
// symlink, a hard link). It runs before any file is opened, and never
// reads them; prepare runs it again once it has made the files it writes,
// which a symlink may name.
//
// reload says that the run is going on (a SIGHUP reload of the config):
// its files stay as they are, so the advice is to fix the config rather
// than to give a flag another file.
func distinctFiles(o scoreOptions, reload bool, read ...runFile) error {
	read = append([]runFile{{"--in", o.in, "input"}, {"--config", o.config, "config"}}, read...)
	if err := checkInput(o.in, read[1:], reload); err != nil {
		return err
	}
	written := []runFile{{"--out", o.out, ""}, {"--rejects", o.rejects, ""}, {"--stats", o.stats, ""}}
	for i, b := range written {
		for _, a := range slices.Concat(read, written[:i]) {
			if sameFile(a.path, b.path) {
				why := "the run would write both to it"
				if a.what != "" {
					why = "the run would write over its " + a.what
				}
				fix := "give " + b.name + " another file"
				if reload {
					fix = reloadFix
				}
				return usageError{fmt.Errorf("%s %s is the same file as %s %s: %s; %s", b.name, b.path, a.name, a.path, why, fix)}
			}
		}
	}
	return nil
}

// reloadFix is the advice when a reloaded config names one of the run's
// files: the run keeps its files, and its endpoints, until it is fixed.
const reloadFix = "name another file in the config and send SIGHUP again"

// checkInput refuses an input (--in) that is one of the files read
// names, the config and its key and token files: its lines would be sent
// as rows (reload: a key file the reloaded config names, whose text, the
// input's, would be sent as a key). The error names the files, never what
// they hold.
func checkInput(in string, read []runFile, reload bool) error {
	for _, a := range read {
		if sameFile(a.path, in) {
			if reload {
				return usageError{fmt.Errorf("--in %s is the same file as %s %s: the run would send its input as a %s; %s", in, a.name, a.path, strings.TrimSuffix(a.what, " file"), reloadFix)}
			}
			return usageError{fmt.Errorf("--in %s is the same file as %s %s: the run would send its %s as rows; give --in the file of rows to score", in, a.name, a.path, a.what)}
		}
	}
	return nil
}

func sameFile(a, b string) bool {
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return sa.Mode().IsRegular() && sb.Mode().IsRegular() && os.SameFile(sa, sb)
	}
	absA, errA := filepath.Abs(a)
	absB, errB := filepath.Abs(b)
	return errA == nil && errB == nil && absA == absB
}

// usageError marks errors found before anything is sent: exit status 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// failed prints err as command's and returns the exit status: 2 for a
// usage error, 1 for any other.
func failed(stderr io.Writer, command string, err error) int {
	fmt.Fprintln(stderr, "amlpool "+command+":", err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

func score(ctx context.Context, o scoreOptions, stderr io.Writer, hup *hupHandler) int {
	s, err := prepare(o)
	if err != nil {
		return failed(stderr, "score", err)
	}
	defer s.closeFiles()
	return s.run(ctx, o, stderr, hup)
}

// scoreRun is a prepared run: files open, input positioned after what an
// earlier run settled.
type scoreRun struct {
	cfg       *poolConfig
	eps       []amlpool.Endpoint // the config's endpoints, keys resolved
	client    *amlpool.Client
	in        *os.File
	src       *countingSource
	w         *writer
	total     atomic.Int64  // rows in the input, -1 until counted
	counted   chan struct{} // closed once total is known (or cannot be)
	endCount  chan struct{} // closed to stop the count when the run ends
	base      int           // rows settled by earlier runs
	filesErr  error
	dropStats func() // removes the --stats file made to check it, for a run that ends before writing it
}

func prepare(o scoreOptions) (*scoreRun, error) {
	cfg, eps, err := loadConfig(o.config, osKeys)
	if err != nil {
		return nil, usageError{err}
	}
	if err := distinctFiles(o, false, cfg.keyFiles(o.config)...); err != nil {
		return nil, err
	}
	inFormat := rows.FormatOf(o.in)
	if o.format != "" {
		if inFormat, err = rows.ParseFormat(o.format); err != nil {
			return nil, usageError{fmt.Errorf("--format: %w", err)}
		}
	}
	outFormat := rows.FormatOf(o.out)
	r, in, err := openInput(o.in, inFormat)
	if err != nil {
		return nil, usageError{err}
	}
	s := &scoreRun{cfg: cfg, eps: eps, in: in, dropStats: func() {}}
	s.total.Store(-1)
	fail := func(err error) (*scoreRun, error) { s.abandon(); return nil, err }
	if cfg.InputColumns != nil {
		if err := matchColumns(r.Columns(), cfg.InputColumns); err != nil {
			return fail(usageError{fmt.Errorf("%s: line 1: the header does not match the service's input columns (%s \"inputColumns\"): %v", o.in, o.config, err)})
		}
	}
	// The rows are counted, for the progress figures, beside the scoring
	// rather than before it: counting a large file takes a while. Only a
	// regular file can be read a second time: opening a pipe again would
	// take rows away from the scoring. With --progress none nobody reads
	// the figures, and the count would cost a fifth of reading the rows.
	s.counted, s.endCount = make(chan struct{}), make(chan struct{})
	if st, err := in.Stat(); err == nil && st.Mode().IsRegular() && o.progress != "none" {
		go func() {
			defer close(s.counted)
			if n, err := countRows(o.in, inFormat, s.endCount); err == nil {
				s.total.Store(int64(n))
			}
		}()
	} else {
		close(s.counted)
	}
	// The prefix of an output column that clashes with an input column:
	// the Classic output port, or for an online endpoint (no ports) "output".
	port := cmpOr(cfg.Output, "output1")
	online := len(eps) > 0 && eps[0].Kind == amlpool.Online
	if online {
		port = cmpOr(cfg.Output, "output")
	}
	w := &writer{inCols: r.Columns(), inFormat: inFormat, port: port, keep: cfg.OutputColumns, byName: online, lines: &lineLog{}}
	// The files are cut (a record a kill cut short) only once they are
	// checked, at the end: a run refused leaves them as they were.
	if w.out, err = openOutAsIs(o.out, outFormat, o.resume); err != nil {
		return fail(usageError{cannotWrite("--out", o.out, err)})
	}
	s.w = w
	if w.rej, err = openOutAsIs(o.rejects, outFormat, o.resume); err != nil {
		return fail(usageError{cannotWrite("--rejects", o.rejects, err)})
	}
	if s.dropStats, err = checkOutput("--stats", o.stats); err != nil {
		s.dropStats = func() {}
		return fail(err)
	}
	// Once more now that the files are there: a symlink to a file the run
	// has just made (its output, its reject file) is the same file only
	// now, and the run would write two of its files into one (its
	// statistics over its output, at the end).
	if err := distinctFiles(o, false, cfg.keyFiles(o.config)...); err != nil {
		return fail(err)
	}
	// A resumed file that no run on this input wrote (given by mistake)
	// holds no rows of this input: its records would be taken for rows
	// settled, skipped unscored.
	for _, f := range []*outFile{w.out, w.rej} {
		if err := f.checkInputColumns(w.inCols); err != nil {
			return fail(usageError{err})
		}
	}
	s.base = w.out.rows + w.rej.rows
	w.base = s.base
	if err := skipSettled(r, o.in, w.out, w.rej, w.inCols); err != nil {
		return fail(err)
	}
	s.src = &countingSource{r: r, lines: w.lines}
	if s.client, err = newClient(o.config, cfg, eps); err != nil {
		return fail(usageError{err})
	}
	for _, f := range []struct {
		flag string
		o    *outFile
	}{{"--out", w.out}, {"--rejects", w.rej}} {
		if err := f.o.cut(); err != nil {
			return fail(usageError{cannotWrite(f.flag, f.o.path, err)})
		}
	}
	return s, nil
}

// parsePriority reads a Priority by its String.
func parsePriority(s string) (amlpool.Priority, bool) {
	for p := amlpool.PriorityLow; p <= amlpool.PriorityHigh; p++ {
		if s == p.String() {
			return p, true
		}
	}
	return 0, false
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func openInput(path string, f rows.Format) (rows.Reader, *os.File, error) {
	in, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	r, err := rows.NewReader(f, in)
	if err != nil {
		in.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, in, nil
}

// countRows reads the input once to know its length, for the progress bar
// and ETA. Malformed rows count: they go to the reject file. It stops, with
// errCountStopped, at its next read once stop is closed: a run that ends
// early (Ctrl-C, a usage error) does not wait for a large file's count.
func countRows(path string, f rows.Format, stop <-chan struct{}) (int, error) {
	in, err := os.Open(path)
	if err != nil {
		return -1, err
	}
	defer in.Close()
	n, err := rows.Count(f, stopReader{in, stop})
	if err != nil {
		return -1, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

var errCountStopped = errors.New("the count was stopped")

// stopReader reads r until stop is closed.
type stopReader struct {
	r    io.Reader
	stop <-chan struct{}
}

func (s stopReader) Read(b []byte) (int, error) {
	select {
	case <-s.stop:
		return 0, errCountStopped
	default:
		return s.r.Read(b)
	}
}

// matchColumns checks a header against the service's input columns, in any
// order, and says what is missing and what is extra.
func matchColumns(header, want []string) error {
	var missing, extra []string
	for _, c := range want {
		if !slices.Contains(header, c) {
			missing = append(missing, c)
		}
	}
	for _, c := range header {
		if !slices.Contains(want, c) {
			extra = append(extra, c)
		}
	}
	var parts []string
	if missing != nil {
		parts = append(parts, fmt.Sprintf("missing %q", missing))
	}
	if extra != nil {
		parts = append(parts, fmt.Sprintf("not in the service's input %q", extra))
	}
	if parts == nil {
		return nil
	}
	return errors.New(strings.Join(parts, "; "))
}

func (s *scoreRun) closeFiles() {
	if s.counted != nil {
		close(s.endCount)
		<-s.counted // at its next read: a large file is not read to the end
		s.counted = nil
	}
	if s.client != nil {
		s.client.Close()
		s.client = nil
	}
	if s.in != nil {
		s.in.Close()
		s.in = nil
	}
	if s.w != nil {
		for _, f := range []*outFile{s.w.out, s.w.rej} {
			if f != nil {
				s.filesErr = errors.Join(s.filesErr, f.close())
			}
		}
		s.w = nil
	}
}

// abandon closes the files of a run that stops before it scores (a usage
// error found once its files are open), leaving the file system as the
// run found it: the files it made go again, an output, reject or
// statistics file it found stays, empty or not.
func (s *scoreRun) abandon() {
	if s.w != nil {
		for _, f := range []*outFile{s.w.out, s.w.rej} {
			if f != nil {
				f.keepFound = true
			}
		}
	}
	s.closeFiles()
	s.dropStats()
}

func (s *scoreRun) run(ctx context.Context, o scoreOptions, stderr io.Writer, hup *hupHandler) int {
	p := newProgress(stderr, o.progress, o.every, s.base, &s.total, time.Now)
	lat := newLatencies(100_000)
	w := s.w
	w.say = p.say
	warnTokenFailures(s.eps, "score", p.say)
	sink := func(ch *amlpool.Chunk) error {
		if ch.Endpoint != "" {
			lat.add(ch.Elapsed)
		}
		return w.sink(ch)
	}
	// SIGHUP gives the run the config's endpoints as they are now.
	r := &reloader{path: o.config, keys: osKeys, opts: o, client: s.client, say: p.say, cfg: s.cfg, eps: s.eps, tally: &endpointTally{}}
	hup.scoring(r.reload)
	start := time.Now()
	stopFitting := func() {}
	if fitProcsToWork != nil {
		stopFitting = fitProcsToWork()
	}
	st, err := s.client.ScoreRows(amlpool.WithPriority(ctx, o.priority), s.src, sink, &amlpool.BatchOptions{
		Input:            s.cfg.Input,
		Output:           s.cfg.Output,
		GlobalParameters: s.cfg.GlobalParameters,
		ChunkRows:        cmpInt(o.chunkRows, s.cfg.ChunkRows),
		Parallelism:      o.parallelism,
		NoSplit:          o.noSplit,
		Progress:         p.update,
	})
	stopFitting()
	elapsed := time.Since(start)
	hup.over(stderr)
	p.finish()
	firstFail := w.first
	rs := newRunStats(s.client, r.tally, st, elapsed, cmpInt(o.chunkRows, cmpInt(s.cfg.ChunkRows, amlpool.DefaultChunkRows)), lat)
	rs.Resumed, rs.Interrupted = s.base, ctx.Err() != nil
	s.closeFiles()
	if err == nil {
		err = s.filesErr
	}
	// The counts are what the files hold: after a failed write, fewer rows
	// than were handed to them (closeFiles counted them again).
	rs.Scored -= w.out.lost
	rs.Failed -= w.rej.lost
	rs.Rows -= w.out.lost + w.rej.lost
	rs.RowsPerSecond = float64(rs.Rows) / max(elapsed.Seconds(), 1e-9)
	rs.CountsUnknown = w.out.recount != nil || w.rej.recount != nil
	// checkOutput found the file writable before the run; a write that
	// fails now (a full disk) is said, and fails a run that would have
	// succeeded.
	serr := writeJSON(o.stats, rs)
	if serr != nil {
		fmt.Fprintln(stderr, "amlpool score: writing statistics:", serr)
	}

	settled, where := summary(w.out, w.rej) // settled: s.base + st.Rows, less what did not reach the files
	of := ""
	if n := s.total.Load(); n >= 0 {
		of = fmt.Sprintf(" of %d", n)
	}
	switch {
	case ctx.Err() != nil:
		fmt.Fprintf(stderr, "amlpool score: interrupted after %s%s rows (%s); run the same command with --resume to go on\n", settled, of, where)
		return 130
	case err != nil:
		fmt.Fprintf(stderr, "amlpool score: %v\namlpool score: stopped after %s%s rows (%s); fix the cause and run the same command with --resume to go on\n", err, settled, of, where)
		return 1
	}
	fmt.Fprintf(stderr, "amlpool score: %s rows in %v (%.0f rows/s): %s\n", settled, elapsed.Round(time.Millisecond), rs.RowsPerSecond, where)
	if firstFail != nil {
		fmt.Fprintf(stderr, "amlpool score: first failure: %v\n", firstFail)
		return 1
	}
	if serr != nil {
		return 1
	}
	return 0
}

// summary says how many rows the run's files hold, and where: the rows
// settled, and "N scored in OUT, M rejected in REJECTS". After a failed
// write it says how many rows handed to the files did not reach them; when
// a file could not be counted again, its count is only what was handed to
// it ("at most N"), and it says why.
func summary(out, rej *outFile) (settled, where string) {
	count := func(o *outFile) string {
		if o.recount != nil {
			return "at most " + strconv.Itoa(o.rows)
		}
		return strconv.Itoa(o.rows)
	}
	settled = strconv.Itoa(out.rows + rej.rows)
	if out.recount != nil || rej.recount != nil {
		settled = "at most " + settled
	}
	where = fmt.Sprintf("%s scored in %s, %s rejected", count(out), out.path, count(rej))
	if rej.rows > 0 {
		where += " in " + rej.path
	}
	if lost := out.lost + rej.lost; lost > 0 {
		where += fmt.Sprintf("; a failed write kept the last %d rows from the files", lost)
	}
	for _, o := range []*outFile{out, rej} {
		if o.recount != nil {
			where += fmt.Sprintf("; a failed write kept rows from %s, which could not be counted again: %v", o.path, o.recount)
		}
	}
	return settled, where
}

func cmpInt(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// runStats is what a score or bench run writes to its --stats file, and
// what "amlpool plan --from-stats" reads (latencyMs.mean).
type runStats struct {
	Rows        int  `json:"rows"`    // rows settled by this run
	Scored      int  `json:"scored"`  // of which scored
	Failed      int  `json:"failed"`  // of which rejected
	Resumed     int  `json:"resumed"` // rows settled by earlier runs
	Interrupted bool `json:"interrupted"`
	// CountsUnknown: a failed write kept rows from the files, which could
	// not be counted again; rows, scored and failed are those handed to
	// them, and the files may hold fewer.
	CountsUnknown bool            `json:"countsUnknown,omitempty"`
	Seconds       float64         `json:"seconds"`
	RowsPerSecond float64         `json:"rowsPerSecond"`
	ChunkRows     int             `json:"chunkRows"`     // rows per request (fewer in a file's last chunk and in split chunks)
	Requests      int             `json:"requests"`      // requests sent, split requests included
	SplitRequests int             `json:"splitRequests"` // requests sent to isolate bad rows
	LatencyMs     latencySummary  `json:"latencyMs"`     // per request whose rows reached the files (latencyMs.count of them, not all requests: a request split to find bad rows is not one): slot wait, retries and service time
	Endpoints     []endpointStats `json:"endpoints"`
}

type endpointStats struct {
	Name               string `json:"name"`
	MaxConcurrentCalls int    `json:"maxConcurrentCalls"`
	Calls              int64  `json:"calls"`
	Errors             int64  `json:"errors"`
	Throttles          int64  `json:"throttles"`
}

// newRunStats sums a run up. tally, when not nil, holds the endpoints seen
// earlier in the run (those a SIGHUP removed); c's are added to it.
func newRunStats(c *amlpool.Client, tally *endpointTally, st amlpool.BatchStats, elapsed time.Duration, chunkRows int, lat *latencies) runStats {
	rs := runStats{Rows: st.Rows, Scored: st.Scored, Failed: st.Failed, Seconds: elapsed.Seconds(),
		RowsPerSecond: float64(st.Rows) / max(elapsed.Seconds(), 1e-9), ChunkRows: chunkRows,
		Requests: st.Requests, SplitRequests: st.SplitRequests, LatencyMs: lat.summary()}
	if tally == nil {
		tally = &endpointTally{}
	}
	tally.note(c.Stats())
	rs.Endpoints = tally.list()
	return rs
}

// endpointTally keeps the counters of every endpoint a run used, for its
// statistics: Client.Stats lists an endpoint only while it is in the pool
// or has calls in flight, so one that a SIGHUP removed is gone by the end.
//
// An endpoint's counters are those of one life of its name: from when New,
// or the SetEndpoints that added it, ran (EndpointStats.Since) to when it
// left the Client. A name may have several lives in a run: a SIGHUP that
// removes it and a later one that adds it back, or one that gives it
// another URL, start a new endpoint at zero, and the stats file sums the
// lives of each name. A Stats entry is its life's by Name and Since.
//
// Each snapshot counts an endpoint's calls in flight as calls, which they
// will be once they end (Client.Stats reads an endpoint's Calls and
// InFlight together, so a call ending as it reads counts once), and a
// life's counters are those of its latest snapshot. Not the most any
// snapshot counted: a slot held as a snapshot is taken may go back unsent
// (a call that gives up as the slot is handed to it, or that waited at a
// Limiter), and an earlier snapshot that counted it would count one call
// too many for good. A live endpoint's last snapshot, taken
// after the run, when no call is in flight, counts its calls exactly; a
// removed one's is taken right after its removal (no call starts on it
// then), and counts its calls in flight then as calls (a take that races
// the removal either comes before it, and is one of them, or holds no slot
// there even for a moment). Its errors and
// throttles are those of its last snapshot: its calls in flight then that
// fail later are not counted as errors. That cannot be helped here:
// Client.Stats lists a removed endpoint only until its last call ends, so
// no snapshot is taken once those calls' outcomes are known. Snapshots are
// taken by one goroutine at a time, in order.
type endpointTally struct {
	lives []*endpointLife // in the order first seen
}

// endpointLife is one endpoint of the Client, from its making to its end.
type endpointLife struct {
	since time.Time // EndpointStats.Since
	stats endpointStats
}

// note takes in a snapshot of the Client.
func (t *endpointTally) note(st amlpool.Stats) {
	for _, e := range st.Endpoints {
		i := slices.IndexFunc(t.lives, func(l *endpointLife) bool { return l.stats.Name == e.Name && l.since.Equal(e.Since) })
		if i < 0 {
			i = len(t.lives)
			t.lives = append(t.lives, &endpointLife{since: e.Since})
		}
		t.lives[i].merge(e)
	}
}

// merge takes in a snapshot of the life's endpoint, later than those
// before: its counts and cap are the life's now (see endpointTally).
func (l *endpointLife) merge(e amlpool.EndpointStats) {
	l.stats = endpointStats{e.Name, e.MaxConcurrentCalls, e.Calls + int64(e.InFlight), e.Errors, e.Throttles}
}

// list sums the lives of each name, in the order the names were first
// seen; a name's cap is its latest life's.
func (t *endpointTally) list() []endpointStats {
	var eps []endpointStats
	at := make(map[string]int)
	for _, l := range t.lives {
		i, ok := at[l.stats.Name]
		if !ok {
			at[l.stats.Name] = len(eps)
			eps = append(eps, endpointStats{Name: l.stats.Name})
			i = len(eps) - 1
		}
		e := &eps[i]
		e.MaxConcurrentCalls = l.stats.MaxConcurrentCalls
		e.Calls += l.stats.Calls
		e.Errors += l.stats.Errors
		e.Throttles += l.stats.Throttles
	}
	return eps
}

// checkOutput makes sure that the run can write path, the file of flag,
// which it writes only at its end: a path it cannot write (its directory
// missing or read-only) is a usage error at once, not found after the
// whole run, as --out's is. It opens the file for writing, creating it
// when it is missing, and closes it; a file that is there keeps what it
// holds until the run writes it. A file there that is not a regular file
// (a FIFO, whose opening waits for a reader; a device) is not opened. The
// returned drop removes the file when checkOutput made it (through a
// symlink to a missing file too), for a run that ends before writing it,
// so that it leaves no empty file behind.
func checkOutput(flag, path string) (drop func(), err error) {
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() && !st.IsDir() {
		return func() {}, nil
	}
	f, made, err := createFile(path, os.O_WRONLY) // a directory is refused here
	if err != nil {
		return nil, usageError{cannotWrite(flag, path, err)}
	}
	f.Close()
	return made.remove, nil
}

// createFile opens path with flag (os.O_WRONLY or os.O_RDWR), creating the
// file when it is missing, and says whether it made it: made is nil for a
// file that was there. A symlink to a missing file makes its file, where
// the link points; O_EXCL refuses such a link as it would a file, so it is
// told apart by os.Stat, which follows it.
func createFile(path string, flag int) (f *os.File, made *madeFile, err error) {
	f, err = os.OpenFile(path, flag|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		_, serr := os.Stat(path)
		if f, err = os.OpenFile(path, flag|os.O_CREATE, 0o644); err != nil || !errors.Is(serr, fs.ErrNotExist) {
			return f, nil, err
		}
	} else if err != nil {
		return nil, nil, err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = path // remove finds a link there, not the file made, and leaves it
	}
	return f, &madeFile{path: real, info: info}, nil
}

// madeFile is a file a run made, to remove it again when the run leaves it
// empty. path is where the file is, with symlinks followed: removing a
// link that named it would leave the file, and take away the user's link.
type madeFile struct {
	path string
	info fs.FileInfo // the file made, to know it again
}

// remove removes the file made, if it is still there and empty. A nil
// madeFile (no file made) removes nothing.
func (m *madeFile) remove() {
	if m == nil {
		return
	}
	if st, err := os.Lstat(m.path); err == nil && os.SameFile(st, m.info) && st.Size() == 0 {
		os.Remove(m.path)
	}
}

// cannotWrite names the flag of an output file that could not be opened
// or made ready for writing (an *fs.PathError: the file's directory
// missing or read-only, say). Other errors, which name the file already,
// are returned as they are.
func cannotWrite(flag, path string, err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return fmt.Errorf("%s %s: cannot write it: %w", flag, path, pe.Err)
	}
	return err
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// latencies keeps a uniform sample of at most max durations (reservoir
// sampling), so a run of any length summarizes in bounded memory.
type latencies struct {
	max, n int
	sum    time.Duration
	sample []time.Duration
	rnd    *rand.Rand
}

func newLatencies(max int) *latencies {
	return &latencies{max: max, rnd: rand.New(rand.NewPCG(1, 2))}
}

func (l *latencies) add(d time.Duration) {
	l.n++
	l.sum += d
	if len(l.sample) < l.max {
		l.sample = append(l.sample, d)
	} else if i := l.rnd.IntN(l.n); i < l.max {
		l.sample[i] = d
	}
}

type latencySummary struct {
	Count int     `json:"count"` // the requests measured: the figures are over these
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
}

func (l *latencies) summary() latencySummary {
	if l.n == 0 {
		return latencySummary{}
	}
	s := slices.Clone(l.sample)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	q := func(p float64) float64 { return ms(s[min(int(p*float64(len(s))), len(s)-1)]) }
	return latencySummary{Count: l.n, Mean: ms(l.sum) / float64(l.n), P50: q(0.50), P99: q(0.99)}
}
