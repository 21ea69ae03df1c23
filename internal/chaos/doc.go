// Package chaos holds amlpool's chaos suite, in its tests: many goroutines
// call through a pool of amltest endpoints that throttle, stall, reset
// connections, send truncated, slow, malformed and huge replies, answer 5xx
// and restart, while the callers cancel at random. Afterwards the suite
// checks amlpool's invariants (docs/hardening.md): every slot free and nobody waiting (Stats),
// no goroutine left (goleak), no endpoint ever saw more calls in flight than
// its cap (the servers' PeakInFlight), every call ended with success or a
// typed error before its deadline plus a scheduling tick, and no panic.
//
// The default run (go test ./...) lasts a few seconds. The long run:
//
//	go test -race -run Chaos ./internal/chaos -chaos.duration=10m -v
//
// The soak benchmark, not run by CI, reports heap and goroutines over a long
// mixed load:
//
//	go test -run '^$' -bench Soak -benchtime=1x ./internal/chaos -chaos.duration=10m
package chaos
