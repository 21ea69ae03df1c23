package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/amlpool/amlpool"
)

// The token sources of a pool file's endpoint: where an online endpoint's
// bearer token (an aml_token, or an Azure AD token for aad_token mode)
// comes from. Never the file itself. Each loses the white space around
// the token, and a leading "Bearer " (bearerless). Each refuses, rather
// than sends, a JWT whose "exp" is more than 5 minutes past (the clock
// skew Azure AD's validators allow: refuseExpired), with an error naming
// the field and the expiry: for "tokenEnv" and "tokenFile" the config's
// when it is loaded, then every call's; for "tokenCommand" a failed run.
//
//	"tokenEnv": "AML_TOKEN"        an environment variable, read once
//	"tokenFile": "/run/aml/token"  a file, read again whenever it changes
//	                               (another process keeps it fresh); one
//	                               missing or empty when the config is
//	                               loaded is an error, and while it is so
//	                               later, the token read before goes on
//	                               (fileToken)
//	"tokenCommand": ["az", "account", "get-access-token", "--resource",
//	                 "https://ml.azure.com", "--query", "accessToken", "-o", "tsv"]
//	                               a command printing the token, run again
//	                               after "tokenTTL" (default 10m) or a 401,
//	                               or sooner: a minute before a JWT's "exp";
//	                               killed after a minute. A JWT is used while
//	                               the next run is under way, and after it
//	                               failed (run again 30 s later), until 30 s
//	                               before its "exp"; such a failed run is
//	                               said on stderr, by score and bench
//	                               (warnTokenFailures).
//	                               Without a usable token, a failed run's
//	                               error is every call's for 1 s after it,
//	                               doubling with each failure in a row up
//	                               to 30 s: no run per call. A run
//	                               printing more than 1 MiB is killed and
//	                               fails

// commandTokenNow is the clock of the token commands a config makes: a
// test's may run faster.
var commandTokenNow = time.Now

// defaultTokenTTL is how long a token from a command is used.
const defaultTokenTTL = 10 * time.Minute

// tokenCommandTimeout bounds one run of a token command, and
// tokenCommandWaitDelay how long, once it is killed (or has exited), its
// output is waited for: a child it started (az runs python) may hold the
// output open after the command itself is gone.
const (
	tokenCommandTimeout   = time.Minute
	tokenCommandWaitDelay = time.Second
)

// tokenCommandMaxOutput caps what a token command may print on stdout, far
// above any token (a JWT is a few KB): a run that prints more is killed
// and fails, so that a runaway command cannot fill the memory.
const tokenCommandMaxOutput = 1 << 20

// tokenExpiryMargin is how long before a JWT's expiry (its "exp" claim) a
// command's token is replaced, and tokenMinLife how long one already that
// close to it is used even so: the command is not run for every call.
const (
	tokenExpiryMargin = time.Minute
	tokenMinLife      = 10 * time.Second
)

// tokenClockSkew is how long after a JWT's expiry (its "exp" claim) a
// token source still hands it out: this host's clock and the service's
// may differ, and Azure AD's token validators allow as much
// (Microsoft.IdentityModel's default ClockSkew, 5 minutes). A JWT expired
// for longer is refused here (refuseExpired), not sent to meet a 401 that
// would take its endpoint out of rotation and say only that the token is
// "missing, wrong or expired".
const tokenClockSkew = 5 * time.Minute

// refuseExpired returns the error of a token that is a JWT expiring at exp
// (zero: not a JWT with an "exp"), handed out at now, when it expired more
// than tokenClockSkew ago; nil otherwise. It names the expiry, never the
// token: the caller names its source.
func refuseExpired(exp, now time.Time) error {
	if exp.IsZero() || !now.After(exp.Add(tokenClockSkew)) {
		return nil
	}
	return fmt.Errorf(`the token is a JWT that expired at %s (its "exp"), %v ago; not sent`,
		exp.UTC().Format(time.RFC3339), now.Sub(exp).Round(time.Second))
}

// expiryOf returns tok's JWT expiry, zero when it has none (jwtExpiry).
func expiryOf(tok string) time.Time {
	exp, _ := jwtExpiry(tok)
	return exp
}

// nowOr returns now(), or time.Now() when now is nil.
func nowOr(now func() time.Time) time.Time {
	if now == nil {
		return time.Now()
	}
	return now()
}

// staticToken is a token read once, from the environment variable env.
// A JWT expired (refuseExpired) is refused: it is read once, so the
// refusal lasts until the variable is set anew and the config loaded.
type staticToken struct {
	tok, env string
	exp      time.Time        // the JWT's expiry; zero: none
	now      func() time.Time // nil: time.Now
}

func (t *staticToken) Token(context.Context) (string, error) {
	if err := refuseExpired(t.exp, nowOr(t.now)); err != nil {
		return "", fmt.Errorf(`"tokenEnv" %s: %w`, t.env, err)
	}
	return t.tok, nil
}

// fileToken reads its token from a file, again whenever the file's size or
// time changes, or after a 401. While the file cannot be read or is empty
// (another process rewriting it in place: truncated, then written), the
// token read before goes on, unless a 401 refused it or it is a JWT that
// expires within tokenUsableMargin. A JWT expired (refuseExpired), the
// file's as it is, is refused.
type fileToken struct {
	path string
	now  func() time.Time // nil: time.Now

	mu    sync.Mutex // guards the fields below
	tok   string
	exp   time.Time // tok's JWT expiry; zero: none
	mtime time.Time
	size  int64
}

func (f *fileToken) Token(context.Context) (string, error) {
	fi, err := os.Stat(f.path)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && f.tok != "" && fi.ModTime().Equal(f.mtime) && fi.Size() == f.size {
		return f.fresh()
	}
	tok := ""
	if err != nil {
		err = fmt.Errorf("token file: %w", err)
	} else {
		tok, err = f.read()
	}
	if err != nil {
		if f.tok != "" && f.usable() {
			return f.tok, nil
		}
		return "", err
	}
	f.tok, f.exp, f.mtime, f.size = tok, expiryOf(tok), fi.ModTime(), fi.Size()
	return f.fresh()
}

// fresh returns f.tok, the file's token as it is, unless it is a JWT
// expired (refuseExpired). f.mu is held.
func (f *fileToken) fresh() (string, error) {
	if err := refuseExpired(f.exp, nowOr(f.now)); err != nil {
		return "", fmt.Errorf(`"tokenFile" %s: %w`, f.path, err)
	}
	return f.tok, nil
}

// read reads the file's token.
func (f *fileToken) read() (string, error) {
	data, err := os.ReadFile(f.path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", f.path)
	}
	return bearerless(tok), nil
}

// bearerless returns tok, a token as a variable, a file or a command gives
// it (the white space around it dropped already), without a leading
// "Bearer " in any case (a value copied from an Authorization header, or
// printed so): amlpool adds the scheme itself, and "Bearer Bearer …" would
// meet a 401 that says nothing of why.
func bearerless(tok string) string {
	if f := strings.Fields(tok); len(f) > 1 && strings.EqualFold(f[0], "Bearer") && strings.HasPrefix(tok, f[0]) {
		return strings.TrimSpace(tok[len(f[0]):])
	}
	return tok
}

// usable reports whether f.tok may still be used when the file cannot be
// read: it may, unless it is a JWT that expires within tokenUsableMargin.
func (f *fileToken) usable() bool {
	exp, ok := jwtExpiry(f.tok)
	if !ok {
		return true // nothing says it is not; a 401 would
	}
	return nowOr(f.now).Before(exp.Add(-tokenUsableMargin))
}

// Invalidate makes the next Token read the file again.
func (f *fileToken) Invalidate(tok string) {
	f.mu.Lock()
	if f.tok == tok {
		f.tok = ""
	}
	f.mu.Unlock()
}

// commandToken runs a command for its token, one run for any number of
// callers, and keeps the token for ttl or until a 401, or, when the token
// is a JWT, until tokenExpiryMargin before it expires (jwtExpiry), if that
// comes first. A JWT still good then (up to tokenUsableMargin before it
// expires) goes on being handed out while the next run is under way, and
// for tokenRetryAfterFailure after a run that failed: no call waits for the
// command, or fails with it, while the token it has works. Such a failed
// run fails no call, so it is told to warn. A failed run is not followed by
// another at once, on every call: for tokenFailureBackoff after it,
// doubling with each failure in a row up to tokenMaxFailureBackoff, the
// callers that have no usable token get its error without a run.
type commandToken struct {
	argv    []string
	ttl     time.Duration
	timeout time.Duration // of one run; 0: tokenCommandTimeout
	now     func() time.Time
	run     singleflight.Group
	label   string       // the endpoint's, for warn
	warn    func(string) // hears of a failed run while the token in use goes on; nil: no one. Set before the first Token

	mu          sync.Mutex // guards the fields below
	tok         string
	expires     time.Time // when to run the command again
	usable      time.Time // until when tok may be handed out while a run is due: a JWT's expiry less tokenUsableMargin, else expires
	failed      error     // the last run's error, nil once one gave a token
	failures    int       // runs failed in a row
	failedUntil time.Time // no run for a caller without a usable token before then: it gets failed
}

// tokenUsableMargin is how long before a command's JWT expires it is no
// longer handed out, and tokenRetryAfterFailure how long after a failed
// run the command is run again while the token it has is still usable.
const (
	tokenUsableMargin      = 30 * time.Second
	tokenRetryAfterFailure = 30 * time.Second
)

// tokenFailureBackoff is how long after a failed run the callers that have
// no usable token get its error rather than a new run; it doubles with
// each failure in a row, up to tokenMaxFailureBackoff.
const (
	tokenFailureBackoff    = time.Second
	tokenMaxFailureBackoff = 30 * time.Second
)

func (c *commandToken) Token(ctx context.Context) (string, error) {
	now := c.now()
	c.mu.Lock()
	tok, fresh, usable := c.tok, now.Before(c.expires), now.Before(c.usable)
	if tok != "" && fresh {
		c.mu.Unlock()
		return tok, nil
	}
	if tok == "" || !usable {
		if err := c.backingOff(now); err != nil {
			c.mu.Unlock()
			return "", err
		}
	}
	c.mu.Unlock()
	ch := c.run.DoChan("", func() (any, error) {
		// A caller may join only after the run it saw due ended: its
		// token, or its error while the back-off lasts, is the answer.
		now := c.now()
		c.mu.Lock()
		if c.tok != "" && now.Before(c.expires) {
			tok := c.tok
			c.mu.Unlock()
			return tok, nil
		}
		if c.tok == "" || !now.Before(c.usable) {
			if err := c.backingOff(now); err != nil {
				c.mu.Unlock()
				return nil, err
			}
		}
		c.mu.Unlock()
		tok, err := c.runCommand(ctx)
		now = c.now()
		c.mu.Lock()
		if err != nil {
			c.failed, c.failures = err, c.failures+1
			c.failedUntil = now.Add(min(tokenFailureBackoff<<min(c.failures-1, 16), tokenMaxFailureBackoff))
			warning := ""
			if c.tok != "" && now.Before(c.usable) {
				c.expires = minTime(now.Add(tokenRetryAfterFailure), c.usable) // not at once: no run per call
				warning = c.failureWarning(err, now)
			}
			c.mu.Unlock()
			if warning != "" && c.warn != nil {
				c.warn(warning) // not under c.mu: calls go on while it writes
			}
			return nil, err
		}
		defer c.mu.Unlock()
		c.failed, c.failures = nil, 0
		expires, usable := now.Add(c.ttl), time.Time{}
		if exp, ok := jwtExpiry(tok); ok {
			expires = minTime(expires, exp.Add(-tokenExpiryMargin))
			expires = maxTime(expires, now.Add(tokenMinLife))
			usable = exp.Add(-tokenUsableMargin)
		}
		c.tok, c.expires, c.usable = tok, expires, maxTime(usable, expires)
		return tok, nil
	})
	if tok != "" && usable {
		return tok, nil // the run goes on behind
	}
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// backingOff returns, while a failed run's back-off lasts, its error,
// saying so: the error of a Token that has no usable token then. c.mu is
// held.
func (c *commandToken) backingOff(now time.Time) error {
	if c.failed == nil || !now.Before(c.failedUntil) {
		return nil
	}
	return fmt.Errorf("%w (runs failed in a row: %d; no new one for %v)", c.failed, c.failures, c.failedUntil.Sub(now).Round(time.Millisecond))
}

// failureWarning is what c.warn is told of a run that failed at now while
// the token in use goes on: no call fails of it, and without this no one
// would know until the token was no longer usable. It quotes none of the
// command's output, stderr included (commandError), and no token. c.mu is
// held.
func (c *commandToken) failureWarning(err error, now time.Time) string {
	var ce *commandError
	if errors.As(err, &ce) {
		err = ce.err
	}
	return fmt.Sprintf("%s: refreshing the token: %v; the token in use goes on until %s, the command is run again in %v",
		c.label, err, c.usable.UTC().Format("15:04:05 MST"), c.expires.Sub(now).Round(time.Second))
}

// warnTokenFailures makes the token commands of eps say their failed runs
// that fail no call (commandToken.failureWarning) through say, as the
// warnings of command ("score", "bench") are, after its name. Every
// command that loads a config's endpoints calls it before eps are used.
func warnTokenFailures(eps []amlpool.Endpoint, command string, say func(string)) {
	for _, ep := range eps {
		// A source a reload kept (keepTokenSources) has its warn already,
		// and may be in use: it is not written again.
		if c, ok := ep.Credential.(*commandToken); ok && c.warn == nil {
			c.warn = func(msg string) { say("amlpool " + command + ": " + msg) }
		}
	}
}

// commandError is the error of a run that failed, and the last line of
// the command's stderr (lastLine), which its text quotes and a warning
// does not.
type commandError struct {
	err    error
	stderr string
}

func (e *commandError) Error() string { return e.err.Error() + e.stderr }
func (e *commandError) Unwrap() error { return e.err }

// runCommand runs the command once and returns the token it printed. The
// run is not cut short by ctx, the ctx of the caller that started it:
// others may wait for it too. It lasts c.timeout at most, the wait for the
// output of a child it left behind included: a run that never ended would
// hold every later Token.
func (c *commandToken) runCommand(ctx context.Context) (string, error) {
	timeout := cmp.Or(c.timeout, tokenCommandTimeout)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	cmd := exec.CommandContext(rctx, c.argv[0], c.argv[1:]...)
	cmd.WaitDelay = tokenCommandWaitDelay
	var stderr tailBuffer // only its last line is shown
	stdout := &cappedBuffer{max: tokenCommandMaxOutput, over: cancel}
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	if err := cmd.Run(); err != nil {
		if stdout.exceeded { // its output is not quoted: it may hold a token
			return "", fmt.Errorf(`"tokenCommand" %s: printed more than %d MiB; want the token alone on one line; killed`, c.argv[0], tokenCommandMaxOutput>>20)
		}
		if rctx.Err() != nil {
			return "", &commandError{fmt.Errorf(`"tokenCommand" %s: no token after %v; killed`, c.argv[0], timeout), lastLine(stderr.String())}
		}
		return "", &commandError{fmt.Errorf(`"tokenCommand" %s: %w`, c.argv[0], err), lastLine(stderr.String())}
	}
	tok := strings.TrimSpace(stdout.buf.String())
	switch lines := len(strings.FieldsFunc(tok, func(r rune) bool { return r == '\r' || r == '\n' })); {
	case tok == "":
		return "", &commandError{fmt.Errorf(`"tokenCommand" %s: printed no token (exit status 0)`, c.argv[0]), lastLine(stderr.String())}
	case strings.ContainsAny(tok, "\r\n"):
		return "", fmt.Errorf(`"tokenCommand" %s: printed %d lines; want the token alone on one line (for az: --query accessToken -o tsv)`, c.argv[0], lines)
	}
	tok = bearerless(tok)
	if err := refuseExpired(expiryOf(tok), c.now()); err != nil {
		// A failed run: run again after the back-off (a stale cache, say).
		return "", fmt.Errorf(`"tokenCommand" %s: printed a token that is stale: %w`, c.argv[0], err)
	}
	return tok, nil
}

// cappedBuffer holds max bytes at most: a write past them fails, and the
// first such calls over, once. Its buffer is not embedded: io.Copy would
// call the buffer's ReadFrom, which no cap bounds.
type cappedBuffer struct {
	buf      bytes.Buffer
	max      int
	over     func()
	exceeded bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > b.max {
		if !b.exceeded {
			b.exceeded = true
			b.over()
		}
		return 0, errors.New("output over its cap")
	}
	return b.buf.Write(p)
}

// tailBuffer keeps the last tailKept bytes written to it, at most twice
// that in memory: a command that writes without end to stderr, of which an
// error shows the last line, cannot fill memory.
type tailBuffer struct{ b []byte }

const tailKept = 4 << 10

func (t *tailBuffer) Write(p []byte) (int, error) {
	if len(p) > tailKept {
		t.b = append(t.b[:0], p[len(p)-tailKept:]...)
		return len(p), nil
	}
	if len(t.b)+len(p) > 2*tailKept {
		t.b = append(t.b[:0], t.b[len(t.b)-(tailKept-len(p)):]...)
	}
	t.b = append(t.b, p...)
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// jwtExpiry returns the expiry of tok when it is a JWT with an "exp" claim
// (Azure AD and aml_token tokens are): the claims are read, the signature
// is not checked (the service does that); it only times the next run.
func jwtExpiry(tok string) (time.Time, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	exp, err := claims.Exp.Float64()
	if err != nil || exp <= 0 || exp > 1<<40 {
		return time.Time{}, false
	}
	return time.Unix(int64(exp), 0), true
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Invalidate makes the next Token run the command again.
func (c *commandToken) Invalidate(tok string) {
	c.mu.Lock()
	if c.tok == tok {
		c.tok = ""
	}
	c.mu.Unlock()
}

// lastLine is ": " and the last line of a command's stderr, at most 200
// bytes, for an error; "" when it wrote nothing.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	if s == "" {
		return ""
	}
	return ": " + strings.ToValidUTF8(s, "?")
}

// credential returns the endpoint's token source, nil when it takes a
// key; it fails when no source or several are given, naming the fields.
// The key itself is read by keySource.resolve.
func (e *endpointConfig) credential(label string, keys keySource) (amlpool.Credential, error) {
	var given []string
	for _, f := range []struct {
		set  bool
		name string
	}{{e.APIKeyEnv != "", "apiKeyEnv"}, {e.APIKeyFile != "", "apiKeyFile"}, {e.TokenEnv != "", "tokenEnv"}, {e.TokenFile != "", "tokenFile"}, {e.TokenCommand != nil, "tokenCommand"}} {
		if f.set {
			given = append(given, `"`+f.name+`"`)
		}
	}
	token := e.TokenEnv != "" || e.TokenFile != "" || e.TokenCommand != nil
	switch {
	case e.APIKey != nil:
		return nil, fmt.Errorf(`%s: "apiKey": keys do not go in the file; put the key in an environment variable or a file and name it in "apiKeyEnv" or "apiKeyFile"`, label)
	case e.Token != nil:
		return nil, fmt.Errorf(`%s: "token": tokens do not go in the file; name where it is: "tokenEnv", "tokenFile" or "tokenCommand"`, label)
	case len(given) == 0:
		return nil, fmt.Errorf(`%s: "apiKeyEnv": missing; name the environment variable (or with "apiKeyFile", the file) that holds this endpoint's key, or give a token source: "tokenEnv", "tokenFile" or "tokenCommand"`, label)
	case len(given) > 1:
		return nil, fmt.Errorf("%s: %s: give one of them", label, strings.Join(given, " and "))
	case e.TokenTTL != "" && e.TokenCommand == nil:
		return nil, fmt.Errorf(`%s: "tokenTTL": only for "tokenCommand"`, label)
	case token && (e.SecondaryKeyEnv != "" || e.SecondaryKeyFile != ""):
		return nil, fmt.Errorf(`%s: a second key goes with a key, not with a token source`, label)
	}
	switch {
	case !token:
		return nil, nil
	case e.TokenEnv != "":
		tok, err := keys.fromEnv("tokenEnv", e.TokenEnv)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		tok = bearerless(tok)
		st := &staticToken{tok: tok, env: e.TokenEnv, exp: expiryOf(tok)}
		if _, err := st.Token(context.Background()); err != nil {
			return nil, fmt.Errorf("%s: %w", label, err) // read once: it stays expired
		}
		return st, nil
	case e.TokenFile != "":
		// Read now, as a key file is: one that is empty or cannot be read
		// is the config's error, not that of every call (while it runs,
		// the token read before goes on instead: fileToken).
		// So is a JWT expired (refuseExpired): whatever keeps the file
		// fresh is not doing so.
		tok, err := keys.resolve("token", "", e.TokenFile, true)
		if err == nil {
			if err = refuseExpired(expiryOf(bearerless(tok)), time.Now()); err != nil {
				err = fmt.Errorf(`"tokenFile" %s: %w`, e.TokenFile, err)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		return &fileToken{path: e.TokenFile}, nil
	}
	if len(e.TokenCommand) == 0 || e.TokenCommand[0] == "" {
		return nil, fmt.Errorf(`%s: "tokenCommand": want the command and its arguments, e.g. ["az", "account", "get-access-token", ...]`, label)
	}
	ttl := defaultTokenTTL
	if e.TokenTTL != "" {
		d, err := time.ParseDuration(e.TokenTTL)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf(`%s: "tokenTTL": %q is not a positive duration such as "10m"`, label, e.TokenTTL)
		}
		ttl = d
	}
	return &commandToken{argv: append([]string(nil), e.TokenCommand...), ttl: ttl, now: commandTokenNow, label: label}, nil
}
