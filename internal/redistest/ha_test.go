package redistest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The Sentinel set-up promotes the replica when the primary dies, and a
// failover client follows it.
func TestSentinelPromotesTheReplica(t *testing.T) {
	s := StartSentinel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := s.FailoverClient(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if a, err := s.PrimaryAddr(ctx); err != nil || a != s.Primary.Addr {
		t.Fatalf("primary %q, %v; want %s", a, err, s.Primary.Addr)
	}
	s.Primary.Kill()
	for {
		a, err := s.PrimaryAddr(ctx)
		if err == nil && a == s.Replica.Addr {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the replica was never promoted (primary %q, %v)", a, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	for {
		err := c.Set(ctx, "k", "w", 0).Err()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the failover client never reached the new primary: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// The Cluster's nodes share the slots: keys with one hash tag live on one
// node, and a cluster client finds them.
func TestClusterServesKeys(t *testing.T) {
	c := StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc := c.Client(t)
	for _, k := range []string{"a", "b", "c", "{p}:1", "{p}:2"} {
		if err := cc.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
	s1, _ := cc.ClusterKeySlot(ctx, "{p}:1").Result()
	s2, _ := cc.ClusterKeySlot(ctx, "amlpool:{p}:members").Result()
	if s1 != s2 {
		t.Fatalf("hash tag slots %d and %d differ", s1, s2)
	}
}
