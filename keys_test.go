package amlpool

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestNoKeyInAnyOutput prints, encodes and logs every type that holds or
// once held a key, in every way a user might, and reads back every span,
// log line and metric a Client with all telemetry on produced: none may
// contain the key.
func TestNoKeyInAnyOutput(t *testing.T) {
	busy := newFakeAML(t, always(503))
	bad := newFakeAML(t, always(400))
	o := newObserved(t, []Endpoint{busy.endpoint("busy", 1), bad.endpoint("bad", 1)})
	_, callErr := o.Do(t.Context(), []byte(`{}`)) // throttled, then 400: a *CallError around an *APIError
	require.Error(t, callErr)
	var apiErr *APIError
	require.ErrorAs(t, callErr, &apiErr)
	_, cfgErr := New([]Endpoint{good(func(e *Endpoint) { e.APIKey = secretKey + "\n" })})
	require.ErrorIs(t, cfgErr, ErrInvalidConfig)

	values := map[string]any{
		"Endpoint":          good(nil),
		"*Endpoint":         &[]Endpoint{good(nil)}[0],
		"[]Endpoint":        []Endpoint{good(nil)},
		"*pool.Endpoint":    o.pool.Endpoints()[0],
		"[]*pool.Endpoint":  o.pool.Endpoints(),
		"*pool.Set":         o.pool.Set(),
		"*Client":           o.Client,
		"config":            o.cfg,
		"*telemetry":        o.tel,
		"Stats":             o.Stats(),
		"*CallError":        callErr,
		"*APIError":         apiErr,
		"*ConfigError":      cfgErr,
		"[]LimitedEndpoint": []LimitedEndpoint{limited(o.pool.Endpoints()[0])},
	}
	for name, v := range values {
		for _, key := range secrets {
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
				s := fmt.Sprintf(verb, v)
				assert.NotContains(t, s, key, "%s printed with %s", name, verb)
				assert.NotContains(t, s, fmt.Sprintf("%x", key), "%s printed with %s", name, verb)
			}
			if js, err := json.Marshal(v); err == nil {
				assert.NotContains(t, string(js), key, "%s as JSON", name)
			}
			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("value", "v", v)
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("value", "v", v)
			assert.NotContains(t, buf.String(), key, "%s logged", name)
		}
	}

	// Everything the Client's own telemetry produced.
	for _, key := range secrets {
		assert.NotContains(t, o.logs.String(), key, "log lines")
	}
	assert.NotEmpty(t, o.logLines(t, "amlpool: attempt"))
	spans := o.spans.Ended()
	require.NotEmpty(t, spans)
	for _, s := range spans {
		kvs := append([]attribute.KeyValue{}, s.Attributes()...)
		for _, e := range s.Events() {
			kvs = append(kvs, e.Attributes...)
		}
		for _, key := range secrets {
			for _, kv := range kvs {
				assert.NotContains(t, kv.Value.String(), key, "span %s attribute %s", s.Name(), kv.Key)
			}
			assert.NotContains(t, s.Status().Description, key, "span %s status", s.Name())
		}
	}
	rm := o.collect(t)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, set := range pointAttrs(m.Data) {
				for _, key := range secrets {
					assert.NotContains(t, set.Encoded(attribute.DefaultEncoder()), key, m.Name)
				}
			}
		}
	}
}

func pointAttrs(d metricdata.Aggregation) []attribute.Set {
	var out []attribute.Set
	switch d := d.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	}
	return out
}
