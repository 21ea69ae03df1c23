package amlpool

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"
)

// This file keeps secrets (keys, tokens, the secret values of an
// endpoint's URL and headers) out of the replies and transport errors an
// error quotes. A server, a gateway or a proxy may echo what it was sent,
// and not always as it was sent: a gateway's page may show the URL
// percent-encoded ("%2B" for a key's '+'), a JSON body may escape it
// ("\u002b", "\/", encoding/json's HTML-safe "\u003c"), an HTML page may
// spell it in entities ("&#43;", "&amp;"). So a text is searched for each
// secret as it is and, for each of the three encodings whose escapes it
// holds ('%', '\\' or '&'), once more with those escapes undone
// (unescape), each match being replaced, escapes and all, by [REDACTED].
// Each encoding is undone alone: a text is one encoding's (a URL, a JSON
// body, an HTML page), and a secret may hold what reads as another's
// escape ("%2B" in a SAS), which its echo keeps as it is. Only the replies
// and errors an error quotes are searched: a call that succeeds pays
// nothing.
//
// A text encoded twice is searched with both encodings undone, the outer
// first, when undoing the outer one gave an escape character of the inner
// one ('%' from "%25", '\\' from "%5C", '&' from "\u0026"): a proxy that
// percent-encodes a URL encoded already ("%252B"), a link or a form that
// carries a JSON body percent-encoded ("%5Cu002b"), a JSON body that
// quotes an HTML page with encoding/json's HTML-safe escapes
// ("\u0026#43;"), an HTML page escaped twice ("&amp;#43;"). Each is one
// encoder applied to another's output, as servers and proxies do. Mixed
// text, whose inner escapes are there as they are rather than made by the
// outer encoding, is not undone twice: every error body with a "\n" and a
// "%20" would pay for it, and an echo needs it only when two encoders
// escape different bytes of one secret in one text. Nor are three
// encodings undone, which nothing plausible produces. So a text whose
// escapes give no escape character, the common error reply, pays a byte
// comparison per escape for this and nothing more; and a '%' or '&' that
// begins no escape ("100%", "Q&A") costs no copy of the text at all.
// A secret spelled in a form none of these encoders produces is not found.

// scrubKey replaces every copy of each secret in a reply with [REDACTED]
// (scrubString), so that a server or proxy echoing the request's headers
// cannot put a key into an error. It copies data only when a secret may be
// there.
func scrubKey(data []byte, secrets []string) []byte {
	if !bytes.ContainsAny(data, "%\\&") && !slices.ContainsFunc(secrets, func(s string) bool {
		if _, values, ok := splitFieldSecret(s); ok {
			for v := range strings.SplitSeq(values, fieldMark) {
				if bytes.Contains(data, []byte(v)) || strings.Contains(v, " ") &&
					bytes.Contains(data, []byte(strings.ReplaceAll(v, " ", "+"))) {
					return true
				}
			}
		}
		// As appendMatches looks for it: also with '+' for each space, as
		// a query spells it with no escape at all ("api-key=ab+cd").
		return s != "" && (bytes.Contains(data, []byte(s)) ||
			strings.Contains(s, " ") && bytes.Contains(data, []byte(strings.ReplaceAll(s, " ", "+"))))
	}) {
		return data
	}
	return []byte(scrubString(string(data), secrets))
}

// scrubString returns s with every copy of each secret replaced by
// [REDACTED]: as it is, and as percent-encoding (in either case), JSON or
// HTML escaping spell it, whole or in part, once or twice over. A secret with a space is also
// found with '+' for it, as a query encodes it. A field secret
// (fieldSecret) is replaced only where s shows it as its header's value.
// The order of secrets does not matter: copies that overlap are replaced
// as one.
func scrubString(s string, secrets []string) string {
	var spans []span
	for _, secret := range secrets {
		spans = appendMatches(spans, s, secret, nil)
	}
	for _, enc := range encodings {
		if strings.IndexByte(s, enc) < 0 {
			continue
		}
		text, from, made := unescape(s, enc)
		if from == nil {
			continue
		}
		for _, secret := range secrets {
			spans = appendMatches(spans, text, secret, from)
		}
		// Encoded twice: undo the inner encoding too, its escapes mapped
		// back through the outer ones to s.
		for k, inner := range encodings {
			if made&(1<<k) == 0 {
				continue
			}
			text2, from2, _ := unescape(text, inner)
			if from2 == nil {
				continue
			}
			for i, j := range from2 {
				from2[i] = from[j]
			}
			for _, secret := range secrets {
				spans = appendMatches(spans, text2, secret, from2)
			}
		}
	}
	if len(spans) == 0 {
		return s
	}
	slices.SortFunc(spans, func(a, b span) int { return a.start - b.start })
	var b strings.Builder
	last := 0
	for i := 0; i < len(spans); {
		start, end := spans[i].start, spans[i].end
		for i++; i < len(spans) && spans[i].start <= end; i++ {
			end = max(end, spans[i].end)
		}
		b.WriteString(s[last:start])
		b.WriteString(redacted)
		last = end
	}
	b.WriteString(s[last:])
	return b.String()
}

// span is the part [start, end) of a text that holds a secret.
type span struct{ start, end int }

// appendMatches appends to spans where secret is in text, and its form
// with '+' for each space; for a field secret, also where text shows its
// value as its header's (appendFieldMatches). from is nil when text is
// the one scrubbed; otherwise text is it unescaped, and from maps text
// back (unescape).
func appendMatches(spans []span, text, secret string, from []int) []span {
	if secret == "" {
		return spans
	}
	// A field secret is searched for as it is too, like any other: the
	// text it is made of holds a NUL no text shows, and a key, a token or
	// a query's value that only looks like one loses nothing of its
	// scrubbing.
	if name, values, ok := splitFieldSecret(secret); ok {
		spans = appendFieldMatches(spans, text, name, values, from)
	}
	for k := 0; k < 2; k++ {
		if k == 1 {
			if !strings.Contains(secret, " ") {
				break
			}
			secret = strings.ReplaceAll(secret, " ", "+")
		}
		for i := 0; ; {
			j := strings.Index(text[i:], secret)
			if j < 0 {
				break
			}
			i = i + j + len(secret)
			spans = append(spans, mapSpan(i-len(secret), i, from))
		}
	}
	return spans
}

// mapSpan returns the span of the scrubbed text that gave text's bytes
// [start, end), from mapping text back to it (nil when text is it).
func mapSpan(start, end int, from []int) span {
	if from == nil {
		return span{start, end}
	}
	// From the escape that gave the first byte to the end of the one that
	// gave the last: a rune's bytes share their escape, and
	// from[len(text)] is past every escape.
	next := end
	for from[next] == from[end-1] {
		next++
	}
	return span{from[start], from[next]}
}

// A field secret is the value of a header whose name says it carries a
// credential, too short to be searched for everywhere (headerSecrets): a
// "1" or an "on" (X-Auth-Mode: 1) is in countless messages, and scrubbing
// every copy of it would cut it out of them all. It is hidden only where
// a text shows it as that header's value, as a reply or a RoundTripper's
// error that echoes the request's headers does: "X-Auth-Mode: 1",
// "x-auth-mode=1", {"X-Auth-Mode":"1"}, {'X-Auth-Mode': ['1']},
// map[X-Auth-Mode:[1]], the name in any case, and in each spelling (a
// percent-encoded query, a JSON string) scrubString undoes; and as CGI,
// PHP or Go's %#v show it (appendFieldMatches). A header with more than
// one value shows them in a list after its name (map[X-Auth-Mode:[1 2]],
// {"X-Auth-Mode":["1","2"]}, "X-Auth-Mode: 1, 2" as a server that joins
// them echoes it): each of them there is hidden too. It travels among the
// other secrets as fieldMark, the header's name, then fieldMark and a
// value for each of the header's values: a NUL is in no header's name or
// value (checkHeader), and one that only looks like a field secret is
// searched for as it is as well.
const fieldMark = "\x00"

// fieldSecret returns the field secret of values, all the values of the
// header name, none empty.
func fieldSecret(name string, values ...string) string {
	return fieldMark + name + fieldMark + strings.Join(values, fieldMark)
}

// splitFieldSecret returns the header's name and values, fieldMark
// between them, of the field secret s, or false when s is none.
func splitFieldSecret(s string) (name, values string, ok bool) {
	rest, ok := strings.CutPrefix(s, fieldMark)
	if !ok {
		return "", "", false
	}
	name, values, ok = strings.Cut(rest, fieldMark)
	return name, values, ok && name != "" && values != ""
}

// maxFieldSep bounds what appendFieldMatches takes for what separates a
// header's name from its value: a ':', '=' or "=>" and, on either side,
// up to as many spaces, tabs, quotes and brackets (`": ["`, `'] => '`,
// "X-Auth-Mode:      1" in a table whose names are padded to one width),
// and Go's "[]string{" (an http.Header printed with %#v).
const maxFieldSep = 32

// goSliceOpen is what opens a []string printed with %#v.
const goSliceOpen = "[]string{"

// appendFieldMatches appends to spans where text shows the header name's
// values (fieldMark between them) as its value: name, in any case and
// with '_' for any '-', then a ':', an '=' or a "=>" with spaces, quotes
// or brackets about it (or a %#v's goSliceOpen after it), then one of the
// values (or its form with '+' for each space), and then as many of the
// others, each once, as follow it in a list, with spaces, commas or
// quotes between them. Only the values go, the name stays. from is as for
// appendMatches.
func appendFieldMatches(spans []span, text, name, values string, from []int) []span {
	for i := 0; i+len(name) <= len(text); i++ {
		if !isFieldName(text[i:i+len(name)], name) {
			continue
		}
		k := skipBytes(text, i+len(name), " \t\"']")
		if k == len(text) || text[k] != ':' && text[k] != '=' {
			continue
		}
		if strings.HasPrefix(text[k:], "=>") {
			k++ // PHP's, Ruby's
		}
		k = skipBytes(text, k+1, " \t")
		if strings.HasPrefix(text[k:], goSliceOpen) {
			k += len(goSliceOpen)
		}
		k = skipBytes(text, k, " \t\"'[")
		var shown uint64 // the values met in this list (the first 64)
		for {
			j, n := fieldValueAt(text[k:], values, shown)
			if n == 0 {
				break
			}
			shown |= 1 << j
			spans = append(spans, mapSpan(k, k+n, from))
			k = skipBytes(text, k+n, " \t\"',")
		}
	}
	return spans
}

// fieldValueAt returns the index among values (fieldMark between them) of
// the longest one not in shown that text begins with, as it is or with
// '+' for each space, and its length; a length of 0 when none is.
func fieldValueAt(text, values string, shown uint64) (int, int) {
	best, n, j := 0, 0, 0
	for v := range strings.SplitSeq(values, fieldMark) {
		if shown&(1<<j) == 0 && len(v) > n && spelledAt(text, v) {
			best, n = j, len(v)
		}
		j++
	}
	return best, n
}

// isFieldName reports whether s is the header name name, in any case, and
// with '_' for any '-' as a CGI or WSGI server names it (HTTP_X_AUTH_MODE).
func isFieldName(s, name string) bool {
	for i := 0; i < len(name); i++ {
		if a, b := lowerASCII(s[i]), lowerASCII(name[i]); a != b && (a != '_' || b != '-') {
			return false
		}
	}
	return true
}

// lowerASCII returns c in lower case when it is an ASCII letter.
func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// spelledAt reports whether text begins with v, each of v's spaces there
// as it is or as a '+'.
func spelledAt(text, v string) bool {
	if len(text) < len(v) {
		return false
	}
	for i := 0; i < len(v); i++ {
		if text[i] != v[i] && (v[i] != ' ' || text[i] != '+') {
			return false
		}
	}
	return true
}

// skipBytes returns the offset in text of the first byte from i on that
// is not in set, or i+maxFieldSep when so many are.
func skipBytes(text string, i int, set string) int {
	for n := 0; n < maxFieldSep && i < len(text) && strings.IndexByte(set, text[i]) >= 0; n++ {
		i++
	}
	return i
}

// encodings are the bytes the escapes of each encoding scrubString undoes
// begin with: percent-encoding, JSON, HTML.
var encodings = [...]byte{'%', '\\', '&'}

// unescape returns s with the escapes of one encoding undone, enc being
// the byte they begin with: '%' for %XX (either case); '\\' for JSON's \"
// \\ \/ \b \f \n \r \t and \uXXXX (a surrogate pair as one rune); '&' for
// HTML's &#NNN; &#xHHH; and &amp; &lt; &gt; &quot; &apos; &plus; &sol;
// &equals;. from[i] is the offset in s of the escape (or byte) that gave
// text's byte i, and from[len(text)] is len(s). Bit k of made is set when
// an escape gave encodings[k], the text being then maybe encoded twice.
// It returns a nil from, and copies nothing, when s holds no such escape.
func unescape(s string, enc byte) (text string, from []int, made uint8) {
	if !hasEscape(s, enc) {
		return s, nil, 0
	}
	b := make([]byte, 0, len(s))
	from = make([]int, 0, len(s)+1)
	for i := 0; i < len(s); {
		n := 0
		if s[i] == enc {
			b, n = unescapeOne(b, s[i:])
		}
		if n > 0 {
			// An escape character is one byte, the whole of what its
			// escape gave.
			if k := bytes.IndexByte(encodings[:], b[len(b)-1]); k >= 0 {
				made |= 1 << k
			}
		} else {
			b, n = append(b, s[i]), 1
		}
		for len(from) < len(b) {
			from = append(from, i)
		}
		i += n
	}
	return string(b), append(from, len(s)), made
}

// hasEscape reports whether s holds an escape that unescape undoes, enc
// being the byte it begins with: a "100%" or a "Q&A" alone is none, and
// costs no copy of s.
func hasEscape(s string, enc byte) bool {
	var buf [utf8.UTFMax]byte // what one escape gives at most
	for i := 0; ; i++ {
		j := strings.IndexByte(s[i:], enc)
		if j < 0 {
			return false
		}
		i += j
		if _, n := unescapeOne(buf[:0], s[i:]); n > 0 {
			return true
		}
	}
}

// unescapeOne undoes the escape s begins with: it appends to b what the
// escape stands for and returns the escape's length, or 0 when s begins
// with none.
func unescapeOne(b []byte, s string) ([]byte, int) {
	if len(s) < 2 {
		return b, 0
	}
	switch s[0] {
	case '%':
		if len(s) >= 3 {
			if h, ok := hexValue(s[1:3]); ok {
				return append(b, byte(h)), 3
			}
		}
	case '\\':
		switch c := s[1]; c {
		case '"', '\\', '/':
			return append(b, c), 2
		case 'b':
			return append(b, '\b'), 2
		case 'f':
			return append(b, '\f'), 2
		case 'n':
			return append(b, '\n'), 2
		case 'r':
			return append(b, '\r'), 2
		case 't':
			return append(b, '\t'), 2
		case 'u':
			if len(s) < 6 {
				break
			}
			r, ok := hexValue(s[2:6])
			if !ok {
				break
			}
			if utf8.ValidRune(rune(r)) {
				return utf8.AppendRune(b, rune(r)), 6
			}
			// A surrogate: the first half of a pair, or nothing to undo.
			if r < 0xdc00 && len(s) >= 12 && s[6] == '\\' && s[7] == 'u' {
				if lo, ok := hexValue(s[8:12]); ok && lo >= 0xdc00 && lo < 0xe000 {
					return utf8.AppendRune(b, rune(0x10000+(r-0xd800)<<10+(lo-0xdc00))), 12
				}
			}
		}
	case '&':
		if end := strings.IndexByte(s[:min(len(s), maxEntity)], ';'); end > 0 {
			if r, ok := entityRune(s[1:end]); ok {
				return utf8.AppendRune(b, r), end + 1
			}
		}
	}
	return b, 0
}

// maxEntity bounds the length of an HTML entity unescape undoes, its ';'
// included: "&#x10FFFF;", "&#1114111;", "&equals;".
const maxEntity = 10

// entityRune returns the rune the HTML entity name (between '&' and ';')
// stands for.
func entityRune(name string) (rune, bool) {
	switch name {
	case "amp":
		return '&', true
	case "lt":
		return '<', true
	case "gt":
		return '>', true
	case "quot":
		return '"', true
	case "apos":
		return '\'', true
	case "plus":
		return '+', true
	case "sol":
		return '/', true
	case "equals":
		return '=', true
	}
	if len(name) < 2 || name[0] != '#' {
		return 0, false
	}
	var r int
	if digits := name[1:]; digits[0] == 'x' || digits[0] == 'X' {
		h, ok := hexValue(digits[1:])
		if !ok {
			return 0, false
		}
		r = h
	} else {
		for i := 0; i < len(digits); i++ {
			if digits[i] < '0' || digits[i] > '9' {
				return 0, false
			}
			r = r*10 + int(digits[i]-'0')
		}
	}
	if !utf8.ValidRune(rune(r)) {
		return 0, false
	}
	return rune(r), true
}

// hexValue returns the value of the hex digits s (1 to 6 of them). It
// parses them itself: strconv's error for a text that is no escape ("100%
// of") would cost two allocations each time, on replies that hold no
// secret.
func hexValue(s string) (int, bool) {
	if len(s) == 0 || len(s) > 6 {
		return 0, false
	}
	v := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case '0' <= c && c <= '9':
			v = v<<4 | int(c-'0')
		case 'a' <= c && c <= 'f':
			v = v<<4 | int(c-'a'+10)
		case 'A' <= c && c <= 'F':
			v = v<<4 | int(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// maxSpelled is how long a copy of the longest of secrets may be once
// escaped, twice over: an escape is at most maxEntity bytes long, for a
// byte or more, and each byte of it may be an escape as long.
func maxSpelled(secrets []string) int {
	n := 0
	for _, s := range secrets {
		if _, _, ok := splitFieldSecret(s); ok {
			// Its name and what separates it from a value (up to three
			// runs of maxFieldSep, "=>" and goSliceOpen), and the values
			// from each other, are to be in the text too.
			n = max(n, len(s)+(strings.Count(s, fieldMark)+3)*maxFieldSep+len(goSliceOpen))
		}
		n = max(n, len(s))
	}
	return n * maxEntity * maxEntity
}

// scrubError returns err as it is, or, when its text holds the URL u as
// sent or one of secrets, or an error it wraps does, a scrubbed copy
// (scrubTree) that shows u as redactedURL does and secrets as [REDACTED].
func scrubError(err error, u *url.URL, secrets []string) error {
	raw, shown := u.String(), redactedURL(u)
	return scrubTree(err, func(s string) string {
		if u.RawQuery != "" {
			s = strings.ReplaceAll(s, raw, shown)
		}
		return scrubString(s, secrets)
	})
}

// scrubTree returns err as it is when scrub leaves its text, and the text
// of every error it wraps, as they are; otherwise a copy of it whose every
// error, as errors.Unwrap, errors.Is and errors.As walk them, is scrubbed:
// an *url.Error a copy with its URL and Err scrubbed, another error that
// changed a *scrubbedError. No error the copy reaches shows what scrub
// took out, in its text or in an *url.Error's URL: a caller that prints
// each error of the chain, or the URL of the one errors.As finds, sees
// none of it. An error that wraps none that changed, and whose own text
// scrub leaves, is kept as it is, so errors.As still finds it by its type
// (a *net.OpError, a syscall.Errno) and errors.Is by its value
// (context.DeadlineExceeded).
func scrubTree(err error, scrub func(string) string) error {
	out, _ := scrubNode(err, scrub)
	return out
}

// scrubNode is scrubTree, reporting whether err changed.
func scrubNode(err error, scrub func(string) string) (error, bool) {
	if err == nil {
		return nil, false
	}
	if ue, ok := err.(*url.Error); ok {
		if ue == nil {
			return err, false
		}
		inner, changed := scrubNode(ue.Err, scrub)
		if shown := scrub(ue.URL); changed || shown != ue.URL {
			return &url.Error{Op: ue.Op, URL: shown, Err: inner}, true
		}
		return err, false
	}
	var next []error
	changed := false
	switch w := err.(type) {
	case interface{ Unwrap() error }:
		if inner := w.Unwrap(); inner != nil {
			inner, changed = scrubNode(inner, scrub)
			next = []error{inner}
		}
	case interface{ Unwrap() []error }:
		for _, inner := range w.Unwrap() {
			inner, c := scrubNode(inner, scrub)
			next, changed = append(next, inner), changed || c
		}
	}
	msg := err.Error()
	shown := scrub(msg)
	if shown == msg && !changed {
		return err, false
	}
	s := scrubbed{err: err, msg: shown}
	if _, joined := err.(interface{ Unwrap() []error }); joined {
		return &scrubbedErrors{s, next}, true
	}
	e := &scrubbedError{scrubbed: s}
	if len(next) > 0 {
		e.next = next[0]
	}
	return e, true
}

// scrubbed is what scrubTree keeps of an error it had to copy: its text,
// scrubbed, and the error itself, never shown, to answer errors.Is and
// Timeout as it would.
type scrubbed struct {
	err error
	msg string
}

func (e *scrubbed) Error() string { return e.msg }

// Is reports whether the error it copies is target, or wraps it: a
// caller holding a sentinel whose text has a secret (a Credential's own
// error, say) finds it, and learns nothing it did not hold.
func (e *scrubbed) Is(target error) bool { return errors.Is(e.err, target) }

// Timeout reports whether the error, or one it wraps, is a timeout, so
// that an *url.Error around it still says so (url.Error.Timeout asks its
// Err alone).
func (e *scrubbed) Timeout() bool {
	var t interface{ Timeout() bool }
	return errors.As(e.err, &t) && t.Timeout()
}

// Format prints Error whatever the verb.
func (e *scrubbed) Format(f fmt.State, verb rune) { formatRedacted(f, verb, e.msg, e.msg) }

// scrubbedError is scrubTree's copy of an error that wraps one error, or
// none. It holds no secret of its own.
type scrubbedError struct {
	scrubbed
	next error // what the error wraps, scrubbed
}

func (e *scrubbedError) Unwrap() error { return e.next }

// scrubbedErrors is scrubTree's copy of an error that wraps several (an
// errors.Join). It holds no secret of its own.
type scrubbedErrors struct {
	scrubbed
	next []error // what the error wraps, scrubbed
}

func (e *scrubbedErrors) Unwrap() []error { return e.next }
