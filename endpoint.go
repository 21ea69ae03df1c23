package amlpool

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/amlpool/amlpool/internal/pool"
)

// Endpoint describes one Azure ML scoring endpoint: where it is, the key or
// token it takes, and how many calls it accepts at once. It is a Classic
// web-service endpoint unless Kind says Online.
//
// Every endpoint of a web service, the default one included, has its own URL
// and key (docs/azureml.md). The zero Endpoint is not valid: New needs at least a
// URL and a key (or a Credential).
//
// An Endpoint's String, GoString, LogValue and MarshalJSON never show its
// keys, nor the values of its Header (names only), nor its Credential's
// (its type only), so an Endpoint can be printed or logged as it is.
type Endpoint struct {
	// Name labels the endpoint in logs, stats and errors. When empty it is
	// derived from the URL: the endpoint id after "services/", or the host,
	// with a suffix ("#2", "#3", …) when an endpoint before it in the set
	// has that Name, or, in SetEndpoints, any endpoint of the set keeps it:
	// SetEndpoints keeps the Name derived for a URL in use (see
	// Client.SetEndpoints). It must be valid UTF-8 without control
	// characters.
	Name string
	// URL is the endpoint's Request URI, e.g.
	// https://ussouthcentral.services.azureml.net/workspaces/{ws}/services/{id}/execute?api-version=2.0&details=true.
	// It must be absolute and https, except for loopback hosts (so httptest and
	// amltest servers work) or when WithInsecureHTTP is given. It may not
	// hold user info, nor the key as a query parameter's value. It is sent
	// as it is, but printed Endpoints and transport errors show its
	// query's values as [REDACTED], and spans (url.full) as REDACTED, the
	// OpenTelemetry conventions' form, but for the service's own
	// api-version, details and format: another value may be a secret (an
	// Azure SAS sig=). Such a value of 16 characters or more is also
	// scrubbed, as keys are, from replies an error quotes and from
	// transport errors. No two endpoints may have one URL; host names
	// are compared in any case (an IPv6 zone, an interface name, in its
	// own), and a default port (443, 80) counts as none. Two URLs that differ only in a redacted value print alike:
	// their Names tell them apart.
	URL string
	// APIKey is sent as "Authorization: Bearer <key>" to this endpoint's URL
	// only. Redirects are never followed, so the key goes nowhere else. It
	// may not begin or end with white space, nor hold a control character.
	APIKey string
	// MaxConcurrentCalls is the endpoint's cap on calls in flight. Classic:
	// 1 to 200, zero meaning DefaultMaxConcurrentCalls (20), the service's
	// default. Online: required, 1 to MaxOnlineConcurrentCalls (10,000);
	// set it to 2 × max_concurrent_requests_per_instance × instance_count of
	// the deployment (summed over the deployments that take traffic), the
	// point past which the endpoint answers 429 Too many pending requests.
	MaxConcurrentCalls int
	// SecondaryKey is the endpoint's second key, optional. The service
	// gives every endpoint two so that keys can be rotated without
	// downtime: after a 401 with one key, the endpoint is tried at once
	// with the other, and keeps the key that worked until it fails. Only
	// when both are refused is the endpoint taken out of rotation. It is a
	// secret like APIKey, under every rule that holds for it.
	SecondaryKey string
	// Kind is Classic (the zero value) or Online. All endpoints of one
	// Client are of one Kind, and SetEndpoints keeps it: their bodies
	// differ.
	Kind Kind `json:",omitzero"`
	// Header holds extra request headers for this endpoint only, e.g.
	// "azureml-model-deployment: blue" to pin an online endpoint's
	// deployment. Authorization, Content-Type, Content-Encoding, Accept,
	// Accept-Encoding (net/http asks for gzip and decodes it), Content-Length,
	// Host, Connection and Transfer-Encoding cannot be set this way.
	// Printed Endpoints show only its names. A value may be a secret (an
	// API Management Ocp-Apim-Subscription-Key), scrubbed, as keys are,
	// from replies an error quotes and from transport errors: the whole
	// value of a header whose name holds "key", "token", "secret", "auth",
	// "signature", "password", "credential" or "cookie", in any case
	// (Api-Key, X-Functions-Key), of 8 characters or more; the value of any
	// other header of 16 characters or more; and each part of a value as
	// long (the token of "Bearer <token>", a SAS's sig=), which a reply may
	// echo alone. A shorter value of a header whose name says it carries a
	// credential is scrubbed only where it is shown as that header's value
	// ("X-Api-Key: k3y", "x-api-key=k3y", {"X-Api-Key":"k3y"}); a shorter
	// part, or a shorter value of another header, is left: it is likely a
	// word or a number ("1", "on") that scrubbing would cut out of every
	// message. Azureml-Model-Deployment's value, a deployment's name, is
	// never scrubbed.
	Header http.Header
	// Credential, when set instead of APIKey, gives each attempt's bearer
	// token (see Credential). A token is a secret under every rule that
	// holds for keys.
	Credential Credential
	// Tier orders endpoints for the calls they take: 0 (the default) first,
	// up to MaxTier. A call goes to the lowest tier that has a free slot it
	// may use, so a higher tier takes only the overflow: the calls for which
	// every endpoint of the lower tiers is full, ejected, cooling down or
	// already tried by the call. Within a tier the Balancer chooses. Use it
	// for endpoints to prefer, nearby or paid for, before others.
	Tier int `json:",omitzero"`
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

// String describes the endpoint with its keys redacted, its Header's
// values too, and its Credential by type. Kind, Header, Credential and Tier
// are shown only when set.
func (e Endpoint) String() string {
	s := fmt.Sprintf("{Name:%s URL:%s APIKey:%s SecondaryKey:%s MaxConcurrentCalls:%d",
		e.Name, e.shownURL(), redact(e.APIKey), redact(e.SecondaryKey), e.MaxConcurrentCalls)
	if e.Kind != Classic {
		s += " Kind:" + e.Kind.String()
	}
	if e.Header != nil {
		s += fmt.Sprint(" Header:", redactedHeader(e.Header)) // names sorted
	}
	if e.Credential != nil {
		s += " Credential:" + credentialName(e.Credential)
	}
	if e.Tier != 0 {
		s += " Tier:" + strconv.Itoa(e.Tier)
	}
	return s + "}"
}

// redactedHeader is h with every value [REDACTED]: header values are no
// secret by purpose, but one may still carry a tenant or a deployment name
// someone would rather not log, and the names say enough.
func redactedHeader(h http.Header) map[string]string {
	if h == nil {
		return nil
	}
	out := make(map[string]string, len(h))
	for k := range h {
		out[k] = redacted
	}
	return out
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
	attrs := []slog.Attr{
		slog.String("name", e.Name),
		slog.String("url", e.shownURL()),
		slog.Int("max_concurrent_calls", e.MaxConcurrentCalls),
	}
	if e.Kind != Classic {
		attrs = append(attrs, slog.String("kind", e.Kind.String()))
	}
	if e.Tier != 0 {
		attrs = append(attrs, slog.Int("tier", e.Tier))
	}
	return slog.GroupValue(attrs...)
}

// MarshalJSON encodes the endpoint with its key redacted. (Decoding is the
// default one, so a config file can still carry a key.)
func (e Endpoint) MarshalJSON() ([]byte, error) {
	type plain Endpoint
	p := struct {
		plain
		Header     map[string]string `json:",omitempty"`
		Credential string            `json:",omitempty"` // its type, never its value
	}{plain: plain(e), Header: redactedHeader(e.Header), Credential: credentialName(e.Credential)}
	p.APIKey, p.SecondaryKey = redact(p.APIKey), redact(p.SecondaryKey)
	p.URL = e.shownURL()
	p.plain.Header, p.plain.Credential = nil, nil
	return json.Marshal(p)
}

// shownURL is e.URL for String, LogValue and MarshalJSON: without its user
// info, even in a URL that does not parse, and with its query's values
// redacted (redactQuery), the keys among them, which New refuses there but
// an Endpoint may be printed unchecked.
func (e Endpoint) shownURL() string {
	raw := e.URL
	u, err := url.Parse(raw)
	if err != nil {
		// Hide whatever stands before an @ in the authority, and the
		// query's values.
		scheme, rest, ok := strings.Cut(raw, "://")
		if !ok {
			return raw
		}
		end := strings.IndexAny(rest, "/?#")
		if end < 0 {
			end = len(rest)
		}
		authority, path, frag := rest[:end], rest[end:], ""
		if at := strings.LastIndexByte(authority, '@'); at >= 0 {
			authority = redacted + authority[at:]
		}
		if h := strings.IndexByte(path, '#'); h >= 0 {
			path, frag = path[:h], path[h:]
		}
		if p, q, ok := strings.Cut(path, "?"); ok {
			path = p + "?" + redactQuery(q, e.APIKey, e.SecondaryKey)
		}
		return scheme + "://" + authority + path + frag
	}
	q := redactQuery(u.RawQuery, e.APIKey, e.SecondaryKey)
	switch {
	case u.User != nil:
		// All of it: a user name without a password may be the key
		// (https://<key>@host), which url.URL.Redacted would show.
		u.RawQuery, u.User = q, nil
		scheme, rest, _ := strings.Cut(u.String(), "://")
		return scheme + "://" + redacted + "@" + rest
	case q != u.RawQuery:
		u.RawQuery = q
		return u.String()
	}
	return raw
}

// shownParams are the query parameters whose values a printed URL shows:
// the service's own (docs/azureml.md), which say how it answers. Any other
// value may be a secret that is no key of the endpoint's (an Azure SAS
// sig=, a function's code=), and is shown as [REDACTED].
var shownParams = []string{"api-version", "details", "format"}

// isShownParam reports whether a printed URL shows the value of the query
// parameter name (shownParams).
func isShownParam(name string) bool {
	return slices.ContainsFunc(shownParams, func(s string) bool { return strings.EqualFold(s, name) })
}

// redactQuery returns the raw query q with [REDACTED] for the value of
// every parameter but shownParams', and for a value that is one of keys;
// a parameter without "=" is its own value. The names stay, and the
// request still carries the query as it is: only printing redacts.
func redactQuery(q string, keys ...string) string { return maskQuery(q, redacted, keys) }

// maskQuery is redactQuery with mark for each value it hides: [REDACTED]
// for what amlpool prints, spanRedacted for spans.
func maskQuery(q, mark string, keys []string) string {
	if q == "" {
		return ""
	}
	params := strings.Split(q, "&")
	for i, p := range params {
		name, v, ok := strings.Cut(p, "=")
		shown := isShownParam(name)
		switch {
		case !ok && !shown:
			params[i] = mark
		case !ok || v == "":
		case !shown || isKey(v, keys):
			params[i] = name + "=" + mark
		}
	}
	return strings.Join(params, "&")
}

// isKey reports whether the query value v, escaped or not, is one of keys.
func isKey(v string, keys []string) bool {
	if uv, err := url.QueryUnescape(v); err == nil {
		v = uv
	}
	return slices.ContainsFunc(keys, func(k string) bool { return k != "" && k == v })
}

// minSecretLen is the length, decoded, from which a query value that
// printed URLs redact (querySecrets), or a header's value or a part of one
// (headerSecrets; a credential header's whole value from
// minCredentialLen), is also scrubbed from quoted replies and transport
// errors. A shorter one is no secret worth the name, and
// is likely an ordinary word or number (a SAS's sp=r, spr=https or
// sv=2021-06-08) that scrubbing would cut out of every message; a SAS
// sig=, a gateway's subscription-key= or a function's code= is longer.
const minSecretLen = 16

// minCredentialLen is the length from which the whole value of a header
// whose name says it carries a credential (Api-Key, X-Auth-Mode) is
// scrubbed wherever a quoted reply or a transport error holds it
// (headerSecrets). A shorter value is hidden only where a text shows it as
// that header's value (fieldSecret). Below 8 characters a value is most
// likely a flag, a mode or a word ("1", "on", "true", "basic", "none"),
// whose text is in countless messages (an "on" in every "connection",
// a "1" in every count): scrubbed everywhere, it would mangle them all.
// No key a service issues is that short (API Management subscription
// keys and Azure ML keys are 32 characters or more), and 8 is the shortest
// password NIST SP 800-63B accepts at all; from 8 on, an unrelated message
// holds the value by chance seldom enough that scrubbing it everywhere
// costs little. It is lower than minSecretLen: the header's name says the
// value is a secret.
const minCredentialLen = 8

// querySecrets returns the values of the checked URL u's query that
// printed URLs redact (redactQuery) and that are at least minSecretLen
// long: a reply or a transport error may quote them (a gateway's error
// page, a RoundTripper's error quoting the URL). Each is given as the URL
// spells it and, when that differs, decoded; the longest first, so that a
// value that holds another is scrubbed whole. It is built once per
// endpoint.
func querySecrets(u *url.URL) []string {
	var out []string
	for _, p := range strings.Split(u.RawQuery, "&") {
		name, v, ok := strings.Cut(p, "=")
		switch {
		case !ok:
			v = name // its own value
		case isShownParam(name):
			continue
		}
		decoded := v
		if d, err := url.QueryUnescape(v); err == nil {
			decoded = d
		}
		if len(decoded) < minSecretLen {
			continue
		}
		for _, s := range [...]string{v, decoded} {
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// redactedURL is the checked URL u as transport errors show it: its
// query's values redacted (redactQuery), and without user info, which New
// refuses.
func redactedURL(u *url.URL) string { return maskedURL(u, redacted) }

// spanRedacted stands for a hidden query value in a span's url.full: the
// literal OpenTelemetry's semantic conventions for url.full and url.query
// ask for ("REDACTED"), which tools that read spans may look for, where
// errors and logs show amlpool's own [REDACTED].
const spanRedacted = "REDACTED"

// spanURL is the checked URL u as a span's url.full shows it: redactedURL
// with spanRedacted for each hidden value.
func spanURL(u *url.URL) string { return maskedURL(u, spanRedacted) }

// maskedURL is u with mark for each query value redactQuery hides, and
// without user info.
func maskedURL(u *url.URL, mark string) string {
	v := *u
	v.RawQuery, v.User = maskQuery(u.RawQuery, mark, nil), nil
	return v.String()
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
//
// An endpoint without a Name gets one derived from its URL, with a suffix
// ("#2", "#3", …) when another endpoint has it already. inUse, from
// SetEndpoints, maps the URLs of the endpoints in use (as a checked URL
// spells them) to their Names: an endpoint whose URL is among them, and
// whose Name there is one derived from it, keeps that Name (unless another
// endpoint of cfgs has it for its own Name), so that a set given in
// another order, or with a colliding endpoint removed, moves no derived
// Name to another URL, and with it that endpoint's state.
func newSpecs(cfgs []Endpoint, allowHTTP bool, inUse map[string]string) ([]pool.Spec, error) {
	if len(cfgs) == 0 {
		return nil, &ConfigError{Field: "endpoints", Problem: "none given; need at least one"}
	}
	specs := make([]pool.Spec, len(cfgs))
	urls := make(map[string]string, len(cfgs))
	names := make(map[string]bool, len(cfgs))
	kept := keptNames(cfgs, allowHTTP, inUse)
	for i, c := range cfgs {
		label := c.Name
		if label == "" {
			label = "endpoints[" + strconv.Itoa(i) + "]"
		}
		if j := strings.IndexFunc(c.Name, isControl); j >= 0 || !utf8.ValidString(c.Name) {
			problem := fmt.Sprintf("%q has a control character at byte %d; a Name is printed in logs and errors", c.Name, j)
			if j < 0 {
				problem = fmt.Sprintf("%q is not valid UTF-8", c.Name)
			}
			return nil, &ConfigError{Endpoint: "endpoints[" + strconv.Itoa(i) + "]", Field: "Name", Problem: problem}
		}
		u, err := checkURL(c.URL, allowHTTP)
		if err != nil {
			return nil, &ConfigError{Endpoint: label, Field: "URL", Problem: err.Error()}
		}
		if c.Kind > Online {
			return nil, &ConfigError{Endpoint: label, Field: "Kind", Problem: fmt.Sprintf("unknown Kind %d; want Classic or Online", c.Kind)}
		}
		if c.Kind != cfgs[0].Kind {
			return nil, &ConfigError{Endpoint: label, Field: "Kind", Problem: fmt.Sprintf(
				"%s, but endpoint %s is %s; the endpoints of one Client are all of one Kind (their bodies differ)", c.Kind, labelOf(cfgs, 0), cfgs[0].Kind)}
		}
		keys, problem := endpointKeys(c)
		if problem != nil {
			problem.Endpoint = label
			return nil, problem
		}
		if name := keyInQuery(u, keys); name != "" {
			return nil, &ConfigError{Endpoint: label, Field: "URL", Problem: fmt.Sprintf(
				"its query parameter %q holds the key; the key goes in APIKey (or SecondaryKey) only: the URL is printed, logged and traced as it is", name)}
		}
		mcc, problem := endpointCap(c)
		if problem != nil {
			problem.Endpoint = label
			return nil, problem
		}
		extra, problem := checkHeader(c.Header)
		if problem != nil {
			problem.Endpoint = label
			return nil, problem
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
			var ok bool
			if name, ok = kept.byIndex[i]; !ok {
				name = uniqueName(deriveName(u), func(n string) bool { return names[n] || kept.names[n] })
			}
		} else if names[name] {
			j := slices.IndexFunc(specs[:i], func(s pool.Spec) bool { return s.Name == name })
			problem := fmt.Sprintf("endpoints[%d] has it too; endpoints[%d] is this one", j, i)
			if cfgs[j].Name == "" {
				problem = fmt.Sprintf("the Name derived from the URL of endpoints[%d]; endpoints[%d] is this one", j, i)
			}
			return nil, &ConfigError{Endpoint: label, Field: "Name", Problem: problem}
		}
		names[name] = true
		urls[key] = name
		specs[i] = pool.Spec{Name: name, URL: u, Max: mcc, Tier: c.Tier, Auth: newAuth(c.Credential, keys, extra)}
	}
	return specs, nil
}

// labelOf names cfgs[i] in an error, as newSpecs does.
func labelOf(cfgs []Endpoint, i int) string {
	if cfgs[i].Name != "" {
		return cfgs[i].Name
	}
	return "endpoints[" + strconv.Itoa(i) + "]"
}

// endpointKeys checks c's keys and Credential, and returns its keys (none
// with a Credential).
func endpointKeys(c Endpoint) ([]string, *ConfigError) {
	if c.Credential != nil {
		switch {
		case c.APIKey != "":
			return nil, &ConfigError{Field: "Credential", Problem: "set together with APIKey; give one of them"}
		case c.SecondaryKey != "":
			return nil, &ConfigError{Field: "SecondaryKey", Problem: "set with a Credential, which gives the tokens; drop it"}
		}
		return nil, nil
	}
	if c.APIKey == "" {
		return nil, &ConfigError{Field: "APIKey", Problem: "empty"}
	}
	keys := []string{c.APIKey}
	if c.SecondaryKey != "" {
		keys = append(keys, c.SecondaryKey)
	}
	for k, field := range []string{"APIKey", "SecondaryKey"}[:len(keys)] {
		if problem := checkKey(keys[k]); problem != "" {
			return nil, &ConfigError{Field: field, Problem: problem}
		}
	}
	return keys, nil
}

// keyInQuery returns the name of a query parameter of u whose value is one
// of keys, or "".
func keyInQuery(u *url.URL, keys []string) string {
	for name, vs := range u.Query() {
		for _, v := range vs {
			if slices.Contains(keys, v) {
				return name
			}
		}
	}
	return ""
}

// endpointCap checks c's MaxConcurrentCalls and returns the cap in force.
func endpointCap(c Endpoint) (int, *ConfigError) {
	mcc := c.MaxConcurrentCalls
	if c.Kind == Online {
		switch {
		case mcc == 0:
			return 0, &ConfigError{Field: "MaxConcurrentCalls", Problem: "required for an online endpoint: set it to " +
				"2 × max_concurrent_requests_per_instance × instance_count of its deployment (summed over the deployments " +
				"that take traffic), the number of requests past which it answers 429 Too many pending requests"}
		case mcc < 0 || mcc > MaxOnlineConcurrentCalls:
			return 0, &ConfigError{Field: "MaxConcurrentCalls",
				Problem: fmt.Sprintf("%d is out of range; want 1 to %d for an online endpoint", mcc, MaxOnlineConcurrentCalls)}
		}
		return mcc, nil
	}
	switch {
	case mcc == 0:
		mcc = DefaultMaxConcurrentCalls
	case mcc < 0 || mcc > MaxMaxConcurrentCalls:
		return 0, &ConfigError{Field: "MaxConcurrentCalls",
			Problem: fmt.Sprintf("%d is out of range; want 1 to %d, or 0 for %d", mcc, MaxMaxConcurrentCalls, DefaultMaxConcurrentCalls)}
	}
	return mcc, nil
}

// newAuth builds an endpoint's Auth: its requests' headers, built once and
// shared by every request, with each key's Authorization, or without one
// for a Credential's tokens.
func newAuth(cred Credential, keys []string, extra http.Header) *pool.Auth {
	hidden := headerSecrets(extra)
	base := func() http.Header {
		h := make(http.Header, len(extra)+3)
		for k, v := range extra {
			h[k] = v
		}
		h["Content-Type"], h["Accept"] = jsonContentType, jsonContentType
		return h
	}
	if cred != nil {
		return pool.NewTokenAuth(cred, base(), hidden...)
	}
	headers := make([]http.Header, len(keys))
	for k, key := range keys {
		headers[k] = base()
		headers[k]["Authorization"] = []string{"Bearer " + key}
	}
	return pool.NewAuth(keys, headers, hidden...)
}

// headerSecrets returns the values of the checked header h that are
// scrubbed, as keys are, from quoted replies and transport errors: a
// gateway's subscription key (Ocp-Apim-Subscription-Key), a function's
// x-functions-key, any header that carries a credential, which a reply
// may echo. That is the whole value, as net/http sends it (trimmed), of a
// header whose name says it carries a credential (isCredentialHeader),
// from minCredentialLen characters on; a shorter one is a field secret
// (fieldSecret), hidden only where a text shows it as that header's value
// ("X-Auth-Mode: 1"): a short key is a key all the same, and a reply that
// echoes the request's headers must not show it, but a "1" or an "on"
// searched for everywhere would be cut out of every message. Of any other
// header it is a value at least minSecretLen long. And it is every part
// of a value at least minSecretLen long, which a reply may echo alone:
// split at spaces, commas, semicolons and ampersands, and a name=value
// part's value, as sent and percent-decoded (a SAS's sig=). A shorter
// part is left (a SAS's se=1700000000, skn=send, "Bearer"), and so is a
// shorter value of another header: each is likely a word or a number
// ("json", "blue", "2") that scrubbing would cut out of every message.
// Azureml-Model-Deployment's value is none: it is a deployment's name,
// which the service's own errors name. It is built once per Auth.
func headerSecrets(h http.Header) []string {
	var out []string
	add := func(s string, minLen int) {
		if s != "" && len(s) >= minLen && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for name, vs := range h {
		if name == deploymentHeader {
			continue
		}
		cred, short := isCredentialHeader(name), false
		for _, v := range vs {
			switch whole := strings.Trim(v, " \t"); {
			case !cred:
				add(whole, minSecretLen)
			case len(whole) >= minCredentialLen:
				add(whole, 1)
			case whole != "":
				short = true
			}
			// A reply may echo a part alone: the token of "Bearer <token>",
			// the sig= of a SAS ("SharedAccessSignature sr=…&sig=…&se=…").
			for part := range strings.FieldsFuncSeq(v, isHeaderSeparator) {
				if isWord(part) {
					continue // a scheme's name, "SharedAccessSignature"
				}
				add(part, minSecretLen)
				if _, val, ok := strings.Cut(part, "="); ok {
					add(val, minSecretLen)
					if dec, err := url.QueryUnescape(val); err == nil {
						add(dec, minSecretLen)
					}
				}
			}
		}
		if short {
			// With every value of the header, so that a list of them
			// after its name ("[1 2]") is hidden whole.
			var values []string
			for _, v := range vs {
				if whole := strings.Trim(v, " \t"); whole != "" {
					values = append(values, whole)
				}
			}
			add(fieldSecret(name, values...), 1)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return cmp.Or(len(b)-len(a), strings.Compare(a, b)) })
	return out
}

// credentialWords are what the name of a header that carries a credential
// holds, in any case: Ocp-Apim-Subscription-Key, Api-Key, X-Api-Key,
// X-Functions-Key, X-Auth-Token, Proxy-Authorization, Cookie and the like.
var credentialWords = []string{"key", "token", "secret", "auth", "signature", "password", "credential", "cookie"}

// isCredentialHeader reports whether the header named name (canonical)
// carries a credential by its name, so that its whole value is a secret
// however short (headerSecrets).
func isCredentialHeader(name string) bool {
	lower := strings.ToLower(name)
	return slices.ContainsFunc(credentialWords, func(w string) bool { return strings.Contains(lower, w) })
}

// isHeaderSeparator reports whether r separates the parts of a header
// value that carries a credential: "Bearer <token>",
// "SharedAccessSignature sr=…&sig=…", "k1=v1; k2=v2", "a, b".
func isHeaderSeparator(r rune) bool {
	return r == ' ' || r == '\t' || r == ',' || r == ';' || r == '&'
}

// isWord reports whether s is letters only: a word, not a secret.
func isWord(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') }) < 0
}

// deploymentHeader names the deployment an online endpoint's request goes
// to; its value is no secret.
const deploymentHeader = "Azureml-Model-Deployment"

// reservedHeaders are the headers Endpoint.Header cannot set: amlpool's
// own (the key or token, the body's type, encoding and length, the type of
// reply it reads, the host the URL names) and net/http's framing and
// compression.
var reservedHeaders = []string{"Authorization", "Content-Type", "Content-Encoding", "Accept", "Accept-Encoding",
	"Content-Length", "Host", "Connection", "Transfer-Encoding"}

// reservedProblem says why Header cannot set the reserved header name.
func reservedProblem(name string) string {
	switch name {
	case "Accept-Encoding":
		// Set by hand, it turns net/http's transparent decoding off: a
		// gzip reply would reach the JSON decoder compressed.
		return "Accept-Encoding cannot be set through Header: net/http asks for gzip and decodes the reply itself, " +
			"and hands on undecoded a reply it did not ask for; to have replies sent uncompressed, give WithHTTPClient " +
			"a client whose Transport has DisableCompression"
	case "Content-Encoding":
		return "Content-Encoding cannot be set through Header: amlpool sends its JSON body uncompressed"
	}
	return name + " cannot be set through Header (amlpool sets it)"
}

// checkHeader checks an Endpoint's Header and returns a copy of it with
// canonical names, never aliasing the caller's map or slices.
func checkHeader(h http.Header) (http.Header, *ConfigError) {
	if len(h) == 0 {
		return nil, nil
	}
	out := make(http.Header, len(h))
	for name, vs := range h {
		if problem := checkHeaderName(name); problem != "" {
			return nil, &ConfigError{Field: "Header", Problem: problem}
		}
		canon := http.CanonicalHeaderKey(name)
		if slices.Contains(reservedHeaders, canon) {
			return nil, &ConfigError{Field: "Header", Problem: reservedProblem(canon)}
		}
		if _, dup := out[canon]; dup {
			return nil, &ConfigError{Field: "Header", Problem: fmt.Sprintf("%s given twice, in different cases", canon)}
		}
		if len(vs) == 0 {
			return nil, &ConfigError{Field: "Header", Problem: fmt.Sprintf("%s has no value", canon)}
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				return nil, &ConfigError{Field: "Header", Problem: fmt.Sprintf("the value of %s contains a line break", canon)}
			}
			if i := strings.IndexFunc(v, isControl); i >= 0 {
				return nil, &ConfigError{Field: "Header", Problem: fmt.Sprintf("the value of %s contains a control character at byte %d", canon, i)}
			}
		}
		out[canon] = slices.Clone(vs)
	}
	return out, nil
}

// checkHeaderName returns what is wrong with a header name, or "": it must
// be an RFC 9110 token.
func checkHeaderName(name string) string {
	if name == "" {
		return "a header with an empty name"
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return fmt.Sprintf("header name %q has a character a header name cannot have, at byte %d", name, i)
	}
	return ""
}

// checkKey returns what is wrong with a key or token, or "".
func checkKey(key string) string {
	if strings.ContainsAny(key, "\r\n") {
		return "contains a line break"
	}
	if i := strings.IndexFunc(key, isControl); i >= 0 {
		// net/http would refuse it on every call; say so once, here.
		return fmt.Sprintf("contains a control character at byte %d", i)
	}
	if strings.TrimSpace(key) != key {
		// No key or token has any (keys are base64, tokens JWTs): it came
		// with the key from a file or a paste. The service would get
		// another key than the one given (net/http trims a header value's
		// end; a start makes "Bearer  key"), or none for a key of spaces,
		// and a reply echoing the key it got would escape the scrubbing.
		return "begins or ends with white space, which no key or token has (read with its line end?)"
	}
	return ""
}

// checkURL parses an endpoint URL, enforces https for non-loopback hosts
// and returns the URL in canonical form.
// Its errors never repeat the URL's user info or query, where a secret may
// be (?code=, ?key=).
func checkURL(raw string, allowHTTP bool) (*url.URL, error) {
	if raw == "" {
		return nil, fmt.Errorf("empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL it quotes
		}
		return nil, fmt.Errorf("not a URL: %v", err)
	}
	if !u.IsAbs() {
		return nil, fmt.Errorf("%q is not absolute; want https://host/…", shownURL(u))
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%q has no host; want https://host/…", shownURL(u))
	}
	if u.User != nil {
		return nil, fmt.Errorf("has user info; put the key in APIKey instead")
	}
	// One spelling per URL, the URL being an endpoint's identity: host
	// names are case-insensitive, and a default port is no port.
	u.Host = lowerHost(u.Host)
	if p := u.Port(); p == "" || u.Scheme == "https" && p == "443" || u.Scheme == "http" && p == "80" {
		u.Host = strings.TrimSuffix(u.Host, ":"+p)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowHTTP && !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("%q uses http to a non-loopback host; use https (or WithInsecureHTTP)", shownURL(u))
		}
	default:
		return nil, fmt.Errorf("%q: scheme %q is not http or https", shownURL(u), u.Scheme)
	}
	u.Fragment = ""
	return u, nil
}

// lowerHost returns a URL's Host with its host name in lower case, but not
// an IPv6 zone ("[fe80::1%Eth0]"): a zone names a network interface, and
// interface names are case-sensitive (Linux may have eth0 and Eth0).
func lowerHost(host string) string {
	if strings.HasPrefix(host, "[") {
		if i := strings.IndexByte(host, '%'); i >= 0 {
			return strings.ToLower(host[:i]) + host[i:]
		}
	}
	return strings.ToLower(host)
}

// shownURL is u for an error: without its user info, query or fragment.
func shownURL(u *url.URL) string {
	v := *u
	v.User, v.RawQuery, v.ForceQuery, v.Fragment, v.RawFragment = nil, "", false, "", ""
	return v.String()
}

// isControl reports whether r may not appear in a header value.
func isControl(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }

// isLoopback reports whether host, a URL's Hostname, is "localhost" or a
// loopback address, with a zone or without: the zone of ::1 names an
// interface, but the address is this host's all the same. "localhost."
// is not: Go's resolver does not find it in /etc/hosts and asks DNS, which
// may answer with any address.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
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

// uniqueName returns base, or the first of base#2, base#3, … that is not
// taken.
func uniqueName(base string, taken func(string) bool) string {
	name := base
	for n := 2; taken(name); n++ {
		name = base + "#" + strconv.Itoa(n)
	}
	return name
}

// isDerivedName reports whether name is one uniqueName may give an
// endpoint at u: deriveName(u), or it with a suffix.
func isDerivedName(name string, u *url.URL) bool {
	base := deriveName(u)
	if name == base {
		return true
	}
	n, ok := strings.CutPrefix(name, base+"#")
	if !ok || n == "" || n[0] == '0' {
		return false
	}
	k, err := strconv.Atoi(n)
	return err == nil && k >= 2 && strconv.Itoa(k) == n
}

// keptDerived is the derived Names that endpoints without a Name keep
// from the set in use (newSpecs).
type keptDerived struct {
	byIndex map[int]string  // cfgs' index → the Name it keeps
	names   map[string]bool // the Names kept, which no other derived Name takes
}

// keptNames finds, among cfgs without a Name, those whose URL is in use
// (inUse) under a Name derived from it that no endpoint of cfgs gives
// itself, and that no earlier one of them keeps: they keep it. A URL that
// does not check keeps nothing (newSpecs refuses it).
func keptNames(cfgs []Endpoint, allowHTTP bool, inUse map[string]string) keptDerived {
	var k keptDerived
	if len(inUse) == 0 {
		return k
	}
	for i, c := range cfgs {
		if c.Name != "" {
			continue
		}
		u, err := checkURL(c.URL, allowHTTP)
		if err != nil {
			continue
		}
		name, ok := inUse[u.String()]
		if !ok || !isDerivedName(name, u) || k.names[name] ||
			slices.ContainsFunc(cfgs, func(o Endpoint) bool { return o.Name == name }) {
			continue
		}
		if k.byIndex == nil {
			k.byIndex, k.names = make(map[int]string), make(map[string]bool)
		}
		k.byIndex[i], k.names[name] = name, true
	}
	return k
}
