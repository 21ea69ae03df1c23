// Package amltest provides a fake Azure ML Classic (or online) scoring
// endpoint for tests, in the manner of net/http/httptest: each Server is one endpoint,
// with its own URL, key and Max Concurrent Calls, on an httptest.Server.
//
// A Server follows the service contract in amlpool's docs/azureml.md. It answers
// only POST …/workspaces/{ws}/services/{Name}/execute?api-version=2.0, with
// the key given as "Authorization: Bearer <key>" (scheme in any case), a
// Content-Type of application/json and a body of at most 4 MB. It runs at
// most MaxConcurrentCalls calls at once and answers the call beyond that with
// the service's 503 ServiceUnavailable / RequestThrottled body. It honours
// format=swagger (row objects in and out) and details=true (column names and
// types in classic replies). Errors carry the service's error body,
// {"error":{"code","message","details":[…]}}:
//
//	401 Unauthorized / ScoreRequestUnauthorized   missing or wrong key
//	404 NotFound / WebServiceNotFound             other paths (WorkspaceNotFound for another workspace)
//	405 MethodNotAllowed                          other methods on the scoring path
//	400 BadArgument / BadVersionCall              api-version other than 2.0
//	400 BadArgument / RequestBodyInvalid          not JSON, not application/json, over 4 MB, wrong form for the URL
//	400 BadArgument / RequestIsEmpty              empty body
//	400 BadArgument / MissingRequestInput         no Inputs, or a null one
//	400 BadUserArgument / InputMismatchError      a classic input without ColumnNames
//	400 BadUserArgument / InputParseError         a row whose cell count differs from ColumnNames
//	400 LibraryExecutionError                     Config.Score returned an error
//	503 ServiceUnavailable / RequestThrottled     over the cap
//
// The real service's reply to an oversized body and to a wrong Content-Type
// is not documented; the fake uses the catalogued 400 RequestBodyInvalid for
// both, which a client treats like any other bad request.
//
// A Server reads requests and writes replies with a codec of its own,
// independent of amlpool's: amlpool's types are used only to call
// Config.Score, filled and read field by field. A bug in amlpool's JSON
// handling therefore cannot hide in the witness; tests read the service's
// sample bodies with both codecs and compare.
//
// The model is Config.Score, Echo by default. Latency, LatencyFunc, Fault and
// Script add service time and failures: error statuses, Retry-After hints,
// hangs, connection resets, slow and truncated bodies (Throttle, ModelError
// and Fault.WithRetryAfter make the common ones); Restart stops the server
// and starts it again on the same port. Stats counts what the
// server saw; PeakInFlight is the server-side witness that a client never
// exceeded the cap, and WaitFor lets a test wait for a state without
// sleeping. A call whose client goes away stops and frees its place at
// once; Config.FinishAbandoned serves it to its end instead, as a service
// that cannot stop a running model would.
//
// With Config.Kind amlpool.Online a Server is an Azure ML online endpoint
// serving an MLflow model instead: it answers POST /score with the key or a
// token (Config.AcceptToken) as a bearer value, or with a token only
// (Config.TokenOnly), as an endpoint in aad_token or aml_token auth mode
// does, its keys refused with 401; it takes
// {"input_data": {"columns", "index", "data"}}, replies with a JSON array of
// predictions (Config.Predict, OnlineEcho by default; {"predictions": [...]}
// with Config.PredictionsObject), answers the call over its cap with 429 Too
// many pending requests, a request for another deployment than
// Config.Deployment with 404, a method other than POST with 405, a body
// over MaxRequestBytes (4 MiB) with 413 Request Entity Too Large, as a
// managed online endpoint refuses an oversized request (each with a
// {"message": "…"} body), and a model error with 424 carrying the
// model's status and reason in the ms-azureml-model-error-statuscode and
// -reason headers. Pending, RateLimited and ModelFailure make its faults;
// Fault.Status gives any other status with a {"message": "…"} body.
// Stats.HeadersSeen shows the values of the headers Config.RecordHeaders
// names, so that a test can check which endpoint got which header.
//
// A typical test:
//
//	func TestScore(t *testing.T) {
//		srv := amltest.NewServer(amltest.Config{MaxConcurrentCalls: 4})
//		t.Cleanup(srv.Close)
//		client, err := amlpool.New([]amlpool.Endpoint{srv.Endpoint()})
//		require.NoError(t, err)
//		t.Cleanup(func() { client.Close() })
//		// … score through client …
//		assert.LessOrEqual(t, srv.Stats().PeakInFlight, int64(4))
//	}
//
// Every goroutine a Server's calls run on ends when Close returns. Close
// cannot stop a Config.Score (Predict, LatencyFunc, Fault, AcceptToken)
// that does not return: it waits for it, and after 5 seconds says so in
// the test's log (NewTestServer) or the standard logger.
//
// NewServer listens on the loopback network, which a test in a
// testing/synctest bubble cannot use: its calls wait on sockets, so the
// bubble's clock never moves and a call with any latency waits for ever.
// NewTestServer serves the same endpoint on an in-memory network instead,
// closed when the test ends; made inside the bubble, its latencies and
// delays pass on the bubble's clock, exactly. Send its calls with its
// Client, which reaches every in-memory server (or with a transport of the
// test's own whose DialContext is the server's DialContext). Its URL,
// http://127.x.y.z:0/…, has port 0, which nothing on the real network can
// listen on: a call sent with any other client by mistake fails at once,
// instead of reaching whatever listens on the machine. Two fakes in a
// bubble, through one client:
//
//	synctest.Test(t, func(t *testing.T) {
//		a := amltest.NewTestServer(t, amltest.Config{MaxConcurrentCalls: 2, Latency: 100 * time.Millisecond})
//		b := amltest.NewTestServer(t, amltest.Config{MaxConcurrentCalls: 1, Latency: 100 * time.Millisecond})
//		client, err := amlpool.New([]amlpool.Endpoint{a.Endpoint(), b.Endpoint()},
//			amlpool.WithHTTPClient(a.Client()))
//		// … six calls at once take 200 ms of the bubble's time, in no time at all …
//	})
package amltest
