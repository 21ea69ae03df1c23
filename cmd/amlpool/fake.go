package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

const fakeHelp = `Usage: amlpool fake [flags]

Serves fake Azure ML Classic endpoints on this machine (127.0.0.1) until
interrupted, so that score, bench and your own programs can be tried
without Azure. Ctrl-C (SIGINT) or SIGTERM stops it, with exit status 130,
as "amlpool score" has when interrupted; the status is 2 for a bad flag or
flag value, 1 when it cannot write its files. It writes, in --dir:

  pool.json  a config naming the endpoints, for --config
  keys.env   their keys as environment variables: run ". DIR/keys.env"
  rows.csv   --sample-rows rows to score (id, age, income); none with 0

The fakes behave like the service: each runs at most --mcc calls at once
and throttles the next with 503 RequestThrottled, takes --latency per call,
and checks the key. Their model echoes each row and adds a "Scored
Probabilities" column; a request holding a cell equal to --poison fails with
HTTP 400 LibraryExecutionError, as a real model's error does. One row of
rows.csv is such a row, to show how a bad row is isolated: scoring the file
puts it alone in the reject file and scores all the others.

With --kind online the fakes are Azure ML online endpoints serving an
MLflow model: they answer POST /score, take the input_data form, answer 429
Too many pending requests past --mcc (up to 10000), and fail a request with
the poison cell with 424 and the model's 400 in its headers. pool.json then
names their kind and pins their deployment with a header.

Examples:
  amlpool fake --dir /tmp/amlfake
  amlpool fake --kind online --mcc 300 --dir /tmp/amlfake
  amlpool fake --endpoints 2 --mcc 4 --latency 200ms --dir /tmp/amlfake
  # then, in another shell:
  . /tmp/amlfake/keys.env
  amlpool score --config /tmp/amlfake/pool.json --in /tmp/amlfake/rows.csv --out scored.csv

Flags:
`

type fakeOptions struct {
	dir        string
	endpoints  int
	mcc        int
	latency    time.Duration
	sampleRows int
	poison     string
	kind       amlpool.Kind
}

func runFake(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), fakeHelp); fs.PrintDefaults() }
	var o fakeOptions
	fs.StringVar(&o.dir, "dir", "amlpool-fake", "where to write pool.json, keys.env and rows.csv")
	fs.IntVar(&o.endpoints, "endpoints", 3, "number of fake endpoints")
	fs.IntVar(&o.mcc, "mcc", amlpool.DefaultMaxConcurrentCalls, "Max Concurrent Calls of each endpoint (1-200; online: 1-10000)")
	fs.TextVar(&o.kind, "kind", amlpool.Classic, "kind of the fake endpoints: classic or online")
	fs.DurationVar(&o.latency, "latency", 50*time.Millisecond, "service time of each call")
	fs.IntVar(&o.sampleRows, "sample-rows", 1000, "rows to write to rows.csv (0: none)")
	fs.StringVar(&o.poison, "poison", "poison", "a cell the fake model cannot score")
	if code, done := parseFlags(fs, args); done {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "amlpool fake: unexpected argument %q (see amlpool fake --help)\n", fs.Arg(0))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return exitStatus(stderr, "fake", fake(ctx, o, stdout))
}

// fake starts the endpoints, writes the files and serves until ctx ends:
// then it says it was interrupted and returns errInterrupted.
func fake(ctx context.Context, o fakeOptions, stdout io.Writer) error {
	switch {
	case o.endpoints < 1:
		return usageError{fmt.Errorf("--endpoints %d: want at least 1", o.endpoints)}
	case o.mcc < 1 || o.mcc > maxMCC(o.kind):
		return usageError{fmt.Errorf("--mcc %d: want 1 to %d for %s endpoints", o.mcc, maxMCC(o.kind), o.kind)}
	case o.latency < 0:
		return usageError{fmt.Errorf("--latency %v: must not be negative", o.latency)}
	case o.sampleRows < 0:
		return usageError{fmt.Errorf("--sample-rows %d: must not be negative (0: no rows.csv)", o.sampleRows)}
	case o.poison == "":
		return usageError{errors.New("--poison: want a cell value")}
	}
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return err
	}
	model := poisonModel(o.poison)
	type endpoint struct {
		Name               string            `json:"name"`
		URL                string            `json:"url"`
		Kind               string            `json:"kind,omitempty"`
		APIKeyEnv          string            `json:"apiKeyEnv"`
		MaxConcurrentCalls int               `json:"maxConcurrentCalls"`
		Header             map[string]string `json:"header,omitempty"`
	}
	var cfg struct { // the fields of poolConfig this config sets
		Endpoints     []endpoint `json:"endpoints"`
		OutputColumns []string   `json:"outputColumns"`
	}
	cfg.OutputColumns = []string{amltest.ScoredProbabilities}
	var keys strings.Builder
	keys.WriteString("# Keys of the endpoints of amlpool fake; read them with: . " + shellQuote(filepath.Join(o.dir, "keys.env")) + "\n")
	for i := range o.endpoints {
		sc := amltest.Config{
			Name: fmt.Sprintf("fake%d", i+1), MaxConcurrentCalls: o.mcc, Latency: o.latency, Score: model,
		}
		if o.kind == amlpool.Online {
			sc.Kind, sc.Predict, sc.Deployment = amlpool.Online, poisonPredict(o.poison), "blue"
		}
		s, err := newFakeServer(sc, "--endpoints", o.endpoints)
		if err != nil {
			return err
		}
		defer s.Close()
		e := s.Endpoint()
		env := fmt.Sprintf("AMLPOOL_FAKE_KEY_%d", i+1)
		ep := endpoint{Name: e.Name, URL: e.URL, APIKeyEnv: env, MaxConcurrentCalls: o.mcc}
		if o.kind == amlpool.Online {
			ep.Kind, ep.Header = "online", map[string]string{amltest.DeploymentHeader: sc.Deployment}
		}
		cfg.Endpoints = append(cfg.Endpoints, ep)
		fmt.Fprintf(&keys, "export %s='%s'\n", env, e.APIKey) // base64: no quote inside
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // the URLs' "&" as it is
	enc.SetIndent("", "  ")
	if err := enc.Encode(cfg); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.dir, "pool.json"), b.Bytes(), 0o644); err != nil {
		return err
	}
	if err := writePrivate(filepath.Join(o.dir, "keys.env"), []byte(keys.String())); err != nil {
		return err
	}
	if o.sampleRows > 0 {
		if err := os.WriteFile(filepath.Join(o.dir, "rows.csv"), sampleRows(o.sampleRows, o.poison), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "amlpool fake: %d endpoints of %d slots at %v on 127.0.0.1; wrote %s, %s",
		o.endpoints, o.mcc, o.latency, filepath.Join(o.dir, "pool.json"), filepath.Join(o.dir, "keys.env"))
	if o.sampleRows > 0 {
		fmt.Fprintf(stdout, " and %s", filepath.Join(o.dir, "rows.csv"))
	}
	in := shellQuote(filepath.Join(o.dir, "rows.csv"))
	if o.sampleRows == 0 { // none written: any CSV will do, the fake model echoes its rows
		in = "your-rows.csv"
	}
	fmt.Fprintf(stdout, "\namlpool fake: ready; in another shell:\n  . %s\n  amlpool score --config %s --in %s --out scored.csv\namlpool fake: serving until interrupted (Ctrl-C)\n",
		shellQuote(filepath.Join(o.dir, "keys.env")), shellQuote(filepath.Join(o.dir, "pool.json")), in)
	<-ctx.Done()
	fmt.Fprintln(stdout, "amlpool fake: interrupted; stopping the endpoints")
	return errInterrupted
}

// writePrivate writes a file only its owner may read, also when it was
// there already with looser permissions (which os.WriteFile keeps): the
// keys are written only once the file is the owner's alone.
func writePrivate(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// poisonModel is amltest's Echo model, failing a request that holds a cell
// equal to poison, with a message naming the row, as a model's error does.
func poisonModel(poison string) func(*amlpool.Request) (*amlpool.Response, error) {
	return func(req *amlpool.Request) (*amlpool.Response, error) {
		for _, t := range req.Inputs {
			for i, row := range t.Values {
				for j, v := range row {
					if s, ok := v.(string); ok && s == poison {
						col := ""
						if j < len(t.ColumnNames) {
							col = t.ColumnNames[j]
						}
						return nil, fmt.Errorf("row %d of the request: column %s: cannot score %q", i+1, col, s)
					}
				}
			}
		}
		return amltest.Echo(req)
	}
}

// poisonPredict is amltest's OnlineEcho, failing a request that holds a
// cell equal to poison: the model's 400, which the endpoint answers as 424.
func poisonPredict(poison string) func([]string, [][]any) ([]any, error) {
	return func(cols []string, rows [][]any) ([]any, error) {
		for i, row := range rows {
			for j, v := range row {
				if s, ok := v.(string); ok && s == poison {
					return nil, fmt.Errorf("row %d of the request: column %s: cannot score %q", i+1, cols[j], s)
				}
			}
		}
		return amltest.OnlineEcho(cols, rows)
	}
}

// sampleRows is a CSV of n rows; the middle one holds poison, quoted as
// CSV needs it (a comma or a quote in it).
func sampleRows(n int, poison string) []byte {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	w.Write([]string{"id", "age", "income"})
	for i := range n {
		age := fmt.Sprint(18 + i*7%60)
		if i == n/2 {
			age = poison
		}
		w.Write([]string{fmt.Sprint(i + 1), age, fmt.Sprint(20000 + i*37%80000)})
	}
	w.Flush() // into a bytes.Buffer: no error
	return b.Bytes()
}

// shellQuote returns s as a POSIX shell word: as it is when it holds
// nothing a shell would read otherwise, else in single quotes, so that the
// commands fake prints run as shown whatever --dir holds (a space, a quote).
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("_@%+=:,./-", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
