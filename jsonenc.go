package amlpool

import (
	"encoding/json"
	"math"
	"strconv"
	"sync/atomic"
	"unicode/utf8"
)

// This file is the fast path of batch scoring's request encoding: it writes
// the rows of a chunk straight into the body, between a head and a tail
// encoded once per batch, instead of marshalling a Request through
// encoding/json (which reflects on every cell and re-reads what
// Table.MarshalJSON returns). The bytes are those encodeRequest and
// encodeOnline write (FuzzEncodeChunkFast): a cell of a type it does not
// know, or one it cannot be sure to write as encoding/json does, is encoded
// by encoding/json alone, and a chunk that would fail there (a row of the
// wrong width, a NaN) is encoded by the slow path, which words the error.

// chunkEncoder writes the request bodies of one batch.
type chunkEncoder struct {
	online     bool
	input      string
	cols       []string
	global     map[string]any
	head, tail []byte       // the body around the rows; nil: always the slow path
	size       atomic.Int64 // the length of the last body, to size the next
}

func newChunkEncoder(online bool, input string, cols []string, global map[string]any) *chunkEncoder {
	e := &chunkEncoder{online: online, input: input, cols: cols, global: global}
	names, err := marshalNoEscape(cols)
	if err != nil || cols == nil {
		return e
	}
	if online {
		e.head = append(append([]byte(`{"input_data":{"columns":`), names...), `,"index":[`...)
		e.tail = []byte(`]}}`)
		return e
	}
	port, err := marshalNoEscape(input)
	if err != nil {
		return e
	}
	if global == nil {
		global = map[string]any{}
	}
	gp, err := marshalNoEscape(global)
	if err != nil {
		return e
	}
	e.head = append(append(append(append([]byte(`{"Inputs":{`), port...), `:{"ColumnNames":`...), names...), `,"Values":[`...)
	e.tail = append(append([]byte(`]}},"GlobalParameters":`), gp...), '}')
	return e
}

// encode returns the request of rows, from input index start on.
func (e *chunkEncoder) encode(start int, rows [][]any) ([]byte, error) {
	if b, ok := e.fast(start, rows); ok {
		return b, nil
	}
	if e.online {
		return encodeOnline(e.cols, start, rows)
	}
	return encodeRequest(&Request{
		Inputs:           map[string]*Table{e.input: {ColumnNames: e.cols, Values: rows}},
		GlobalParameters: e.global,
	})
}

// fast is encode's fast path; ok is false for a chunk it leaves to the
// slow path.
func (e *chunkEncoder) fast(start int, rows [][]any) (b []byte, ok bool) {
	if e.head == nil || rows == nil {
		return nil, false
	}
	b = make([]byte, 0, e.size.Load()+512)
	b = append(b, e.head...)
	if e.online {
		for i := range rows {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(start+i), 10)
		}
		b = append(b, `],"data":[`...)
	}
	for i, row := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		if row == nil {
			if !e.online {
				return nil, false // a nil row has no cell per column name: the slow path fails it
			}
			b = append(b, "null"...)
			continue
		}
		if !e.online && len(row) != len(e.cols) {
			return nil, false
		}
		b = append(b, '[')
		for j, v := range row {
			if j > 0 {
				b = append(b, ',')
			}
			if b, ok = appendCell(b, v); !ok {
				return nil, false
			}
		}
		b = append(b, ']')
	}
	b = append(b, e.tail...)
	e.size.Store(int64(len(b)))
	return b, true
}

// appendCell appends a cell as encoding/json (without HTML escaping)
// writes it, or reports that it could not.
func appendCell(b []byte, v any) ([]byte, bool) {
	switch v := v.(type) {
	case string:
		return appendString(b, v), true
	case nil:
		return append(b, "null"...), true
	case json.Number:
		if v == "" || !isNumber(v) {
			break // "" is 0, anything else not a number an error: encoding/json knows
		}
		return append(b, v...), true
	case bool:
		return strconv.AppendBool(b, v), true
	case int:
		return strconv.AppendInt(b, int64(v), 10), true
	case int64:
		return strconv.AppendInt(b, v, 10), true
	case int32:
		return strconv.AppendInt(b, int64(v), 10), true
	case float64:
		return appendFloat(b, v)
	}
	cell, err := marshalNoEscape(v)
	if err != nil {
		return nil, false
	}
	return append(b, cell...), true
}

// badByte is how encoding/json writes a byte of invalid UTF-8 in a string:
// U+FFFD, escaped as \ufffd by some Go releases and as it is by others.
var badByte = func() string {
	b, err := marshalNoEscape("\xff")
	if err != nil || len(b) < 2 {
		return `\ufffd`
	}
	return string(b[1 : len(b)-1])
}()

// appendString appends s quoted, as encoding/json does without HTML
// escaping: \" and \\ for quote and backslash, \b \f \n \r \t, \u00XX for
// other control characters, \u2028 and \u2029, and for each byte of
// invalid UTF-8 the replacement character as encoding/json writes it
// (badByte).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = append(b, s[start:i]...)
			b = append(b, badByte...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += n
			continue
		}
		i += n
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendFloat appends f as encoding/json writes a float64: the shortest
// text that reads back the same, in exponent form below 1e-6 and from 1e21
// on. NaN and infinities are an error there: not ok.
func appendFloat(b []byte, f float64) ([]byte, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, false
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 to e-9, as encoding/json writes it.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, true
}

// isNumber reports whether s is a number as JSON writes it.
func isNumber(s json.Number) bool {
	sc := scanner{s: string(s)} // number reads only s
	_, ok := sc.number()
	return ok && sc.i == len(s)
}
