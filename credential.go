package amlpool

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"unicode"
)

// Credential is a source of bearer tokens for an endpoint (Endpoint.
// Credential), used instead of a static APIKey: Azure AD tokens for online
// endpoints in aad_token mode, aml_tokens, or keys kept in a vault and
// rotated there. The module github.com/amlpool/amlpool/azureauth turns an
// Azure SDK credential into one.
//
// Token is called once per attempt, on the attempt's path, so it should
// return a cached token at once and fetch a new one only when that one is
// about to expire. Its ctx is the attempt's: WithAttemptTimeout bounds the
// token and the request together, and a Token that has not returned when
// the attempt times out should return ctx's error. It must be safe for
// concurrent use. A token is a secret
// under every rule that holds for keys: it goes to its endpoint's host
// only, and appears in no error, log, span, Stats or printed value.
//
// Token returns the token alone, without its "Bearer " scheme, which
// amlpool adds. When Token fails, or returns a token that is empty or
// holds a control character or white space (as "Bearer <token>" does), the
// attempt fails without sending anything, with a *CredentialError wrapping
// Token's error (which matches context.DeadlineExceeded, and says the
// Token timed out, when the attempt timeout ended it) or saying what is
// wrong with the token. Classify retries it as VerdictRetry: after a
// backoff, on another endpoint when one is usable, within
// WithMaxAttempts; an endpoint whose token fails on every attempt is
// ejected as any failing endpoint is (WithEjection).
//
// When an endpoint answers 401 to a token, the call asks the Credential
// once more and tries the same endpoint again at once (a token may expire
// or be revoked while cached); a Credential that caches should implement
// TokenInvalidator to learn of the rejection and fetch afresh. When it
// gives the refused token again, the endpoint leaves rotation at once, as
// for a rejected key. A different token refused too is a failure (a
// caching Credential may hold more than one token from before a
// revocation): the call goes on to another endpoint at once, and a run of
// such failures ejects the endpoint (WithEjection). Neither a token's
// 401 or 403 nor what it brings is shared with other replicas through a
// Limiter that shares health (HealthSharer): a token, and the identity
// behind it, is this replica's.
type Credential interface {
	Token(ctx context.Context) (string, error)
}

// TokenInvalidator is implemented by a Credential that caches its token,
// to hear that an endpoint answered 401 to token: the next Token should not
// return it again. Invalidate may be called for one token by many calls at
// once, and for a token the Credential has already replaced; it must be
// safe for concurrent use, return fast, and never block on the network.
type TokenInvalidator interface {
	Invalidate(token string)
}

// CredentialFunc adapts a function to Credential, e.g. for a token read
// from a file or a secret store.
type CredentialFunc func(ctx context.Context) (string, error)

// Token returns f(ctx).
func (f CredentialFunc) Token(ctx context.Context) (string, error) { return f(ctx) }

// CredentialError is the error of an attempt whose Credential gave no
// usable token: nothing was sent. errors.Is and errors.As reach the
// Credential's own error through it. Neither its text nor that of any
// error it wraps holds a token: the one Token returned, anything shaped
// like a JWT, and the values of a token reply's or a token request's
// secret fields (access_token, client_secret, …) are [REDACTED]. A
// Credential's error that holds one is a scrubbed copy, which errors.Is
// still sees through, but in which errors.As finds by their type only the
// errors whose text did not hold one.
type CredentialError struct {
	Endpoint string // the endpoint's Name
	Err      error  // the Credential's error, or what was wrong with its token
}

func (e *CredentialError) Error() string {
	return fmt.Sprintf("amlpool: endpoint %s: credential: %v", e.Endpoint, e.Err)
}

// Unwrap returns the Credential's error.
func (e *CredentialError) Unwrap() error { return e.Err }

// Format prints Error whatever the verb, so that no verb (%#v, %d) prints
// the fields of the Credential's error one by one.
func (e *CredentialError) Format(f fmt.State, verb rune) {
	formatRedacted(f, verb, e.Error(), "&amlpool.CredentialError{"+e.Error()+"}")
}

// token takes a's bearer token from its endpoint's Credential. The error
// is a *CredentialError, the token's text in none of it.
func (a *attempt) token(ctx context.Context, cred Credential) *CredentialError {
	ep := a.slot.Ep
	tok, err := cred.Token(ctx)
	switch {
	case err != nil:
		// The Credential's error might quote its token, or one it never
		// returned: MSAL's error for a token reply it could not decode
		// quotes the reply, access_token and all. Scrub both.
		err = scrubTree(err, func(s string) string { return scrubTokens(s, tok) })
		return &CredentialError{Endpoint: ep.Name(), Err: err}
	case tok == "":
		return &CredentialError{Endpoint: ep.Name(), Err: errEmptyToken}
	}
	if problem := checkToken(tok); problem != "" {
		return &CredentialError{Endpoint: ep.Name(), Err: fmt.Errorf("the token %s", problem)}
	}
	a.tok = tok
	return nil
}

// checkToken is checkKey for a token, which has no white space inside
// either: the header would be "Bearer <token>" whatever it holds, and a
// token given with its scheme, a whole header value, would go as "Bearer
// Bearer <token>" and meet a 401 that says nothing of why. It says what is
// wrong, never quoting tok.
func checkToken(tok string) string {
	if problem := checkKey(tok); problem != "" {
		return problem
	}
	if i := strings.IndexFunc(tok, unicode.IsSpace); i >= 0 {
		if strings.EqualFold(tok[:i], "Bearer") {
			return `begins with "Bearer ": give the token alone; amlpool adds the scheme`
		}
		return fmt.Sprintf("contains white space at byte %d, which no token has", i)
	}
	return ""
}

var errEmptyToken = fmt.Errorf("the token is empty")

// tokenPatterns are compiled on first use, not at init: most programs
// never scrub a Credential's error, and every one of them would pay for
// the compiling at start-up.
var tokenPatterns = sync.OnceValue(func() (p struct{ jwt, field, param *regexp.Regexp }) {
	// jwt is what looks like a JWT (a JWS, or a JWE's first parts):
	// base64url parts joined by dots, the first a JSON header, {" in
	// base64. Azure AD tokens and aml_tokens are JWTs.
	p.jwt = regexp.MustCompile(`eyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){1,4}`)
	// field is a JSON field of a token reply that holds a token, up to
	// the start of its value.
	p.field = regexp.MustCompile(`(?i)"(?:access_?token|refresh_?token|id_?token|client_?secret|client_?assertion)"\s*:\s*"`)
	// param is the same in a form or a query: name=value.
	p.param = regexp.MustCompile(`(?i)\b(access_token|refresh_token|id_token|client_secret|client_assertion|assertion)=[^&\s"']+`)
	return p
})

// scrubTokens returns s, a Credential's error text, with tok, anything
// that looks like a JWT, and the string values of a token reply's token
// fields (access_token, client_secret, …), in JSON or in a form, redacted.
func scrubTokens(s, tok string) string {
	s = scrubString(s, []string{tok})
	p := tokenPatterns()
	s = p.jwt.ReplaceAllLiteralString(s, redacted)
	s = p.param.ReplaceAllString(s, "${1}="+redacted)
	for _, loc := range slices.Backward(p.field.FindAllStringIndex(s, -1)) {
		end := loc[1]
		for end < len(s) && s[end] != '"' {
			if s[end] == '\\' && end+1 < len(s) {
				end++
			}
			end++
		}
		s = s[:loc[1]] + redacted + s[end:]
	}
	return s
}

// header returns the headers of a's request: the endpoint's shared ones
// for a key, or, for a token, a copy of them with its Authorization.
func (a *attempt) header() http.Header {
	base := a.auth.Header(a.key)
	if a.tok == "" {
		return base
	}
	h := make(http.Header, len(base)+1)
	for k, v := range base {
		h[k] = v // the values are shared: no one may write into a value's slice
	}
	h["Authorization"] = []string{"Bearer " + a.tok}
	return h
}

// secrets returns what must not leave a's reply or transport error: the
// endpoint's keys, or the token sent, and its headers' secret values
// (headerSecrets), then its URL's secret query values (querySecrets),
// appended to buf unless they are the Auth's alone.
func (a *attempt) secrets(buf []string) []string {
	inURL := extOf(a.slot.Ep).urlSecrets
	switch {
	case a.tok != "":
		buf = append(buf, a.tok)
	case len(inURL) == 0:
		return a.auth.Secrets()
	}
	buf = append(buf, a.auth.Secrets()...)
	return append(buf, inURL...)
}

// invalidate tells a Credential that implements TokenInvalidator that
// its token tok was rejected.
func invalidate(cred Credential, tok string) {
	if inv, ok := cred.(TokenInvalidator); ok {
		inv.Invalidate(tok)
	}
}

// credentialName describes a Credential for printed Endpoints: its type,
// never its value (whose own String might show a token).
func credentialName(c Credential) string {
	if c == nil {
		return ""
	}
	return fmt.Sprintf("%T", c)
}
