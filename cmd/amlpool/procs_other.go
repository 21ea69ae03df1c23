//go:build !unix

package main

import "time"

// processCPU cannot read the process's CPU time here, so the command
// leaves GOMAXPROCS as the runtime chose it.
func processCPU() (time.Duration, bool) { return 0, false }
