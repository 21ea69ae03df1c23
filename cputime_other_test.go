//go:build !unix

package amlpool

import "time"

func cpuTime() (time.Duration, bool) { return 0, false }
