package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestTwoReplicasStayWithinTheCaps(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out, "", 500*time.Millisecond))
	t.Log(out.String())
	assert.Contains(t, out.String(), "endpoint east: cap 4, peak in flight 4, throttled 0")
	assert.Contains(t, out.String(), "endpoint west: cap 4, peak in flight 4, throttled 0")
	assert.Contains(t, out.String(), "2 replicas at its last heartbeat")
}
