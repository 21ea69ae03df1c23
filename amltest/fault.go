package amltest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Fault is what the server does to one admitted call instead of, or on top
// of, the normal reply. The zero Fault means a normal reply. Fields combine:
// Delay first, then Hang or Reset, else the reply (an error reply when
// Status is not 2xx or Body is set, the model's otherwise), sent with Header
// and RetryAfter, and delivered by Truncate or SlowBody when set.
//
// Throttle, ModelError and WithRetryAfter make the common faults, so that a
// test reads as what it means.
//
// Without Code and Detail, Status gets the catalogued pair below (the
// service's error catalogue, docs/azureml.md) and its message:
//
//	400 BadArgument / RequestBodyInvalid
//	401 Unauthorized / ScoreRequestUnauthorized
//	404 NotFound / WebServiceNotFound
//	408 RequestTimeout / ScoreRequestTimeout
//	409 Conflict / ModelOutputMetadataMismatch
//	413 MemoryQuotaViolation / OutOfMemoryLimit
//	429 TooManyRequests (not in the classic catalogue; the successor service's overload reply)
//	500 InternalError / ModuleExecutionFailed
//	503 InitializingContainers (transient, retried; not the cap: use
//	    Throttle() for an injected throttle)
//	504 GatewayTimeout / BackendScoreTimeout
//
// Other statuses get the status text, without spaces, as Code. A Code given
// without Detail has no details entry. Messages of known codes follow the
// catalogue; RequestThrottled names the server's current cap, exactly as the
// server's own throttle reply does.
type Fault struct {
	// Status is the reply's HTTP status, with the matching Azure ML error
	// body. A 2xx Status without Body sends the model's normal reply with
	// that status. 0 means the normal status (200, or that of Body);
	// otherwise 200 to 999 (Script panics on another).
	Status int
	// Code is error.code, the class; default from Status.
	Code string
	// Detail is details[0].code, the specific cause; default from Status
	// when Code is empty too.
	Detail string
	// RetryAfter, when set, is sent as the Retry-After header.
	RetryAfter string
	// Header holds extra reply headers (e.g. retry-after-ms, or a
	// Content-Type for a proxy's HTML page); they replace the defaults.
	Header http.Header
	// Body, when not nil, is sent as it is instead of the generated body
	// (malformed JSON, a proxy's page). With Status 0 the status is 200.
	Body []byte
	// Hang never replies: the call stays in flight until its client goes
	// away or the server closes, then the connection is closed.
	Hang bool
	// Delay is waited before anything else; the call stays in flight
	// meanwhile. For a normal reply it adds to the model's latency.
	Delay time.Duration
	// Reset closes the connection with no reply (a TCP reset): the client
	// gets a transport error such as "connection reset by peer" or EOF.
	Reset bool
	// SlowBody writes the reply in 8 pieces spread over this long.
	SlowBody time.Duration
	// Truncate announces the whole body in Content-Length, sends half of it
	// and closes the connection: the client's read ends in an unexpected EOF.
	Truncate bool
}

// Throttle is the reply of an endpoint at its cap: 503 ServiceUnavailable /
// RequestThrottled, the very reply a Server sends by itself to a call over
// its MaxConcurrentCalls, naming its cap. A client takes it as "full" and
// goes to another endpoint at once.
func Throttle() Fault {
	return Fault{Status: http.StatusServiceUnavailable, Code: "ServiceUnavailable", Detail: "RequestThrottled"}
}

// ModelError is the reply to a request the model cannot score: 400
// LibraryExecutionError / FailedToEvaluateRScript, with message, the
// model's own words, as details[0].message under the service's generic
// error.message. A Config.Score that returns an error gets the same reply.
// A client takes it as the input's fault: not retried.
func ModelError(message string) Fault {
	e := badRequest("LibraryExecutionError", "FailedToEvaluateRScript", message)
	e.target = "Score"
	return Fault{Status: e.status, Body: e.body()}
}

// WithRetryAfter returns f with a Retry-After header asking the client to
// wait d, in whole seconds rounded up as the header's seconds form has it:
// Throttle().WithRetryAfter(2*time.Second), or Fault{Status: 429}.WithRetryAfter(time.Second).
// The header's seconds are never negative: a d of zero or less sends "0"
// (retry at once), as a timer of such a d fires at once. To send a
// malformed header on purpose, set RetryAfter itself.
func (f Fault) WithRetryAfter(d time.Duration) Fault {
	secs := max(d, 0) / time.Second
	if max(d, 0)%time.Second != 0 {
		secs++
	}
	f.RetryAfter = strconv.FormatInt(int64(secs), 10)
	return f
}

// problem says what makes f impossible to send, or "": a Status that is
// not a final HTTP status (net/http refuses to write it, and a 1xx is no
// reply).
func (f *Fault) problem() string {
	if f.Status != 0 && (f.Status < 200 || f.Status > 999) {
		return fmt.Sprintf("Status %d is not a final HTTP status (200 to 999; 0 for the normal one)", f.Status)
	}
	return ""
}

func (f *Fault) isZero() bool {
	return f.Status == 0 && f.Code == "" && f.Detail == "" && f.RetryAfter == "" &&
		f.Header == nil && f.Body == nil && !f.Hang && f.Delay == 0 && !f.Reset &&
		f.SlowBody == 0 && !f.Truncate
}

// apiError is one Azure ML error reply (docs/azureml.md):
// {"error":{"code","message","details":[{"code","target","message"}]}}.
type apiError struct {
	status        int
	code          string // class
	message       string
	detail        string // details[0].code; no details when empty
	target        string
	detailMessage string
}

func (e apiError) body() []byte {
	type detail struct {
		Code    string `json:"code"`
		Target  string `json:"target,omitempty"`
		Message string `json:"message"`
	}
	type inner struct {
		Code    string   `json:"code"`
		Message string   `json:"message"`
		Details []detail `json:"details,omitempty"`
	}
	in := inner{Code: e.code, Message: e.message}
	if e.detail != "" {
		in.Details = []detail{{Code: e.detail, Target: e.target, Message: e.detailMessage}}
	}
	b, err := marshalNoEscape(struct {
		Error inner `json:"error"`
	}{in})
	if err != nil {
		panic("amltest: encoding an error body: " + err.Error()) // strings only: cannot fail
	}
	return b
}

// statusDefaults maps a status to its default class and detail (see Fault).
var statusDefaults = map[int][2]string{
	400: {"BadArgument", "RequestBodyInvalid"},
	401: {"Unauthorized", "ScoreRequestUnauthorized"},
	404: {"NotFound", "WebServiceNotFound"},
	408: {"RequestTimeout", "ScoreRequestTimeout"},
	409: {"Conflict", "ModelOutputMetadataMismatch"},
	413: {"MemoryQuotaViolation", "OutOfMemoryLimit"},
	429: {"TooManyRequests", ""},
	500: {"InternalError", "ModuleExecutionFailed"},
	503: {"InitializingContainers", ""},
	504: {"GatewayTimeout", "BackendScoreTimeout"},
}

// classMessages are error.message per class. Only ServiceUnavailable's comes
// from a reply (§6.1); the others are the catalogue's wording where it has
// one, plain descriptions where it has none.
var classMessages = map[string]string{
	"BadArgument":                    "Invalid argument provided.",
	"BadUserArgument":                "Invalid user argument provided.",
	"Unauthorized":                   "Authorization failed.",
	"NotFound":                       "Resource not found.",
	"RequestTimeout":                 "Request timed out.",
	"Conflict":                       "Conflict.",
	"MemoryQuotaViolation":           "The model exceeded its memory quota.",
	"InternalError":                  "Execution encountered an internal error.",
	"InternalErrorSystemLowOnMemory": "Execution encountered an internal error. System low on memory. Please try again.",
	"InitializingContainers":         "The request cannot execute as the containers are being initialized.",
	"ServiceUnavailable":             "Service is temporarily unavailable.",
	"GatewayTimeout":                 "Gateway timeout.",
	"LibraryExecutionError":          "Module execution encountered an internal library error.",
	"ModuleExecutionError":           "Module execution encountered an error.",
	"TooManyRequests":                "Too many requests.",
}

// detailMessages are details[].message per detail code, from the catalogue.
var detailMessages = map[string]string{
	"RequestBodyInvalid":                   "No request body provided or error in deserializing the request body.",
	"ScoreRequestUnauthorized":             "Invalid credentials provided.",
	"WebServiceNotFound":                   "The web service was not found.",
	"ScoreRequestTimeout":                  "Execution request timed out.",
	"RequestCanceled":                      "Request was canceled by the client.",
	"ModelOutputMetadataMismatch":          "Model output metadata mismatch.",
	"OutOfMemoryLimit":                     "Maximum allowed memory for the model is exceeded.",
	"ModuleExecutionFailed":                "Module execution failed.",
	"TooManyConcurrentRequests":            "Too many concurrent requests sent.",
	"NoMoreResources":                      "No resources available for request.",
	"TooManyHostsBeingInitialized":         "Too many hosts being initialized at the same time. Consider throttling / retrying.",
	"TooManyHostsBeingInitializedPerModel": "Too many hosts being initialized at the same time. Consider throttling / retrying.",
	"BackendScoreTimeout":                  "The backend timed out scoring the request.",
	"InputMismatchError":                   "Input data does not match input port schema.",
}

// faultError builds the error reply for a Fault's Status, Code and Detail;
// mcc fills in the RequestThrottled message.
func faultError(status int, code, detail string, mcc int64) apiError {
	if code == "" {
		d := statusDefaults[status]
		code = d[0]
		if detail == "" {
			detail = d[1]
		}
		if code == "" {
			code = strings.ReplaceAll(http.StatusText(status), " ", "")
		}
	}
	if detail == "RequestThrottled" {
		e := throttleError(mcc)
		e.status, e.code = status, code
		return e
	}
	msg, ok := classMessages[code]
	if !ok {
		msg = http.StatusText(status)
	}
	return apiError{status: status, code: code, message: msg, detail: detail, detailMessage: detailMessages[detail]}
}

// throttleError is the reply to a call over the cap: the catalogue's
// RequestThrottled message, its "{0} endpoint" filled with "default".
func throttleError(mcc int64) apiError {
	return apiError{
		status: http.StatusServiceUnavailable, code: "ServiceUnavailable",
		message: "Service is temporarily unavailable.", detail: "RequestThrottled",
		detailMessage: fmt.Sprintf("Request was throttled for default endpoint. The maximum concurrency for the endpoint is %d.", mcc),
	}
}

func badRequest(code, detail, msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: code, message: classMessages[code], detail: detail, detailMessage: msg}
}

func notFound(detail, msg string) *apiError {
	return &apiError{status: http.StatusNotFound, code: "NotFound", message: classMessages["NotFound"], detail: detail, detailMessage: msg}
}

// marshalNoEscape is json.Marshal without HTML escaping, so ">50K" is sent
// as the service sends it.
func marshalNoEscape(v any) ([]byte, error) {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return []byte(strings.TrimSuffix(b.String(), "\n")), nil
}
