package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/amlpool/amlpool"
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
	return newFakeServer(name, spec), nil
}

// fakeServer is a minimal Azure ML Classic endpoint: at most mcc calls at
// once, each held for latency, 503 RequestThrottled beyond that.
type fakeServer struct {
	ts        *httptest.Server
	name      string
	mcc       int64
	latency   time.Duration
	inFlight  atomic.Int64
	nThrottle atomic.Int64
}

const throttleBody = `{"error":{"code":"ServiceUnavailable","message":"Service is temporarily unavailable.",` +
	`"details":[{"code":"RequestThrottled","message":"Request was throttled."}]}}`

const scoreBody = `{"Results":{"output1":{"type":"table","value":{"ColumnNames":["Scored Labels"],` +
	`"ColumnTypes":["Double"],"Values":[["0.5"]]}}}}`

func newFakeServer(name string, spec endpointSpec) *fakeServer {
	s := &fakeServer{name: name, mcc: int64(spec.mcc), latency: spec.latency}
	s.ts = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

func (s *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if s.inFlight.Add(1) > s.mcc {
		s.inFlight.Add(-1)
		s.nThrottle.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(throttleBody))
		return
	}
	if s.latency > 0 {
		t := time.NewTimer(s.latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	// Free the slot before the reply leaves, as the service does: a client
	// that reuses the slot at once must not be throttled.
	s.inFlight.Add(-1)
	w.Write([]byte(scoreBody))
}

func (s *fakeServer) endpoint() amlpool.Endpoint {
	return amlpool.Endpoint{
		Name:               s.name,
		URL:                s.ts.URL + "/workspaces/bench/services/" + s.name + "/execute?api-version=2.0&details=true",
		APIKey:             "key-" + s.name,
		MaxConcurrentCalls: int(s.mcc),
	}
}

func (s *fakeServer) throttled() int64 { return s.nThrottle.Load() }
func (s *fakeServer) close()           { s.ts.Close() }

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
