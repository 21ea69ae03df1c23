package amlpool_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// BenchmarkSeedWorkloadOnline is BenchmarkSeedWorkload on online fakes —
// 5 endpoints × 20 slots, 50 ms latency, the MLflow body, 429 Too many
// pending requests past the cap — with a key ("key") and with a token from
// a Credential, which builds the request's headers per attempt ("token").
// Beside each, the perfect client: one goroutine per slot, pinned to its
// endpoint, plain net/http with the same bearer value. It reports both
// rates, their ratio (goal ≥ 0.99) and the 429s the servers sent (goal 0):
//
//	go test -run '^$' -bench SeedWorkloadOnline -benchtime 1x .
func BenchmarkSeedWorkloadOnline(b *testing.B) {
	for _, auth := range []string{"key", "token"} {
		b.Run(auth, func(b *testing.B) { seedWorkloadOnline(b, auth == "token") })
	}
}

func seedWorkloadOnline(b *testing.B, token bool) {
	const endpoints, mcc, latency = 5, 20, 50 * time.Millisecond
	const tok = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.bench-token"
	servers := make([]*amltest.Server, endpoints)
	eps := make([]amlpool.Endpoint, endpoints)
	bearer := make([]string, endpoints)
	for i := range servers {
		servers[i] = amltest.NewServer(amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: mcc, Latency: latency,
			AcceptToken: func(t string) bool { return t == tok }})
		defer servers[i].Close()
		eps[i] = servers[i].Endpoint()
		bearer[i] = eps[i].APIKey
		if token {
			eps[i].APIKey, eps[i].SecondaryKey = "", ""
			eps[i].Credential = amlpool.CredentialFunc(func(context.Context) (string, error) { return tok, nil })
			bearer[i] = tok
		}
	}
	c, err := amlpool.New(eps)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: mcc}}
	defer hc.CloseIdleConnections()
	body := []byte(`{"input_data":{"columns":["x"],"index":[0],"data":[["1"]]}}`)

	perfectCall := func(ctx context.Context, i int) error {
		ep := eps[i%endpoints]
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+bearer[i%endpoints])
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	poolCall := func(ctx context.Context, _ int) error {
		_, err := c.Do(ctx, body)
		return err
	}
	throttles := perfectVsPool(b, servers, endpoints*mcc, perfectCall, poolCall)
	b.ReportMetric(float64(throttles), "429s")
}

// BenchmarkAuthPath measures a call's cost, in process (no network), with
// a key (the headers built once per endpoint, shared by every request) and
// with a Credential's token (the headers built per attempt):
//
//	go test -run '^$' -bench AuthPath -benchmem -count 5 .
func BenchmarkAuthPath(b *testing.B) {
	for _, auth := range []string{"key", "token"} {
		b.Run(auth, func(b *testing.B) {
			ep := amlpool.Endpoint{Name: "e", URL: "http://127.0.0.1:1/score", Kind: amlpool.Online, MaxConcurrentCalls: 20, APIKey: "k"}
			if auth == "token" {
				ep.APIKey = ""
				ep.Credential = amlpool.CredentialFunc(func(context.Context) (string, error) { return "token", nil })
			}
			c, err := amlpool.New([]amlpool.Endpoint{ep}, amlpool.WithHTTPClient(&http.Client{Transport: amlpool.ReplyTransport{}}))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Do(context.Background(), scoreBody); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
