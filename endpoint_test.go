package amlpool

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	secretKey    = "s3cr3t-key-value"
	secondaryKey = "s3c0nd-key-value"
)

// secrets are every secret an endpoint of these tests holds.
var secrets = []string{secretKey, secondaryKey}

func good(mod func(*Endpoint)) Endpoint {
	e := Endpoint{
		Name:         "east",
		URL:          "https://ussouthcentral.services.azureml.net/workspaces/w/services/abc/execute?api-version=2.0&details=true",
		APIKey:       secretKey,
		SecondaryKey: secondaryKey,
	}
	if mod != nil {
		mod(&e)
	}
	return e
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name      string
		endpoints []Endpoint
		opts      []Option
		field     string
		endpoint  string
	}{
		{name: "no endpoints", endpoints: nil, field: "endpoints"},
		{name: "empty URL", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "" })}, field: "URL", endpoint: "east"},
		{name: "relative URL", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "/services/x/execute" })}, field: "URL", endpoint: "east"},
		{name: "no host", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "https:///x" })}, field: "URL", endpoint: "east"},
		{name: "bad scheme", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "ftp://h/x" })}, field: "URL", endpoint: "east"},
		{name: "http to a remote host", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "http://example.com/x" })}, field: "URL", endpoint: "east"},
		{name: "user info in URL", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "https://u:" + secretKey + "@h/x" })}, field: "URL", endpoint: "east"},
		{name: "unparsable URL", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "https://h/%zz" })}, field: "URL", endpoint: "east"},
		{name: "empty key", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = "" })}, field: "APIKey", endpoint: "east"},
		{name: "key with newline", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = secretKey + "\r\nX: y" })}, field: "APIKey", endpoint: "east"},
		{name: "key with NUL", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = secretKey + "\x00" })}, field: "APIKey", endpoint: "east"},
		{name: "key of spaces", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = "   " })}, field: "APIKey", endpoint: "east"},
		{name: "key with a space before it", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = " " + secretKey })}, field: "APIKey", endpoint: "east"},
		{name: "key with a tab after it", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = secretKey + "\t" })}, field: "APIKey", endpoint: "east"},
		{name: "key with its line end", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = secretKey + "\n" })}, field: "APIKey", endpoint: "east"},
		{name: "second key with a space after it", endpoints: []Endpoint{good(func(e *Endpoint) { e.SecondaryKey = secondaryKey + " " })}, field: "SecondaryKey", endpoint: "east"},
		{name: "key with DEL", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = "\x7f" + secretKey })}, field: "APIKey", endpoint: "east"},
		{name: "negative MCC", endpoints: []Endpoint{good(func(e *Endpoint) { e.MaxConcurrentCalls = -1 })}, field: "MaxConcurrentCalls", endpoint: "east"},
		{name: "MCC over 200", endpoints: []Endpoint{good(func(e *Endpoint) { e.MaxConcurrentCalls = 201 })}, field: "MaxConcurrentCalls", endpoint: "east"},
		{name: "unnamed endpoint is named by index", endpoints: []Endpoint{good(nil), good(func(e *Endpoint) { e.Name = ""; e.APIKey = "" })}, field: "APIKey", endpoint: "endpoints[1]"},
		{name: "same URL twice", endpoints: []Endpoint{good(nil), good(func(e *Endpoint) { e.Name = "west" })}, field: "URL", endpoint: "west"},
		{name: "same URL in another case", endpoints: []Endpoint{good(nil), good(func(e *Endpoint) {
			e.Name = "west"
			e.URL = strings.Replace(e.URL, "ussouthcentral", "USSouthCentral", 1)
		})}, field: "URL", endpoint: "west"},
		{name: "same URL with its default port", endpoints: []Endpoint{good(nil), good(func(e *Endpoint) { e.Name = "west"; e.URL = strings.Replace(e.URL, ".net/", ".net:443/", 1) })}, field: "URL", endpoint: "west"},
		{name: "same http URL with its default port", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "http://127.0.0.1/x" }), good(func(e *Endpoint) { e.Name = "west"; e.URL = "http://127.0.0.1:80/x" })}, field: "URL", endpoint: "west"},
		{name: "name with a line break", endpoints: []Endpoint{good(nil), good(func(e *Endpoint) { e.Name = "west\nlevel=ERROR"; e.URL += "&x=1" })}, field: "Name", endpoint: "endpoints[1]"},
		{name: "name with an escape", endpoints: []Endpoint{good(func(e *Endpoint) { e.Name = "\x1b[2Jeast" })}, field: "Name", endpoint: "endpoints[0]"},
		{name: "name not UTF-8", endpoints: []Endpoint{good(func(e *Endpoint) { e.Name = "east\xff" })}, field: "Name", endpoint: "endpoints[0]"},
		{name: "same name twice", endpoints: []Endpoint{good(nil), good(func(e *Endpoint) { e.URL += "&x=1" })}, field: "Name", endpoint: "east"},
		{name: "negative max wait", endpoints: []Endpoint{good(nil)}, opts: []Option{WithMaxWait(-time.Second)}, field: "WithMaxWait"},
		{name: "zero response cap", endpoints: []Endpoint{good(nil)}, opts: []Option{WithMaxResponseBytes(0)}, field: "WithMaxResponseBytes"},
		{name: "zero attempt timeout", endpoints: []Endpoint{good(nil)}, opts: []Option{WithAttemptTimeout(0)}, field: "WithAttemptTimeout"},
		{name: "negative response cap", endpoints: []Endpoint{good(nil)}, opts: []Option{WithMaxResponseBytes(-1)}, field: "WithMaxResponseBytes"},
		{name: "negative attempt timeout", endpoints: []Endpoint{good(nil)}, opts: []Option{WithAttemptTimeout(-time.Second)}, field: "WithAttemptTimeout"},
		{name: "http to a loopback look-alike", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "http://localhost.example.com/x" })}, field: "URL", endpoint: "east"},
		{name: "http to a name that starts as a loopback address", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "http://127.0.0.1.example.com/x" })}, field: "URL", endpoint: "east"},
		{name: "http to localhost., which DNS resolves", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "http://localhost.:9/x" })}, field: "URL", endpoint: "east"},
		{name: "http to a link-local address with a zone", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "http://[fe80::1%25lo]:9/x" })}, field: "URL", endpoint: "east"},
		{name: "http to 0.0.0.0", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "http://0.0.0.0:80/x" })}, field: "URL", endpoint: "east"},
		{name: "http with loopback user info", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "http://127.0.0.1@example.com/x" })}, field: "URL", endpoint: "east"},
		{name: "scheme-relative URL", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "//example.com/x" })}, field: "URL", endpoint: "east"},
		{name: "zero max attempts", endpoints: []Endpoint{good(nil)}, opts: []Option{WithMaxAttempts(0)}, field: "WithMaxAttempts"},
		{name: "negative backoff", endpoints: []Endpoint{good(nil)}, opts: []Option{WithBackoff(Backoff{Initial: -time.Second})}, field: "WithBackoff"},
		{name: "backoff max below initial", endpoints: []Endpoint{good(nil)}, opts: []Option{WithBackoff(Backoff{Initial: time.Second, Max: time.Millisecond})}, field: "WithBackoff"},
		{name: "backoff max over a day", endpoints: []Endpoint{good(nil)}, opts: []Option{WithBackoff(Backoff{Max: math.MaxInt64})}, field: "WithBackoff"},
		{name: "backoff multiplier below 1", endpoints: []Endpoint{good(nil)}, opts: []Option{WithBackoff(Backoff{Multiplier: 0.5})}, field: "WithBackoff"},
		{name: "backoff jitter over 1", endpoints: []Endpoint{good(nil)}, opts: []Option{WithBackoff(Backoff{Jitter: 2})}, field: "WithBackoff"},
		{name: "negative max retry-after", endpoints: []Endpoint{good(nil)}, opts: []Option{WithMaxRetryAfter(-time.Second)}, field: "WithMaxRetryAfter"},
		{name: "negative retry budget ratio", endpoints: []Endpoint{good(nil)}, opts: []Option{WithRetryBudget(-0.1, 10)}, field: "WithRetryBudget"},
		{name: "NaN retry budget ratio", endpoints: []Endpoint{good(nil)}, opts: []Option{WithRetryBudget(math.NaN(), 10)}, field: "WithRetryBudget"},
		{name: "negative retry budget floor", endpoints: []Endpoint{good(nil)}, opts: []Option{WithRetryBudget(0.2, -1)}, field: "WithRetryBudget"},
		{name: "zero ejection failures", endpoints: []Endpoint{good(nil)}, opts: []Option{WithEjection(0, time.Second)}, field: "WithEjection"},
		{name: "zero ejection time", endpoints: []Endpoint{good(nil)}, opts: []Option{WithEjection(5, 0)}, field: "WithEjection"},
		{name: "zero hedging delay", endpoints: []Endpoint{good(nil)}, opts: []Option{WithHedging(0)}, field: "WithHedging"},
		{name: "hedging quantile 1", endpoints: []Endpoint{good(nil)}, opts: []Option{WithHedgingQuantile(1)}, field: "WithHedgingQuantile"},
		{name: "hedging quantile NaN", endpoints: []Endpoint{good(nil)}, opts: []Option{WithHedgingQuantile(math.NaN())}, field: "WithHedgingQuantile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.endpoints, tt.opts...)
			require.Error(t, err)
			assert.Nil(t, c)
			assert.ErrorIs(t, err, ErrInvalidConfig)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tt.field, ce.Field)
			assert.Equal(t, tt.endpoint, ce.Endpoint)
			assert.NotContains(t, err.Error(), secretKey)
		})
	}
}

// TestBadURLErrorsHideTheQuery: a URL's query may carry a secret (?code=,
// ?key=), and the ConfigError for a bad URL says what is wrong without it.
func TestBadURLErrorsHideTheQuery(t *testing.T) {
	for _, tt := range []struct{ url, problem string }{
		{"http://example.com/x?code=" + secretKey, `"http://example.com/x" uses http to a non-loopback host`},
		{"ftp://example.com/x?key=" + secretKey, `"ftp://example.com/x": scheme "ftp" is not http or https`},
		{"/x?key=" + secretKey, `"/x" is not absolute`},
		{"https://u:p@/x?key=" + secretKey, `"https:///x" has no host`},
		{"https://:443/x?key=" + secretKey, `"https://:443/x" has no host`},
		{"https://h/%zz?key=" + secretKey, `not a URL: invalid URL escape "%zz"`},
	} {
		_, err := New([]Endpoint{good(func(e *Endpoint) { e.URL = tt.url; e.APIKey = "other" })})
		var ce *ConfigError
		require.ErrorAs(t, err, &ce, tt.url)
		assert.Equal(t, "URL", ce.Field, tt.url)
		assert.Contains(t, ce.Problem, tt.problem, tt.url)
		assert.NotContains(t, err.Error(), secretKey, tt.url)
	}
}

// TestKeyInTheURLQueryIsRefused: a URL is printed, logged and traced as
// it is, so one whose query holds the endpoint's key is refused.
func TestKeyInTheURLQueryIsRefused(t *testing.T) {
	for _, q := range []string{"&code=" + secretKey, "&key=" + secondaryKey, "&code=" + url.QueryEscape(secretKey+"+/=")} {
		_, err := New([]Endpoint{good(func(e *Endpoint) {
			e.URL += q
			if strings.Contains(q, "%") {
				e.APIKey = secretKey + "+/="
			}
		})})
		var ce *ConfigError
		require.ErrorAs(t, err, &ce, q)
		assert.Equal(t, "URL", ce.Field, q)
		assert.Equal(t, "east", ce.Endpoint, q)
		assert.Contains(t, ce.Problem, "holds the key", q)
		assert.NotContains(t, err.Error(), secretKey, q)
		assert.NotContains(t, err.Error(), secondaryKey, q)
	}
	c, err := New([]Endpoint{good(func(e *Endpoint) { e.URL += "&code=another" })})
	require.NoError(t, err, "a query value that is no key of the endpoint's")
	c.Close()
}

// TestDuplicateNameSaysWhichEndpoints: a Name given twice is refused
// with the index of both endpoints, the first one's Name maybe derived.
func TestDuplicateNameSaysWhichEndpoints(t *testing.T) {
	west := good(func(e *Endpoint) { e.Name = "west"; e.URL += "&x=1" })
	_, err := New([]Endpoint{good(nil), west, good(func(e *Endpoint) { e.URL += "&x=2" })})
	var ce *ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, ConfigError{Endpoint: "east", Field: "Name", Problem: "endpoints[0] has it too; endpoints[2] is this one"}, *ce)

	_, err = New([]Endpoint{good(func(e *Endpoint) { e.Name = "" }), good(func(e *Endpoint) { e.Name = "abc"; e.URL += "&x=1" })})
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, ConfigError{Endpoint: "abc", Field: "Name", Problem: "the Name derived from the URL of endpoints[0]; endpoints[1] is this one"}, *ce)
}

func TestNewAcceptsGoodConfig(t *testing.T) {
	tests := []struct {
		name string
		eps  []Endpoint
		opts []Option
		want []EndpointStats
	}{
		{
			name: "defaults and derived names",
			eps: []Endpoint{
				good(func(e *Endpoint) { e.Name = "" }),
				good(func(e *Endpoint) { e.Name = ""; e.URL = "http://127.0.0.1:9/x"; e.MaxConcurrentCalls = 200 }),
				good(func(e *Endpoint) {
					e.Name = ""
					e.URL = "http://[::1]:9/workspaces/w/services/abc/execute"
					e.MaxConcurrentCalls = 1
				}),
			},
			want: []EndpointStats{
				{Name: "abc", MaxConcurrentCalls: 20, Limit: 20},
				{Name: "127.0.0.1:9", MaxConcurrentCalls: 200, Limit: 200},
				{Name: "abc#2", MaxConcurrentCalls: 1, Limit: 1},
			},
		},
		{
			name: "loopback hosts; host names in any case, default ports dropped",
			eps: []Endpoint{
				good(func(e *Endpoint) { e.Name = ""; e.URL = "http://LocalHost:9/x" }),
				good(func(e *Endpoint) { e.Name = ""; e.URL = "https://[::1]:443/x" }),
				good(func(e *Endpoint) { e.Name = ""; e.URL = "http://127.1.2.3:9/x" }),
				good(func(e *Endpoint) { e.Name = ""; e.URL = "http://[::ffff:127.0.0.1]:9/x" }),
				good(func(e *Endpoint) { e.Name = ""; e.URL = "http://[::1%25lo]:9/x" }),
			},
			want: []EndpointStats{
				{Name: "localhost:9", MaxConcurrentCalls: 20, Limit: 20},
				{Name: "[::1]", MaxConcurrentCalls: 20, Limit: 20},
				{Name: "127.1.2.3:9", MaxConcurrentCalls: 20, Limit: 20},
				{Name: "[::ffff:127.0.0.1]:9", MaxConcurrentCalls: 20, Limit: 20},
				{Name: "[::1%lo]:9", MaxConcurrentCalls: 20, Limit: 20},
			},
		},
		{
			name: "http to a remote host when allowed",
			eps:  []Endpoint{good(func(e *Endpoint) { e.URL = "http://example.com/x" })},
			opts: []Option{WithInsecureHTTP()},
			want: []EndpointStats{{Name: "east", MaxConcurrentCalls: 20, Limit: 20}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.eps, tt.opts...)
			require.NoError(t, err)
			defer c.Close()
			got := c.Stats().Endpoints
			for i := range got {
				assert.False(t, got[i].Since.IsZero(), "added by New")
				got[i].Since = time.Time{}
			}
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestEndpointNeverShowsItsKey(t *testing.T) {
	e := good(func(e *Endpoint) { e.URL = "https://user:pw-" + secretKey + "@h/x" })
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("endpoint", "ep", e)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("endpoint", "ep", e)
	js, err := json.Marshal(e)
	require.NoError(t, err)
	for name, s := range map[string]string{
		"%v": fmt.Sprintf("%v", e), "%+v": fmt.Sprintf("%+v", e), "%#v": fmt.Sprintf("%#v", e),
		"%s": fmt.Sprintf("%s", e), "pointer %v": fmt.Sprintf("%v", &e), "slice %v": fmt.Sprintf("%v", []Endpoint{e}),
		"json": string(js), "slog": logged.String(),
	} {
		assert.NotContains(t, s, secretKey, name)
		assert.Contains(t, s, "east", name)
	}
}

// TestUncheckedEndpointNeverShowsItsKey: an Endpoint New would refuse
// may still be printed, logged or encoded (a config being reported), and
// the key in a URL's user info (a password, or a user name alone), in a
// URL that parses or not, or as a query value, stays hidden.
func TestUncheckedEndpointNeverShowsItsKey(t *testing.T) {
	for _, u := range []string{
		"https://user:" + secretKey + "@h/%zz",
		"https://" + secretKey + "@h:bad/x",
		"https://" + secretKey + "@h/x",
		"http://" + url.PathEscape(secondaryKey) + ":@h/x",
		"https://h/x?api-version=2.0&code=" + secretKey,
		"https://h/x?key=" + url.QueryEscape(secondaryKey),
	} {
		e := good(func(e *Endpoint) { e.URL = u })
		var logged bytes.Buffer
		slog.New(slog.NewJSONHandler(&logged, nil)).Info("endpoint", "ep", e)
		js, err := json.Marshal(e)
		require.NoError(t, err)
		for name, s := range map[string]string{"%v": fmt.Sprintf("%v", e), "%#v": fmt.Sprintf("%#v", e), "json": string(js), "slog": logged.String()} {
			assert.NotContains(t, s, secretKey, "%s of %s", name, u)
			assert.NotContains(t, s, secondaryKey, "%s of %s", name, u)
			assert.Contains(t, s, "h", "%s of %s", name, u)
		}
	}
	assert.Contains(t, good(func(e *Endpoint) { e.URL = "https://h/x?api-version=2.0&code=" + secretKey }).String(),
		"URL:https://h/x?api-version=2.0&code=[REDACTED] ")
}

// TestURLZoneKeepsItsCase: host names are compared in any case, but an
// IPv6 zone names an interface, whose name is case-sensitive: the zone
// keeps its case, and two zones that differ only in case are two URLs.
func TestURLZoneKeepsItsCase(t *testing.T) {
	for _, tt := range []struct{ url, want string }{
		{"https://[FE80::1%25Eth0]:443/x", "https://[fe80::1%25Eth0]/x"},
		{"http://[::1%25Lo]:9/x", "http://[::1%25Lo]:9/x"},
		{"https://EXAMPLE.com:8443/x", "https://example.com:8443/x"},
	} {
		u, err := checkURL(tt.url, false)
		require.NoError(t, err, tt.url)
		assert.Equal(t, tt.want, u.String(), tt.url)
	}
	c, err := New([]Endpoint{
		good(func(e *Endpoint) { e.Name = ""; e.URL = "https://[fe80::1%25eth0]/x" }),
		good(func(e *Endpoint) { e.Name = ""; e.URL = "https://[FE80::1%25Eth0]/x" }),
	})
	require.NoError(t, err, "other zones, other URLs")
	defer c.Close()
	assert.Equal(t, []string{"[fe80::1%eth0]", "[fe80::1%Eth0]"},
		[]string{c.Stats().Endpoints[0].Name, c.Stats().Endpoints[1].Name})
}

// TestQuerySecrets: the values scrubbed from replies are those printed
// URLs redact, of 16 characters or more decoded, as spelled and decoded,
// the longest first; the service's own parameters are not among them.
func TestQuerySecrets(t *testing.T) {
	u, err := url.Parse("https://h/x?api-version=2.0-preview-0123456789&sp=r&se=2026-01-01&sig=abcdefghijklmn%2B%2F" +
		"&code=0123456789abcdef&a-bare-token-of-some-length&sig2=abcdefghijklmn%2B%2F&empty=&details=true")
	require.NoError(t, err)
	assert.Equal(t, []string{"a-bare-token-of-some-length", "abcdefghijklmn%2B%2F", "abcdefghijklmn+/", "0123456789abcdef"}, querySecrets(u))
	u.RawQuery = ""
	assert.Empty(t, querySecrets(u))
}

// TestPrintedURLsHideQueryValues: a printed Endpoint shows its URL's
// query values as [REDACTED], for a value may be a secret that is no key
// (an Azure SAS sig=), but for the service's own parameters; unparsable
// URLs too.
func TestPrintedURLsHideQueryValues(t *testing.T) {
	for _, tt := range []struct{ url, want string }{
		{"https://h/x?api-version=2.0&details=true&format=swagger", "https://h/x?api-version=2.0&details=true&format=swagger"},
		{"https://h/x?api-version=2.0&sig=abc%2B&se=2026-01-01", "https://h/x?api-version=2.0&sig=[REDACTED]&se=[REDACTED]"},
		{"https://h/x?API-Version=2.0&bare-token&details", "https://h/x?API-Version=2.0&[REDACTED]&details"},
		{"https://h/x?sig=&code", "https://h/x?sig=&[REDACTED]"},
		{"https://h/x?api-version=" + secretKey, "https://h/x?api-version=[REDACTED]"},
		{"https://h/x?details=" + url.QueryEscape(secondaryKey), "https://h/x?details=[REDACTED]"},
		{"https://user:pw@h/x?sig=abc", "https://[REDACTED]@h/x?sig=[REDACTED]"},
		{"https://h/x", "https://h/x"},
		{"https://h/%zz?api-version=2.0&sig=abc#f?sig=x", "https://h/%zz?api-version=2.0&sig=[REDACTED]#f?sig=x"},
		{"https://u:p@h:bad/x?sig=abc", "https://[REDACTED]@h:bad/x?sig=[REDACTED]"},
		{"https://h:bad", "https://h:bad"},
	} {
		e := good(func(e *Endpoint) { e.URL = tt.url })
		assert.Contains(t, e.String(), "URL:"+tt.want+" ", tt.url)
		var logged bytes.Buffer
		slog.New(slog.NewJSONHandler(&logged, nil)).Info("endpoint", "ep", e)
		var line struct{ Ep struct{ URL string } }
		require.NoError(t, json.Unmarshal(logged.Bytes(), &line))
		assert.Equal(t, tt.want, line.Ep.URL, tt.url)
	}
}

// TestSpanURLsSayREDACTED: a span's url.full hides the same query values
// as a printed URL, with the literal REDACTED the OpenTelemetry
// conventions for url.full and url.query ask for; transport errors keep
// [REDACTED], as every other text amlpool prints does.
func TestSpanURLsSayREDACTED(t *testing.T) {
	for _, tt := range []struct{ url, span, err string }{
		{"https://h/x?api-version=2.0&details=true&format=swagger",
			"https://h/x?api-version=2.0&details=true&format=swagger",
			"https://h/x?api-version=2.0&details=true&format=swagger"},
		{"https://h/x?api-version=2.0&sig=abc%2B&se=2026-01-01",
			"https://h/x?api-version=2.0&sig=REDACTED&se=REDACTED",
			"https://h/x?api-version=2.0&sig=[REDACTED]&se=[REDACTED]"},
		{"https://h/x?API-Version=2.0&bare-token&details&sig=",
			"https://h/x?API-Version=2.0&REDACTED&details&sig=",
			"https://h/x?API-Version=2.0&[REDACTED]&details&sig="},
		{"https://h/x", "https://h/x", "https://h/x"},
	} {
		u, err := url.Parse(tt.url)
		require.NoError(t, err)
		assert.Equal(t, tt.span, spanURL(u), tt.url)
		assert.Equal(t, tt.err, redactedURL(u), tt.url)
	}
}

// TestIsDerivedName: the Names SetEndpoints lets an endpoint without a
// Name keep are those New could have derived for its URL.
func TestIsDerivedName(t *testing.T) {
	u, err := url.Parse("https://h/workspaces/w/services/s/execute")
	require.NoError(t, err)
	for name, want := range map[string]bool{
		"s": true, "s#2": true, "s#10": true,
		"s#1": false, "s#02": false, "s#": false, "s#x": false, "s#-2": false, "s#+2": false, "t": false, "h": false, "east": false,
	} {
		assert.Equal(t, want, isDerivedName(name, u), name)
	}
}

func TestClientCloseIsIdempotent(t *testing.T) {
	c, err := New([]Endpoint{good(nil)})
	require.NoError(t, err)
	assert.NoError(t, c.Close())
	assert.ErrorIs(t, c.Close(), ErrClosed)
	_, err = c.Do(t.Context(), []byte(`{}`))
	assert.ErrorIs(t, err, ErrClosed)
}
