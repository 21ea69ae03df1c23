package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/amlpool/amlpool"
)

// Latency is a service time spread uniformly over mean ± 20 %.
func Latency(mean time.Duration) func(int64, *rand.Rand) time.Duration {
	return func(_ int64, r *rand.Rand) time.Duration {
		return time.Duration(float64(mean) * (0.8 + 0.4*r.Float64()))
	}
}

// Pool builds n endpoints called ep0, ep1, ... with cap mcc and service
// time svc, a Server over them, and the amlpool.Endpoints that reach them.
func Pool(n, mcc int, rtt time.Duration, seed uint64, svc func(i int) func(int64, *rand.Rand) time.Duration) (*Server, []*Endpoint, []amlpool.Endpoint) {
	eps := make([]*Endpoint, n)
	for i := range eps {
		eps[i] = &Endpoint{Name: fmt.Sprint("ep", i), MCC: mcc, Service: svc(i)}
	}
	s := NewServer(rtt, seed, eps...)
	cfgs := make([]amlpool.Endpoint, n)
	for i, ep := range eps {
		cfgs[i] = amlpool.Endpoint{Name: ep.Name, URL: s.URL(ep.Name), APIKey: "k", MaxConcurrentCalls: mcc}
	}
	return s, eps, cfgs
}

func newClient(s *Server, cfgs []amlpool.Endpoint, opts []amlpool.Option) *amlpool.Client {
	opts = append([]amlpool.Option{amlpool.WithHTTPClient(s.Client())}, opts...)
	c, err := amlpool.New(cfgs, opts...)
	if err != nil {
		panic(err) // a scenario's own configuration
	}
	return c
}

func do(c *amlpool.Client) Call {
	body := []byte(`{"Inputs":{}}`)
	return func(ctx context.Context) error {
		_, err := c.Do(ctx, body)
		return err
	}
}

// SlowEndpoint is the first proof: Endpoints endpoints with cap MCC, all
// answering in Healthy ± 20 % but one, Slowdown times slower, under Poisson
// load at Rate calls per second for Duration.
type SlowEndpoint struct {
	Endpoints, MCC int
	Healthy        time.Duration
	Slowdown       float64
	Rate           float64
	Duration       time.Duration
	RTT            time.Duration
	Seed           uint64
}

// SlowReport is one balancer's figures in the SlowEndpoint scenario.
type SlowReport struct {
	Balancer       string
	Goodput        float64 // successful calls per second
	Failed         int
	P50, P99, P999 time.Duration
	SlowShare      float64       // share of the calls that went to the slow endpoint
	HealthyP99     time.Duration // p99 of the healthy endpoints' service time plus the RTT
}

// Variant is one Client configuration to run a scenario with.
type Variant struct {
	Name string
	Opts []amlpool.Option
}

// Run runs the scenario once per variant, on fresh endpoints seeded alike.
// opts are added to every Client's options.
func (sc SlowEndpoint) Run(variants []Variant, opts ...amlpool.Option) []SlowReport {
	var out []SlowReport
	for _, v := range variants {
		s, eps, cfgs := Pool(sc.Endpoints, sc.MCC, sc.RTT, sc.Seed, func(i int) func(int64, *rand.Rand) time.Duration {
			if i == 0 {
				return Latency(time.Duration(float64(sc.Healthy) * sc.Slowdown))
			}
			return Latency(sc.Healthy)
		})
		c := newClient(s, cfgs, append(slices.Clip(opts), v.Opts...))
		res := OpenLoop(context.Background(), sc.Rate, sc.Duration, rand.New(rand.NewPCG(sc.Seed, 99)), do(c))
		c.Close()
		var healthy []time.Duration
		var total int64
		for _, ep := range eps[1:] {
			healthy = append(healthy, ep.Served()...)
		}
		for _, ep := range eps {
			total += ep.Stats().Requests
		}
		out = append(out, SlowReport{
			Balancer:   v.Name,
			Goodput:    res.Goodput(),
			Failed:     res.Failed(),
			P50:        res.Quantile(0.5),
			P99:        res.Quantile(0.99),
			P999:       res.Quantile(0.999),
			SlowShare:  float64(eps[0].Stats().Requests) / float64(total),
			HealthyP99: Quantile(healthy, 0.99) + sc.RTT,
		})
	}
	return out
}

// Replicas is the second proof: Replicas Clients, each with Workers
// goroutines calling in a closed loop, share Endpoints endpoints with cap MCC
// answering in Latency ± 20 %, for Duration. A worker whose call failed
// pauses for Pause before the next.
type Replicas struct {
	Replicas, Workers int
	Pause             time.Duration
	Endpoints, MCC    int
	Latency           time.Duration
	Duration          time.Duration
	RTT               time.Duration
	Seed              uint64
}

// ReplicasReport is the figures of one Replicas run.
type ReplicasReport struct {
	Capacity  float64 // calls per second the endpoints can serve: Σ MCC / latency
	Goodput   float64 // successful calls per second, whole run
	Requests  int64   // calls that reached the endpoints
	Throttles int64   // of which answered 503
	// After the warm-up: goodput, and throttles per request that reached
	// the endpoints.
	SteadyGoodput   float64
	SteadyThrottled float64
	Limits          []int // the first replica's limits at the end
	// Per second of the run: throttles per request, goodput.
	Throttled, Good []float64
}

// Run runs the scenario with opts added to every Client's options; the
// steady figures leave out the first warmup of the run.
func (sc Replicas) Run(warmup time.Duration, opts ...amlpool.Option) ReplicasReport {
	s, eps, cfgs := Pool(sc.Endpoints, sc.MCC, sc.RTT, sc.Seed, func(int) func(int64, *rand.Rand) time.Duration {
		return Latency(sc.Latency)
	})
	clients := make([]*amlpool.Client, sc.Replicas)
	for i := range clients {
		clients[i] = newClient(s, cfgs, opts)
	}
	type sample struct{ req, thr int64 }
	totals := func() (x sample) {
		for _, ep := range eps {
			st := ep.Stats()
			x.req += st.Requests
			x.thr += st.Throttled
		}
		return x
	}
	// Sample the endpoints' counters once a second while the load runs.
	samples := make(chan []sample, 1)
	stop := make(chan struct{})
	go func() {
		ss := []sample{{}}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				ss = append(ss, totals())
			case <-stop:
				samples <- ss
				return
			}
		}
	}()
	done := make(chan *Result, sc.Replicas)
	for _, c := range clients {
		go func() { done <- ClosedLoop(context.Background(), sc.Workers, sc.Duration, sc.Pause, do(c)) }()
	}
	var results []*Result
	for range clients {
		results = append(results, <-done)
	}
	close(stop)
	ss := <-samples
	secs := int(sc.Duration / time.Second)
	ss = ss[:min(len(ss), secs+1)]

	rep := ReplicasReport{Capacity: float64(sc.Endpoints*sc.MCC) / sc.Latency.Seconds()}
	last := totals()
	rep.Requests, rep.Throttles = last.req, last.thr
	goodput := func(from, to time.Duration) (g float64) {
		for _, r := range results {
			g += r.GoodputBetween(from, to)
		}
		return g
	}
	rep.Goodput = goodput(0, sc.Duration)
	rep.SteadyGoodput = goodput(warmup, sc.Duration)
	w := int(warmup / time.Second)
	end := ss[len(ss)-1]
	rep.SteadyThrottled = float64(end.thr-ss[w].thr) / float64(max(end.req-ss[w].req, 1))
	for i := 1; i < len(ss); i++ {
		rep.Throttled = append(rep.Throttled, float64(ss[i].thr-ss[i-1].thr)/float64(max(ss[i].req-ss[i-1].req, 1)))
		rep.Good = append(rep.Good, goodput(time.Duration(i-1)*time.Second, time.Duration(i)*time.Second))
	}
	for _, e := range clients[0].Stats().Endpoints {
		rep.Limits = append(rep.Limits, e.Limit)
	}
	for _, c := range clients {
		c.Close()
	}
	return rep
}

// Hedging is the third proof: Endpoints endpoints with cap MCC answering in
// Latency ± 20 %, but one stalls for Stall on 1 call in StallEvery; Poisson
// load at Rate for Duration.
type Hedging struct {
	Endpoints, MCC int
	Latency, Stall time.Duration
	StallEvery     int64
	Rate           float64
	Duration       time.Duration
	RTT            time.Duration
	Seed           uint64
	KeepsCancelled bool // the endpoints finish abandoned calls (see Endpoint)
}

// HedgingReport is the figures of one Hedging run.
type HedgingReport struct {
	Name           string
	Goodput        float64
	Failed         int
	P50, P99, P999 time.Duration
	Extra          int64 // requests beyond one per call: hedges and retries
	Throttles      int64
	Peak           int64 // the most calls in flight on one endpoint, as the endpoint saw them
}

// Run runs the scenario with opts added to the Client's options.
func (sc Hedging) Run(name string, opts ...amlpool.Option) HedgingReport {
	s, eps, cfgs := Pool(sc.Endpoints, sc.MCC, sc.RTT, sc.Seed, func(i int) func(int64, *rand.Rand) time.Duration {
		base := Latency(sc.Latency)
		if i != 0 {
			return base
		}
		return func(n int64, r *rand.Rand) time.Duration {
			if n%sc.StallEvery == 0 {
				return sc.Stall
			}
			return base(n, r)
		}
	})
	for _, ep := range eps {
		ep.KeepsCancelled = sc.KeepsCancelled
	}
	c := newClient(s, cfgs, opts)
	res := OpenLoop(context.Background(), sc.Rate, sc.Duration, rand.New(rand.NewPCG(sc.Seed, 98)), do(c))
	c.Close()
	s.Wait()
	rep := HedgingReport{Name: name, Goodput: res.Goodput(), Failed: res.Failed(),
		P50: res.Quantile(0.5), P99: res.Quantile(0.99), P999: res.Quantile(0.999)}
	var req int64
	for _, ep := range eps {
		st := ep.Stats()
		req += st.Requests
		rep.Throttles += st.Throttled
		rep.Peak = max(rep.Peak, st.Peak)
	}
	rep.Extra = req - int64(res.OK()+res.Failed())
	return rep
}

// Table formats rows under a header as a Markdown table.
func Table(header []string, rows [][]string) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(header, " | ") + " |\n|")
	for range header {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	return b.String()
}

// Ms formats a duration in milliseconds.
func Ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
