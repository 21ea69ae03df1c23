package amlpool

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/amlpool/amlpool/internal/pool"
)

// HealthSharer is implemented by a Limiter that also carries endpoints'
// health between the replicas that share it, as redislimit's does through
// the same Redis. A Client whose Limiter (WithLimiter) implements it
// connects to it in New: it reports what its attempts show of each
// endpoint (a delay hint, failures, an ejection, a readmission) and applies
// what other replicas report, so that a replica stops sending to an
// endpoint that another one found cooling down or dead, and only one of
// them probes it.
//
// Endpoints are named by LimitedEndpoint.ID, which is the same in every
// replica that configures the same URL.
type HealthSharer interface {
	// ShareHealth connects one Client whose live endpoints are endpoints.
	// The sharer calls apply with what other replicas report of them, one
	// event at a time, from goroutines of its own, until the returned link
	// is closed. apply returns quickly and may call the link's Report.
	ShareHealth(endpoints []LimitedEndpoint, apply func(HealthEvent)) HealthLink
}

// HealthLink is one Client's connection to a HealthSharer. Its methods are
// safe for concurrent use.
type HealthLink interface {
	// Report tells the other replicas what this Client saw. It must not
	// block: a sharer sends in the background, and may drop what it cannot
	// send.
	Report(HealthEvent)
	// SetEndpoints tells the sharer of the Client's live endpoints after
	// Client.SetEndpoints.
	SetEndpoints(endpoints []LimitedEndpoint)
	// Close disconnects the Client: apply is not called once Close has
	// returned.
	Close()
}

// HealthEvent is news of one endpoint's health.
type HealthEvent struct {
	ID   string // the endpoint's LimitedEndpoint.ID
	Kind HealthKind
	// For is how long a cool-down or an ejection lasts from when it was
	// seen.
	For time.Duration
	// Fault marks an ejection for an endpoint fault (a rejected key, no
	// access, no such endpoint): the panic threshold does not put such an
	// endpoint back in rotation.
	Fault bool
	// Failures is how many failed attempts a HealthFailed event counts.
	Failures int
}

// HealthKind is what a HealthEvent tells.
type HealthKind uint8

const (
	// HealthFailed: attempts failed in a way that counts towards ejection
	// (VerdictRetry, but for a 429: an endpoint's rate limit is none).
	// Failures in a row, wherever seen, eject the endpoint once they reach
	// WithEjection's count.
	HealthFailed HealthKind = iota + 1
	// HealthRecovered: a reply proved the endpoint alive after failures; its
	// count of failures in a row starts again.
	HealthRecovered
	// HealthCoolDown: a reply asked to hold the endpoint back For (a
	// Retry-After hint).
	HealthCoolDown
	// HealthEjected: the endpoint is out of rotation For. The replica that
	// reports it probes the endpoint when the time is up; the others wait
	// for the probe's outcome (For, as they receive it, includes time for
	// that).
	HealthEjected
	// HealthReadmitted: the endpoint is back in rotation, its probe having
	// succeeded.
	HealthReadmitted
)

// String returns the kind's name, such as "ejected".
func (k HealthKind) String() string {
	switch k {
	case HealthFailed:
		return "failed"
	case HealthRecovered:
		return "recovered"
	case HealthCoolDown:
		return "cool-down"
	case HealthEjected:
		return "ejected"
	case HealthReadmitted:
		return "readmitted"
	}
	return "HealthKind(" + strconv.Itoa(int(k)) + ")"
}

// limitedAll names the Client's live endpoints to a Limiter.
func (c *Client) limitedAll() []LimitedEndpoint {
	eps := c.pool.Set().Eps
	out := make([]LimitedEndpoint, len(eps))
	for i, e := range eps {
		out[i] = limited(e)
	}
	return out
}

// shareHealth connects the Client to its Limiter's shared health, if it
// has any.
func (c *Client) shareHealth() {
	if hs, ok := c.limiter.(HealthSharer); ok {
		c.health = hs.ShareHealth(c.limitedAll(), c.applyHealth)
	}
}

// reportHealth tells the fleet what attempt a showed of its endpoint:
// its delay hint, and the ejection, readmission, failure or recovery its
// release brought. An attempt whose Credential gave no token sent nothing:
// it shows nothing of the endpoint, only of this replica's Credential, and
// the fleet hears nothing of it, not even the ejection that such failures
// bring here. Nor does it of a 401 or 403 to a token: each replica's
// Credential fetches tokens of its own, for an identity that may be its
// own, so a token refused, or refused access, is this replica's (an
// identity without the role on the endpoint, another tenant or audience, a
// skewed clock), and shared it would take the endpoint out of every
// replica, or all endpoints out of the fleet. Nor does it of a TLS fault
// (isTLSFault): a certificate this replica does not trust, as this
// replica's trust store may be what is wrong, or a plain-HTTP answer to
// its TLS, which a middlebox on this replica's path alone (a sidecar or an intercepting proxy that answers
// port 443 in plain HTTP, an https:// proxy setting for a plain-HTTP
// proxy) can give for every endpoint: shared, one replica's network would
// eject them all fleet-wide, while kept here each replica finds a server
// that really speaks plain HTTP with one attempt of its own, which fails
// over at once.
func (c *Client) reportHealth(a *attempt) {
	if a.auth.Credential() != nil && (a.tok == "" || a.status == http.StatusUnauthorized || a.status == http.StatusForbidden) {
		return
	}
	if a.status == 0 && a.result == pool.Fault && isTLSFault(a.err) {
		return
	}
	id := extOf(a.slot.Ep).id
	if a.retryAfter > 0 {
		c.health.Report(HealthEvent{ID: id, Kind: HealthCoolDown, For: a.retryAfter})
	}
	switch fx := &a.fx; {
	case fx.Ejected > 0:
		c.health.Report(HealthEvent{ID: id, Kind: HealthEjected, For: fx.Ejected, Fault: a.result == pool.Fault})
	case fx.Readmitted:
		c.health.Report(HealthEvent{ID: id, Kind: HealthReadmitted})
	case a.result == pool.Failed:
		c.health.Report(HealthEvent{ID: id, Kind: HealthFailed, Failures: 1})
	case fx.Recovered:
		c.health.Report(HealthEvent{ID: id, Kind: HealthRecovered})
	}
}

// applyHealth applies what another replica reported. Nothing it applies is
// reported again, except an ejection that the fleet's failures made this
// replica decide on.
func (c *Client) applyHealth(ev HealthEvent) {
	var e *pool.Endpoint
	for _, o := range c.pool.Set().Eps {
		if extOf(o).id == ev.ID {
			e = o
			break
		}
	}
	if e == nil {
		return // not one of ours, or no longer
	}
	switch ev.Kind {
	case HealthFailed:
		if fx := c.pool.RemoteFailures(e, ev.Failures); fx.Ejected > 0 {
			c.health.Report(HealthEvent{ID: ev.ID, Kind: HealthEjected, For: fx.Ejected})
			c.tel.remoteHealth(e, "amlpool: endpoint ejected after failures seen across replicas", fx)
		}
	case HealthRecovered:
		c.pool.RemoteRecovered(e)
	case HealthCoolDown:
		// A hint is capped here as this replica's own would be, and
		// ignored when hints are (WithMaxRetryAfter(0)).
		c.pool.CoolDown(e, min(ev.For, c.cfg.maxRetryAfter))
	case HealthEjected:
		if fx := c.pool.RemoteEject(e, ev.For, ev.Fault); fx.Ejected > 0 || fx.Panic {
			c.tel.remoteHealth(e, "amlpool: endpoint ejected by another replica", fx)
		}
	case HealthReadmitted:
		if c.pool.RemoteReadmit(e) {
			c.tel.remoteHealth(e, "amlpool: endpoint readmitted by another replica", pool.Effects{Readmitted: true})
		}
	}
}

// remoteHealth logs, at Warn, a change of e's health that came from the
// fleet, and counts an ejection in the metrics. It is safe on a nil
// *telemetry.
func (t *telemetry) remoteHealth(e *pool.Endpoint, msg string, fx pool.Effects) {
	if t == nil {
		return
	}
	if fx.Ejected > 0 && t.metrics != nil {
		t.metrics.ejections.Add(context.Background(), 1, extOf(e).tel.m.only...)
	}
	if fx.Ejected > 0 || fx.Readmitted {
		attrs := []slog.Attr{slog.String("endpoint", e.Name())}
		if fx.Ejected > 0 {
			attrs = append(attrs, slog.Duration("for", fx.Ejected))
		}
		t.warn.LogAttrs(context.Background(), slog.LevelWarn, msg, attrs...)
	}
	if fx.Panic {
		t.warn.Warn("amlpool: half or more of the endpoints are ejected; using all of them",
			slog.Int("ejected", fx.Out), slog.Int("endpoints", fx.Of))
	}
}

// takeSlot is acquireSlot, again when SetEndpoints cut its wait at the
// Limiter short: the call chooses among the new endpoints, with a max wait
// of its own. Close ends such a wait with ErrClosed.
func (c *Client) takeSlot(ctx context.Context, cl *call, a *attempt) error {
	for {
		err := c.acquireSlot(ctx, cl, a)
		if err != errEndpointsChanged {
			return err
		}
		if c.closed.Load() {
			return ErrClosed
		}
	}
}

// errEndpointsChanged ends a wait at the Limiter that SetEndpoints made
// stale: the attempt takes a slot again, among the new endpoints.
var errEndpointsChanged = errors.New("amlpool: endpoints changed while waiting at the Limiter")

// generation is cancelled by the next SetEndpoints, so that calls waiting
// at a Limiter for the old set's endpoints choose again.
type generation struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func newGeneration() *generation {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &generation{ctx, cancel}
}

// nextGeneration ends the current generation and starts another.
func (c *Client) nextGeneration() {
	if old := c.gen.Swap(newGeneration()); old != nil {
		old.cancel(errEndpointsChanged)
	}
}

// untilEndpointsChange returns ctx, cut short with cause errEndpointsChanged
// by the next SetEndpoints, and the func that releases it.
func (c *Client) untilEndpointsChange(ctx context.Context) (context.Context, func()) {
	g := c.gen.Load()
	lctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(g.ctx, func() { cancel(errEndpointsChanged) })
	return lctx, func() { stop(); cancel(nil) }
}

// staleWait returns errEndpointsChanged for a wait at the Limiter that
// SetEndpoints cut short (wctx, from untilEndpointsChange, under ctx), err
// otherwise.
func staleWait(ctx, wctx context.Context, err error) error {
	if ctx.Err() == nil && context.Cause(wctx) == errEndpointsChanged {
		return errEndpointsChanged
	}
	return err
}
