package redislimit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
	"github.com/amlpool/amlpool/redislimit"
)

// A Client whose endpoint's cap is shared through Redis with every other
// replica that uses the same pool name. (miniredis stands in for Redis here.)
func ExampleNew() {
	m, _ := miniredis.Run()
	defer m.Close()
	ep := amltest.NewServer(amltest.Config{Name: "scoring", MaxConcurrentCalls: 4})
	defer ep.Close()

	rdb := redis.NewClient(&redis.Options{
		Addr:                  m.Addr(),
		ContextTimeoutEnabled: true,
		DialTimeout:           250 * time.Millisecond,
		ReadTimeout:           100 * time.Millisecond,
		WriteTimeout:          100 * time.Millisecond,
		MaxRetries:            1,
	})
	defer rdb.Close()
	lim, err := redislimit.New(rdb, redislimit.WithPool("example"))
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	c, err := amlpool.New([]amlpool.Endpoint{ep.Endpoint()}, amlpool.WithLimiter(lim))
	if err != nil {
		panic(err)
	}
	defer c.Close()

	_, err = c.Do(context.Background(), []byte(`{"Inputs":{"input1":{"ColumnNames":["x"],"Values":[["1"]]}},"GlobalParameters":{}}`))
	st := lim.Stats()
	fmt.Println("error:", err)
	fmt.Println("leases granted:", st.Acquired, "held now:", st.Held, "fallback:", st.Fallback)
	// Output:
	// error: <nil>
	// leases granted: 1 held now: 0 fallback: false
}
