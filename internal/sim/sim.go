// Package sim simulates Azure ML Classic endpoints and the load on them, in
// virtual time, for amlpool's load-balancing, adaptive-limit and hedging
// proofs.
//
// Everything here is meant to run inside a testing/synctest bubble: time
// only moves when every goroutine waits, so a minute of simulated traffic
// takes a second or two of CPU, and latencies are exact. A real amlpool
// Client runs the calls, with a Server as its HTTP transport
// (amlpool.WithHTTPClient(server.Client())), so the simulation tests the code
// users run, not a model of it.
package sim

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint is one simulated endpoint: a cap on calls in flight, past which
// it answers 503 RequestThrottled, and a service time per call.
type Endpoint struct {
	Name string
	MCC  int
	// Service returns the service time of one call (the n-th, from 1).
	Service func(n int64, r *rand.Rand) time.Duration
	// KeepsCancelled makes the endpoint work on, and count against its cap,
	// a call whose client gave up, until its service time ends. By default
	// a call stops when the client cancels it, as amltest's do.
	KeepsCancelled bool

	mu  sync.Mutex // guards rng and served
	rng *rand.Rand
	// served holds the service time of every scored call.
	served []time.Duration

	inFlight  atomic.Int64
	peak      atomic.Int64
	requests  atomic.Int64
	scored    atomic.Int64
	throttled atomic.Int64
	cancelled atomic.Int64
}

// Stats is what an endpoint saw.
type Stats struct {
	Requests  int64 // calls that reached it
	Scored    int64 // calls it answered 200
	Throttled int64 // calls it answered 503 RequestThrottled
	Cancelled int64 // calls the client gave up on while served
	Peak      int64 // the most calls it had in flight at once, the one throttled for it included: above MCC means its cap was broken
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() Stats {
	return Stats{Requests: e.requests.Load(), Scored: e.scored.Load(), Throttled: e.throttled.Load(),
		Cancelled: e.cancelled.Load(), Peak: e.peak.Load()}
}

// Served returns the service times of the calls it scored, in no order.
func (e *Endpoint) Served() []time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.served)
}

// Server routes requests to simulated endpoints by host name; its RoundTrip
// makes it an http.RoundTripper. Each exchange also costs RTT, half each way.
type Server struct {
	RTT time.Duration
	eps map[string]*Endpoint
	wg  sync.WaitGroup // abandoned calls still being worked on (KeepsCancelled)
}

// NewServer returns a Server for eps, each with its own random source
// seeded from seed and its index.
func NewServer(rtt time.Duration, seed uint64, eps ...*Endpoint) *Server {
	s := &Server{RTT: rtt, eps: make(map[string]*Endpoint, len(eps))}
	for i, ep := range eps {
		ep.rng = rand.New(rand.NewPCG(seed, uint64(i)))
		s.eps[ep.Name] = ep
	}
	return s
}

// Wait waits until the endpoints have finished the calls their clients
// abandoned (see KeepsCancelled).
func (s *Server) Wait() { s.wg.Wait() }

// URL returns the scoring URL of the endpoint called name.
func (s *Server) URL(name string) string {
	return "https://" + name + ".sim/workspaces/w/services/" + name + "/execute?api-version=2.0"
}

// Client returns an http.Client whose transport is s.
func (s *Server) Client() *http.Client { return &http.Client{Transport: s} }

const throttleBody = `{"error":{"code":"ServiceUnavailable","message":"Service is temporarily unavailable.",` +
	`"details":[{"code":"RequestThrottled","message":"Request was throttled."}]}}`

// RoundTrip serves one request in virtual time.
func (s *Server) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	ep := s.eps[strings.TrimSuffix(r.URL.Hostname(), ".sim")]
	if ep == nil {
		return nil, fmt.Errorf("sim: no endpoint at %s", r.URL.Host)
	}
	ctx := r.Context()
	if err := sleep(ctx, s.RTT/2); err != nil {
		return nil, err
	}
	n := ep.requests.Add(1)
	// The peak counts this call even when it is one too many: a peak above
	// MCC is a client that broke the cap.
	cur := ep.inFlight.Add(1)
	for p := ep.peak.Load(); cur > p && !ep.peak.CompareAndSwap(p, cur); p = ep.peak.Load() {
	}
	if cur > int64(ep.MCC) {
		ep.inFlight.Add(-1)
		ep.throttled.Add(1)
		return s.reply(ctx, r, http.StatusServiceUnavailable, throttleBody)
	}
	ep.mu.Lock()
	d := ep.Service(n, ep.rng)
	ep.mu.Unlock()
	start := time.Now()
	if err := sleep(ctx, d); err != nil {
		ep.cancelled.Add(1)
		if rest := d - time.Since(start); ep.KeepsCancelled && rest > 0 {
			s.wg.Go(func() {
				time.Sleep(rest)
				ep.inFlight.Add(-1)
			})
		} else {
			ep.inFlight.Add(-1)
		}
		return nil, err
	}
	ep.inFlight.Add(-1)
	ep.scored.Add(1)
	ep.mu.Lock()
	ep.served = append(ep.served, d)
	ep.mu.Unlock()
	return s.reply(ctx, r, http.StatusOK, `{"Results":{}}`)
}

func (s *Server) reply(ctx context.Context, r *http.Request, status int, body string) (*http.Response, error) {
	if err := sleep(ctx, s.RTT/2); err != nil {
		return nil, err
	}
	return &http.Response{
		StatusCode:    status,
		Status:        http.StatusText(status),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       r,
	}, nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
