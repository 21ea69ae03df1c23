package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestScrape runs a scripted scenario — 5 calls to an endpoint whose first
// 3 replies are throttles — and reads the metrics back the way Prometheus
// does: over HTTP from /metrics on a loopback port.
func TestScrape(t *testing.T) {
	mp, h, err := newMeterProvider()
	require.NoError(t, err)
	defer mp.Shutdown(context.Background())
	s := amltest.NewServer(amltest.Config{Name: "busy", MaxConcurrentCalls: 2})
	defer s.Close()
	throttle := amltest.Fault{Status: 503, Detail: "RequestThrottled"}
	s.Script(throttle, throttle, throttle)
	c, err := amlpool.New([]amlpool.Endpoint{s.Endpoint()}, amlpool.WithMeterProvider(mp),
		amlpool.WithBackoff(amlpool.Backoff{Initial: time.Millisecond, Max: time.Millisecond}))
	require.NoError(t, err)
	defer c.Close()
	for range 5 {
		_, err := c.Do(t.Context(), []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}}}`))
		require.NoError(t, err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := serveMetrics(l, h)
	defer srv.Close()
	resp, err := http.Get("http://" + l.Addr().String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	page := string(body)

	ep := `amlpool_endpoint="busy"`
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"amlpool_endpoint_calls_total", []string{ep, `amlpool_outcome="throttled"`}, 3},
		{"amlpool_endpoint_calls_total", []string{ep, `amlpool_outcome="success"`}, 5},
		{"amlpool_endpoint_calls_total", []string{ep}, 8},
		{"amlpool_retries_total", []string{`amlpool_retry_reason="throttled"`}, 3},
		{"amlpool_endpoint_limit", []string{ep}, 2},
		{"amlpool_endpoint_in_flight", []string{ep}, 0},
		{"amlpool_slot_waiting", nil, 0},
		{"amlpool_slot_wait_duration_seconds_count", nil, 8},
		{"http_client_request_duration_seconds_count", []string{ep, `http_response_status_code="503"`, `error_type="503"`}, 3},
		{"http_client_request_duration_seconds_count", []string{ep, `http_response_status_code="200"`, `http_request_method="POST"`, `server_address="127.0.0.1"`}, 5},
	} {
		got, ok := sample(page, tt.name, tt.labels...)
		if assert.True(t, ok, "%s%v is on the page", tt.name, tt.labels) {
			assert.Equal(t, tt.want, got, "%s%v", tt.name, tt.labels)
		}
	}
	st := c.Stats().Endpoints[0]
	st.Since = time.Time{} // when New ran
	assert.Equal(t, amlpool.EndpointStats{Name: "busy", MaxConcurrentCalls: 2, Limit: 2, Calls: 8, Errors: 3, Throttles: 3},
		st, "Stats tell the same story")
	assert.NotContains(t, page, s.Endpoint().APIKey)
}

// sample adds up the values of the series of metric name that carry every
// one of labels (each `key="value"`), and reports whether there was one.
func sample(page, name string, labels ...string) (float64, bool) {
	var sum float64
	found := false
	sc := bufio.NewScanner(strings.NewReader(page))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		series := line[:i]
		match := true
		for _, l := range labels {
			match = match && strings.Contains(series, l)
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}
