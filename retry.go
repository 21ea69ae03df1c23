package amlpool

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/url"
)

// verdict is what a call does after an attempt.
type verdict uint8

const (
	verdictDone     verdict = iota // success, or an error not worth retrying
	verdictFailover                // the endpoint was full: try another one at once
	verdictBackoff                 // a transient failure: wait, then try another endpoint
)

// classify decides, after an attempt that returned err, whether the call
// goes on. The table is AZUREML.md §6.2.
func classify(ctx context.Context, err error) verdict {
	if err == nil || ctx.Err() != nil {
		return verdictDone
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return classifyStatus(apiErr)
	}
	if errors.Is(err, ErrResponseTooLarge) {
		return verdictDone
	}
	var certErr *x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidErr x509.CertificateInvalidError
	if errors.As(err, &certErr) || errors.As(err, &hostErr) || errors.As(err, &invalidErr) {
		return verdictDone // TLS trust problems do not heal by retrying
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) && urlErr.Op != "Post" {
		return verdictDone
	}
	return verdictBackoff // refused, reset, EOF, attempt timeout
}

func classifyStatus(e *APIError) verdict {
	switch {
	case e.Throttled():
		return verdictFailover
	case e.StatusCode == http.StatusRequestTimeout:
		if e.Detail() == "RequestCanceled" {
			return verdictDone // the service says the client cancelled
		}
		return verdictBackoff
	case e.StatusCode == http.StatusTooManyRequests,
		e.StatusCode == http.StatusInternalServerError,
		e.StatusCode == http.StatusBadGateway,
		e.StatusCode == http.StatusServiceUnavailable,
		e.StatusCode == http.StatusGatewayTimeout:
		return verdictBackoff
	default:
		return verdictDone // 4xx input and auth errors, 501, 3xx
	}
}

// call is the state of one Do across its attempts.
type call struct {
	attempts int
	names    []string // the endpoint of each attempt, kept for the error
	ntried   int
	ex       exclusion
}

// exclusion is what one attempt of a call may not use. It is passed by value
// (into Candidates and waiters) so that a call never escapes to the heap.
type exclusion struct {
	on    bool   // this attempt avoids endpoints already tried
	tried bitset // endpoints the call has tried
}

// excluded reports whether this attempt must avoid endpoint i.
func (x *exclusion) excluded(i int) bool { return x.on && x.tried.has(i) }

// restricted reports whether this attempt may not use some endpoints.
func (x *exclusion) restricted() bool { return x.on }

// bitset is a set of small integers; the first 64 need no allocation.
type bitset struct {
	lo uint64
	hi []uint64
}

func (b *bitset) has(i int) bool {
	if i < 64 {
		return b.lo&(1<<uint(i)) != 0
	}
	j := i/64 - 1
	return j < len(b.hi) && b.hi[j]&(1<<uint(i%64)) != 0
}

func (b *bitset) add(i int) {
	if i < 64 {
		b.lo |= 1 << uint(i)
		return
	}
	j := i/64 - 1
	for len(b.hi) <= j {
		b.hi = append(b.hi, 0)
	}
	b.hi[j] |= 1 << uint(i%64)
}
