// Command fleet shows two replicas of a service sharing the caps of the
// same endpoints through Redis, so that together they never send an
// endpoint more calls than its MaxConcurrentCalls.
//
// It starts two fake endpoints (amltest, cap 4 each) so that it runs
// anywhere, and two "replicas": each its own Redis client, redislimit.Limiter
// and amlpool.Client, as two processes would have. Both send far more calls
// than the caps for a few seconds, then the program prints what the
// endpoints saw:
//
//	go run ./examples/fleet -redis 127.0.0.1:6379
//	go run ./examples/fleet              # no Redis at hand: an in-memory one (miniredis)
//
// In a service, keep newReplica: one Redis client and one Limiter per
// process, passed to amlpool.New with WithLimiter.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/redislimit"
)

func main() {
	addr := flag.String("redis", "", "Redis address (host:port); empty runs an in-memory Redis")
	d := flag.Duration("duration", 3*time.Second, "how long the replicas send calls")
	flag.Parse()
	if err := run(context.Background(), os.Stdout, *addr, *d, redislimit.DefaultTimeout); err != nil {
		log.Fatal(err)
	}
}

// replica is what one process of the service holds.
type replica struct {
	rdb    *redis.Client
	lim    *redislimit.Limiter
	client *amlpool.Client
}

// newReplica builds one process's Client. The Redis client is set up for a
// limiter: short timeouts (100 ms) that honour the context, one retry at
// most (go-redis's defaults wait 5 s on a socket). The Limiter knows the
// fleet has two replicas, so that if Redis fails before they have seen each
// other, each still takes only half of each cap.
func newReplica(redisAddr string, eps []amlpool.Endpoint, timeout time.Duration) (*replica, error) {
	rdb := redis.NewClient(&redis.Options{
		Addr:                  redisAddr,
		ContextTimeoutEnabled: true,
		DialTimeout:           250 * time.Millisecond,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		MaxRetries:            1,
	})
	lim, err := redislimit.New(rdb, redislimit.WithPool("fleet-example"),
		redislimit.WithTimeout(timeout), redislimit.WithExpectedReplicas(2))
	if err != nil {
		rdb.Close()
		return nil, err
	}
	c, err := amlpool.New(eps, amlpool.WithLimiter(lim))
	if err != nil {
		lim.Close()
		rdb.Close()
		return nil, err
	}
	return &replica{rdb: rdb, lim: lim, client: c}, nil
}

// Close closes the Client first, then the Limiter, then the Redis client.
func (r *replica) Close() {
	r.client.Close()
	r.lim.Close()
	r.rdb.Close()
}

func run(ctx context.Context, out io.Writer, redisAddr string, d, timeout time.Duration) error {
	if redisAddr == "" {
		m, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer m.Close()
		redisAddr = m.Addr()
	}
	var srvs []*amltest.Server
	var eps []amlpool.Endpoint
	for _, name := range []string{"east", "west"} {
		s := amltest.NewServer(amltest.Config{Name: name, MaxConcurrentCalls: 4, Latency: 50 * time.Millisecond})
		defer s.Close()
		srvs = append(srvs, s)
		eps = append(eps, s.Endpoint())
	}

	body := []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}},"GlobalParameters":{}}`)
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	calls := make([]int, 2)
	var errs []error
	var mu sync.Mutex
	var replicas []*replica
	for i := range 2 {
		r, err := newReplica(redisAddr, eps, timeout)
		if err != nil {
			return err
		}
		defer r.Close()
		replicas = append(replicas, r)
		for range 16 { // 32 callers for 8 slots
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					_, err := r.client.Do(ctx, body)
					mu.Lock()
					if err == nil {
						calls[i]++
					} else if ctx.Err() == nil {
						errs = append(errs, err)
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()

	for i, r := range replicas {
		st := r.lim.Stats()
		fmt.Fprintf(out, "replica %d: %d calls, %d replicas at its last heartbeat, %d leases lost, fallback %v\n",
			i+1, calls[i], st.Replicas, st.Lost, st.Fallback)
	}
	for _, s := range srvs {
		st := s.Stats()
		fmt.Fprintf(out, "endpoint %s: cap 4, peak in flight %d, throttled %d\n", s.Endpoint().Name, st.PeakInFlight, st.Throttled)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d calls failed, the first: %w", len(errs), errs[0])
	}
	return nil
}
