package amlpool

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const secretKey = "s3cr3t-key-value"

func good(mod func(*Endpoint)) Endpoint {
	e := Endpoint{
		Name:   "east",
		URL:    "https://ussouthcentral.services.azureml.net/workspaces/w/services/abc/execute?api-version=2.0&details=true",
		APIKey: secretKey,
	}
	if mod != nil {
		mod(&e)
	}
	return e
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name      string
		endpoints []Endpoint
		opts      []Option
		field     string
		endpoint  string
	}{
		{name: "no endpoints", endpoints: nil, field: "endpoints"},
		{name: "empty URL", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "" })}, field: "URL", endpoint: "east"},
		{name: "relative URL", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "/services/x/execute" })}, field: "URL", endpoint: "east"},
		{name: "no host", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "https:///x" })}, field: "URL", endpoint: "east"},
		{name: "bad scheme", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "ftp://h/x" })}, field: "URL", endpoint: "east"},
		{name: "http to a remote host", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "http://example.com/x" })}, field: "URL", endpoint: "east"},
		{name: "user info in URL", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "https://u:" + secretKey + "@h/x" })}, field: "URL", endpoint: "east"},
		{name: "unparsable URL", endpoints: []Endpoint{good(func(e *Endpoint) { e.URL = "https://h/%zz" })}, field: "URL", endpoint: "east"},
		{name: "empty key", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = "" })}, field: "APIKey", endpoint: "east"},
		{name: "key with newline", endpoints: []Endpoint{good(func(e *Endpoint) { e.APIKey = secretKey + "\r\nX: y" })}, field: "APIKey", endpoint: "east"},
		{name: "negative MCC", endpoints: []Endpoint{good(func(e *Endpoint) { e.MaxConcurrentCalls = -1 })}, field: "MaxConcurrentCalls", endpoint: "east"},
		{name: "MCC over 200", endpoints: []Endpoint{good(func(e *Endpoint) { e.MaxConcurrentCalls = 201 })}, field: "MaxConcurrentCalls", endpoint: "east"},
		{name: "unnamed endpoint is named by index", endpoints: []Endpoint{good(nil), good(func(e *Endpoint) { e.Name = ""; e.APIKey = "" })}, field: "APIKey", endpoint: "endpoints[1]"},
		{name: "same URL twice", endpoints: []Endpoint{good(nil), good(func(e *Endpoint) { e.Name = "west" })}, field: "URL", endpoint: "west"},
		{name: "same name twice", endpoints: []Endpoint{good(nil), good(func(e *Endpoint) { e.URL += "&x=1" })}, field: "Name", endpoint: "east"},
		{name: "negative max wait", endpoints: []Endpoint{good(nil)}, opts: []Option{WithMaxWait(-time.Second)}, field: "WithMaxWait"},
		{name: "zero response cap", endpoints: []Endpoint{good(nil)}, opts: []Option{WithMaxResponseBytes(0)}, field: "WithMaxResponseBytes"},
		{name: "zero attempt timeout", endpoints: []Endpoint{good(nil)}, opts: []Option{WithAttemptTimeout(0)}, field: "WithAttemptTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.endpoints, tt.opts...)
			require.Error(t, err)
			assert.Nil(t, c)
			assert.ErrorIs(t, err, ErrInvalidConfig)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tt.field, ce.Field)
			assert.Equal(t, tt.endpoint, ce.Endpoint)
			assert.NotContains(t, err.Error(), secretKey)
		})
	}
}

func TestNewAcceptsGoodConfig(t *testing.T) {
	tests := []struct {
		name string
		eps  []Endpoint
		opts []Option
		want []EndpointStats
	}{
		{
			name: "defaults and derived names",
			eps: []Endpoint{
				good(func(e *Endpoint) { e.Name = "" }),
				good(func(e *Endpoint) { e.Name = ""; e.URL = "http://127.0.0.1:9/x"; e.MaxConcurrentCalls = 200 }),
				good(func(e *Endpoint) {
					e.Name = ""
					e.URL = "http://[::1]:9/workspaces/w/services/abc/execute"
					e.MaxConcurrentCalls = 1
				}),
			},
			want: []EndpointStats{
				{Name: "abc", MaxConcurrentCalls: 20, Limit: 20},
				{Name: "127.0.0.1:9", MaxConcurrentCalls: 200, Limit: 200},
				{Name: "abc#2", MaxConcurrentCalls: 1, Limit: 1},
			},
		},
		{
			name: "http to a remote host when allowed",
			eps:  []Endpoint{good(func(e *Endpoint) { e.URL = "http://example.com/x" })},
			opts: []Option{WithInsecureHTTP()},
			want: []EndpointStats{{Name: "east", MaxConcurrentCalls: 20, Limit: 20}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.eps, tt.opts...)
			require.NoError(t, err)
			defer c.Close()
			assert.Equal(t, tt.want, c.Stats().Endpoints)
		})
	}
}

func TestEndpointNeverShowsItsKey(t *testing.T) {
	e := good(func(e *Endpoint) { e.URL = "https://user:pw-" + secretKey + "@h/x" })
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("endpoint", "ep", e)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("endpoint", "ep", e)
	js, err := json.Marshal(e)
	require.NoError(t, err)
	for name, s := range map[string]string{
		"%v": fmt.Sprintf("%v", e), "%+v": fmt.Sprintf("%+v", e), "%#v": fmt.Sprintf("%#v", e),
		"%s": fmt.Sprintf("%s", e), "pointer %v": fmt.Sprintf("%v", &e), "slice %v": fmt.Sprintf("%v", []Endpoint{e}),
		"json": string(js), "slog": logged.String(),
	} {
		assert.NotContains(t, s, secretKey, name)
		assert.Contains(t, s, "east", name)
	}
}

func TestClientCloseIsIdempotent(t *testing.T) {
	c, err := New([]Endpoint{good(nil)})
	require.NoError(t, err)
	assert.NoError(t, c.Close())
	assert.ErrorIs(t, c.Close(), ErrClosed)
	_, err = c.Do(t.Context(), []byte(`{}`))
	assert.ErrorIs(t, err, ErrClosed)
}
