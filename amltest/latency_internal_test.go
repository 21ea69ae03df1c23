package amltest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowBody yields its text only after wait, as a body the client sends
// slowly does.
type slowBody struct {
	wait time.Duration
	r    io.Reader
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.wait > 0 {
		time.Sleep(b.wait)
		b.wait = 0
	}
	return b.r.Read(p)
}

// TestLatencyCountsFromAdmission: a scored call's reply is ready Latency
// after its admission, whatever part of that the server spent reading the
// body (and any Fault.Delay adds to it). On synctest's clock, which moves
// only while every goroutine waits.
func TestLatencyCountsFromAdmission(t *testing.T) {
	const latency = 100 * time.Millisecond
	for _, tc := range []struct {
		name        string
		read, delay time.Duration
		want        time.Duration
	}{
		{"instant body", 0, 0, latency},
		{"slow body", 30 * time.Millisecond, 0, latency},
		{"body slower than the latency", 150 * time.Millisecond, 0, 150 * time.Millisecond},
		{"fault delay", 30 * time.Millisecond, 50 * time.Millisecond, latency + 50*time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := NewServer(Config{Key: "k", Latency: latency})
			defer srv.Close()
			if tc.delay > 0 {
				srv.Script(Fault{Delay: tc.delay})
			}
			ep := srv.Endpoint()
			synctest.Test(t, func(t *testing.T) {
				body := &slowBody{wait: tc.read, r: strings.NewReader(`{"Inputs": {"input1": {"ColumnNames": ["a"], "Values": [["0"]]}}, "GlobalParameters": {}}`)}
				r := httptest.NewRequest(http.MethodPost, ep.URL, body)
				r.Header.Set("Authorization", "Bearer k")
				r.Header.Set("Content-Type", "application/json")
				w := httptest.NewRecorder()
				start := time.Now()
				srv.serveHTTP(w, r, make(chan struct{}))
				require.Equal(t, http.StatusOK, w.Code, "body %s", w.Body)
				assert.Equal(t, tc.want, time.Since(start))
			})
		})
	}
}
