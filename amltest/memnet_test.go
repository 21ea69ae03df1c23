package amltest_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// TestTestServerInSynctest: in a synctest bubble, in-memory servers serve
// an amlpool Client on the bubble's clock, so latencies are exact and a
// second of traffic takes no time. A server on the loopback network hangs
// there instead: its calls wait on sockets, so the bubble's clock never
// moves. Two endpoints (caps 2 and 1) are reached through one http.Client.
func TestTestServerInSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := amltest.NewTestServer(t, amltest.Config{MaxConcurrentCalls: 2, Latency: 100 * time.Millisecond})
		b := amltest.NewTestServer(t, amltest.Config{MaxConcurrentCalls: 1, Latency: 100 * time.Millisecond})
		require.NotEqual(t, a.URL(), b.URL())
		client, err := amlpool.New([]amlpool.Endpoint{a.Endpoint(), b.Endpoint()}, amlpool.WithHTTPClient(a.Client()))
		require.NoError(t, err)
		defer client.Close()

		start := time.Now()
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Go(func() {
				_, err := client.Score(t.Context(), &amlpool.Request{Inputs: map[string]*amlpool.Table{
					"input1": {ColumnNames: []string{"n"}, Values: [][]any{{fmt.Sprint(i)}}},
				}})
				assert.NoError(t, err)
			})
		}
		wg.Wait()
		// 3 slots for 6 calls: two rounds of 100 ms, to the nanosecond.
		assert.Equal(t, 200*time.Millisecond, time.Since(start))
		sa, sb := a.Stats(), b.Stats()
		assert.Equal(t, int64(6), sa.Scored+sb.Scored)
		assert.Zero(t, sa.Throttled+sb.Throttled)
		assert.Equal(t, int64(2), sa.PeakAdmitted)
		assert.Equal(t, int64(1), sb.PeakAdmitted)
	})
}

// TestTestServerFreesASlotAtOnce: in a bubble, a call whose client gives up
// frees its slot at the instant it does, as on the real service.
func TestTestServerFreesASlotAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := amltest.NewTestServer(t, amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: 1})
		srv.Script(amltest.Fault{Hang: true})
		ep := srv.Endpoint()
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start := time.Now()
		_, err := do(ctx, srv, ep.URL, ep.APIKey, mlflowBody)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		synctest.Wait()
		assert.Equal(t, time.Second, time.Since(start))
		assert.Zero(t, srv.Stats().InFlight, "the slot is free once the client has gone")
		assert.Equal(t, http.StatusOK, send(t, srv, ep.URL, ep.APIKey, mlflowBody).status)
	})
}

// TestTestServerOutsideABubble: an in-memory server serves any test, and
// Restart, Close and a dial to an address nobody serves behave as on the
// loopback network.
func TestTestServerOutsideABubble(t *testing.T) {
	srv := amltest.NewTestServer(t, amltest.Config{})
	assert.Regexp(t, `^http://127\.\d+\.\d+\.\d+:0/workspaces/`, srv.URL())
	assert.Equal(t, http.StatusOK, score(t, srv).status)
	assert.Panics(t, srv.Start, "it is started already")

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

	srv.Close()
	_, err = do(t.Context(), srv, url, srv.Endpoint().APIKey, classicBody)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED, "a closed server's address is refused")
}

// TestTestServerURLReachesNothingReal: an in-memory server's URL is a
// loopback address with port 0, which no listener on the real network can
// have, so a test that forgets the in-memory client reaches nothing: its
// call fails at once, even with a server listening on that host, and no
// name is looked up. amlpool.New takes the URL as it is (plain http to a
// loopback host), and the in-memory client reaches it.
func TestTestServerURLReachesNothingReal(t *testing.T) {
	srv := amltest.NewTestServer(t, amltest.Config{})
	u, err := url.Parse(srv.URL())
	require.NoError(t, err)
	ip, err := netip.ParseAddr(u.Hostname())
	assert.NoError(t, err, "an address, not a name a resolver is asked for")
	assert.True(t, ip.IsLoopback(), u.Host)
	assert.Equal(t, "0", u.Port(), "a port no listener can have")

	// A server of the real network on the same host:port gets another port;
	// a dial of the URL's address reaches neither it nor anything else.
	// (Listening on an address of 127/8 other than 127.0.0.1 fails on some
	// systems; the dial must fail all the same.)
	if l, err := net.Listen("tcp", u.Host); err == nil {
		defer l.Close()
		assert.NotEqual(t, u.Host, l.Addr().String())
	}
	var d net.Dialer
	if conn, err := d.DialContext(t.Context(), "tcp", u.Host); !assert.Error(t, err, "dialled %s on the real network", u.Host) {
		conn.Close()
	}

	ep := srv.Endpoint()
	forgot, err := amlpool.New([]amlpool.Endpoint{ep}, amlpool.WithoutRetries())
	require.NoError(t, err, "plain http to a loopback host, without WithInsecureHTTP")
	defer forgot.Close()
	_, err = forgot.Do(t.Context(), []byte(classicBody))
	assert.Error(t, err, "a client of the real network reaches nothing")
	assert.Zero(t, srv.Stats().Requests)

	c, err := amlpool.New([]amlpool.Endpoint{ep}, amlpool.WithHTTPClient(srv.Client()))
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Do(t.Context(), []byte(classicBody))
	assert.NoError(t, err)
}

// tb records the failures and logs of a server's test.
type tb struct {
	testing.TB
	mu       sync.Mutex
	errs     []string
	logs     []string
	cleanups []func()
}

func (t *tb) Logf(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.logs = append(t.logs, fmt.Sprintf(format, args...))
}

func (t *tb) logged() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.logs)
}

func (t *tb) Errorf(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errs = append(t.errs, fmt.Sprintf(format, args...))
}

func (t *tb) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }

// TestTestServerPanicFailsTheTest: a panic in the model fails the server's
// test, naming the panic; the client sees its connection close. The test's
// Cleanup closes the server.
func TestTestServerPanicFailsTheTest(t *testing.T) {
	rec := &tb{TB: t}
	srv := amltest.NewTestServer(rec, amltest.Config{Score: func(*amlpool.Request) (*amlpool.Response, error) {
		panic("model on fire")
	}})
	ep := srv.Endpoint()
	_, err := do(t.Context(), srv, ep.URL, ep.APIKey, classicBody)
	assert.Error(t, err)
	require.Len(t, rec.cleanups, 1)
	rec.cleanups[0]()
	require.Len(t, rec.errs, 1)
	assert.Contains(t, rec.errs[0], "model on fire")
	_, err = do(t.Context(), srv, ep.URL, ep.APIKey, classicBody)
	assert.True(t, errors.Is(err, syscall.ECONNREFUSED), "closed by the test's cleanup: %v", err)
}

// TestFinishAbandoned: with Config.FinishAbandoned a call whose client gave
// up keeps its place under the cap until its service time has passed, so
// the next call is throttled meanwhile (503 classic, 429 online), and gets
// no reply; a hung one keeps it until the server closes. By default the
// place frees at once.
func TestFinishAbandoned(t *testing.T) {
	for _, kind := range []amlpool.Kind{amlpool.Classic, amlpool.Online} {
		for _, finish := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/finish=%v", kind, finish), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					srv := amltest.NewTestServer(t, amltest.Config{
						Kind: kind, MaxConcurrentCalls: 1, Latency: time.Second, FinishAbandoned: finish,
					})
					ep := srv.Endpoint()
					body, full := classicBody, http.StatusServiceUnavailable
					if kind == amlpool.Online {
						body, full = mlflowBody, http.StatusTooManyRequests
					}
					start := time.Now()
					ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
					defer cancel()
					_, err := do(ctx, srv, ep.URL, ep.APIKey, body)
					require.ErrorIs(t, err, context.DeadlineExceeded)
					synctest.Wait()
					next := send(t, srv, ep.URL, ep.APIKey, body)
					if !finish {
						assert.Equal(t, http.StatusOK, next.status, "the place was free at once")
						assert.Equal(t, 1100*time.Millisecond, time.Since(start))
						return
					}
					assert.Equal(t, full, next.status, "the abandoned call still holds the only place")
					assert.Equal(t, int64(1), srv.Stats().InFlight)

					time.Sleep(time.Second - time.Since(start))
					synctest.Wait()
					st := srv.Stats()
					assert.Zero(t, st.InFlight, "its service time is over")
					assert.Zero(t, st.Scored, "nobody was there for its reply")
					assert.Equal(t, http.StatusOK, send(t, srv, ep.URL, ep.APIKey, body).status)

					srv.Script(amltest.Fault{Hang: true})
					ctx, cancel = context.WithTimeout(t.Context(), time.Minute)
					defer cancel()
					_, err = do(ctx, srv, ep.URL, ep.APIKey, body)
					require.ErrorIs(t, err, context.DeadlineExceeded)
					time.Sleep(time.Hour)
					synctest.Wait()
					assert.Equal(t, int64(1), srv.Stats().InFlight, "a hung call holds its place until Close")
				})
			})
		}
	}
}

// TestBadConfigPanicsNamingIt: a configuration the fake cannot serve panics
// with a message naming the mistake, where it was made when it can be: an
// unknown Kind, a Fault Status that is no final HTTP status (net/http's own
// panic, "invalid WriteHeader code", came from a handler, and the client
// saw only EOF), a nil WaitFor cond.
func TestBadConfigPanicsNamingIt(t *testing.T) {
	assert.PanicsWithValue(t, "amltest: Config.Kind 7 is neither amlpool.Classic nor amlpool.Online",
		func() { amltest.NewUnstartedServer(amltest.Config{Kind: 7}) })

	srv := newServer(t, amltest.Config{})
	assert.PanicsWithValue(t, "amltest: Script: fault 2 of 2: Status 99 is not a final HTTP status (200 to 999; 0 for the normal one)",
		func() { srv.Script(amltest.Throttle(), amltest.Fault{Status: 99}) })
	assert.Equal(t, http.StatusOK, score(t, srv).status, "none of the faults was queued")
	assert.PanicsWithValue(t, "amltest: WaitFor with a nil cond", func() { _, _ = srv.WaitFor(t.Context(), nil) })

	rec := &tb{TB: t}
	bad := amltest.NewTestServer(rec, amltest.Config{Fault: func(int64) amltest.Fault { return amltest.Fault{Status: 103} }})
	ep := bad.Endpoint()
	_, err := do(t.Context(), bad, ep.URL, ep.APIKey, classicBody)
	assert.Error(t, err, "the call's connection closes")
	rec.cleanups[0]()
	require.Len(t, rec.errs, 1)
	assert.Contains(t, rec.errs[0], "amltest: Config.Fault(1): Status 103 is not a final HTTP status")
	assert.Zero(t, bad.Stats().InFlight)
}

// TestCloseSaysWhatItWaitsFor: Close cannot stop a Config.Score that does
// not return, and waits for it; after 5 seconds (on the bubble's clock) it
// says so through the test's Logf, naming the server and the call, and
// goes on waiting until the Score returns. Restart does the same.
func TestCloseSaysWhatItWaitsFor(t *testing.T) {
	var std strings.Builder // httptest's own complaint, on the standard logger
	log.SetOutput(&std)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	for _, op := range []string{"Close", "Restart"} {
		t.Run(op, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := &tb{TB: t}
				release := make(chan struct{})
				srv := amltest.NewTestServer(rec, amltest.Config{Name: "stuck", Score: func(in *amlpool.Request) (*amlpool.Response, error) {
					<-release
					return amltest.Echo(in)
				}})
				ep := srv.Endpoint()
				go func() {
					if resp, err := do(context.Background(), srv, ep.URL, ep.APIKey, classicBody); err == nil {
						resp.Body.Close()
					}
				}()
				_, err := srv.WaitFor(t.Context(), func(st amltest.Stats) bool { return st.InFlight == 1 })
				require.NoError(t, err)

				done := make(chan struct{})
				go func() {
					if op == "Close" {
						srv.Close()
					} else {
						srv.Restart(0)
					}
					close(done)
				}()
				time.Sleep(5*time.Second - time.Nanosecond)
				synctest.Wait()
				assert.Empty(t, rec.logged(), "nothing to say yet")
				time.Sleep(time.Nanosecond)
				synctest.Wait()
				assert.Equal(t, []string{"amltest: " + op + " of server stuck has waited 5s for 1 call in the handler, and waits on: " +
					"a Config.Score, Predict, LatencyFunc, Fault or AcceptToken that has not returned holds it until it returns"}, rec.logged())
				select {
				case <-done:
					t.Error(op + " returned while the Score ran")
				default:
				}
				close(release)
				<-done
				for _, f := range rec.cleanups {
					f()
				}
				assert.Len(t, rec.logged(), 1, "said once")
				assert.Empty(t, rec.errs)
			})
		})
	}
}

// TestTestServerDialContext: a transport of the test's own that dials with
// an in-memory server's DialContext reaches that server and every other
// in-memory one, in a bubble too; an address no open server has is
// refused. A loopback server's DialContext dials the real network.
func TestTestServerDialContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := amltest.NewTestServer(t, amltest.Config{Latency: time.Second})
		b := amltest.NewTestServer(t, amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: 1, Latency: time.Second})
		tr := &http.Transport{DialContext: a.DialContext}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr}
		start := time.Now()
		for _, srv := range []*amltest.Server{a, b} {
			body := classicBody
			if srv.Endpoint().Kind == amlpool.Online {
				body = mlflowBody
			}
			ep := srv.Endpoint()
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, ep.URL, strings.NewReader(body))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+ep.APIKey)
			resp, err := hc.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, int64(1), srv.Stats().Scored)
		}
		assert.Equal(t, 2*time.Second, time.Since(start), "on the bubble's clock")

		b.Close()
		_, err := a.DialContext(t.Context(), "tcp", host(t, b.URL()))
		assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	})

	srv := newServer(t, amltest.Config{})
	conn, err := srv.DialContext(t.Context(), "tcp", host(t, srv.URL()))
	require.NoError(t, err)
	conn.Close()
}

// host returns the host:port of a URL.
func host(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	return u.Host
}
