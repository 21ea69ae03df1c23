package amltest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// A fake endpoint answers a plain net/http client like the service does.
func Example() {
	srv := amltest.NewServer(amltest.Config{Key: "secret"})
	defer srv.Close()

	body := `{"Inputs":{"input1":{"ColumnNames":["cog_speed"],"Values":[["0"]]}},"GlobalParameters":{}}`
	req, err := http.NewRequest(http.MethodPost, srv.URL(), strings.NewReader(body))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer secret")
	resp, err := srv.Client().Do(req)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(resp.Body)
	if err != nil {
		panic(err)
	}
	fmt.Println(resp.Status)
	fmt.Println(string(reply))
	// Output:
	// 200 OK
	// {"Results":{"output1":{"type":"table","value":{"ColumnNames":["cog_speed","Scored Probabilities"],"ColumnTypes":["String","Double"],"Values":[["0","0.0311913508237368"]]}}}}
}

// An amlpool.Client scores through a fake endpoint; the endpoint's Stats
// show what it saw.
func ExampleServer_Endpoint() {
	srv := amltest.NewServer(amltest.Config{MaxConcurrentCalls: 4})
	defer srv.Close()

	client, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()})
	if err != nil {
		panic(err)
	}
	defer client.Close()

	resp, err := client.Score(context.Background(), &amlpool.Request{Inputs: map[string]*amlpool.Table{
		"input1": {ColumnNames: []string{"age", "sex"}, Values: [][]any{{39, "female"}, {52, "male"}}},
	}})
	if err != nil {
		panic(err)
	}
	out := resp.Results["output1"].Value
	fmt.Println(out.ColumnNames, out.ColumnTypes)
	fmt.Println(out.NumRows(), out.Values[1][:2])
	st := srv.Stats()
	fmt.Println(st.Scored, st.Throttled, st.PeakInFlight)
	// Output:
	// [age sex Scored Probabilities] [Int32 String Double]
	// 2 [52 male]
	// 1 0 1
}

// Script injects faults into the next calls, here a throttle and then a
// proxy's error page; the call after them is scored as usual.
func ExampleServer_Script() {
	srv := amltest.NewServer(amltest.Config{})
	defer srv.Close()
	srv.Script(
		amltest.Throttle(),
		amltest.Fault{Status: 502, Body: []byte("<html>Bad Gateway</html>"), Header: http.Header{"Content-Type": {"text/html"}}},
	)

	ep := srv.Endpoint()
	for range 3 {
		req, err := http.NewRequest(http.MethodPost, ep.URL, strings.NewReader(
			`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}},"GlobalParameters":{}}`))
		if err != nil {
			panic(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+ep.APIKey)
		resp, err := srv.Client().Do(req)
		if err != nil {
			panic(err)
		}
		resp.Body.Close()
		fmt.Println(resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	fmt.Println(srv.Stats().Faults)
	// Output:
	// 503 application/json; charset=utf-8
	// 502 text/html
	// 200 application/json; charset=utf-8
	// 2
}

// A fake online endpoint serving an MLflow model: its Endpoint carries the
// Kind, the cap and the deployment header, so an amlpool Client scores
// through it as through a managed online endpoint. Past its cap it answers
// 429 Too many pending requests.
func ExampleNewServer_online() {
	srv := amltest.NewServer(amltest.Config{Kind: amlpool.Online, MaxConcurrentCalls: 2, Deployment: "blue"})
	defer srv.Close()

	ep := srv.Endpoint()
	fmt.Println(ep.Kind, ep.MaxConcurrentCalls, ep.Header.Get(amltest.DeploymentHeader))
	client, err := amlpool.New([]amlpool.Endpoint{ep})
	if err != nil {
		panic(err)
	}
	defer client.Close()

	reply, err := client.Do(context.Background(),
		[]byte(`{"input_data": {"columns": ["age"], "index": [0], "data": [[39]]}}`))
	if err != nil {
		panic(err)
	}
	fmt.Println(string(reply))
	st := srv.Stats()
	fmt.Println(st.Scored, st.Throttled)
	// Output:
	// online 2 blue
	// [{"Scored Probabilities":0.340928262130898,"age":39}]
	// 1 0
}

// WaitFor waits for a state of the server without sleeping: here until the
// cap of 2 is taken by calls the model holds, so that the next call is
// throttled as the service throttles it, with 503 RequestThrottled.
func ExampleServer_WaitFor() {
	release := make(chan struct{})
	srv := amltest.NewServer(amltest.Config{Key: "secret", MaxConcurrentCalls: 2,
		LatencyFunc: func() time.Duration { <-release; return 0 }})
	defer srv.Close()

	post := func() (int, string) {
		req, err := http.NewRequest(http.MethodPost, srv.URL(), strings.NewReader(
			`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}},"GlobalParameters":{}}`))
		if err != nil {
			panic(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer secret")
		resp, err := srv.Client().Do(req)
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			panic(err)
		}
		return resp.StatusCode, string(body)
	}
	var held sync.WaitGroup
	for range 2 {
		held.Go(func() { post() })
	}
	if _, err := srv.WaitFor(context.Background(), func(st amltest.Stats) bool { return st.PeakAdmitted == 2 }); err != nil {
		panic(err)
	}
	fmt.Println(post())
	close(release)
	held.Wait()
	st := srv.Stats()
	fmt.Println(st.Scored, st.Throttled, st.PeakAdmitted, st.PeakInFlight)
	// Output:
	// 503 {"error":{"code":"ServiceUnavailable","message":"Service is temporarily unavailable.","details":[{"code":"RequestThrottled","message":"Request was throttled for default endpoint. The maximum concurrency for the endpoint is 2."}]}}
	// 2 1 2 3
}

// countingTransport counts the calls it sends: a test's own RoundTripper.
type countingTransport struct {
	next  http.RoundTripper
	calls atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.calls.Add(1)
	return c.next.RoundTrip(r)
}

// A test that sends its calls through a transport of its own (sized for
// the calls in flight, wrapped in a RoundTripper that counts them) reaches
// a server from NewTestServer, on the in-memory network, by dialling with
// the server's DialContext. (This example is compiled, not run: it needs a
// test's t.)
func ExampleServer_DialContext() {
	var t *testing.T // the test's
	srv := amltest.NewTestServer(t, amltest.Config{MaxConcurrentCalls: 4})
	rt := &countingTransport{next: &http.Transport{DialContext: srv.DialContext, MaxIdleConnsPerHost: 4}}
	client, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()},
		amlpool.WithHTTPClient(&http.Client{Transport: rt}))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Score(t.Context(), &amlpool.Request{Inputs: map[string]*amlpool.Table{
		"input1": {ColumnNames: []string{"age"}, Values: [][]any{{39}}},
	}}); err != nil {
		t.Fatal(err)
	}
	fmt.Println(rt.calls.Load(), srv.Stats().Scored) // 1 1
}
