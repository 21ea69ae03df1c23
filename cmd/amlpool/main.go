// Command amlpool drives a pool of Azure ML Classic endpoints.
//
//	amlpool demo     run a saturating load through fake endpoints and show the shares
//	amlpool score    score every row of a CSV or JSON Lines file through the pool
//	amlpool plan     how many endpoints a target rate needs, by the capacity formula
//	amlpool bench    drive load at the pool's endpoints and compare with the formula
//	amlpool fake     serve fake endpoints on loopback, with a config to try the others on
//
// Run "amlpool <command> -h" or "amlpool help <command>" for a command's
// flags.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// command is one subcommand: its name, a line of help, and what it runs.
type command struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"demo", "run a saturating load through in-process fake endpoints and show the shares", runDemo},
	{"score", "score every row of a CSV or JSON Lines file through the pool's endpoints", runScore},
	{"plan", "how many endpoints a target rate needs, by the capacity formula", runPlan},
	{"bench", "drive load at the pool's endpoints (or fakes) and compare with the formula", runBench},
	{"fake", "serve fake endpoints on this machine and write a config to try the other commands on", runFake},
}

// stopProfile, when set, ends the CPU profile that a build with the tag
// amlpoolprof started (prof.go); the command as shipped has none.
var stopProfile func()

func main() {
	if !procsEnvSet(os.Getenv) {
		fitProcsToWork = fitProcs
	}
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	if stopProfile != nil {
		stopProfile()
	}
	os.Exit(code)
}

// run dispatches to a subcommand and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "help":
		if len(args) > 1 {
			return help(args[1:], stdout, stderr)
		}
		usage(stdout)
		return 0
	case "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "amlpool: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// help runs "amlpool help <command>": that command's -h, on stdout, as
// "amlpool help" prints the usage there.
func help(args []string, stdout, stderr io.Writer) int {
	if len(args) > 1 {
		fmt.Fprintf(stderr, "amlpool help: want one command, got %d: %q\n", len(args), args)
		return 2
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run([]string{"-h"}, stdout, stdout)
		}
	}
	fmt.Fprintf(stderr, "amlpool help: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// parseFlags parses a command's args with fs, whose Usage prints the
// command's help. -h prints that help (done, status 0); a bad flag prints
// flag's one line of error, as "amlpool <command>: " begins the command's
// other error lines, and where the help is, not the help itself, under
// which the error would scroll away (done, status 2). flag would print its
// line bare: its output is muted while it parses.
func parseFlags(fs *flag.FlagSet, args []string) (code int, done bool) {
	help, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = help
	fs.SetOutput(out)
	switch {
	case err == nil:
		return 0, false
	case errors.Is(err, flag.ErrHelp):
		help()
		return 0, true
	}
	fmt.Fprintf(out, "amlpool %s: %v\nRun 'amlpool help %s' for its flags.\n", fs.Name(), err, fs.Name())
	return 2, true
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: amlpool <command> [flags]\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'amlpool <command> -h' or 'amlpool help <command>' for a command's flags and examples.")
	fmt.Fprintln(w, "\nExit status: 0 done; 1 the run failed (score: rows rejected; bench, demo: calls failed; a file not written);\n"+
		"2 bad flags, config or input; 130 interrupted (Ctrl-C or SIGTERM).")
}
