package azureauth_test

import (
	"context"
	"fmt"
	"log"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/azureauth"
)

// An online endpoint in aad_token mode, with tokens from whatever Azure
// identity the process has: environment variables, a managed identity, the
// Azure CLI's login… (azidentity's DefaultAzureCredential). The identity
// needs a role that may score on the endpoint.
func Example() {
	id, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		log.Fatal(err)
	}
	client, err := amlpool.New([]amlpool.Endpoint{{
		Name: "churn",
		URL:  "https://churn.westeurope.inference.ml.azure.com/score",
		Kind: amlpool.Online,
		// 2 × max_concurrent_requests_per_instance (4) × instance_count (3).
		MaxConcurrentCalls: 24,
		Credential:         azureauth.New(id),
	}})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	reply, err := client.Do(context.Background(), []byte(`{"input_data": {"columns": ["age", "plan"], "data": [[42, "gold"]]}}`))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", reply)
}
