package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/amlpool/amlpool"
)

// serveEnv, set in a child's environment, makes the binary serve one
// endpoint instead of running the benchmarks (see serveChild).
const serveEnv = "AMLPOOL_BENCH_SERVE"

// overheadServer starts the endpoint of the overhead workload.
type overheadServer func() (server, error)

// serveChild serves one 0 ms endpoint with room for 200 calls, writes its URL
// and key to stdout on one line, and returns when stdin closes.
func serveChild() {
	s := newFakeServer("ep1", endpointSpec{mcc: amlpool.MaxMaxConcurrentCalls})
	ep := s.endpoint()
	fmt.Printf("%s %s\n", ep.URL, ep.APIKey)
	io.Copy(io.Discard, os.Stdin)
	s.close()
}

// childServer is an endpoint served by another process running serveChild.
type childServer struct {
	cmd   *exec.Cmd
	stdin io.Closer
	ep    amlpool.Endpoint
}

// startChild re-runs exe (this binary, or a test binary whose TestMain
// calls serveChild) with serveEnv set.
func startChild(exe string, args ...string) (server, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), serveEnv+"=1")
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
	line, err := bufio.NewReader(stdout).ReadString('\n')
	url, key, found := strings.Cut(strings.TrimSpace(line), " ")
	if err != nil || !found {
		stdin.Close()
		cmd.Wait()
		return nil, fmt.Errorf("endpoint process: no address (read %q: %v)", line, err)
	}
	return &childServer{cmd: cmd, stdin: stdin, ep: amlpool.Endpoint{
		Name: "ep1", URL: url, APIKey: key, MaxConcurrentCalls: amlpool.MaxMaxConcurrentCalls,
	}}, nil
}

func (c *childServer) endpoint() amlpool.Endpoint { return c.ep }
func (c *childServer) throttled() int64           { return 0 } // the cap is never reached
func (c *childServer) close() {
	c.stdin.Close()
	c.cmd.Wait()
}
