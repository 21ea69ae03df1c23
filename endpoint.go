package amlpool

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
)

// Endpoint describes one Azure ML Classic scoring endpoint: where it is, the
// key it takes, and how many calls it accepts at once.
//
// Every endpoint of a web service, the default one included, has its own URL
// and key (docs/azureml.md). The zero Endpoint is not valid: New needs at least a
// URL and a key.
//
// An Endpoint's String, GoString, LogValue and MarshalJSON never show the key,
// so an Endpoint can be printed or logged as it is.
type Endpoint struct {
	// Name labels the endpoint in logs, stats and errors. When empty it is
	// derived from the URL: the endpoint id after "services/", or the host.
	Name string
	// URL is the endpoint's Request URI, e.g.
	// https://ussouthcentral.services.azureml.net/workspaces/{ws}/services/{id}/execute?api-version=2.0&details=true.
	// It must be absolute and https, except for loopback hosts (so httptest and
	// amltest servers work) or when WithInsecureHTTP is given.
	URL string
	// APIKey is sent as "Authorization: Bearer <key>" to this endpoint's URL
	// only. Redirects are never followed, so the key goes nowhere else.
	APIKey string
	// MaxConcurrentCalls is the endpoint's cap on calls in flight: 1 to 200.
	// Zero means DefaultMaxConcurrentCalls (20), the service's default.
	MaxConcurrentCalls int
}

const (
	// DefaultMaxConcurrentCalls is the cap of an endpoint whose
	// MaxConcurrentCalls is zero: the service's own default.
	DefaultMaxConcurrentCalls = 20
	// MaxMaxConcurrentCalls is the highest cap the service allows.
	MaxMaxConcurrentCalls = 200
)

const redacted = "[REDACTED]"

// String describes the endpoint with its key redacted.
func (e Endpoint) String() string {
	key := ""
	if e.APIKey != "" {
		key = redacted
	}
	return fmt.Sprintf("{Name:%s URL:%s APIKey:%s MaxConcurrentCalls:%d}", e.Name, redactURL(e.URL), key, e.MaxConcurrentCalls)
}

// GoString is String for the %#v verb.
func (e Endpoint) GoString() string { return "amlpool.Endpoint" + e.String() }

// Format prints String (GoString for %#v) whatever the verb, so that no verb,
// %d or %x included, prints the fields one by one and shows the key.
func (e Endpoint) Format(f fmt.State, verb rune) { formatRedacted(f, verb, e.String(), e.GoString()) }

func formatRedacted(f fmt.State, verb rune, s, goSyntax string) {
	if verb == 'v' && f.Flag('#') {
		io.WriteString(f, goSyntax)
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), s)
}

// LogValue implements slog.LogValuer: the endpoint without its key.
func (e Endpoint) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("name", e.Name),
		slog.String("url", redactURL(e.URL)),
		slog.Int("max_concurrent_calls", e.MaxConcurrentCalls),
	)
}

// MarshalJSON encodes the endpoint with its key redacted. (Decoding is the
// default one, so a config file can still carry a key.)
func (e Endpoint) MarshalJSON() ([]byte, error) {
	type plain Endpoint
	p := plain(e)
	if p.APIKey != "" {
		p.APIKey = redacted
	}
	p.URL = redactURL(p.URL)
	return json.Marshal(p)
}

// redactURL hides any password in a URL, keeping the rest readable.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}

// ConfigError reports an invalid Endpoint or option given to New. It never
// contains an API key. errors.Is(err, ErrInvalidConfig) is true for it.
type ConfigError struct {
	Endpoint string // the endpoint's name, or "endpoints[i]" when it has none yet; empty for pool-wide problems
	Field    string // the field or option at fault, e.g. "URL" or "WithMaxWait"
	Problem  string // what is wrong with it
}

func (e *ConfigError) Error() string {
	if e.Endpoint == "" {
		return fmt.Sprintf("amlpool: invalid config: %s: %s", e.Field, e.Problem)
	}
	return fmt.Sprintf("amlpool: invalid config: endpoint %s: %s: %s", e.Endpoint, e.Field, e.Problem)
}

// Is makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// endpoint is the run-time state of one configured endpoint. Its fields after
// the first group never change after New; the atomics are the hot counters.
type endpoint struct {
	idx  int
	name string
	url  string
	// u is url parsed, shared by every request to the endpoint and never
	// mutated (a RoundTripper must not modify its request): parsing the URL
	// again on every call cost about 2 % of a call's CPU.
	u    *url.URL
	host string // u.Host without an empty port, the requests' Host
	// auth is the Authorization header value, shared and never mutated. It
	// is behind a pointer because fmt prints an unexported field's value
	// without calling its methods: a %s of a struct holding this endpoint
	// then shows an address, never the key.
	auth *[]string
	// header holds every header of a request to the endpoint, shared and
	// never mutated, for an http.Client of our own (see Client.send); behind
	// a pointer for the reason auth is.
	header *http.Header
	max    int32 // the configured MaxConcurrentCalls

	limit    atomic.Int32 // effective cap; max unless an adaptive limit lowers it
	inFlight atomic.Int32 // slots held now

	calls     atomic.Int64 // attempts that got a reply or an error
	failures  atomic.Int64 // attempts that did not succeed, throttles included, cancelled ones not
	cancelled atomic.Int64 // attempts whose call's ctx ended first
	throttles atomic.Int64 // attempts answered with a 503 throttle

	lat peakEWMA // latency estimate, for LatencyAware (latency.go)
}

// Format prints the endpoint's name whatever the verb: never its key.
func (e *endpoint) Format(f fmt.State, verb rune) {
	formatRedacted(f, verb, e.name, "endpoint("+e.name+")")
}

// LogValue implements slog.LogValuer: the endpoint's name.
func (e *endpoint) LogValue() slog.Value { return slog.StringValue(e.name) }

// newEndpoints validates the configured endpoints and builds their state.
func newEndpoints(cfgs []Endpoint, allowHTTP bool) ([]*endpoint, error) {
	if len(cfgs) == 0 {
		return nil, &ConfigError{Field: "endpoints", Problem: "none given; need at least one"}
	}
	eps := make([]*endpoint, len(cfgs))
	urls := make(map[string]string, len(cfgs))
	names := make(map[string]bool, len(cfgs))
	for i, c := range cfgs {
		label := c.Name
		if label == "" {
			label = "endpoints[" + strconv.Itoa(i) + "]"
		}
		u, err := checkURL(c.URL, allowHTTP)
		if err != nil {
			return nil, &ConfigError{Endpoint: label, Field: "URL", Problem: err.Error()}
		}
		if c.APIKey == "" {
			return nil, &ConfigError{Endpoint: label, Field: "APIKey", Problem: "empty"}
		}
		if strings.ContainsAny(c.APIKey, "\r\n") {
			return nil, &ConfigError{Endpoint: label, Field: "APIKey", Problem: "contains a line break"}
		}
		if i := strings.IndexFunc(c.APIKey, isControl); i >= 0 {
			// net/http would refuse it on every call; say so once, here.
			return nil, &ConfigError{Endpoint: label, Field: "APIKey", Problem: fmt.Sprintf("contains a control character at byte %d", i)}
		}
		mcc := c.MaxConcurrentCalls
		switch {
		case mcc == 0:
			mcc = DefaultMaxConcurrentCalls
		case mcc < 0 || mcc > MaxMaxConcurrentCalls:
			return nil, &ConfigError{Endpoint: label, Field: "MaxConcurrentCalls",
				Problem: fmt.Sprintf("%d is out of range; want 1 to %d, or 0 for %d", mcc, MaxMaxConcurrentCalls, DefaultMaxConcurrentCalls)}
		}
		key := u.String()
		if other, dup := urls[key]; dup {
			return nil, &ConfigError{Endpoint: label, Field: "URL", Problem: "same URL as endpoint " + other}
		}
		name := c.Name
		if name == "" {
			name = uniqueName(deriveName(u), names)
		} else if names[name] {
			return nil, &ConfigError{Endpoint: label, Field: "Name", Problem: "used by another endpoint"}
		}
		names[name] = true
		urls[key] = name
		auth := []string{"Bearer " + c.APIKey}
		header := http.Header{"Authorization": auth, "Content-Type": jsonContentType, "Accept": jsonContentType}
		ep := &endpoint{idx: i, name: name, url: key, u: u, host: strings.TrimSuffix(u.Host, ":"),
			auth: &auth, header: &header, max: int32(mcc)}
		ep.limit.Store(int32(mcc))
		eps[i] = ep
	}
	return eps, nil
}

// checkURL parses an endpoint URL and enforces https for non-loopback hosts.
// Its errors never repeat the URL's password, if it has one.
func checkURL(raw string, allowHTTP bool) (*url.URL, error) {
	if raw == "" {
		return nil, fmt.Errorf("empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("not a URL")
	}
	if !u.IsAbs() || u.Host == "" {
		return nil, fmt.Errorf("%q is not absolute; want https://host/…", redactURL(raw))
	}
	if u.User != nil {
		return nil, fmt.Errorf("has user info; put the key in APIKey instead")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowHTTP && !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("%q uses http to a non-loopback host; use https (or WithInsecureHTTP)", raw)
		}
	default:
		return nil, fmt.Errorf("%q: scheme %q is not http or https", raw, u.Scheme)
	}
	u.Fragment = ""
	return u, nil
}

// isControl reports whether r may not appear in a header value.
func isControl(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// deriveName labels an endpoint by the id after "services/" in its path (the
// endpoint id, docs/azureml.md), else by host and port.
func deriveName(u *url.URL) string {
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] == "services" && parts[i+1] != "" {
			return parts[i+1]
		}
	}
	return u.Host
}

func uniqueName(base string, taken map[string]bool) string {
	name := base
	for n := 2; taken[name]; n++ {
		name = base + "#" + strconv.Itoa(n)
	}
	return name
}
