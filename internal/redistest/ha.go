package redistest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis set up for high availability, on loopback ports this package picks:
// a primary with a replica watched by Sentinel, and a Cluster of primaries.
// Each needs its Debian package's command (redis-sentinel; redis-cli, from
// redis-tools, for the Cluster) and skips the test without it, unless
// RequireEnv is set.

// MasterName is the name under which a Sentinel watches its primary.
const MasterName = "amlpool"

// Sentinel is a primary, a replica of it, and one Sentinel (quorum 1) that
// promotes the replica when the primary stops answering for 500 ms.
type Sentinel struct {
	Primary, Replica *Server
	Sentinel         *Server // its Addr is the Sentinel's
}

// StartSentinel starts a primary, its replica and a Sentinel, and returns
// once the replica is in sync and the Sentinel knows both.
func StartSentinel(t TB) *Sentinel {
	t.Helper()
	server := need(t, "redis-server", "redis-server")
	sentinel := need(t, "redis-sentinel", "redis-sentinel")
	// Without the default 5 s wait for more replicas before a diskless sync.
	s := &Sentinel{Primary: startServer(t, &Server{bin: server, extra: []string{"--repl-diskless-sync-delay", "0"}}, freeAddr)}
	host, port, _ := net.SplitHostPort(s.Primary.Addr)
	s.Replica = startServer(t, &Server{bin: server, extra: []string{"--replicaof", host, port},
		ready: func(c *redis.Client, ctx context.Context) error {
			return infoHas(c, ctx, "replication", "master_link_status:up")
		}}, freeAddr)

	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	text := fmt.Sprintf("sentinel monitor %[1]s %[2]s %[3]s 1\n"+
		"sentinel down-after-milliseconds %[1]s 500\n"+
		"sentinel failover-timeout %[1]s 5000\n"+
		"sentinel parallel-syncs %[1]s 1\n", MasterName, host, port)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	replicaAddr := s.Replica.Addr
	s.Sentinel = startServer(t, &Server{bin: sentinel, dir: dir, extra: []string{conf, "--sentinel"},
		ready: func(c *redis.Client, ctx context.Context) error {
			// It has found the replica through the primary.
			rs, err := c.Do(ctx, "SENTINEL", "REPLICAS", MasterName).Slice()
			if err != nil {
				return err
			}
			if !strings.Contains(fmt.Sprint(rs), strings.Replace(replicaAddr, ":", " port ", 1)) &&
				!strings.Contains(fmt.Sprint(rs), replicaAddr) {
				return fmt.Errorf("sentinel does not know the replica yet")
			}
			return nil
		}}, freeAddr)
	return s
}

// FailoverClient returns a client that finds the primary through the
// Sentinel, with the settings Options recommends as mods change them,
// closed when the test ends.
func (s *Sentinel) FailoverClient(t TB, mods ...func(*redis.FailoverOptions)) *redis.Client {
	o := Options("")
	fo := &redis.FailoverOptions{
		MasterName: MasterName, SentinelAddrs: []string{s.Sentinel.Addr},
		ContextTimeoutEnabled: o.ContextTimeoutEnabled, DialTimeout: o.DialTimeout,
		ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, MaxRetries: o.MaxRetries,
	}
	for _, m := range mods {
		m(fo)
	}
	c := redis.NewFailoverClient(fo)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// PrimaryAddr returns the primary's address as the Sentinel names it now.
func (s *Sentinel) PrimaryAddr(ctx context.Context) (string, error) {
	c := redis.NewSentinelClient(&redis.Options{Addr: s.Sentinel.Addr})
	defer c.Close()
	a, err := c.GetMasterAddrByName(ctx, MasterName).Result()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(a[0], a[1]), nil
}

// Cluster is a Redis Cluster of primaries without replicas.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts n cluster-enabled redis-servers, joins them with
// redis-cli --cluster create (the slots split evenly, no replicas), and
// returns once every node says the cluster is ok.
func StartCluster(t TB, n int) *Cluster {
	t.Helper()
	server := need(t, "redis-server", "redis-server")
	cli := need(t, "redis-cli", "redis-tools")
	c := &Cluster{}
	var addrs []string
	for range n {
		s := startServer(t, &Server{bin: server, extra: []string{"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"}}, clusterAddr)
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v: %s", err, out)
	}
	for _, s := range c.Nodes {
		rc := redis.NewClient(&redis.Options{Addr: s.Addr})
		for {
			if infoHasCluster(rc, ctx) == nil {
				break
			}
			select {
			case <-ctx.Done():
				_ = rc.Close()
				t.Fatalf("redistest: cluster node %s never became ok", s.Addr)
			case <-time.After(20 * time.Millisecond):
			}
		}
		_ = rc.Close()
	}
	return c
}

// Client returns a cluster client with the settings Options recommends as
// mods change them, closed when the test ends.
func (c *Cluster) Client(t TB, mods ...func(*redis.ClusterOptions)) *redis.ClusterClient {
	o := Options("")
	var addrs []string
	for _, s := range c.Nodes {
		addrs = append(addrs, s.Addr)
	}
	co := &redis.ClusterOptions{
		Addrs: addrs, ContextTimeoutEnabled: o.ContextTimeoutEnabled, DialTimeout: o.DialTimeout,
		ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, MaxRetries: o.MaxRetries,
	}
	for _, m := range mods {
		m(co)
	}
	cc := redis.NewClusterClient(co)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func infoHasCluster(c *redis.Client, ctx context.Context) error {
	s, err := c.ClusterInfo(ctx).Result()
	if err != nil {
		return err
	}
	if !strings.Contains(s, "cluster_state:ok") {
		return fmt.Errorf("cluster not ok")
	}
	return nil
}

// infoHas reports, as an error, whether INFO section lacks want.
func infoHas(c *redis.Client, ctx context.Context, section, want string) error {
	s, err := c.Info(ctx, section).Result()
	if err != nil {
		return err
	}
	if !strings.Contains(s, want) {
		return fmt.Errorf("INFO %s lacks %s", section, want)
	}
	return nil
}

// clusterAddr returns a loopback address whose port, and that port plus
// 10000 (the cluster bus), are free.
func clusterAddr(t TB) string {
	for range 100 {
		p := 20000 + rand.IntN(30000)
		a, b := "127.0.0.1:"+strconv.Itoa(p), "127.0.0.1:"+strconv.Itoa(p+10000)
		l1, err := net.Listen("tcp", a)
		if err != nil {
			continue
		}
		l2, err := net.Listen("tcp", b)
		_ = l1.Close()
		if err != nil {
			continue
		}
		_ = l2.Close()
		return a
	}
	t.Fatalf("redistest: no free port pair for a cluster node")
	return ""
}
