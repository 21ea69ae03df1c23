package amltest

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"runtime"
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
// Each in-memory server has its own address, a loopback address of its
// own with port 0 (127.0.0.1:0, 127.0.0.2:0, …); the dialer routes a
// connection by that address, so one http.Client reaches every in-memory
// server of the test, as one amlpool Client needs. The address is kept
// until Close: while a Restart is down, dialling it is refused.
//
// Port 0 is what makes the address safe to get wrong. No listener on the
// real network can have it (listening on port 0 gives a port of the
// system's choice), and a dial to it fails at once (Linux refuses it, the
// BSDs and Windows call the address unavailable); the host is an address,
// not a name, so no resolver is asked either. A test that sends calls to
// the URL with a client of the real network by mistake therefore fails
// there and then, rather than reaching whatever listens on a port of the
// machine (as "localhost:3" would) or sending its key to a name server's
// idea of a made-up host. A loopback host is also one amlpool.New takes
// with plain http, without WithInsecureHTTP.

var (
	memMu    sync.Mutex
	memAddrs = map[string]*memSlot{} // the in-memory servers not closed, by address
	memHost  uint32                  // the last host given out, its low 24 bits under 127/8
)

// memSlot is one in-memory server's address and the listener that serves
// it now (nil before Start and while a Restart is down).
type memSlot struct {
	addr string
	mu   sync.Mutex
	l    *memListener
}

// newMemSlot reserves an address that no open in-memory server has: port
// 0 of an address in 127.0.0.1 to 127.255.255.254.
func newMemSlot() *memSlot {
	memMu.Lock()
	defer memMu.Unlock()
	for {
		memHost = memHost%(1<<24-2) + 1
		ip := netip.AddrFrom4([4]byte{127, byte(memHost >> 16), byte(memHost >> 8), byte(memHost)})
		addr := netip.AddrPortFrom(ip, 0).String()
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
// Its URL is http://127.x.y.z:0/…, a loopback address of its own with port
// 0, which nothing on the real network can listen on: send calls with
// Client (amlpool.WithHTTPClient(srv.Client())), or with a transport of the
// test's own that dials with DialContext. A call sent with any other client
// by mistake fails at once, its dial refused, instead of reaching a server
// that happens to listen on the machine. The Client (and DialContext) of
// any in-memory server reaches every in-memory server, each by its own
// URL, so one client serves a test of several fakes. It is not started
// with Start or StartTLS (it serves plain HTTP); Restart and
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
