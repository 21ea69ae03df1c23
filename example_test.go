package amlpool_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sort"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// Two endpoints of one web service, each with its own URL, key and cap.
// Here they are fakes; in production, URL and APIKey come from the portal.
func ExampleNew() {
	east := amltest.NewServer(amltest.Config{Name: "east", MaxConcurrentCalls: 20})
	defer east.Close()
	west := amltest.NewServer(amltest.Config{Name: "west", MaxConcurrentCalls: 200})
	defer west.Close()

	c, err := amlpool.New([]amlpool.Endpoint{east.Endpoint(), west.Endpoint()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	for _, e := range c.Stats().Endpoints {
		fmt.Println(e.Name, e.MaxConcurrentCalls)
	}
	// Output:
	// east 20
	// west 200
}

// Bad config is an error that names the endpoint and the field, never the key.
func ExampleNew_invalid() {
	_, err := amlpool.New([]amlpool.Endpoint{{
		Name: "east", URL: "http://example.com/execute", APIKey: "secret", MaxConcurrentCalls: 20,
	}})
	fmt.Println(errors.Is(err, amlpool.ErrInvalidConfig))
	fmt.Println(err)
	// Output:
	// true
	// amlpool: invalid config: endpoint east: URL: "http://example.com/execute" uses http to a non-loopback host; use https (or WithInsecureHTTP)
}

func ExampleClient_Score() {
	srv := amltest.NewServer(amltest.Config{})
	defer srv.Close()
	c, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	resp, err := c.Score(context.Background(), &amlpool.Request{Inputs: map[string]*amlpool.Table{
		"input1": {ColumnNames: []string{"age"}, Values: [][]any{{"39"}, {"52"}}},
	}})
	if err != nil {
		log.Fatal(err)
	}
	out := resp.Results["output1"].Value
	fmt.Println(out.NumRows(), "rows; columns:", out.ColumnNames)
	// Output:
	// 2 rows; columns: [age Scored Probabilities]
}

// Do takes and returns raw JSON. When every slot is busy it waits, here for
// at most a second.
func ExampleClient_Do() {
	srv := amltest.NewServer(amltest.Config{})
	defer srv.Close()
	c, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()}, amlpool.WithMaxWait(time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	reply, err := c.Do(context.Background(), []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}},"GlobalParameters":{}}`))
	switch {
	case errors.Is(err, amlpool.ErrNoCapacity):
		fmt.Println("every endpoint stayed full")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println(len(reply) > 0)
	}
	// Output:
	// true
}

// Metrics go to any OpenTelemetry MeterProvider; here the SDK's with a
// manual reader, read back after two calls, the first of which was throttled
// once and retried.
func ExampleWithMeterProvider() {
	east := amltest.NewServer(amltest.Config{Name: "east"})
	defer east.Close()
	east.Script(amltest.Fault{Status: 503, Detail: "RequestThrottled"})

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	c, err := amlpool.New([]amlpool.Endpoint{east.Endpoint()}, amlpool.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	body := []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}}}`)
	for range 2 {
		if _, err := c.Do(context.Background(), body); err != nil {
			log.Fatal(err)
		}
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name != "amlpool.endpoint.calls" && m.Name != "amlpool.retries" {
			continue
		}
		var lines []string
		for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
			if p.Value > 0 {
				lines = append(lines, fmt.Sprintf("%s %s = %d", m.Name, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Value))
			}
		}
		sort.Strings(lines)
		fmt.Println(strings.Join(lines, "\n"))
	}
	// Output:
	// amlpool.endpoint.calls amlpool.endpoint=east,amlpool.outcome=success = 2
	// amlpool.endpoint.calls amlpool.endpoint=east,amlpool.outcome=throttled = 1
	// amlpool.retries amlpool.retry.reason=throttled = 1
}

// Endpoints can be added, retired, re-capped and re-keyed while calls run.
// Here a second endpoint is added for more capacity, then the first one's
// key is rotated: the service accepts its secondary key while the primary
// is regenerated, so no call fails on the way.
func ExampleClient_SetEndpoints() {
	east := amltest.NewServer(amltest.Config{Name: "east", Key: "east-primary", SecondaryKey: "east-secondary"})
	defer east.Close()
	west := amltest.NewServer(amltest.Config{Name: "west"})
	defer west.Close()

	c, err := amlpool.New([]amlpool.Endpoint{east.Endpoint()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// More capacity: add west. Calls waiting for a slot take its slots at once.
	if err := c.SetEndpoints([]amlpool.Endpoint{east.Endpoint(), west.Endpoint()}); err != nil {
		log.Fatal(err)
	}

	// Rotate east's primary key: it is regenerated in the portal, and the
	// new pair is given to the Client. Until then, a call that meets a 401
	// with the old primary goes on at once with the secondary.
	east.SetKeys("east-primary-2", "east-secondary")
	if _, err := c.Do(context.Background(), []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}},"GlobalParameters":{}}`)); err != nil {
		log.Fatal(err)
	}
	rotated := east.Endpoint() // APIKey "east-primary-2", SecondaryKey "east-secondary"
	if err := c.SetEndpoints([]amlpool.Endpoint{rotated, west.Endpoint()}); err != nil {
		log.Fatal(err)
	}

	// A bad set is refused whole; the endpoints in use go on.
	err = c.SetEndpoints([]amlpool.Endpoint{{Name: "north", URL: "not a url", APIKey: "k"}})
	fmt.Println(errors.Is(err, amlpool.ErrInvalidConfig))
	for _, e := range c.Stats().Endpoints {
		fmt.Println(e.Name)
	}
	// Output:
	// true
	// east
	// west
}
