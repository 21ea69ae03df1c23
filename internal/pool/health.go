package pool

import (
	"sync/atomic"
	"time"

	"github.com/amlpool/amlpool/internal/clock"
)

// Passive health: outlier ejection after consecutive failures, at once for
// an endpoint fault, one probe after each ejection, a panic threshold, and
// cool-downs from Retry-After hints. All of it reaches picks through
// Set.usable; whatever makes an endpoint usable again kicks the line so
// that waiting calls see it. So does whatever takes one out of rotation
// while calls wait (Release, and remote.go): a waiting call that avoids
// the endpoints it tried may use them once no other is left.

// Phases of an endpoint's health, in the low bits of health.state.
const (
	phaseHealthy    uint32 = iota
	phaseEjected           // out of rotation until the ejection time ends
	phaseProbeReady        // the ejection ended: the next call to take it is the probe
	phaseProbing           // the probe is in flight: nobody else goes there
	phaseMask       uint32 = 3
	coolingBit      uint32 = 4 // a Retry-After hint holds the endpoint back
	// faultBit marks an ejection for an endpoint fault (a rejected key, no
	// access, no such endpoint). The panic threshold does not readmit such
	// an endpoint, which cannot serve anyone; only when every endpoint of
	// the Set is out for a fault do calls go to them, and fail promptly.
	faultBit uint32 = 8
)

// ejectionJitter spreads ejection times over ±20 % so that endpoints ejected
// together (a shared outage) are not probed together.
const ejectionJitter = 0.2

// health is one endpoint's health.
type health struct {
	// state holds the phase, cooling bit and fault bit. It is read without
	// a lock on every pick; it is written only under Pool.smu.
	state atomic.Uint32
	// fails counts consecutive failures; read without a lock after every
	// attempt, written only under Pool.smu.
	fails atomic.Int32

	// Guarded by Pool.smu.
	ejections int       // ejections in a row, which lengthen the next one
	back      time.Time // when it was last readmitted
	until     time.Time // end of the current ejection
	coolUntil time.Time // end of the current cool-down
	total     int64     // ejections since the endpoint was made, for Stats
}

// usable reports whether an attempt with exclusion x may go to e now: not
// an endpoint it avoids, not ejected (unless too many are: see panicking),
// not cooling down.
func (s *Set) usable(x *Exclusion, e *Endpoint) bool {
	return !x.Excludes(e) && s.admits(e)
}

// admits reports whether e may take calls now, as far as health goes. The
// healthy case is small enough to inline into every pick.
func (s *Set) admits(e *Endpoint) bool {
	st := e.health.state.Load()
	return st == phaseHealthy || s.admitsOut(st)
}

// admitsOut is admits for an endpoint not plainly healthy, in state st.
func (s *Set) admitsOut(st uint32) bool {
	switch {
	case st&coolingBit != 0:
		return false
	case st&phaseMask == phaseProbeReady:
		return true
	case st&faultBit != 0:
		return s.whole.allFaulted()
	default:
		return s.whole.panicking() // over every tier
	}
}

// panicking reports whether half or more of the endpoints that can serve at
// all are ejected, in which case ejection is ignored and they all take
// calls: passive health is then more likely wrong than right, and the few
// left would take all the load.
func (s *Set) panicking() bool {
	out := s.out.Load()
	return out > 0 && 2*int(out) >= len(s.Eps)-int(s.faulted.Load())
}

// allFaulted reports whether every endpoint is out for a fault: calls then
// go to them anyway, and fail at once with the endpoint's own error.
func (s *Set) allFaulted() bool { return int(s.faulted.Load()) == len(s.Eps) }

// claim is called once a call holds a slot on e. It reports whether the
// call may go there, and whether it is the endpoint's probe: the first call
// to take an endpoint whose ejection has ended. takeOn calls it only for an
// endpoint not plainly healthy.
func (p *Pool) claim(s *Set, e *Endpoint) (probe, ok bool) {
	p.smu.Lock()
	defer p.smu.Unlock()
	st := e.health.state.Load()
	switch {
	case st == phaseHealthy:
		return false, true
	case st&coolingBit != 0:
		return false, false
	case st&phaseMask == phaseProbeReady:
		p.setPhaseLocked(e, phaseProbing, st&faultBit != 0)
		return true, true
	default:
		return false, s.admits(e)
	}
}

// observe updates e's health after an attempt: a cool-down holds it back;
// a Failed attempt counts towards ejection and a Fault ejects at once; any
// reply that proves the endpoint alive resets the count. Throttles, rate
// limits (Limited) and cancelled, abandoned or key-rejected attempts count
// neither way. The probe's outcome ends or renews the ejection; a probe
// that tells nothing (Limited among them) leaves it to the next call. It reports whether the line
// must be served again.
//
// Release does not call it for the usual attempt, which changes nothing: a
// plain success on an endpoint with no failures counted.
func (p *Pool) observe(e *Endpoint, r *Report, probe bool, fx *Effects) (kick bool) {
	if e.removed.Load() {
		if probe {
			p.smu.Lock()
			p.unprobeLocked(e)
			p.smu.Unlock()
		}
		return false // draining: its health no longer matters
	}
	if r.CoolDown > 0 {
		p.coolDown(e, r.CoolDown)
	}
	if p.cfg.EjectAfter == 0 {
		return false
	}
	failed := r.Result == Failed || r.Result == Fault
	alive := r.Result == OK || r.Result == Rejected
	if !probe && !failed && (!alive || e.health.fails.Load() == 0) {
		return false // nothing changes, no lock
	}
	p.smu.Lock()
	defer p.smu.Unlock()
	if e.removed.Load() {
		if probe {
			p.unprobeLocked(e)
		}
		return false
	}
	h := &e.health
	phase := h.state.Load() & phaseMask
	switch {
	case probe && failed:
		return p.ejectLocked(e, r.Result == Fault, phase, fx)
	case probe && (alive || r.Result == Full):
		p.readmitLocked(e, fx)
		return true
	case probe:
		// The probe told nothing: the next call probes instead.
		p.unprobeLocked(e)
		return true
	case phase != phaseHealthy:
		// A call that went there before the ejection or in panic: the
		// probe decides, not it.
		return false
	case r.Result == Fault:
		return p.ejectLocked(e, true, phase, fx)
	case failed:
		if n := h.fails.Add(1); int(n) >= p.cfg.EjectAfter {
			return p.ejectLocked(e, false, phase, fx)
		}
	default:
		h.fails.Store(0)
		fx.Recovered = true
	}
	return false
}

// ejectLocked takes e out of rotation for a time that doubles with each
// ejection in a row: base, 2×base, 4×base ... up to 10×base, each jittered
// by ±20 %. An endpoint readmitted 10×base ago or more starts again from
// base. It reports whether the line must be served: the ejection started a
// panic, which makes every endpoint usable.
func (p *Pool) ejectLocked(e *Endpoint, fault bool, phase uint32, fx *Effects) bool {
	h := &e.health
	now := p.cfg.Clock.Now()
	base := p.cfg.EjectFor
	ceiling := 10 * base
	if phase == phaseHealthy && now.Sub(h.back) >= ceiling {
		h.ejections = 0
	}
	h.ejections++
	h.total++
	d := base
	for n := 1; n < h.ejections && d < ceiling; n++ {
		d *= 2
	}
	d = min(d, ceiling)
	u := float64(p.cfg.Rand()>>11) / (1 << 53) // [0, 1)
	d = time.Duration(float64(d) * (1 - ejectionJitter + 2*ejectionJitter*u))
	h.until = now.Add(d)
	h.fails.Store(0)
	s := p.set.Load()
	wasPanicking := s.panicking()
	p.setPhaseLocked(e, phaseEjected, fault)
	fx.Ejected, fx.Ejections = d, h.ejections
	p.signal()
	if !wasPanicking && s.panicking() {
		fx.Panic = true
		fx.Out, fx.Of = int(s.out.Load()), len(s.Eps)
		return true
	}
	return false
}

// unprobeLocked follows a probe of e that told nothing (cancelled, never
// sent), or that e's health ignored because Update had removed e: the next
// call to take e probes instead. A removed endpoint is left so too, not
// probing: Update may add it back while it drains, and it must not then
// wait for a probe that no one is sending.
func (p *Pool) unprobeLocked(e *Endpoint) {
	p.setPhaseLocked(e, phaseProbeReady, e.health.state.Load()&faultBit != 0)
}

// readmitLocked puts e back in rotation after a good probe.
func (p *Pool) readmitLocked(e *Endpoint, fx *Effects) {
	e.health.fails.Store(0)
	e.health.back = p.cfg.Clock.Now()
	p.setPhaseLocked(e, phaseHealthy, false)
	fx.Readmitted = true
}

// setPhaseLocked moves e to phase ph, keeping its cooling bit and setting
// its fault bit, and keeps the current Set's counts of endpoints out.
func (p *Pool) setPhaseLocked(e *Endpoint, ph uint32, fault bool) {
	st := e.health.state.Load()
	next := st&coolingBit | ph
	if fault && ph != phaseHealthy {
		next |= faultBit
	}
	e.health.state.Store(next)
	if !e.removed.Load() {
		s := p.set.Load()
		s.uncount(st)
		s.count(next)
	}
}

// count adds an endpoint in state st to the Set's counts of endpoints out.
func (s *Set) count(st uint32) {
	switch {
	case st&phaseMask == phaseHealthy:
	case st&faultBit != 0:
		s.faulted.Add(1)
	default:
		s.out.Add(1)
	}
}

// uncount takes an endpoint in state st out of the Set's counts.
func (s *Set) uncount(st uint32) {
	switch {
	case st&phaseMask == phaseHealthy:
	case st&faultBit != 0:
		s.faulted.Add(-1)
	default:
		s.out.Add(-1)
	}
}

// coolDown holds e back for d, or longer if an earlier hint says so.
func (p *Pool) coolDown(e *Endpoint, d time.Duration) {
	until := p.cfg.Clock.Now().Add(d)
	p.smu.Lock()
	defer p.smu.Unlock()
	h := &e.health
	if until.After(h.coolUntil) {
		h.coolUntil = until
	}
	h.state.Store(h.state.Load() | coolingBit)
	p.signal()
}

// forgiveLocked readmits e after Update gave it new keys: an ejection for
// a fault (a rejected key, most likely) ends at once, with a probe.
func (p *Pool) forgiveLocked(e *Endpoint) {
	e.keys.Store(0)
	st := e.health.state.Load()
	if st&faultBit != 0 && st&phaseMask == phaseEjected {
		p.setPhaseLocked(e, phaseProbeReady, true)
	}
}

// signal wakes run to look at the deadlines again.
func (p *Pool) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run ends ejections and cool-downs when they are due, until Close. Its
// timers come from the Pool's clock. Run it in one goroutine.
func (p *Pool) Run() {
	var timer clock.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-p.done:
			if timer != nil {
				timer.Stop()
			}
			return
		case <-p.wake:
			if p.admitted.Swap(false) {
				p.kick()
			}
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
			timer, fire = nil, nil
		}
		now := p.cfg.Clock.Now()
		if next, ok := p.expire(now); ok {
			timer = p.cfg.Clock.NewTimer(next.Sub(now))
			fire = timer.C()
		}
	}
}

// expire ends the ejections and cool-downs due by now and returns when the
// next one is due.
func (p *Pool) expire(now time.Time) (next time.Time, ok bool) {
	kick := false
	p.smu.Lock()
	for _, e := range p.set.Load().Eps {
		h := &e.health
		st := h.state.Load()
		if st&coolingBit != 0 {
			if !now.Before(h.coolUntil) {
				h.state.Store(st &^ coolingBit)
				kick = true
			} else if !ok || h.coolUntil.Before(next) {
				next, ok = h.coolUntil, true
			}
		}
		if st&phaseMask == phaseEjected {
			if !now.Before(h.until) {
				p.setPhaseLocked(e, phaseProbeReady, st&faultBit != 0)
				kick = true
			} else if !ok || h.until.Before(next) {
				next, ok = h.until, true
			}
		}
	}
	p.smu.Unlock()
	if kick {
		p.kick()
	}
	return next, ok
}

// ReadyIn returns how long until some endpoint may take calls: zero when
// one may now, else the end of the earliest cool-down or ejection holding
// them all back.
func (p *Pool) ReadyIn() time.Duration {
	s := p.set.Load()
	for _, e := range s.Eps {
		if s.admits(e) {
			return 0
		}
	}
	now := p.cfg.Clock.Now()
	p.smu.Lock()
	defer p.smu.Unlock()
	var soonest time.Time
	for _, e := range s.Eps {
		h := &e.health
		st := h.state.Load()
		t := now
		if st&coolingBit != 0 {
			t = h.coolUntil
		}
		if st&phaseMask == phaseEjected && h.until.After(t) {
			t = h.until
		}
		if soonest.IsZero() || t.Before(soonest) {
			soonest = t
		}
	}
	return max(soonest.Sub(now), 0)
}

// Ejected reports whether e is out of rotation after failures, and how many
// times it has been ejected.
func (p *Pool) Ejected(e *Endpoint) (out bool, total int64) {
	p.smu.Lock()
	defer p.smu.Unlock()
	return e.health.state.Load()&phaseMask != phaseHealthy, e.health.total
}
