package amlpool

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html"
	"html/template"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// spellings are the ways a server may echo a secret it was sent: as it
// is, percent-encoded (either case, in part or every byte), JSON-escaped
// (as encoding/json does, HTML-safe or not, with "\/" as some encoders
// do, every rune as \u), HTML-escaped (html.EscapeString, html/template,
// every rune as an entity), and encoded twice: percent-encoded again by a
// proxy ("%252B"), JSON-escaped in a percent-encoded string ("%5Cu002b"),
// HTML-escaped in a JSON string ("\u0026#43;"), HTML-escaped twice
// ("&amp;#43;").
var spellings = map[string]func(string) string{
	"raw":           func(s string) string { return s },
	"query":         url.QueryEscape,
	"query lower":   func(s string) string { return lowerEscapes(url.QueryEscape(s)) },
	"path":          url.PathEscape,
	"every byte %":  func(s string) string { return everyByte(s, "%%%02X") },
	"every byte %x": func(s string) string { return everyByte(s, "%%%02x") },
	"json": func(s string) string {
		js, _ := json.Marshal(s)
		return string(js[1 : len(js)-1])
	},
	"json not HTML-safe": func(s string) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.Encode(s)
		return strings.TrimSuffix(b.String(), "\n")[1 : b.Len()-2]
	},
	"json \\/": func(s string) string {
		js, _ := json.Marshal(s)
		return strings.ReplaceAll(string(js[1:len(js)-1]), "/", `\/`)
	},
	"every rune \\u": func(s string) string { return everyRune(s, `\u%04x`, true) },
	"every rune \\U": func(s string) string { return everyRune(s, `\u%04X`, true) },
	"html":           html.EscapeString,
	"html/template":  template.HTMLEscapeString,
	"every rune &#":  func(s string) string { return everyRune(s, "&#%d;", false) },
	"every rune &#x": func(s string) string { return everyRune(s, "&#x%X;", false) },
	"query in json": func(s string) string {
		js, _ := json.Marshal(url.QueryEscape(s))
		return string(js[1 : len(js)-1])
	},
	"query twice":   func(s string) string { return url.QueryEscape(url.QueryEscape(s)) },
	"json in query": func(s string) string { return url.QueryEscape(everyRune(s, `\u%04x`, true)) },
	"html in json": func(s string) string {
		js, _ := json.Marshal(everyRune(s, "&#%d;", false))
		return string(js[1 : len(js)-1])
	},
	"html twice": func(s string) string { return html.EscapeString(everyRune(s, "&#x%X;", false)) },
}

var escapeRE = regexp.MustCompile(`%[0-9A-F]{2}`)

func lowerEscapes(s string) string { return escapeRE.ReplaceAllStringFunc(s, strings.ToLower) }

func everyByte(s, format string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, format, s[i])
	}
	return b.String()
}

// everyRune spells each rune of s in format; utf16 spells a rune past
// U+FFFF as a surrogate pair, as JSON does.
func everyRune(s, format string, utf16 bool) string {
	var b strings.Builder
	for _, r := range s {
		if utf16 && r > 0xffff {
			r -= 0x10000
			fmt.Fprintf(&b, format+format, 0xd800+r>>10, 0xdc00+r&0x3ff)
			continue
		}
		fmt.Fprintf(&b, format, r)
	}
	return b.String()
}

// Each spelling of a secret is replaced whole by [REDACTED], and the text
// around it stays.
func TestScrubStringSpellings(t *testing.T) {
	for _, secret := range []string{
		"k3y+With/Slash=Eq==",
		`a&b<c>d'e"f\g h%41i`,
		"ünïcödé-kéy-😀-0123456789",
	} {
		for name, spell := range spellings {
			s := spell(secret)
			for _, text := range []string{s, "before " + s + " after", `{"m":"` + s + `"}`} {
				want := strings.Replace(text, s, redacted, 1)
				assert.Equal(t, want, scrubString(text, []string{secret}), "%s of %q", name, secret)
				assert.Equal(t, want, string(scrubKey([]byte(text), []string{secret})), "%s of %q", name, secret)
			}
		}
	}
	// Text without a secret is left as it is, escapes and all, and not copied.
	for _, text := range []string{"", "plain", "100% &amp; \\u0041 %zz &#xZZ; &#99999999; \\ud800", "%2B&#43;\\u002b"} {
		assert.Equal(t, text, scrubString(text, []string{"s3cr3t-key-value"}))
		data := []byte(text)
		if out := scrubKey(data, []string{"s3cr3t-key-value"}); len(data) > 0 && !strings.ContainsAny(text, "%\\&") {
			assert.Same(t, &data[0], &out[0], "copied")
		}
	}
	// Copies of two secrets that overlap go as one, in any order.
	for _, secrets := range [][]string{{"0123456789", "456789abcdef"}, {"456789abcdef", "0123456789"}} {
		assert.Equal(t, "<[REDACTED]>", scrubString("<0123456789abcdef>", secrets))
		assert.Equal(t, "<[REDACTED]>", scrubString("<0123%34%35%36789abcdef>", secrets))
	}
	assert.Equal(t, "q=[REDACTED]&x", scrubString("q=my+pass+phrase&x", []string{"my pass phrase"}), "a space as '+'")
}

// A text without a secret, the common error reply, costs no more for
// searching twice-encoded copies: nothing is copied when it holds no
// escape (a "100%" or a "Q&A" is none), one unescaped copy per encoding
// whose escapes it holds, and a second one only when undoing an escape
// made a real escape of another (here "\u0026" makes "&b=2", none).
func TestScrubTextWithoutASecretCost(t *testing.T) {
	secrets := []string{"s3cr3t-key-value", "an0ther-s3cr3t"}
	for _, c := range []struct {
		text   string
		allocs float64
	}{
		{`{"error":{"code":"BadArgument","message":"Input is not a number."}}`, 0},
		{`{"error":{"code":"BadArgument","message":"100% full; see the Q&A"}}`, 0},
		{`{"error":{"message":"column \"age\": see https://x/?a=1\u0026b=2"}}`, 3}, // the text, its bytes, from
		{`<a href="/x?a=1&amp;b=2">100%</a>`, 3},
	} {
		assert.Equal(t, c.text, scrubString(c.text, secrets))
		assert.Equal(t, c.allocs, testing.AllocsPerRun(100, func() { scrubString(c.text, secrets) }), c.text)
	}
}

// A server that echoes the key it was sent, encoded, gets it into no
// error: a gateway's page that percent-encodes it, once or twice, an error
// body that JSON-escapes it, an HTML page that spells it in entities or
// carries it JSON-escaped in a percent-encoded query.
func TestEncodedKeyScrubbedFromReplies(t *testing.T) {
	const key = "Ab+Cd/Ef=Gh+Ij/Kl==" // base64, as the service's keys are
	var hidden []string
	for _, spell := range spellings {
		hidden = append(hidden, spell(key))
	}
	bearer := func(r *http.Request) string { return strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ") }
	replies := map[string]func(w http.ResponseWriter, r *http.Request){
		"page": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<html>no backend for /x?key=%s</html>", url.QueryEscape(bearer(r)))
		},
		"json": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"error":{"code":"Unauthorized","message":"key %s refused"}}`, everyRune(bearer(r), `\u%04x`, true))
		},
		"2xx": func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "<html>%s</html>", template.HTMLEscapeString(bearer(r)))
		},
		"proxy": func(w http.ResponseWriter, r *http.Request) {
			// A proxy that percent-encodes the URL it was given, encoded already.
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<html>no route for %s</html>", url.QueryEscape("/x?key="+url.QueryEscape(bearer(r))))
		},
		"json in query": func(w http.ResponseWriter, r *http.Request) {
			// A page that carries the backend's JSON error in a link's query.
			w.WriteHeader(http.StatusBadGateway)
			js := `{"message":"key ` + everyRune(bearer(r), `\u%04x`, true) + ` refused"}`
			fmt.Fprintf(w, `<html><a href="/report?error=%s">report</a></html>`, url.QueryEscape(js))
		},
	}
	for name, reply := range replies {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reply(w, r)
		}))
		t.Cleanup(srv.Close)
		o := newObserved(t, []Endpoint{{Name: name, URL: srv.URL + "/x", APIKey: key}}, WithoutRetries())
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), redacted, name)
		assertNoSecret(t, o, map[string]any{"error": err}, hidden)
	}
}

// FuzzScrubString: a secret spelled in any of spellings, amid any text, is
// gone from the scrubbed text, as it is and once its escapes are undone;
// text the secret is not in is left as it is. A spelling other than the
// raw one is set off by spaces: an escape the text before it begins
// ("\\" before "\u0041") would make it mean something else.
func FuzzScrubString(f *testing.F) {
	f.Add("before ", "k3y+With/Slash=Eq==", " after", uint8(0))
	f.Add("%4", "1bc", "&#", uint8(3))
	f.Add(`\`, `"quoted"`, `\u00`, uint8(8))
	f.Add("&amp", "ünïcödé-😀", ";", uint8(11))
	f.Add("x", "h%41i&#43;\\u002b", "y", uint8(5))
	f.Add("0", "&#0;\\b", "0", uint8(9))
	names := slices.Sorted(maps.Keys(spellings))
	f.Fuzz(func(t *testing.T, before, secret, after string, which uint8) {
		if secret == "" || !utf8.ValidString(secret) || strings.IndexFunc(secret, isControl) >= 0 ||
			strings.ContainsAny(secret, "[]") || strings.Contains(redacted, secret) {
			// JSON cannot spell invalid UTF-8, nor html/template a NUL, and
			// no key, token or header value has a control character;
			// [REDACTED] may complete a secret it overlaps.
			return
		}
		name := names[int(which)%len(names)]
		spelled := spellings[name](secret)
		text := before + spelled + after
		if name != "raw" {
			text = before + " " + spelled + " " + after
		}
		out := scrubString(text, []string{secret})
		require.NotContains(t, out, secret, "%s: %q", name, text)
		require.NotContains(t, out, spelled, "%s: %q", name, text)
		nul := strings.Contains(before, "\x00")
		for _, enc := range []byte("%\\&") {
			undone, _, _ := unescape(out, enc)
			require.NotContains(t, undone, secret, "%s: %q, %c undone", name, text, enc)
			plain, _, _ := unescape(before, enc)
			nul = nul || strings.Contains(plain, "\x00")
			for _, inner := range []byte("%\\&") {
				twice, _, _ := unescape(plain, inner)
				nul = nul || strings.Contains(twice, "\x00")
			}
		}
		if !nul {
			require.Equal(t, before, scrubString(before, []string{"\x00" + secret}), "a text without the secret changed")
		}
	})
}

// A field secret, the short value of a header whose name says it carries
// a credential, is replaced where a text shows it as that header's value,
// the name in any case (and as CGI spells it, with '_'), in each spelling
// scrubString undoes; every other copy of it stays. A secret that only looks like a field secret is still
// replaced wherever it is.
func TestScrubStringFieldSecret(t *testing.T) {
	secrets := []string{fieldSecret("X-Auth-Mode", "1"), fieldSecret("Api-Key", "k y+/"), fieldSecret("Token", "1", "12", "2")}
	for text, want := range map[string]string{
		"1 of 1 failed":                                "1 of 1 failed",
		"X-Auth-Mode: 1; 1 try":                        "X-Auth-Mode: [REDACTED]; 1 try",
		"x-auth-mode=1&n=1":                            "x-auth-mode=[REDACTED]&n=1",
		`{"X-Auth-Mode":"1","n":1}`:                    `{"X-Auth-Mode":"[REDACTED]","n":1}`,
		`{\"x-auth-mode\": \"1\"}`:                     `{\"x-auth-mode\": \"[REDACTED]\"}`,
		"{'X-Auth-Mode': ['1']}":                       "{'X-Auth-Mode': ['[REDACTED]']}",
		"map[X-Auth-Mode:[1]] 1":                       "map[X-Auth-Mode:[[REDACTED]]] 1",
		"/x?x-auth-mode%3D1%26n%3D1":                   "/x?x-auth-mode%3D[REDACTED]%26n%3D1",
		"X-Auth-Mode 1, X-Auth-Mode-1":                 "X-Auth-Mode 1, X-Auth-Mode-1",
		"Api-Key: k y+/ k y+/":                         "Api-Key: [REDACTED] k y+/",
		"/x?api-key=k+y%2B%2F":                         "/x?api-key=[REDACTED]",
		`{"Api-Key":"k y+\/"}`:                         `{"Api-Key":"[REDACTED]"}`,
		"/x?q=%7B%22Api-Key%22%3A%22k%20y%2B%2F%22%7D": "/x?q=%7B%22Api-Key%22%3A%22[REDACTED]%22%7D",
		// As CGI, PHP, Ruby, Go's %#v and a padded table show a header.
		"HTTP_X_AUTH_MODE=1; X_AUTH-MODE: 1 1":             "HTTP_X_AUTH_MODE=[REDACTED]; X_AUTH-MODE: [REDACTED] 1",
		"[X-Auth-Mode] => 1, \"x-auth-mode\" => \"1\" 1":   "[X-Auth-Mode] => [REDACTED], \"x-auth-mode\" => \"[REDACTED]\" 1",
		`http.Header{"Token":[]string{"2", "1"}} 1`:        `http.Header{"Token":[]string{"[REDACTED]", "[REDACTED]"}} 1`,
		"X-Auth-Mode:          1\nX-Auth-Mode-2:        1": "X-Auth-Mode:          [REDACTED]\nX-Auth-Mode-2:        1",
		// A header's values in a list, each once, the longest first.
		"map[Token:[2 12 1] 2 1]": "map[Token:[[REDACTED] [REDACTED] [REDACTED]] 2 1]",
		`{"token": ["12", "2"]}`:  `{"token": ["[REDACTED]", "[REDACTED]"]}`,
		"Token: 1,12,2 1":         "Token: [REDACTED],[REDACTED],[REDACTED] 1",
		"Token=2; Token=1 1":      "Token=[REDACTED]; Token=[REDACTED] 1",
		"Token: 2 12 3 1":         "Token: [REDACTED] [REDACTED] 3 1",
	} {
		assert.Equal(t, want, scrubString(text, secrets), text)
		assert.Equal(t, want, string(scrubKey([]byte(text), secrets)), text)
	}
	odd := fieldSecret("sig", "x") // a query's value, decoded, that looks like one
	assert.Equal(t, "a [REDACTED] b, sig=[REDACTED]", scrubString("a "+odd+" b, sig=x", []string{odd}))
}

// headerSecrets: the whole value of a header whose name says it carries a
// credential is searched for everywhere from 8 characters on, and is a
// field secret below, with the header's other values, as a list of them
// shows them; another header's value only from 16 characters on.
func TestHeaderSecretsShortCredentialValues(t *testing.T) {
	got := headerSecrets(http.Header{
		"X-Auth-Mode":      {"1"},
		"Api-Key":          {"k3y-abcd"},
		"X-Functions-Key":  {" fn-0 "},
		"X-Tenant":         {"tenant-7"},
		"Token":            {"t1", "t0k-abcd", " "},
		"X-Correlation-Id": {"0123456789abcdef"},
	})
	assert.ElementsMatch(t, []string{"0123456789abcdef", "k3y-abcd", "t0k-abcd", fieldSecret("Token", "t1", "t0k-abcd"),
		fieldSecret("X-Auth-Mode", "1"), fieldSecret("X-Functions-Key", "fn-0")}, got)
}

// scrubKey finds a secret with a space where a query spells it with '+'
// for the space and no escape at all, as scrubString does: its quick
// check for a copy must look for that form too, or the reply is let
// through as it is.
func TestScrubKeyFindsPlusForSpace(t *testing.T) {
	secrets := []string{"sk ab cd ef gh ij", fieldSecret("Api-Key", "ab cd")}
	for text, want := range map[string]string{
		"/x?q=sk+ab+cd+ef+gh+ij": "/x?q=[REDACTED]",
		"/x?api-key=ab+cd&n=1":   "/x?api-key=[REDACTED]&n=1",
	} {
		assert.Equal(t, want, scrubString(text, secrets), text)
		assert.Equal(t, want, string(scrubKey([]byte(text), secrets)), text)
	}
}
