package amlpool

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	"github.com/tidwall/gjson"
)

// This file decides what a reply that is not a clean scoring result comes to.
// The choices, for a 2xx reply (non-2xx replies are *APIErrors, errors.go):
//
//	empty                               Do returns it; Score fails (no Results)
//	not JSON (a proxy's HTML page, a cut or garbled body, gzip bytes
//	without Content-Encoding)           ErrMalformedResponse, retried (VerdictRetry)
//	JSON, but the service's error body  ErrMalformedResponse, retried
//	Content-Type not application/json   not checked: the body decides
//	Content-Encoding gzip, body not     ErrMalformedResponse, retried
//	cut short (Content-Length not met)  a transport error, retried
//	longer than WithMaxResponseBytes    ErrResponseTooLarge, not retried
//	JSON, but not a scoring response    Do returns it; Score and ScoreRows fail
//	                                    with ErrMalformedResponse, not retried
//
// A garbled reply is retried because it came through something other than the
// service, and another endpoint may answer; one that keeps coming counts
// towards the endpoint's ejection. A reply that is JSON but not the shape
// Score expects is the model's answer, the same on every endpoint, so
// retrying it would only spend the budget.

// malformedError marks err as a malformed reply: errors.Is(err,
// ErrMalformedResponse) holds, and the message is err's.
type malformedError struct{ err error }

func (e *malformedError) Error() string   { return e.err.Error() }
func (e *malformedError) Unwrap() []error { return []error{e.err, ErrMalformedResponse} }

// snippetLen bounds how much of a bad reply an error quotes.
const snippetLen = 64

// checkReply checks a 2xx reply body before Do returns it: it must be empty
// or one JSON value, and not the service's error body. keys are scrubbed from
// the part of the body the error quotes.
func checkReply(data []byte, contentType string, keys []string) error {
	if len(data) == 0 {
		return nil // nothing to misread; Score reports the missing Results
	}
	if !validJSON(data) {
		// Scrub the message as well as the body: an escape the quote adds
		// ("\x7f" before "uzz…") can complete a key the body only half holds.
		msg := fmt.Sprintf("reply is not JSON%s: %s", describeType(string(scrubKey([]byte(contentType), keys))), quote(data, keys))
		return &malformedError{errors.New(scrubString(msg, keys))}
	}
	if firstByte(data) == '{' && bytes.Contains(data, []byte(`"error"`)) {
		var wire struct {
			Error   json.RawMessage `json:"error"`
			Results json.RawMessage `json:"Results"`
		}
		if json.Unmarshal(data, &wire) == nil && firstByte(wire.Error) == '{' && wire.Results == nil {
			apiErr := parseAPIError("", 200, data, keys)
			return &malformedError{&errorBodyError{apiErr}}
		}
	}
	return nil
}

// maxFastNesting is how many brackets a reply may hold for validJSON to
// use gjson's validator: encoding/json's depth limit, and a depth that
// gjson's recursion handles on any stack.
const maxFastNesting = 10000

// validJSON reports whether data is one JSON value, exactly as json.Valid
// does (FuzzReplyValidator holds it to that), at about a seventh of its
// cost: a reply is checked on every call. gjson's validator recurses once
// per nesting level and knows no limit, so a reply of millions of '['
// would overflow the stack; with no more brackets than encoding/json's
// depth limit it cannot nest deeper than that, and otherwise json.Valid
// decides.
func validJSON(data []byte) bool {
	if bytes.Count(data, []byte("["))+bytes.Count(data, []byte("{")) <= maxFastNesting {
		return gjson.ValidBytes(data)
	}
	return json.Valid(data)
}

// errorBodyError is checkReply's complaint about a 2xx reply that is the
// Classic service's error body. An online endpoint's reply is whatever its
// deployment returns, so such a body is not refused there (isErrorBody).
type errorBodyError struct{ e *APIError }

// Error names the error's class and specific cause, and gives its most
// specific message (APIError.Reason), as APIError.Error does; the parts
// the body lacks are left out.
func (e *errorBodyError) Error() string {
	msg, class := "2xx reply is an error body", e.e.Code
	if d := e.e.Detail(); d != "" {
		class = strings.TrimPrefix(class+"/"+d, "/")
	}
	if class != "" {
		msg += ": " + class
	}
	if r := e.e.Reason(); r != "" {
		msg += ": " + r
	}
	return msg
}

// isErrorBody reports whether checkReply's err is about an error body.
func isErrorBody(err error) bool {
	_, ok := errors.AsType[*errorBodyError](err)
	return ok
}

// describeType notes a Content-Type that is not JSON, for an error message.
func describeType(ct string) string {
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json")) {
		return ""
	}
	return fmt.Sprintf(" (Content-Type %q)", ct)
}

// quote returns the start of a bad reply for an error message, keys scrubbed.
// Only so much of the reply is scrubbed as holds every copy of a key that
// begins in the quote, however escaped: a reply may be as long as
// WithMaxResponseBytes.
func quote(data []byte, keys []string) string {
	more := false
	if n := snippetLen + maxSpelled(keys); len(data) > n {
		data, more = data[:n], true
	}
	data = scrubKey(data, keys)
	if len(data) > snippetLen || more {
		return fmt.Sprintf("%q…", strings.ToValidUTF8(string(data[:min(len(data), snippetLen)]), "\uFFFD"))
	}
	return fmt.Sprintf("%q", strings.ToValidUTF8(string(data), "\uFFFD"))
}

// isDecodeError reports whether reading a body failed in undoing its
// Content-Encoding (a reply marked gzip that is not), not on the network.
func isDecodeError(err error) bool {
	var corrupt flate.CorruptInputError
	return errors.Is(err, gzip.ErrHeader) || errors.Is(err, gzip.ErrChecksum) || errors.As(err, &corrupt)
}
