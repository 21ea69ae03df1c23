package amlpool_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// What Do and Score make of every kind of malformed 2xx reply (reply.go has
// the table): the error each returns, and whether the call tried again.
func TestMalformedReplies(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(`{"Results":{}}`))
	zw.Close()
	tests := []struct {
		name      string
		fault     amltest.Fault
		doErr     error // nil: Do succeeds
		scoreErr  error // nil: Score succeeds
		retried   bool  // the first attempt's failure is retried
		transport bool  // the error is a transport error, not a sentinel
		inMsg     string
	}{
		{name: "invalid JSON", fault: amltest.Fault{Body: []byte(`{"Results":{"o`)},
			doErr: amlpool.ErrMalformedResponse, scoreErr: amlpool.ErrMalformedResponse, retried: true, inMsg: "reply is not JSON"},
		{name: "wrong types", fault: amltest.Fault{Body: []byte(`{"Results":{"output1":{"type":"table","value":7}}}`)},
			scoreErr: amlpool.ErrMalformedResponse, inMsg: "decode response"},
		{name: "Results is an array", fault: amltest.Fault{Body: []byte(`{"Results":[1,"2"]}`)},
			scoreErr: amlpool.ErrMalformedResponse, inMsg: "decode response"},
		{name: "truncated", fault: amltest.Fault{Truncate: true}, retried: true, transport: true, inMsg: "unexpected EOF"},
		{name: "2xx with an error body", fault: amltest.Fault{Body: []byte(`{"error":{"code":"InternalError","message":"boom"}}`)},
			doErr: amlpool.ErrMalformedResponse, scoreErr: amlpool.ErrMalformedResponse, retried: true, inMsg: "2xx reply is an error body: InternalError: boom"},
		{name: "2xx with an error body whose cause is in its details",
			fault: amltest.Fault{Body: []byte(`{"error":{"code":"LibraryExecutionError","message":"Module execution encountered an internal library error.","details":[{"code":"FailedToEvaluateRScript","message":"object 'x' not found"}]}}`)},
			doErr: amlpool.ErrMalformedResponse, scoreErr: amlpool.ErrMalformedResponse, retried: true,
			inMsg: "2xx reply is an error body: LibraryExecutionError/FailedToEvaluateRScript: object 'x' not found"},
		{name: "2xx with an error body of details only", fault: amltest.Fault{Body: []byte(`{"error":{"details":[{"code":"X","message":"boom"}]}}`)},
			doErr: amlpool.ErrMalformedResponse, scoreErr: amlpool.ErrMalformedResponse, retried: true, inMsg: "2xx reply is an error body: X: boom"},
		{name: "HTML page", fault: amltest.Fault{Body: []byte("<html>Bad Gateway</html>"), Header: http.Header{"Content-Type": {"text/html"}}},
			doErr: amlpool.ErrMalformedResponse, scoreErr: amlpool.ErrMalformedResponse, retried: true, inMsg: `(Content-Type "text/html"): "<html>Bad Gateway</html>"`},
		{name: "JSON sent as text/plain", fault: amltest.Fault{Header: http.Header{"Content-Type": {"text/plain"}}}},
		{name: "marked gzip, not gzip", fault: amltest.Fault{Header: http.Header{"Content-Encoding": {"gzip"}}},
			doErr: amlpool.ErrMalformedResponse, scoreErr: amlpool.ErrMalformedResponse, retried: true, inMsg: "gzip: invalid header"},
		{name: "gzip, not marked", fault: amltest.Fault{Body: gz.Bytes()},
			doErr: amlpool.ErrMalformedResponse, scoreErr: amlpool.ErrMalformedResponse, retried: true, inMsg: "reply is not JSON"},
		{name: "empty", fault: amltest.Fault{Body: []byte{}, Status: 200},
			scoreErr: amlpool.ErrMalformedResponse, inMsg: "decode response"},
	}
	for _, tt := range tests {
		for _, viaScore := range []bool{false, true} {
			name := tt.name + map[bool]string{false: "/Do", true: "/Score"}[viaScore]
			t.Run(name, func(t *testing.T) {
				srv := amltest.NewServer(amltest.Config{})
				defer srv.Close()
				srv.Script(tt.fault)
				c := newClient(t, []amlpool.Endpoint{srv.Endpoint()}, amlpool.WithMaxAttempts(2),
					amlpool.WithBackoff(amlpool.Backoff{Initial: time.Millisecond, Max: time.Millisecond}))
				var err error
				want := tt.doErr
				if viaScore {
					want = tt.scoreErr
					_, err = c.Score(t.Context(), &amlpool.Request{Inputs: map[string]*amlpool.Table{"input1": {ColumnNames: []string{"x"}, Values: [][]any{{"1"}}}}})
				} else {
					_, err = c.Do(t.Context(), []byte(body))
				}
				requests := srv.Stats().Requests
				switch {
				case tt.retried:
					require.NoError(t, err, "the second attempt gets a good reply")
					assert.EqualValues(t, 2, requests)
					// Without a second attempt, the first one's error shows.
					srv.Script(tt.fault)
					c1 := newClient(t, []amlpool.Endpoint{srv.Endpoint()}, amlpool.WithoutRetries())
					if viaScore {
						_, err = c1.Score(t.Context(), &amlpool.Request{Inputs: map[string]*amlpool.Table{"input1": {ColumnNames: []string{"x"}, Values: [][]any{{"1"}}}}})
					} else {
						_, err = c1.Do(t.Context(), []byte(body))
					}
					require.Error(t, err)
					if !tt.transport {
						assert.ErrorIs(t, err, want)
					}
				case want == nil:
					require.NoError(t, err)
					return
				default:
					require.ErrorIs(t, err, want)
					assert.EqualValues(t, 1, requests, "not retried")
				}
				assert.ErrorContains(t, err, tt.inMsg)
				assert.ErrorContains(t, err, srv.Endpoint().Name, "the error names the endpoint")
			})
		}
	}
}

// heapGrowth runs f and returns how much the heap grew at its peak,
// sampling it while f runs.
func heapGrowth(f func()) uint64 {
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	done := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var m runtime.MemStats
		var top uint64
		for {
			runtime.ReadMemStats(&m)
			top = max(top, m.HeapAlloc)
			select {
			case <-done:
				peak <- top
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	f()
	close(done)
	top := <-peak
	if top < base.HeapAlloc {
		return 0
	}
	return top - base.HeapAlloc
}

// An oversized reply fails with ErrResponseTooLarge, and the client reads
// no more than the cap whatever the server sends: a 256 MiB body announced
// in Content-Length, the same streamed without a length, and a gzip bomb
// that inflates to 256 MiB. The heap never grows by more than a few caps.
func TestOversizedRepliesKeepMemoryBounded(t *testing.T) {
	const limit = 1 << 20
	const huge = 256 << 20
	zeros := make([]byte, 64<<10)
	stream := func(w io.Writer) {
		for n := 0; n < huge; n += len(zeros) {
			if _, err := w.Write(zeros); err != nil {
				return // the client has gone: it read its fill
			}
		}
	}
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"Content-Length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(huge))
			stream(w)
		}},
		{"chunked", func(w http.ResponseWriter, r *http.Request) { stream(w) }},
		{"gzip bomb", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip")
			zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
			stream(zw)
			zw.Close()
		}},
		{"error reply", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			stream(w)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			c := newClient(t, []amlpool.Endpoint{{URL: srv.URL + "/x", APIKey: "k"}}, amlpool.WithMaxResponseBytes(limit), amlpool.WithoutRetries())
			var err error
			grew := heapGrowth(func() { _, err = c.Do(t.Context(), []byte(body)) })
			require.Error(t, err)
			if tt.name != "error reply" {
				assert.ErrorIs(t, err, amlpool.ErrResponseTooLarge)
			}
			assert.Less(t, grew, uint64(8*limit), "heap grew by %d bytes reading a %d-byte reply with a %d-byte cap", grew, huge, limit)
			assert.Zero(t, c.Stats().Endpoints[0].InFlight)
		})
	}
}

// keyRecorder is a server that records which key reached which path.
type keyRecorder struct {
	mu   sync.Mutex
	seen map[string]map[string]bool // path → keys
}

func (k *keyRecorder) record(r *http.Request) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.seen == nil {
		k.seen = map[string]map[string]bool{}
	}
	if k.seen[r.URL.Path] == nil {
		k.seen[r.URL.Path] = map[string]bool{}
	}
	k.seen[r.URL.Path][strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")] = true
}

func (k *keyRecorder) keys() map[string]map[string]bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.seen
}

// TestGzipRepliesAreDecoded: net/http asks for gzip and decodes the reply
// itself, but only when Accept-Encoding is its own: an Accept-Encoding
// given through Endpoint.Header would hand the JSON decoder a compressed
// reply (ErrMalformedResponse on every call), so New refuses it, in any
// case, and so does SetEndpoints. A client that wants replies
// uncompressed disables compression on its Transport.
func TestGzipRepliesAreDecoded(t *testing.T) {
	const reply = `{"Results": {"output1": {"type": "table", "value": {"ColumnNames": ["a"], "Values": [["1"]]}}}}`
	var gzipped atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			io.WriteString(w, reply)
			return
		}
		gzipped.Add(1)
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, reply)
		zw.Close()
	}))
	defer srv.Close()
	ep := amlpool.Endpoint{URL: srv.URL + "/x", APIKey: "k"}

	c := newClient(t, []amlpool.Endpoint{ep}, amlpool.WithoutRetries())
	got, err := c.Do(t.Context(), []byte(body))
	require.NoError(t, err)
	assert.JSONEq(t, reply, string(got))
	assert.EqualValues(t, 1, gzipped.Load(), "the reply came gzipped")

	for _, h := range []http.Header{{"Accept-Encoding": {"gzip"}}, {"accept-encoding": {"identity"}}} {
		e := ep
		e.Header = h
		_, err := amlpool.New([]amlpool.Endpoint{e})
		var ce *amlpool.ConfigError
		require.ErrorAs(t, err, &ce, "%v", h)
		assert.Equal(t, "Header", ce.Field)
		assert.Contains(t, ce.Problem, "Accept-Encoding cannot be set through Header")
		assert.Contains(t, ce.Problem, "DisableCompression")
		require.ErrorAs(t, c.SetEndpoints([]amlpool.Endpoint{e}), &ce, "%v", h)
	}

	plain := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer plain.CloseIdleConnections()
	c = newClient(t, []amlpool.Endpoint{ep}, amlpool.WithHTTPClient(plain), amlpool.WithoutRetries())
	got, err = c.Do(t.Context(), []byte(body))
	require.NoError(t, err)
	assert.JSONEq(t, reply, string(got))
	assert.EqualValues(t, 1, gzipped.Load(), "the reply came uncompressed")
}

// Two endpoints on one host, different paths: each path gets its own key
// only, under load.
func TestKeysGoToTheirOwnPathOnASharedHost(t *testing.T) {
	var rec keyRecorder
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.record(r)
		io.WriteString(w, `{"Results":{}}`)
	}))
	defer srv.Close()
	eps := []amlpool.Endpoint{
		{Name: "a", URL: srv.URL + "/workspaces/w/services/a/execute?api-version=2.0", APIKey: "key-a", MaxConcurrentCalls: 2},
		{Name: "b", URL: srv.URL + "/workspaces/w/services/b/execute?api-version=2.0", APIKey: "key-b", MaxConcurrentCalls: 2},
	}
	c := newClient(t, eps)
	require.Empty(t, hammer(t, c, 8, 25))
	assert.Equal(t, map[string]map[string]bool{
		"/workspaces/w/services/a/execute": {"key-a": true},
		"/workspaces/w/services/b/execute": {"key-b": true},
	}, rec.keys())
}

// A redirect of any kind, to another host or the same one, is returned as
// an *APIError, never followed: the key never reaches the target. That holds
// for a user's own http.Client too, even one that follows redirects.
func TestRedirectsCarryNoKeyAnywhere(t *testing.T) {
	var rec keyRecorder
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.record(r)
		io.WriteString(w, `{"Results":{}}`)
	}))
	defer target.Close()
	followAll := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return nil }}
	for _, status := range []int{301, 302, 303, 307, 308} {
		for _, hc := range []*http.Client{nil, followAll, {}} {
			t.Run(fmt.Sprintf("%d/user client %v", status, hc != nil), func(t *testing.T) {
				redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, target.URL+"/elsewhere", status)
				}))
				defer redirector.Close()
				var opts []amlpool.Option
				if hc != nil {
					opts = append(opts, amlpool.WithHTTPClient(hc))
				}
				c := newClient(t, []amlpool.Endpoint{{URL: redirector.URL + "/x", APIKey: "redirected-key"}}, opts...)
				_, err := c.Do(t.Context(), []byte(body))
				var apiErr *amlpool.APIError
				require.ErrorAs(t, err, &apiErr)
				assert.Equal(t, status, apiErr.StatusCode)
				assert.Empty(t, rec.keys(), "the redirect target was called")
				assert.NotContains(t, err.Error(), "redirected-key")
			})
		}
	}
	assert.NotNil(t, followAll.CheckRedirect, "the user's client is left as it was")
}

// A server or proxy that echoes the request's Authorization header back, in
// an error body, a proxy page or a 2xx reply, does not get the key into the
// error, the logs or Stats.
func TestEchoedKeyStaysOutOfErrorsAndLogs(t *testing.T) {
	const key = "echo-me-key-0123456789"
	replies := map[string]func(w http.ResponseWriter, auth string){
		"error body": func(w http.ResponseWriter, auth string) {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":{"code":"BadArgument","message":"bad header %s","details":[{"code":"X","target":"%s","message":"%s"}]}}`, auth, auth, auth)
		},
		"proxy page": func(w http.ResponseWriter, auth string) {
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<html>%s %s</html>", strings.Repeat("x", 500), auth) // the key straddles the 512-byte snippet
		},
		"2xx page": func(w http.ResponseWriter, auth string) {
			fmt.Fprintf(w, "<p>%s</p>", auth)
		},
		"2xx error body": func(w http.ResponseWriter, auth string) {
			fmt.Fprintf(w, `{"error":{"code":"%s","message":"%s"}}`, auth, auth)
		},
	}
	for name, reply := range replies {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reply(w, r.Header.Get("Authorization"))
			}))
			defer srv.Close()
			var logged bytes.Buffer
			c := newClient(t, []amlpool.Endpoint{{Name: "echo", URL: srv.URL + "/x", APIKey: key}},
				amlpool.WithLogger(slog.New(slog.NewJSONHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))),
				amlpool.WithMaxAttempts(2), amlpool.WithBackoff(amlpool.Backoff{Initial: time.Millisecond, Max: time.Millisecond}))
			_, err := c.Do(t.Context(), []byte(body))
			require.Error(t, err)
			_, scoreErr := c.Score(t.Context(), &amlpool.Request{})
			for what, s := range map[string]string{
				"error": err.Error(), "%+v": fmt.Sprintf("%+v", err), "%#v": fmt.Sprintf("%#v", err),
				"Score error": fmt.Sprint(scoreErr), "logs": logged.String(), "Stats": fmt.Sprintf("%+v", c.Stats()),
				"Client": fmt.Sprintf("%+v", c),
			} {
				assert.NotContains(t, s, key, what)
				assert.NotContains(t, s, key[:len(key)/2], what+": half the key")
			}
			if apiErr, ok := errors.AsType[*amlpool.APIError](err); ok {
				assert.NotContains(t, fmt.Sprintf("%+v", *apiErr), key)
			}
		})
	}
}

// The TLS settings of a user's http.Client hold: its root CAs let calls
// through to a TLS endpoint; the default client does not trust the test
// certificate, and that failure is the endpoint's: it cannot serve this
// client, and the call goes on to another endpoint, if there is one.
func TestInjectedClientTLSSettingsAreUsed(t *testing.T) {
	srv := amltest.NewUnstartedServer(amltest.Config{})
	srv.StartTLS()
	defer srv.Close()

	trusting := newClient(t, []amlpool.Endpoint{srv.Endpoint()}, amlpool.WithHTTPClient(srv.Client()))
	_, err := trusting.Do(t.Context(), []byte(body))
	require.NoError(t, err)

	plain := newClient(t, []amlpool.Endpoint{srv.Endpoint()})
	_, err = plain.Do(t.Context(), []byte(body))
	var unknown x509.UnknownAuthorityError
	var verify *tls.CertificateVerificationError
	assert.True(t, assert.ErrorAs(t, err, &verify) || assert.ErrorAs(t, err, &unknown), "got %v", err)
	assert.Equal(t, amlpool.VerdictEndpointFault, amlpool.Classify(err), "a TLS trust error is the endpoint's fault")

	// A client that demands TLS 1.3 of a server that stops at 1.2 fails.
	old := amltest.NewUnstartedServer(amltest.Config{})
	old.StartTLS()
	defer old.Close()
	hc := old.Client()
	tr := hc.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.MinVersion = tls.VersionTLS13
	tr.TLSClientConfig.MaxVersion = tls.VersionTLS13
	strict := newClient(t, []amlpool.Endpoint{old.Endpoint()}, amlpool.WithHTTPClient(&http.Client{Transport: tr}))
	_, err = strict.Do(t.Context(), []byte(body))
	require.NoError(t, err, "httptest speaks TLS 1.3: the setting is passed through")
	assert.Equal(t, []uint16{tls.VersionTLS13}, tlsVersions(t, old, tr))
}

// tlsVersions returns the TLS versions a transport negotiates with srv.
func tlsVersions(t *testing.T, srv *amltest.Server, tr *http.Transport) []uint16 {
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL(), nil)
	require.NoError(t, err)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	return []uint16{resp.TLS.Version}
}

// A call cancelled while its request is at the server closes its connection
// before it gives its slot back: when the connection closes, the slot is
// still held. (The server may notice the close a moment later; see
// internal/chaos for why the client does not wait for that.)
func TestCancelledAttemptClosesItsConnectionBeforeReleasingItsSlot(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{MaxConcurrentCalls: 1})
	defer srv.Close()
	var c *amlpool.Client
	heldAtClose := make(chan int, 16)
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &closeSpy{Conn: conn, onClose: func() { heldAtClose <- c.Stats().Endpoints[0].InFlight }}, nil
	}}
	defer tr.CloseIdleConnections()
	c = newClient(t, []amlpool.Endpoint{srv.Endpoint()}, amlpool.WithHTTPClient(&http.Client{Transport: tr}))
	srv.Script(amltest.Fault{Hang: true})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { _, err := c.Do(ctx, []byte(body)); done <- err }()
	_, err := srv.WaitFor(t.Context(), func(s amltest.Stats) bool { return s.Faults == 1 })
	require.NoError(t, err)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	assert.Equal(t, 1, <-heldAtClose, "the connection closed while the slot was still held")
	assert.Zero(t, c.Stats().Endpoints[0].InFlight)
}

type closeSpy struct {
	net.Conn
	once    sync.Once
	onClose func()
}

func (c *closeSpy) Close() error {
	c.once.Do(c.onClose)
	return c.Conn.Close()
}
