package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestTwoReplicasStayWithinTheCaps(t *testing.T) {
	var out bytes.Buffer
	// A 1 s Redis timeout: miniredis runs its Lua in Go, slowly under -race
	// on a busy CI host, and this test is about the caps, not the fallback.
	require.NoError(t, run(context.Background(), &out, "", 2*time.Second, time.Second))
	t.Log(out.String())
	lines := regexp.MustCompile(`endpoint (\w+): cap 4, peak in flight (\d+), throttled (\d+)`).FindAllStringSubmatch(out.String(), -1)
	require.Len(t, lines, 2)
	for _, l := range lines {
		peak, _ := strconv.Atoi(l[2])
		assert.LessOrEqual(t, peak, 4, "endpoint %s: more than its cap in flight", l[1])
		assert.Equal(t, "0", l[3], "endpoint %s throttled", l[1])
	}
	// Calls went through (how many depends on the machine: miniredis runs
	// its Lua in Go, slowly under -race).
	assert.Regexp(t, `replica \d: [1-9]\d* calls`, out.String())
}
