package amlpool

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDoSmoke(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		assert.Equal(t, "Bearer k1", r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	}))
	defer srv.Close()
	c, err := New([]Endpoint{{URL: srv.URL + "/workspaces/w/services/abc/execute", APIKey: "k1"}})
	require.NoError(t, err)
	defer c.Close()
	out, err := c.Do(context.Background(), []byte(`{"a":1}`))
	require.NoError(t, err)
	assert.Equal(t, `{"a":1}`, string(out))
	st := c.Stats()
	assert.Equal(t, "abc", st.Endpoints[0].Name)
	assert.EqualValues(t, 1, st.Endpoints[0].Calls)
}
