package redislimit

import (
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Key layout. Every key of a pool shares the hash tag {pool}, so the scripts,
// which touch several keys at once, stay in one Redis Cluster slot.
//
//	amlpool:{pool}:ep:<id>  ZSET  lease id -> expiry (ms, Redis clock); one per endpoint
//	amlpool:{pool}:members  ZSET  process id -> expiry; its size is the replica count
//	amlpool:{pool}:limits   ZSET  "<endpoint id>:<limit>:<process id>" -> expiry
//	amlpool:{pool}:freed    pub/sub channel; a release on a full endpoint publishes its key
//
// Endpoint ids are amlpool's LimitedEndpoint.ID (a hash of the URL), so no key
// name ever carries an API key or a URL.
type keyspace struct {
	prefix  string // "amlpool:{pool}:"
	members string
	limits  string
	freed   string
}

func newKeyspace(pool string) keyspace {
	p := "amlpool:{" + pool + "}:"
	return keyspace{prefix: p, members: p + "members", limits: p + "limits", freed: p + "freed"}
}

func (k keyspace) endpoint(id string) string { return k.prefix + "ep:" + id }

// limitMember is what one process writes to the limits set for one endpoint.
func limitMember(epID string, limit int, proc string) string {
	return epID + ":" + strconv.Itoa(limit) + ":" + proc
}

// parseLimitMember splits a limits-set member; ok is false for anything
// that is not ours.
func parseLimitMember(m string) (epID string, limit int, ok bool) {
	epID, rest, ok1 := strings.Cut(m, ":")
	ls, _, ok2 := strings.Cut(rest, ":")
	n, err := strconv.Atoi(ls)
	if !ok1 || !ok2 || err != nil || epID == "" {
		return "", 0, false
	}
	return epID, n, true
}

// Every script reads the time from Redis (TIME), never from a client, so
// replicas with skewed clocks agree on when a lease expires.
// replicate_commands is a no-op on Redis 7 and needed before a write that
// follows TIME on Redis 3.2-4.x; the guard keeps scripts working where it is
// gone.
const scriptNow = `
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- extend makes key k live at least d ms more, never less: a key outlives its
-- longest lease, and one left without a TTL (-1) gets one.
local function extend(k, d)
  if redis.call('PTTL', k) < d then redis.call('PEXPIRE', k, d) end
end
`

// acquireScript grants one lease on the first candidate with room.
//
// KEYS: one lease set per candidate endpoint, most preferred first.
// ARGV: lease id, TTL in ms, then one limit per key.
// Reply: {i, n}: the lease is on KEYS[i] (1-based), which now holds n
// leases; {0} when every candidate is full.
//
// A lease id already in a set is a retry of the same acquire (go-redis
// retries on some errors): it is refreshed and granted again, never counted
// twice.
var acquireScript = redis.NewScript(scriptNow + `
local id, ttl = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS do
  local k, limit = KEYS[i], tonumber(ARGV[2 + i])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local n = redis.call('ZCARD', k)
  local held = redis.call('ZSCORE', k, id)
  if held or n < limit then
    redis.call('ZADD', k, now + ttl, id)
    extend(k, ttl)
    if not held then n = n + 1 end
    return {i, n}
  end
end
return {0}
`)

// releaseScript removes one lease and, when its endpoint was full, tells
// waiting processes that a slot is free.
//
// KEYS[1]: the lease set. ARGV: lease id, the endpoint's limit, channel.
// Reply: 1 if the lease was there, 0 if it had expired or been lost.
var releaseScript = redis.NewScript(`
local n = redis.call('ZCARD', KEYS[1])
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 and n >= tonumber(ARGV[2]) then
  redis.call('PUBLISH', ARGV[3], KEYS[1])
end
return removed
`)

// tickScript is one process's periodic round trip: heartbeat, limit
// announcement and lease renewal. After an outage it also re-registers every
// lease still in flight.
//
// KEYS: members set, limits set, then the lease sets that have leases to
// renew.
// ARGV: process id, lease TTL ms, member TTL ms, count L, L limit members,
// then for each lease set: count M, M lease ids.
// Reply: {replicas, {live limit members}, {ids that were missing}}.
//
// A missing lease (expired, or lost with a Redis restart or failover) is
// added back even past the limit: its call is still running, and counting it
// keeps new acquires out until the real number drains.
var tickScript = redis.NewScript(scriptNow + `
local proc, ttl, mttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + mttl, proc)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
extend(KEYS[1], mttl)
local replicas = redis.call('ZCARD', KEYS[1])

local nlim = tonumber(ARGV[4])
for i = 1, nlim do
  redis.call('ZADD', KEYS[2], now + mttl, ARGV[4 + i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local limits = redis.call('ZRANGE', KEYS[2], 0, -1)
if #limits > 0 then extend(KEYS[2], mttl) end

local a = 5 + nlim
local missing = {}
for k = 3, #KEYS do
  local key = KEYS[k]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local m = tonumber(ARGV[a])
  a = a + 1
  for j = 1, m do
    local id = ARGV[a]
    a = a + 1
    if not redis.call('ZSCORE', key, id) then missing[#missing + 1] = id end
    redis.call('ZADD', key, now + ttl, id)
  end
  extend(key, ttl)
end
return {replicas, limits, missing}
`)

// goodbyeScript is a closing process's last round trip: it deletes every
// lease of the process, the ones it knows it holds and any it does not (an
// acquire or a tick that ran in Redis with its reply lost), and the process's
// limit announcements and membership.
//
// KEYS: the lease sets of every endpoint the process has seen, then the
// limits set, then the members set.
// ARGV: process id, then the process's limit members.
// Lease ids are "<process id>:<sequence>", and process ids hold no ':'.
var goodbyeScript = redis.NewScript(`
local prefix = ARGV[1] .. ':'
for k = 1, #KEYS - 2 do
  for _, id in ipairs(redis.call('ZRANGE', KEYS[k], 0, -1)) do
    if string.sub(id, 1, #prefix) == prefix then redis.call('ZREM', KEYS[k], id) end
  end
end
for i = 2, #ARGV do redis.call('ZREM', KEYS[#KEYS - 1], ARGV[i]) end
redis.call('ZREM', KEYS[#KEYS], ARGV[1])
return 1
`)
