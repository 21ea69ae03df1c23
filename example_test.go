package amlpool_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

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
