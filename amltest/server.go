package amltest

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amlpool/amlpool"
)

const (
	// DefaultMaxConcurrentCalls is the cap of a Server whose Config leaves
	// MaxConcurrentCalls at zero: the service's own default.
	DefaultMaxConcurrentCalls = 20
	// MaxRequestBytes is the largest request body a Server accepts (the
	// service's 4 MB payload limit). A larger one gets 400 BadArgument /
	// RequestBodyInvalid; on a Server of Kind Online, 413 Request Entity
	// Too Large with a {"message": "…"} body, before the model sees it.
	MaxRequestBytes = 4 << 20
	// maxKeysSeen bounds Stats.KeysSeen, so a test that sends many wrong keys
	// cannot grow the server without end.
	maxKeysSeen = 64
)

// ErrServerClosed is returned by WaitFor when the Server closes first.
var ErrServerClosed = errors.New("amltest: server closed")

// Config describes one fake endpoint. The zero Config is a working endpoint
// with a random id and key, a cap of 20 calls, no latency and the Echo model.
type Config struct {
	// Name is the endpoint id in the URL path (…/services/{Name}/execute).
	// Default: a random 32-digit hex id, like the service's.
	Name string
	// Key is the API key the endpoint accepts as "Authorization: Bearer <key>"
	// (a TokenOnly server refuses it). Default: a random 88-character
	// base64 key, like the service's.
	Key string
	// SecondaryKey is a second key the endpoint accepts, as the service
	// gives every endpoint two. Default: a random key like Key's.
	SecondaryKey string
	// MaxConcurrentCalls is the endpoint's cap: a call that arrives while this
	// many admitted calls are in flight gets 503 RequestThrottled. Zero or
	// less means DefaultMaxConcurrentCalls (20).
	MaxConcurrentCalls int
	// Latency is the service time of each scored call, counted from its
	// admission: reading and decoding its body take part of it, not more
	// (unless they take longer), so a call's reply is ready Latency after
	// it arrived, as a real service's would be. Default: none.
	Latency time.Duration
	// LatencyFunc, when set, is called once per scored call instead of using
	// Latency, e.g. to draw from a distribution. It is called from many
	// goroutines at once and must be safe for that.
	LatencyFunc func() time.Duration
	// Score is the model: it turns the decoded request into the reply. It is
	// called from many goroutines at once and must be safe for that. A
	// returned error becomes a 400 LibraryExecutionError reply carrying the
	// error's text. Default: Echo.
	Score func(in *amlpool.Request) (*amlpool.Response, error)
	// Fault, when set, decides a fault for the n-th admitted call (1-based,
	// counted from the server's start; ResetStats does not reset it). Calls
	// answered with 401, 404, 405, 400 BadVersionCall or the throttle 503
	// (online: 429) are not admitted and do not count. Faults queued by Script go first: while one is queued, Fault
	// is not called for that call, though n still counts it. A zero Fault
	// means a normal reply. It is called from many goroutines at once and
	// must be safe for that. A returned Status that is not a final HTTP
	// status (200 to 999) panics that call's handler with a message naming
	// it: its client sees the connection close, and a server from
	// NewTestServer fails its test.
	Fault func(n int64) Fault

	// Kind amlpool.Online makes the server an online endpoint serving an
	// MLflow model (see Pending): it answers POST /score, and a call over
	// MaxConcurrentCalls gets 429 Too many pending requests. Score is not
	// used; Predict is the model. Default: amlpool.Classic.
	Kind amlpool.Kind
	// Predict is an online server's model: one prediction per row of the
	// request's input_data. An error becomes the model's 400, sent as a 424
	// with the model's status and reason headers. It is called from many
	// goroutines at once and must be safe for that. Default: OnlineEcho.
	Predict func(columns []string, rows [][]any) ([]any, error)
	// PredictionsObject makes an online server reply {"predictions": [...]}
	// instead of a bare array, as some MLflow servers do.
	PredictionsObject bool
	// Deployment is an online server's deployment name: a request whose
	// azureml-model-deployment header names another gets 404. Default: any.
	Deployment string
	// AcceptToken, when set, decides whether a bearer value that is not
	// one of the keys (with TokenOnly: any bearer value) is a valid token
	// (Azure AD or aml_token): tests of a Credential use it to expire and
	// rotate tokens. It is called from many goroutines at once and must be
	// safe for that.
	AcceptToken func(token string) bool
	// TokenOnly makes an online server refuse its keys with 401, as a
	// managed online endpoint in a token auth mode (aad_token, aml_token)
	// does: such an endpoint has no keys, and only a token AcceptToken
	// accepts is valid. Endpoint then carries no keys: give it a
	// Credential. NewServer panics when TokenOnly is set on a classic
	// server (Azure ML Classic takes keys only) or without AcceptToken
	// (the server would accept nothing). Default: keys and the tokens
	// AcceptToken accepts are both valid.
	TokenOnly bool
	// RecordHeaders names request headers whose values Stats.HeadersSeen
	// keeps, e.g. DeploymentHeader.
	RecordHeaders []string

	// FinishAbandoned makes the server work on a call whose client went
	// away until the call's service time (Latency or LatencyFunc, plus any
	// Fault.Delay) has passed, as a service that cannot stop a running
	// model would: the call keeps its place under the cap, and counts in
	// InFlight, until then, and a hung call (Fault.Hang) keeps it until the
	// server closes or restarts. The call gets no reply. By default a call
	// stops, and frees its place, as soon as its client goes away. Whether
	// Azure ML stops such a call is not documented (docs/azureml.md): this
	// tests a client against the other case, in which cancelling a call
	// (a hedge's loser, a timeout) does not free the endpoint's slot.
	FinishAbandoned bool
}

// Server is a fake Azure ML Classic scoring endpoint on an httptest.Server.
// It answers POST …/workspaces/{ws}/services/{Name}/execute like the service
// (docs/azureml.md): it checks the key, enforces its cap with 503
// RequestThrottled, runs the model after the configured latency, and injects
// the faults a test asks for. It counts what it saw in Stats, which tests use
// as the server-side witness of the client's behaviour.
//
// Server is safe for concurrent use by multiple goroutines. Its methods may
// be called while requests are in flight. The zero Server is not usable: make
// one with NewServer, NewUnstartedServer or NewTestServer.
type Server struct {
	// genMu guards the current generation: ts, stop and tls. Restart
	// replaces them; handlers hold their own generation's stop.
	genMu sync.Mutex
	ts    *httptest.Server
	stop  chan struct{}          // closed when this generation stops: ends its waits
	tls   bool                   // started with StartTLS, so restarts too
	base  atomic.Pointer[string] // ts.URL, the same across restarts

	// Set by NewTestServer only: the test that panics in the server fail,
	// the server's in-memory address and the client that dials it.
	t         testing.TB
	mem       *memSlot
	memClient *http.Client

	name      string
	keys2     atomic.Pointer[[2]string] // the primary and secondary keys accepted now
	workspace string

	latency     time.Duration
	latencyFunc func() time.Duration
	score       func(*amlpool.Request) (*amlpool.Response, error)
	faultFunc   func(int64) Fault

	kind              amlpool.Kind
	predict           func([]string, [][]any) ([]any, error)
	predictionsObject bool
	deployment        string
	acceptToken       func(string) bool
	tokenOnly         bool
	finishAbandoned   bool
	recorded          []string // Config.RecordHeaders, canonical

	closed    chan struct{} // closed by Close; ends WaitFor and Restart
	closeOnce sync.Once
	// closeWarnAfter is how long Close and Restart wait for the handlers
	// before they log what they wait for (tests shorten it).
	closeWarnAfter time.Duration

	// testHookThrottled, when set (by tests, before Start), is called by a
	// call the cap turns away, before its reply.
	testHookThrottled func()

	mcc      atomic.Int64 // current cap
	admitted atomic.Int64 // admitted calls in flight: what the cap is checked against
	ordinal  atomic.Int64 // admitted calls since start: the n of Config.Fault

	requests     atomic.Int64
	scored       atomic.Int64
	throttled    atomic.Int64
	unauthorized atomic.Int64
	rejected     atomic.Int64
	faults       atomic.Int64
	inFlight     atomic.Int64
	peak         atomic.Int64
	peakAdmitted atomic.Int64

	// changed is closed and cleared whenever a counter changes while WaitFor
	// is waiting; nil when nobody waits, so the hot path only loads it.
	changed atomic.Pointer[chan struct{}]

	mu      sync.Mutex // guards script, keys and headers
	script  []Fault
	keys    map[string]struct{} // the keys presented, for Stats.KeysSeen
	headers map[string][]string // values of the recorded headers, for Stats.HeadersSeen
}

// NewServer starts and returns a fake endpoint. The caller must Close it,
// typically with t.Cleanup(s.Close).
func NewServer(cfg Config) *Server {
	s := NewUnstartedServer(cfg)
	s.Start()
	return s
}

// NewUnstartedServer returns a fake endpoint that is not yet listening.
// Start or StartTLS it, then Close it. It panics (as NewServer and
// NewTestServer do) when cfg.Kind is neither amlpool.Classic nor
// amlpool.Online, and when cfg.TokenOnly is set on a classic server or
// without cfg.AcceptToken.
func NewUnstartedServer(cfg Config) *Server {
	if cfg.Kind != amlpool.Classic && cfg.Kind != amlpool.Online {
		panic(fmt.Sprintf("amltest: Config.Kind %d is neither amlpool.Classic nor amlpool.Online", cfg.Kind))
	}
	if cfg.TokenOnly && cfg.Kind != amlpool.Online {
		panic("amltest: Config.TokenOnly on a classic server: Azure ML Classic endpoints take keys only; set Kind amlpool.Online")
	}
	if cfg.TokenOnly && cfg.AcceptToken == nil {
		panic("amltest: Config.TokenOnly without Config.AcceptToken: the server would accept no call; set AcceptToken to say which tokens are valid")
	}
	s := &Server{
		name:           cfg.Name,
		workspace:      randomHex(16),
		latency:        cfg.Latency,
		latencyFunc:    cfg.LatencyFunc,
		score:          cfg.Score,
		faultFunc:      cfg.Fault,
		closed:         make(chan struct{}),
		stop:           make(chan struct{}),
		closeWarnAfter: 5 * time.Second,
		keys:           make(map[string]struct{}),
		headers:        make(map[string][]string),

		kind:              cfg.Kind,
		predict:           cfg.Predict,
		predictionsObject: cfg.PredictionsObject,
		deployment:        cfg.Deployment,
		acceptToken:       cfg.AcceptToken,
		tokenOnly:         cfg.TokenOnly,
		finishAbandoned:   cfg.FinishAbandoned,
	}
	for _, h := range cfg.RecordHeaders {
		s.recorded = append(s.recorded, http.CanonicalHeaderKey(h))
	}
	if s.predict == nil {
		s.predict = OnlineEcho
	}
	if s.name == "" {
		s.name = randomHex(16)
	}
	s.SetKeys(cfg.Key, cfg.SecondaryKey)
	if s.score == nil {
		s.score = Echo
	}
	s.SetMaxConcurrentCalls(cfg.MaxConcurrentCalls)
	s.ts = httptest.NewUnstartedServer(s.handler(s.stop))
	return s
}

// handler serves one generation of the server: its waits end when stop
// closes.
func (s *Server) handler(stop chan struct{}) http.Handler {
	h := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serveHTTP(w, r, stop) }))
	if s.t != nil {
		h = failPanics(s.t, h)
	}
	return h
}

// Start starts a server from NewUnstartedServer.
func (s *Server) Start() {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	s.mustNotBeInMemory("Start")
	s.ts.Start()
	s.base.Store(&s.ts.URL)
}

// StartTLS starts a server from NewUnstartedServer with TLS; use Client for
// a client that trusts it.
func (s *Server) StartTLS() {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	s.mustNotBeInMemory("StartTLS")
	s.tls = true
	s.ts.StartTLS()
	s.base.Store(&s.ts.URL)
}

// mustNotBeInMemory panics, naming the method, on a server from
// NewTestServer: it is started already, on the in-memory network.
func (s *Server) mustNotBeInMemory(method string) {
	if s.mem != nil {
		panic("amltest: " + method + " of a server from NewTestServer, which is started already on the in-memory network")
	}
}

// Close ends every call in flight (hung and delayed calls give up at once,
// a reply being written is cut off, and their clients see the connection
// close), shuts the server down and waits for its handlers to return. Close
// is idempotent.
//
// A handler in a Config.Score, Predict, LatencyFunc, Fault or AcceptToken
// cannot be stopped: Close waits until the function returns. When that
// takes 5 seconds, Close says so, naming the server and the calls it waits
// for, through the test's Logf for a server from NewTestServer, else
// through the standard logger (as httptest.Server's Close does), and goes
// on waiting. Restart waits, and says so, in the same way.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.notify()
	})
	s.genMu.Lock()
	defer s.genMu.Unlock()
	s.stopLocked("Close")
	if s.mem != nil {
		s.mem.release()
		s.memClient.CloseIdleConnections()
	}
}

// stopLocked ends the current generation: its calls end at once, its
// connections close and its handlers return. Idempotent.
//
// httptest's Close waits for the calls on active connections, so those are
// closed first: a handler blocked writing a reply its client does not read
// (a body left unread and unclosed) would otherwise hold Close for ever.
// A handler in a function of the Config cannot be stopped so: after
// closeWarnAfter, op (Close or Restart) logs what it waits for.
func (s *Server) stopLocked(op string) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.ts.CloseClientConnections()
	done := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		t := time.NewTimer(s.closeWarnAfter)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			n := s.inFlight.Load()
			calls := "calls"
			if n == 1 {
				calls = "call"
			}
			s.logf("amltest: %s of server %s has waited %v for %d %s in the handler, and waits on: "+
				"a Config.Score, Predict, LatencyFunc, Fault or AcceptToken that has not returned holds it until it returns",
				op, s.name, s.closeWarnAfter, n, calls)
		}
	})
	s.ts.Close()
	close(done)
	watch.Wait() // nothing logged once op has returned
}

// logf logs through the test's Logf for a server from NewTestServer, else
// through the standard logger.
func (s *Server) logf(format string, args ...any) {
	if s.t != nil {
		s.t.Logf(format, args...)
		return
	}
	log.Printf(format, args...)
}

// Restart stops the server as a process restart would and starts it again
// on the same address: calls in flight end at once and their clients see
// the connection close, as with Close; connections are refused for down;
// then the server listens again with the same URL, key, cap, model and
// faults, TLS included. Stats and the n of Config.Fault carry on across the
// restart; InFlight is zero when the server listens again. Restart blocks
// until the server listens again, or until Close, after which the server
// stays closed; a Restart after Close returns at once. Like Close, it
// waits for a handler in a function of the Config to return, and says so
// after 5 seconds. It panics, as
// httptest does, when the address cannot be listened on again within a
// second (another process took the port).
func (s *Server) Restart(down time.Duration) {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	if s.base.Load() == nil {
		panic("amltest: Restart of a server that was never started")
	}
	addr := s.ts.Listener.Addr().String()
	s.stopLocked("Restart")
	t := time.NewTimer(down)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.closed:
		return
	}
	select {
	case <-s.closed: // closed before Restart, or with a zero down time
		return
	default:
	}
	var l net.Listener
	if s.mem != nil {
		l = s.mem.listen()
	} else {
		l = listenAgain(addr)
	}
	s.stop = make(chan struct{})
	s.ts = httptest.NewUnstartedServer(s.handler(s.stop))
	_ = s.ts.Listener.Close() // the random port it was given
	s.ts.Listener = l
	if s.tls {
		s.ts.StartTLS()
	} else {
		s.ts.Start()
	}
}

// listenAgain listens on addr, retrying for a second: the port of a closed
// listener is free at once (Go sets SO_REUSEADDR), unless a client's
// outgoing connection happens to hold it as its own port.
func listenAgain(addr string) net.Listener {
	var err error
	for range 100 {
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil {
			return l
		}
		time.Sleep(10 * time.Millisecond)
	}
	panic("amltest: Restart: listen again on " + addr + ": " + err.Error())
}

// CloseClientConnections closes every connection to the server, as
// httptest.Server's does, to test network failures. Calls in flight end as
// if their clients had gone away.
func (s *Server) CloseClientConnections() {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	s.ts.CloseClientConnections()
}

// Client returns an *http.Client set up to trust the server (for StartTLS).
// It waits while a Restart is under way. For a server from NewTestServer it
// is the client of the in-memory network, which reaches every in-memory
// server; it is the same client across restarts.
func (s *Server) Client() *http.Client {
	if s.memClient != nil {
		return s.memClient
	}
	s.genMu.Lock()
	defer s.genMu.Unlock()
	return s.ts.Client()
}

// DialContext dials addr as the server's Client does, for a transport of
// the test's own: one sized as amlpool.WithHTTPClient advises, say, or
// wrapped in a RoundTripper of its own:
//
//	tr := &http.Transport{DialContext: srv.DialContext, MaxIdleConnsPerHost: 64}
//
// For a server from NewTestServer it dials over the in-memory network,
// where it reaches every in-memory server by its address, as Client does
// (an address no open in-memory server has is refused); for any other
// server, over the real network. (A RoundTripper may also wrap
// Client().Transport as it is.)
func (s *Server) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if s.mem != nil {
		return memDial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// URL returns the endpoint's scoring URL, like the one on the service's API
// help page: base + "/workspaces/{ws}/services/{Name}/execute?api-version=2.0&details=true";
// for an online server, base + "/score".
// Add "&format=swagger" for row objects; drop "&details=true" for replies
// without column lists. It is valid once the server has started.
func (s *Server) URL() string {
	base := ""
	if p := s.base.Load(); p != nil {
		base = *p
	}
	if s.kind == amlpool.Online {
		return base + "/score"
	}
	return base + "/workspaces/" + url.PathEscape(s.workspace) + "/services/" +
		url.PathEscape(s.name) + "/execute?api-version=2.0&details=true"
}

// Endpoint returns the amlpool.Endpoint for this server: its Name, URL,
// keys, its current cap and its Kind. For an online server with a
// Deployment, its Header pins that deployment. A TokenOnly server's has no
// keys, as the service gives none in a token auth mode: set its
// Credential. A server from NewTestServer is reached only over the
// in-memory network: give the amlpool Client amlpool.WithHTTPClient(s.Client()),
// or a client whose transport dials with s.DialContext.
func (s *Server) Endpoint() amlpool.Endpoint {
	e := amlpool.Endpoint{
		Name:               s.name,
		URL:                s.URL(),
		MaxConcurrentCalls: int(s.mcc.Load()),
		Kind:               s.kind,
	}
	if !s.tokenOnly {
		keys := s.keys2.Load()
		e.APIKey, e.SecondaryKey = keys[0], keys[1]
	}
	if s.kind == amlpool.Online && s.deployment != "" {
		e.Header = http.Header{}
		e.Header.Set(DeploymentHeader, s.deployment)
	}
	return e
}

// SetKeys replaces the keys the endpoint accepts, as regenerating a key on
// the service does: calls that present another key from now on get 401.
// An empty key is replaced by a random one. A TokenOnly server refuses
// its keys all the same.
func (s *Server) SetKeys(primary, secondary string) {
	if primary == "" {
		primary = randomKey()
	}
	if secondary == "" {
		secondary = randomKey()
	}
	s.keys2.Store(&[2]string{primary, secondary})
}

// accepts reports whether key is one of the endpoint's keys now (unless
// the server is TokenOnly), or a token Config.AcceptToken accepts.
func (s *Server) accepts(key string) bool {
	if s.tokenOnly {
		return s.acceptToken(key)
	}
	keys := s.keys2.Load()
	// Both compared, so that the time taken does not tell which matched.
	a := subtle.ConstantTimeCompare([]byte(key), []byte(keys[0]))
	b := subtle.ConstantTimeCompare([]byte(key), []byte(keys[1]))
	return a|b == 1 || s.acceptToken != nil && s.acceptToken(key)
}

// randomKey returns an 88-character base64 key, like the service's.
func randomKey() string {
	b := make([]byte, 64)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.StdEncoding.EncodeToString(b)
}

// Script queues faults: the next len(faults) admitted calls get them, in
// order, before Config.Fault is consulted again. Calls to Script append to
// the queue. It panics, queueing none, when a fault's Status is not a final
// HTTP status (200 to 999).
func (s *Server) Script(faults ...Fault) {
	for i := range faults {
		if p := faults[i].problem(); p != "" {
			panic(fmt.Sprintf("amltest: Script: fault %d of %d: %s", i+1, len(faults), p))
		}
	}
	s.mu.Lock()
	s.script = append(s.script, faults...)
	s.mu.Unlock()
}

// SetMaxConcurrentCalls changes the cap for calls that arrive from now on;
// calls already admitted stay. n <= 0 means DefaultMaxConcurrentCalls.
func (s *Server) SetMaxConcurrentCalls(n int) {
	if n <= 0 {
		n = DefaultMaxConcurrentCalls
	}
	s.mcc.Store(int64(n))
}

// Stats counts what the server saw since it started or since ResetStats.
// Each field is read atomically, but the fields are not read at one instant.
type Stats struct {
	Requests     int64 // calls that reached the handler, whatever the reply
	Scored       int64 // 2xx replies from the model that began to be sent whole (not raw Fault bodies, not Truncate)
	Throttled    int64 // 503 RequestThrottled (online: 429 Too many pending requests) replies because the cap was reached
	Unauthorized int64 // 401 replies: missing or wrong key or token, or a key on a TokenOnly server
	Rejected     int64 // other error replies of the server's own: routing, method, api-version, body checks, Score errors (400) and malformed Score replies (500); online: 404, 405, 413 and the 424 of a body the model cannot take or of a Predict error
	Faults       int64 // calls that got a non-zero Fault
	InFlight     int64 // calls in the handler now, whatever their reply will be
	// PeakInFlight is the most calls in the handler at once, whatever their
	// reply: the witness that a client never had more than its cap in flight
	// (a call over the cap counts too, then gets 503). A call stops counting
	// just before its reply is written, so a client that sends its next call
	// only after reading a reply never meets a stale count. A hung call counts
	// until the server notices that its client has gone, which can be a
	// little after the client gave up (with Config.FinishAbandoned, until
	// its service time is over, or for a hung call until Close).
	PeakInFlight int64
	// PeakAdmitted is the most calls admitted at once: routed, authorized
	// and within the cap. It never exceeds the cap in force when each call
	// arrived.
	PeakAdmitted int64
	// KeysSeen holds the distinct bearer keys and tokens presented (the
	// first 64), sorted: a test can check that each endpoint saw only its
	// own key.
	KeysSeen []string
	// HeadersSeen holds, for each header Config.RecordHeaders names (in
	// canonical form), the distinct values presented (the first 64 of
	// each), in the order first seen.
	HeadersSeen http.Header
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Requests:     s.requests.Load(),
		Scored:       s.scored.Load(),
		Throttled:    s.throttled.Load(),
		Unauthorized: s.unauthorized.Load(),
		Rejected:     s.rejected.Load(),
		Faults:       s.faults.Load(),
		InFlight:     s.inFlight.Load(),
		PeakInFlight: s.peak.Load(),
		PeakAdmitted: s.peakAdmitted.Load(),
	}
	s.mu.Lock()
	st.KeysSeen = make([]string, 0, len(s.keys))
	for k := range s.keys {
		st.KeysSeen = append(st.KeysSeen, k)
	}
	if len(s.recorded) > 0 {
		st.HeadersSeen = make(http.Header, len(s.headers))
		for k, v := range s.headers {
			st.HeadersSeen[k] = slices.Clone(v)
		}
	}
	s.mu.Unlock()
	slices.Sort(st.KeysSeen)
	return st
}

// ResetStats zeroes the counters and forgets the keys seen. InFlight is left
// as it is; PeakInFlight and PeakAdmitted restart from the calls in flight
// and admitted now. The fault queue and the n of
// Config.Fault are not reset.
func (s *Server) ResetStats() {
	for _, c := range []*atomic.Int64{&s.requests, &s.scored, &s.throttled, &s.unauthorized, &s.rejected, &s.faults} {
		c.Store(0)
	}
	s.peak.Store(s.inFlight.Load())
	s.peakAdmitted.Store(s.admitted.Load())
	s.mu.Lock()
	clear(s.keys)
	clear(s.headers)
	s.mu.Unlock()
	s.notify()
}

// WaitFor blocks until cond holds for the server's Stats, and returns those
// Stats. It returns ctx.Err() when ctx ends first and ErrServerClosed when
// the server closes first, each with the last Stats it saw. cond is called
// again after every change, from WaitFor's goroutine only. Tests use it
// instead of sleeping, e.g. to wait until n calls are in flight.
func (s *Server) WaitFor(ctx context.Context, cond func(Stats) bool) (Stats, error) {
	if cond == nil {
		panic("amltest: WaitFor with a nil cond")
	}
	for {
		ch := s.changes()
		st := s.Stats()
		if cond(st) {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, ctx.Err()
		case <-s.closed:
			return s.Stats(), ErrServerClosed
		}
	}
}

// changes returns a channel closed at the next counter change.
func (s *Server) changes() <-chan struct{} {
	for {
		if p := s.changed.Load(); p != nil {
			return *p
		}
		ch := make(chan struct{})
		if s.changed.CompareAndSwap(nil, &ch) {
			return ch
		}
	}
}

// notify wakes WaitFor after a counter change. The Load keeps it cheap when
// nobody waits: a waiter that installs its channel after this Load reads the
// counters after it too, so it cannot miss the change.
func (s *Server) notify() {
	if s.changed.Load() == nil {
		return
	}
	if p := s.changed.Swap(nil); p != nil {
		close(*p)
	}
}

// recordKey remembers a presented key, up to maxKeysSeen distinct ones.
func (s *Server) recordKey(key string) {
	s.mu.Lock()
	if _, ok := s.keys[key]; !ok && len(s.keys) < maxKeysSeen {
		s.keys[key] = struct{}{}
	}
	s.mu.Unlock()
}

// nextFault returns the fault for the admitted call now starting.
func (s *Server) nextFault() Fault {
	n := s.ordinal.Add(1)
	s.mu.Lock()
	if len(s.script) > 0 {
		f := s.script[0]
		s.script[0] = Fault{} // drop references held by the backing array
		s.script = s.script[1:]
		s.mu.Unlock()
		return f
	}
	s.mu.Unlock()
	if s.faultFunc != nil {
		f := s.faultFunc(n)
		if p := f.problem(); p != "" {
			panic(fmt.Sprintf("amltest: Config.Fault(%d): %s", n, p))
		}
		return f
	}
	return Fault{}
}

// wait waits d, and reports false when the call's client went away or its
// server stopped first.
func (c *call) wait(d time.Duration) bool { return c.sleep(d, c.r.Context().Done()) }

// sleep waits d, and reports false when gone (nil: never) is closed or the
// call's server stopped first.
func (c *call) sleep(d time.Duration, gone <-chan struct{}) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-gone:
		return false
	case <-c.stop:
		return false
	}
}

// bump counts one event and wakes WaitFor.
func (s *Server) bump(c *atomic.Int64) {
	c.Add(1)
	s.notify()
}

// raise lifts p to at least n.
func raise(p *atomic.Int64, n int64) {
	for old := p.Load(); n > old && !p.CompareAndSwap(old, n); old = p.Load() {
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}
