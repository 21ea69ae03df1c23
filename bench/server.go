package main

import (
	"fmt"
	"syscall"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// endpointSpec describes one endpoint of a workload.
type endpointSpec struct {
	mcc     int
	latency time.Duration
	down    bool // refuses connections
}

// server is one endpoint of a workload, as the harness sees it.
type server interface {
	endpoint() amlpool.Endpoint
	throttled() int64 // 503 throttles sent so far
	close()
}

// startServer starts the endpoint described by spec on loopback.
func startServer(name string, spec endpointSpec) (server, error) {
	if spec.down {
		return newRefusingServer(name, spec.mcc)
	}
	return fakeServer{amltest.NewServer(amltest.Config{
		Name:               name,
		MaxConcurrentCalls: spec.mcc,
		Latency:            spec.latency,
	})}, nil
}

// fakeServer is an amltest endpoint: at most mcc calls at once, each held
// for latency, 503 RequestThrottled beyond that, like the service.
type fakeServer struct{ s *amltest.Server }

func (f fakeServer) endpoint() amlpool.Endpoint { return f.s.Endpoint() }
func (f fakeServer) throttled() int64           { return f.s.Stats().Throttled }
func (f fakeServer) close()                     { f.s.Close() }

// refusingServer holds a loopback port bound but not listening, so every
// connection to it is refused and no other process can take the port.
type refusingServer struct {
	fd   int
	name string
	port int
	mcc  int
}

func newRefusingServer(name string, mcc int) (*refusingServer, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, fmt.Errorf("refusing endpoint: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("refusing endpoint: bind: %w", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("refusing endpoint: %w", err)
	}
	return &refusingServer{fd: fd, name: name, port: sa.(*syscall.SockaddrInet4).Port, mcc: mcc}, nil
}

func (s *refusingServer) endpoint() amlpool.Endpoint {
	return amlpool.Endpoint{
		Name:               s.name,
		URL:                fmt.Sprintf("http://127.0.0.1:%d/workspaces/bench/services/%s/execute?api-version=2.0", s.port, s.name),
		APIKey:             "key-" + s.name,
		MaxConcurrentCalls: s.mcc,
	}
}

func (s *refusingServer) throttled() int64 { return 0 }
func (s *refusingServer) close()           { syscall.Close(s.fd) }
