// The Lua scripts behind keel::redis::JobQueue and keel::redis::Worker. Private.
//
// Key layout (keel/redis/queue.h): the take, finish and inspect scripts get KEYS[1] = the
// delayed set, KEYS[2] = the dead-letter stream, KEYS[3 ..] = the streams of priority levels
// 0, 1, ...; job hashes are `<ARGV job prefix><id>`, under the same hash tag. Times are Redis's
// (TIME), in milliseconds.
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

// Take. ARGV: 1 group, 2 consumer, 3 how many new jobs to take, 4 the visibility timeout ms
// (min idle of a take-over), 5 job prefix, 6 retention ms, 7 dead-letter max, 8.. triples
// (level, entry id, job id) already delivered to this consumer by a blocking read, to start.
// Moves due delayed jobs into their streams; then, highest level first, takes over entries idle
// past the visibility timeout (XAUTOCLAIM) and reads new ones (XREADGROUP), creating the group
// when missing. Each started job's attempts grow by one; one whose attempts would exceed its
// max (its workers kept dying) goes to the dead letters instead. Reply: {ms until the next
// delayed job is due (-1: none), {{level, entry, id, payload, attempt, max_attempts,
// reclaimed}, ...}}.
inline constexpr char kTakeBody[] = R"lua(
local group, consumer, want = ARGV[1], ARGV[2], tonumber(ARGV[3])
local idle, prefix, retention, dead_max = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local levels = #KEYS - 2
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  local p = tonumber(redis.call('HGET', prefix .. id, 'priority'))
  if p and p >= 0 and p < levels then
    redis.call('XADD', KEYS[3 + p], '*', 'id', id)
    redis.call('HSET', prefix .. id, 'state', 'queued')
  end
  redis.call('ZREM', KEYS[1], id)
end
local out = {}
local function start(level, entry, id, reclaimed)
  local stream = KEYS[3 + level]
  local key = prefix .. id
  local job = redis.call('HMGET', key, 'payload', 'attempts', 'max_attempts')
  if not job[1] then
    ack(stream, group, entry)
    return
  end
  local attempts = tonumber(job[2]) + 1
  local max = tonumber(job[3])
  if attempts > max then
    ack(stream, group, entry)
    bury(key, id, 'attempt ' .. job[2] .. ' was not acknowledged within the visibility timeout',
         retention, dead_max)
    return
  end
  redis.call('HSET', key, 'state', 'running', 'attempts', attempts)
  out[#out + 1] = {level, entry, id, job[1], attempts, max, reclaimed}
end
for i = 8, #ARGV, 3 do start(tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], 0) end
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
          start(level, e[1], e[2][2], 1)
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
        start(level, e[1], e[2][2], 0)
        got = got + 1
      end
    end
  end
end
local next_due = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then next_due = math.max(0, tonumber(first[2]) - now) end
return {next_due, out}
)lua";

// Finish. ARGV: 1 group, 2 consumer, 3 job prefix, 4 retention ms, 5 dead-letter max, 6.. sextuples
// (kind, level, entry id, job id, retry delay ms, error) with kind 'd' done, 'r' retry after the
// delay, 'x' dead, 'h' handed back (made idle past any visibility timeout, so the next take
// claims it, and its attempt uncounted). An entry no longer pending (another worker finished
// it first) changes nothing. Reply: how many entries were still pending.
inline constexpr char kFinishBody[] = R"lua(
local group, consumer, prefix, retention, dead_max = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local n = 0
for i = 6, #ARGV, 6 do
  local kind, stream, entry, id = ARGV[i], KEYS[3 + tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  local key = prefix .. id
  if kind == 'h' then
    local claimed = redis.call('XCLAIM', stream, group, consumer, 0, entry, 'IDLE',
                               '1000000000000', 'JUSTID')
    if #claimed > 0 then
      redis.call('HINCRBY', key, 'attempts', -1)
      redis.call('HSET', key, 'state', 'queued')
      n = n + 1
    end
  elseif ack(stream, group, entry) == 1 then
    n = n + 1
    if kind == 'd' then
      redis.call('HSET', key, 'state', 'done')
      redis.call('PEXPIRE', key, retention)
    elseif kind == 'r' then
      redis.call('HSET', key, 'state', 'failed', 'error', ARGV[i + 5])
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 4]), id)
    else
      bury(key, id, ARGV[i + 5], retention, dead_max)
    end
  end
end
return n
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
