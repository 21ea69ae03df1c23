package amlpool_test

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/internal/sim"
)

// TestSimPriorities: a batch keeps every slot of five endpoints busy while
// interactive calls arrive at 200/s. Without priorities the interactive
// calls wait in line behind the batch's; at PriorityHigh beside a batch at
// PriorityLow their p99 stays within 1.5 × the service latency, and the
// batch loses no more goodput than the interactive calls' share of the
// capacity.
func TestSimPriorities(t *testing.T) {
	for _, workers := range []int{100, 400} {
		synctest.Test(t, func(t *testing.T) {
			sc := sim.Priorities{Endpoints: 5, MCC: 20, Latency: 50 * time.Millisecond, BatchWorkers: workers, Rate: 200,
				Duration: simDuration(10*time.Second, 120*time.Second), RTT: time.Millisecond, Seed: 4}
			alone := sc.Run("batch alone", amlpool.PriorityLow, 0, false, amlpool.WithRand(seeded(4)))
			fifo := sc.Run("no priorities", amlpool.PriorityNormal, amlpool.PriorityNormal, true, amlpool.WithRand(seeded(4)))
			prio := sc.Run("interactive high, batch low", amlpool.PriorityLow, amlpool.PriorityHigh, true, amlpool.WithRand(seeded(4)))
			var rows [][]string
			for _, r := range []sim.PrioritiesReport{fifo, prio} {
				rows = append(rows, []string{r.Name, sim.Ms(r.P50), sim.Ms(r.P99), sim.Ms(r.P999), fmt.Sprint(r.Failed),
					fmt.Sprintf("%.0f/s", r.BatchGoodput), fmt.Sprintf("%.1f %%", 100*(1-r.BatchGoodput/alone.BatchGoodput))})
			}
			t.Logf("%d batch workers, %v; batch alone %.0f/s; interactive share %.1f %%:\n%s", workers, sc.Duration,
				alone.BatchGoodput, 100*prio.Share,
				sim.Table([]string{"run", "interactive p50", "p99", "p99.9", "failed", "batch goodput", "batch loss"}, rows))
			assert.LessOrEqual(t, float64(prio.P99), 1.5*float64(sc.Latency), "interactive p99 with priorities")
			assert.Zero(t, prio.Failed+fifo.Failed)
			if workers > sc.Endpoints*sc.MCC {
				// A batch with more calls than slots makes a line: without
				// priorities the interactive calls wait at its end.
				assert.Greater(t, float64(fifo.P99), 1.5*float64(sc.Latency), "interactive p99 without priorities")
			}
			assert.LessOrEqual(t, 1-prio.BatchGoodput/alone.BatchGoodput, prio.Share+0.005, "batch loss")
		})
	}
}
