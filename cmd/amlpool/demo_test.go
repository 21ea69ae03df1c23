package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"
)

func TestDemoPrintsEveryEndpointWithoutThrottles(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out, errOut bytes.Buffer
	code := run([]string{"demo", "-endpoints", "3", "-mcc", "2", "-latency", "1ms", "-duration", "300ms"}, &out, &errOut)
	assert.Equal(t, 0, code, errOut.String())
	text := out.String()
	for _, name := range []string{"endpoint1", "endpoint2", "endpoint3"} {
		assert.Contains(t, text, name)
	}
	assert.Contains(t, text, "ceiling: 3 x 2 x 1000 / 1 = 6000 calls/s")
	assert.Contains(t, text, "0 failed")
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "endpoint") && !strings.Contains(line, "throttles") {
			fields := strings.Fields(line)
			assert.Equal(t, "0", fields[len(fields)-1], "throttles in %q", line)
		}
	}
}

func TestDemoShowsTheLivePicture(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out, errOut bytes.Buffer
	code := run([]string{"demo", "-endpoints", "2", "-mcc", "3", "-latency", "1ms", "-duration", "400ms", "-every", "100ms"}, &out, &errOut)
	assert.Equal(t, 0, code, errOut.String())
	text := out.String()
	assert.Contains(t, text, "live ")
	assert.Contains(t, text, "waiting for a slot:")
	for _, name := range []string{"endpoint1", "endpoint2"} {
		assert.Regexp(t, name+`\s+in flight [0-3]/3\s+\d+ calls/s\s+throttles 0`, text)
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"demo", "-mcc", "201"}, 2, "-mcc 201"},
		{[]string{"demo", "-endpoints", "0"}, 2, "-endpoints 0"},
		{[]string{"demo", "-latency", "0s"}, 2, "-latency 0s"},
		{[]string{"demo", "-every", "-1s"}, 2, "-every -1s"},
		{[]string{"demo", "-callers", "-1"}, 2, "-callers -1"},
		{[]string{"demo", "-callers", "65537"}, 2, "amlpool demo: -callers 65537: must be at most 65536\n"},
		{[]string{"demo", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"nope"}, 2, `unknown command "nope"`},
		{nil, 2, "Usage: amlpool"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		assert.Equal(t, tt.code, run(tt.args, &out, &errOut), tt.args)
		assert.Contains(t, errOut.String(), tt.msg, tt.args)
	}
}

func TestHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	assert.Equal(t, 0, run([]string{"demo", "-h"}, &out, &errOut))
	assert.Contains(t, errOut.String(), "Examples:")
	assert.Equal(t, 0, run([]string{"help"}, &out, &errOut))
	assert.Contains(t, out.String(), "demo")
	// plan's help says nothing of it: the usage gives every command's.
	assert.Contains(t, out.String(), "Exit status: 0 done; 1 the run failed")
	assert.Contains(t, out.String(), "2 bad flags, config or input; 130 interrupted")
}

// The ceiling's latency is in milliseconds with its fraction: 500µs once
// printed as "/ 0" beside a ceiling of 4000 calls/s.
func TestDemoCeilingSubMillisecondLatency(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run([]string{"demo", "-endpoints", "1", "-mcc", "2", "-latency", "500us", "-duration", "1ms", "-every", "0"}, &out, &errOut)
	assert.Equal(t, 0, code, errOut.String())
	assert.Contains(t, out.String(), "ceiling: 1 x 2 x 1000 / 0.5 = 4000 calls/s\n")
}

// A demo in which calls failed exits with status 1, after its figures,
// saying how many failed and the first error, as bench does; it once
// exited 0 whatever failed.
func TestDemoExitsOneWhenCallsFailed(t *testing.T) {
	defer goleak.VerifyNone(t)
	cfg := demoConfig{endpoints: 2, mcc: 2, latency: time.Millisecond, duration: 200 * time.Millisecond, callers: 4, kind: amlpool.Classic,
		fault: func(n int64) amltest.Fault {
			if n%2 == 0 {
				return amltest.Fault{Status: 400} // not retried: the call fails
			}
			return amltest.Fault{}
		}}
	var out, errOut bytes.Buffer
	code := exitStatus(&errOut, "demo", demo(t.Context(), cfg, &out))
	assert.Equal(t, 1, code, errOut.String())
	assert.Contains(t, out.String(), "first error:")
	assert.Regexp(t, `^amlpool demo: [1-9]\d* of [1-9]\d* calls failed; the first: .*400`, errOut.String())
	assert.NotRegexp(t, `\(\d+ ok, 0 failed\)`, out.String())
}

// Calls that fail with errors of different types (an *amlpool.APIError for
// a 400, an *amlpool.CallError for a reply that is not JSON, after its
// retries) are counted as the others are: the first error was once kept
// in an atomic.Value, which panics when a second, of another type, is
// offered to it.
func TestDemoFailuresOfDifferentTypes(t *testing.T) {
	defer goleak.VerifyNone(t)
	cfg := demoConfig{endpoints: 1, mcc: 4, latency: time.Millisecond, duration: 200 * time.Millisecond, callers: 4, kind: amlpool.Classic,
		fault: func(n int64) amltest.Fault {
			if n%2 == 0 {
				return amltest.Fault{Status: 400}
			}
			return amltest.Fault{Body: []byte("{nope")}
		}}
	var out, errOut bytes.Buffer
	code := exitStatus(&errOut, "demo", demo(t.Context(), cfg, &out))
	assert.Equal(t, 1, code, errOut.String())
	assert.Regexp(t, `^amlpool demo: [1-9]\d* of [1-9]\d* calls failed; the first: `, errOut.String())
}
