package amltest

import (
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/amlpool/amlpool"
)

// call is one request in the handler. Its in-flight counts are released by
// leave, exactly once: just before the reply's first byte is written, or
// when the handler ends without a reply.
type call struct {
	s        *Server
	w        http.ResponseWriter
	r        *http.Request
	stop     <-chan struct{} // closed when the server stops (Close, Restart)
	admitted bool            // counted in s.admitted
	left     bool
	// start is when the call's service time began: its admission, plus
	// any Fault.Delay. The model's latency counts from it, so the time
	// the server spends reading and decoding the body is part of it.
	start time.Time
}

// serve waits until the call's service time of d has passed since start,
// and reports false when the call's client went away or its server
// stopped first. With Config.FinishAbandoned a call whose client went away
// is served to its end all the same, and serve reports false only then,
// when its reply would go.
func (c *call) serve(d time.Duration) bool {
	return c.hold(d-time.Since(c.start)) && (!c.s.finishAbandoned || c.r.Context().Err() == nil)
}

// hold waits d of the call's service time (a Fault.Delay, its latency), as
// wait does; with Config.FinishAbandoned only the server's stop ends it
// early, not the client's going away, so the call keeps its place under
// the cap meanwhile.
func (c *call) hold(d time.Duration) bool {
	if !c.s.finishAbandoned {
		return c.wait(d)
	}
	return c.sleep(d, nil)
}

func (c *call) leave() {
	if c.left {
		return
	}
	c.left = true
	if c.admitted {
		c.s.admitted.Add(-1)
	}
	c.s.inFlight.Add(-1)
	c.s.notify()
}

// abort ends the call with no reply: the connection is closed. Used when the
// client went away or the server is closing, so nobody reads a reply.
func (c *call) abort() {
	c.leave()
	panic(http.ErrAbortHandler)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
	s.requests.Add(1)
	raise(&s.peak, s.inFlight.Add(1))
	s.notify()
	c := &call{s: s, w: w, r: r, stop: stop}
	defer c.leave()

	online := s.kind == amlpool.Online
	s.recordHeaders(r.Header)
	// Routing, method, key and api-version come first and cost nothing: a
	// call failing them is neither admitted nor counted against the cap.
	if online {
		if body := s.onlineRoute(r); body != nil {
			s.bump(&s.rejected)
			c.reply(http.StatusNotFound, body, Fault{})
			return
		}
	} else if e := s.route(r); e != nil {
		s.bump(&s.rejected)
		c.reply(e.status, e.body(), Fault{})
		return
	}
	if r.Method != http.MethodPost {
		s.bump(&s.rejected)
		w.Header().Set("Allow", http.MethodPost)
		msg := fmt.Sprintf("The requested resource does not support http method '%s'.", r.Method)
		body := apiError{status: http.StatusMethodNotAllowed, code: "MethodNotAllowed", message: msg}.body()
		if online {
			body = onlineBody(msg + " Score with POST.")
		}
		c.reply(http.StatusMethodNotAllowed, body, Fault{})
		return
	}
	key, isBearer := bearerKey(r.Header.Get("Authorization"))
	if isBearer && key != "" {
		s.recordKey(key)
	}
	if !isBearer || !s.accepts(key) {
		s.bump(&s.unauthorized)
		body := faultError(http.StatusUnauthorized, "", "", 0).body()
		if online {
			body = onlineFault(http.StatusUnauthorized)
		}
		c.reply(http.StatusUnauthorized, body, Fault{})
		return
	}
	if v := r.URL.Query().Get("api-version"); !online && v != "2.0" {
		s.bump(&s.rejected)
		c.reply(http.StatusBadRequest, apiError{
			status: http.StatusBadRequest, code: "BadArgument", message: "Invalid argument provided.",
			detail: "BadVersionCall", detailMessage: fmt.Sprintf("Unsupported api-version %q; use 2.0.", v),
		}.body(), Fault{})
		return
	}

	// The cap: take a place only while one is free (compare and swap), so
	// that of two calls racing for the last one exactly one wins, and a
	// call turned away never counts against the cap, not even until its
	// 503 is sent: it would turn away a call that finds a place free.
	var n int64
	for {
		var limit int64
		n, limit = s.admitted.Load(), s.mcc.Load()
		if n >= limit {
			if s.testHookThrottled != nil {
				s.testHookThrottled()
			}
			s.bump(&s.throttled)
			if online {
				c.reply(http.StatusTooManyRequests, onlineBody(PendingMessage), Fault{})
				return
			}
			c.reply(http.StatusServiceUnavailable, throttleError(limit).body(), Fault{})
			return
		}
		if s.admitted.CompareAndSwap(n, n+1) {
			n++
			break
		}
	}
	c.admitted, c.start = true, time.Now()
	raise(&s.peakAdmitted, n)
	s.notify()

	// Read the body before any wait: net/http notices a client that went
	// away (and cancels r.Context()) only once the body has been read.
	body, readErr := io.ReadAll(io.LimitReader(r.Body, MaxRequestBytes+1))
	if readErr != nil {
		c.abort()
	}

	f := s.nextFault()
	if !f.isZero() {
		s.bump(&s.faults)
	}
	if !c.hold(f.Delay) {
		c.abort()
	}
	c.start = c.start.Add(f.Delay)
	if f.Hang {
		var gone <-chan struct{} // nil: a hung call served to the end ends with the server
		if !s.finishAbandoned {
			gone = r.Context().Done()
		}
		select {
		case <-gone:
		case <-c.stop:
		}
		c.abort()
	}
	if f.Reset {
		c.reset()
		return
	}
	if f.Body != nil || (f.Status != 0 && !is2xx(f.Status)) {
		status, out := f.Status, f.Body
		if status == 0 {
			status = http.StatusOK
		}
		if out == nil {
			out = faultError(f.Status, f.Code, f.Detail, s.mcc.Load()).body()
			if online && f.Code == "" && f.Detail == "" {
				out = onlineFault(f.Status)
			}
		}
		c.reply(status, out, f)
		return
	}
	if online {
		status, out, mf := s.onlineScore(c, body)
		if mf != nil {
			s.bump(&s.rejected)
			mf.Header = mergeHeader(f.Header, mf.Header)
			mf.RetryAfter, mf.Truncate, mf.SlowBody = f.RetryAfter, f.Truncate, f.SlowBody
			c.reply(mf.Status, mf.Body, *mf)
			return
		}
		if f.Status != 0 {
			status = f.Status
		}
		if !f.Truncate {
			s.bump(&s.scored)
		}
		c.reply(status, out, f)
		return
	}

	status, out, e := s.scoreCall(c, body)
	if e != nil {
		s.bump(&s.rejected)
		c.reply(e.status, e.body(), f)
		return
	}
	if f.Status != 0 {
		status = f.Status
	}
	if !f.Truncate {
		s.bump(&s.scored)
	}
	c.reply(status, out, f)
}

// scoreCall checks and decodes the body, waits the service time, runs the
// model and encodes its reply in the URL's format.
func (s *Server) scoreCall(c *call, body []byte) (int, []byte, *apiError) {
	if mt, _, err := mime.ParseMediaType(c.r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return 0, nil, badRequest("BadArgument", "RequestBodyInvalid",
			fmt.Sprintf("Content-Type must be application/json, not %q.", c.r.Header.Get("Content-Type")))
	}
	if len(body) > MaxRequestBytes {
		return 0, nil, badRequest("BadArgument", "RequestBodyInvalid",
			fmt.Sprintf("The request body is larger than the %d-byte limit.", MaxRequestBytes))
	}
	q := c.r.URL.Query()
	swagger := strings.EqualFold(q.Get("format"), "swagger")
	details := strings.EqualFold(q.Get("details"), "true")
	req, e := decodeRequest(body, swagger)
	if e != nil {
		return 0, nil, e
	}
	d := s.latency
	if s.latencyFunc != nil {
		d = s.latencyFunc()
	}
	if !c.serve(d) {
		c.abort()
	}
	resp, err := s.score(req)
	if err != nil {
		return 0, nil, &apiError{
			status: http.StatusBadRequest, code: "LibraryExecutionError",
			message: "Module execution encountered an internal library error.",
			detail:  "FailedToEvaluateRScript", target: "Score", detailMessage: err.Error(),
		}
	}
	out, err := encodeResponse(resp, swagger, details)
	if err != nil {
		return 0, nil, &apiError{
			status: http.StatusInternalServerError, code: "InternalError",
			message: "Execution encountered an internal error.",
			detail:  "UnexpectedScoreStatus", detailMessage: "amltest: the Score func's reply: " + err.Error(),
		}
	}
	return http.StatusOK, out, nil
}

// route checks the path: /workspaces/{ws}/services/{Name}/execute.
func (s *Server) route(r *http.Request) *apiError {
	segs := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	if len(segs) != 5 || segs[0] != "workspaces" || segs[2] != "services" || segs[4] != "execute" {
		return notFound("WebServiceNotFound", "No scoring service at this path.")
	}
	if ws, err := url.PathUnescape(segs[1]); err != nil || ws != s.workspace {
		return notFound("WorkspaceNotFound", "The workspace was not found.")
	}
	if name, err := url.PathUnescape(segs[3]); err != nil || name != s.name {
		return notFound("WebServiceNotFound", "The web service endpoint was not found.")
	}
	return nil
}

// bearerKey parses "Bearer <key>", the scheme in any case.
func bearerKey(h string) (key string, ok bool) {
	scheme, rest, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimLeft(rest, " "), true
}

// reply writes a complete reply, shaped by the fault's delivery fields
// (headers, Truncate, SlowBody). The call stops counting as in flight before
// the first byte goes out.
func (c *call) reply(status int, body []byte, f Fault) {
	h := c.w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	if f.RetryAfter != "" {
		h.Set("Retry-After", f.RetryAfter)
	}
	for k, vs := range f.Header {
		h[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
	}
	h.Set("Content-Length", strconv.Itoa(len(body))) // after f.Header: it must be right
	switch {
	case f.Truncate:
		c.truncate(status, body)
	case f.SlowBody > 0:
		c.slowWrite(status, body, f.SlowBody)
	default:
		c.leave()
		c.w.WriteHeader(status)
		_, _ = c.w.Write(body)
	}
}

// slowPieces is how many writes SlowBody spreads a reply over.
const slowPieces = 8

func (c *call) slowWrite(status int, body []byte, over time.Duration) {
	c.leave()
	c.w.WriteHeader(status)
	rc := http.NewResponseController(c.w)
	_ = rc.Flush()
	step := (len(body) + slowPieces - 1) / slowPieces
	for len(body) > 0 {
		if !c.wait(over / slowPieces) {
			panic(http.ErrAbortHandler)
		}
		n := min(step, len(body))
		if _, err := c.w.Write(body[:n]); err != nil {
			return
		}
		_ = rc.Flush()
		body = body[n:]
	}
}

// truncate sends the status line and headers, announcing the whole body,
// then half of it, then closes the connection.
func (c *call) truncate(status int, body []byte) {
	conn, bw, err := http.NewResponseController(c.w).Hijack()
	if err != nil {
		c.abort()
	}
	defer conn.Close()
	c.leave()
	h := c.w.Header().Clone()
	h.Set("Content-Length", strconv.Itoa(max(len(body), 1)))
	h.Set("Connection", "close")
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	_ = h.Write(bw)
	_, _ = bw.WriteString("\r\n")
	_, _ = bw.Write(body[:len(body)/2])
	_ = bw.Flush()
}

// reset closes the connection with no reply; on TCP with an RST, so the
// client sees "connection reset" (or EOF if it was not reading yet).
func (c *call) reset() {
	conn, _, err := http.NewResponseController(c.w).Hijack()
	if err != nil {
		c.abort()
	}
	c.leave()
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// mergeHeader returns a's entries overlaid with b's.
func mergeHeader(a, b http.Header) http.Header {
	out := make(http.Header, len(a)+len(b))
	for k, v := range a {
		out[http.CanonicalHeaderKey(k)] = v
	}
	for k, v := range b {
		out[http.CanonicalHeaderKey(k)] = v
	}
	return out
}

func is2xx(status int) bool { return status >= 200 && status < 300 }
