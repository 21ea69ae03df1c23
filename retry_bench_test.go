package amlpool_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/amlpool/amlpool"
	"github.com/amlpool/amlpool/amltest"
)

// BenchmarkHappyPathRetries measures the cost per successful call with
// retries, the retry budget and ejection on (the defaults) beside all of
// them off, in the same run. The "interleaved" cases alternate the two
// clients, 32 calls at a time, and report on/off-median, the median ratio of
// their times over those blocks:
//
//	go test -run '^$' -bench HappyPathRetries -benchmem -count 5 .
func BenchmarkHappyPathRetries(b *testing.B) {
	modes := []struct {
		name string
		opts []amlpool.Option
	}{
		{"retries=on", nil},
		{"retries=off", []amlpool.Option{amlpool.WithoutRetries(), amlpool.WithoutRetryBudget(), amlpool.WithoutEjection()}},
	}
	transports := []struct {
		name string
		eps  func(b *testing.B) ([]amlpool.Endpoint, []amlpool.Option)
	}{
		{"inproc", func(*testing.B) ([]amlpool.Endpoint, []amlpool.Option) {
			eps := make([]amlpool.Endpoint, 5)
			for i := range eps {
				eps[i] = amlpool.Endpoint{Name: fmt.Sprintf("e%d", i), URL: fmt.Sprintf("http://127.0.0.1:1/workspaces/w/services/e%d/execute", i), APIKey: "k"}
			}
			return eps, []amlpool.Option{amlpool.WithHTTPClient(&http.Client{Transport: amlpool.ReplyTransport{}})}
		}},
		{"loopback", func(b *testing.B) ([]amlpool.Endpoint, []amlpool.Option) {
			eps := make([]amlpool.Endpoint, 5)
			for i := range eps {
				s := amltest.NewServer(amltest.Config{})
				b.Cleanup(s.Close)
				eps[i] = s.Endpoint()
			}
			return eps, nil
		}},
	}
	ctx := context.Background()
	for _, tr := range transports {
		clients := make([]*amlpool.Client, len(modes))
		newClients := func(b *testing.B) {
			eps, opts := tr.eps(b)
			for i, m := range modes {
				c, err := amlpool.New(eps, append(append([]amlpool.Option(nil), opts...), m.opts...)...)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { c.Close() })
				clients[i] = c
			}
		}
		for i, m := range modes {
			b.Run(tr.name+"/"+m.name, func(b *testing.B) {
				newClients(b)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := clients[i].Do(ctx, scoreBody); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		b.Run(tr.name+"/interleaved", func(b *testing.B) {
			newClients(b)
			// Blocks of calls alternate between the two clients, each going first
			// in turn; the median of the blocks' time ratios shrugs off bursts
			// of load from elsewhere.
			const block = 32
			var spent [2]time.Duration
			var ratios []float64
			n := 0
			for b.Loop() {
				var took [2]time.Duration
				for k := range clients {
					i := (k + len(ratios)) % 2 // who goes first alternates
					c := clients[i]
					start := time.Now()
					for range block {
						if _, err := c.Do(ctx, scoreBody); err != nil {
							b.Fatal(err)
						}
					}
					took[i] = time.Since(start)
					spent[i] += took[i]
				}
				ratios = append(ratios, float64(took[0])/float64(took[1]))
				n += block
			}
			slices.Sort(ratios)
			b.ReportMetric(float64(spent[0])/float64(n), "ns/call-on")
			b.ReportMetric(float64(spent[1])/float64(n), "ns/call-off")
			b.ReportMetric(ratios[len(ratios)/2], "on/off-median")
		})
	}
}
