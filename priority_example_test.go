package amlpool_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"sync"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// A higher tier takes only the overflow: of four calls at once, the tier-0
// endpoint, with two slots, takes two, and the tier-1 endpoint the others.
func ExampleEndpoint_tiers() {
	release, arrived := make(chan struct{}), make(chan struct{}, 4)
	hold := func() time.Duration { // each call waits here until all four have come
		arrived <- struct{}{}
		<-release
		return 0
	}
	near := amltest.NewServer(amltest.Config{Name: "near", MaxConcurrentCalls: 2, LatencyFunc: hold})
	defer near.Close()
	far := amltest.NewServer(amltest.Config{Name: "far", MaxConcurrentCalls: 20, LatencyFunc: hold})
	defer far.Close()
	overflow := far.Endpoint()
	overflow.Tier = 1

	c, err := amlpool.New([]amlpool.Endpoint{near.Endpoint(), overflow})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := c.Do(context.Background(), []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}}}`)); err != nil {
				log.Fatal(err)
			}
		})
	}
	for range 4 {
		<-arrived
	}
	close(release)
	wg.Wait()
	for _, e := range c.Stats().Endpoints {
		fmt.Println(e.Name, "tier", e.Tier, "calls", e.Calls)
	}
	// Output:
	// near tier 0 calls 2
	// far tier 1 calls 2
}

// One Client serves a batch run and the calls of an HTTP service at once:
// the batch waits at PriorityLow, so the service's calls take the next free
// slot before it; with the line bounded, a call that cannot wait is turned
// away at once rather than make everyone slower.
func ExampleWithPriority() {
	endpoints := []amlpool.Endpoint{ /* … */ }
	c, err := amlpool.New(endpoints, amlpool.WithMaxWaiting(500))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var src amlpool.RowSource // rows.NewCSVReader(f), say
	go func() {
		batch := amlpool.WithPriority(context.Background(), amlpool.PriorityLow)
		if _, err := c.ScoreRows(batch, src, func(*amlpool.Chunk) error { return nil }, nil); err != nil {
			log.Print(err)
		}
	}()

	http.HandleFunc("/score", func(w http.ResponseWriter, r *http.Request) {
		var body []byte // the request's rows, as a scoring request
		reply, err := c.Do(amlpool.WithPriority(r.Context(), amlpool.PriorityHigh), body)
		switch {
		case errors.Is(err, amlpool.ErrShed):
			http.Error(w, "busy", http.StatusServiceUnavailable)
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadGateway)
		default:
			w.Write(reply)
		}
	})
}
