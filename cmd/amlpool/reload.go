package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/amlpool/amlpool"
)

// reloader applies the config file to a running Client on SIGHUP, so that a
// long run can take another endpoint, a new key or a new cap without
// stopping. Only the endpoints change: the ports, columns, chunk size and
// global parameters of a run stay those it started with.
type reloader struct {
	path   string
	keys   keySource
	opts   scoreOptions // the run's files, which the config's key and token files must not be (distinctFiles)
	client *amlpool.Client
	say    func(string) // prints a line of its own, even under a progress bar

	cfg *poolConfig        // the config in force
	eps []amlpool.Endpoint // its endpoints, keys resolved

	tally *endpointTally // the endpoints' counters, for the run's statistics
}

// hupHandler handles SIGHUP for the whole life of a score command, so that
// the signal never kills it. While rows are scored a SIGHUP reloads the
// config (reloader.reload). One that comes before (while the input's
// header is read from a pipe, say) is kept and applied when the scoring
// starts; one that comes after is ignored. Each is said on stderr.
type hupHandler struct {
	on   chan func()   // what a SIGHUP does from now on
	ack  chan struct{} // the handler took what on sent
	done chan struct{}
}

// handleHUP starts handling SIGHUP, until stop. stderr must be safe for
// concurrent use.
func handleHUP(stderr io.Writer) *hupHandler {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	h := &hupHandler{on: make(chan func()), ack: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		defer signal.Stop(sig)
		pending := false
		act := func() {
			if !pending {
				fmt.Fprintln(stderr, "amlpool score: SIGHUP: the config is read again when the scoring starts")
			}
			pending = true
		}
		for {
			select {
			case f, ok := <-h.on:
				if !ok {
					return
				}
				if pending {
					pending = false
					f()
				}
				act = f
				h.ack <- struct{}{}
			case <-sig:
				act()
			}
		}
	}()
	return h
}

// scoring makes a SIGHUP run reload from now on. A SIGHUP that came before
// is applied before it returns.
func (h *hupHandler) scoring(reload func()) {
	h.on <- reload
	<-h.ack
}

// over ignores a SIGHUP from now on. Once it returns, no reload runs.
func (h *hupHandler) over(stderr io.Writer) {
	h.on <- func() { fmt.Fprintln(stderr, "amlpool score: SIGHUP: ignored: the scoring is over") }
	<-h.ack
}

// stop ends the handling.
func (h *hupHandler) stop() {
	close(h.on)
	<-h.done
}

// reload reads the config again and gives its endpoints to the Client. A
// config that fails to load or check changes nothing: the endpoints in use
// go on, and the error is said. The checks are the first load's
// (prepare): a key or token file the config names must not be one the run
// writes (--out, --rejects, --stats) nor its input, whose text would be
// sent as a key; the advice is then to fix the config, as the run keeps
// its files.
func (r *reloader) reload() {
	cfg, eps, err := loadConfig(r.path, r.keys)
	if err == nil {
		err = distinctFiles(r.opts, true, cfg.keyFiles(r.path)...)
	}
	if err == nil {
		keepTokenSources(r.cfg, r.eps, cfg, eps)
		warnTokenFailures(eps, "score", r.say)
		// Before and after: an endpoint removed without calls in flight
		// leaves the Client's Stats at once, one with calls once they end.
		r.tally.note(r.client.Stats())
		err = r.client.SetEndpoints(eps)
		r.tally.note(r.client.Stats())
		err = fileError(r.path, cfg, err)
	}
	if err != nil {
		r.say(fmt.Sprintf("amlpool score: SIGHUP: %v; the endpoints in use go on", err))
		return
	}
	msg := "amlpool score: SIGHUP: " + r.path + ": " + describeChanges(r.eps, eps)
	if !sameRunSettings(r.cfg, cfg) {
		msg += " (only endpoints change during a run: the other settings apply to the next)"
	}
	r.say(msg)
	r.cfg, r.eps = cfg, eps
}

// keepTokenSources gives each endpoint of eps, read from cfg, whose token
// file or command is configured as it was in old, whose endpoints oldEps
// are in use, the token source in use. A new one would drop the token the
// old one holds, to run the command again, and SetEndpoints would take it
// for new keys, as of a key rotation (a fault's ejection ends at once, a
// 401 in flight is not counted), though nothing changed.
func keepTokenSources(old *poolConfig, oldEps []amlpool.Endpoint, cfg *poolConfig, eps []amlpool.Endpoint) {
	for i, e := range cfg.Endpoints {
		if e.TokenFile == "" && e.TokenCommand == nil && e.TokenEnv == "" {
			continue // a key: the same value is the same
		}
		for j, o := range old.Endpoints {
			if o.Name == e.Name && o.URL == e.URL && o.TokenFile == e.TokenFile && o.TokenEnv == e.TokenEnv &&
				slices.Equal(o.TokenCommand, e.TokenCommand) && o.TokenTTL == e.TokenTTL && sameEnvToken(oldEps[j].Credential, eps[i].Credential) {
				eps[i].Credential = oldEps[j].Credential
				break
			}
		}
	}
}

// sameEnvToken reports whether a and b, the token sources of one endpoint
// before and after a reload, do not differ by the token they took from the
// environment (true for any other source).
func sameEnvToken(a, b amlpool.Credential) bool {
	x, ok := a.(*staticToken)
	if !ok {
		return true
	}
	y, ok := b.(*staticToken)
	return ok && x.tok == y.tok
}

// describeChanges says what a new set of endpoints changes, by name (the
// URL for an endpoint without one, as amlpool prints it: shownURL): added,
// removed, re-capped, re-keyed, given another token source, moved to
// another URL or to another tier,
// or given other header values (by name). It never shows a key, a
// header's value or a URL's query values.
func describeChanges(old, next []amlpool.Endpoint) string {
	id := func(e amlpool.Endpoint) string { return cmpOr(e.Name, e.URL) }
	label := func(e amlpool.Endpoint) string { return cmpOr(e.Name, shownURL(e)) }
	before := make(map[string]amlpool.Endpoint, len(old))
	for _, e := range old {
		before[id(e)] = e
	}
	var parts []string
	for _, e := range next {
		o, ok := before[id(e)]
		delete(before, id(e))
		switch {
		case !ok:
			added := "added " + label(e) + " (" + capOf(e)
			if e.Tier != 0 {
				added += ", tier " + strconv.Itoa(e.Tier)
			}
			parts = append(parts, added+")")
			continue
		case o.URL != e.URL:
			parts = append(parts, label(e)+": another URL")
		}
		if capOf(o) != capOf(e) {
			parts = append(parts, label(e)+": cap "+capOf(o)+" → "+capOf(e))
		}
		if o.Tier != e.Tier {
			parts = append(parts, label(e)+": tier "+strconv.Itoa(o.Tier)+" → "+strconv.Itoa(e.Tier))
		}
		if o.APIKey != e.APIKey || o.SecondaryKey != e.SecondaryKey {
			parts = append(parts, label(e)+": new key")
		}
		if o.Credential != e.Credential { // the command's own sources, all comparable (keepTokenSources keeps an unchanged one)
			parts = append(parts, label(e)+": new token source")
		}
		if names := changedHeaders(o.Header, e.Header); len(names) == 1 {
			parts = append(parts, label(e)+": header "+names[0])
		} else if len(names) > 1 {
			parts = append(parts, label(e)+": headers "+strings.Join(names, ", "))
		}
	}
	for _, e := range old {
		if _, gone := before[id(e)]; gone {
			parts = append(parts, "removed "+label(e))
		}
	}
	if len(parts) == 0 {
		return "no change to the endpoints"
	}
	return strings.Join(parts, "; ")
}

// shownURL is e's URL as amlpool prints it (Endpoint.LogValue): without a
// password, and with its query's values redacted but for the service's own
// parameters: another may hold a secret (an Azure SAS sig=).
func shownURL(e amlpool.Endpoint) string {
	for _, a := range e.LogValue().Group() {
		if a.Key == "url" {
			return a.Value.String()
		}
	}
	return "an endpoint without a name" // not reached: TestDescribeChanges
}

// changedHeaders returns, sorted, the names of the headers that old or
// next has and the other lacks or holds other values for.
func changedHeaders(old, next http.Header) []string {
	var names []string
	for name, v := range next {
		if !slices.Equal(old[name], v) {
			names = append(names, name)
		}
	}
	for name := range old {
		if _, kept := next[name]; !kept {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// capOf describes an endpoint's cap as the Client reads it.
func capOf(e amlpool.Endpoint) string {
	n := e.MaxConcurrentCalls
	if n == 0 {
		n = amlpool.DefaultMaxConcurrentCalls
	}
	return strconv.Itoa(n) + " slots"
}

// sameRunSettings reports whether two configs agree on everything but
// their endpoints.
func sameRunSettings(a, b *poolConfig) bool {
	x, y := *a, *b
	x.Endpoints, y.Endpoints = nil, nil
	return reflect.DeepEqual(x, y)
}

// fileError names the file's own fields in a *ConfigError from the
// library; other errors pass as they are.
func fileError(path string, cfg *poolConfig, err error) error {
	var ce *amlpool.ConfigError
	if !errors.As(err, &ce) {
		return err
	}
	label, field := ce.Endpoint, ce.Field
	if f, ok := fileField[field]; ok {
		field = f
	}
	for i, e := range cfg.Endpoints {
		if e.Name == ce.Endpoint || "endpoints["+strconv.Itoa(i)+"]" == ce.Endpoint {
			label = epLabel(i, e.Name)
			if f := e.keyField(ce.Field); f != "" {
				field = f
			}
		}
	}
	if label == "" {
		return fmt.Errorf("%s: %q: %s", path, field, ce.Problem)
	}
	return fmt.Errorf("%s: %s: %q: %s", path, label, field, ce.Problem)
}
