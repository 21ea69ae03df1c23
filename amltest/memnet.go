package amltest

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// This file is the in-memory network of NewTestServer. A test in a
// testing/synctest bubble cannot use a server on the loopback network: a
// goroutine waiting on a socket is not durably blocked, so the bubble's
// clock never moves and a call with any Latency waits for ever. Here a
// connection is a net.Pipe, whose every wait is on channels of the bubble
// that dialled it, so time moves as soon as every goroutine waits.
//
// Each in-memory server has its own address, localhost and a port of its
// own (nothing listens there on the real network); the dialer routes a
// connection by that address, so one http.Client reaches every in-memory
// server of the test, as one amlpool Client needs. The address is kept
// until Close: while a Restart is down, dialling it is refused.

var (
	memMu    sync.Mutex
	memAddrs = map[string]*memSlot{} // the in-memory servers not closed, by address
	memPort  int                     // the last port given out
)

// memSlot is one in-memory server's address and the listener that serves
// it now (nil before Start and while a Restart is down).
type memSlot struct {
	addr string
	mu   sync.Mutex
	l    *memListener
}

// newMemSlot reserves an address that no open in-memory server has.
func newMemSlot() *memSlot {
	memMu.Lock()
	defer memMu.Unlock()
	for {
		memPort = memPort%65535 + 1
		addr := "localhost:" + strconv.Itoa(memPort)
		if memAddrs[addr] == nil {
			m := &memSlot{addr: addr}
			memAddrs[addr] = m
			return m
		}
	}
}

// listen returns a new listener for the slot's address, which dials reach
// from now on.
func (m *memSlot) listen() *memListener {
	l := &memListener{addr: memAddr(m.addr), conns: make(chan net.Conn), done: make(chan struct{})}
	m.mu.Lock()
	m.l = l
	m.mu.Unlock()
	return l
}

// release frees the address for good.
func (m *memSlot) release() {
	memMu.Lock()
	if memAddrs[m.addr] == m {
		delete(memAddrs, m.addr)
	}
	memMu.Unlock()
}

// memDial connects to the in-memory server at addr, or fails as a dial to
// a port nobody listens on does.
func memDial(ctx context.Context, network, addr string) (net.Conn, error) {
	memMu.Lock()
	m := memAddrs[addr]
	memMu.Unlock()
	refused := &net.OpError{Op: "dial", Net: network, Addr: memAddr(addr), Err: syscall.ECONNREFUSED}
	if m == nil {
		return nil, refused
	}
	m.mu.Lock()
	l := m.l
	m.mu.Unlock()
	if l == nil {
		return nil, refused
	}
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
	case <-ctx.Done():
		refused.Err = ctx.Err()
	}
	client.Close()
	server.Close()
	return nil, refused
}

// newMemClient returns a client whose connections go over the in-memory
// network.
func newMemClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: memDial}}
}

// memListener accepts the in-memory connections dialled to one address.
type memListener struct {
	addr  memAddr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *memListener) Addr() net.Addr { return l.addr }

// memAddr is an in-memory address, host:port.
type memAddr string

func (a memAddr) Network() string { return "tcp" }
func (a memAddr) String() string  { return string(a) }

// NewTestServer starts a fake endpoint on an in-memory network and closes
// it when t's test ends, in the manner of httptest.NewTestServer: a panic
// in the server (in Config.Score, say) fails t instead of only being
// logged. It works inside a testing/synctest bubble, where a server on the
// loopback network cannot (its calls wait for ever there): its Latency and
// Fault delays then pass on the bubble's clock, at once and exactly. Make it
// in the bubble that uses it.
//
// Its URL is http://localhost:{port}/…, where nothing listens on the real
// network: send calls with Client (amlpool.WithHTTPClient(srv.Client())),
// or with a transport of the test's own that dials with DialContext. The
// Client (and DialContext) of any in-memory server reaches every in-memory
// server, each by its own URL, so one client serves a test of several fakes. It is not
// started with Start or StartTLS (it serves plain HTTP); Restart and
// CloseClientConnections work as on the loopback network.
func NewTestServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	s := NewUnstartedServer(cfg)
	s.t = t
	s.genMu.Lock()
	s.mem = newMemSlot()
	s.memClient = newMemClient()
	_ = s.ts.Listener.Close() // the loopback port it was given
	s.ts.Config.Handler = s.handler(s.stop)
	s.ts.Listener = s.mem.listen()
	s.ts.Start()
	s.base.Store(&s.ts.URL)
	s.genMu.Unlock()
	t.Cleanup(s.Close)
	return s
}

// failPanics fails t when a call's handler panics with anything but
// http.ErrAbortHandler (the fake's own way to drop a connection), then drops
// the connection quietly.
func failPanics(t testing.TB, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p != http.ErrAbortHandler {
					buf := make([]byte, 64<<10)
					buf = buf[:runtime.Stack(buf, false)]
					t.Errorf("amltest: panic in the fake endpoint serving %s %s: %v\n%s", r.Method, r.URL.Path, p, buf)
				}
				panic(http.ErrAbortHandler)
			}
		}()
		h.ServeHTTP(w, r)
	})
}
