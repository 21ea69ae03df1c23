// Package chaos holds amlpool's chaos suite, in its tests: many goroutines
// call through a pool of amltest endpoints that throttle, stall, reset
// connections, send truncated, slow, malformed and huge replies, answer 5xx
// and restart, while the callers cancel at random; between client and
// servers, toxiproxy proxies (run in the test process, on loopback) add
// network faults to a share of the connections: latency with jitter, a
// bandwidth limit, slow close, a black hole, a data limit, and resets
// mid-body. TestNetworkFaults runs each network fault alone. Afterwards
// the suite checks the library's invariants (docs/hardening.md): every slot free and nobody
// waiting (Stats), no goroutine of amlpool's left (goleak), no endpoint ever
// saw more calls in flight than its cap (on the wire, and at the servers'
// PeakInFlight while no caller gave up on a request), every call ended with
// success or a typed error, showing no key, before its deadline plus a
// scheduling tick, and no panic.
//
// It is a module of its own, so that toxiproxy and its dependencies
// (Prometheus' client, protobuf, gorilla/mux, zerolog) stay out of the root
// go.mod. Run it from this directory:
//
//	go test -race ./...
//
// The long run:
//
//	go test -race -run Chaos ./ -chaos.duration=10m -v
//
// The soak benchmark, not run by CI, reports heap and goroutines over a long
// mixed load:
//
//	go test -run '^$' -bench Soak -benchtime=1x ./ -chaos.duration=10m
package chaos
