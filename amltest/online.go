package amltest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// This file is the fake online endpoint (Config.Kind amlpool.Online): an
// Azure ML managed online endpoint serving an MLflow model, as
// amlpool's docs/azureml.md describes it.
//
//	request   POST /score, Authorization: Bearer <key or token>
//	          {"input_data": {"columns": [...], "index": [...], "data": [[...], ...]}}
//	reply     [prediction, ...]                 or {"predictions": [...]} (PredictionsObject)
//	errors    {"message": "…"} with the status:
//	          401 a missing or wrong key or token
//	          404 another path, or another deployment in azureml-model-deployment
//	          405 a method other than POST
//	          413 a body over MaxRequestBytes (4 MiB)
//	          429 Too many pending requests      over MaxConcurrentCalls
//	          424 the model failed; its status and reason in the
//	              ms-azureml-model-error-statuscode and -reason headers
//	              (a Predict error is the model's 400)

// The model's status and reason headers of a 424 reply.
const (
	ModelStatusHeader = "ms-azureml-model-error-statuscode"
	ModelReasonHeader = "ms-azureml-model-error-reason"
	// DeploymentHeader pins a request to one deployment of an online
	// endpoint.
	DeploymentHeader = "azureml-model-deployment"
)

// The messages of an online endpoint's 429 replies: at its cap, and over
// its requests-per-second limit.
const (
	PendingMessage     = "Too many pending requests"
	RateLimitedMessage = "Rate-limited: the endpoint is over its limit of requests per second"
)

// Pending is an online endpoint's reply at its cap: 429 Too many pending
// requests, the reply a Server of Kind Online sends by itself to a call
// over its MaxConcurrentCalls. A client takes it as "full".
func Pending() Fault {
	return Fault{Status: http.StatusTooManyRequests, Body: onlineBody(PendingMessage)}
}

// RateLimited is an online endpoint's reply over its requests-per-second
// limit: 429 Rate-limited. Add a Retry-After with WithRetryAfter.
func RateLimited() Fault {
	return Fault{Status: http.StatusTooManyRequests, Body: onlineBody(RateLimitedMessage)}
}

// ModelFailure is an online endpoint's reply when its model container
// answered status (say 400 for input it cannot take, 500 for a crash):
// 424, with status and reason in the model's headers.
func ModelFailure(status int, reason string) Fault {
	return Fault{
		Status: http.StatusFailedDependency,
		Body:   onlineBody("The model failed to score the request."),
		Header: http.Header{ModelStatusHeader: {strconv.Itoa(status)}, ModelReasonHeader: {reason}},
	}
}

// onlineMessages are the fake's messages per status, for a Fault's Status
// on a Server of Kind Online. The service documents the statuses, not the
// bodies: these words are the fake's own.
var onlineMessages = map[int]string{
	400: "Bad request.",
	401: "Unauthorized: the key or token is missing, wrong or expired.",
	403: "Forbidden.",
	404: "No valid deployments to route to. Please check that the endpoint has at least one deployment with positive weight values or use a deployment specific header to route.",
	408: "Request timed out: the model ran past request_timeout_ms.",
	413: "Request entity too large.",
	424: "The model failed to score the request.",
	429: PendingMessage,
	500: "Internal server error.",
	502: "Bad gateway: the scoring script crashed.",
	503: "Service unavailable.",
	504: "Gateway timeout.",
}

// onlineBody is an online endpoint's error body.
func onlineBody(message string) []byte {
	b, err := marshalNoEscape(struct {
		Message string `json:"message"`
	}{message})
	if err != nil {
		panic("amltest: encoding an error body: " + err.Error()) // a string only: cannot fail
	}
	return b
}

// onlineFault is the body of a Fault's Status on a Server of Kind Online.
func onlineFault(status int) []byte {
	msg, ok := onlineMessages[status]
	if !ok {
		msg = http.StatusText(status)
	}
	return onlineBody(msg)
}

// onlineRoute checks an online request's path and deployment header.
func (s *Server) onlineRoute(r *http.Request) []byte {
	if r.URL.EscapedPath() != "/score" {
		return onlineBody("No scoring endpoint at this path; online endpoints score at /score.")
	}
	if d := r.Header.Get(DeploymentHeader); d != "" && s.deployment != "" && d != s.deployment {
		return onlineBody(fmt.Sprintf("No deployment %q: the endpoint's deployment is %q.", d, s.deployment))
	}
	return nil
}

// wireInput is the MLflow request body, in the split orientation.
type wireInput struct {
	InputData *struct {
		Columns []string `json:"columns"`
		Index   []any    `json:"index"`
		Data    [][]any  `json:"data"`
	} `json:"input_data"`
}

// onlineScore checks and decodes an online body, waits the service time,
// runs Predict and encodes its predictions. A body over MaxRequestBytes is
// a 413; a body the model cannot take, or a Predict error, is the model's
// 400: a 424 with its headers.
func (s *Server) onlineScore(c *call, body []byte) (int, []byte, *Fault) {
	modelErr := func(msg string) (int, []byte, *Fault) {
		f := ModelFailure(http.StatusBadRequest, msg)
		return 0, nil, &f
	}
	// Media types are case-insensitive (RFC 9110, 8.3.1); the parameters
	// are not checked.
	if len(body) > MaxRequestBytes {
		// Refused before the model sees it, as a managed online
		// endpoint refuses an oversized request.
		f := Fault{Status: http.StatusRequestEntityTooLarge,
			Body: onlineBody(fmt.Sprintf("The request body is larger than the %d-byte limit.", MaxRequestBytes))}
		return 0, nil, &f
	}
	if mt, _, _ := strings.Cut(c.r.Header.Get("Content-Type"), ";"); !strings.EqualFold(strings.TrimSpace(mt), "application/json") {
		return modelErr(fmt.Sprintf("Content-Type must be application/json, not %q.", c.r.Header.Get("Content-Type")))
	}
	var in wireInput
	if err := decodeNumbers(body, &in); err != nil {
		return modelErr("The body is not JSON: " + err.Error())
	}
	if in.InputData == nil {
		return modelErr(`The body has no "input_data".`)
	}
	d := in.InputData
	if d.Index != nil && len(d.Index) != len(d.Data) {
		return modelErr(fmt.Sprintf("index has %d entries for %d rows.", len(d.Index), len(d.Data)))
	}
	for i, row := range d.Data {
		if len(row) != len(d.Columns) {
			return modelErr(fmt.Sprintf("row %d has %d values for %d columns.", i, len(row), len(d.Columns)))
		}
	}
	wait := s.latency
	if s.latencyFunc != nil {
		wait = s.latencyFunc()
	}
	if !c.serve(wait) {
		c.abort()
	}
	preds, err := s.predict(d.Columns, d.Data)
	if err != nil {
		return modelErr(err.Error())
	}
	if len(preds) != len(d.Data) {
		f := ModelFailure(http.StatusInternalServerError, fmt.Sprintf("amltest: Predict returned %d predictions for %d rows", len(preds), len(d.Data)))
		return 0, nil, &f
	}
	var reply any = preds
	if s.predictionsObject {
		reply = map[string]any{"predictions": preds}
	}
	out, err := marshalNoEscape(reply)
	if err != nil {
		f := ModelFailure(http.StatusInternalServerError, "amltest: encoding the predictions: "+err.Error())
		return 0, nil, &f
	}
	return http.StatusOK, out, nil
}

// OnlineEcho is the default model of a Server of Kind Online: one
// prediction per row, an object holding the row's cells under their
// column names, as sent, and the column "Scored Probabilities", a number
// in [0, 1) that depends only on the row's cells (as Echo's).
//
// OnlineEcho is safe for concurrent use and does not change its input.
func OnlineEcho(columns []string, rows [][]any) ([]any, error) {
	out := make([]any, len(rows))
	for i, row := range rows {
		p := make(map[string]any, len(row)+1)
		for c, v := range row {
			p[columns[c]] = v
		}
		p[ScoredProbabilities] = json.Number(probability(row))
		out[i] = p
	}
	return out, nil
}

// recordHeaders remembers the values of the headers Config.RecordHeaders
// names, up to maxKeysSeen distinct values each.
func (s *Server) recordHeaders(h http.Header) {
	if len(s.recorded) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, name := range s.recorded {
		for _, v := range h.Values(name) {
			seen := s.headers[name]
			if len(seen) < maxKeysSeen && !contains(seen, v) {
				s.headers[name] = append(seen, v)
			}
		}
	}
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
