package sim

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/amlpool/amlpool"
)

// Priorities is the proof of call priorities: Endpoints endpoints with cap
// MCC answering in Latency ± 20 %; a batch of BatchWorkers workers calling
// one call after another (as ScoreRows does with Parallelism BatchWorkers)
// keeps every slot busy, while interactive calls arrive at Rate per second
// (Poisson), for Duration.
type Priorities struct {
	Endpoints, MCC int
	Latency        time.Duration
	BatchWorkers   int
	Rate           float64
	Duration       time.Duration
	RTT            time.Duration
	Seed           uint64
}

// PrioritiesReport is the figures of one Priorities run.
type PrioritiesReport struct {
	Name string
	// The interactive calls: their latency, wait for a slot included;
	// none when the run had none.
	P50, P99, P999 time.Duration
	Failed         int
	// BatchGoodput is the batch's successful calls per second, of those
	// that ended within Duration.
	BatchGoodput float64
	// Share is the interactive calls' share of the capacity: Rate × the
	// time a call holds its slot (mean latency plus RTT) ÷ the slots.
	Share float64
}

// Run runs the scenario once, the batch at batch and the interactive calls
// at interactive, with opts added to the Client's; with interactive
// calls only if withInteractive.
func (sc Priorities) Run(name string, batch, interactive amlpool.Priority, withInteractive bool, opts ...amlpool.Option) PrioritiesReport {
	s, _, cfgs := Pool(sc.Endpoints, sc.MCC, sc.RTT, sc.Seed, func(int) func(int64, *rand.Rand) time.Duration {
		return Latency(sc.Latency)
	})
	c := newClient(s, cfgs, opts)
	call := do(c)
	batchDone := make(chan *Result, 1)
	go func() {
		ctx := amlpool.WithPriority(context.Background(), batch)
		batchDone <- ClosedLoop(ctx, sc.BatchWorkers, sc.Duration, time.Millisecond, call)
	}()
	rep := PrioritiesReport{Name: name,
		Share: sc.Rate * (sc.Latency + sc.RTT).Seconds() / float64(sc.Endpoints*sc.MCC)}
	if withInteractive {
		ctx := amlpool.WithPriority(context.Background(), interactive)
		res := OpenLoop(ctx, sc.Rate, sc.Duration, rand.New(rand.NewPCG(sc.Seed, 97)), call)
		rep.P50, rep.P99, rep.P999, rep.Failed = res.Quantile(0.5), res.Quantile(0.99), res.Quantile(0.999), res.Failed()
	}
	rep.BatchGoodput = (<-batchDone).GoodputBetween(0, sc.Duration)
	c.Close()
	return rep
}
