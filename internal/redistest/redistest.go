// Package redistest runs a real redis-server for tests: its own process on a
// free loopback port, never the machine's packaged service.
//
// Tests that need it call Start; when the redis-server binary is not on PATH
// the test is skipped with a message saying how to get it, unless
// AMLPOOL_REQUIRE_REDIS=1 (which .ci/run sets), when it fails instead.
package redistest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RequireEnv makes a missing redis-server a failure instead of a skip.
const RequireEnv = "AMLPOOL_REQUIRE_REDIS"

// TB is the part of testing.TB that Start uses, so benchmarks can use it too.
type TB interface {
	Helper()
	Skip(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

var _ TB = (testing.TB)(nil)

// Server is one redis-server (or redis-sentinel) process.
type Server struct {
	Addr  string // 127.0.0.1:port
	bin   string
	dir   string
	extra []string // arguments after the common ones
	ready func(c *redis.Client, ctx context.Context) error

	// mu guards cmd, exited and log.
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	log    *LogBuffer
}

// LogBuffer is output written by one goroutine (exec's copying one, a
// logger's) while a test may read it.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Log returns what the server (of its last start) has logged so far, at
// level warning: for a Sentinel, its events (+sdown, +failover-…).
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return ""
	}
	return s.log.String()
}

// Binary returns the path of redis-server, or "" when there is none.
func Binary() string {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return ""
	}
	return p
}

// Start starts a redis-server on a free loopback port and stops it when the
// test ends. Without persistence: a restart starts empty.
func Start(t TB) *Server {
	t.Helper()
	return startServer(t, &Server{bin: need(t, "redis-server", "redis-server")}, freeAddr)
}

// need returns the path of the command name, from the Debian package pkg,
// or skips the test (fails it under RequireEnv) when it is not on PATH.
func need(t TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s not found on PATH and %s=1: install the Debian package %s", name, RequireEnv, pkg)
	}
	t.Skip(name + " not found on PATH: skipping the real-Redis test (apt-get install " + pkg + "; set " + RequireEnv + "=1 to fail instead)")
	return ""
}

// startServer starts s (its bin, extra arguments and ready check set) on an
// address from addr, in a directory of its own, and stops it when the test
// ends.
func startServer(t TB, s *Server, addr func(TB) string) *Server {
	t.Helper()
	if s.dir == "" {
		s.dir = t.TempDir()
	}
	var err error
	for range 5 { // a free port can be taken between probe and bind
		s.Addr = addr(t)
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

func freeAddr(t TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (s *Server) start() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", s.dir, "--loglevel", "warning"}
	if len(s.extra) > 0 && !strings.HasPrefix(s.extra[0], "--") {
		// A config file first (redis-sentinel needs one), then the rest.
		args = append([]string{s.extra[0]}, append(args, s.extra[1:]...)...)
	} else {
		args = append(args, s.extra...)
	}
	cmd := exec.Command(s.bin, args...)
	log := new(LogBuffer)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		if err == nil && s.ready != nil {
			err = s.ready(c, ctx)
		}
		cancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server on %s exited: %s", s.Addr, log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("redis-server on %s did not answer PING: %w", s.Addr, err)
		}
	}
	s.mu.Lock()
	s.cmd, s.exited, s.log = cmd, exited, log
	s.mu.Unlock()
	return nil
}

// Client returns a client tuned as redislimit recommends, closed when the
// test ends.
func (s *Server) Client(t TB) *redis.Client {
	c := redis.NewClient(Options(s.Addr))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Options are the client settings redislimit recommends, for addr.
func Options(addr string) *redis.Options {
	return &redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		DialTimeout:           250 * time.Millisecond,
		ReadTimeout:           100 * time.Millisecond,
		WriteTimeout:          100 * time.Millisecond,
		MaxRetries:            1,
	}
}

// Kill stops the server with SIGKILL, as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Restart kills the server and starts an empty one on the same port.
func (s *Server) Restart(t TB) {
	t.Helper()
	s.Kill()
	var err error
	for range 50 { // the port may linger a moment
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("redistest: restart: %v", err)
}

// Stop kills the server if it runs.
func (s *Server) Stop() { s.Kill() }

// Port returns the server's port.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.Addr)
	n, _ := strconv.Atoi(p)
	return n
}
