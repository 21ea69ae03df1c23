package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(serveEnv) != "" {
		// The overhead workload's endpoint process, started by startChild.
		serveChild()
		return
	}
	goleak.VerifyTestMain(m)
}

// TestRunSmoke runs every workload through every system for a moment and
// checks the report, not the figures: the windows are far too short to mean
// anything. The one behaviour it holds amlpool to is the invariant of the
// whole library: its calls never make a server throttle.
func TestRunSmoke(t *testing.T) {
	cfg, err := parseFlags([]string{"-md", "-d", "150ms", "-warmup", "50ms",
		"-endpoints", "3", "-mcc", "2", "-latency", "5ms", "-callers", "9"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := run(context.Background(), cfg, childLauncher(exe), io.Discard)
	if err != nil {
		t.Fatal(err)
	}

	names := []string{"saturation", "heterogeneous", "failure", "overhead"}
	if len(rep.sections) != len(names) {
		t.Fatalf("got %d sections, want %d", len(rep.sections), len(names))
	}
	for i, s := range rep.sections {
		if s.w.name != names[i] {
			t.Errorf("section %d is %q, want %q", i, s.w.name, names[i])
		}
		want := 0
		for _, sys := range systems() {
			if sys.runsIn(s.w) {
				want++
			}
		}
		if len(s.rows) != want {
			t.Errorf("%s: got %d rows, want %d", s.w.name, len(s.rows), want)
		}
		for _, r := range s.rows {
			if strings.HasPrefix(r.sys.name, "amlpool") && r.r.throttles != 0 {
				t.Errorf("%s: %s made the servers throttle %d calls", s.w.name, r.sys.name, r.r.throttles)
			}
		}
	}

	var out bytes.Buffer
	rep.markdown(&out)
	for _, want := range []string{"| system | goodput (calls/s) |", "| amlpool Random (default) |",
		"| net/http bare |", "**overhead**", "× bare net/http"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("Markdown output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	rep.text(&out)
	if !strings.Contains(out.String(), "saturation:") {
		t.Errorf("text output lacks the saturation table:\n%s", out.String())
	}
}

func TestParseFlagsRejects(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in the error
	}{
		{"zero window", []string{"-d", "0"}, "-d"},
		{"no runs", []string{"-runs", "0"}, "-runs"},
		{"one endpoint", []string{"-endpoints", "1"}, "-endpoints"},
		{"cap too high", []string{"-mcc", "201"}, "-mcc"},
		{"unknown workload", []string{"-workloads", "saturation,soak"}, `"soak"`},
		{"bad flag", []string{"-nope"}, "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parseFlags(%q) = %v, want an error naming %s", tt.args, err, tt.want)
			}
		})
	}
}

func TestSelectWorkloadsAndSystems(t *testing.T) {
	cfg, err := parseFlags([]string{"-d", "50ms", "-warmup", "0", "-workloads", "failure",
		"-systems", "AMLPOOL,naive", "-endpoints", "2", "-mcc", "1", "-latency", "1ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := run(context.Background(), cfg, childLauncher(exe), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.sections) != 1 || rep.sections[0].w.name != "failure" {
		t.Fatalf("ran %d sections, want only failure", len(rep.sections))
	}
	for _, r := range rep.sections[0].rows {
		if !strings.HasPrefix(r.sys.name, "amlpool") && r.sys.name != "naive" {
			t.Errorf("ran %s, not selected", r.sys.name)
		}
	}
}
