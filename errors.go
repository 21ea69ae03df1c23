package amlpool

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/amlpool/amlpool/internal/pool"
)

// Sentinel errors. Branch on them with errors.Is; the errors Client returns wrap
// them with the endpoint and attempt details.
var (
	// ErrNoCapacity: no endpoint had a free slot within the call's max wait
	// (WithMaxWait), or at once when the max wait is zero, or the call was
	// shed (ErrShed).
	ErrNoCapacity = pool.ErrNoCapacity
	// ErrShed: every slot was busy and the line of waiting calls full
	// (WithMaxWaiting), so the call failed at once, or it waited and was
	// shed from the line to make room for a call of higher priority (its
	// error says so). errors.Is(err, ErrNoCapacity) holds for it too.
	ErrShed = pool.ErrShed
	// ErrClosed: the Client was closed before or while the call waited.
	ErrClosed = pool.ErrClosed
	// ErrThrottled matches an *APIError for a 503 RequestThrottled or
	// TooManyConcurrentRequests reply (an online endpoint's 429 Too many
	// pending requests): the endpoint was at its cap.
	ErrThrottled = errors.New("amlpool: endpoint throttled the call")
	// ErrInvalidConfig matches every *ConfigError New returns.
	ErrInvalidConfig = errors.New("amlpool: invalid config")
	// ErrResponseTooLarge: a reply was longer than WithMaxResponseBytes allows.
	// The rest of it was not read.
	ErrResponseTooLarge = errors.New("amlpool: response larger than the limit")
	// ErrMalformedResponse: a 2xx reply that is not what the service sends:
	// not JSON (a proxy's page, a garbled or mis-encoded body), the service's
	// error body, or, for Score and ScoreRows, JSON that is not a scoring
	// response. The error names the endpoint and quotes the start of the
	// reply. Do retries the first two kinds on another endpoint (see
	// Classify); a reply Score cannot decode is not retried.
	ErrMalformedResponse = errors.New("amlpool: malformed response")
	// ErrRetryBudgetExhausted: the call failed and could have been retried,
	// but retries were already adding as much load as the retry budget allows.
	ErrRetryBudgetExhausted = errors.New("amlpool: retry budget exhausted")
)

// APIError is a reply from an endpoint with a status other than 2xx. Code,
// Message and Details come from the service's error body
// ({"error":{"code","message","details":[...]}}) when it has one. Message
// is often the class's generic text ("Module execution encountered an
// internal library error.") while a detail holds the cause in the model's
// own words: Reason returns the most specific of them, and Error shows it.
//
// errors.Is(err, ErrThrottled) is true when the reply says the endpoint was
// full (503 RequestThrottled or TooManyConcurrentRequests; an online
// endpoint's 429 Too many pending requests).
//
// An online endpoint's reply (Kind Online) has no such body as a rule: its
// {"message": "…"} becomes Message, and a 424 carries the model
// container's own status and reason in ModelStatusCode and ModelReason.
type APIError struct {
	Endpoint   string        // the endpoint's Name
	StatusCode int           // HTTP status
	Code       string        // error.code: the class, e.g. "ServiceUnavailable"
	Message    string        // error.message: the class's text, often generic
	Details    []ErrorDetail // error.details: the specific causes
	// RetryAfter is the reply's delay hint (retry-after-ms,
	// x-ms-retry-after-ms or Retry-After, read in that order, as azcore
	// reads them) as the reply gave it: not capped; zero when absent or
	// unreadable. What amlpool waits is capped: it holds the endpoint back
	// for the hint, but at most WithMaxRetryAfter (DefaultMaxRetryAfter,
	// 30 s, by default), and not at all under WithMaxRetryAfter(0); a call
	// waits for that only when every endpoint is held back.
	RetryAfter time.Duration
	// Body holds the start of a reply body that was not a service error body
	// (at most 512 bytes), to help tell a proxy's error page from the service's.
	Body string
	// Kind is the kind of the endpoint that answered.
	Kind Kind
	// ModelStatusCode is, for an online endpoint's 424, the status the
	// model container answered with (the ms-azureml-model-error-statuscode
	// header); 0 when absent or not a status. A 4xx is the input's fault.
	ModelStatusCode int
	// ModelReason is, for an online endpoint's 424, the model's reason
	// (the ms-azureml-model-error-reason header), at most 512 bytes.
	ModelReason string

	quoted string // Body quoted for Error, secrets scrubbed; set by parseAPIError
	phrase string // an online reply's reason phrase ("Rate-limited"), read by rateLimited only
}

// ErrorDetail is one entry of an Azure ML error body's details list.
type ErrorDetail struct {
	Code    string `json:"code"`
	Target  string `json:"target,omitempty"`
	Message string `json:"message"`
}

// Error describes the reply: endpoint, status, codes and the most specific
// message (Reason), or the start of a body that was not the service's.
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "amlpool: endpoint %s: HTTP %d", e.Endpoint, e.StatusCode)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if d := e.Detail(); d != "" {
		b.WriteString("/" + d)
	}
	if e.ModelStatusCode != 0 {
		fmt.Fprintf(&b, " (model HTTP %d)", e.ModelStatusCode)
	}
	switch r := e.Reason(); {
	case r != "":
		b.WriteString(": " + r)
	case e.quoted != "":
		b.WriteString(": " + e.quoted)
	case e.Body != "":
		fmt.Fprintf(&b, ": %q", e.Body)
	}
	return b.String()
}

// Reason returns the most specific message the service gave: the first
// detail message that is not empty, else the model's reason (ModelReason),
// else Message; "" when the reply had none. Like every field of APIError,
// it holds no key or token.
func (e *APIError) Reason() string {
	for _, d := range e.Details {
		if d.Message != "" {
			return d.Message
		}
	}
	if e.ModelReason != "" {
		return e.ModelReason
	}
	return e.Message
}

// Detail returns the first detail code (the specific cause), or "".
func (e *APIError) Detail() string {
	if len(e.Details) == 0 {
		return ""
	}
	return e.Details[0].Code
}

// Throttled reports whether the reply says the endpoint was at its cap.
func (e *APIError) Throttled() bool {
	if e.Kind == Online {
		return e.StatusCode == 429 && !e.rateLimited()
	}
	return e.StatusCode == 503 && e.hasDetail("RequestThrottled", "TooManyConcurrentRequests")
}

// hasDetail reports whether one of the reply's details has one of codes,
// in any case.
func (e *APIError) hasDetail(codes ...string) bool {
	for _, d := range e.Details {
		for _, c := range codes {
			if strings.EqualFold(d.Code, c) {
				return true
			}
		}
	}
	return false
}

// Is makes errors.Is(err, ErrThrottled) true for a throttle reply.
func (e *APIError) Is(target error) bool { return target == ErrThrottled && e.Throttled() }

const maxErrorBodySnippet = 512

// parseAPIError builds the error for a non-2xx reply from its body. A body
// that is not an Azure ML error body still gives an APIError with the status
// and the start of the body.
func parseAPIError(endpoint string, status int, body []byte, keys []string) *APIError {
	e := &APIError{Endpoint: endpoint, StatusCode: status}
	body = scrubKey(body, keys)
	var wire struct {
		Error *struct {
			Code    string        `json:"code"`
			Message string        `json:"message"`
			Details []ErrorDetail `json:"details"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &wire) == nil && wire.Error != nil {
		// The raw body was scrubbed, but a JSON escape ("\/", "\u0041")
		// can spell the key only once decoded: scrub what was decoded too.
		e.Code, e.Message = scrubString(wire.Error.Code, keys), scrubString(wire.Error.Message, keys)
		e.Details = wire.Error.Details
		for i := range e.Details {
			d := &e.Details[i]
			d.Code, d.Target, d.Message = scrubString(d.Code, keys), scrubString(d.Target, keys), scrubString(d.Message, keys)
		}
		return e
	}
	if len(body) > maxErrorBodySnippet {
		body = body[:maxErrorBodySnippet]
	}
	e.Body = strings.ToValidUTF8(string(body), "\uFFFD")
	// Quoting adds escapes, and one ("\x7f" before "uzz…") can complete a
	// key the body only half holds: scrub the quoted form as well.
	if e.Body != "" {
		e.quoted = scrubString(strconv.Quote(e.Body), keys)
	}
	return e
}

// CallError is the error of a call that made more than one attempt, or
// that stopped for a reason of its own (Stop) after a failed attempt. It
// says how many attempts were made and on which endpoints. errors.Is and
// errors.As reach both the last attempt's error (its *APIError or transport
// error) and Stop: errors.Is(err, ErrRetryBudgetExhausted) tells a call the
// budget cut short.
type CallError struct {
	Attempts  int      // attempts made: requests sent, and any whose Credential gave no token
	Endpoints []string // the endpoint of each attempt, in order
	Err       error    // the last attempt's error
	// Stop is why the call made no further attempt although Err was worth
	// retrying, or nil when Err was not, or the attempts ran out:
	// ErrRetryBudgetExhausted; an error matching context.DeadlineExceeded
	// when the next wait would have passed the ctx deadline; the ctx's error
	// when it ended during a wait or a later attempt's wait for a slot;
	// ErrNoCapacity when that wait passed WithMaxWait; ErrClosed.
	Stop error
}

func (e *CallError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v (after %d attempt", e.Err, e.Attempts)
	if e.Attempts != 1 {
		b.WriteByte('s')
	}
	b.WriteString(": " + strings.Join(e.Endpoints, ", "))
	if e.Stop != nil {
		fmt.Fprintf(&b, "; stopped: %v", e.Stop)
	}
	b.WriteByte(')')
	return b.String()
}

// Unwrap returns the last attempt's error and, when set, Stop.
func (e *CallError) Unwrap() []error {
	if e.Stop == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Stop}
}

// ErrRequestTooLarge: a single row makes a request body over the batch's
// limit (BatchOptions.MaxChunkBytes; the service takes at most 4 MB).
var ErrRequestTooLarge = errors.New("amlpool: request larger than the limit")

// ChunkError reports rows of a batch that were not scored: the chunk's call
// failed after retries, its reply did not match the request, or (wrapping a
// *RowError) the source could not read the row. It unwraps to the cause, so
// errors.Is and errors.As reach an *APIError or a *RowError inside.
//
// Rows are numbered from 1, in the fields as in the message: FirstRow 4201
// and LastRow 4300 are the hundred rows at input indexes 4200 to 4299.
type ChunkError struct {
	Seq      int    // chunk number, from 0, as Chunk.Seq
	FirstRow int    // number of the first row, from 1
	LastRow  int    // number of the last row: the rows are FirstRow to LastRow, inclusive
	Endpoint string // the endpoint of its last attempt (Chunk.Endpoint); "" when it was never sent
	Err      error
}

// Error names the rows, as a person counts them, and the cause:
// "amlpool: rows 201-300: …", or "amlpool: row 245: …" for one row.
func (e *ChunkError) Error() string {
	if e.FirstRow == e.LastRow {
		return fmt.Sprintf("amlpool: row %d: %v", e.FirstRow, e.Err)
	}
	return fmt.Sprintf("amlpool: rows %d-%d: %v", e.FirstRow, e.LastRow, e.Err)
}

// Unwrap returns the cause.
func (e *ChunkError) Unwrap() error { return e.Err }

// RowError is one input row that a RowSource could not read, such as a CSV
// line with too few fields or invalid UTF-8. A RowSource returns it from
// Next and goes on with the next row.
type RowError struct {
	Line int   // line of the input where the row starts, from 1; 0 when unknown
	Row  []any // what could be read of the row; may be nil or of the wrong width
	// Text is the row as it stands in the input, without its line end, when
	// the source could not split it into cells reliably (a quoting error, a
	// JSON Lines line that is not an object with the columns' keys), so
	// that a reject file can keep it; "" otherwise, and for a line too long
	// to copy (the rows readers' lines over rows.MaxRowBytes, whose Err
	// gives their length).
	Text string
	Err  error
}

// Error returns the cause, after "line N: " when the line is known.
func (e *RowError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %v", e.Line, e.Err)
	}
	return e.Err.Error()
}

// Unwrap returns the cause.
func (e *RowError) Unwrap() error { return e.Err }
