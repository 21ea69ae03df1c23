package redislimit

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/internal/clock"
)

// Defaults of the options below.
const (
	// DefaultPool names the key space when WithPool is not given.
	DefaultPool = "default"
	// DefaultTTL is how long a lease outlives its process: a crashed
	// replica's slots come back within it.
	DefaultTTL = 10 * time.Second
	// DefaultTimeout bounds every Redis round trip. A limiter that waits
	// seconds for Redis costs every call those seconds; past this the
	// operation counts as failed and the failure mode applies.
	DefaultTimeout = 100 * time.Millisecond
	// DefaultProbeInterval is how often a Limiter in fallback checks whether
	// Redis is back.
	DefaultProbeInterval = time.Second
	// DefaultMinBackoff and DefaultMaxBackoff bound the jittered wait
	// between two tries of a process's oldest waiting call while the fleet is
	// full. A release by this process, or a release notification, cuts the
	// wait short.
	DefaultMinBackoff = 5 * time.Millisecond
	DefaultMaxBackoff = 50 * time.Millisecond
	// DefaultHandoff is how long a lease may go from call to call of one
	// process without a round trip (WithHandoff).
	DefaultHandoff = 500 * time.Millisecond
)

// FailureMode says what a Limiter does while Redis is unreachable or slow.
type FailureMode int

const (
	// FailStatic gives each process a share of each endpoint's cap:
	// ⌈MaxConcurrentCalls ÷ replicas⌉, with replicas as last seen in Redis,
	// and at least WithExpectedReplicas. The fleet stays within
	// MaxConcurrentCalls + replicas − 1. The default.
	FailStatic FailureMode = iota
	// FailOpen lets each process use each endpoint's full cap, as if it were
	// alone: the fleet may send replicas × the cap, and the endpoints
	// throttle the excess.
	FailOpen
	// FailClosed refuses calls: Acquire fails with an error wrapping
	// amlpool.ErrNoCapacity until Redis is back.
	FailClosed
)

func (m FailureMode) String() string {
	switch m {
	case FailStatic:
		return "static"
	case FailOpen:
		return "open"
	case FailClosed:
		return "closed"
	}
	return fmt.Sprintf("FailureMode(%d)", int(m))
}

// An Option configures a Limiter. Options are applied in order by New; a
// later option of the same kind wins.
type Option interface {
	apply(*config)
}

type config struct {
	pool       string
	ttl        time.Duration
	renew      time.Duration // 0: ttl/3
	timeout    time.Duration
	probe      time.Duration
	mode       FailureMode
	replicas   int
	minBackoff time.Duration
	maxBackoff time.Duration
	notify     bool
	handoff    time.Duration // 0: off
	health     bool
	logger     *slog.Logger

	// Test seams, set through export_test.go.
	clock      clock.Clock
	rand       func() uint64
	onTick     func(done bool) // called between a tick's round trip and the use of its reply, and when it is over
	onReleased func()          // called after a release's round trip, before its reply is used
}

func defaultConfig() config {
	return config{
		pool:       DefaultPool,
		ttl:        DefaultTTL,
		timeout:    DefaultTimeout,
		probe:      DefaultProbeInterval,
		mode:       FailStatic,
		minBackoff: DefaultMinBackoff,
		maxBackoff: DefaultMaxBackoff,
		notify:     true,
		handoff:    DefaultHandoff,
		health:     true,
		logger:     slog.New(slog.DiscardHandler),
		clock:      clock.Real,
		rand:       rand.Uint64,
	}
}

func buildConfig(opts []Option) (config, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o.apply(&cfg)
		}
	}
	if cfg.renew == 0 {
		cfg.renew = cfg.ttl / 3
	}
	bad := func(field, problem string) (config, error) {
		return cfg, &amlpool.ConfigError{Field: "redislimit." + field, Problem: problem}
	}
	switch {
	case cfg.pool == "" || len(cfg.pool) > 64:
		return bad("WithPool", "must be 1 to 64 characters")
	case strings.ContainsAny(cfg.pool, "{}: \t\r\n"):
		return bad("WithPool", "must not contain braces, colons or white space")
	case cfg.ttl < 10*time.Millisecond:
		return bad("WithTTL", "must be at least 10ms")
	case cfg.renew <= 0 || cfg.renew >= cfg.ttl:
		return bad("WithRenewInterval", "must be positive and shorter than the TTL")
	case cfg.timeout <= 0 || cfg.timeout >= cfg.ttl:
		return bad("WithTimeout", "must be positive and shorter than the TTL")
	case cfg.probe <= 0:
		return bad("WithProbeInterval", "must be positive")
	case cfg.mode < FailStatic || cfg.mode > FailClosed:
		return bad("WithFailureMode", "unknown mode "+cfg.mode.String())
	case cfg.replicas < 0:
		return bad("WithExpectedReplicas", "must be at least 1")
	case cfg.minBackoff <= 0 || cfg.maxBackoff < cfg.minBackoff:
		return bad("WithBackoff", "need 0 < min <= max")
	case cfg.handoff < 0:
		return bad("WithHandoff", "must be positive (WithoutHandoff to turn it off)")
	}
	if cfg.logger == nil {
		cfg.logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

type poolOption string

func (o poolOption) apply(c *config) { c.pool = string(o) }

// WithPool names the set of endpoints whose caps are shared: every process
// that uses the same name (and the same Redis) shares the same slots. Use one
// name per service, or per Redis database shared by unrelated services.
// 1–64 characters, no braces, colons or white space. Default: DefaultPool.
func WithPool(name string) Option { return poolOption(name) }

type ttlOption time.Duration

func (o ttlOption) apply(c *config) { c.ttl = time.Duration(o) }

// WithTTL sets how long a lease lives in Redis without renewal: the longest a
// crashed process's slots stay taken. Calls that run longer are renewed in
// the background (WithRenewInterval). Default: DefaultTTL (10 s).
func WithTTL(d time.Duration) Option { return ttlOption(d) }

type renewOption time.Duration

func (o renewOption) apply(c *config) { c.renew = time.Duration(o) }

// WithRenewInterval sets how often a process renews the leases of its
// long-running calls, sends its heartbeat (which gives the replica count)
// and announces its limits. It must be shorter than the TTL; a third of it
// tolerates one missed renewal. Default: TTL ÷ 3.
func WithRenewInterval(d time.Duration) Option { return renewOption(d) }

type timeoutOption time.Duration

func (o timeoutOption) apply(c *config) { c.timeout = time.Duration(o) }

// WithTimeout bounds each Redis round trip, whatever the client's own
// timeouts. Past it the operation has failed; three failures in a row over
// at least two timeouts switch the Limiter to its failure mode until a probe
// succeeds. Default: DefaultTimeout (100 ms).
func WithTimeout(d time.Duration) Option { return timeoutOption(d) }

type probeOption time.Duration

func (o probeOption) apply(c *config) { c.probe = time.Duration(o) }

// WithProbeInterval sets how often a Limiter in fallback tries Redis again.
// Default: DefaultProbeInterval (1 s).
func WithProbeInterval(d time.Duration) Option { return probeOption(d) }

type modeOption FailureMode

func (o modeOption) apply(c *config) { c.mode = FailureMode(o) }

// WithFailureMode chooses what happens while Redis is unreachable or slow.
// Default: FailStatic.
func WithFailureMode(m FailureMode) Option { return modeOption(m) }

type replicasOption int

func (o replicasOption) apply(c *config) {
	c.replicas = int(o)
	if o < 1 {
		c.replicas = -1 // refused by buildConfig
	}
}

// WithExpectedReplicas sets the fewest replicas FailStatic assumes: it
// divides each cap by the larger of n and the replica count last seen in
// Redis. Set it to the fleet's usual size, so that a replica that has never
// reached Redis (Redis down from the start) still serves calls, within its
// share. Default: none, and then a replica that has never seen the fleet's
// size in Redis takes no slot in fallback: its calls wait until Redis
// answers, since any share it took could, with enough replicas doing the
// same, overload an endpoint.
func WithExpectedReplicas(n int) Option { return replicasOption(n) }

type backoffOption struct{ min, max time.Duration }

func (o backoffOption) apply(c *config) { c.minBackoff, c.maxBackoff = o.min, o.max }

// WithBackoff bounds the jittered wait between two tries while every
// candidate endpoint is full fleet-wide. The wait doubles from min to max
// while tries fail. Default: DefaultMinBackoff (5 ms) to DefaultMaxBackoff
// (50 ms).
func WithBackoff(min, max time.Duration) Option { return backoffOption{min, max} }

type handoffOption time.Duration

func (o handoffOption) apply(c *config) {
	c.handoff = time.Duration(o)
	if o <= 0 {
		c.handoff = -1 // refused by buildConfig
	}
}

// WithHandoff sets how long a lease may stay with this process without a
// round trip: a lease freed while calls here wait for its endpoint goes
// straight to the oldest of them, for up to d after Redis granted it; then
// it goes back to Redis, which keeps it for this process unless another
// replica that waits for the endpoint holds fewer of its leases. Longer d
// means fewer round trips per call; shorter d means a replica that joins a
// busy fleet gets its share sooner. Default: DefaultHandoff (500 ms).
func WithHandoff(d time.Duration) Option { return handoffOption(d) }

// WithoutHandoff turns handoff off: every lease goes back to Redis when its
// call ends, a round trip each way per call.
func WithoutHandoff() Option { return handoffOffOption{} }

type handoffOffOption struct{}

func (handoffOffOption) apply(c *config) { c.handoff = 0 }

type healthOption bool

func (o healthOption) apply(c *config) { c.health = bool(o) }

// WithoutHealth turns off health sharing: the Limiter still shares caps,
// but each replica's Client judges endpoints' health on its own. By default
// a Limiter is an amlpool.HealthSharer: a cool-down (Retry-After), failures,
// an ejection or a readmission that one replica sees reach every replica
// within one notification, and at the latest one tick.
func WithoutHealth() Option { return healthOption(false) }

type notifyOption bool

func (o notifyOption) apply(c *config) { c.notify = bool(o) }

// WithoutReleaseNotify turns off grants between processes. By default a
// process whose calls wait for a full endpoint says so in Redis, and a
// release anywhere in the fleet grants the slot to it at once, announced on
// a pub/sub channel to which each process holds one subscribed connection.
// Without it, a freed slot waits for the next try of a waiting process, at
// its backoff.
func WithoutReleaseNotify() Option { return notifyOption(false) }

type loggerOption struct{ l *slog.Logger }

func (o loggerOption) apply(c *config) { c.logger = o.l }

// WithLogger logs through l: switches to and from the failure mode (Warn and
// Info) and replicas that disagree on a limit (Warn). Default: no logging.
func WithLogger(l *slog.Logger) Option { return loggerOption{l} }
