package amlpool

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A Classic Endpoint prints and encodes as before; Kind, Header and
// Credential show only when set, header values and the Credential's value
// never.
func TestEndpointPrintsOnlineFieldsWhenSet(t *testing.T) {
	classic := Endpoint{Name: "e", URL: "https://h/x", APIKey: "k", MaxConcurrentCalls: 20}
	assert.Equal(t, "{Name:e URL:https://h/x APIKey:[REDACTED] SecondaryKey: MaxConcurrentCalls:20}", classic.String())
	js, err := json.Marshal(classic)
	require.NoError(t, err)
	assert.JSONEq(t, `{"Name":"e","URL":"https://h/x","APIKey":"[REDACTED]","SecondaryKey":"","MaxConcurrentCalls":20}`, string(js))

	online := Endpoint{Name: "e", URL: "https://h/score", Kind: Online, MaxConcurrentCalls: 300,
		Header:     http.Header{"X-B": {"secret-b"}, "X-A": {"secret-a"}},
		Credential: CredentialFunc(func(context.Context) (string, error) { return "t", nil })}
	assert.Equal(t, "{Name:e URL:https://h/score APIKey: SecondaryKey: MaxConcurrentCalls:300 Kind:online "+
		"Header:map[X-A:[REDACTED] X-B:[REDACTED]] Credential:amlpool.CredentialFunc}", online.String())
	js, err = json.Marshal(online)
	require.NoError(t, err)
	assert.JSONEq(t, `{"Name":"e","URL":"https://h/score","APIKey":"","SecondaryKey":"","MaxConcurrentCalls":300,"Kind":"online",
		"Header":{"X-A":"[REDACTED]","X-B":"[REDACTED]"},"Credential":"amlpool.CredentialFunc"}`, string(js))

	var back Endpoint
	require.NoError(t, json.Unmarshal([]byte(`{"URL":"https://h/score","Kind":"online","Header":{"X-A":["1"]}}`), &back))
	assert.Equal(t, Online, back.Kind)
	assert.Equal(t, "1", back.Header.Get("X-A"))
}
