package amlpool_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// A call that fails on every attempt returns a *CallError: how many attempts
// went where, and, through errors.As, the last reply's *APIError.
func ExampleCallError() {
	srv := amltest.NewServer(amltest.Config{Name: "east", Fault: func(int64) amltest.Fault {
		return amltest.Fault{Status: 500}
	}})
	defer srv.Close()
	c, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()}, amlpool.WithMaxAttempts(2))
	if err != nil {
		panic(err)
	}
	defer c.Close()

	_, err = c.Do(context.Background(), scoreBody)

	var callErr *amlpool.CallError
	var apiErr *amlpool.APIError
	if errors.As(err, &callErr) && errors.As(err, &apiErr) {
		fmt.Println(callErr.Attempts, "attempts on", callErr.Endpoints)
		fmt.Println("last reply:", apiErr.StatusCode, apiErr.Code)
	}
	// Output:
	// 2 attempts on [east east]
	// last reply: 500 InternalError
}

// A gateway in front of classic endpoints may answer 429 when they are
// full. A classifier that reads 429 as VerdictFull sends the call to
// another endpoint at once, without backing off or counting the 429 against
// the endpoint's health. (Online endpoints need no such classifier:
// Classify reads their 429 Too many pending requests as full.)
func ExampleWithClassifier() {
	busy := amltest.NewServer(amltest.Config{Name: "busy"})
	defer busy.Close()
	idle := amltest.NewServer(amltest.Config{Name: "idle"})
	defer idle.Close()
	busy.Script(amltest.Fault{Status: http.StatusTooManyRequests})
	idle.Script(amltest.Fault{Status: http.StatusTooManyRequests})

	full429 := func(err error) amlpool.Verdict {
		if apiErr, ok := errors.AsType[*amlpool.APIError](err); ok && apiErr.StatusCode == http.StatusTooManyRequests {
			return amlpool.VerdictFull
		}
		return amlpool.Classify(err)
	}
	c, err := amlpool.New([]amlpool.Endpoint{busy.Endpoint(), idle.Endpoint()}, amlpool.WithClassifier(full429))
	if err != nil {
		panic(err)
	}
	defer c.Close()

	_, err = c.Do(context.Background(), scoreBody)
	fmt.Println("error:", err)
	fmt.Println("requests:", busy.Stats().Requests+idle.Stats().Requests)
	for _, st := range c.Stats().Endpoints {
		fmt.Println(st.Name, "throttles:", st.Throttles)
	}
	// Output:
	// error: <nil>
	// requests: 3
	// busy throttles: 1
	// idle throttles: 1
}
