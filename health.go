package amlpool

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/amlpool/amlpool/internal/clock"
)

// Passive health: outlier ejection after consecutive failures, one probe
// after the ejection, a panic threshold, and cool-downs from Retry-After
// hints. All of it reaches calls through pool.usable (admits); whatever makes
// an endpoint usable again kicks the pool so that waiting calls see it.

// Phases of an endpoint's health, in the low bits of health.state.
const (
	phaseHealthy    uint32 = iota
	phaseEjected           // out of rotation until the ejection time ends
	phaseProbeReady        // the ejection ended: the next call to take it is the probe
	phaseProbing           // the probe is in flight: nobody else goes there
	phaseMask       uint32 = 3
	coolingBit      uint32 = 4 // a Retry-After hint holds the endpoint back
)

// ejectionJitter spreads ejection times over ±20 % so that endpoints ejected
// together (a shared outage) are not probed together.
const ejectionJitter = 0.2

// health tracks the endpoints' health for one Client.
type health struct {
	eps       []*endpoint
	pool      *pool
	cfg       *config
	threshold int // consecutive failures that eject; 0: ejection off

	// state holds each endpoint's phase and cooling bit. It is read without
	// a lock on every pick; it is written only under mu.
	state []atomic.Uint32
	// out counts endpoints not in phaseHealthy. Half or more means panic:
	// ejection is ignored.
	out  atomic.Int32
	wake chan struct{} // tells run that a deadline was set
	// fails counts each endpoint's consecutive failures; read without a
	// lock after every attempt, written only under mu.
	fails []atomic.Int32

	// mu guards eh and every write to state, out and fails.
	mu sync.Mutex
	eh []epHealth
}

// epHealth is the part of an endpoint's health only health's methods touch.
type epHealth struct {
	ejections int       // ejections in a row, which lengthen the next one
	back      time.Time // when it was last readmitted
	until     time.Time // end of the current ejection
	coolUntil time.Time // end of the current cool-down
	total     int64     // ejections since New, for Stats
}

func newHealth(eps []*endpoint, p *pool, cfg *config) *health {
	h := &health{
		eps:       eps,
		pool:      p,
		cfg:       cfg,
		threshold: cfg.ejectAfter,
		state:     make([]atomic.Uint32, len(eps)),
		wake:      make(chan struct{}, 1),
		fails:     make([]atomic.Int32, len(eps)),
		eh:        make([]epHealth, len(eps)),
	}
	if cfg.ejectOff {
		h.threshold = 0
	}
	return h
}

// panicking reports whether half or more of the endpoints are out, in which
// case ejection is ignored and every endpoint takes calls.
func (h *health) panicking() bool { return 2*int(h.out.Load()) >= len(h.eps) }

// admits reports whether endpoint i may take calls now.
func (h *health) admits(i int) bool {
	s := h.state[i].Load()
	switch {
	case s == phaseHealthy:
		return true
	case s&coolingBit != 0:
		return false
	case s&phaseMask == phaseProbeReady:
		return true
	default:
		return h.panicking()
	}
}

// claim is called once a call holds a slot on endpoint i. It reports whether
// the call may go there, and whether it is the endpoint's probe: the first
// call to take an endpoint whose ejection has ended.
func (h *health) claim(i int) (probe, ok bool) {
	if h.state[i].Load() == phaseHealthy {
		return false, true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.state[i].Load()
	switch {
	case s == phaseHealthy:
		return false, true
	case s&coolingBit != 0:
		return false, false
	case s&phaseMask == phaseProbeReady:
		h.state[i].Store(s&^phaseMask | phaseProbing)
		return true, true
	default:
		return false, h.panicking()
	}
}

// observe updates endpoint health after an attempt: a Retry-After hint cools
// the endpoint down; a VerdictRetry failure counts towards ejection; any other
// reply proves the endpoint alive and resets the count. Throttles and
// cancelled attempts count neither way. The probe's outcome ends or renews
// the ejection.
func (h *health) observe(o *outcome, cancelled bool) {
	i := o.ep.idx
	if o.retryAfter > 0 {
		h.coolDown(i, o.retryAfter)
	}
	if h.threshold == 0 {
		return
	}
	full := o.err != nil && o.verdict == VerdictFull
	failed := !cancelled && o.err != nil && o.verdict == VerdictRetry
	alive := !cancelled && !failed && !full
	if !o.probe && !failed && (!alive || h.fails[i].Load() == 0) {
		return // the usual case: nothing changes, no lock
	}
	kick := false
	h.mu.Lock()
	phase := h.state[i].Load() & phaseMask
	switch {
	case o.probe && failed:
		kick = h.ejectLocked(o, phase)
	case o.probe && (alive || full):
		kick = h.readmitLocked(o)
	case o.probe:
		// The probe was cancelled: the next call probes instead.
		h.setPhaseLocked(i, phaseProbeReady)
		kick = true
	case phase != phaseHealthy:
		// A call that went there before the ejection or in panic: the
		// probe decides, not it.
	case failed:
		if n := h.fails[i].Add(1); int(n) >= h.threshold {
			kick = h.ejectLocked(o, phase)
		}
	default:
		h.fails[i].Store(0)
	}
	h.mu.Unlock()
	if kick {
		h.pool.kick()
	}
}

// ejectLocked takes o's endpoint out of rotation for a time that doubles
// with each ejection in a row: base, 2×base, 4×base ... up to 10×base, each
// jittered by ±20 %. An endpoint readmitted 10×base ago or more starts again
// from base. It reports whether the pool must be kicked: the ejection
// started a panic, which makes every endpoint usable.
func (h *health) ejectLocked(o *outcome, phase uint32) bool {
	i := o.ep.idx
	e := &h.eh[i]
	now := h.cfg.clock.Now()
	ceiling := 10 * h.cfg.ejectFor
	if phase == phaseHealthy && now.Sub(e.back) >= ceiling {
		e.ejections = 0
	}
	e.ejections++
	e.total++
	d := h.cfg.ejectFor
	for n := 1; n < e.ejections && d < ceiling; n++ {
		d *= 2
	}
	d = min(d, ceiling)
	u := float64(h.cfg.rand()>>11) / (1 << 53) // [0, 1)
	d = time.Duration(float64(d) * (1 - ejectionJitter + 2*ejectionJitter*u))
	e.until = now.Add(d)
	h.fails[i].Store(0)
	wasPanicking := h.panicking()
	h.setPhaseLocked(i, phaseEjected)
	o.ejected = true
	h.cfg.logger.Warn("amlpool: endpoint ejected",
		slog.String("endpoint", o.ep.name), slog.Int("ejections", e.ejections),
		slog.Duration("for", d), slog.Any("error", o.err))
	h.signal()
	if !wasPanicking && h.panicking() {
		h.cfg.logger.Warn("amlpool: half or more of the endpoints are ejected; using all of them",
			slog.Int("ejected", int(h.out.Load())), slog.Int("endpoints", len(h.eps)))
		return true
	}
	return false
}

// readmitLocked puts o's endpoint back in rotation after a good probe. The
// pool must then be kicked.
func (h *health) readmitLocked(o *outcome) bool {
	h.fails[o.ep.idx].Store(0)
	h.eh[o.ep.idx].back = h.cfg.clock.Now()
	h.setPhaseLocked(o.ep.idx, phaseHealthy)
	o.readmitted = true
	h.cfg.logger.Warn("amlpool: endpoint readmitted", slog.String("endpoint", o.ep.name))
	return true
}

// setPhaseLocked moves endpoint i to phase p, keeping its cooling bit, and
// keeps out up to date.
func (h *health) setPhaseLocked(i int, p uint32) {
	s := h.state[i].Load()
	was := s & phaseMask
	h.state[i].Store(s&^phaseMask | p)
	switch {
	case was == phaseHealthy && p != phaseHealthy:
		h.out.Add(1)
	case was != phaseHealthy && p == phaseHealthy:
		h.out.Add(-1)
	}
}

// coolDown holds endpoint i back for d, or longer if an earlier hint says so.
func (h *health) coolDown(i int, d time.Duration) {
	d = min(d, h.cfg.maxRetryAfter)
	if d <= 0 {
		return
	}
	until := h.cfg.clock.Now().Add(d)
	h.mu.Lock()
	defer h.mu.Unlock()
	e := &h.eh[i]
	if until.After(e.coolUntil) {
		e.coolUntil = until
	}
	h.state[i].Store(h.state[i].Load() | coolingBit)
	h.signal()
}

// signal wakes run to look at the deadlines again.
func (h *health) signal() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// run ends ejections and cool-downs when they are due, until stop closes.
// Its timers come from the Client's clock.
func (h *health) run(stop <-chan struct{}) {
	var timer clock.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-stop:
			if timer != nil {
				timer.Stop()
			}
			return
		case <-h.wake:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
			timer, fire = nil, nil
		}
		now := h.cfg.clock.Now()
		if next, ok := h.expire(now); ok {
			timer = h.cfg.clock.NewTimer(next.Sub(now))
			fire = timer.C()
		}
	}
}

// expire ends the ejections and cool-downs due by now and returns when the
// next one is due.
func (h *health) expire(now time.Time) (next time.Time, ok bool) {
	kick := false
	h.mu.Lock()
	for i := range h.eh {
		e := &h.eh[i]
		s := h.state[i].Load()
		if s&coolingBit != 0 {
			if !now.Before(e.coolUntil) {
				h.state[i].Store(s &^ coolingBit)
				kick = true
			} else if !ok || e.coolUntil.Before(next) {
				next, ok = e.coolUntil, true
			}
		}
		if s&phaseMask == phaseEjected {
			if !now.Before(e.until) {
				h.setPhaseLocked(i, phaseProbeReady)
				kick = true
			} else if !ok || e.until.Before(next) {
				next, ok = e.until, true
			}
		}
	}
	h.mu.Unlock()
	if kick {
		h.pool.kick()
	}
	return next, ok
}

// readyIn returns how long until some endpoint may take calls: zero when one
// may now, else the end of the earliest cool-down or ejection holding them
// all back.
func (h *health) readyIn() time.Duration {
	for i := range h.eps {
		if h.admits(i) {
			return 0
		}
	}
	now := h.cfg.clock.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	var soonest time.Time
	for i := range h.eh {
		e := &h.eh[i]
		s := h.state[i].Load()
		t := now
		if s&coolingBit != 0 {
			t = e.coolUntil
		}
		if s&phaseMask == phaseEjected && !h.panicking() && e.until.After(t) {
			t = e.until
		}
		if soonest.IsZero() || t.Before(soonest) {
			soonest = t
		}
	}
	return max(soonest.Sub(now), 0)
}

// ejected reports endpoint i's ejection state and count, for Stats.
func (h *health) ejected(i int) (out bool, total int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state[i].Load()&phaseMask != phaseHealthy, h.eh[i].total
}
