package pool

import "time"

// Health from elsewhere: what other replicas of a fleet saw of an endpoint,
// applied here as if seen here, with the same invariants: a removed
// endpoint's health no longer matters; the panic threshold and the fault
// bit count an endpoint out whoever ejected it; whatever puts an endpoint
// back in rotation serves waiting calls.
//
// None of these reports anything to be shared again, so news cannot go
// round the fleet in a loop. The one exception is an ejection that
// RemoteFailures causes: that is this replica's decision, reached on the
// fleet's evidence, and the caller shares it as its own.
//
// Whatever takes an endpoint out of rotation serves waiting calls too,
// when there are any: a call that avoids the endpoints it tried may use
// them once no other is left (grantLocked).

// CoolDown holds e back for d, as a delay hint (Retry-After) in one of its
// replies would, or longer if an earlier hint says so.
func (p *Pool) CoolDown(e *Endpoint, d time.Duration) {
	if d <= 0 || e.removed.Load() {
		return
	}
	p.coolDown(e, d)
	if p.nwait.Load() > 0 {
		p.kick()
	}
}

// RemoteFailures counts n failures of e seen elsewhere towards its
// ejection, together with those seen here: EjectAfter in a row, wherever
// they were seen, eject it. It returns the effects of the ejection it
// caused, if any. Nothing happens while e is out of rotation, when
// ejection is off, or for a removed endpoint.
func (p *Pool) RemoteFailures(e *Endpoint, n int) Effects {
	var fx Effects
	if n <= 0 || p.cfg.EjectAfter == 0 || e.health.state.Load()&phaseMask != phaseHealthy {
		return fx
	}
	p.smu.Lock()
	if e.removed.Load() || e.health.state.Load()&phaseMask != phaseHealthy {
		p.smu.Unlock()
		return fx
	}
	kick := false
	if int(e.health.fails.Add(int32(n))) >= p.cfg.EjectAfter {
		kick = p.ejectLocked(e, false, phaseHealthy, &fx) || p.nwait.Load() > 0
	}
	p.smu.Unlock()
	if kick {
		p.kick()
	}
	return fx
}

// RemoteRecovered restarts e's count of failures in a row: a reply seen
// elsewhere proved it alive.
func (p *Pool) RemoteRecovered(e *Endpoint) {
	if e.health.fails.Load() == 0 {
		return
	}
	p.smu.Lock()
	if e.health.state.Load()&phaseMask == phaseHealthy {
		e.health.fails.Store(0)
	}
	p.smu.Unlock()
}

// RemoteEject takes e out of rotation for d because another replica
// ejected it; fault marks an ejection for an endpoint fault. An endpoint in
// rotation, or waiting for its probe, goes out until d from now; one
// ejected already stays out at least that long; one whose probe is in
// flight here is left to that probe. This replica's own count of ejections
// in a row, which sets the length of its next ejection, is unchanged: the
// replica that ejected probes, and d is meant to outlast its probe.
//
// It returns Ejected (d) and the panic fields when e went out of rotation
// here; zero Effects otherwise. Nothing happens when ejection is off or for
// a removed endpoint.
func (p *Pool) RemoteEject(e *Endpoint, d time.Duration, fault bool) Effects {
	var fx Effects
	if d <= 0 || p.cfg.EjectAfter == 0 {
		return fx
	}
	p.smu.Lock()
	if e.removed.Load() {
		p.smu.Unlock()
		return fx
	}
	h := &e.health
	until := p.cfg.Clock.Now().Add(d)
	st := h.state.Load()
	fault = fault || st&faultBit != 0
	kick := false
	switch st & phaseMask {
	case phaseProbing:
	case phaseEjected:
		if until.After(h.until) {
			h.until = until
		}
		if fault && st&faultBit == 0 {
			p.setPhaseLocked(e, phaseEjected, true)
		}
		p.signal()
	default: // healthy, or waiting for its probe
		s := p.set.Load()
		wasPanicking := s.panicking()
		if st&phaseMask == phaseHealthy {
			h.total++
			fx.Ejected = d
		}
		h.until = until
		h.fails.Store(0)
		p.setPhaseLocked(e, phaseEjected, fault)
		p.signal()
		if !wasPanicking && s.panicking() {
			fx.Panic = true
			fx.Out, fx.Of = int(s.out.Load()), len(s.Eps)
		}
		kick = fx.Panic || p.nwait.Load() > 0
	}
	p.smu.Unlock()
	if kick {
		p.kick()
	}
	return fx
}

// RemoteReadmit puts e back in rotation because another replica's probe
// found it well, and reports whether e was out. Its failures in a row start
// again from zero; a cool-down still holds it back until it ends.
func (p *Pool) RemoteReadmit(e *Endpoint) bool {
	if e.health.state.Load()&phaseMask == phaseHealthy {
		return false
	}
	p.smu.Lock()
	if e.removed.Load() || e.health.state.Load()&phaseMask == phaseHealthy {
		p.smu.Unlock()
		return false
	}
	var fx Effects
	p.readmitLocked(e, &fx)
	p.smu.Unlock()
	p.kick()
	return true
}
