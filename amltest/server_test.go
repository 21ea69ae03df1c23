package amltest_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

func TestEndpointAndURL(t *testing.T) {
	srv := newServer(t, amltest.Config{Name: "ep1", Key: "k1", MaxConcurrentCalls: 7})
	ep := srv.Endpoint()
	assert.Equal(t, "ep1", ep.Name)
	assert.Equal(t, "k1", ep.APIKey)
	assert.Equal(t, 7, ep.MaxConcurrentCalls)
	assert.Equal(t, srv.URL(), ep.URL)
	assert.Regexp(t, `^http://127\.0\.0\.1:\d+/workspaces/[0-9a-f]{32}/services/ep1/execute\?api-version=2\.0&details=true$`, ep.URL)

	a := newServer(t, amltest.Config{}).Endpoint()
	b := newServer(t, amltest.Config{}).Endpoint()
	assert.Regexp(t, `^[0-9a-f]{32}$`, a.Name)
	assert.NotEqual(t, a.Name, b.Name)
	assert.NotEqual(t, a.APIKey, b.APIKey)
	key, err := base64.StdEncoding.DecodeString(a.APIKey)
	require.NoError(t, err)
	assert.Len(t, key, 64)
	assert.Equal(t, amltest.DefaultMaxConcurrentCalls, a.MaxConcurrentCalls)
}

func TestRouting(t *testing.T) {
	srv := newServer(t, amltest.Config{Name: "my endpoint/1", Key: "k"})
	u, err := url.Parse(srv.URL())
	require.NoError(t, err)
	base := u.Scheme + "://" + u.Host
	path := u.EscapedPath() // /workspaces/{ws}/services/my%20endpoint%2F1/execute
	ws := strings.Split(path, "/")[2]

	tests := []struct {
		name       string
		url        string
		method     string
		wantStatus int
		wantCode   string
		wantDetail string
	}{
		{name: "scoring URL", url: srv.URL(), method: http.MethodPost, wantStatus: 200},
		{name: "swagger flag", url: srv.URL() + "&format=swagger", method: http.MethodPost, wantStatus: 400, wantCode: "BadArgument", wantDetail: "RequestBodyInvalid"},
		{name: "other endpoint", url: base + "/workspaces/" + ws + "/services/other/execute?api-version=2.0", method: http.MethodPost, wantStatus: 404, wantCode: "NotFound", wantDetail: "WebServiceNotFound"},
		{name: "other workspace", url: strings.Replace(srv.URL(), ws, strings.Repeat("0", 32), 1), method: http.MethodPost, wantStatus: 404, wantCode: "NotFound", wantDetail: "WorkspaceNotFound"},
		{name: "trailing slash", url: base + path + "/?api-version=2.0", method: http.MethodPost, wantStatus: 404, wantCode: "NotFound", wantDetail: "WebServiceNotFound"},
		{name: "batch jobs", url: base + strings.TrimSuffix(path, "execute") + "jobs?api-version=2.0", method: http.MethodPost, wantStatus: 404, wantCode: "NotFound", wantDetail: "WebServiceNotFound"},
		{name: "swagger document", url: base + strings.TrimSuffix(path, "execute") + "swagger.json", method: http.MethodGet, wantStatus: 404, wantCode: "NotFound", wantDetail: "WebServiceNotFound"},
		{name: "root", url: base + "/", method: http.MethodPost, wantStatus: 404, wantCode: "NotFound", wantDetail: "WebServiceNotFound"},
		{name: "GET", url: srv.URL(), method: http.MethodGet, wantStatus: 405, wantCode: "MethodNotAllowed"},
		{name: "PUT", url: srv.URL(), method: http.MethodPut, wantStatus: 405, wantCode: "MethodNotAllowed"},
		{name: "no api-version", url: base + path + "?details=true", method: http.MethodPost, wantStatus: 400, wantCode: "BadArgument", wantDetail: "BadVersionCall"},
		{name: "old api-version", url: base + path + "?api-version=1.0", method: http.MethodPost, wantStatus: 400, wantCode: "BadArgument", wantDetail: "BadVersionCall"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv.ResetStats()
			got := send(t, srv, tt.url, "k", classicBody, setMethod(tt.method))
			require.Equal(t, tt.wantStatus, got.status, "body %s", got.body)
			assert.Equal(t, "application/json; charset=utf-8", got.header.Get("Content-Type"))
			st := srv.Stats()
			assert.Equal(t, int64(1), st.Requests)
			if tt.wantStatus == 200 {
				assert.Equal(t, int64(1), st.Scored)
				return
			}
			code, detail := errorCodes(t, got.body)
			assert.Equal(t, tt.wantCode, code)
			assert.Equal(t, tt.wantDetail, detail)
			assert.Equal(t, int64(1), st.Rejected)
			assert.Zero(t, st.Scored)
			if tt.wantStatus == 405 {
				assert.Equal(t, "POST", got.header.Get("Allow"))
			}
		})
	}
}

func TestAuth(t *testing.T) {
	const key = "c2VjcmV0LWtleQ=="
	tests := []struct {
		name     string
		header   string // Authorization; "" sends none
		wantOK   bool
		wantSeen []string
	}{
		{name: "Bearer", header: "Bearer " + key, wantOK: true, wantSeen: []string{key}},
		{name: "lowercase scheme (azureml Python package)", header: "bearer " + key, wantOK: true, wantSeen: []string{key}},
		{name: "uppercase scheme", header: "BEARER " + key, wantOK: true, wantSeen: []string{key}},
		{name: "wrong key", header: "Bearer wrong", wantSeen: []string{"wrong"}},
		{name: "key in another case", header: "Bearer " + strings.ToLower(key), wantSeen: []string{strings.ToLower(key)}},
		{name: "key with a suffix", header: "Bearer " + key + "x", wantSeen: []string{key + "x"}},
		{name: "no header", header: "", wantSeen: []string{}},
		{name: "empty key", header: "Bearer ", wantSeen: []string{}},
		{name: "scheme only", header: "Bearer", wantSeen: []string{}},
		{name: "Basic scheme", header: "Basic " + key, wantSeen: []string{}},
		{name: "key without scheme", header: key, wantSeen: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, amltest.Config{Key: key})
			got := send(t, srv, srv.URL(), "", classicBody, func(r *http.Request) {
				if tt.header != "" {
					r.Header.Set("Authorization", tt.header)
				}
			})
			st := srv.Stats()
			assert.Equal(t, tt.wantSeen, st.KeysSeen)
			if tt.wantOK {
				assert.Equal(t, http.StatusOK, got.status, "body %s", got.body)
				assert.Zero(t, st.Unauthorized)
				return
			}
			assert.Equal(t, http.StatusUnauthorized, got.status)
			assert.Equal(t, unauthorized, string(got.body))
			assert.Equal(t, int64(1), st.Unauthorized)
			assert.Zero(t, st.Scored)
		})
	}
}

func TestKeysSeenIsBounded(t *testing.T) {
	srv := newServer(t, amltest.Config{Key: "right"})
	for i := range 70 {
		got := send(t, srv, srv.URL(), "wrong"+strings.Repeat("x", i), classicBody)
		require.Equal(t, http.StatusUnauthorized, got.status)
	}
	score(t, srv)
	st := srv.Stats()
	assert.Len(t, st.KeysSeen, 64)
	assert.NotContains(t, st.KeysSeen, "right", "a key seen after the bound is full is not kept")
	assert.Equal(t, int64(70), st.Unauthorized)
}

// hold starts n calls that hang until their context is cancelled, and waits
// until the server has admitted all of them. The returned function cancels
// them and waits for the clients to return.
func hold(t *testing.T, srv *amltest.Server, n int) (release func()) {
	t.Helper()
	faults := make([]amltest.Fault, n)
	for i := range faults {
		faults[i] = amltest.Fault{Hang: true}
	}
	before := srv.Stats().Faults
	srv.Script(faults...)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	ep := srv.Endpoint()
	for range n {
		wg.Go(func() {
			resp, err := do(ctx, srv, ep.URL, ep.APIKey, classicBody)
			if err == nil { // not expected: a hung call has no reply
				resp.Body.Close()
			}
			assert.ErrorIs(t, err, context.Canceled)
		})
	}
	_, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.Faults == before+int64(n) })
	require.NoError(t, err)
	return func() {
		cancel()
		wg.Wait()
	}
}

func TestThrottleExactlyAtCap(t *testing.T) {
	tests := []struct {
		name     string
		mcc      int
		wantCap  int
		wantBody string
	}{
		{name: "cap 3", mcc: 3, wantCap: 3, wantBody: throttleBody3},
		{name: "default cap 20", mcc: 0, wantCap: 20, wantBody: throttleBody20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, amltest.Config{MaxConcurrentCalls: tt.mcc})
			release := hold(t, srv, tt.wantCap)

			got := score(t, srv)
			assert.Equal(t, http.StatusServiceUnavailable, got.status)
			assert.Equal(t, tt.wantBody, string(got.body))
			assert.Empty(t, got.header.Get("Retry-After"), "the service sends no Retry-After")
			st := srv.Stats()
			assert.Equal(t, int64(1), st.Throttled)
			assert.Equal(t, int64(tt.wantCap), st.PeakAdmitted)
			assert.Equal(t, int64(tt.wantCap+1), st.PeakInFlight, "the call over the cap was in flight too")
			assert.Equal(t, int64(tt.wantCap), st.InFlight, "the throttled call no longer counts")

			release()
			st, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.InFlight == 0 })
			require.NoError(t, err)
			// A freed slot is usable at once.
			assert.Equal(t, http.StatusOK, score(t, srv).status)
			assert.Equal(t, int64(1), srv.Stats().Scored)
		})
	}
}

func TestSetMaxConcurrentCalls(t *testing.T) {
	srv := newServer(t, amltest.Config{MaxConcurrentCalls: 5})
	srv.SetMaxConcurrentCalls(1)
	assert.Equal(t, 1, srv.Endpoint().MaxConcurrentCalls)
	release := hold(t, srv, 1)
	defer release()

	got := score(t, srv)
	assert.Equal(t, http.StatusServiceUnavailable, got.status)
	assert.Contains(t, string(got.body), "The maximum concurrency for the endpoint is 1.")

	srv.SetMaxConcurrentCalls(2)
	assert.Equal(t, http.StatusOK, score(t, srv).status)

	srv.SetMaxConcurrentCalls(0)
	assert.Equal(t, amltest.DefaultMaxConcurrentCalls, srv.Endpoint().MaxConcurrentCalls)
}

func TestStatsAndReset(t *testing.T) {
	srv := newServer(t, amltest.Config{Key: "good"})
	score(t, srv)
	score(t, srv)
	send(t, srv, srv.URL(), "bad", classicBody)
	send(t, srv, srv.URL(), "good", `{`)
	srv.Script(amltest.Fault{Status: 500})
	score(t, srv)

	st := srv.Stats()
	assert.Equal(t, amltest.Stats{
		Requests: 5, Scored: 2, Unauthorized: 1, Rejected: 1, Faults: 1,
		InFlight: 0, PeakInFlight: 1, PeakAdmitted: 1,
		KeysSeen: []string{"bad", "good"},
	}, st)

	srv.ResetStats()
	assert.Equal(t, amltest.Stats{KeysSeen: []string{}}, srv.Stats())

	score(t, srv)
	assert.Equal(t, amltest.Stats{Requests: 1, Scored: 1, PeakInFlight: 1, PeakAdmitted: 1, KeysSeen: []string{"good"}}, srv.Stats())
}

func TestResetStatsKeepsCallsInFlight(t *testing.T) {
	srv := newServer(t, amltest.Config{})
	release := hold(t, srv, 2)
	srv.ResetStats()
	st := srv.Stats()
	assert.Equal(t, int64(2), st.InFlight)
	assert.Equal(t, int64(2), st.PeakInFlight)
	assert.Equal(t, int64(2), st.PeakAdmitted)
	release()
}

func TestCloseWithHungCalls(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{})
	ep := srv.Endpoint()
	srv.Script(amltest.Fault{Hang: true}, amltest.Fault{Hang: true}, amltest.Fault{Delay: 1 << 40}, amltest.Fault{SlowBody: 1 << 40})
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			resp, err := do(t.Context(), srv, ep.URL, ep.APIKey, classicBody)
			if err == nil {
				_, err = readAll(resp)
			}
			errs <- err
		}()
	}
	_, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.Faults == 4 })
	require.NoError(t, err)

	srv.Close() // must return although every call is still waiting
	for range 4 {
		assert.Error(t, <-errs, "each client sees its connection end")
	}
	st := srv.Stats()
	assert.Zero(t, st.InFlight)
	assert.Equal(t, int64(1), st.Scored, "only the slow reply had started")
	srv.Close() // idempotent

	_, err = srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.Requests > 100 })
	assert.ErrorIs(t, err, amltest.ErrServerClosed)
}

func TestCloseClientConnections(t *testing.T) {
	srv := newServer(t, amltest.Config{})
	ep := srv.Endpoint()
	srv.Script(amltest.Fault{Hang: true})
	errc := make(chan error, 1)
	go func() {
		resp, err := do(t.Context(), srv, ep.URL, ep.APIKey, classicBody)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	_, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.Faults == 1 })
	require.NoError(t, err)

	srv.CloseClientConnections()
	assert.Error(t, <-errc)
	_, err = srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.InFlight == 0 })
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, score(t, srv).status, "the server still serves new connections")
}

func TestWaitForContext(t *testing.T) {
	srv := newServer(t, amltest.Config{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	st, err := srv.WaitFor(ctx, func(st amltest.Stats) bool { return st.Requests == 1 })
	assert.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, st.Requests)

	st, err = srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.Requests == 0 })
	require.NoError(t, err, "a condition that already holds returns at once")
	assert.Zero(t, st.Requests)
}

func TestManyConcurrentCalls(t *testing.T) {
	tests := []struct {
		name    string
		mcc     int
		callers int
		calls   int // per caller
	}{
		{name: "under the cap", mcc: 200, callers: 200, calls: 5},
		{name: "over the cap", mcc: 8, callers: 64, calls: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, amltest.Config{MaxConcurrentCalls: tt.mcc})
			ep := srv.Endpoint()
			var mu sync.Mutex
			statuses := map[int]int64{}
			var wg sync.WaitGroup
			for range tt.callers {
				wg.Go(func() {
					for range tt.calls {
						got := send(t, srv, ep.URL, ep.APIKey, classicBody)
						mu.Lock()
						statuses[got.status]++
						mu.Unlock()
					}
				})
			}
			wg.Wait()

			st := srv.Stats()
			total := int64(tt.callers * tt.calls)
			assert.Equal(t, total, st.Requests)
			assert.Equal(t, total, statuses[200]+statuses[503], "only scores and throttles: %v", statuses)
			assert.Equal(t, statuses[200], st.Scored)
			assert.Equal(t, statuses[503], st.Throttled)
			assert.LessOrEqual(t, st.PeakAdmitted, int64(tt.mcc))
			assert.LessOrEqual(t, st.PeakInFlight, int64(tt.callers))
			assert.Zero(t, st.InFlight)
			if tt.callers <= tt.mcc {
				assert.Zero(t, st.Throttled, "callers never exceed the cap")
			}
		})
	}
}

// TestInFlightDropsBeforeReply checks the promise PeakInFlight rests on: a
// client that sends its next call only after reading a reply never meets its
// previous call still counted.
func TestInFlightDropsBeforeReply(t *testing.T) {
	srv := newServer(t, amltest.Config{MaxConcurrentCalls: 1})
	for range 200 {
		require.Equal(t, http.StatusOK, score(t, srv).status)
	}
	st := srv.Stats()
	assert.Equal(t, int64(1), st.PeakInFlight)
	assert.Zero(t, st.Throttled)
}

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestUnstartedServer(t *testing.T) {
	srv := amltest.NewUnstartedServer(amltest.Config{Key: "k"})
	assert.True(t, hexID.MatchString(srv.Endpoint().Name))
	srv.Start()
	defer srv.Close()
	assert.Equal(t, http.StatusOK, score(t, srv).status)
}

func TestStartTLS(t *testing.T) {
	srv := amltest.NewUnstartedServer(amltest.Config{})
	srv.StartTLS()
	defer srv.Close()
	assert.True(t, strings.HasPrefix(srv.URL(), "https://127.0.0.1:"))
	assert.Equal(t, http.StatusOK, score(t, srv).status)
}

// Restart ends the calls in flight, then serves the same URL and key again,
// its stats carrying on.
func TestRestart(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "https"}[tls], func(t *testing.T) {
			srv := amltest.NewUnstartedServer(amltest.Config{})
			if tls {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			url := srv.URL()
			srv.Script(amltest.Fault{Hang: true})
			hung := make(chan error, 1)
			go func() {
				resp, err := do(context.Background(), srv, url, srv.Endpoint().APIKey, classicBody)
				if err == nil {
					resp.Body.Close()
				}
				hung <- err
			}()
			_, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.InFlight == 1 })
			require.NoError(t, err)

			srv.Restart(0)
			require.Error(t, <-hung, "a hung call ends when its server restarts")
			assert.Equal(t, url, srv.URL())
			assert.Equal(t, http.StatusOK, score(t, srv).status)
			st := srv.Stats()
			assert.EqualValues(t, 2, st.Requests, "stats carry on across a restart")
			assert.Zero(t, st.InFlight)
		})
	}
}

// Close during a Restart's down time leaves the server closed.
func TestCloseDuringRestart(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{})
	done := make(chan struct{})
	go func() { defer close(done); srv.Restart(time.Hour) }()
	srv.Close()
	<-done
	_, err := do(t.Context(), srv, srv.URL(), srv.Endpoint().APIKey, classicBody)
	assert.Error(t, err, "the port stays closed")
}

// Restart of a closed server leaves it closed, whatever its down time: a
// zero down time raced the closed server's stop (about one time in three
// it listened again, and nothing would ever close it).
func TestRestartAfterClose(t *testing.T) {
	for range 50 {
		srv := amltest.NewServer(amltest.Config{})
		srv.Close()
		srv.Restart(0)
		resp, err := do(t.Context(), srv, srv.URL(), srv.Endpoint().APIKey, classicBody)
		if err == nil {
			resp.Body.Close()
			srv.Close() // the regenerated server, not to leak it
		}
		require.Error(t, err, "a closed server stays closed after Restart")
	}
}

// Close ends a call blocked writing a reply its client does not read (a
// body left unread and unclosed): httptest's Close waits for the calls on
// active connections, and without closing those first it waited for ever.
// The client's receive buffer is small, so the 6 MB reply cannot fit in the
// connection's buffers. The 10 s bound only turns a hang into a failure.
func TestCloseWithUnreadReply(t *testing.T) {
	big := strings.Repeat("x", 6<<20)
	srv := amltest.NewServer(amltest.Config{Key: "k", Score: func(*amlpool.Request) (*amlpool.Response, error) {
		return &amlpool.Response{Results: map[string]*amlpool.Output{
			"output1": {Value: amlpool.Table{ColumnNames: []string{"a"}, Values: [][]any{{big}}}},
		}}, nil
	}})
	u, err := url.Parse(srv.URL())
	require.NoError(t, err)
	conn, err := net.Dial("tcp", u.Host)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(4096))
	_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer k\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		u.RequestURI(), u.Host, len(classicBody), classicBody)
	require.NoError(t, err)
	_, err = srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.Scored == 1 })
	require.NoError(t, err)

	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Error("Close waits for a reply its client does not read")
		conn.Close() // lets the hung Close end, so the test does
		<-closed
	}
	assert.Zero(t, srv.Stats().InFlight)
}

// Close ends a call whose client stalls in the middle of its body: the
// handler waits in the body's read, which only closing the connection
// ends. The 10 s bound only turns a hang into a failure.
func TestCloseWithStalledBody(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{Key: "k"})
	u, err := url.Parse(srv.URL())
	require.NoError(t, err)
	conn, err := net.Dial("tcp", u.Host)
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer k\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		u.RequestURI(), u.Host, len(classicBody), classicBody[:10])
	require.NoError(t, err)
	_, err = srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.PeakAdmitted == 1 })
	require.NoError(t, err)

	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Error("Close waits for a body its client does not send")
		conn.Close() // lets the hung Close end, so the test does
		<-closed
	}
	assert.Zero(t, srv.Stats().InFlight)
}
