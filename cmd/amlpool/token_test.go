package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

func TestFileToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte("tok-1\n"), 0o600))
	f := &fileToken{path: path}
	tok, err := f.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "tok-1", tok)

	require.NoError(t, os.WriteFile(path, []byte("tok-22\n"), 0o600)) // another size: read again
	tok, err = f.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "tok-22", tok)

	require.NoError(t, os.WriteFile(path, []byte("tok-33\n"), 0o600))
	require.NoError(t, os.Chtimes(path, time.Time{}, time.Unix(1, 0))) // the same size: the time tells
	tok, err = f.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "tok-33", tok)

	require.NoError(t, os.WriteFile(path, []byte("tok-44\n"), 0o600))
	require.NoError(t, os.Chtimes(path, time.Time{}, time.Unix(1, 0))) // neither: cached
	tok, _ = f.Token(t.Context())
	assert.Equal(t, "tok-33", tok)
	f.Invalidate("tok-33") // a 401: read again
	tok, _ = f.Token(t.Context())
	assert.Equal(t, "tok-44", tok)

	f.Invalidate("tok-44") // refused: not used again, whatever the file
	require.NoError(t, os.WriteFile(path, []byte(" \n"), 0o600))
	_, err = f.Token(t.Context())
	require.ErrorContains(t, err, "is empty")
	require.NoError(t, os.Remove(path))
	_, err = f.Token(t.Context())
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestFileTokenBeingRewritten: while another process rewrites the file in
// place (truncated, then written) or replaces it (removed, then created),
// calls go on with the token read before rather than fail, and many at
// once: under load, every endpoint reading the file would fail those
// attempts together, and a run of such failures ejects them. A JWT that
// expires within 30 s is not used so; nor is a token a 401 refused.
func TestFileTokenBeingRewritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte("tok-1\n"), 0o600))
	f := &fileToken{path: path}
	tok, err := f.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "tok-1", tok)

	require.NoError(t, os.WriteFile(path, nil, 0o600)) // truncated
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			tok, err := f.Token(t.Context())
			assert.NoError(t, err)
			assert.Equal(t, "tok-1", tok)
		})
	}
	wg.Wait()
	require.NoError(t, os.Remove(path)) // replaced: not there for a moment
	tok, err = f.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "tok-1", tok)
	require.NoError(t, os.WriteFile(path, []byte("tok-2\n"), 0o600)) // written
	tok, err = f.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "tok-2", tok)

	enc := base64.RawURLEncoding.EncodeToString
	jwt := enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(`{"exp":1800003600}`)) + ".c2ln"
	now := time.Unix(1_800_003_600, 0).Add(-tokenUsableMargin - time.Second)
	f = &fileToken{path: path, now: func() time.Time { return now }}
	require.NoError(t, os.WriteFile(path, []byte(jwt), 0o600))
	tok, err = f.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, jwt, tok)
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	tok, err = f.Token(t.Context())
	require.NoError(t, err, "31 s before its exp")
	assert.Equal(t, jwt, tok)
	now = now.Add(time.Second)
	_, err = f.Token(t.Context())
	require.ErrorContains(t, err, "is empty", "30 s before its exp")
}

// TestCommandToken: one run for many callers, kept for its TTL, run again
// after it or after a 401; a failing command's error says why, with no token.
func TestCommandToken(t *testing.T) {
	dir := t.TempDir()
	script := `n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; sleep 0.05; echo tok-$n`
	now := time.Unix(0, 0)
	var mu sync.Mutex
	c := &commandToken{argv: []string{"sh", "-c", "cd " + dir + " && " + script}, ttl: time.Minute,
		now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			tok, err := c.Token(context.Background())
			assert.NoError(t, err)
			assert.Equal(t, "tok-1", tok)
		})
	}
	wg.Wait()
	mu.Lock()
	now = now.Add(time.Minute - time.Second)
	mu.Unlock()
	tok, _ := c.Token(t.Context())
	assert.Equal(t, "tok-1", tok, "within its TTL")
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	tok, _ = c.Token(t.Context())
	assert.Equal(t, "tok-2", tok, "past its TTL")
	c.Invalidate("tok-1")
	tok, _ = c.Token(t.Context())
	assert.Equal(t, "tok-2", tok, "another token's 401 changes nothing")
	c.Invalidate("tok-2")
	tok, _ = c.Token(t.Context())
	assert.Equal(t, "tok-3", tok, "a 401 runs it again")

	bad := &commandToken{argv: []string{"sh", "-c", "echo secret-partial; echo 'ERROR: Please run az login' >&2; exit 1"}, ttl: time.Minute, now: time.Now}
	_, err := bad.Token(t.Context())
	require.ErrorContains(t, err, `"tokenCommand" sh: exit status 1: ERROR: Please run az login`)
	assert.NotContains(t, err.Error(), "secret-partial")
	two := &commandToken{argv: []string{"sh", "-c", "echo secret-a; echo secret-b"}, ttl: time.Minute, now: time.Now}
	_, err = two.Token(t.Context())
	require.EqualError(t, err, `"tokenCommand" sh: printed 2 lines; want the token alone on one line (for az: --query accessToken -o tsv)`)
}

// settleRun waits for c's run in flight, if any, to end, its token stored.
func settleRun(c *commandToken) {
	<-c.run.DoChan("", func() (any, error) { return nil, nil })
}

// TestCommandTokenPrintsNothing: a command that exits 0 and prints no
// token (only white space) fails, naming the field and saying so, with the
// last line of its stderr.
func TestCommandTokenPrintsNothing(t *testing.T) {
	c := &commandToken{argv: []string{"sh", "-c", "printf ' \\r\\n\\n'; echo 'WARNING: no subscription' >&2"}, ttl: time.Minute, now: time.Now}
	_, err := c.Token(t.Context())
	require.EqualError(t, err, `"tokenCommand" sh: printed no token (exit status 0): WARNING: no subscription`)
}

// TestCommandTokenOutputCap: a command that prints more than
// tokenCommandMaxOutput, on one line or on many, fails with an error that
// names the field and the cap and quotes none of the output; what it
// printed is not kept past the cap.
func TestCommandTokenOutputCap(t *testing.T) {
	for _, script := range []string{
		"head -c 2097152 /dev/zero | tr '\\0' s", // one 2 MiB line of s
		"yes secret | head -c 2097152",           // 2 MiB of lines
	} {
		t.Run(script, func(t *testing.T) {
			c := &commandToken{argv: []string{"sh", "-c", script}, ttl: time.Minute, now: time.Now}
			tok, err := c.Token(t.Context())
			require.EqualError(t, err, `"tokenCommand" sh: printed more than 1 MiB; want the token alone on one line; killed`)
			assert.Empty(t, tok)
		})
	}
}

// TestCommandTokenTimeout: a run that passes its timeout is killed, and
// ends even when a child it started still holds its output open (az's
// python, a background job): the callers waiting for it get an error
// saying it timed out, and the next call (after the failure's back-off)
// runs the command again instead of waiting on the stuck run for ever.
func TestCommandTokenTimeout(t *testing.T) {
	dir := t.TempDir()
	// The first run leaves a child that holds stdout for 30 s, and hangs;
	// the second prints a token.
	script := `if [ -e ran ]; then echo tok-2; exit 0; fi; touch ran; sleep 30 & echo $! > child; echo 'waiting for az login' >&2; wait`
	t.Cleanup(func() { // the child, left behind by the killed run
		if b, err := os.ReadFile(filepath.Join(dir, "child")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				if p, err := os.FindProcess(pid); err == nil {
					_ = p.Kill()
				}
			}
		}
	})
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	c := &commandToken{argv: []string{"sh", "-c", "cd " + dir + " && " + script}, ttl: time.Minute,
		// Long enough for sh to start and write its line on a loaded
		// machine: the first run takes all of it, the second a moment.
		timeout: 2 * time.Second, now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := c.Token(ctx)
	require.NotErrorIs(t, err, context.DeadlineExceeded, "the run never ended")
	require.EqualError(t, err, `"tokenCommand" sh: no token after 2s; killed: waiting for az login`)
	mu.Lock()
	now = now.Add(tokenFailureBackoff)
	mu.Unlock()
	tok, err := c.Token(ctx)
	require.NoError(t, err)
	assert.Equal(t, "tok-2", tok)
}

func TestParseConfigOnline(t *testing.T) {
	getenv := func(name string) string {
		return map[string]string{"K": "key-value", "T": "token-value"}[name]
	}
	tokFile := filepath.Join(t.TempDir(), "tok")
	require.NoError(t, os.WriteFile(tokFile, []byte("t"), 0o600))
	_, eps, err := parseConfig([]byte(`{"endpoints":[
		{"name":"blue","url":"https://e.westeurope.inference.ml.azure.com/score","kind":"online","maxConcurrentCalls":300,
		 "tokenEnv":"T","header":{"azureml-model-deployment":"blue"}},
		{"name":"green","url":"https://f.westeurope.inference.ml.azure.com/score","kind":"online","maxConcurrentCalls":8,"tokenFile":"`+tokFile+`"},
		{"name":"red","url":"https://g.westeurope.inference.ml.azure.com/score","kind":"online","maxConcurrentCalls":8,"tokenCommand":["az","account","get-access-token"],"tokenTTL":"5m"},
		{"name":"keyed","url":"https://h.westeurope.inference.ml.azure.com/score","kind":"online","maxConcurrentCalls":8,"apiKeyEnv":"K"}]}`), keySource{getenv: getenv, readFile: os.ReadFile})
	require.NoError(t, err)
	require.Len(t, eps, 4)
	assert.Equal(t, amlpool.Online, eps[0].Kind)
	assert.Equal(t, "blue", eps[0].Header.Get("azureml-model-deployment"))
	tok, err := eps[0].Credential.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "token-value", tok)
	assert.Empty(t, eps[0].APIKey)
	assert.IsType(t, &fileToken{}, eps[1].Credential)
	assert.Equal(t, 5*time.Minute, eps[2].Credential.(*commandToken).ttl)
	assert.Equal(t, "key-value", eps[3].APIKey)
	assert.Nil(t, eps[3].Credential)
	c, err := amlpool.New(eps)
	require.NoError(t, err)
	require.NoError(t, c.Close())

	for _, tt := range []struct{ file, want string }{
		{`{"endpoints":[{"url":"https://e/score","kind":"online","apiKeyEnv":"K","tokenEnv":"T"}]}`, `"apiKeyEnv" and "tokenEnv": give one of them`},
		{`{"endpoints":[{"url":"https://e/score","kind":"online","tokenEnv":"NONE"}]}`, `"tokenEnv": environment variable NONE is not set`},
		{`{"endpoints":[{"url":"https://e/score","kind":"online","tokenFile":"/nonexistent/tok"}]}`, `"tokenFile": open /nonexistent/tok`},
		{`{"endpoints":[{"url":"https://e/score","kind":"online","tokenCommand":[]}]}`, `"tokenCommand": want the command`},
		{`{"endpoints":[{"url":"https://e/score","kind":"online","tokenCommand":["az"],"tokenTTL":"soon"}]}`, `"tokenTTL": "soon" is not a positive duration`},
		{`{"endpoints":[{"url":"https://e/score","kind":"online","tokenEnv":"T","tokenTTL":"1m"}]}`, `"tokenTTL": only for "tokenCommand"`},
		{`{"endpoints":[{"url":"https://e/score","token":"token-value"}]}`, `"token": tokens do not go in the file`},
		{`{"endpoints":[{"url":"https://e/score","kind":"batch","apiKeyEnv":"K"}]}`, `endpoints[0]: "kind": "batch": want "classic" or "online"`},
		{`{"endpoints":[{"url":"https://e/score","apiKeyEnv":"K","header":{"x-a":"1","X-A":"2"}}]}`, `"header": X-A given twice`},
	} {
		_, _, err := parseConfig([]byte(tt.file), keySource{getenv: getenv, readFile: os.ReadFile})
		require.Error(t, err, tt.file)
		assert.Contains(t, err.Error(), tt.want, tt.file)
		assert.NotContains(t, err.Error(), "token-value")
	}

	cfg, eps, err := parseConfig([]byte(`{"endpoints":[{"name":"blue","url":"https://e/score","kind":"online","tokenEnv":"T","header":{"Host":"x"}}]}`), keySource{getenv: getenv, readFile: os.ReadFile})
	require.NoError(t, err)
	_, err = newClient("pool.json", cfg, eps)
	require.ErrorContains(t, err, `pool.json: endpoints[0] (blue): "maxConcurrentCalls": required for an online endpoint`)
	eps[0].MaxConcurrentCalls = 4
	_, err = newClient("pool.json", cfg, eps)
	require.ErrorContains(t, err, `pool.json: endpoints[0] (blue): "header": Host cannot be set`)
}

// A command's token that is a JWT is replaced a minute before its "exp",
// when that comes before tokenTTL; one already that close is used for
// tokenMinLife, not run again on every call; a token that is not a JWT
// (or has no exp) keeps tokenTTL.
func TestCommandTokenJWTExpiry(t *testing.T) {
	jwt := func(claims string) string {
		enc := base64.RawURLEncoding.EncodeToString
		return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(claims)) + ".c2ln"
	}
	start := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name, tok string
		life      time.Duration // how long it is used before the command runs again
	}{
		{"exp before the TTL", jwt(`{"exp":1800000300,"aud":"https://ml.azure.com"}`), 4 * time.Minute},
		{"exp after the TTL", jwt(`{"exp":1800003600}`), 10 * time.Minute},
		{"exp within the margin", jwt(`{"exp":1800000030}`), tokenMinLife},
		{"no exp", jwt(`{"aud":"x"}`), 10 * time.Minute},
		{"not a JWT", "opaque-token", 10 * time.Minute},
		{"exp not a number", jwt(`{"exp":"soon"}`), 10 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			script := `n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo ` + tc.tok
			var mu sync.Mutex
			now := start
			c := &commandToken{argv: []string{"sh", "-c", "cd " + dir + " && " + script}, ttl: defaultTokenTTL,
				now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }}
			runs := func() string {
				b, err := os.ReadFile(filepath.Join(dir, "count"))
				require.NoError(t, err)
				return strings.TrimSpace(string(b))
			}
			tok, err := c.Token(t.Context())
			require.NoError(t, err)
			assert.Equal(t, tc.tok, tok)
			mu.Lock()
			now = start.Add(tc.life - time.Second)
			mu.Unlock()
			_, err = c.Token(t.Context())
			require.NoError(t, err)
			assert.Equal(t, "1", runs(), "still in use")
			mu.Lock()
			now = start.Add(tc.life)
			mu.Unlock()
			_, err = c.Token(t.Context())
			require.NoError(t, err)
			settleRun(c) // a JWT still usable is handed out while the run goes on
			assert.Equal(t, "2", runs(), "replaced")
		})
	}
}

// TestCommandTokenKeepsAUsableJWT: once a JWT is due for replacement
// (tokenTTL), calls go on with it, without waiting, while the command runs;
// when the run fails, they go on with it still, and the command is run
// again 30 s later, not on every call, until 30 s before the JWT expires:
// from then on calls wait for the command and get its error. A token that
// is not a JWT is not used past its TTL.
func TestCommandTokenKeepsAUsableJWT(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	start := time.Unix(1_800_000_000, 0)
	jwt := enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(`{"exp":1800003600}`)) + ".c2ln" // start + 1h
	for _, tok := range []string{jwt, "opaque-token"} {
		dir := t.TempDir()
		script := `n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; ` +
			`if [ $n -gt 1 ]; then echo 'ERROR: AADSTS50173: the grant has expired' >&2; exit 1; fi; echo ` + tok
		var mu sync.Mutex
		now := start
		set := func(d time.Duration) { mu.Lock(); now = start.Add(d); mu.Unlock() }
		c := &commandToken{argv: []string{"sh", "-c", "cd " + dir + " && " + script}, ttl: defaultTokenTTL,
			now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }}
		runs := func() string {
			b, err := os.ReadFile(filepath.Join(dir, "count"))
			require.NoError(t, err)
			return strings.TrimSpace(string(b))
		}
		got, err := c.Token(t.Context())
		require.NoError(t, err)
		require.Equal(t, tok, got)
		set(defaultTokenTTL)
		got, err = c.Token(t.Context())
		if tok != jwt {
			require.ErrorContains(t, err, `"tokenCommand" sh: exit status 1: ERROR: AADSTS50173`, "not a JWT: not used past its TTL")
			continue
		}
		require.NoError(t, err, "the JWT is good for 50 minutes more")
		assert.Equal(t, jwt, got)
		settleRun(c)
		assert.Equal(t, "2", runs())
		for range 10 {
			got, err = c.Token(t.Context())
			require.NoError(t, err)
			assert.Equal(t, jwt, got)
			settleRun(c)
		}
		assert.Equal(t, "2", runs(), "not run again within 30 s of the failure")
		set(defaultTokenTTL + tokenRetryAfterFailure)
		got, err = c.Token(t.Context())
		require.NoError(t, err)
		assert.Equal(t, jwt, got)
		settleRun(c)
		assert.Equal(t, "3", runs(), "run again 30 s after the failure")
		set(time.Hour - tokenUsableMargin)
		_, err = c.Token(t.Context())
		require.ErrorContains(t, err, `"tokenCommand" sh: exit status 1: ERROR: AADSTS50173`, "too close to its expiry")
	}
}

// jwtExpiry never fails on any token: a token it cannot read keeps the
// TTL; an "exp" it reads is the one a JWT was made with.
func FuzzJWTExpiry(f *testing.F) {
	enc := base64.RawURLEncoding.EncodeToString
	f.Add("opaque", int64(0))
	f.Add(enc([]byte(`{"typ":"JWT"}`))+"."+enc([]byte(`{"exp":1800000300}`))+".sig", int64(1_800_000_300))
	f.Add("a.b.c", int64(-1))
	f.Add("..", int64(1<<41))
	f.Fuzz(func(t *testing.T, tok string, exp int64) {
		if at, ok := jwtExpiry(tok); ok && (at.Unix() <= 0 || at.Unix() > 1<<40) {
			t.Fatalf("jwtExpiry(%q) = %v: out of range", tok, at)
		}
		sub, err := json.Marshal(tok)
		if err != nil {
			t.Fatal(err)
		}
		made := enc([]byte(`{"typ":"JWT"}`)) + "." + enc(fmt.Appendf(nil, `{"exp":%d,"sub":%s}`, exp, sub)) + ".sig"
		at, ok := jwtExpiry(made)
		if want := exp > 0 && exp <= 1<<40; ok != want || (ok && at.Unix() != exp) {
			t.Fatalf("exp %d: got %v, %v", exp, at, ok)
		}
	})
}

func TestTailBufferKeepsTheEnd(t *testing.T) {
	var tb tailBuffer
	line := []byte(strings.Repeat("x", 99) + "\n")
	for range 20000 { // 2 MB, in writes smaller and larger than what is kept
		_, _ = tb.Write(line)
	}
	_, _ = tb.Write(bytes.Repeat([]byte("y"), 3*tailKept))
	_, _ = tb.Write([]byte("\nlast words\n"))
	require.LessOrEqual(t, len(tb.b), 2*tailKept, "kept")
	require.LessOrEqual(t, cap(tb.b), 3*tailKept, "kept in memory")
	require.True(t, strings.HasSuffix(tb.String(), "\nlast words\n"))
	require.Equal(t, ": last words", lastLine(tb.String()))
}

// TestCommandTokenWarnsOfAFailedBackgroundRun: a run that fails while the
// JWT in use goes on fails no call, so it is said where the command's
// warnings go (warnTokenFailures), naming the endpoint and the command,
// once per failed run (run again 30 s later, not per call), without the
// command's output, stderr included, or the token. A failed run that calls
// wait for, which fails them, is not said.
func TestCommandTokenWarnsOfAFailedBackgroundRun(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	start := time.Unix(1_800_000_000, 0)
	jwt := enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(`{"exp":1800003600}`)) + ".c2ln" // start + 1h
	dir := t.TempDir()
	script := `cd ` + dir + ` && n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; ` +
		`if [ $n -gt 1 ]; then echo partial-stdout; echo 'ERROR: stderr-secret' >&2; exit 3; fi; echo ` + jwt
	argv, err := json.Marshal([]string{"sh", "-c", script})
	require.NoError(t, err)
	_, eps, err := parseConfig([]byte(`{"endpoints":[{"name":"blue","url":"https://e.westeurope.inference.ml.azure.com/score",`+
		`"kind":"online","maxConcurrentCalls":4,"tokenCommand":`+string(argv)+`}]}`), keySource{getenv: func(string) string { return "" }, readFile: os.ReadFile})
	require.NoError(t, err)
	var mu sync.Mutex
	var said []string
	warnTokenFailures(eps, "score", func(msg string) { mu.Lock(); said = append(said, msg); mu.Unlock() })
	c := eps[0].Credential.(*commandToken)
	now := start
	c.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	set := func(d time.Duration) { mu.Lock(); now = start.Add(d); mu.Unlock() }
	saidNow := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(said) }

	got, err := c.Token(t.Context())
	require.NoError(t, err)
	require.Equal(t, jwt, got)
	assert.Empty(t, saidNow())
	set(defaultTokenTTL)
	for range 10 {
		got, err = c.Token(t.Context())
		require.NoError(t, err)
		assert.Equal(t, jwt, got)
		settleRun(c)
	}
	want := `amlpool score: endpoints[0] (blue): refreshing the token: "tokenCommand" sh: exit status 3; ` +
		`the token in use goes on until 08:59:30 UTC, the command is run again in 30s`
	assert.Equal(t, []string{want}, saidNow(), "one failed run, one warning")
	set(defaultTokenTTL + tokenRetryAfterFailure)
	_, err = c.Token(t.Context())
	require.NoError(t, err)
	settleRun(c)
	assert.Equal(t, []string{want, want}, saidNow(), "the next failed run, 30 s later")

	set(time.Hour - tokenUsableMargin) // the JWT is no longer used: calls wait for the run and fail
	_, err = c.Token(t.Context())
	require.ErrorContains(t, err, "stderr-secret", "the calls' error quotes stderr")
	assert.Len(t, saidNow(), 2, "a run that fails calls is not said")
	for _, msg := range saidNow() {
		for _, secret := range []string{"stderr-secret", "partial-stdout", jwt} {
			assert.NotContains(t, msg, secret)
		}
	}
}

// TestTokenFileReadAtLoad: a "tokenFile" is read when the config is
// loaded (at the start, and at each SIGHUP reload), as a key file is: one
// that is empty, holds only white space, or cannot be read is an error
// naming the endpoint, the field and the file, not a run whose every call
// fails. One holding a token is used, its line end dropped.
func TestTokenFileReadAtLoad(t *testing.T) {
	dir := t.TempDir()
	file := func(name, text string) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
		return path
	}
	load := func(path string) ([]amlpool.Endpoint, error) {
		_, eps, err := parseConfig([]byte(`{"endpoints":[{"name":"blue","url":"https://e.westeurope.inference.ml.azure.com/score",`+
			`"kind":"online","maxConcurrentCalls":4,"tokenFile":"`+path+`"}]}`), keySource{getenv: func(string) string { return "" }, readFile: os.ReadFile})
		return eps, err
	}
	for _, tc := range []struct{ name, path, want string }{
		{"empty", file("empty", ""), `endpoints[0] (blue): "tokenFile": ` + filepath.Join(dir, "empty") + ` is empty`},
		{"white space", file("blank", " \r\n"), `endpoints[0] (blue): "tokenFile": ` + filepath.Join(dir, "blank") + ` is empty`},
		{"a directory", dir, `endpoints[0] (blue): "tokenFile": read ` + dir + `: is a directory`},
		{"missing", filepath.Join(dir, "none"), `endpoints[0] (blue): "tokenFile": open ` + filepath.Join(dir, "none") + `: no such file or directory`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(tc.path)
			require.EqualError(t, err, tc.want)
		})
	}
	eps, err := load(file("tok", "tok-1\r\n"))
	require.NoError(t, err)
	tok, err := eps[0].Credential.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "tok-1", tok)
}

// TestTokenBearerPrefixDropped: a token given with its scheme, "Bearer "
// in any case (a value copied from an Authorization header, or printed
// so), loses it, from an environment variable, a file or a command:
// amlpool adds its own, and "Bearer Bearer …" would meet a 401 that says
// nothing of why.
func TestTokenBearerPrefixDropped(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "tok")
	require.NoError(t, os.WriteFile(tokFile, []byte("Bearer tok-file\r\n"), 0o600))
	getenv := func(name string) string { return map[string]string{"T": "bearer  tok-env\n"}[name] }
	_, eps, err := parseConfig([]byte(`{"endpoints":[
		{"name":"env","url":"https://e.westeurope.inference.ml.azure.com/score","kind":"online","maxConcurrentCalls":4,"tokenEnv":"T"},
		{"name":"file","url":"https://f.westeurope.inference.ml.azure.com/score","kind":"online","maxConcurrentCalls":4,"tokenFile":"`+tokFile+`"},
		{"name":"command","url":"https://g.westeurope.inference.ml.azure.com/score","kind":"online","maxConcurrentCalls":4,
		 "tokenCommand":["sh","-c","printf 'BEARER\\ttok-command\\n'"]}]}`), keySource{getenv: getenv, readFile: os.ReadFile})
	require.NoError(t, err)
	for i, want := range []string{"tok-env", "tok-file", "tok-command"} {
		tok, err := eps[i].Credential.Token(t.Context())
		require.NoError(t, err, want)
		assert.Equal(t, want, tok)
	}
	assert.Equal(t, "Bearerish-token", bearerless("Bearerish-token"), "a token that only starts like the scheme keeps it")
}

// TestCommandTokenFailureBackoff: while the command fails and there is no
// usable token, calls do not each run it again: for 1 s after a failed run,
// doubling with each failure in a row, callers get its error, saying so,
// without a run; the first after it runs the command again, and a run
// that prints a token ends the back-off.
func TestCommandTokenFailureBackoff(t *testing.T) {
	dir := t.TempDir()
	script := `n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; ` +
		`if [ -e ok ]; then echo tok-$n; exit 0; fi; echo 'ERROR: Please run az login' >&2; exit 1`
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	c := &commandToken{argv: []string{"sh", "-c", "cd " + dir + " && " + script}, ttl: time.Minute,
		now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }}
	runs := func() string {
		b, err := os.ReadFile(filepath.Join(dir, "count"))
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	}
	for i, backoff := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		_, err := c.Token(t.Context())
		require.EqualError(t, err, `"tokenCommand" sh: exit status 1: ERROR: Please run az login`)
		advance(backoff - time.Millisecond)
		for range 20 {
			_, err := c.Token(t.Context())
			require.EqualError(t, err, `"tokenCommand" sh: exit status 1: ERROR: Please run az login (runs failed in a row: `+strconv.Itoa(i+1)+`; no new one for 1ms)`)
		}
		assert.Equal(t, strconv.Itoa(i+1), runs(), "no run within the back-off of %v", backoff)
		advance(time.Millisecond)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ok"), nil, 0o600))
	tok, err := c.Token(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "tok-4", tok)
	require.NoError(t, os.Remove(filepath.Join(dir, "ok")))
	c.Invalidate("tok-4")
	_, err = c.Token(t.Context())
	require.Error(t, err)
	advance(time.Second)
	_, err = c.Token(t.Context())
	require.Error(t, err, "the run of failures starts again after a token: 1 s")
	assert.Equal(t, "6", runs())
}

// jwtExpiring returns a JWT (unsigned: only its claims are read) whose
// "exp" is exp.
func jwtExpiring(exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc(fmt.Appendf(nil, `{"exp":%d}`, exp.Unix())) + ".c2ln"
}

// TestExpiredJWTRefused: a token that is a JWT expired for longer than
// tokenClockSkew is refused before it is sent, by every source, with an
// error naming the source and the expiry and never the token; one expired
// within the skew, and a token that is not a JWT, go as before. A
// tokenEnv or tokenFile expired when the config is loaded is the config's
// error.
func TestExpiredJWTRefused(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	expired := jwtExpiring(start.Add(-tokenClockSkew - time.Second))
	noError := func(t *testing.T, tok string, err error, want string) {
		t.Helper()
		require.NoError(t, err)
		assert.Equal(t, want, tok)
	}
	refused := func(t *testing.T, err error, source string, exp time.Time) {
		t.Helper()
		require.Error(t, err)
		assert.Contains(t, err.Error(), source)
		assert.Contains(t, err.Error(), `the token is a JWT that expired at `+exp.UTC().Format(time.RFC3339))
		assert.NotContains(t, err.Error(), expired)
		assert.NotContains(t, err.Error(), strings.Split(expired, ".")[1])
	}

	t.Run("tokenEnv", func(t *testing.T) {
		now := start
		st := &staticToken{tok: expired, env: "AML_TOKEN", exp: expiryOf(expired), now: func() time.Time { return now }}
		_, err := st.Token(t.Context())
		refused(t, err, `"tokenEnv" AML_TOKEN: `, start.Add(-tokenClockSkew-time.Second))
		assert.Contains(t, err.Error(), "5m1s ago")
		now = start.Add(-time.Second) // within the skew
		tok, err := st.Token(t.Context())
		noError(t, tok, err, expired)

		stale := jwtExpiring(time.Now().Add(-time.Hour))
		for tok, want := range map[string]string{stale: `endpoints[0]: "tokenEnv" AML_TOKEN: the token is a JWT that expired at `, "opaque": ""} {
			_, eps, err := parseConfig([]byte(`{"endpoints":[{"url":"https://e/score","kind":"online","maxConcurrentCalls":4,"tokenEnv":"AML_TOKEN"}]}`),
				keySource{getenv: func(string) string { return tok }, readFile: os.ReadFile})
			if want == "" {
				require.NoError(t, err)
				got, err := eps[0].Credential.Token(t.Context())
				noError(t, got, err, tok)
				continue
			}
			require.ErrorContains(t, err, want)
			assert.NotContains(t, err.Error(), tok)
		}
	})

	t.Run("tokenFile", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "token")
		good := jwtExpiring(start.Add(time.Hour))
		require.NoError(t, os.WriteFile(path, []byte(good), 0o600))
		now := start
		f := &fileToken{path: path, now: func() time.Time { return now }}
		tok, err := f.Token(t.Context())
		noError(t, tok, err, good)
		require.NoError(t, os.WriteFile(path, []byte(expired+"\n"), 0o600)) // rewritten stale
		_, err = f.Token(t.Context())
		refused(t, err, `"tokenFile" `+path+`: `, start.Add(-tokenClockSkew-time.Second))
		_, err = f.Token(t.Context()) // cached, refused as well
		refused(t, err, `"tokenFile" `+path+`: `, start.Add(-tokenClockSkew-time.Second))

		require.NoError(t, os.WriteFile(path, []byte(good), 0o600))
		tok, err = f.Token(t.Context())
		noError(t, tok, err, good)
		now = start.Add(time.Hour + tokenClockSkew) // the file is no longer kept fresh: within the skew
		tok, err = f.Token(t.Context())
		noError(t, tok, err, good)
		now = now.Add(time.Second) // past it
		_, err = f.Token(t.Context())
		refused(t, err, `"tokenFile" `+path+`: `, start.Add(time.Hour))

		stale := jwtExpiring(time.Now().Add(-time.Hour))
		require.NoError(t, os.WriteFile(path, []byte(stale), 0o600))
		_, _, err = parseConfig([]byte(`{"endpoints":[{"url":"https://e/score","kind":"online","maxConcurrentCalls":4,"tokenFile":"`+path+`"}]}`),
			keySource{getenv: func(string) string { return "" }, readFile: os.ReadFile})
		require.ErrorContains(t, err, `endpoints[0]: "tokenFile" `+path+`: the token is a JWT that expired at `)
		assert.NotContains(t, err.Error(), stale)
	})

	t.Run("tokenCommand", func(t *testing.T) {
		// The first run prints a stale token (a cache not yet refreshed),
		// the next a fresh one: it is run again after the back-off.
		good := jwtExpiring(start.Add(time.Hour))
		dir := t.TempDir()
		script := `cd ` + dir + ` && n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; ` +
			`if [ $n -eq 1 ]; then echo ` + expired + `; else echo ` + good + `; fi`
		var mu sync.Mutex
		now := start
		c := &commandToken{argv: []string{"sh", "-c", script}, ttl: defaultTokenTTL,
			now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }}
		runs := func() string { b, _ := os.ReadFile(filepath.Join(dir, "count")); return strings.TrimSpace(string(b)) }
		_, err := c.Token(t.Context())
		refused(t, err, `"tokenCommand" sh: `, start.Add(-tokenClockSkew-time.Second))
		_, err = c.Token(t.Context())
		refused(t, err, `"tokenCommand" sh: `, start.Add(-tokenClockSkew-time.Second))
		assert.Contains(t, err.Error(), "runs failed in a row: 1")
		assert.Equal(t, "1", runs(), "no run per call during the back-off")
		mu.Lock()
		now = now.Add(tokenFailureBackoff)
		mu.Unlock()
		tok, err := c.Token(t.Context())
		noError(t, tok, err, good)
		assert.Equal(t, "2", runs())
	})
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestBenchWarnsOfAFailedBackgroundRun: bench says a token command's failed
// run that fails no call on stderr, as score does (warnTokenFailures),
// under its own name, quoting neither the command's output nor the token.
func TestBenchWarnsOfAFailedBackgroundRun(t *testing.T) {
	dir := t.TempDir()
	start := time.Unix(1_800_000_000, 0)
	jwt := jwtExpiring(start.Add(time.Hour))
	// The token commands' clock goes a second forward each time it is
	// read: the JWT is due for a run (tokenMinLife) after a few calls.
	var ticks atomic.Int64
	defer func(now func() time.Time) { commandTokenNow = now }(commandTokenNow)
	commandTokenNow = func() time.Time { return start.Add(time.Duration(ticks.Add(1)) * time.Second) }
	srv := amltest.NewServer(amltest.Config{Name: "blue", Kind: amlpool.Online, MaxConcurrentCalls: 4,
		AcceptToken: func(tok string) bool { return tok == jwt }})
	t.Cleanup(srv.Close)
	// The first run gives the JWT, the later ones fail.
	script := `cd ` + dir + ` && n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; ` +
		`if [ $n -gt 1 ]; then echo 'ERROR: stderr-secret' >&2; exit 3; fi; echo ` + jwt
	argv, err := json.Marshal([]string{"sh", "-c", script})
	require.NoError(t, err)
	config, in := filepath.Join(dir, "pool.json"), filepath.Join(dir, "rows.csv")
	require.NoError(t, os.WriteFile(config, fmt.Appendf(nil, `{"endpoints": [{"name": "blue", "url": %q, "kind": "online",
		"maxConcurrentCalls": 4, "tokenCommand": %s}]}`, srv.URL(), argv), 0o644))
	writeIDs(t, in, 10)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out bytes.Buffer
	var errOut lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- bench(ctx, benchOptions{config: config, in: in, chunk: 1, duration: time.Hour, set: map[string]bool{}}, &out, &errOut)
	}()
	want := `amlpool bench: endpoints[0] (blue): refreshing the token: "tokenCommand" sh: exit status 3; the token in use goes on until `
	assert.Eventually(t, func() bool { return strings.Contains(errOut.String(), want) }, 30*time.Second, 10*time.Millisecond)
	cancel()
	assert.ErrorIs(t, <-done, errInterrupted)
	assert.NotContains(t, errOut.String(), "stderr-secret")
	assert.NotContains(t, errOut.String()+out.String(), jwt)
	if t.Failed() {
		t.Log(errOut.String(), out.String())
	}
}
