package amltest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/amlpool/amlpool/amltest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The exact error bodies of the service contract (docs/azureml.md).
const (
	throttleBody20 = `{"error":{"code":"ServiceUnavailable","message":"Service is temporarily unavailable.","details":[{"code":"RequestThrottled","message":"Request was throttled for default endpoint. The maximum concurrency for the endpoint is 20."}]}}`
	throttleBody3  = `{"error":{"code":"ServiceUnavailable","message":"Service is temporarily unavailable.","details":[{"code":"RequestThrottled","message":"Request was throttled for default endpoint. The maximum concurrency for the endpoint is 3."}]}}`
	unauthorized   = `{"error":{"code":"Unauthorized","message":"Authorization failed.","details":[{"code":"ScoreRequestUnauthorized","message":"Invalid credentials provided."}]}}`
)

// classicBody is a classic request, in the form docs/azureml.md shows.
const classicBody = `{"Inputs": {"input1": {"ColumnNames": ["cog_speed"], "Values": [["0"], ["1"]]}}, "GlobalParameters": {}}`

// newServer starts a fake endpoint closed when the test ends.
func newServer(t *testing.T, cfg amltest.Config) *amltest.Server {
	t.Helper()
	srv := amltest.NewServer(cfg)
	t.Cleanup(srv.Close)
	return srv
}

// reply is what a plain net/http client saw.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// send POSTs body to url with the key and a JSON content type; mods change
// the request before it goes. It fails the test on a transport error.
func send(t *testing.T, srv *amltest.Server, url, key, body string, mods ...func(*http.Request)) reply {
	t.Helper()
	resp, err := do(t.Context(), srv, url, key, body, mods...)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

// do sends the request and returns the response with its body unread.
func do(ctx context.Context, srv *amltest.Server, url, key, body string, mods ...func(*http.Request)) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for _, m := range mods {
		m(req)
	}
	return srv.Client().Do(req)
}

// score POSTs classicBody to the server's own URL with its own key.
func score(t *testing.T, srv *amltest.Server) reply {
	t.Helper()
	ep := srv.Endpoint()
	return send(t, srv, ep.URL, ep.APIKey, classicBody)
}

// errorCodes returns error.code and details[0].code of an error body.
func errorCodes(t *testing.T, body []byte) (code, detail string) {
	t.Helper()
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Details []struct {
				Code string `json:"code"`
			} `json:"details"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(body, &e), "error body %s", body)
	if len(e.Error.Details) > 0 {
		detail = e.Error.Details[0].Code
	}
	return e.Error.Code, detail
}

// fixture reads one of the service's bodies from the root package's testdata.
func fixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "rrs", name))
	require.NoError(t, err)
	return string(b)
}

func setMethod(m string) func(*http.Request) { return func(r *http.Request) { r.Method = m } }

func setHeader(k, v string) func(*http.Request) { return func(r *http.Request) { r.Header.Set(k, v) } }

func delHeader(k string) func(*http.Request) { return func(r *http.Request) { r.Header.Del(k) } }

// readAll reads and closes a response body.
func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}
