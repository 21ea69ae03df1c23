package amlpool_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// Two online endpoints, one pinned to its deployment "blue" with a header.
// Their caps are 2 × max_concurrent_requests_per_instance × instance_count;
// past it an online endpoint answers 429 Too many pending requests. Here
// they are fakes; in production the URL is the endpoint's scoring URI,
// https://{endpoint}.{region}.inference.ml.azure.com/score.
func ExampleNew_online() {
	blue := amltest.NewServer(amltest.Config{Name: "blue", Kind: amlpool.Online, MaxConcurrentCalls: 24, Deployment: "blue"})
	defer blue.Close()
	green := amltest.NewServer(amltest.Config{Name: "green", Kind: amlpool.Online, MaxConcurrentCalls: 300})
	defer green.Close()

	c, err := amlpool.New([]amlpool.Endpoint{
		{Name: "blue", URL: blue.URL(), Kind: amlpool.Online, APIKey: blue.Endpoint().APIKey, MaxConcurrentCalls: 24,
			Header: http.Header{"azureml-model-deployment": {"blue"}}},
		{Name: "green", URL: green.URL(), Kind: amlpool.Online, APIKey: green.Endpoint().APIKey, MaxConcurrentCalls: 300},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	reply, err := c.Do(context.Background(), []byte(`{"input_data": {"columns": ["age"], "data": [[39]]}}`))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", reply)
	fmt.Println(c.Capacity())
	// Output:
	// [{"Scored Probabilities":0.340928262130898,"age":39}]
	// 324
}

// An online endpoint's cap must be given: it is the deployment's, not a
// default of the service's.
func ExampleNew_onlineWithoutCap() {
	_, err := amlpool.New([]amlpool.Endpoint{{
		Name: "blue", URL: "https://blue.westeurope.inference.ml.azure.com/score", APIKey: "key", Kind: amlpool.Online,
	}})
	fmt.Println(err)
	// Output:
	// amlpool: invalid config: endpoint blue: MaxConcurrentCalls: required for an online endpoint: set it to 2 × max_concurrent_requests_per_instance × instance_count of its deployment (summed over the deployments that take traffic), the number of requests past which it answers 429 Too many pending requests
}

// A 424 is the model's own failure: its status and reason come with the
// *APIError. A 4xx from the model is the input's fault and is not retried.
func ExampleAPIError_ModelInputFault() {
	srv := amltest.NewServer(amltest.Config{Name: "blue", Kind: amlpool.Online, MaxConcurrentCalls: 4})
	defer srv.Close()
	srv.Script(amltest.ModelFailure(400, "column 'age' is missing"))
	c, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	_, err = c.Do(context.Background(), []byte(`{"input_data": {"columns": ["income"], "data": [[52000]]}}`))
	if apiErr, ok := errors.AsType[*amlpool.APIError](err); ok && apiErr.ModelInputFault() {
		fmt.Println(apiErr.StatusCode, apiErr.ModelStatusCode, apiErr.ModelReason)
	}
	fmt.Println(srv.Stats().Requests)
	// Output:
	// 424 400 column 'age' is missing
	// 1
}

// Tokens instead of a key: each attempt asks the Credential. A caching
// Credential also implements TokenInvalidator, to hear of a 401. For Azure
// AD tokens, see module github.com/amlpool/amlpool/azureauth. The fake
// endpoint takes tokens only (TokenOnly), as one in aad_token mode does:
// its Endpoint has no keys.
func ExampleCredentialFunc() {
	srv := amltest.NewServer(amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: 4, TokenOnly: true,
		AcceptToken: func(tok string) bool { return tok == "token-from-the-vault" }})
	defer srv.Close()
	ep := srv.Endpoint()
	ep.Credential = amlpool.CredentialFunc(func(ctx context.Context) (string, error) {
		return "token-from-the-vault", nil // e.g. read from a secret store, cached
	})
	c, err := amlpool.New([]amlpool.Endpoint{ep})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	_, err = c.Do(context.Background(), []byte(`{"input_data": {"columns": ["age"], "data": [[39]]}}`))
	fmt.Println(err, srv.Stats().Scored)
	// Output:
	// <nil> 1
}
