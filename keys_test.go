package amlpool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestNoKeyInAnyOutput prints, encodes and logs every type that holds or
// once held a key, in every way a user might, and reads back every span,
// log line and metric a Client with all telemetry on produced: none may
// contain the key.
func TestNoKeyInAnyOutput(t *testing.T) {
	busy := newFakeAML(t, always(503))
	bad := newFakeAML(t, always(400))
	o := newObserved(t, []Endpoint{busy.endpoint("busy", 1), bad.endpoint("bad", 1)})
	_, callErr := o.Do(t.Context(), []byte(`{}`)) // throttled, then 400: a *CallError around an *APIError
	require.Error(t, callErr)
	var apiErr *APIError
	require.ErrorAs(t, callErr, &apiErr)
	_, cfgErr := New([]Endpoint{good(func(e *Endpoint) { e.APIKey = secretKey + "\n" })})
	require.ErrorIs(t, cfgErr, ErrInvalidConfig)

	values := map[string]any{
		"Endpoint":          good(nil),
		"*Endpoint":         &[]Endpoint{good(nil)}[0],
		"[]Endpoint":        []Endpoint{good(nil)},
		"*pool.Endpoint":    o.pool.Endpoints()[0],
		"[]*pool.Endpoint":  o.pool.Endpoints(),
		"*pool.Set":         o.pool.Set(),
		"*Client":           o.Client,
		"config":            o.cfg,
		"*telemetry":        o.tel,
		"Stats":             o.Stats(),
		"*CallError":        callErr,
		"*APIError":         apiErr,
		"*ConfigError":      cfgErr,
		"[]LimitedEndpoint": []LimitedEndpoint{limited(o.pool.Endpoints()[0])},
	}
	assertNoSecret(t, o, values, secrets)
}

// TestNoTokenOrHeaderInAnyOutput is TestNoKeyInAnyOutput for online
// endpoints whose tokens come from a Credential and which carry extra
// headers: servers echo the token back in every reply (errors, a 2xx that
// is not JSON, the model's reason of a 424), and neither the token nor the
// headers' values show anywhere.
func TestNoTokenOrHeaderInAnyOutput(t *testing.T) {
	const token, tenant, deployment = "eyJ0eXAi.s3cr3t-token", "tenant-s3cr3t", "deploy-s3cr3t"
	echo := func(status int) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			auth := r.Header.Get("Authorization")
			w.Header().Set("ms-azureml-model-error-statuscode", "400")
			w.Header().Set("ms-azureml-model-error-reason", "rejected "+auth)
			w.WriteHeader(status)
			if status == http.StatusOK {
				io.WriteString(w, `<html>`+auth) // not JSON: ErrMalformedResponse quotes it
				return
			}
			io.WriteString(w, `{"message":"Too many pending requests for `+auth+`"}`)
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	var fresh atomic.Int64
	cred := CredentialFunc(func(context.Context) (string, error) { fresh.Add(1); return token, nil })
	ep := func(name string, srv *httptest.Server) Endpoint {
		return Endpoint{Name: name, URL: srv.URL + "/score", Kind: Online, MaxConcurrentCalls: 1, Credential: cred,
			Header: http.Header{"X-Tenant": {tenant}, "Azureml-Model-Deployment": {deployment}}}
	}
	eps := []Endpoint{ep("full", echo(429)), ep("model", echo(424)), ep("denied", echo(401)), ep("garbled", echo(200))}
	o := newObserved(t, eps, WithMaxAttempts(3))  // no backoff: its clock is fake
	_, callErr := o.Do(t.Context(), []byte(`{}`)) // 429, then 424 (the model's 400): a *CallError around an *APIError
	require.Error(t, callErr)
	var apiErr *APIError
	require.ErrorAs(t, callErr, &apiErr)
	require.Equal(t, 424, apiErr.StatusCode)
	require.NotEmpty(t, apiErr.ModelReason)
	o.SetEndpoints(eps[2:])
	_, deniedErr := o.Do(t.Context(), []byte(`{}`)) // 401 twice (a fresh token), then a 2xx that is not JSON
	require.Error(t, deniedErr)
	require.ErrorIs(t, deniedErr, ErrMalformedResponse)
	credErrFunc := CredentialFunc(func(context.Context) (string, error) { return token, errors.New("expired: " + token) })
	e := ep("broken", echo(200))
	e.Credential = credErrFunc
	broken := newObserved(t, []Endpoint{e}, WithoutRetries())
	_, credErr := broken.Do(t.Context(), []byte(`{}`))
	require.ErrorAs(t, credErr, new(*CredentialError))
	_, cfgErr := New([]Endpoint{func() Endpoint { e := eps[0]; e.APIKey = token; return e }()})
	require.ErrorIs(t, cfgErr, ErrInvalidConfig)

	values := map[string]any{
		"Endpoint":         eps[0],
		"*Endpoint":        &eps[0],
		"[]Endpoint":       eps,
		"*pool.Endpoint":   o.pool.Endpoints()[0],
		"[]*pool.Endpoint": o.pool.Endpoints(),
		"*pool.Set":        o.pool.Set(),
		"*Client":          o.Client,
		"config":           o.cfg,
		"Stats":            o.Stats(),
		"*CallError":       callErr,
		"*APIError":        apiErr,
		"denied":           deniedErr,
		"*CredentialError": credErr,
		"*ConfigError":     cfgErr,
	}
	assertNoSecret(t, o, values, []string{token, tenant, deployment})
	assertNoSecret(t, broken, map[string]any{"*CredentialError": credErr}, []string{token})
	assert.Contains(t, fmt.Sprint(eps[0]), "X-Tenant:[REDACTED]", "header names are shown")
	for _, err := range []error{callErr, deniedErr, credErr} {
		assert.Contains(t, err.Error(), redacted, "the echoed token is scrubbed, not dropped: %v", err)
	}
}

// TestNoTokenFromACredentialsError: a Credential's error that quotes a
// token it never returned, as MSAL's does for a token reply it could not
// decode ("json message bytes were: {…"access_token": "eyJ…"…}"), or a
// client secret or assertion in a form, shows none of them in the error,
// its log lines, spans or Stats; errors.Is still reaches the error.
func TestNoTokenFromACredentialsError(t *testing.T) {
	const jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21sLmF6dXJlLmNvbSJ9.c2lnbmF0dXJl"
	const opaque, refresh, secret, assertion = "opaque-s3cr3t-access", "0.AXo-refresh-s3cr3t", "Xy8Q~client-s3cr3t", "assertion-s3cr3t"
	msal := errors.New(`ClientSecretCredential authentication failed. json decode error: json: cannot unmarshal string into Go struct field .expires_in of type int
json message bytes were: {"token_type":"Bearer","expires_in":"3599","access_token":"` + jwt + `","refresh_token": "` + refresh + `","id_token":"` + opaque + `\"x"}
body: grant_type=client_credentials&client_secret=` + secret + `&client_assertion=` + assertion + `&scope=https://ml.azure.com/.default`)
	cred := CredentialFunc(func(context.Context) (string, error) { return "", msal })
	o := newObserved(t, []Endpoint{{Name: "e", URL: "https://e.invalid/score", Kind: Online, MaxConcurrentCalls: 1, Credential: cred}},
		WithoutRetries())
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.ErrorIs(t, err, msal)
	credErr, ok := errors.AsType[*CredentialError](err)
	require.True(t, ok)
	assertNoSecret(t, o, map[string]any{"error": err, "*CredentialError": credErr, "Stats": o.Stats()},
		[]string{jwt, "eyJhdWQi", "c2lnbmF0dXJl", opaque, refresh, secret, assertion})
	assert.Contains(t, err.Error(), `"access_token":"[REDACTED]"`)
	assert.Contains(t, err.Error(), "client_secret=[REDACTED]&")
	assert.Contains(t, err.Error(), "scope=https://ml.azure.com/.default", "what is no secret stays")
	assert.Contains(t, err.Error(), "expires_in of type int")
}

// TestNoURLSecretInAnyOutput: a secret in an endpoint URL's query that is
// no key of the endpoint's (an Azure SAS sig=, a code=) goes to the
// endpoint as it is, but printed Endpoints, spans, log lines and errors,
// transport errors through our own client or the user's included, show
// [REDACTED] for it, and spans (url.full) REDACTED, the literal the
// OpenTelemetry conventions ask for; the service's own api-version stays.
func TestNoURLSecretInAnyOutput(t *testing.T) {
	const sig, code = "s3cr3t-sig%2Bv", "s3cr3t-code"
	const query = "?api-version=2.0&sig=" + sig + "&code=" + code
	const shown = "?api-version=2.0&sig=[REDACTED]&code=[REDACTED]"
	const traced = "?api-version=2.0&sig=REDACTED&code=REDACTED"
	queries := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		queries <- r.URL.RawQuery
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":{"code":"BadArgument","message":"bad input"}}`)
	}))
	t.Cleanup(srv.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refused := "http://" + l.Addr().String() + "/x"
	require.NoError(t, l.Close())

	bad := Endpoint{Name: "bad", URL: srv.URL + "/x" + query, APIKey: secretKey}
	o := newObserved(t, []Endpoint{bad}, WithoutRetries())
	_, apiErr := o.Do(t.Context(), []byte(`{}`))
	require.ErrorAs(t, apiErr, new(*APIError))
	assert.Equal(t, query[1:], <-queries, "the query is sent as it is")
	assert.Contains(t, fmt.Sprint(bad), "URL:"+srv.URL+"/x"+shown+" ")
	var urls []string
	for _, s := range o.spans.Ended() {
		for _, kv := range s.Attributes() {
			if kv.Key == "url.full" {
				urls = append(urls, kv.Value.AsString())
			}
		}
	}
	assert.Equal(t, []string{srv.URL + "/x" + traced}, urls, "url.full")
	assertNoSecret(t, o, map[string]any{"Endpoint": bad, "*APIError": apiErr, "Stats": o.Stats()}, []string{"s3cr3t"})

	for _, hc := range []*http.Client{nil, {}} {
		down := Endpoint{Name: "down", URL: refused + query, APIKey: secretKey}
		o := newObserved(t, []Endpoint{down}, WithoutRetries(), WithHTTPClient(hc))
		_, netErr := o.Do(t.Context(), []byte(`{}`))
		uerr, ok := errors.AsType[*url.Error](netErr)
		require.True(t, ok, "%T: %v", netErr, netErr)
		assert.Equal(t, refused+shown, uerr.URL, "own client: %t", hc == nil)
		assertNoSecret(t, o, map[string]any{"Endpoint": down, "error": netErr, "Stats": o.Stats()}, []string{"s3cr3t"})
	}
}

// TestURLSecretsScrubbedFromReplies: a reply that echoes the URL's query
// (a gateway's error page, an APIM complaint about its subscription-key)
// or a transport error that quotes the URL (a user's RoundTripper, a
// malformed reply) has the query's secret values scrubbed, as the URL
// spells them and decoded, in every error a call returns and every log
// line; values too short to be secrets (sp=r, spr=https) are left.
func TestURLSecretsScrubbedFromReplies(t *testing.T) {
	const sigRaw, sig = "sv1gN4tuRe%2Bslash%2F0123456789", "sv1gN4tuRe+slash/0123456789"
	const subKey = "apim0123456789abcdefsecretkey"
	const query = "?api-version=2.0&sp=r&spr=https&sig=" + sigRaw + "&subscription-key=" + subKey
	hidden := []string{"sv1gN4tuRe", "apim0123456789"}
	replies := map[string]func(w http.ResponseWriter, r *http.Request){
		"page": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<html>no backend for %s (sig %s)</html>", r.URL.RequestURI(), r.URL.Query().Get("sig"))
		},
		"json": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusUnauthorized)
			msg, _ := json.Marshal(fmt.Sprintf("subscription-key %s, sig %s: denied", r.URL.Query().Get("subscription-key"), r.URL.Query().Get("sig")))
			fmt.Fprintf(w, `{"error":{"code":"Unauthorized","message":%s}}`, bytes.ReplaceAll(msg, []byte("/"), []byte(`\/`)))
		},
		"2xx": func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "<html>%s</html>", r.URL.RawQuery)
		},
		"malformed": func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				panic(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "HTTP/1.1 %s\r\n\r\n", r.URL.RawQuery)
		},
	}
	for name, reply := range replies {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			reply(w, r)
		}))
		t.Cleanup(srv.Close)
		ep := Endpoint{Name: name, URL: srv.URL + "/x" + query, APIKey: secretKey}
		o := newObserved(t, []Endpoint{ep}, WithoutRetries())
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.Error(t, err, name)
		if name != "json" {
			assert.Contains(t, err.Error(), "sp=r&spr=https", "%s: short values stay", name)
		}
		assertNoSecret(t, o, map[string]any{"error": err}, hidden)
	}

	// A user's client whose RoundTripper quotes the URL, or goes through a
	// client of its own whose *url.Error does.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refused := "http://" + l.Addr().String() + "/x"
	require.NoError(t, l.Close())
	for name, rt := range map[string]roundTripFunc{
		"quotes the URL": func(r *http.Request) (*http.Response, error) {
			return nil, fmt.Errorf("POST %s giving up after 3 attempts: %w", r.URL, timeoutErr{})
		},
		"quotes a value": func(r *http.Request) (*http.Response, error) {
			return nil, fmt.Errorf("gateway refused sig %s: %w", r.URL.Query().Get("sig"), timeoutErr{})
		},
		"nested client": func(r *http.Request) (*http.Response, error) {
			resp, err := (&http.Client{}).Do(r)
			if err == nil {
				resp.Body.Close()
				err = errors.New("unexpected reply")
			}
			return nil, err
		},
	} {
		o := newObserved(t, []Endpoint{{Name: "down", URL: refused + query, APIKey: secretKey}}, WithoutRetries(),
			WithHTTPClient(&http.Client{Transport: rt}))
		_, err := o.Do(t.Context(), []byte(`{}`))
		uerr, ok := errors.AsType[*url.Error](err)
		require.True(t, ok, "%s: %T: %v", name, err, err)
		assert.Contains(t, err.Error(), "sig=[REDACTED]", name)
		if name != "nested client" {
			assert.True(t, uerr.Timeout(), "%s: still a timeout", name)
		}
		assertNoSecret(t, o, map[string]any{"error": err}, hidden)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type timeoutErr struct{}

func (timeoutErr) Error() string { return "timed out" }
func (timeoutErr) Timeout() bool { return true }

// assertNoSecret prints, encodes and logs each of values in every way a
// user might, and reads back every span, log line and metric o produced:
// none may contain any of secrets, nor its hex form.
func assertNoSecret(t *testing.T, o *observed, values map[string]any, secrets []string) {
	t.Helper()
	for name, v := range values {
		for _, key := range secrets {
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
				s := fmt.Sprintf(verb, v)
				assert.NotContains(t, s, key, "%s printed with %s", name, verb)
				assert.NotContains(t, s, fmt.Sprintf("%x", key), "%s printed with %s", name, verb)
			}
			if js, err := json.Marshal(v); err == nil {
				assert.NotContains(t, string(js), key, "%s as JSON", name)
			}
			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("value", "v", v)
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("value", "v", v)
			assert.NotContains(t, buf.String(), key, "%s logged", name)
		}
	}

	// Everything the Client's own telemetry produced.
	for _, key := range secrets {
		assert.NotContains(t, o.logs.String(), key, "log lines")
	}
	assert.NotEmpty(t, o.logLines(t, "amlpool: attempt"))
	spans := o.spans.Ended()
	require.NotEmpty(t, spans)
	for _, s := range spans {
		kvs := append([]attribute.KeyValue{}, s.Attributes()...)
		for _, e := range s.Events() {
			kvs = append(kvs, e.Attributes...)
		}
		for _, key := range secrets {
			for _, kv := range kvs {
				assert.NotContains(t, kv.Value.String(), key, "span %s attribute %s", s.Name(), kv.Key)
			}
			assert.NotContains(t, s.Status().Description, key, "span %s status", s.Name())
		}
	}
	rm := o.collect(t)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, set := range pointAttrs(m.Data) {
				for _, key := range secrets {
					assert.NotContains(t, set.Encoded(attribute.DefaultEncoder()), key, m.Name)
				}
			}
		}
	}
}

func pointAttrs(d metricdata.Aggregation) []attribute.Set {
	var out []attribute.Set
	switch d := d.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	}
	return out
}

// TestHeaderSecretsScrubbedFromReplies: an Endpoint.Header value of 16
// characters or more (an API Management subscription key) is scrubbed,
// as keys are, from every error and log line when a reply or a transport
// error echoes it; a shorter value of a header whose name says no
// credential (X-Tenant), and the deployment's name, stay.
// After SetEndpoints, the new value is scrubbed.
func TestHeaderSecretsScrubbedFromReplies(t *testing.T) {
	const subKey, rotated = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	const short, deployment = "short-value", "blue-deployment-3" // of 16 characters or more
	hidden := []string{"0123456789abcdef", "fedcba9876543210"}
	echo := func(r *http.Request) string {
		return fmt.Sprintf("key %s tenant %s dep %s", r.Header.Get("Ocp-Apim-Subscription-Key"),
			r.Header.Get("X-Tenant"), r.Header.Get("Azureml-Model-Deployment"))
	}
	replies := map[string]func(w http.ResponseWriter, r *http.Request){
		"page": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<html>%s</html>", echo(r))
		},
		"json": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"error":{"code":"Unauthorized","message":%q}}`, echo(r))
		},
		"2xx": func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "<html>%s</html>", echo(r))
		},
		"424": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ms-azureml-model-error-statuscode", "500")
			w.Header().Set("ms-azureml-model-error-reason", echo(r))
			w.WriteHeader(http.StatusFailedDependency)
		},
	}
	header := func(key string) http.Header {
		return http.Header{"Ocp-Apim-Subscription-Key": {key}, "X-Tenant": {short}, "Azureml-Model-Deployment": {deployment}}
	}
	for name, reply := range replies {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			reply(w, r)
		}))
		t.Cleanup(srv.Close)
		ep := Endpoint{Name: name, URL: srv.URL + "/x", APIKey: secretKey, Header: header(subKey)}
		if name == "424" {
			ep.Kind, ep.MaxConcurrentCalls = Online, 1
		}
		o := newObserved(t, []Endpoint{ep}, WithoutRetries())
		for _, key := range []string{subKey, rotated} {
			ep.Header = header(key)
			require.NoError(t, o.SetEndpoints([]Endpoint{ep}))
			_, err := o.Do(t.Context(), []byte(`{}`))
			require.Error(t, err, name)
			assert.Contains(t, err.Error(), "key "+redacted, "%s: the key is scrubbed, not dropped", name)
			assert.Contains(t, err.Error(), "tenant "+short, "%s: short values stay", name)
			assert.Contains(t, err.Error(), "dep "+deployment, "%s: the deployment's name stays", name)
			assertNoSecret(t, o, map[string]any{"error": err}, hidden)
		}
	}

	// A user's RoundTripper whose error quotes the request's headers.
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return nil, fmt.Errorf("gateway refused (%s): %w", echo(r), timeoutErr{})
	})
	o := newObserved(t, []Endpoint{{Name: "down", URL: "http://127.0.0.1:1/x", APIKey: secretKey, Header: header(subKey)}},
		WithoutRetries(), WithHTTPClient(&http.Client{Transport: rt}))
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.ErrorAs(t, err, new(*url.Error))
	assert.Contains(t, err.Error(), "key "+redacted+" tenant "+short+" dep "+deployment)
	assertNoSecret(t, o, map[string]any{"error": err}, hidden)
}

// TestShortCredentialHeaderValuesScrubbed: the value of a header whose
// name says it carries a credential (an API Management subscription key,
// Azure's api-key, a function key, an upstream Authorization) is a secret
// however short: a reply that echoes it, as it is or encoded, gets it
// into no error, as the endpoint's own key in Authorization does, short
// as it is. From 8 characters on it is scrubbed wherever the reply holds
// it; a shorter one where the reply shows it as that header's value
// ("Api-Key: …", "api-key=…", {"X-Functions-Key":"…"}), as a reply that
// echoes the request's headers does. A short value of another header
// stays, and so does a short part of a credential's value echoed alone
// (the token of "Bearer <token>"), which the 16-character rule for parts
// leaves.
func TestShortCredentialHeaderValuesScrubbed(t *testing.T) {
	const apim, apiKey, fnKey, bearer, tenant = "apim-k3y-7", "k3y+9/Q", "fn-0", "Bearer t0k-42", "tenant-7"
	header := http.Header{
		"Ocp-Apim-Subscription-Key": {apim},
		"Api-Key":                   {apiKey},
		"X-Functions-Key":           {fnKey},
		"X-Upstream-Auth":           {bearer},
		"X-Tenant":                  {tenant},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusUnauthorized)
		msg := fmt.Sprintf(`apim %s; Api-Key: %s; q /x?api-key=%s; {"X-Functions-Key":"%s"}; auth %s; token %s; tenant %s; authz %s;`,
			r.Header.Get("Ocp-Apim-Subscription-Key"), r.Header.Get("Api-Key"), url.QueryEscape(r.Header.Get("Api-Key")),
			r.Header.Get("X-Functions-Key"), r.Header.Get("X-Upstream-Auth"),
			strings.TrimPrefix(r.Header.Get("X-Upstream-Auth"), "Bearer "), r.Header.Get("X-Tenant"), r.Header.Get("Authorization"))
		js, _ := json.Marshal(msg)
		fmt.Fprintf(w, `{"error":{"code":"Unauthorized","message":%s}}`, js)
	}))
	t.Cleanup(srv.Close)
	const shortKey = "k3y-5" // the endpoint's own key, short too: a key is a secret whatever its length
	o := newObserved(t, []Endpoint{{Name: "gw", URL: srv.URL + "/x", APIKey: shortKey, Header: header}}, WithoutRetries())
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.Error(t, err)
	for _, want := range []string{"apim " + redacted + ";", "Api-Key: " + redacted + ";", "q /x?api-key=" + redacted + ";",
		`{"X-Functions-Key":"` + redacted + `"};`, "auth " + redacted + ";", "authz Bearer " + redacted + ";"} {
		assert.Contains(t, err.Error(), want, "a credential header's value is scrubbed")
	}
	assert.Contains(t, err.Error(), "token t0k-42;", "a short part echoed alone stays")
	assert.Contains(t, err.Error(), "tenant "+tenant, "a short value of another header stays")
	assertNoSecret(t, o, map[string]any{"error": err}, []string{apim, apiKey, url.QueryEscape(apiKey), fnKey, bearer, shortKey})
}

// TestShortCredentialHeaderValuesCutNothingElse: a value under 8
// characters of a header whose name says it carries a credential
// (X-Auth-Mode: 1, Authorization-Scheme: on) is most likely a flag or a
// word. It is hidden where a reply or a transport error shows it as that
// header's value, in a JSON string or as Go prints an http.Header, but
// every other "1" and "on" of the message stays as it was, in the error
// and in the log lines.
func TestShortCredentialHeaderValuesCutNothingElse(t *testing.T) {
	header := http.Header{"X-Auth-Mode": {"1"}, "Authorization-Scheme": {"on"}}
	const msg = "1 of 1 rows failed: column 1 is not a number; connection reset on retry 1"
	shown := []string{"X-Auth-Mode: 1", "authorization-scheme=on", "X-Auth-Mode:[1]", "Authorization-Scheme:[on]"}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusBadRequest)
		js, _ := json.Marshal(fmt.Sprintf("%s (X-Auth-Mode: %s, authorization-scheme=%s)",
			msg, r.Header.Get("X-Auth-Mode"), r.Header.Get("Authorization-Scheme")))
		fmt.Fprintf(w, `{"error":{"code":"BadArgument","message":%s}}`, js)
	}))
	t.Cleanup(srv.Close)
	o := newObserved(t, []Endpoint{{Name: "gw", URL: srv.URL + "/x", APIKey: secretKey, Header: header}}, WithoutRetries())
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), msg+" (X-Auth-Mode: "+redacted+", authorization-scheme="+redacted+")")
	assert.Contains(t, o.logs.String(), msg, "the log lines keep the message whole")
	assertNoSecret(t, o, map[string]any{"error": err}, shown)

	// A user's RoundTripper whose error prints the request's headers.
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return nil, fmt.Errorf("proxy on port 1 refused after 1 try: %v", r.Header)
	})
	o = newObserved(t, []Endpoint{{Name: "gw", URL: "http://127.0.0.1:1/x", APIKey: secretKey, Header: header}},
		WithoutRetries(), WithHTTPClient(&http.Client{Transport: rt}))
	_, err = o.Do(t.Context(), []byte(`{}`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "proxy on port 1 refused after 1 try: map[")
	assert.Contains(t, err.Error(), "Authorization-Scheme:["+redacted+"]")
	assert.Contains(t, err.Error(), "X-Auth-Mode:["+redacted+"]")
	assertNoSecret(t, o, map[string]any{"error": err}, append(shown, secretKey))
}

// TestShortCredentialHeaderValueListsScrubbed: a header whose name says
// it carries a credential, given more than one short value, shows them in
// a list after its name where a reply or an error prints the request's
// headers (Go's map[X-Auth-Mode:[a1 b2]], a JSON array, the values joined
// by commas): each of them is hidden there, not only the first.
func TestShortCredentialHeaderValueListsScrubbed(t *testing.T) {
	header := http.Header{"X-Auth-Mode": {"a1", "b2"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusBadRequest)
		vs, _ := json.Marshal(r.Header["X-Auth-Mode"])
		js, _ := json.Marshal(fmt.Sprintf(`got {"X-Auth-Mode": %s} and X-Auth-Mode: %s`, vs, strings.Join(r.Header["X-Auth-Mode"], ", ")))
		fmt.Fprintf(w, `{"error":{"code":"BadArgument","message":%s}}`, js)
	}))
	t.Cleanup(srv.Close)
	o := newObserved(t, []Endpoint{{Name: "gw", URL: srv.URL + "/x", APIKey: secretKey, Header: header}}, WithoutRetries())
	_, err := o.Do(t.Context(), []byte(`{}`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `got {"X-Auth-Mode": ["`+redacted+`","`+redacted+`"]} and X-Auth-Mode: `+redacted+", "+redacted)
	assertNoSecret(t, o, map[string]any{"error": err}, []string{`"b2"`, ", b2"})

	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return nil, fmt.Errorf("proxy refused: %v", r.Header)
	})
	o = newObserved(t, []Endpoint{{Name: "gw", URL: "http://127.0.0.1:1/x", APIKey: secretKey, Header: header}},
		WithoutRetries(), WithHTTPClient(&http.Client{Transport: rt}))
	_, err = o.Do(t.Context(), []byte(`{}`))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "X-Auth-Mode:["+redacted+" "+redacted+"]")
	assertNoSecret(t, o, map[string]any{"error": err}, []string{"a1 b2", " b2]"})
}

// TestHeaderSecretPartsScrubbed: a reply that echoes only a part of a
// header value that carries a credential (the token of "Bearer <token>",
// the sig= of a SAS, as sent or percent-decoded) has that part scrubbed;
// short parts and a scheme's name ("SharedAccessSignature") stay.
func TestHeaderSecretPartsScrubbed(t *testing.T) {
	const token, sig = "tok3n0123456789abcdef", "c2lnbmF0dXJl%2Bc2lnbmF0dXJl%3D"
	const sigDecoded = "c2lnbmF0dXJl+c2lnbmF0dXJl="
	header := http.Header{
		"X-Upstream-Auth": {"Bearer " + token},
		"X-Sas":           {"SharedAccessSignature sr=queue&sig=" + sig + "&se=1700000000&skn=send"},
	}
	for _, echo := range []string{token, sig, sigDecoded} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"error":{"code":"Unauthorized","message":"SharedAccessSignature or Bearer realm, sr=queue, bad credential %s"}}`, echo)
		}))
		t.Cleanup(srv.Close)
		o := newObserved(t, []Endpoint{{Name: "gw", URL: srv.URL + "/x", APIKey: secretKey, Header: header}}, WithoutRetries())
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "bad credential "+redacted, "%s is scrubbed", echo)
		assert.Contains(t, err.Error(), "SharedAccessSignature or Bearer realm, sr=queue", "words and short parts stay")
		assertNoSecret(t, o, map[string]any{"error": err}, []string{token, "c2lnbmF0dXJl"})
	}
}

// TestNoSecretInAnyWrappedError: every error a transport or Credential
// error wraps, as errors.Unwrap walks them, is scrubbed too, not the top
// one only, and so is the error of a reply's body that failed to read: no error of the chain shows a secret in its text, and no
// *url.Error in it (a user's RoundTripper going through a client of its
// own, or wrapping one by hand) shows the raw URL; errors.Is and
// errors.As still reach the causes (context.DeadlineExceeded, a timeout,
// a *net.OpError, ECONNREFUSED).
func TestNoSecretInAnyWrappedError(t *testing.T) {
	const sig = "sv1gN4tuRe%2Bslash%2F0123456789"
	const query = "?api-version=2.0&sp=r&sig=" + sig
	hidden := []string{"sv1gN4tuRe", "sp=r"}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refused := "http://" + l.Addr().String() + "/x"
	require.NoError(t, l.Close())
	for name, tc := range map[string]struct {
		rt    roundTripFunc
		check func(t *testing.T, err error)
	}{
		"nested client": {
			rt: func(r *http.Request) (*http.Response, error) {
				resp, err := (&http.Client{}).Do(r)
				if err == nil {
					resp.Body.Close()
					err = errors.New("unexpected reply")
				}
				return nil, err
			},
			check: func(t *testing.T, err error) {
				assert.ErrorAs(t, err, new(*net.OpError))
				assert.ErrorIs(t, err, syscall.ECONNREFUSED)
			},
		},
		"wrapped by hand": {
			rt: func(r *http.Request) (*http.Response, error) {
				inner := &url.Error{Op: "Post", URL: r.URL.String(), Err: context.DeadlineExceeded}
				return nil, fmt.Errorf("giving up on %s: %w", r.URL.Query().Get("sig"), inner)
			},
			check: func(t *testing.T, err error) {
				assert.ErrorIs(t, err, context.DeadlineExceeded)
				uerr, _ := errors.AsType[*url.Error](err)
				assert.True(t, uerr.Timeout())
			},
		},
		"joined": {
			rt: func(r *http.Request) (*http.Response, error) {
				return nil, errors.Join(&url.Error{Op: "Post", URL: r.URL.String(), Err: timeoutErr{}}, io.ErrUnexpectedEOF)
			},
			check: func(t *testing.T, err error) {
				assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
				assert.ErrorAs(t, err, new(timeoutErr))
			},
		},
	} {
		o := newObserved(t, []Endpoint{{Name: "down", URL: refused + query, APIKey: secretKey}}, WithoutRetries(),
			WithHTTPClient(&http.Client{Transport: tc.rt}))
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.Error(t, err, name)
		var urlErrs int
		walkErrors(err, func(e error) {
			for _, s := range hidden {
				assert.NotContains(t, e.Error(), s, "%s: %T in the chain", name, e)
				assert.NotContains(t, fmt.Sprintf("%#v", e), s, "%s: %T in the chain, printed with %%#v", name, e)
			}
			if ue, ok := e.(*url.Error); ok {
				urlErrs++
				assert.Equal(t, refused+"?api-version=2.0&sp=[REDACTED]&sig=[REDACTED]", ue.URL, "%s: a *url.Error in the chain", name)
			}
		})
		assert.Equal(t, 2, urlErrs, "%s: the client's *url.Error and the one it wraps", name)
		// errors.As finds the innermost too, from the error that wraps it.
		inner, ok := errors.AsType[*url.Error](errors.Unwrap(errors.Unwrap(err)))
		require.True(t, ok, name)
		assert.NotContains(t, inner.URL, "sv1gN4tuRe", name)
		tc.check(t, err)
		assertNoSecret(t, o, map[string]any{"error": err}, hidden[:1])
	}

	// A reply whose body fails, quoting the URL and the key, after a 2xx
	// status or another.
	for _, status := range []int{200, 500} {
		rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			body := io.MultiReader(strings.NewReader("{"), iotest.ErrReader(fmt.Errorf("stream of %s with %s broke: %w",
				r.URL, r.Header.Get("Authorization"), io.ErrUnexpectedEOF)))
			return &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(body), ContentLength: -1, Request: r}, nil
		})
		o := newObserved(t, []Endpoint{{Name: "cut", URL: refused + query, APIKey: secretKey}}, WithoutRetries(),
			WithHTTPClient(&http.Client{Transport: rt}))
		_, err := o.Do(t.Context(), []byte(`{}`))
		require.ErrorIs(t, err, io.ErrUnexpectedEOF, status)
		assert.Contains(t, err.Error(), "sig=[REDACTED] with Bearer [REDACTED] broke", status)
		walkErrors(err, func(e error) {
			for _, s := range append(hidden, secretKey) {
				assert.NotContains(t, e.Error(), s, "%d: %T in the chain", status, e)
			}
		})
		assertNoSecret(t, o, map[string]any{"error": err}, []string{hidden[0], secretKey})
	}

	// A Credential's error that quotes its token in an *url.Error's URL.
	const token = "eyJ0eXAi.s3cr3t-token"
	cred := CredentialFunc(func(context.Context) (string, error) {
		return token, fmt.Errorf("refresh: %w", &url.Error{Op: "Get", URL: "https://login.example/t?refresh=" + token, Err: context.DeadlineExceeded})
	})
	o := newObserved(t, []Endpoint{{Name: "cred", URL: refused, Kind: Online, MaxConcurrentCalls: 1, Credential: cred}}, WithoutRetries())
	_, err = o.Do(t.Context(), []byte(`{}`))
	require.ErrorAs(t, err, new(*CredentialError))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	walkErrors(err, func(e error) {
		assert.NotContains(t, e.Error(), "s3cr3t", "%T in the chain", e)
		if ue, ok := e.(*url.Error); ok {
			assert.Equal(t, "https://login.example/t?refresh="+redacted, ue.URL)
		}
	})
}

// walkErrors calls f with err and every error it wraps, as errors.Is
// walks them.
func walkErrors(err error, f func(error)) {
	if err == nil {
		return
	}
	f(err)
	switch w := err.(type) {
	case interface{ Unwrap() error }:
		walkErrors(w.Unwrap(), f)
	case interface{ Unwrap() []error }:
		for _, e := range w.Unwrap() {
			walkErrors(e, f)
		}
	}
}
