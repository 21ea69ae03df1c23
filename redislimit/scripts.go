package redislimit

import (
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Key layout. Every key of a pool shares the hash tag {pool}, so the scripts,
// which touch several keys at once, stay in one Redis Cluster slot.
//
//	amlpool:{pool}:ep:<id>    ZSET  lease id -> expiry (ms, Redis clock); one per endpoint
//	amlpool:{pool}:want:<id>  ZSET  process id -> expiry: processes with calls waiting for the endpoint
//	amlpool:{pool}:grants     ZSET  "<process id>|<lease set>|<lease id>" -> expiry: leases granted to a waiting process
//	amlpool:{pool}:members    ZSET  process id -> expiry; its size is the replica count
//	amlpool:{pool}:limits     ZSET  "<endpoint id>:<limit>:<process id>" -> expiry
//	amlpool:{pool}:health:<id> HASH endpoint health: version, cool-down and ejection ends (ms), fault, owner, last kind
//	amlpool:{pool}:done:<proc> ZSET  "<proc>.<n>" -> expiry × 8 + reply: the releases and failure reports of a process, and the lease ids of its acquires and deletions; "bye" once it closed
//	amlpool:{pool}:grant      pub/sub channel: "g|<process id>|<lease set>|<lease id>", a lease granted
//	amlpool:{pool}:health     pub/sub channel: "<process id>|<kind>|<endpoint id>|<n>|<fault>|<version>"
//
// Endpoint ids are amlpool's LimitedEndpoint.ID (a hash of the URL), so no key
// name ever carries an API key or a URL.
type keyspace struct {
	prefix  string // "amlpool:{pool}:"
	members string
	limits  string
	grants  string
	grant   string // channel
	health  string // channel
}

func newKeyspace(pool string) keyspace {
	p := "amlpool:{" + pool + "}:"
	return keyspace{prefix: p, members: p + "members", limits: p + "limits", grants: p + "grants", grant: p + "grant",
		health: p + "health"}
}

// endpointHealth is the key of endpoint id's health hash.
func (k keyspace) endpointHealth(id string) string { return k.prefix + "health:" + id }

func (k keyspace) endpoint(id string) string { return k.prefix + "ep:" + id }

func (k keyspace) want(id string) string { return k.prefix + "want:" + id }

// wantOf is the key of the want set of the endpoint whose lease set is key.
func (k keyspace) wantOf(key string) string { return k.want(strings.TrimPrefix(key, k.prefix+"ep:")) }

// done is the key of the set in which a process's releases, failure
// reports and acquires leave their mark, so that go-redis's sending one
// again after it ran changes nothing: a member per round trip, "<process
// id>.<n>" (an acquire's is its lease id, "<process id>:<n>", which the
// deletion of a lease marks too: removeScript), scored
// by its expiry (ms) × 8 plus what the round trip replied (0 to 7), so that
// expired marks go as others do (ZREMRANGEBYSCORE to now × 8 + 7) and a
// retry reads the reply in its mark's score (ZSCORE). Goodbye replaces the
// marks with one member, "bye": a script of the process that Redis runs
// after the goodbye (sent before it, on another connection) finds it and
// changes nothing.
func (k keyspace) done(proc string) string { return k.prefix + "done:" + proc }

// splitGrant splits a grant, "<lease set>|<lease id>", at its last '|':
// a lease set's name holds the pool's, which may hold one too; lease ids,
// made of process ids and counters, hold none.
func splitGrant(g string) (key, id string, ok bool) {
	i := strings.LastIndexByte(g, '|')
	if i <= 0 || i == len(g)-1 {
		return "", "", false
	}
	return g[:i], g[i+1:], true
}

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
-- mark records in the done set ds that the round trip id replied code (0 to
-- 7), for d ms; marked returns that code if it did already, else nil.
local function mark(ds, id, code, d)
  redis.call('ZREMRANGEBYSCORE', ds, '-inf', now * 8 + 7)
  redis.call('ZADD', ds, (now + d) * 8 + code, id)
  extend(ds, d)
end
local function marked(ds, id)
  local s = redis.call('ZSCORE', ds, id)
  if s then return tonumber(s) % 8 end
  return nil
end
`

// acquireScript grants one lease on the first candidate with room, or, when
// every candidate is full, records that the process wants one.
//
// KEYS: n lease sets, one per candidate endpoint, most preferred first; then
// the n want sets of the same endpoints; then the members set and the
// process's done set (a process that said goodbye takes nothing).
// ARGV: lease id, TTL in ms, n limits, process id, want TTL in ms (0: the
// process will not wait, do not record it), how long its mark stays (ms).
// Reply: {i, c, r, g}: the lease is on KEYS[i] (1-based), which now holds c
// leases; i and c are 0 when every candidate is full. r is the number of
// live replicas (members, and this process if its heartbeat is not in yet),
// so that every acquire keeps the count fresh. g is 1 when the process's
// heartbeat is not in (not yet, or expired, or lost with a restart), else 0.
//
// A lease id already in a set, on any candidate, is a retry of the same
// acquire whose first run's reply was lost (go-redis sends a command again
// when its connection breaks): it is refreshed and granted again, never
// counted twice, and never joined by a second lease on an earlier candidate
// that has room since, which no call would hold. A run leaves the lease id
// in the done set (Limiter.doneTTL), and a run that finds it there but not
// the lease is a copy that Redis runs after the lease ended (released, or
// deleted once the acquire's reply was lost): it takes nothing, or its
// lease, which no call holds, would block a slot for a TTL. So does a first
// run that finds the mark a deletion of its lease id left (removeScript):
// the acquire's reply was given up on before Redis ran it.
var acquireScript = redis.NewScript(scriptNow + `
if redis.call('ZSCORE', KEYS[#KEYS], 'bye') then return {0, 0, 0, 0} end
local n = (#KEYS - 2) / 2
local id, ttl = ARGV[1], tonumber(ARGV[2])
local proc, wttl, dttl = ARGV[3 + n], tonumber(ARGV[4 + n]), tonumber(ARGV[5 + n])
local members = KEYS[#KEYS - 1]
local replicas = redis.call('ZCOUNT', members, now, '+inf')
local beat = redis.call('ZSCORE', members, proc)
local gone = 0
if not beat or tonumber(beat) < now then -- itself, before its first heartbeat
  replicas, gone = replicas + 1, 1
end
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZSCORE', KEYS[i], id) then -- a retry
    redis.call('ZADD', KEYS[i], now + ttl, id)
    extend(KEYS[i], ttl)
    return {i, redis.call('ZCARD', KEYS[i]), replicas, gone}
  end
end
if marked(KEYS[#KEYS], id) then return {0, 0, replicas, gone} end -- its lease has ended
mark(KEYS[#KEYS], id, 0, dttl)
for i = 1, n do
  local k, limit = KEYS[i], tonumber(ARGV[2 + i])
  local c = redis.call('ZCARD', k)
  if c < limit then
    redis.call('ZADD', k, now + ttl, id)
    extend(k, ttl)
    return {i, c + 1, replicas, gone}
  end
end
if wttl > 0 then
  for i = n + 1, 2 * n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    redis.call('ZADD', KEYS[i], now + wttl, proc)
    extend(KEYS[i], wttl)
  end
end
return {0, 0, replicas, gone}
`)

// releaseScript ends one lease and, when another process wants a slot on
// its endpoint, grants the slot to it at once: a new lease, in that
// process's name, announced on the grant channel. So a slot passes from
// one replica to another in one round trip, and only the one it goes to
// wakes. Of the processes that want the endpoint, the one holding the fewest
// of its leases gets it; a releasing process that has calls waiting for the
// endpoint itself (keep) keeps the slot unless another holds fewer leases
// than it does.
//
// KEYS: the lease set, its endpoint's want set, the grants set, the
// process's done set (a process that said goodbye does nothing).
// ARGV: lease id, the endpoint's limit, process id, TTL in ms, keep (0/1),
// grant (0/1: 0 never grants), channel, a suffix unique to this release
// ("<process id>.<n>"), how long its mark stays (ms).
// Reply: {removed, outcome}: removed is 1 if the lease was there (0: it had
// expired or been lost); outcome is 0 for a slot set free, 1 for one kept
// (the same lease id, renewed), 2 for one granted to another process.
//
// The reply is kept in the done set, under the suffix (Limiter.doneTTL),
// and a release that finds it there is a retry of one whose reply was lost
// (go-redis sends a command again when its connection breaks): it returns
// that reply and does nothing more. Run again, it would find its lease gone
// (counted lost) and could grant the slot a second time, under the same id,
// to the process it went to, which would take the grant for the one it has
// heard of already.
var releaseScript = redis.NewScript(scriptNow + `
local k, want, grants, done = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, limit, proc, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local keep, grant = ARGV[5] == '1', ARGV[6] == '1'
if redis.call('ZSCORE', done, 'bye') then return {0, 0} end
local before = marked(done, ARGV[8])
if before then return {math.floor(before / 4), before % 4} end
local function reply(removed, outcome)
  mark(done, ARGV[8], removed * 4 + outcome, tonumber(ARGV[9]))
  return {removed, outcome}
end
local removed = redis.call('ZREM', k, id)
redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
if redis.call('ZCARD', k) >= limit then
  return reply(removed, 0) -- no room: the lease had expired and its slot was taken
end
if grant then
  redis.call('ZREMRANGEBYSCORE', want, '-inf', now)
  local ws = redis.call('ZRANGE', want, 0, -1)
  if #ws > 1 or (#ws == 1 and ws[1] ~= proc) then
    local held = {}
    for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do
      local p = string.match(m, '^([^:]+):')
      if p then held[p] = (held[p] or 0) + 1 end
    end
    local best, fewest = nil, nil
    for _, w in ipairs(ws) do
      local c = held[w] or 0
      if w ~= proc and (fewest == nil or c < fewest) then best, fewest = w, c end
    end
    if not keep or fewest < (held[proc] or 0) then
      local gid = best .. ':g' .. ARGV[8]
      redis.call('ZADD', k, now + ttl, gid)
      extend(k, ttl)
      redis.call('ZREMRANGEBYSCORE', grants, '-inf', now)
      redis.call('ZADD', grants, now + ttl, best .. '|' .. k .. '|' .. gid)
      extend(grants, ttl)
      -- It must say again that it wants more: grants go round.
      redis.call('ZREM', want, best)
      redis.call('PUBLISH', ARGV[7], 'g|' .. best .. '|' .. k .. '|' .. gid)
      return reply(removed, 2)
    end
  end
end
if keep then
  redis.call('ZADD', k, now + ttl, id)
  extend(k, ttl)
  return reply(removed, 1)
end
return reply(removed, 0)
`)

// removeScript deletes leases of the process that no call holds (a lease
// whose release failed, the lease of an acquire whose reply was lost, a
// grant on an endpoint the process no longer uses) and marks each lease
// id in the process's done set, as an acquire's own run does: a run of the
// acquire that Redis makes after the deletion (sent before it, delivered
// late) finds the mark and takes nothing, where it would otherwise take a
// lease that no call holds, which nobody deletes, and which blocks its slot
// for a TTL.
//
// KEYS: the process's done set, then one lease set per lease.
// ARGV: how long the marks stay (ms), then the lease ids, in the order of
// their lease sets.
var removeScript = redis.NewScript(scriptNow + `
local done, dttl = KEYS[1], tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', done, '-inf', now * 8 + 7)
for i = 2, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[i])
  redis.call('ZADD', done, (now + dttl) * 8, ARGV[i])
end
extend(done, dttl)
return 1
`)

// yieldScript tells a process that keeps handing a lease on whether it
// should give one of the endpoint's slots up: whether a process that wants
// the endpoint holds at least two fewer of its leases than it does (one
// fewer than it would after giving one up, as releaseScript grants).
//
// KEYS: the lease set, its want set. ARGV: process id.
// Reply: 1 to give one up, 0 not to.
var yieldScript = redis.NewScript(scriptNow + `
local k, want, proc = KEYS[1], KEYS[2], ARGV[1]
redis.call('ZREMRANGEBYSCORE', want, '-inf', now)
local ws = redis.call('ZRANGE', want, 0, -1)
if #ws == 0 or (#ws == 1 and ws[1] == proc) then return 0 end
local held = {}
for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do
  local p = string.match(m, '^([^:]+):')
  if p then held[p] = (held[p] or 0) + 1 end
end
local mine = held[proc] or 0
for _, w in ipairs(ws) do
  if w ~= proc and (held[w] or 0) < mine - 1 then return 1 end
end
return 0
`)

// tickScript is one process's periodic round trip: heartbeat, limit
// announcement, lease renewal, the leases granted to it whose announcement
// it may have missed, and its endpoints' shared health. After an outage it
// also re-registers every lease still in flight.
//
// KEYS: members set, limits set, grants set, the process's done set (a
// process that said goodbye writes nothing), H health hashes, then the
// lease sets that have leases to renew.
// ARGV: process id, lease TTL ms, member TTL ms, H, the H endpoint ids of
// the health hashes, count L, L limit members, then for each lease set:
// count M, M lease ids.
// Reply: {replicas, {live limit members}, {ids that were missing},
// {"<lease set>|<lease id>" granted to the process}, {health records},
// {leases in each lease set renewed, after the renewal}, g}: g is 1 when
// the process's heartbeat was not in before this one (its first, or
// expired, or lost with a restart), else 0. The grants
// returned stay in the grants set until they expire, and every tick until
// then returns them again: a tick whose reply is lost (go-redis may also
// send it again after it ran) must not lose a grant whose notice the
// process missed too, or its lease would hold a slot, unused, for a TTL.
// The process takes each grant once (Limiter.seen). A health record is
// {endpoint id, version, cool-down ms left, ejection ms left, fault, owner,
// last kind}, for each hash that exists.
//
// A missing lease (expired, or lost with a Redis restart or failover) is
// added back even past the limit: its call is still running, and counting it
// keeps new acquires out until the real number drains.
var tickScript = redis.NewScript(scriptNow + `
local proc, ttl, mttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[4], 'bye') then return {0, {}, {}, {}, {}, {}, 0} end
local beat = redis.call('ZSCORE', KEYS[1], proc)
local gone = 0
if not beat or tonumber(beat) < now then gone = 1 end
redis.call('ZADD', KEYS[1], now + mttl, proc)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
extend(KEYS[1], mttl)
local replicas = redis.call('ZCARD', KEYS[1])

local nh = tonumber(ARGV[4])
local health = {}
for i = 1, nh do
  local h = redis.call('HMGET', KEYS[4 + i], 'v', 'cool', 'ej', 'fault', 'owner', 'last')
  if h[1] then
    health[#health + 1] = {ARGV[4 + i], tonumber(h[1]), math.max(0, (tonumber(h[2]) or 0) - now),
      math.max(0, (tonumber(h[3]) or 0) - now), tonumber(h[4]) or 0, h[5] or '', h[6] or ''}
  end
end

local a = 5 + nh
local nlim = tonumber(ARGV[a])
for i = 1, nlim do
  redis.call('ZADD', KEYS[2], now + mttl, ARGV[a + i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local limits = redis.call('ZRANGE', KEYS[2], 0, -1)
if #limits > 0 then extend(KEYS[2], mttl) end
a = a + nlim + 1

redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local granted = {}
local prefix = proc .. '|'
for _, g in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if string.sub(g, 1, #prefix) == prefix then
    granted[#granted + 1] = string.sub(g, #prefix + 1)
  end
end

local missing, counts = {}, {}
for k = 5 + nh, #KEYS do
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
  counts[#counts + 1] = redis.call('ZCARD', key)
end
return {replicas, limits, missing, granted, health, counts, gone}
`)

// healthScript writes what one process saw of an endpoint's health and
// announces it on the health channel.
//
// KEYS: the endpoint's health hash, the process's done set.
// ARGV: process id, kind (f failed, r recovered, c cool-down, e ejected, a
// readmitted), endpoint id, n (failures for f, ms for c and e), fault (0/1),
// channel, how long the hash outlives its state (ms), a report id unique to
// this report ("<process id>.<n>"), how long its mark stays (ms).
// Reply: {version, ms left of the ejection, owner}; version 0 when nothing
// was written. Failures and recoveries are announced, not written. An
// ejection while another process's is still running is not written (that
// one stands, and its owner probes), except to mark it a fault; the reply
// names its owner.
//
// A failure or recovery is marked in the done set (Limiter.doneTTL), and
// one found marked there is a retry of a report
// whose reply was lost (go-redis sends a command again when its connection
// breaks): it is not announced again, or its failures would count twice
// towards ejection across the fleet. The other kinds write a state, which a
// retry writes again the same, give or take the time between the two runs.
var healthScript = redis.NewScript(scriptNow + `
local k, done = KEYS[1], KEYS[2]
local proc, kind, id, n, fault, ch, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
if kind == 'f' or kind == 'r' then
  if not marked(done, ARGV[8]) then
    redis.call('PUBLISH', ch, proc .. '|' .. kind .. '|' .. id .. '|' .. string.format('%d', n) .. '|0|0')
    mark(done, ARGV[8], 0, tonumber(ARGV[9]))
  end
  return {0, 0, ''}
end
local h = redis.call('HMGET', k, 'v', 'cool', 'ej', 'fault', 'owner')
local cool, ej = tonumber(h[2]) or 0, tonumber(h[3]) or 0
local f, owner = h[4] or '0', h[5] or ''
local out = 0
if kind == 'c' then
  cool = math.max(cool, now + n)
  out = cool - now
elseif kind == 'e' then
  if ej > now and owner ~= '' and owner ~= proc then
    if fault ~= '1' or f == '1' then return {0, ej - now, owner} end
    f = '1'
  else
    ej, owner, f = now + n, proc, fault
  end
  out = ej - now
elseif kind == 'a' then
  ej, owner, f = 0, '', '0'
else
  return redis.error_reply('unknown health kind ' .. kind)
end
-- A version above the last, and above the clock in µs, so that one written
-- after the hash expired is still newer.
local v = math.max((tonumber(h[1]) or 0) + 1, now * 1000)
local vs = string.format('%d', v)
redis.call('HSET', k, 'v', vs, 'cool', string.format('%d', cool), 'ej', string.format('%d', ej),
  'fault', f, 'owner', owner, 'last', kind)
redis.call('PEXPIRE', k, math.max(cool - now, ej - now, 0) + keep)
redis.call('PUBLISH', ch, proc .. '|' .. kind .. '|' .. id .. '|' .. string.format('%d', out) .. '|' .. f .. '|' .. vs)
local left = 0
if ej > now then left = ej - now end
return {v, left, owner}
`)

// goodbyeScript is a closing process's last round trip: it deletes every
// lease of the process, the ones it knows it holds and any it does not (an
// acquire or a tick that ran in Redis with its reply lost, a grant it never
// heard of), its wish for more, its limit announcements and membership, and
// its done set's marks, in whose place it leaves "bye" for a while: an
// acquire, tick or release of the process that Redis runs after this (sent
// before Close gave up on it, on another connection) finds it and writes
// nothing.
//
// KEYS: the lease sets of every endpoint the process knows, and of those it
// has forgotten with a lease deletion still queued, then their want sets,
// then the grants set, the limits set, the members set and the process's
// done set. (Its health writes stay: they are the fleet's, not
// the process's.)
// ARGV: process id, how long "bye" stays (ms), then the process's limit
// members.
// Lease ids are "<process id>:<suffix>", and process ids hold no ':'.
//
// A lease granted to the process goes with its entry in the grants set,
// also on a lease set not among KEYS: one of an endpoint the process has
// forgotten (SetEndpoints removed it, or no call asked for it in three
// ticks) whose grant it has not heard of yet. Such a lease would otherwise
// block its slot for the rest of a TTL after the process has gone. Its
// lease set's name comes from the entry, "<process id>|<lease set>|<lease
// id>", and is used only when it is one of the pool's lease sets: it shares
// the pool's hash tag, so it is in the script's Cluster slot (Redis lets a
// script touch a key it was not given in that slot).
var goodbyeScript = redis.NewScript(scriptNow + `
local prefix = ARGV[1] .. ':'
local n = (#KEYS - 4) / 2
for k = 1, n do
  for _, id in ipairs(redis.call('ZRANGE', KEYS[k], 0, -1)) do
    if string.sub(id, 1, #prefix) == prefix then redis.call('ZREM', KEYS[k], id) end
  end
  redis.call('ZREM', KEYS[n + k], ARGV[1])
end
local grants, gprefix = KEYS[#KEYS - 3], ARGV[1] .. '|'
local sets = string.sub(grants, 1, #grants - string.len('grants')) .. 'ep:'
for _, g in ipairs(redis.call('ZRANGE', grants, 0, -1)) do
  if string.sub(g, 1, #gprefix) == gprefix then
    redis.call('ZREM', grants, g)
    -- "<lease set>|<lease id>": the lease set may be one the process
    -- forgot, or never knew of.
    local rest = string.sub(g, #gprefix + 1)
    local at = string.find(rest, '|[^|]*$')
    if at then
      local k = string.sub(rest, 1, at - 1)
      if string.sub(k, 1, #sets) == sets then redis.call('ZREM', k, string.sub(rest, at + 1)) end
    end
  end
end
for i = 3, #ARGV do redis.call('ZREM', KEYS[#KEYS - 2], ARGV[i]) end
redis.call('ZREM', KEYS[#KEYS - 1], ARGV[1])
redis.call('DEL', KEYS[#KEYS])
local keep = tonumber(ARGV[2])
redis.call('ZADD', KEYS[#KEYS], (now + keep) * 8, 'bye')
redis.call('PEXPIRE', KEYS[#KEYS], keep)
return 1
`)
