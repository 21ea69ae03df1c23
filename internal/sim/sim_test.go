package sim

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestQuantile(t *testing.T) {
	ds := make([]time.Duration, 1000)
	for i := range ds {
		ds[len(ds)-1-i] = time.Duration(i+1) * time.Millisecond
	}
	assert.Equal(t, 500*time.Millisecond, Quantile(ds, 0.5))
	assert.Equal(t, 990*time.Millisecond, Quantile(ds, 0.99))
	assert.Equal(t, 999*time.Millisecond, Quantile(ds, 0.999))
	assert.Equal(t, time.Millisecond, Quantile(ds, 0))
	assert.Zero(t, Quantile(nil, 0.5))
}

func post(ctx context.Context, c *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(`{}`))
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// An endpoint serves MCC calls at once in virtual time and throttles the
// rest; its peak counts the call it throttled.
func TestServerCapAndLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ep := &Endpoint{Name: "e", MCC: 2, Service: func(int64, *rand.Rand) time.Duration { return time.Second }}
		s := NewServer(10*time.Millisecond, 1, ep)
		start := time.Now()
		codes := make([]int, 3)
		var wg sync.WaitGroup
		for i := range codes {
			wg.Go(func() {
				var err error
				codes[i], err = post(context.Background(), s.Client(), s.URL("e"))
				assert.NoError(t, err)
			})
			time.Sleep(time.Millisecond) // arrivals in order
		}
		wg.Wait()
		assert.Equal(t, []int{200, 200, 503}, codes)
		assert.Equal(t, time.Millisecond+time.Second+10*time.Millisecond, time.Since(start), "the second call ends last")
		assert.Equal(t, Stats{Requests: 3, Scored: 2, Throttled: 1, Peak: 3}, ep.Stats())
		assert.Equal(t, []time.Duration{time.Second, time.Second}, ep.Served())
	})
}

// A call its client abandons frees its slot at once, unless the endpoint
// keeps working on it.
func TestServerCancelled(t *testing.T) {
	for _, keeps := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			ep := &Endpoint{Name: "e", MCC: 1, KeepsCancelled: keeps,
				Service: func(int64, *rand.Rand) time.Duration { return time.Second }}
			s := NewServer(0, 1, ep)
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			_, err := post(ctx, s.Client(), s.URL("e"))
			require.ErrorIs(t, err, context.DeadlineExceeded)
			code, err := post(context.Background(), s.Client(), s.URL("e"))
			require.NoError(t, err)
			want := 200
			if keeps {
				want = 503 // still busy with the abandoned call
			}
			assert.Equal(t, want, code, "keeps %v", keeps)
			s.Wait()
			assert.EqualValues(t, 1, ep.Stats().Cancelled)
		})
	}
}
