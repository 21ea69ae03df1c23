package amlpool_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// LatencyAware sends calls where they finish soonest: after one call to
// each endpoint to measure it, the slow one gets no more calls until its
// estimate has decayed (tens of seconds), when it is probed again.
func ExampleLatencyAware() {
	fast := amltest.NewServer(amltest.Config{Name: "fast", Latency: time.Millisecond})
	defer fast.Close()
	slow := amltest.NewServer(amltest.Config{Name: "slow", Latency: 300 * time.Millisecond})
	defer slow.Close()

	c, err := amlpool.New([]amlpool.Endpoint{fast.Endpoint(), slow.Endpoint()},
		amlpool.WithBalancer(amlpool.LatencyAware()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	for range 20 {
		if _, err := c.Do(context.Background(), []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}}}`)); err != nil {
			log.Fatal(err)
		}
	}
	for _, e := range c.Stats().Endpoints {
		fmt.Println(e.Name, e.Calls)
	}
	// Output:
	// fast 19
	// slow 1
}

// Replicas of a service that share endpoints each adapt their limits to the
// share the others leave them, and hedge a call that is slower than 95 % of
// recent ones.
func ExampleWithAdaptiveLimit() {
	endpoints := []amlpool.Endpoint{ /* the same endpoints in every replica */ }
	c, err := amlpool.New(endpoints,
		amlpool.WithBalancer(amlpool.LatencyAware()),
		amlpool.WithAdaptiveLimit(),
		amlpool.WithHedgingQuantile(0.95),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}
