package chaos

import (
	"bytes"
	"encoding/json"
	"net/url"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// The network between client and servers is faulted by toxiproxy, run in
// this process on loopback: each endpoint's URL points at a proxy of its
// own, which relays to the amltest server and applies its toxics to the
// bytes (toxiproxy's documentation lists them). The proxies are driven
// through toxiproxy's Go API; no HTTP API server is started.

// toxiServer holds what toxiproxy's proxies need of a server: a logger and
// metrics, both off.
var toxiServer = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())

func init() {
	// Some toxics log through zerolog's global logger; keep test output
	// to the tests.
	zerolog.SetGlobalLevel(zerolog.Disabled)
}

// netProxy is one toxiproxy proxy in front of one server.
type netProxy struct {
	p *toxiproxy.Proxy
}

// newNetProxy starts a proxy on a free loopback port that relays to
// upstream (host:port). Stop it with close.
func newNetProxy(t testing.TB, name, upstream string) *netProxy {
	t.Helper()
	p := toxiproxy.NewProxy(toxiServer, name, "127.0.0.1:0", upstream)
	require.NoError(t, p.Start())
	return &netProxy{p: p}
}

// via returns rawURL with its host replaced by the proxy's address.
func (n *netProxy) via(t testing.TB, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	u.Host = n.p.Listen
	return u.String()
}

// close stops the proxy and closes every connection through it.
func (n *netProxy) close() { n.p.Stop() }

// toxic is one toxic, in the form toxiproxy's API takes.
type toxic struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     string         `json:"stream"` // "downstream" (server to client) or "upstream"
	Toxicity   float32        `json:"toxicity"`
	Attributes map[string]any `json:"attributes"`
}

func (n *netProxy) add(t toxic) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	_, err = n.p.Toxics.AddToxicJson(bytes.NewReader(b))
	return err
}

// Toxics are set before any traffic and never changed while connections
// are open: toxiproxy v2.12.0 changes the toxics of live connections with
// data races (UpdateToxicJson against ToxicStub.Run) and can panic (index
// out of range in ToxicLink.AddToxic) when toxics come and go under load.
// Faults vary from connection to connection instead: each toxic acts on a
// connection with its toxicity, drawn when the connection opens, and the
// run's restarts, resets and timeouts keep opening new ones.

// armedReset is a reset_peer toxic that never acts (toxicity 0). Its
// presence alone makes toxiproxy set SO_LINGER 0 on every connection it
// relays, so that a connection another toxic ends mid-reply (limit_data) is
// reset with an RST, not closed with a FIN: a connection reset mid-body.
var armedReset = toxic{Name: "armed_reset", Type: "reset_peer", Stream: "downstream", Toxicity: 0,
	Attributes: map[string]any{"timeout": 0}}

// The network faults. All act on the replies (downstream): a request that
// reaches its server is answered at once, so the server-side count of calls
// in flight stays a witness of the client's caps. A fault that held
// requests back on their way to the server would deliver some after their
// callers gave up and freed the slot, and no client can keep those from
// overlapping newer calls at the server.
func latencyToxic(ms, jitter int, toxicity float32) toxic {
	return toxic{Name: "latency", Type: "latency", Stream: "downstream", Toxicity: toxicity,
		Attributes: map[string]any{"latency": ms, "jitter": jitter}}
}

func bandwidthToxic(kbps int, toxicity float32) toxic {
	return toxic{Name: "bandwidth", Type: "bandwidth", Stream: "downstream", Toxicity: toxicity,
		Attributes: map[string]any{"rate": kbps}}
}

func slowCloseToxic(ms int, toxicity float32) toxic {
	return toxic{Name: "slow_close", Type: "slow_close", Stream: "downstream", Toxicity: toxicity,
		Attributes: map[string]any{"delay": ms}}
}

// blackHoleToxic drops every byte and never closes the connection.
func blackHoleToxic(toxicity float32) toxic {
	return toxic{Name: "black_hole", Type: "timeout", Stream: "downstream", Toxicity: toxicity,
		Attributes: map[string]any{"timeout": 0}}
}

func limitDataToxic(bytes int, toxicity float32) toxic {
	return toxic{Name: "limit_data", Type: "limit_data", Stream: "downstream", Toxicity: toxicity,
		Attributes: map[string]any{"bytes": bytes}}
}

// weatherToxics are the chaos mix's network faults for the proxy of
// endpoint i: each acts on a share of the connections. Even endpoints reset
// connections that limit_data cuts (armedReset), odd ones close them. The
// black hole is left out without abandon, as hangs are.
func weatherToxics(i int, abandon bool) []toxic {
	tx := []toxic{
		latencyToxic(20, 15, 0.3),
		bandwidthToxic(16, 0.15),
		slowCloseToxic(200, 0.2),
		limitDataToxic(300, 0.1),
	}
	if abandon {
		tx = append(tx, blackHoleToxic(0.05))
	}
	if i%2 == 0 {
		tx = append([]toxic{armedReset}, tx...)
	}
	return tx
}
