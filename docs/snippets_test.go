package docs_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/redislimit"
	"github.com/amlpool/amlpool/rows"
)

// The code of the docs. The body of every func named snippet… is a ```go
// block of README.md or of a page in this directory, or a code block of the
// package documentation (doc.go), character for character once unindented,
// and every such block is the body of one of them (docs_test.go checks
// both). So every snippet compiles as it stands,
// with the func's parameters as the names it takes from its context; the
// tests below also run each one against amltest endpoints.

func snippetQuickStart(ctx context.Context, eastURL, westURL string) {
	c, err := amlpool.New([]amlpool.Endpoint{
		{Name: "east", URL: eastURL, APIKey: os.Getenv("AML_KEY_EAST"), MaxConcurrentCalls: 20},
		{Name: "west", URL: westURL, APIKey: os.Getenv("AML_KEY_WEST"), MaxConcurrentCalls: 200},
	})
	if err != nil {
		log.Fatal(err) // a *ConfigError naming the endpoint and field, never the key
	}
	defer c.Close()
	resp, err := c.Score(ctx, &amlpool.Request{Inputs: map[string]*amlpool.Table{
		"input1": {ColumnNames: []string{"age", "income"}, Values: [][]any{{"39", "52000"}}},
	}})
	if err != nil {
		log.Fatal(err) // an *APIError with the service's message, or a *CallError after several attempts
	}
	fmt.Println(resp.Results["output1"].Value.Values)
}

// The package documentation's (doc.go).
func snippetPackageDoc(ctx context.Context, eastURL, eastKey, westURL, westKey string) error {
	c, err := amlpool.New([]amlpool.Endpoint{
		{Name: "east", URL: eastURL, APIKey: eastKey, MaxConcurrentCalls: 20},
		{Name: "west", URL: westURL, APIKey: westKey, MaxConcurrentCalls: 20},
	})
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.Score(ctx, &amlpool.Request{Inputs: map[string]*amlpool.Table{
		"input1": {ColumnNames: []string{"age"}, Values: [][]any{{"39"}}},
	}})
	if err != nil {
		return err
	}
	fmt.Println(resp.Results["output1"].Value.Values)
	return nil
}

func snippetTesting(t *testing.T) {
	srv := amltest.NewServer(amltest.Config{MaxConcurrentCalls: 4})
	t.Cleanup(srv.Close)
	srv.Script(amltest.Throttle()) // the next call is answered as by a full endpoint
	c, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_, err = c.Score(t.Context(), &amlpool.Request{Inputs: map[string]*amlpool.Table{
		"input1": {ColumnNames: []string{"age"}, Values: [][]any{{"39"}}},
	}})
	if err != nil {
		t.Fatal(err) // not expected: the throttled attempt is tried again
	}
	if st := srv.Stats(); st.Faults != 1 || st.Scored != 1 {
		t.Errorf("want the throttle, then one call scored; got %+v", st)
	}
}

func snippetScoreRows(ctx context.Context, c *amlpool.Client) {
	f, err := os.Open("rows.csv")
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	src, err := rows.NewCSVReader(f)
	if err != nil {
		log.Fatal(err) // an empty file or an unusable header, naming the line
	}
	stats, err := c.ScoreRows(ctx, src, func(ch *amlpool.Chunk) error {
		if ch.Err != nil { // these rows were not scored; ch.Err is a *amlpool.ChunkError
			log.Print(ch.Err) // it names them: "amlpool: rows 201-300: …"
			return nil
		}
		for i, out := range ch.Output.Values { // one output row per input row
			fmt.Println(ch.Input[i], out)
		}
		return nil
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("%d rows: %d scored, %d failed", stats.Rows, stats.Scored, stats.Failed)
}

func snippetBalancing(endpoints []amlpool.Endpoint) {
	c, err := amlpool.New(endpoints,
		amlpool.WithBalancer(amlpool.LatencyAware()), // steer calls away from a slow endpoint
		amlpool.WithHedgingQuantile(0.95),            // a second copy of a call slower than the pool's p95
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

func snippetWhoGoesFirst(ctx context.Context, nearURL, farURL string, src amlpool.RowSource, sink func(*amlpool.Chunk) error, body []byte) {
	c, err := amlpool.New([]amlpool.Endpoint{
		{Name: "near", URL: nearURL, APIKey: os.Getenv("AML_KEY_NEAR")},       // tier 0: takes calls first
		{Name: "far", URL: farURL, APIKey: os.Getenv("AML_KEY_FAR"), Tier: 1}, // takes only the overflow
	}, amlpool.WithMaxWaiting(1000)) // past 1,000 waiting calls, the least important are shed
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Batch work at PriorityLow: its chunks wait behind every other call.
	if _, err := c.ScoreRows(amlpool.WithPriority(ctx, amlpool.PriorityLow), src, sink, nil); err != nil {
		log.Print(err)
	}

	// A call a person waits for (in a request handler, say, while a batch runs).
	reply, err := c.Do(amlpool.WithPriority(ctx, amlpool.PriorityHigh), body)
	switch {
	case errors.Is(err, amlpool.ErrShed):
		log.Print("busy: every slot taken and the line full of calls as important")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Printf("%s\n", reply)
	}
}

func snippetObservability(ctx context.Context, endpoints []amlpool.Endpoint) {
	reader := sdkmetric.NewManualReader() // or a Prometheus or OTLP exporter
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(ctx)
	c, err := amlpool.New(endpoints,
		amlpool.WithMeterProvider(mp),
		amlpool.WithTracerProvider(otel.GetTracerProvider()),
		amlpool.WithLogger(slog.Default()),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

func snippetFleet(ctx context.Context, addr string, endpoints []amlpool.Endpoint, body []byte) {
	rdb := redis.NewClient(&redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,                   // deadlines reach the socket
		DialTimeout:           250 * time.Millisecond, // go-redis defaults: 5 s and 3 retries,
		ReadTimeout:           100 * time.Millisecond, // too slow for a gate on every call
		WriteTimeout:          100 * time.Millisecond,
		MaxRetries:            1,
	})
	defer rdb.Close()
	lim, err := redislimit.New(rdb, redislimit.WithPool("scoring")) // any redis.UniversalClient
	if err != nil {
		log.Fatal(err)
	}
	defer lim.Close() // runs after c.Close below: deferred calls run last first
	c, err := amlpool.New(endpoints, amlpool.WithLimiter(lim))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	reply, err := c.Do(ctx, body) // each endpoint's cap holds across every replica
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", reply)
}

func snippetFleetSentinel(sentinels []string) {
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            "amlpool", // as the Sentinels name the primary
		SentinelAddrs:         sentinels, // the Sentinels find the primary, and the next one
		ContextTimeoutEnabled: true,
		DialTimeout:           250 * time.Millisecond,
		ReadTimeout:           100 * time.Millisecond,
		WriteTimeout:          100 * time.Millisecond,
		MaxRetries:            1,
	})
	defer rdb.Close()
	lim, err := redislimit.New(rdb, redislimit.WithPool("scoring"),
		redislimit.WithExpectedReplicas(10)) // the fleet's usual size: a share even if Redis is down at start
	if err != nil {
		log.Fatal(err)
	}
	defer lim.Close()
}

func snippetSetEndpoints(c *amlpool.Client, eps []amlpool.Endpoint, northURL, northKey, newPrimary, secondary string) {
	// More capacity: a third endpoint, added while calls run. Calls already
	// waiting for a slot take its slots at once.
	eps = append(eps, amlpool.Endpoint{
		Name: "north", URL: northURL, APIKey: northKey, MaxConcurrentCalls: 20,
	})
	if err := c.SetEndpoints(eps); err != nil {
		log.Fatal(err) // a *ConfigError; the endpoints in use go on unchanged
	}

	// Rotating east's keys without a failed call. Azure gives every endpoint
	// two keys: with both configured, a call that meets a 401 with one key goes
	// on at once with the other. Regenerate the primary in the portal, then
	// give the Client the new pair.
	eps[0].APIKey, eps[0].SecondaryKey = newPrimary, secondary
	if err := c.SetEndpoints(eps); err != nil {
		log.Fatal(err)
	}
}

func snippetOnlineQuickStart(ctx context.Context, blueURL, greenURL string) {
	c, err := amlpool.New([]amlpool.Endpoint{
		{Name: "blue", URL: blueURL, Kind: amlpool.Online, APIKey: os.Getenv("AML_KEY_BLUE"),
			MaxConcurrentCalls: 24,                                                 // 2 × max_concurrent_requests_per_instance (4) × instance_count (3)
			Header:             http.Header{"azureml-model-deployment": {"blue"}}}, // this deployment only
		{Name: "green", URL: greenURL, Kind: amlpool.Online, APIKey: os.Getenv("AML_KEY_GREEN"),
			MaxConcurrentCalls: 300},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	reply, err := c.Do(ctx, []byte(`{"input_data": {"columns": ["age", "income"], "data": [[39, 52000]]}}`))
	if err != nil {
		log.Fatal(err) // an *APIError; for a 424, ModelStatusCode and ModelReason are the model's own
	}
	fmt.Printf("%s\n", reply) // the deployment's reply, e.g. [0.82]
}

func snippetOnlineEndpoints(ctx context.Context, scoringURI string, cred amlpool.Credential) {
	c, err := amlpool.New([]amlpool.Endpoint{{
		Name:               "blue",
		URL:                scoringURI, // https://{endpoint}.{region}.inference.ml.azure.com/score
		Kind:               amlpool.Online,
		MaxConcurrentCalls: 24,   // 2 × max_concurrent_requests_per_instance × instance_count
		Credential:         cred, // or APIKey
		Header:             http.Header{"azureml-model-deployment": {"blue"}},
	}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	reply, err := c.Do(ctx, []byte(`{"input_data": {"columns": ["age"], "data": [[39]]}}`))
	var apiErr *amlpool.APIError
	if errors.As(err, &apiErr) && apiErr.ModelInputFault() {
		log.Fatalf("the model refused the input: %s", apiErr.ModelReason)
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", reply)
}
