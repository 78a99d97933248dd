// The Lua scripts behind keel::redis::RateLimiter and keel::redis::ConcurrencyLimiter. Private.
//
// Conventions shared by every rate-limit script:
//   ARGV[1] quantity n (>= 0; 0 peeks and writes nothing)
//   ARGV[2] the time in microseconds, or "" to read the server's clock with TIME (production)
//   ARGV[3..] the algorithm's parameters, integers in microseconds or counts
// and every one replies {allowed (0/1), limit, remaining, reset_after_us, retry_after_us} with
// retry_after_us = -1 for "never". Times are integer microseconds held in Lua numbers (doubles):
// exact below 2^53, i.e. for any TIME value until the year 2255 and any product the options allow
// (RateLimiter::Create bounds them). Numbers go back to Redis through string.format('%d'), never
// through Lua's default formatting (which would print 1.7e+15).
//
// Expiry: keys expire (PEXPIRE, real server time) when their state is the same as a fresh one.
// With an explicit time (tests replaying scenarios), expiries are at least 10 s of real time,
// because the replayed clock and the real one are unrelated: a key must not vanish in real time
// while the replayed clock still needs it. A key that outlives its use is harmless: every script
// reads stale state as expired (TAT in the past, an old window, log entries out of the window).
#pragma once

namespace keel::redis::internal {

// The helpers every rate-limit script starts with.
#define KEEL_RL_PRELUDE                                       \
  "local n = tonumber(ARGV[1])\n"                             \
  "local now\n"                                               \
  "local min_ms = 1\n"                                        \
  "if ARGV[2] == '' then\n"                                   \
  "  local t = redis.call('TIME')\n"                          \
  "  now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"       \
  "else\n"                                                    \
  "  now = tonumber(ARGV[2])\n"                               \
  "  min_ms = 10000\n"                                        \
  "end\n"                                                     \
  "local function fmt(x) return string.format('%d', x) end\n" \
  "local function ms(us)\n"                                   \
  "  local m = math.ceil(us / 1000)\n"                        \
  "  if m < min_ms then m = min_ms end\n"                     \
  "  return fmt(m)\n"                                         \
  "end\n"

// GCRA (redis-cell's CL.THROTTLE). KEYS[1] = TAT. ARGV[3] = T (us), ARGV[4] = limit.
inline constexpr char kGcraScript[] = KEEL_RL_PRELUDE R"lua(
local T = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local tau = T * limit
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local allowed, retry, ttl = 0, 0, 0
if n > limit then
  retry = -1
  ttl = tat - now
else
  local nxt = tat + n * T
  local allow_at = nxt - tau
  if allow_at > now then
    retry = allow_at - now
    ttl = tat - now
  else
    allowed = 1
    ttl = nxt - now
    if n > 0 then redis.call('SET', KEYS[1], fmt(nxt), 'PX', ms(ttl)) end
  end
end
local spare = tau - ttl
local remaining = 0
if spare > 0 then remaining = math.floor(spare / T) end
return {allowed, limit, remaining, ttl, retry}
)lua";

// Token bucket. KEYS[1] = the time the bucket was empty. ARGV[3] = T (us), ARGV[4] = burst.
inline constexpr char kTokenBucketScript[] = KEEL_RL_PRELUDE R"lua(
local T = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local full = T * burst
local start = now - full
local stored = redis.call('GET', KEYS[1])
if stored then
  local e = tonumber(stored)
  if e > start then start = e end
end
local allowed, remaining, reset, retry = 0, 0, 0, 0
local function fill(e)
  remaining = math.floor((now - e) / T)
  if remaining < 0 then remaining = 0 end
  reset = e + full - now
  if reset < 0 then reset = 0 end
end
if n > burst then
  fill(start)
  retry = -1
else
  local nxt = start + n * T
  if nxt > now then
    fill(start)
    retry = nxt - now
  else
    allowed = 1
    fill(nxt)
    if n > 0 then redis.call('SET', KEYS[1], fmt(nxt), 'PX', ms(nxt + full - now)) end
  end
end
return {allowed, burst, remaining, reset, retry}
)lua";

// Fixed window. KEYS[1] = hash {s = window start, c = count}. ARGV[3] = window (us),
// ARGV[4] = limit, ARGV[5] = 1 for windows aligned to the epoch, 0 for windows opened by the
// first request.
inline constexpr char kFixedWindowScript[] = KEEL_RL_PRELUDE R"lua(
local W = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local st = redis.call('HMGET', KEYS[1], 's', 'c')
local ws = tonumber(st[1])
local wc = tonumber(st[2]) or 0
local start, count
if ARGV[5] == '1' then
  start = now - (now % W)
  if ws == start then count = wc else count = 0 end
else
  if ws and now >= ws and now - ws < W then
    start = ws
    count = wc
  else
    start = now
    count = 0
  end
end
local to_end = start + W - now
local allowed, retry = 0, 0
if n > limit or count + n > limit then
  if n > limit then retry = -1 else retry = to_end end
else
  allowed = 1
  count = count + n
  if n > 0 then
    redis.call('HSET', KEYS[1], 's', fmt(start), 'c', fmt(count))
    redis.call('PEXPIRE', KEYS[1], ms(to_end))
  end
end
local reset = 0
if count > 0 then reset = to_end end
return {allowed, limit, limit - count, reset, retry}
)lua";

// Sliding window log. KEYS[1] = sorted set of admissions, member "<time>:<quantity>" scored by
// the time; KEYS[2] = the sum of their quantities. ARGV[3] = window (us), ARGV[4] = limit.
// An admission at t counts during [t, t + window); admissions at the same instant share one entry
// so the set never holds more than `limit` entries.
inline constexpr char kSlidingLogScript[] = KEEL_RL_PRELUDE R"lua(
local W = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local counted = tonumber(redis.call('GET', KEYS[2]) or 0)
local function qty(member) return tonumber(string.match(member, ':(%d+)$')) end
local changed = false
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(now - W))
if #expired > 0 then
  changed = true
  for _, m in ipairs(expired) do counted = counted - qty(m) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now - W))
end
local function reset()
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if #newest == 0 then return 0 end
  return tonumber(newest[2]) + W - now
end
local allowed, retry = 0, 0
if n > limit then
  retry = -1
elseif counted + n > limit then
  local to_free = counted + n - limit
  local at = now
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    to_free = to_free - qty(entries[i])
    at = tonumber(entries[i + 1]) + W
    if to_free <= 0 then break end
  end
  retry = at - now
else
  allowed = 1
  if n > 0 then
    local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    local q = n
    if #newest > 0 and tonumber(newest[2]) == now then
      q = q + qty(newest[1])
      redis.call('ZREM', KEYS[1], newest[1])
    end
    redis.call('ZADD', KEYS[1], fmt(now), fmt(now) .. ':' .. fmt(q))
    counted = counted + n
    changed = true
  end
end
local r = reset()
-- Denials and peeks that expired nothing write nothing (no replication traffic during an attack).
if changed then
  if counted > 0 then
    redis.call('SET', KEYS[2], fmt(counted), 'PX', ms(r))
    redis.call('PEXPIRE', KEYS[1], ms(r))
  else
    redis.call('DEL', KEYS[1], KEYS[2])
  end
end
return {allowed, limit, limit - counted, r, retry}
)lua";

// Sliding window counter (Cloudflare). KEYS[1] = hash {s = current window start, c = its count,
// p = the previous window's count}. ARGV[3] = window (us), ARGV[4] = limit.
inline constexpr char kSlidingCounterScript[] = KEEL_RL_PRELUDE R"lua(
local W = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local start = now - (now % W)
local st = redis.call('HMGET', KEYS[1], 's', 'c', 'p')
local ws = tonumber(st[1])
local current, previous = 0, 0
if ws == start then
  current = tonumber(st[2]) or 0
  previous = tonumber(st[3]) or 0
elseif ws and ws == start - W then
  previous = tonumber(st[2]) or 0
end
local left = start + W - now
local capacity = limit * W
local function scaled(cur) return previous * left + cur * W end
local function remaining_after(cur)
  local spare = capacity - scaled(cur)
  if spare <= 0 then return 0 end
  return math.floor(spare / W)
end
local function reset(cur)
  if cur > 0 then return start + 2 * W - now end
  if previous > 0 then return left end
  return 0
end
if n > limit or scaled(current + n) > capacity then
  local retry
  if n > limit then
    retry = -1
  elseif limit - current - n >= 0 then
    retry = left - math.floor((limit - current - n) * W / previous)
  else
    local max_left = math.floor((limit - n) * W / current)
    if max_left > W then max_left = W end
    retry = left + (W - max_left)
  end
  return {0, limit, remaining_after(current), reset(current), retry}
end
current = current + n
if n > 0 then
  redis.call('HSET', KEYS[1], 's', fmt(start), 'c', fmt(current), 'p', fmt(previous))
  redis.call('PEXPIRE', KEYS[1], ms(reset(current)))
end
return {1, limit, remaining_after(current), reset(current), 0}
)lua";

// Concurrency: acquire. KEYS[1] = sorted set of permit ids scored by lease expiry (us).
// ARGV[1] = permit id, ARGV[2] = now or "", ARGV[3] = lease (us), ARGV[4] = max.
// Replies {acquired (0/1), held after the call, us until the oldest lease expires}.
inline constexpr char kConcurrencyAcquireScript[] = R"lua(
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local function fmt(x) return string.format('%d', x) end
local lease = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
-- Permits whose lease ran out belong to holders that died (or stalled): reclaim them.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
local held = redis.call('ZCARD', KEYS[1])
if held >= max then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, held, tonumber(oldest[2]) - now}
end
redis.call('ZADD', KEYS[1], fmt(now + lease), ARGV[1])
redis.call('PEXPIRE', KEYS[1], fmt(math.ceil(lease / 1000)))
return {1, held + 1, 0}
)lua";

// Concurrency: renew a lease. KEYS[1] as above; ARGV[1] = permit id, ARGV[2] = now or "",
// ARGV[3] = lease (us). Replies 1 if the permit was still held (its lease now ends at now +
// lease), 0 if it had been reclaimed.
inline constexpr char kConcurrencyRenewScript[] = R"lua(
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local lease = tonumber(ARGV[3])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', string.format('%d', now + lease), ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
local want = math.ceil(lease / 1000)
if ttl < want then redis.call('PEXPIRE', KEYS[1], string.format('%d', want)) end
return 1
)lua";

#undef KEEL_RL_PRELUDE

}  // namespace keel::redis::internal
