package chaos

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// startChurn changes the Client's live set every 20 to 100 ms until the
// returned func is called: it removes an endpoint or adds a removed one
// back, lowers or raises an endpoint's cap (never above its server's), or
// rotates an endpoint's key. A key is rotated as the service allows: the
// server accepts the new key beside the old, SetEndpoints gives the Client
// the new one, then the server drops the old, so that only attempts that
// held their slot before SetEndpoints returned can meet a 401, and go again
// with the new key. The faults and restarts of the run go on meanwhile.
func startChurn(c *amlpool.Client, servers []*amltest.Server, eps []amlpool.Endpoint, caps []int, tl *tally, seed uint64) (stop func()) {
	live := make([]bool, len(eps))
	for i := range live {
		live[i] = true
	}
	cur := append([]amlpool.Endpoint(nil), eps...)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		r := rand.New(rand.NewPCG(seed, 1<<42))
		for gen := 1; ; gen++ {
			tm := time.NewTimer(millis(r, 20, 100))
			select {
			case <-done:
				tm.Stop()
				return
			case <-tm.C:
			}
			i := r.IntN(len(cur))
			old := ""
			switch r.IntN(4) {
			case 0: // remove, or add back
				if live[i] && countTrue(live) == 1 {
					continue // keep one
				}
				live[i] = !live[i]
			case 1: // a new cap, at most the server's
				cur[i].MaxConcurrentCalls = 1 + r.IntN(caps[i])
			default: // rotate the key
				old = cur[i].APIKey
				cur[i].APIKey = fmt.Sprintf("%s-rotated-%d", eps[i].Name, gen)
				tl.addKey(eps[i].Name, cur[i].APIKey)
				servers[i].SetKeys(old, cur[i].APIKey)
			}
			var set []amlpool.Endpoint
			for j, e := range cur {
				if live[j] {
					set = append(set, e)
				}
			}
			if err := c.SetEndpoints(set); err != nil {
				return // the Client closed under the run
			}
			if old != "" {
				servers[i].SetKeys(cur[i].APIKey, "")
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

func countTrue(b []bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}
