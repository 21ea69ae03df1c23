package redislimit

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/amlpool/amlpool/internal/redistest"
)

// backend is one Redis the script tests run on: miniredis (fast, time under
// control) and a real redis-server (the truth for timing and Lua).
type backend struct {
	rdb *redis.Client
	// advance lets d pass on the server's clock and its key TTLs.
	advance func(d time.Duration)
	mini    *miniredis.Miniredis // nil on the real server
}

func forEachBackend(t *testing.T, f func(t *testing.T, b *backend)) {
	t.Run("miniredis", func(t *testing.T) {
		m := miniredis.RunT(t)
		now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		m.SetTime(now)
		rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		f(t, &backend{rdb: rdb, mini: m, advance: func(d time.Duration) {
			// miniredis needs both: TIME follows SetTime, TTLs FastForward.
			now = now.Add(d)
			m.SetTime(now)
			m.FastForward(d)
		}})
	})
	t.Run("redis-server", func(t *testing.T) {
		s := redistest.Start(t)
		// Long socket timeouts: the scripts run here without a Limiter's
		// fallback, and on a loaded host a reply can take longer than the
		// 100 ms a Limiter's client waits (a flake, not a finding).
		opts := redistest.Options(s.Addr)
		opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = 5*time.Second, 5*time.Second, 5*time.Second
		rdb := redis.NewClient(opts)
		t.Cleanup(func() { _ = rdb.Close() })
		f(t, &backend{rdb: rdb, advance: func(d time.Duration) { time.Sleep(d) }})
	})
}

// acquire runs the acquire script for process p (the lease id's prefix)
// on the lease sets keys, without recording a want; it returns {i, c}.
func acquire(t *testing.T, b *backend, id string, ttl time.Duration, keys []string, limits ...int) []int64 {
	t.Helper()
	return acquireWanting(t, b, id, 0, ttl, keys, limits...)[:2]
}

// acquireWanting is acquire recording, when every candidate is full, that
// the process wants one for wttl; it returns {i, c, r}.
func acquireWanting(t *testing.T, b *backend, id string, wttl, ttl time.Duration, keys []string, limits ...int) []int64 {
	t.Helper()
	return acquireReply(t, b, id, wttl, ttl, keys, limits...)[:3]
}

// acquireReply is acquireWanting's whole reply.
func acquireReply(t *testing.T, b *backend, id string, wttl, ttl time.Duration, keys []string, limits ...int) []int64 {
	t.Helper()
	proc, _, _ := strings.Cut(id, ":")
	args := []any{id, ttl.Milliseconds()}
	for _, n := range limits {
		args = append(args, n)
	}
	args = append(args, proc, wttl.Milliseconds(), ttl.Milliseconds()) // its mark lives a TTL
	all := slices.Clone(keys)
	for _, k := range keys {
		all = append(all, strings.Replace(k, ":ep:", ":want:", 1))
	}
	all = append(all, "amlpool:{t}:members", newKeyspace("t").done(proc))
	res, err := acquireScript.Run(context.Background(), b.rdb, all, args...).Int64Slice()
	require.NoError(t, err)
	require.Len(t, res, 4)
	return res
}

func TestAcquireScriptCountsReplicas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		k := []string{"amlpool:{t}:ep:a"}
		assert.Equal(t, []int64{1, 1, 1}, acquireWanting(t, b, "p:1", 0, time.Minute, k, 1), "no heartbeat yet: itself")
		now := b.rdb.Time(ctx).Val().UnixMilli()
		require.NoError(t, b.rdb.ZAdd(ctx, "amlpool:{t}:members", redis.Z{Score: float64(now + 60000), Member: "p"},
			redis.Z{Score: float64(now + 60000), Member: "q"}, redis.Z{Score: float64(now - 1), Member: "gone"}).Err())
		assert.Equal(t, []int64{1, 1, 2}, acquireWanting(t, b, "p:1", 0, time.Minute, k, 1),
			"two live replicas, itself one; the one whose heartbeat expired not counted")
		assert.Equal(t, []int64{0, 0, 3}, acquireWanting(t, b, "r:1", 0, time.Minute, k, 1), "full, and still the count, r included")
		assert.Equal(t, []int64{0, 0, 3}, acquireWanting(t, b, "gone:1", 0, time.Minute, k, 1), "one whose heartbeat expired counts itself")
		assert.Equal(t, int64(0), acquireReply(t, b, "p:2", 0, time.Minute, k, 1)[3], "p's heartbeat is in")
		assert.Equal(t, int64(1), acquireReply(t, b, "gone:2", 0, time.Minute, k, 1)[3], "gone's has expired")
		assert.Equal(t, int64(1), acquireReply(t, b, "new:1", 0, time.Minute, k, 1)[3], "new has none")
	})
}

// A try that finds every candidate full records, for each of them, that
// the process wants a slot, for the time asked; one that does not wait
// (want TTL 0) records nothing.
func TestAcquireScriptRecordsWants(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		k := []string{"amlpool:{t}:ep:a", "amlpool:{t}:ep:b"}
		wa, wb := "amlpool:{t}:want:a", "amlpool:{t}:want:b"
		acquire(t, b, "p:1", time.Minute, k[:1], 1)
		acquire(t, b, "p:2", time.Minute, k[1:], 1)
		acquireWanting(t, b, "q:1", 0, time.Minute, k, 1, 1)
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, wa, wb).Val(), "a try that will not wait wants nothing")
		assert.Equal(t, []int64{0, 0, 1}, acquireWanting(t, b, "q:2", 400*time.Millisecond, time.Minute, k, 1, 1))
		for _, w := range []string{wa, wb} {
			assert.Equal(t, []string{"q"}, b.rdb.ZRange(ctx, w, 0, -1).Val())
			pttl := b.rdb.PTTL(ctx, w).Val()
			assert.Greater(t, pttl, time.Duration(0))
			assert.LessOrEqual(t, pttl, 400*time.Millisecond)
		}
		b.advance(500 * time.Millisecond)
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, wa, wb).Val(), "a want lasts its TTL")
		// A try with room takes the slot and records nothing.
		b.rdb.Del(ctx, k[1])
		assert.Equal(t, []int64{2, 1, 1}, acquireWanting(t, b, "q:3", time.Second, time.Minute, k, 1, 1))
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, wa, wb).Val())
	})
}

func TestAcquireScriptEnforcesLimit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		k := []string{"amlpool:{t}:ep:a"}
		assert.Equal(t, []int64{1, 1}, acquire(t, b, "p:1", time.Minute, k, 2))
		assert.Equal(t, []int64{1, 2}, acquire(t, b, "p:2", time.Minute, k, 2))
		assert.Equal(t, []int64{0, 0}, acquire(t, b, "p:3", time.Minute, k, 2), "third lease on a cap of 2")
		assert.EqualValues(t, 2, b.rdb.ZCard(context.Background(), k[0]).Val())
	})
}

func TestAcquireScriptIsIdempotentPerLeaseID(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		k := []string{"amlpool:{t}:ep:a"}
		assert.Equal(t, []int64{1, 1}, acquire(t, b, "p:1", time.Minute, k, 1))
		// A retried acquire of the same lease (go-redis retries) is granted
		// again without taking a second slot, even at the limit.
		assert.Equal(t, []int64{1, 1}, acquire(t, b, "p:1", time.Minute, k, 1))
		assert.EqualValues(t, 1, b.rdb.ZCard(context.Background(), k[0]).Val())
		// Also when a candidate before the one it holds has room: the retry
		// keeps its lease and takes none there.
		ks := []string{"amlpool:{t}:ep:b", k[0]}
		assert.Equal(t, []int64{2, 1}, acquire(t, b, "p:1", time.Minute, ks, 1, 1))
		assert.EqualValues(t, 0, b.rdb.Exists(context.Background(), ks[0]).Val())
	})
}

func TestAcquireScriptTakesFirstCandidateWithRoom(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		k := []string{"amlpool:{t}:ep:a", "amlpool:{t}:ep:b", "amlpool:{t}:ep:c"}
		assert.Equal(t, []int64{1, 1}, acquire(t, b, "p:1", time.Minute, k[:1], 1))
		assert.Equal(t, []int64{2, 1}, acquire(t, b, "p:2", time.Minute, k, 1, 2, 2))
		assert.Equal(t, []int64{2, 2}, acquire(t, b, "p:3", time.Minute, k, 1, 2, 2))
		assert.Equal(t, []int64{3, 1}, acquire(t, b, "p:4", time.Minute, k, 1, 2, 2))
	})
}

func TestAcquireScriptExpiresLeasesAndKeys(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		k := []string{"amlpool:{t}:ep:a"}
		ttl := 300 * time.Millisecond
		acquire(t, b, "p:1", ttl, k, 2)
		acquire(t, b, "p:2", ttl, k, 2)
		pttl := b.rdb.PTTL(ctx, k[0]).Val()
		assert.Greater(t, pttl, time.Duration(0), "the lease set must carry a TTL")
		assert.LessOrEqual(t, pttl, ttl)
		assert.Equal(t, []int64{0, 0}, acquire(t, b, "p:3", ttl, k, 2))

		b.advance(ttl + 50*time.Millisecond)
		// Both leases expired: the key went with them, and a new lease finds
		// the whole cap free.
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, k[0]).Val(), "lease set outlived its leases")
		assert.Equal(t, []int64{1, 1}, acquire(t, b, "p:4", ttl, k, 2))
	})
}

func TestAcquireScriptPurgesExpiredLeasesOfALiveKey(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		k := []string{"amlpool:{t}:ep:a"}
		acquire(t, b, "p:short", 200*time.Millisecond, k, 2)
		acquire(t, b, "p:long", time.Minute, k, 2)
		b.advance(300 * time.Millisecond)
		// p:short expired, p:long keeps the key alive: the purge must count
		// only p:long.
		assert.Equal(t, []int64{1, 2}, acquire(t, b, "p:new", time.Minute, k, 2))
		assert.Greater(t, b.rdb.PTTL(ctx, k[0]).Val(), 50*time.Second, "a short lease shortened the key's life")
	})
}

func TestAcquireScriptGivesImmortalKeysATTL(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		k := "amlpool:{t}:ep:a"
		// A lease set written by hand (or by an old version) without a TTL.
		require.NoError(t, b.rdb.ZAdd(ctx, k, redis.Z{Score: 1e15, Member: "x:1"}).Err())
		require.Equal(t, time.Duration(-1), b.rdb.PTTL(ctx, k).Val())
		acquire(t, b, "p:1", time.Second, []string{k}, 5)
		assert.Greater(t, b.rdb.PTTL(ctx, k).Val(), time.Duration(0))
	})
}

// releaser runs the release script as process proc on endpoint "a" of
// pool "t", with keep, grants on; it returns {removed, outcome}.
func releaser(t *testing.T, b *backend, limit int) func(id string, keep bool) []int64 {
	ks := newKeyspace("t")
	seq := 0
	return func(id string, keep bool) []int64 {
		t.Helper()
		proc, _, _ := strings.Cut(id, ":")
		seq++
		k := 0
		if keep {
			k = 1
		}
		sfx := proc + "." + strconv.Itoa(seq)
		res, err := releaseScript.Run(context.Background(), b.rdb, []string{ks.endpoint("a"), ks.want("a"), ks.grants, ks.done(proc)},
			id, limit, proc, time.Minute.Milliseconds(), k, 1, ks.grant, sfx, time.Minute.Milliseconds()).Int64Slice()
		require.NoError(t, err)
		return res
	}
}

func TestReleaseScriptFreesTheSlot(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		k := []string{"amlpool:{t}:ep:a"}
		release := releaser(t, b, 2)
		acquire(t, b, "p:1", time.Minute, k, 2)
		acquire(t, b, "p:2", time.Minute, k, 2)
		assert.Equal(t, []int64{1, freed}, release("p:1", false), "release of a held lease")
		assert.Equal(t, []int64{0, freed}, release("p:1", false), "a lease released twice is not there")
		assert.Equal(t, []int64{1, kept}, release("p:2", true), "keep, and nobody else wants it")
		assert.Equal(t, []string{"p:2"}, b.rdb.ZRange(ctx, k[0], 0, -1).Val(), "kept, the same lease")
	})
}

// A release run again with the same suffix (go-redis sending it again after
// it ran) returns the first run's reply and changes nothing, however the
// lease set and the wants changed meanwhile.
func TestReleaseScriptIsIdempotentPerRelease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		ks := newKeyspace("t")
		k := []string{ks.endpoint("a")}
		run := func(id, sfx string, keep time.Duration) []int64 { // keep: how long the mark stays
			t.Helper()
			res, err := releaseScript.Run(ctx, b.rdb, []string{k[0], ks.want("a"), ks.grants, ks.done("p")},
				id, 1, "p", time.Minute.Milliseconds(), 0, 1, ks.grant, sfx, keep.Milliseconds()).Int64Slice()
			require.NoError(t, err)
			return res
		}
		acquire(t, b, "p:1", time.Minute, k, 1)
		acquireWanting(t, b, "q:1", time.Minute, time.Minute, k, 1)
		assert.Equal(t, []int64{1, granted}, run("p:1", "p.1", time.Minute))
		assert.Equal(t, []string{"q:gp.1"}, b.rdb.ZRange(ctx, k[0], 0, -1).Val())
		// q uses the grant, releases it and wants another.
		require.NoError(t, b.rdb.Del(ctx, k[0]).Err())
		require.NoError(t, b.rdb.ZAdd(ctx, ks.want("a"), redis.Z{Score: 1e15, Member: "q"}).Err())
		assert.Equal(t, []int64{1, granted}, run("p:1", "p.1", time.Minute), "the first run's reply")
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, k[0]).Val(), "granted again")
		pttl := b.rdb.PTTL(ctx, ks.done("p")).Val()
		assert.Greater(t, pttl, 50*time.Second, "the reply is kept as long as asked")
		assert.LessOrEqual(t, pttl, time.Minute)
		// Another release of the same lease id (one kept is released again
		// later) is no retry: it acts.
		assert.Equal(t, []int64{0, granted}, run("p:1", "p.2", time.Minute))
		assert.Equal(t, []string{"q:gp.2"}, b.rdb.ZRange(ctx, k[0], 0, -1).Val())

		// A release's mark goes once its time has passed.
		require.NoError(t, b.rdb.Del(ctx, ks.done("p")).Err())
		run("p:1", "p.3", 200*time.Millisecond)
		b.advance(300 * time.Millisecond)
		run("p:1", "p.4", time.Minute)
		assert.Equal(t, []string{"p.4"}, b.rdb.ZRange(ctx, ks.done("p"), 0, -1).Val())
	})
}

func TestReleaseScriptKeepsTheSlot(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		k := []string{"amlpool:{t}:ep:a"}
		release := releaser(t, b, 1)
		acquire(t, b, "p:1", time.Second, k, 1)
		b.advance(500 * time.Millisecond)
		assert.Equal(t, []int64{1, kept}, release("p:1", true))
		assert.Equal(t, []string{"p:1"}, b.rdb.ZRange(ctx, k[0], 0, -1).Val(), "kept, the same lease")
		assert.Greater(t, b.rdb.PTTL(ctx, k[0]).Val(), 50*time.Second, "and renewed")
	})
}

// A release grants the slot to the process that wants it and holds the
// fewest of the endpoint's leases, tells it alone, and drops its want: it
// must ask again for more. A releasing process that wants the slot itself
// keeps it unless the other holds fewer than it would.
func TestReleaseScriptGrantsTheSlot(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		ks := newKeyspace("t")
		k := []string{ks.endpoint("a")}
		sub := b.rdb.Subscribe(ctx, ks.grant)
		defer sub.Close()
		_, err := sub.Receive(ctx) // the subscription confirmation
		require.NoError(t, err)
		release := releaser(t, b, 4)

		for _, id := range []string{"p:1", "p:2", "p:3", "q:1"} {
			acquire(t, b, id, time.Minute, k, 4)
		}
		acquireWanting(t, b, "q:2", time.Minute, time.Minute, k, 4)
		acquireWanting(t, b, "r:1", time.Minute, time.Minute, k, 4)
		assert.ElementsMatch(t, []string{"q", "r"}, b.rdb.ZRange(ctx, ks.want("a"), 0, -1).Val())

		// p holds 3, q 1, r none: r gets p's slot.
		assert.Equal(t, []int64{1, granted}, release("p:1", false))
		msg, err := sub.ReceiveTimeout(ctx, 5*time.Second)
		require.NoError(t, err)
		payload := msg.(*redis.Message).Payload
		assert.Equal(t, "g|r|"+k[0]+"|r:gp.1", payload)
		assert.ElementsMatch(t, []string{"p:2", "p:3", "q:1", "r:gp.1"}, b.rdb.ZRange(ctx, k[0], 0, -1).Val())
		assert.Equal(t, []string{"q"}, b.rdb.ZRange(ctx, ks.want("a"), 0, -1).Val(), "r must ask again")
		assert.Equal(t, []string{"r|" + k[0] + "|r:gp.1"}, b.rdb.ZRange(ctx, ks.grants, 0, -1).Val())

		// p wants it itself and would hold 1 without it; q holds 1, no fewer:
		// p keeps it.
		assert.Equal(t, []int64{1, kept}, release("p:2", true))
		// r wants it and would hold none; q holds 1: r keeps it. When r does
		// not want it, q gets it.
		assert.Equal(t, []int64{1, kept}, release("r:gp.1", true))
		assert.Equal(t, []int64{1, granted}, release("r:gp.1", false))
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, ks.want("a")).Val(), "q got one: nobody wants more")
		assert.Equal(t, []int64{1, freed}, release("p:3", false), "nobody wants it: set free")
		for _, key := range []string{k[0], ks.grants} {
			assert.Greater(t, b.rdb.PTTL(ctx, key).Val(), time.Duration(0), "%s has no TTL", key)
		}
	})
}

// An expired lease whose slot was taken since is not there to keep or
// grant.
func TestReleaseScriptOfALeaseWhoseSlotWasTaken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		k := []string{"amlpool:{t}:ep:a"}
		release := releaser(t, b, 1)
		acquire(t, b, "p:1", 200*time.Millisecond, k, 1)
		b.advance(300 * time.Millisecond)
		acquire(t, b, "q:1", time.Minute, k, 1)
		acquireWanting(t, b, "r:1", time.Minute, time.Minute, k, 1)
		assert.Equal(t, []int64{0, freed}, release("p:1", true))
		assert.Equal(t, []string{"q:1"}, b.rdb.ZRange(ctx, k[0], 0, -1).Val())
	})
}

func TestTickScript(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		ks := newKeyspace("t")
		ep := ks.endpoint("a")
		ttl, mttl := time.Second, 3*time.Second
		var gone bool // the last tick's process had no heartbeat in
		tick := func(proc string, limits []string, ids ...string) (int, []string, map[string]bool) {
			keys := []string{ks.members, ks.limits, ks.grants, ks.done(proc)}
			args := []any{proc, ttl.Milliseconds(), mttl.Milliseconds(), 0, len(limits)}
			for _, l := range limits {
				args = append(args, l)
			}
			if len(ids) > 0 {
				keys = append(keys, ep)
				args = append(args, len(ids))
				for _, id := range ids {
					args = append(args, id)
				}
			}
			res, err := tickScript.Run(ctx, b.rdb, keys, args...).Result()
			require.NoError(t, err)
			r, err := parseTick(res)
			require.NoError(t, err)
			if len(ids) > 0 {
				require.Len(t, r.counts, 1)
				assert.Equal(t, b.rdb.ZCard(ctx, ep).Val(), r.counts[0], "the count after the renewal")
			}
			gone = r.gone
			return r.replicas, r.limits, r.missing
		}

		n, _, _ := tick("p1", []string{limitMember("a", 2, "p1")})
		assert.Equal(t, 1, n)
		assert.True(t, gone, "p1's first heartbeat")
		tick("p1", []string{limitMember("a", 2, "p1")})
		assert.False(t, gone, "p1's heartbeat is in")
		n, lim, _ := tick("p2", []string{limitMember("a", 3, "p2")})
		assert.Equal(t, 2, n, "two processes heard from")
		assert.Equal(t, map[string][]int{"a": {2, 3}}, limitsByEndpoint(lim), "disagreeing limits")

		// Renewal: p1:1 is in Redis and gets a later expiry; p1:2 is not
		// (expired, or lost in a restart) and is added back, past the limit.
		acquire(t, b, "p1:1", ttl, []string{ep}, 1)
		b.advance(ttl / 2)
		_, _, miss := tick("p1", nil, "p1:1", "p1:2")
		assert.Equal(t, map[string]bool{"p1:2": true}, miss)
		assert.EqualValues(t, 2, b.rdb.ZCard(ctx, ep).Val(), "missing lease not re-registered")
		assert.Equal(t, []int64{0, 0}, acquire(t, b, "p2:1", ttl, []string{ep}, 1), "re-registered leases must block new ones")
		b.advance(ttl * 3 / 4)
		// Past the first expiry: the renewed leases are still there.
		assert.EqualValues(t, 2, b.rdb.ZCount(ctx, ep, "-inf", "+inf").Val())
		assert.Greater(t, b.rdb.PTTL(ctx, ep).Val(), time.Duration(0))

		// Members expire: after mttl without a heartbeat, only the ticking
		// process counts.
		b.advance(mttl)
		n, lim, _ = tick("p1", []string{limitMember("a", 2, "p1")})
		assert.Equal(t, 1, n)
		assert.True(t, gone, "p1's heartbeat had expired")
		assert.Equal(t, map[string][]int{"a": {2}}, limitsByEndpoint(lim))
		for _, k := range []string{ks.members, ks.limits} {
			assert.Greater(t, b.rdb.PTTL(ctx, k).Val(), time.Duration(0), "%s has no TTL", k)
		}
	})
}

// The tick hands a process the grants made to it, at every tick until they
// expire (a tick's reply may be lost), and reads its endpoints' health
// hashes.
func TestTickScriptGrantsAndHealth(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		ks := newKeyspace("t")
		exp := float64(b.rdb.Time(ctx).Val().Add(time.Second).UnixMilli())
		for _, g := range []string{"p|k1|p:g1", "p|k2|p:g3"} {
			require.NoError(t, b.rdb.ZAdd(ctx, ks.grants, redis.Z{Score: exp, Member: g}).Err())
		}
		require.NoError(t, b.rdb.ZAdd(ctx, ks.grants, redis.Z{Score: 1e15, Member: "q|k1|q:g2"}).Err())
		health(t, b, "q", wireEjected, "a", 30000, 1)
		tick := func() ([]string, []any) {
			keys := []string{ks.members, ks.limits, ks.grants, ks.done("p"), ks.endpointHealth("a"), ks.endpointHealth("b")}
			res, err := tickScript.Run(ctx, b.rdb, keys, "p", 1000, 3000, 2, "a", "b", 0).Result()
			require.NoError(t, err)
			r, err := parseTick(res)
			require.NoError(t, err)
			return r.grants, r.health
		}
		grants, records := tick()
		assert.ElementsMatch(t, []string{"k1|p:g1", "k2|p:g3"}, grants)
		require.Len(t, records, 1, "b has no health hash")
		r := records[0].([]any)
		assert.Equal(t, "a", r[0])
		assert.Positive(t, r[1].(int64), "version")
		assert.InDelta(t, 30000, r[3].(int64), 1000, "ejection ms left")
		assert.Equal(t, []any{int64(0), int64(1), "q", wireEjected}, []any{r[2], r[4], r[5], r[6]})
		grants, _ = tick()
		assert.ElementsMatch(t, []string{"k1|p:g1", "k2|p:g3"}, grants, "again, until they expire")
		b.advance(1500 * time.Millisecond)
		grants, _ = tick()
		assert.Empty(t, grants, "expired")
		assert.Equal(t, []string{"q|k1|q:g2"}, b.rdb.ZRange(ctx, ks.grants, 0, -1).Val())
	})
}

// health runs the health script as process proc and returns its reply.
func health(t *testing.T, b *backend, proc, kind, id string, n int64, fault int) (v, left int64, owner string) {
	t.Helper()
	return healthKeep(t, b, 5*time.Second, proc, kind, id, n, fault)
}

// healthSeq makes each health report's done key its own.
var healthSeq atomic.Int64

// healthKeep is health with the hash kept keep past its state.
func healthKeep(t *testing.T, b *backend, keep time.Duration, proc, kind, id string, n int64, fault int) (v, left int64, owner string) {
	t.Helper()
	ks := newKeyspace("t")
	rid := proc + "." + strconv.FormatInt(healthSeq.Add(1), 10)
	res, err := healthScript.Run(context.Background(), b.rdb, []string{ks.endpointHealth(id), ks.done(proc)},
		proc, kind, id, n, fault, ks.health, keep.Milliseconds(), rid, keep.Milliseconds()).Result()
	require.NoError(t, err)
	v, left, owner, ok := parseHealthReply(res)
	require.True(t, ok, "%v", res)
	return v, left, owner
}

// A failure or recovery report run again with the same report id (go-redis
// sending it again after it ran) is not announced again: failures count
// once. Another report is announced.
func TestHealthScriptAnnouncesAReportOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		ks := newKeyspace("t")
		sub := b.rdb.Subscribe(ctx, ks.health)
		defer sub.Close()
		_, err := sub.Receive(ctx)
		require.NoError(t, err)
		next := func() string {
			t.Helper()
			msg, err := sub.ReceiveTimeout(ctx, 5*time.Second)
			require.NoError(t, err)
			return msg.(*redis.Message).Payload
		}
		run := func(kind string, n int64, rid string) {
			t.Helper()
			res, err := healthScript.Run(ctx, b.rdb, []string{ks.endpointHealth("a"), ks.done("p")},
				"p", kind, "a", n, 0, ks.health, 60000, rid, 5000).Slice()
			require.NoError(t, err)
			assert.Equal(t, []any{int64(0), int64(0), ""}, res)
		}
		run(wireFailed, 3, "p.1")
		run(wireFailed, 3, "p.1")
		run(wireRecovered, 0, "p.2")
		run(wireRecovered, 0, "p.2")
		run(wireFailed, 3, "p.3")
		assert.Equal(t, "p|f|a|3|0|0", next())
		assert.Equal(t, "p|r|a|0|0|0", next(), "announced twice")
		assert.Equal(t, "p|f|a|3|0|0", next())
		pttl := b.rdb.PTTL(ctx, ks.done("p")).Val()
		assert.Greater(t, pttl, time.Duration(0))
		assert.LessOrEqual(t, pttl, 5*time.Second, "kept as long as asked")
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, ks.endpointHealth("a")).Val(), "nothing written")
	})
}

func TestHealthScript(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		ks := newKeyspace("t")
		key := ks.endpointHealth("a")
		sub := b.rdb.Subscribe(ctx, ks.health)
		defer sub.Close()
		_, err := sub.Receive(ctx)
		require.NoError(t, err)
		next := func() []string {
			t.Helper()
			msg, err := sub.ReceiveTimeout(ctx, 5*time.Second)
			require.NoError(t, err)
			return strings.Split(msg.(*redis.Message).Payload, "|")
		}

		// Failures are announced, not stored.
		v, _, _ := health(t, b, "p", wireFailed, "a", 3, 0)
		assert.Zero(t, v)
		assert.Equal(t, []string{"p", "f", "a", "3", "0", "0"}, next())
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, key).Val())

		// A cool-down is stored and announced with a version above the
		// clock in µs; a shorter one never shortens it.
		now := b.rdb.Time(ctx).Val()
		v1, _, _ := health(t, b, "p", wireCoolDown, "a", 5000, 0)
		assert.GreaterOrEqual(t, v1, now.UnixMicro()-1000)
		msg := next()
		assert.Equal(t, []string{"p", "c", "a", "5000", "0", strconv.FormatInt(v1, 10)}, msg)
		v2, _, _ := health(t, b, "q", wireCoolDown, "a", 1000, 0)
		assert.Greater(t, v2, v1)
		left, err := strconv.Atoi(next()[3])
		require.NoError(t, err)
		assert.InDelta(t, 5000, left, 1000, "the longer cool-down stands")
		pttl := b.rdb.PTTL(ctx, key).Val()
		assert.Greater(t, pttl, 9*time.Second, "it outlives its state by the time asked")
		assert.LessOrEqual(t, pttl, 10*time.Second)

		// The first ejection owns the probe; a second replica's does not
		// replace it, and learns its owner and what is left of it.
		_, ejLeft, owner := health(t, b, "p", wireEjected, "a", 30000, 0)
		assert.Equal(t, int64(30000), ejLeft)
		assert.Equal(t, "p", owner)
		assert.Equal(t, []string{"p", "e", "a", "30000", "0"}, next()[:5])
		v3, ejLeft, owner := health(t, b, "q", wireEjected, "a", 60000, 0)
		assert.Zero(t, v3, "not written")
		assert.Equal(t, "p", owner)
		assert.InDelta(t, 30000, ejLeft, 1000)
		// ... unless it was for a fault, which marks the ejection.
		v4, _, owner := health(t, b, "q", wireEjected, "a", 60000, 1)
		assert.Positive(t, v4)
		assert.Equal(t, "p", owner)
		assert.Equal(t, []string{"q", "e", "a"}, next()[:3])
		assert.Equal(t, "1", b.rdb.HGet(ctx, key, "fault").Val())
		// The owner's probe failed: it ejects again, for longer.
		_, ejLeft, owner = health(t, b, "p", wireEjected, "a", 120000, 0)
		assert.Equal(t, int64(120000), ejLeft)
		assert.Equal(t, "p", owner)
		next()

		// A readmission ends it, whoever sees it, and is kept for the tick.
		v5, ejLeft, _ := health(t, b, "q", wireReadmitted, "a", 0, 0)
		assert.Positive(t, v5)
		assert.Zero(t, ejLeft)
		assert.Equal(t, []string{"q", "a", "a", "0", "0", strconv.FormatInt(v5, 10)}, next())
		assert.Equal(t, []any{"0", "", "a"}, b.rdb.HMGet(ctx, key, "ej", "owner", "last").Val())
		assert.Greater(t, b.rdb.PTTL(ctx, key).Val(), time.Duration(0))

		// After the hash expired, a new write still gets a newer version.
		kb := ks.endpointHealth("b")
		v6, _, _ := healthKeep(t, b, 200*time.Millisecond, "p", wireCoolDown, "b", 100, 0)
		next()
		b.advance(400 * time.Millisecond)
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, kb).Val(), "the hash outlived its state and keep")
		v7, _, _ := healthKeep(t, b, 200*time.Millisecond, "p", wireCoolDown, "b", 100, 0)
		assert.Greater(t, v7, v6)
	})
}

func TestGoodbyeScript(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		ks := newKeyspace("t")
		a, c := ks.endpoint("a"), ks.endpoint("c")
		for _, id := range []string{"p1:1", "p1:2", "p12:1", "p2:1"} {
			acquire(t, b, id, time.Minute, []string{a}, 10)
		}
		acquire(t, b, "p1:3", time.Minute, []string{c}, 10)
		// A grant to p1 on an endpoint it forgot: its lease set is not
		// among the keys it is given.
		d := ks.endpoint("d")
		acquire(t, b, "p1:gx.2", time.Minute, []string{d}, 10)
		acquire(t, b, "p2:2", time.Minute, []string{d}, 10)
		require.NoError(t, b.rdb.ZAdd(ctx, ks.grants, redis.Z{Score: 1e15, Member: "p1|" + d + "|p1:gx.2"}).Err())
		require.NoError(t, b.rdb.ZAdd(ctx, ks.limits, redis.Z{Score: 1e15, Member: limitMember("a", 10, "p1")},
			redis.Z{Score: 1e15, Member: limitMember("a", 10, "p2")}).Err())
		require.NoError(t, b.rdb.ZAdd(ctx, ks.members, redis.Z{Score: 1e15, Member: "p1"}, redis.Z{Score: 1e15, Member: "p2"}).Err())

		for _, p := range []string{"p1", "p2"} {
			require.NoError(t, b.rdb.ZAdd(ctx, ks.want("a"), redis.Z{Score: 1e15, Member: p}).Err())
			require.NoError(t, b.rdb.ZAdd(ctx, ks.grants, redis.Z{Score: 1e15, Member: p + "|" + a + "|" + p + ":gx.1"}).Err())
		}

		for _, p := range []string{"p1", "p2"} {
			require.NoError(t, b.rdb.ZAdd(ctx, ks.done(p), redis.Z{Score: 1e15, Member: p + ".1"}).Err())
		}
		err := goodbyeScript.Run(ctx, b.rdb, []string{a, c, ks.want("a"), ks.want("c"), ks.grants, ks.limits, ks.members, ks.done("p1")},
			"p1", 2000, limitMember("a", 10, "p1"), limitMember("c", 10, "p1")).Err()
		require.NoError(t, err)
		assert.ElementsMatch(t, []string{"p12:1", "p2:1"}, b.rdb.ZRange(ctx, a, 0, -1).Val(), "p1's leases only")
		assert.Equal(t, []string{"p2"}, b.rdb.ZRange(ctx, ks.want("a"), 0, -1).Val())
		assert.Equal(t, []string{"p2|" + a + "|p2:gx.1"}, b.rdb.ZRange(ctx, ks.grants, 0, -1).Val())
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, c).Val())
		assert.Equal(t, []string{"p2:2"}, b.rdb.ZRange(ctx, d, 0, -1).Val(), "the lease granted to p1 on an endpoint it forgot")
		assert.Equal(t, []string{limitMember("a", 10, "p2")}, b.rdb.ZRange(ctx, ks.limits, 0, -1).Val())
		assert.Equal(t, []string{"p2"}, b.rdb.ZRange(ctx, ks.members, 0, -1).Val())
		assert.Equal(t, []string{"bye"}, b.rdb.ZRange(ctx, ks.done("p1"), 0, -1).Val(), "p1's marks, replaced by its goodbye")
		assert.InDelta(t, 2000, b.rdb.PTTL(ctx, ks.done("p1")).Val().Milliseconds(), 500)
		assert.EqualValues(t, 1, b.rdb.Exists(ctx, ks.done("p2")).Val())

		// Scripts of p1 that Redis runs after its goodbye write nothing.
		assert.Equal(t, []int64{0, 0, 0, 0}, acquireReply(t, b, "p1:4", time.Minute, time.Minute, []string{a}, 10))
		res, err := tickScript.Run(ctx, b.rdb, []string{ks.members, ks.limits, ks.grants, ks.done("p1"), a},
			"p1", 1000, 3000, 0, 1, limitMember("a", 10, "p1"), 1, "p1:1").Result()
		require.NoError(t, err)
		_, err = parseTick(res)
		require.NoError(t, err)
		res, err = releaseScript.Run(ctx, b.rdb, []string{a, ks.want("a"), ks.grants, ks.done("p1")},
			"p1:1", 10, "p1", 60000, 1, 1, ks.grant, "p1.9").Result()
		require.NoError(t, err)
		assert.Equal(t, []any{int64(0), int64(0)}, res)
		assert.ElementsMatch(t, []string{"p12:1", "p2:1"}, b.rdb.ZRange(ctx, a, 0, -1).Val())
		assert.Equal(t, []string{"p2"}, b.rdb.ZRange(ctx, ks.want("a"), 0, -1).Val())
		assert.Equal(t, []string{"p2"}, b.rdb.ZRange(ctx, ks.members, 0, -1).Val())
		assert.Equal(t, []string{limitMember("a", 10, "p2")}, b.rdb.ZRange(ctx, ks.limits, 0, -1).Val())
		assert.Equal(t, []string{"bye"}, b.rdb.ZRange(ctx, ks.done("p1"), 0, -1).Val())
		b.advance(2500 * time.Millisecond)
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, ks.done("p1")).Val(), "the goodbye expires")
	})
}

// The remove script deletes the leases it is given, and no other, and
// marks their ids: an acquire of one of them that Redis runs afterwards (its
// reply given up on before Redis ran it) takes nothing.
func TestRemoveScript(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		ks := newKeyspace("t")
		a, c := ks.endpoint("a"), ks.endpoint("c")
		acquire(t, b, "p:1", time.Minute, []string{a}, 10)
		acquire(t, b, "q:1", time.Minute, []string{a}, 10)
		require.NoError(t, removeScript.Run(ctx, b.rdb, []string{ks.done("p"), a, c}, 60000, "p:1", "p:2").Err())
		assert.Equal(t, []string{"q:1"}, b.rdb.ZRange(ctx, a, 0, -1).Val(), "p:1 only")
		for _, id := range []string{"p:1", "p:2"} {
			score, err := b.rdb.ZScore(ctx, ks.done("p"), id).Result()
			require.NoError(t, err, "%s unmarked", id)
			now := b.rdb.Time(ctx).Val().UnixMilli()
			assert.InDelta(t, now+60000, score/8, 1000, "%s's mark lives as long as asked", id)
		}
		assert.Greater(t, b.rdb.PTTL(ctx, ks.done("p")).Val(), 50*time.Second)

		assert.Equal(t, []int64{0, 0}, acquire(t, b, "p:2", time.Minute, []string{c}, 10), "an acquire run after its lease was deleted")
		assert.EqualValues(t, 0, b.rdb.Exists(ctx, c).Val())
		assert.Equal(t, []int64{1, 1}, acquire(t, b, "p:3", time.Minute, []string{c}, 10), "another acquire")
	})
}

func TestScriptsSurviveScriptFlush(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		k := []string{"amlpool:{t}:ep:a"}
		acquire(t, b, "p:1", time.Minute, k, 5)
		require.NoError(t, b.rdb.ScriptFlush(ctx).Err())
		// EVALSHA now answers NOSCRIPT; Script.Run falls back to EVAL.
		assert.Equal(t, []int64{1, 2}, acquire(t, b, "p:2", time.Minute, k, 5))
	})
}

func TestScriptErrorIsReturned(t *testing.T) {
	m := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr(), MaxRetries: -1})
	defer rdb.Close()
	m.SetError("LOADING Redis is loading the dataset in memory")
	err := acquireScript.Run(context.Background(), rdb, []string{"k", "w", "m"}, "p:1", 1000, 1, "p", 0, 2000).Err()
	assert.ErrorContains(t, err, "LOADING")
}

func TestLimitMemberRoundTrip(t *testing.T) {
	id, n, ok := parseLimitMember(limitMember("0123abcd", 20, "ff"))
	assert.True(t, ok)
	assert.Equal(t, "0123abcd", id)
	assert.Equal(t, 20, n)
	for _, bad := range []string{"", "x", "a:b:c", ":1:p", "a:1"} {
		_, _, ok := parseLimitMember(bad)
		assert.False(t, ok, bad)
	}
}
