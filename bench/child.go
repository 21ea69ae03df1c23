package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/amlpool/amlpool"
)

// The endpoints of a workload run in a child process, this same binary (or
// the test binary) started with serveEnv set to the endpoints' specs. So the
// client under test has its process to itself, as beside a real service:
// the servers' work neither shares its Go scheduler nor counts in its CPU
// time.
//
// The child writes its endpoints as one JSON line, then answers each
// "throttled" line on its stdin with the 503 throttles its servers have sent
// so far, and exits when its stdin closes.

// serveEnv names the environment variable that holds the child's specs.
const serveEnv = "AMLPOOL_BENCH_SERVE"

// wireSpec is an endpointSpec as the child receives it.
type wireSpec struct {
	MCC     int           `json:"mcc"`
	Latency time.Duration `json:"latency"`
	Down    bool          `json:"down"`
}

// wireEndpoint is an endpoint as the child reports it. (amlpool.Endpoint
// redacts its key when marshalled.)
type wireEndpoint struct {
	Name, URL, Key string
	MCC            int
}

// launcher starts a workload's endpoints.
type launcher func(specs []endpointSpec) (*endpoints, error)

// serveChild is the child's main.
func serveChild() {
	if err := serve(os.Getenv(serveEnv), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench endpoint process:", err)
		os.Exit(1)
	}
}

func serve(specJSON string, in io.Reader, out io.Writer) error {
	var specs []wireSpec
	if err := json.Unmarshal([]byte(specJSON), &specs); err != nil {
		return fmt.Errorf("bad %s: %w", serveEnv, err)
	}
	var srvs []server
	defer func() {
		for _, s := range srvs {
			s.close()
		}
	}()
	var eps []wireEndpoint
	for i, sp := range specs {
		s, err := startServer(fmt.Sprintf("ep%d", i+1), endpointSpec{mcc: sp.MCC, latency: sp.Latency, down: sp.Down})
		if err != nil {
			return err
		}
		srvs = append(srvs, s)
		ep := s.endpoint()
		eps = append(eps, wireEndpoint{Name: ep.Name, URL: ep.URL, Key: ep.APIKey, MCC: ep.MaxConcurrentCalls})
	}
	line, err := json.Marshal(eps)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s\n", line)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if sc.Text() != "throttled" {
			return fmt.Errorf("unknown request %q", sc.Text())
		}
		var n int64
		for _, s := range srvs {
			n += s.throttled()
		}
		fmt.Fprintln(out, n)
	}
	return sc.Err()
}

// childLauncher returns a launcher that runs the endpoints in exe, which
// must call serveChild when serveEnv is set.
func childLauncher(exe string) launcher {
	return func(specs []endpointSpec) (*endpoints, error) {
		return startChild(exe, specs)
	}
}

// endpoints are a workload's endpoints, served by a child process.
type endpoints struct {
	eps   []amlpool.Endpoint
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startChild(exe string, specs []endpointSpec) (*endpoints, error) {
	ws := make([]wireSpec, len(specs))
	for i, s := range specs {
		ws[i] = wireSpec{MCC: s.mcc, Latency: s.latency, Down: s.down}
	}
	js, err := json.Marshal(ws)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), serveEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start endpoint process: %w", err)
	}
	e := &endpoints{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	line, err := e.out.ReadBytes('\n')
	var eps []wireEndpoint
	if err == nil {
		err = json.Unmarshal(line, &eps)
	}
	if err != nil || len(eps) != len(specs) {
		e.close()
		return nil, fmt.Errorf("endpoint process: no endpoints (read %q: %v)", line, err)
	}
	for _, ep := range eps {
		e.eps = append(e.eps, amlpool.Endpoint{Name: ep.Name, URL: ep.URL, APIKey: ep.Key, MaxConcurrentCalls: ep.MCC})
	}
	return e, nil
}

// throttled returns the 503 throttles the endpoints have sent so far.
func (e *endpoints) throttled() (int64, error) {
	if _, err := io.WriteString(e.stdin, "throttled\n"); err != nil {
		return 0, fmt.Errorf("endpoint process: %w", err)
	}
	line, err := e.out.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("endpoint process: %w", err)
	}
	return strconv.ParseInt(strings.TrimSpace(line), 10, 64)
}

// close stops the child and waits for it.
func (e *endpoints) close() {
	e.stdin.Close()
	e.cmd.Wait()
}
