//go:build !unix

package pool

import "time"

func cpuTime() (time.Duration, bool) { return 0, false }
