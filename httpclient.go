package amlpool

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/url"
	"time"
)

// newHTTPClient returns the client calls go through: a copy of the user's
// that never follows redirects, or our own, tuned for many calls per host.
// The bool reports whether the client is our own (Close then closes its idle
// connections).
func newHTTPClient(user *http.Client, slots int) (*http.Client, bool) {
	if user != nil {
		hc := *user
		hc.CheckRedirect = noRedirects
		return &hc, false
	}
	t := newTransport()
	t.MaxIdleConns = max(slots, 100)
	t.MaxIdleConnsPerHost = max(slots, 100)
	return &http.Client{Transport: t, CheckRedirect: noRedirects}, true
}

// newTransport returns a transport of our own with net/http's default
// settings: a clone of http.DefaultTransport when that is an
// *http.Transport. An application may have replaced it with a wrapper (an
// OpenTelemetry otelhttp.Transport, a logging RoundTripper), whose settings
// cannot be read and whose connection pool, sized for two idle connections
// per host, would be shared with the rest of the application; then the
// transport is a new one set up as net/http sets up DefaultTransport. A
// caller who wants the wrapper on the scoring calls passes a client that
// uses it with WithHTTPClient.
func newTransport() *http.Transport {
	if t, ok := http.DefaultTransport.(*http.Transport); ok && t != nil {
		return t.Clone()
	}
	// The values of net/http's DefaultTransport (transport.go); a test
	// compares them with the real one.
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: 1 * time.Second,
	}
}

// roundTrip sends req, a POST: through the user's client, or through our
// own straight to its transport. Our own client has no Jar, no Timeout and
// follows no redirects, so all its Do would add is a copy of the headers
// on every call (kept for redirects it never follows). The error is what
// Do would return: an *url.Error of Op "Post" (Classify reads it), with
// Do's word for an https:// URL whose server speaks plain HTTP; but it
// names the URL as printed Endpoints show it (redactedURL), its query's values
// redacted, with the user's client too; and the errors it wraps, every
// one errors.Unwrap reaches, are scrubbed of the URL (a user's
// RoundTripper may quote it, or go through a client of its own whose
// *url.Error names it) and of secrets (a malformed reply's bytes may echo
// a key): scrubError.
func (c *Client) roundTrip(req *http.Request, secrets []string) (*http.Response, error) {
	if !c.ownsHTTP {
		resp, err := c.http.Do(req)
		if ue, ok := err.(*url.Error); ok {
			ue.URL, ue.Err = redactedURL(req.URL), scrubError(ue.Err, req.URL, secrets)
		}
		return resp, err
	}
	resp, err := c.http.Transport.RoundTrip(req)
	if err != nil {
		if rh, ok := err.(tls.RecordHeaderError); ok && string(rh.RecordHeader[:]) == "HTTP/" {
			err = http.ErrSchemeMismatch
		}
		return nil, &url.Error{Op: "Post", URL: redactedURL(req.URL), Err: scrubError(err, req.URL, secrets)}
	}
	return resp, nil
}

// noRedirects keeps a key from following a redirect to another URL. The 3xx
// reply comes back as an *APIError.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
