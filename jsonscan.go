package amlpool

import (
	"encoding/json"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// This file is the fast path of the codec of rrs.go: a strict JSON scanner
// for the replies batch scoring reads most (a classic RRS table), which
// builds the same values encoding/json builds without its reflection. It
// takes only what it is sure of: a body it is not sure of (broken JSON, a
// key that matches a field only in another case, a key given twice, invalid
// UTF-8, a lone surrogate escape, very deep nesting, a value of an
// unexpected type) is declined, and the caller then decodes it with
// encoding/json as before, which also words any error. So what the fast
// path accepts decodes to exactly what encoding/json would make of it
// (FuzzDecodeResponseFast), and whatever it declines keeps encoding/json's
// behaviour and messages. An online endpoint's MLflow predictions
// (mlflow.go) have no fast path: encoding/json decodes them.

// scanner reads one JSON text.
type scanner struct {
	b []byte
	s string // b as a string: a string value without escapes is a substring of it
	i int    // offset of the next byte
	// slab holds the cells of a table's rows, which are slices of it: one
	// allocation for many rows instead of one per row.
	slab []any
	prev []any // the row read last
	// want, when over 0, is how many rows a table is expected to hold
	// (a batch knows how many it sent), and left how many of them are
	// still to come: the table and its slab are sized for them.
	want, left int
}

func newScanner(b []byte) *scanner {
	return &scanner{b: b, s: string(b)}
}

// newScannerOwned is newScanner for a body that is never changed after: its
// strings share its bytes instead of a copy.
func newScannerOwned(b []byte) *scanner {
	return &scanner{b: b, s: unsafe.String(unsafe.SliceData(b), len(b))}
}

// maxScanDepth bounds the nesting the fast path follows; deeper values are
// declined (encoding/json takes up to 10,000 levels).
const maxScanDepth = 100

// ws skips white space and returns the next byte, or 0 at the end (or at a
// NUL byte, which no JSON value starts with).
func (s *scanner) ws() byte {
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return c
		}
	}
	return 0
}

// end reports whether only white space is left. It checks the offset, not
// ws's 0, which a NUL byte gives too.
func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// consume skips white space and then c, reporting whether c was there.
func (s *scanner) consume(c byte) bool {
	if s.ws() == c {
		s.i++
		return true
	}
	return false
}

// object calls f for each member of the object at the scanner, with the key
// as written (without escapes: a key with an escape declines) and the
// scanner at the value, which f must read. It reports whether the object
// was well formed and f accepted every member.
func (s *scanner) object(f func(key string) bool) bool {
	if !s.consume('{') {
		return false
	}
	if s.consume('}') {
		return true
	}
	for {
		if s.ws() != '"' {
			return false
		}
		key, ok := s.plainString()
		if !ok || !s.consume(':') || !f(key) {
			return false
		}
		switch s.ws() {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

// array calls f for each element of the array at the scanner, with the
// scanner at the element, which f must read.
func (s *scanner) array(f func() bool) bool {
	if !s.consume('[') {
		return false
	}
	if s.consume(']') {
		return true
	}
	for {
		s.ws()
		if !f() {
			return false
		}
		switch s.ws() {
		case ',':
			s.i++
		case ']':
			s.i++
			return true
		default:
			return false
		}
	}
}

// plainString reads a string that has no escapes, as a substring.
func (s *scanner) plainString() (string, bool) {
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			return s.s[start:j], true
		case c == '\\', c < 0x20, c >= utf8.RuneSelf:
			return "", false
		}
	}
	return "", false
}

// str reads the string at the scanner. Without escapes or non-ASCII bytes
// it is a substring of the body; otherwise it is built, and declined when
// it holds invalid UTF-8 or a lone surrogate (encoding/json replaces those
// with U+FFFD; the slow path does that).
func (s *scanner) str() (string, bool) {
	if v, ok := s.plainString(); ok {
		return v, true
	}
	start := s.i + 1
	j := start
	var buf []byte
	for j < len(s.b) {
		c := s.b[j]
		switch {
		case c == '"':
			s.i = j + 1
			if buf == nil {
				return s.s[start:j], true // valid non-ASCII UTF-8, no escapes
			}
			return string(buf), true
		case c < 0x20:
			return "", false
		case c < utf8.RuneSelf && c != '\\':
			if buf != nil {
				buf = append(buf, c)
			}
			j++
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRune(s.b[j:])
			if r == utf8.RuneError && n == 1 {
				return "", false
			}
			if buf != nil {
				buf = append(buf, s.b[j:j+n]...)
			}
			j += n
		default: // a backslash
			if buf == nil {
				buf = append(make([]byte, 0, len(s.b)-start), s.b[start:j]...)
			}
			if j+1 >= len(s.b) {
				return "", false
			}
			switch e := s.b[j+1]; e {
			case '"', '\\', '/':
				buf = append(buf, e)
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				r, ok := hex4(s.b[j+2:])
				if !ok {
					return "", false
				}
				if utf16.IsSurrogate(r) {
					if len(s.b) < j+12 || s.b[j+6] != '\\' || s.b[j+7] != 'u' {
						return "", false
					}
					r2, ok := hex4(s.b[j+8:])
					if !ok {
						return "", false
					}
					if r = utf16.DecodeRune(r, r2); r == utf8.RuneError {
						return "", false
					}
					j += 6
				}
				buf = utf8.AppendRune(buf, r)
				j += 4
			default:
				return "", false
			}
			j += 2
		}
	}
	return "", false
}

// hex4 reads the four hex digits of a \u escape.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number reads a number as JSON (RFC 8259) writes it, as a json.Number.
func (s *scanner) number() (json.Number, bool) {
	b, start := s.s, s.i
	j := start
	if j < len(b) && b[j] == '-' {
		j++
	}
	switch {
	case j < len(b) && b[j] == '0':
		j++
	case j < len(b) && '1' <= b[j] && b[j] <= '9':
		for j < len(b) && '0' <= b[j] && b[j] <= '9' {
			j++
		}
	default:
		return "", false
	}
	if j < len(b) && b[j] == '.' {
		j++
		if j >= len(b) || b[j] < '0' || b[j] > '9' {
			return "", false
		}
		for j < len(b) && '0' <= b[j] && b[j] <= '9' {
			j++
		}
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			j++
		}
		if j >= len(b) || b[j] < '0' || b[j] > '9' {
			return "", false
		}
		for j < len(b) && '0' <= b[j] && b[j] <= '9' {
			j++
		}
	}
	s.i = j
	return json.Number(b[start:j]), true
}

// literal reads true, false or null.
func (s *scanner) literal(word string) bool {
	if len(s.b)-s.i >= len(word) && s.s[s.i:s.i+len(word)] == word {
		s.i += len(word)
		return true
	}
	return false
}

// value reads any JSON value at the scanner as encoding/json decodes it
// into an any with UseNumber: string, json.Number, bool, nil, []any or
// map[string]any.
func (s *scanner) value(depth int) (any, bool) {
	switch s.ws() {
	case '"':
		return s.str()
	case 't':
		return true, s.literal("true")
	case 'f':
		return false, s.literal("false")
	case 'n':
		return nil, s.literal("null")
	case '[':
		if depth >= maxScanDepth {
			return nil, false
		}
		a := []any{}
		ok := s.array(func() bool {
			v, ok := s.value(depth + 1)
			a = append(a, v)
			return ok
		})
		return a, ok
	case '{':
		if depth >= maxScanDepth {
			return nil, false
		}
		return s.record(depth + 1)
	}
	return s.number()
}

// record reads an object as a map[string]any. A key given twice, or one
// with an escape, declines.
func (s *scanner) record(depth int) (map[string]any, bool) {
	m := map[string]any{}
	ok := s.object(func(key string) bool {
		if _, dup := m[key]; dup {
			return false
		}
		v, ok := s.value(depth)
		m[key] = v
		return ok
	})
	return m, ok
}

// skip reads a value and drops it: an unknown field's. It builds nothing
// but the strings with escapes.
func (s *scanner) skip(depth int) bool {
	switch s.ws() {
	case '"':
		_, ok := s.str()
		return ok
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	case '[':
		return depth < maxScanDepth && s.array(func() bool { return s.skip(depth + 1) })
	case '{':
		return depth < maxScanDepth && s.object(func(string) bool { return s.skip(depth + 1) })
	}
	_, ok := s.number()
	return ok
}

// field reports whether key is name, and declines (ok false) a key that
// encoding/json would take for name though it is written otherwise (in
// another case, say): the slow path decodes those.
func field(key, name string) (match, ok bool) {
	if key == name {
		return true, true
	}
	return false, !foldsTo(key, name)
}

// foldsTo reports whether key could match the field name in encoding/json's
// case-insensitive matching, taken broadly: ignoring case, and dashes and
// underscores too.
func foldsTo(key, name string) bool {
	if len(key) < len(name) {
		return false
	}
	j := 0
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c == '-' || c == '_' {
			continue
		}
		if j >= len(name) || lower(c) != lower(name[j]) {
			return false
		}
		j++
	}
	return j == len(name)
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// strings reads an array of strings, or null as nil.
func (s *scanner) strings() ([]string, bool) {
	if s.ws() == 'n' {
		return nil, s.literal("null")
	}
	out := []string{}
	ok := s.array(func() bool {
		if s.ws() != '"' {
			return false
		}
		v, ok := s.str()
		out = append(out, v)
		return ok
	})
	return out, ok
}

// row reads an array of cells, or null as a nil row. Its cells go in the
// slab, and the row is a slice of it that cannot grow into the next row.
func (s *scanner) row() ([]any, bool) {
	if s.ws() == 'n' {
		return nil, s.literal("null")
	}
	if s.slab == nil || cap(s.slab)-len(s.slab) < 8 {
		size := max(256, 2*cap(s.slab))
		switch {
		case s.left > 0 && len(s.prev) > 0:
			size = s.left*len(s.prev) + 8 // the rows to come, as wide as the last
		case s.left > 0:
			size = 16 // the first row says how wide the others are
		}
		s.slab = make([]any, 0, size)
	}
	start := len(s.slab)
	ok := s.array(func() bool {
		v, ok := s.cell(len(s.slab) - start)
		s.slab = append(s.slab, v)
		return ok
	})
	if !ok {
		return nil, false
	}
	n := len(s.slab)
	s.prev = s.slab[start:n:n]
	return s.prev, true
}

// cell reads the cell in column k of a row. A string or number equal to
// the one in the same column of the row before shares its boxed value
// (values in an any are immutable): a model's labels repeat, and each new
// box is an allocation.
func (s *scanner) cell(k int) (any, bool) {
	var p any
	if k < len(s.prev) {
		p = s.prev[k]
	}
	switch c := s.ws(); {
	case c == '"':
		v, ok := s.str()
		if pv, same := p.(string); same && pv == v {
			return p, ok
		}
		return v, ok
	case c == '-' || '0' <= c && c <= '9':
		v, ok := s.number()
		if pv, same := p.(json.Number); same && pv == v {
			return p, ok
		}
		return v, ok
	}
	return s.value(1)
}

// scanResults is the fast path of decodeResults: it decodes a classic
// reply, or declines it (ok false). It does not check the tables' shapes.
func scanResults(body []byte) (resp *Response, ok bool) {
	return scanResultsWith(newScanner(body))
}

// scanResultsWith is scanResults with a scanner set up by the caller.
func scanResultsWith(s *scanner) (resp *Response, ok bool) {
	ok = s.object(func(key string) bool {
		match, ok := field(key, "Results")
		switch {
		case !ok:
			return false
		case !match:
			return s.skip(0)
		case resp != nil || s.ws() != '{': // given twice, or null: the slow path
			return false
		}
		resp = &Response{Results: map[string]*Output{}}
		return s.object(func(name string) bool {
			if _, dup := resp.Results[name]; dup {
				return false
			}
			out, ok := s.output()
			resp.Results[name] = out
			return ok
		})
	})
	if !ok || resp == nil || !s.end() {
		return nil, false
	}
	return resp, true
}

// output reads one output port: null, a bare array of row objects, or
// {"type": …, "value": table}.
func (s *scanner) output() (*Output, bool) {
	switch s.ws() {
	case 'n':
		return nil, s.literal("null")
	case '[':
		out := new(Output)
		return out, s.table(&out.Value)
	case '{':
	default:
		return nil, false
	}
	out := new(Output)
	var typed, valued bool
	ok := s.object(func(key string) bool {
		if m, ok := field(key, "type"); !ok {
			return false
		} else if m {
			if typed || s.ws() != '"' {
				return false
			}
			typed = true
			var ok bool
			out.Type, ok = s.str()
			return ok
		}
		if m, ok := field(key, "value"); !ok {
			return false
		} else if m {
			if valued {
				return false
			}
			valued = true
			return s.table(&out.Value)
		}
		return s.skip(0)
	})
	return out, ok
}

// table reads a table in either form into t; null leaves t as it is.
func (s *scanner) table(t *Table) bool {
	switch s.ws() {
	case 'n':
		return s.literal("null")
	case '[':
		rows := []map[string]any{}
		ok := s.array(func() bool {
			switch s.ws() {
			case 'n':
				rows = append(rows, nil)
				return s.literal("null")
			case '{':
				m, ok := s.record(1)
				rows = append(rows, m)
				return ok
			}
			return false
		})
		*t = Table{Rows: rows}
		return ok
	case '{':
	default:
		return false
	}
	var c Table
	var names, types, values bool
	ok := s.object(func(key string) bool {
		var seen *bool
		var read func() bool
		for _, f := range [...]struct {
			name string
			seen *bool
			read func() bool
		}{
			{"ColumnNames", &names, func() (ok bool) { c.ColumnNames, ok = s.strings(); return ok }},
			{"ColumnTypes", &types, func() (ok bool) { c.ColumnTypes, ok = s.strings(); return ok }},
			{"Values", &values, func() (ok bool) { c.Values, ok = s.rows(); return ok }},
		} {
			m, ok := field(key, f.name)
			if !ok {
				return false
			}
			if m {
				seen, read = f.seen, f.read
			}
		}
		if seen == nil {
			return s.skip(0)
		}
		if *seen {
			return false
		}
		*seen = true
		return read()
	})
	*t = c
	return ok
}

// rows reads a classic table's Values, or null as nil.
func (s *scanner) rows() ([][]any, bool) {
	if s.ws() == 'n' {
		return nil, s.literal("null")
	}
	n := s.want
	if n <= 0 {
		n = 64
	}
	vals := make([][]any, 0, n)
	s.left = s.want
	ok := s.array(func() bool {
		r, ok := s.row()
		vals = append(vals, r)
		s.left--
		return ok
	})
	return vals, ok
}
