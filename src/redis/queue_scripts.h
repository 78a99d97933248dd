// The Lua scripts behind keel::redis::JobQueue and keel::redis::Worker. Private.
//
// Key layout (keel/redis/queue.h): the claim, start, finish, heartbeat and inspect scripts get
// KEYS[1] = the delayed set, KEYS[2] = the dead-letter stream, KEYS[3 ..] = the streams of
// priority levels 0, 1, ...; the scripts that touch job hashes get them after those, one per
// job. Every key a script touches is one of its KEYS (Redis Cluster's rule; the key audit test
// checks it against a real Redis), all under the queue's hash tag. Times are Redis's (TIME), in
// milliseconds.
#pragma once

namespace keel::redis::internal {

// Shared by the scripts that need it (prepended to their bodies).
inline constexpr char kQueuePrelude[] = R"lua(
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Acknowledges and deletes a stream entry; 1 when it was still pending (no one finished it).
local function ack(stream, group, entry)
  local n = redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  return n
end
-- True while `consumer` holds stream entry `entry` (it is pending and delivered to `consumer`)
-- and the job at `key` is still at attempt `attempt` (a string): false once another consumer
-- took the entry over, it was acknowledged or deleted, or the job was started again (a take-over
-- by this same consumer counts a new attempt).
local function owns(stream, group, consumer, entry, key, attempt)
  local p = redis.pcall('XPENDING', stream, group, entry, entry, 1)
  if p.err or not p[1] or p[1][2] ~= consumer then return false end
  return redis.call('HGET', key, 'attempts') == attempt
end
-- Moves job `id` to the dead letters with its last error.
local function bury(key, id, err, retention, dead_max)
  local job = redis.call('HMGET', key, 'payload', 'attempts')
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', dead_max, '*', 'id', id, 'payload', job[1] or '',
             'error', err, 'attempts', job[2] or '0')
  redis.call('HSET', key, 'state', 'dead', 'error', err)
  redis.call('PEXPIRE', key, retention)
end
)lua";

// Enqueue. KEYS: 1 the level's stream, 2 the delayed set, 3 the job hash, 4 the idempotency key
// (the job hash again when there is none). ARGV: 1 id, 2 payload, 3 max_attempts, 4 priority,
// 5 delay ms, 6 idempotency window ms (0: no key). Reply: {id, 1} when added, {existing id, 0}
// for a key already used.
inline constexpr char kEnqueueBody[] = R"lua(
if ARGV[6] ~= '0' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {existing, 0} end
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[6])
end
local now = now_ms()
local delay = tonumber(ARGV[5])
local state = 'queued'
if delay > 0 then state = 'delayed' end
redis.call('HSET', KEYS[3], 'payload', ARGV[2], 'state', state, 'attempts', 0,
           'max_attempts', ARGV[3], 'priority', ARGV[4], 'enqueued_ms', now)
if delay > 0 then
  redis.call('ZADD', KEYS[2], now + delay, ARGV[1])
else
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[1])
end
return {ARGV[1], 1}
)lua";

// Taking jobs is two scripts, because a script may touch only the keys it is given (KEYS, as
// Redis Cluster requires) and which job hashes a take needs is known only once the streams have
// answered: claim (streams and the delayed set), then start (those jobs' hashes).
//
// Claim. KEYS: 1 delayed, 2 dead, 3 .. the streams. ARGV: 1 group, 2 consumer, 3 how many
// entries to take, 4 the visibility timeout ms (min idle of a take-over). Highest level first,
// takes over entries idle past the visibility timeout (XAUTOCLAIM) and reads new ones
// (XREADGROUP), creating the group when missing; they are then delivered to this consumer, for
// the start script. Also lists the due delayed jobs (at most 1 000), for the start script to
// move into their streams. Reply: {ms until the next delayed job is due (0 when some are due,
// -1: none), {due job id, ...}, {{level, entry, id, reclaimed}, ...}}.
inline constexpr char kClaimBody[] = R"lua(
local group, consumer, want, idle = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local levels = #KEYS - 2
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
local out = {}
local got = 0
for level = levels - 1, 0, -1 do
  local stream = KEYS[3 + level]
  if got < want then
    local claimed = redis.pcall('XAUTOCLAIM', stream, group, consumer, idle, '0-0', 'COUNT',
                                want - got)
    if claimed.err then
      if not string.find(claimed.err, 'NOGROUP') then return redis.error_reply(claimed.err) end
      redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    else
      for _, e in ipairs(claimed[2]) do
        if e[2] then
          out[#out + 1] = {level, e[1], e[2][2], 1}
          got = got + 1
        end
      end
    end
  end
  if got < want then
    local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want - got,
                            'STREAMS', stream, '>')
    if read then
      for _, e in ipairs(read[1][2]) do
        out[#out + 1] = {level, e[1], e[2][2], 0}
        got = got + 1
      end
    end
  end
end
local next_due = -1
if #due > 0 then
  next_due = 0
else
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then next_due = math.max(0, tonumber(first[2]) - now) end
end
return {next_due, due, out}
)lua";

// Start. KEYS: 1 delayed, 2 dead, 3 .. 2 + levels the streams, then the hash of each due job,
// then the hash of each entry to start, in order. ARGV: 1 group, 2 consumer, 3 levels,
// 4 retention ms, 5 dead-letter max, 6 how many due jobs n, 7 .. 6 + n their ids, then
// quadruples (level, entry id, job id, reclaimed) of entries delivered to this consumer (by a
// claim or a blocking read). Moves the due jobs still due into their streams. Starts each entry
// this consumer still holds: resets its idle time (XCLAIM JUSTID: the claim's clock restarts
// now, and no delivery is counted) and counts its attempt; a job whose attempts would exceed
// its max (its workers kept dying) goes to the dead letters instead, and an entry whose job
// hash is gone is acknowledged. Reply: {{level, entry, id, payload, attempt, max_attempts,
// reclaimed}, ...}.
inline constexpr char kStartBody[] = R"lua(
local group, consumer, levels = ARGV[1], ARGV[2], tonumber(ARGV[3])
local retention, dead_max, ndue = ARGV[4], ARGV[5], tonumber(ARGV[6])
local now = now_ms()
for d = 1, ndue do
  local id, key = ARGV[6 + d], KEYS[2 + levels + d]
  -- Still due: another worker may have moved it already (and it may be scheduled again since).
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    local p = tonumber(redis.call('HGET', key, 'priority'))
    if p and p >= 0 and p < levels then
      redis.call('XADD', KEYS[3 + p], '*', 'id', id)
      redis.call('HSET', key, 'state', 'queued')
    end
    redis.call('ZREM', KEYS[1], id)
  end
end
local out = {}
local j = 2 + levels + ndue
for i = 7 + ndue, #ARGV, 4 do
  j = j + 1
  local level, entry, id, reclaimed = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local stream, key = KEYS[3 + level], KEYS[j]
  local p = redis.pcall('XPENDING', stream, group, entry, entry, 1)
  if not p.err and p[1] and p[1][2] == consumer then
    local job = redis.call('HMGET', key, 'payload', 'attempts', 'max_attempts')
    if not job[1] then
      ack(stream, group, entry)
    else
      local attempts = tonumber(job[2]) + 1
      local max = tonumber(job[3])
      if attempts > max then
        ack(stream, group, entry)
        bury(key, id, 'attempt ' .. job[2] .. ' was not acknowledged within the visibility timeout',
             retention, dead_max)
      else
        redis.call('XCLAIM', stream, group, consumer, 0, entry, 'JUSTID')
        redis.call('HSET', key, 'state', 'running', 'attempts', attempts)
        out[#out + 1] = {level, entry, id, job[1], attempts, max, tonumber(reclaimed)}
      end
    end
  end
end
return out
)lua";

// Finish. KEYS: 1 delayed, 2 dead, 3 .. 2 + levels the streams, then the job hash of each
// completion, in order. ARGV: 1 group, 2 consumer, 3 levels, 4 retention ms, 5 dead-letter max,
// 6.. septuples (kind, level, entry id, job id, attempt, retry delay ms, error) with kind 'd'
// done, 'r' retry after the delay, 'x' dead, 'h' handed back (made idle past any visibility
// timeout, so the next take claims it, and its attempt uncounted). A completion applies only
// while this consumer still holds the entry for that attempt (see owns): one whose job another
// worker took over (it runs there now, or finished it), or that was started again as a later
// attempt, changes nothing, so a late worker never acknowledges, retries, buries or hands back
// the new owner's attempt. Reply: {1 applied or 0 ignored, per completion}.
inline constexpr char kFinishBody[] = R"lua(
local group, consumer, levels = ARGV[1], ARGV[2], tonumber(ARGV[3])
local retention, dead_max = ARGV[4], ARGV[5]
local now = now_ms()
local out = {}
local j = 0
for i = 6, #ARGV, 7 do
  j = j + 1
  local kind, stream, entry, id = ARGV[i], KEYS[3 + tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  local key = KEYS[2 + levels + j]
  out[j] = 0
  if owns(stream, group, consumer, entry, key, ARGV[i + 4]) then
    out[j] = 1
    if kind == 'h' then
      redis.call('XCLAIM', stream, group, consumer, 0, entry, 'IDLE', '1000000000000', 'JUSTID')
      redis.call('HINCRBY', key, 'attempts', -1)
      redis.call('HSET', key, 'state', 'queued')
    else
      ack(stream, group, entry)
      if kind == 'd' then
        redis.call('HSET', key, 'state', 'done')
        redis.call('PEXPIRE', key, retention)
      elseif kind == 'r' then
        redis.call('HSET', key, 'state', 'failed', 'error', ARGV[i + 6])
        redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 5]), id)
      else
        bury(key, id, ARGV[i + 6], retention, dead_max)
      end
    end
  end
end
return out
)lua";

// Heartbeat. KEYS: 1 delayed, 2 dead, 3 .. 2 + levels the streams, then the job hash of each
// job, in order. ARGV: 1 group, 2 consumer, 3 levels, 4.. triples (level, entry id, attempt).
// For each job this consumer still holds for that attempt (see owns), resets its entry's idle
// time to 0 (XCLAIM to itself with JUSTID, which does not count a delivery), so no take-over
// claims it for another visibility timeout. Reply: {1 extended or 0 no longer held, per job}.
inline constexpr char kHeartbeatBody[] = R"lua(
local group, consumer, levels = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
local j = 0
for i = 4, #ARGV, 3 do
  j = j + 1
  local stream, entry = KEYS[3 + tonumber(ARGV[i])], ARGV[i + 1]
  out[j] = 0
  if owns(stream, group, consumer, entry, KEYS[2 + levels + j], ARGV[i + 2]) then
    redis.call('XCLAIM', stream, group, consumer, 0, entry, 'JUSTID')
    out[j] = 1
  end
end
return out
)lua";

// Inspect. ARGV: 1 group. Reply: {depth, pending, delayed, dead, age of the oldest stream entry
// in ms (-1: none)}.
inline constexpr char kInspectBody[] = R"lua(
local now = now_ms()
local depth, pending, oldest = 0, 0, -1
for i = 3, #KEYS do
  local len = redis.call('XLEN', KEYS[i])
  local p = 0
  if len > 0 then
    local s = redis.pcall('XPENDING', KEYS[i], ARGV[1])
    if not s.err then p = s[1] end
    local first = redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', 1)
    if first[1] then
      local ms = tonumber(string.match(first[1][1], '^(%d+)'))
      if oldest < 0 or ms < oldest then oldest = ms end
    end
  end
  depth = depth + len - p
  pending = pending + p
end
local age = -1
if oldest >= 0 then age = math.max(0, now - oldest) end
return {depth, pending, redis.call('ZCARD', KEYS[1]), redis.call('XLEN', KEYS[2]), age}
)lua";

// Progress. KEYS[1] the job hash; ARGV[1] the note. Reply: 1 when recorded, 0 when the job's
// record is gone.
inline constexpr char kProgressScript[] = R"lua(
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
  return 1
end
return 0
)lua";

}  // namespace keel::redis::internal
