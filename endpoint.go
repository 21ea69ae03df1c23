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

	"github.com/amlpool/amlpool/internal/pool"
)

// Endpoint describes one Azure ML Classic scoring endpoint: where it is, the
// key it takes, and how many calls it accepts at once.
//
// Every endpoint of a web service, the default one included, has its own URL
// and key (docs/azureml.md). The zero Endpoint is not valid: New needs at least a
// URL and a key.
//
// An Endpoint's String, GoString, LogValue and MarshalJSON never show its keys,
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
	// SecondaryKey is the endpoint's second key, optional. The service
	// gives every endpoint two so that keys can be rotated without
	// downtime: after a 401 with one key, the endpoint is tried at once
	// with the other, and keeps the key that worked until it fails. Only
	// when both are refused is the endpoint taken out of rotation. It is a
	// secret like APIKey, under every rule that holds for it.
	SecondaryKey string
	// Tier orders endpoints for the calls they take: 0 (the default) first,
	// up to MaxTier. A call goes to the lowest tier that has a free slot it
	// may use, so a higher tier takes only the overflow: the calls for which
	// every endpoint of the lower tiers is full, ejected, cooling down or
	// already tried by the call. Within a tier the Balancer chooses. Use it
	// for endpoints to prefer, nearby or paid for, before others.
	Tier int
}

const (
	// DefaultMaxConcurrentCalls is the cap of an endpoint whose
	// MaxConcurrentCalls is zero: the service's own default.
	DefaultMaxConcurrentCalls = 20
	// MaxMaxConcurrentCalls is the highest cap the service allows.
	MaxMaxConcurrentCalls = 200
	// MaxTier is the highest Tier an endpoint may have.
	MaxTier = 9
)

const redacted = "[REDACTED]"

// redact returns "" for "" and [REDACTED] for anything else.
func redact(secret string) string {
	if secret == "" {
		return ""
	}
	return redacted
}

// String describes the endpoint with its key redacted.
func (e Endpoint) String() string {
	return fmt.Sprintf("{Name:%s URL:%s APIKey:%s SecondaryKey:%s MaxConcurrentCalls:%d}",
		e.Name, redactURL(e.URL), redact(e.APIKey), redact(e.SecondaryKey), e.MaxConcurrentCalls)
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
	p.APIKey, p.SecondaryKey = redact(p.APIKey), redact(p.SecondaryKey)
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

// ConfigError reports an invalid Endpoint or option given to New, or an
// invalid endpoint set given to SetEndpoints. It never contains a key. errors.Is(err, ErrInvalidConfig) is true for it.
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

// newSpecs validates the configured endpoints, as New and SetEndpoints do,
// and describes them to the pool. Ext is left for the Client to fill.
func newSpecs(cfgs []Endpoint, allowHTTP bool) ([]pool.Spec, error) {
	if len(cfgs) == 0 {
		return nil, &ConfigError{Field: "endpoints", Problem: "none given; need at least one"}
	}
	specs := make([]pool.Spec, len(cfgs))
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
		keys := []string{c.APIKey}
		if c.SecondaryKey != "" {
			keys = append(keys, c.SecondaryKey)
		}
		for k, field := range []string{"APIKey", "SecondaryKey"}[:len(keys)] {
			if problem := checkKey(keys[k]); problem != "" {
				return nil, &ConfigError{Endpoint: label, Field: field, Problem: problem}
			}
		}
		mcc := c.MaxConcurrentCalls
		switch {
		case mcc == 0:
			mcc = DefaultMaxConcurrentCalls
		case mcc < 0 || mcc > MaxMaxConcurrentCalls:
			return nil, &ConfigError{Endpoint: label, Field: "MaxConcurrentCalls",
				Problem: fmt.Sprintf("%d is out of range; want 1 to %d, or 0 for %d", mcc, MaxMaxConcurrentCalls, DefaultMaxConcurrentCalls)}
		}
		if c.Tier < 0 || c.Tier > MaxTier {
			return nil, &ConfigError{Endpoint: label, Field: "Tier",
				Problem: fmt.Sprintf("%d is out of range; want 0 (first) to %d", c.Tier, MaxTier)}
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
		headers := make([]http.Header, len(keys))
		for k, key := range keys {
			headers[k] = http.Header{"Authorization": {"Bearer " + key}, "Content-Type": jsonContentType, "Accept": jsonContentType}
		}
		specs[i] = pool.Spec{Name: name, URL: u, Max: mcc, Tier: c.Tier, Auth: pool.NewAuth(keys, headers)}
	}
	return specs, nil
}

// checkKey returns what is wrong with a key, or "".
func checkKey(key string) string {
	if strings.ContainsAny(key, "\r\n") {
		return "contains a line break"
	}
	if i := strings.IndexFunc(key, isControl); i >= 0 {
		// net/http would refuse it on every call; say so once, here.
		return fmt.Sprintf("contains a control character at byte %d", i)
	}
	return ""
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
