package amlpool

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Kind is the kind of service an endpoint is. The bodies, the statuses and
// the caps differ between kinds (docs/azureml.md); all endpoints of one
// Client are of one Kind.
type Kind uint8

const (
	// Classic is an Azure ML Studio (classic) web-service endpoint: the
	// zero Kind. Its bodies are the Request and Response types.
	Classic Kind = iota
	// Online is an Azure ML managed (or Kubernetes) online endpoint, at
	// https://{endpoint}.{region}.inference.ml.azure.com/score. Its body is
	// whatever the deployment's scoring script takes; ScoreRows speaks the
	// MLflow form.
	Online
)

// String returns "classic" or "online".
func (k Kind) String() string {
	switch k {
	case Classic:
		return "classic"
	case Online:
		return "online"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// MarshalText returns String, so that a Kind reads as a word in JSON.
func (k Kind) MarshalText() ([]byte, error) {
	if k > Online {
		return nil, fmt.Errorf("amlpool: unknown Kind %d", k)
	}
	return []byte(k.String()), nil
}

// UnmarshalText reads "classic" or "online", in any case; "" is Classic.
func (k *Kind) UnmarshalText(b []byte) error {
	switch strings.ToLower(string(b)) {
	case "", "classic":
		*k = Classic
	case "online":
		*k = Online
	default:
		return fmt.Errorf("amlpool: unknown Kind %q; want classic or online", b)
	}
	return nil
}

const (
	// MaxOnlineConcurrentCalls is the highest MaxConcurrentCalls of an
	// online endpoint. Its real cap is 2 × max_concurrent_requests_per_instance
	// × instance_count, summed over the deployments that take its traffic.
	MaxOnlineConcurrentCalls = 10000

	// The reply headers of an online endpoint's 424: the model container's
	// own status and reason.
	modelStatusHeader = "Ms-Azureml-Model-Error-Statuscode"
	modelReasonHeader = "Ms-Azureml-Model-Error-Reason"

	// maxModelReason bounds the model's reason an APIError keeps.
	maxModelReason = 512
)

// parseModelStatus reads the model's status from an online endpoint's
// ms-azureml-model-error-statuscode header: three ASCII digits, 100 to
// 599, spaces around allowed. Anything else is 0, unknown.
func parseModelStatus(v string) int {
	v = strings.TrimSpace(v)
	if len(v) != 3 {
		return 0
	}
	n := 0
	for i := 0; i < 3; i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0
		}
		n = n*10 + int(v[i]-'0')
	}
	if n < 100 || n > 599 {
		return 0
	}
	return n
}

// modelReason cleans the model's reason header for an APIError: valid
// UTF-8, no control characters, secrets scrubbed, at most maxModelReason
// bytes. It scrubs before it cuts: a secret the cut went through would be
// left in part, out of the scrub's reach.
func modelReason(v string, secrets []string) string {
	v = strings.ToValidUTF8(strings.TrimSpace(v), "\uFFFD")
	v = strings.Map(func(r rune) rune {
		if isControl(r) {
			return ' '
		}
		return r
	}, v)
	v = scrubString(v, secrets)
	if len(v) > maxModelReason {
		v = strings.ToValidUTF8(v[:maxModelReason], "")
	}
	return v
}

// parseOnlineError fills e, the error of an online endpoint's non-2xx
// reply, from what the Classic parse left: the model's status and reason
// of a 424, and the message of a {"message": "…"} body. body is the whole
// reply as read, not e.Body, which is cut at 512 bytes: a longer message
// would not parse from it.
func parseOnlineError(e *APIError, h http.Header, body []byte, secrets []string) {
	e.Kind = Online
	if e.StatusCode == http.StatusFailedDependency {
		e.ModelStatusCode = parseModelStatus(h.Get(modelStatusHeader))
		e.ModelReason = modelReason(h.Get(modelReasonHeader), secrets)
	}
	if e.Code != "" || e.Message != "" || e.Body == "" {
		return
	}
	var wire struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &wire) == nil && wire.Message != "" {
		e.Message = scrubString(wire.Message, secrets)
	}
}

// reasonPhrase is the reason phrase of a reply's status line, as
// http.Response.Status holds it ("429 Rate-limited"): "" for HTTP/2.
func reasonPhrase(status string) string {
	_, phrase, _ := strings.Cut(status, " ")
	return phrase
}

// rateLimited reports whether an online endpoint's 429 says it is over its
// requests-per-second limit ("Rate-limited"), rather than that it has too
// many requests pending (the cap). The reply's wording, its status line's
// reason phrase (the service documents the two 429s by theirs) and its
// body, is the only sign (docs/azureml.md); a 429 that names neither is
// taken as the cap.
func (e *APIError) rateLimited() bool {
	text := strings.ToLower(e.phrase + " " + e.Code + " " + e.Message + " " + e.Body)
	if strings.Contains(text, "pending") {
		return false
	}
	for _, w := range [...]string{"rate-limit", "rate limit", "ratelimit"} {
		if strings.Contains(text, w) {
			return true
		}
	}
	return false
}

// ModelInputFault reports whether the reply is an online endpoint's 424
// for a 4xx from the model itself (other than 408 and 429): the model
// refused the request's input. Batch scoring then looks for the rows to
// blame, as it does for a 400.
func (e *APIError) ModelInputFault() bool {
	m := e.ModelStatusCode
	return e.Kind == Online && e.StatusCode == http.StatusFailedDependency &&
		m >= 400 && m < 500 && m != http.StatusRequestTimeout && m != http.StatusTooManyRequests
}

// classifyOnline is Classify's table for online endpoints (docs/azureml.md).
func classifyOnline(e *APIError) Verdict {
	switch s := e.StatusCode; {
	case s == http.StatusTooManyRequests:
		if e.rateLimited() {
			return VerdictRetry // its Retry-After, if any, cools the endpoint down
		}
		return VerdictFull
	case s == http.StatusFailedDependency:
		if e.ModelInputFault() {
			return VerdictGiveUp
		}
		return VerdictRetry // the model's 5xx, 408, 429, or no status given
	case s == http.StatusUnauthorized, s == http.StatusForbidden, s == http.StatusNotFound:
		return VerdictEndpointFault
	case s == http.StatusRequestTimeout, s == http.StatusInternalServerError,
		s == http.StatusBadGateway, s == http.StatusServiceUnavailable, s == http.StatusGatewayTimeout:
		return VerdictRetry
	default:
		return VerdictGiveUp // 400, 409, 413, 501, other 4xx, 3xx
	}
}

// errScoreOnline is Score's error on a Client of online endpoints.
var errScoreOnline = errors.New("amlpool: Score sends the Classic request form, and this Client's endpoints are online: " +
	"send the deployment's own JSON body with Do, or score rows with ScoreRows or ScoreTable (the MLflow input_data form)")
