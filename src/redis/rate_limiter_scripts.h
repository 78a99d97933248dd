// The Lua scripts behind keel::redis::RateLimiter and keel::redis::ConcurrencyLimiter. Private.
//
// Conventions shared by every rate-limit script:
//   ARGV[1] quantity n (>= 0; 0 peeks and changes no counter)
//   ARGV[2] the time in microseconds, or "" to read the server's clock with TIME (production)
//   ARGV[3] what the call may write: "" consume; "d" a dry run (decide, write nothing, start no
//           block); or a time in microseconds: consume only if the script runs at or before it,
//           else behave as a dry run (a call whose caller already gave up charges nothing)
//   then the parameters of each limit (integers in microseconds or counts), and the penalty
//   block_for in microseconds (see each script for where). KEYS holds the state of each limit in
//   order, then the penalty block's key when there is one.
// Several limits on one key are all-or-none: every limit is evaluated first, and the request is
// written to all of them only if every one admits it. A denial that can ever succeed (no limit
// answers "never") starts the block: the block key holds its end (us) and expires with it; while
// it runs, the script only peeks (n = 0) and replies with the time left in the block.
//
// Times are integer microseconds held in Lua numbers (doubles): exact below 2^53, i.e. for any
// TIME value until the year 2255 and any product the options allow (RateLimiter::Create bounds
// them). Numbers go back to Redis as strings through string.format('%d'): Lua's own formatting
// would print 1.7e+15, and Redis 7.0 formats a Lua number argument with "%.17g", which costs
// more than the whole of string.format.
//
// Expiry: keys expire (PX, real server time) when their state is the same as a fresh one. With
// an explicit time (tests replaying scenarios), expiries are at least 10 s of real time, because
// the replayed clock and the real one are unrelated: a key must not vanish in real time while the
// replayed clock still needs it. A key that outlives its use is harmless: every script reads
// stale state as expired (TAT in the past, an old window, log entries out of the window).
#pragma once

namespace keel::redis::internal {

// GCRA (redis-cell's CL.THROTTLE), one limit and no block: the hot path, lean on purpose, since
// every redis.call, argument, Lua string and reply element shows in the cost of a call
// (docs/redis-rate-limiting.md has the figures). It is generated per limiter with T and tau =
// T * limit (us) written into the source in place of $T and $TAU, so a call carries only
// ARGV[1] = n, ARGV[2] = what it may write (as ARGV[3] above), and ARGV[3] = the time when a
// test passes one. KEYS[1] = the TAT.
// Reply: v = ttl >= 0 if admitted (ttl = new TAT - now), else -1 - ttl (ttl = TAT - now); the
// client derives the Decision from v, n, T and tau (DecodeGcra in rate_limiter_plan.cc).
inline constexpr char kGcraOneLimitTemplate[] = R"lua(
local n = tonumber(ARGV[1])
local now
local min_ms = 1
if #ARGV == 2 then
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
else
  now = tonumber(ARGV[3])
  min_ms = 10000
end
local ctl = ARGV[2]
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local nxt = tat + n * $T
if nxt - $TAU > now then return -1 - (tat - now) end
if n > 0 and (ctl == '' or (ctl ~= 'd' and now <= tonumber(ctl))) then
  local ms = math.ceil((nxt - now) / 1000)
  if ms < min_ms then ms = min_ms end
  redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', string.format('%d', ms))
end
return nxt - now
)lua";

// GCRA with several limits and/or a penalty block. KEYS[i] = limit i's TAT. ARGV[4 + 2(i-1)] = T
// (us), ARGV[5 + 2(i-1)] = tau (us); one more ARGV (an even count) is block_for (us) with
// KEYS[K + 1] the block. All state is read with one MGET. Reply: an array of v per limit (as
// above, each limit evaluated as if it alone decided), or while a block runs the K peeks (n = 0)
// and the time left in the block (K + 1 values).
inline constexpr char kGcraScript[] = R"lua(
local n = tonumber(ARGV[1])
local now
local min_ms = 1
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
else
  now = tonumber(ARGV[2])
  min_ms = 10000
end
local function px(us)
  local ms = math.ceil(us / 1000)
  if ms < min_ms then ms = min_ms end
  return string.format('%d', ms)
end
local ctl = ARGV[3]
local write = ctl == '' or (ctl ~= 'd' and now <= tonumber(ctl))
local k = math.floor((#ARGV - 3) / 2)
local block = #ARGV % 2 == 0
local tats = redis.call('MGET', unpack(KEYS))
local out = {}
for i = 1, k do
  local tat = tonumber(tats[i]) or now
  if tat < now then tat = now end
  tats[i] = tat
end
if block then
  local until_ = tonumber(tats[k + 1])
  if until_ and until_ > now then
    for i = 1, k do out[i] = tats[i] - now end
    out[k + 1] = until_ - now
    return out
  end
end
local all, never = true, false
for i = 1, k do
  local tau = tonumber(ARGV[2 * i + 3])
  local step = n * tonumber(ARGV[2 * i + 2])
  local nxt = tats[i] + step
  if step > tau then never = true end
  if nxt - tau > now then
    all = false
    out[i] = -1 - (tats[i] - now)
  else
    out[i] = nxt - now
    tats[i] = nxt
  end
end
if not write then return out end
if all then
  if n > 0 then
    for i = 1, k do
      redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', px(tats[i] - now))
    end
  end
elseif block and not never then
  local bf = tonumber(ARGV[#ARGV])
  redis.call('SET', KEYS[k + 1], string.format('%d', now + bf), 'PX', px(bf))
end
return out
)lua";

// The other algorithms share a frame: the prelude reads n and the time; the algorithm defines NP
// (parameters per limit, from ARGV[4] on; one more ARGV is block_for (us) when there is a block,
// told apart by the count), NK (keys per
// limit) and check(i, n, apply), which evaluates limit i as if it alone decided and returns allowed
// (0/1), limit, remaining, reset_after_us, retry_after_us (-1: never), optionally one more value
// of its own (the sliding window counter's estimate), and with `apply` writes an admission
// (n > 0); the epilogue applies the all-or-none rule (every limit is checked, then applied:
// evaluating again under the script's atomicity gives the same answers) and the block.
// Reply: the values of each limit (5, or 6 with the extra value), or while a block runs those of
// limit 1 peeking then the time left in the block (6 or 7 integers).
#define KEEL_RL_PRELUDE                                                \
  "local n = tonumber(ARGV[1])\n"                                      \
  "local now\n"                                                        \
  "local min_ms = 1\n"                                                 \
  "if ARGV[2] == '' then\n"                                            \
  "  local t = redis.call('TIME')\n"                                   \
  "  now = t[1] * 1000000 + t[2]\n"                                    \
  "else\n"                                                             \
  "  now = tonumber(ARGV[2])\n"                                        \
  "  min_ms = 10000\n"                                                 \
  "end\n"                                                              \
  "local ctl = ARGV[3]\n"                                              \
  "local write = ctl == '' or (ctl ~= 'd' and now <= tonumber(ctl))\n" \
  "local function fmt(x) return string.format('%d', x) end\n"          \
  "local function ms(us)\n"                                            \
  "  local m = math.ceil(us / 1000)\n"                                 \
  "  if m < min_ms then m = min_ms end\n"                              \
  "  return fmt(m)\n"                                                  \
  "end\n"

#define KEEL_RL_EPILOGUE                                                             \
  "local k = math.floor((#ARGV - 3) / NP)\n"                                         \
  "local block_for = 0\n"                                                            \
  "if (#ARGV - 3) % NP == 1 then block_for = tonumber(ARGV[#ARGV]) end\n"            \
  "local block_key = KEYS[k * NK + 1]\n"                                             \
  "if k == 1 and block_for == 0 then return {check(1, n, write)} end\n"              \
  "if block_for > 0 then\n"                                                          \
  "  local until_ = tonumber(redis.call('GET', block_key))\n"                        \
  "  if until_ and until_ > now then\n"                                              \
  "    local a, l, r, re, rt, ex = check(1, 0, false)\n"                             \
  "    if ex then return {a, l, r, re, rt, ex, until_ - now} end\n"                  \
  "    return {a, l, r, re, rt, until_ - now}\n"                                     \
  "  end\n"                                                                          \
  "end\n"                                                                            \
  "local out = {}\n"                                                                 \
  "local all, never = true, false\n"                                                 \
  "for i = 1, k do\n"                                                                \
  "  local a, l, r, re, rt, ex = check(i, n, false)\n"                               \
  "  if a == 0 then\n"                                                               \
  "    all = false\n"                                                                \
  "    if rt < 0 then never = true end\n"                                            \
  "  end\n"                                                                          \
  "  local j = #out\n"                                                               \
  "  out[j + 1], out[j + 2], out[j + 3], out[j + 4], out[j + 5] = a, l, r, re, rt\n" \
  "  if ex then out[j + 6] = ex end\n"                                               \
  "end\n"                                                                            \
  "if not write then return out end\n"                                               \
  "if all then\n"                                                                    \
  "  if n > 0 then\n"                                                                \
  "    for i = 1, k do check(i, n, true) end\n"                                      \
  "  end\n"                                                                          \
  "elseif block_for > 0 and not never then\n"                                        \
  "  redis.call('SET', block_key, fmt(now + block_for), 'PX', ms(block_for))\n"      \
  "end\n"                                                                            \
  "return out\n"

// Token bucket. KEYS = the time each bucket was empty. Per limit: T (us), burst.
inline constexpr char kTokenBucketScript[] = KEEL_RL_PRELUDE R"lua(
local NP, NK = 2, 1
local function fill(t, T, full)
  local remaining = math.floor((now - t) / T)
  if remaining < 0 then remaining = 0 end
  local reset = t + full - now
  if reset < 0 then reset = 0 end
  return remaining, reset
end
local function check(i, n, apply)
  local T = tonumber(ARGV[2 + 2 * i])
  local burst = tonumber(ARGV[3 + 2 * i])
  local full = T * burst
  local start = now - full
  local e = tonumber(redis.call('GET', KEYS[i]))
  if e and e > start then start = e end
  if n > burst then
    local remaining, reset = fill(start, T, full)
    return 0, burst, remaining, reset, -1
  end
  local nxt = start + n * T
  if nxt > now then
    local remaining, reset = fill(start, T, full)
    return 0, burst, remaining, reset, nxt - now
  end
  if apply and n > 0 then redis.call('SET', KEYS[i], fmt(nxt), 'PX', ms(nxt + full - now)) end
  local remaining, reset = fill(nxt, T, full)
  return 1, burst, remaining, reset, 0
end
)lua" KEEL_RL_EPILOGUE;

// Fixed window. KEYS = hash {s = window start, c = count} per limit. Per limit: window (us),
// limit, 1 for windows aligned to the epoch or 0 for windows opened by the first request.
inline constexpr char kFixedWindowScript[] = KEEL_RL_PRELUDE R"lua(
local NP, NK = 3, 1
local function check(i, n, apply)
  local key = KEYS[i]
  local W = tonumber(ARGV[1 + 3 * i])
  local limit = tonumber(ARGV[2 + 3 * i])
  local st = redis.call('HMGET', key, 's', 'c')
  local ws = tonumber(st[1])
  local wc = tonumber(st[2]) or 0
  local start, count
  if ARGV[3 + 3 * i] == '1' then
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
  if n > limit or count + n > limit then
    local reset = 0
    if count > 0 then reset = to_end end
    if n > limit then return 0, limit, limit - count, reset, -1 end
    return 0, limit, limit - count, reset, to_end
  end
  count = count + n
  if apply and n > 0 then
    redis.call('HSET', key, 's', fmt(start), 'c', fmt(count))
    redis.call('PEXPIRE', key, ms(to_end))
  end
  local reset = 0
  if count > 0 then reset = to_end end
  return 1, limit, limit - count, reset, 0
end
)lua" KEEL_RL_EPILOGUE;

// Sliding window log. Per limit two keys: a sorted set of admissions, member "<time>:<quantity>"
// scored by the time, and the sum of their quantities. Per limit: window (us), limit.
// An admission at t counts during [t, t + window); admissions at the same instant share one entry
// so the set never holds more than `limit` entries. Expired entries are dropped as they are seen,
// whatever the decision (the counters stay those of the window).
inline constexpr char kSlidingLogScript[] = KEEL_RL_PRELUDE R"lua(
local NP, NK = 2, 2
local function qty(member) return tonumber(string.match(member, ':(%d+)$')) end
local function check(i, n, apply)
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  local W = tonumber(ARGV[2 + 2 * i])
  local limit = tonumber(ARGV[3 + 2 * i])
  local counted = tonumber(redis.call('GET', sum) or 0)
  local function reset()
    local newest = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
    if #newest == 0 then return 0 end
    return tonumber(newest[2]) + W - now
  end
  -- Writes the count and the expiry after a change (the set's newest entry decides the expiry).
  local function store(c)
    if c > 0 then
      local r = reset()
      redis.call('SET', sum, fmt(c), 'PX', ms(r))
      redis.call('PEXPIRE', log, ms(r))
    else
      redis.call('DEL', log, sum)
    end
  end
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', fmt(now - W))
  if #expired > 0 then
    for _, m in ipairs(expired) do counted = counted - qty(m) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', fmt(now - W))
    store(counted)
  end
  if n > limit then return 0, limit, limit - counted, reset(), -1 end
  if counted + n > limit then
    local to_free = counted + n - limit
    local at = now
    local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      to_free = to_free - qty(entries[j])
      at = tonumber(entries[j + 1]) + W
      if to_free <= 0 then break end
    end
    return 0, limit, limit - counted, reset(), at - now
  end
  if n == 0 then return 1, limit, limit - counted, reset(), 0 end
  if apply then
    local newest = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
    local q = n
    if #newest > 0 and tonumber(newest[2]) == now then
      q = q + qty(newest[1])
      redis.call('ZREM', log, newest[1])
    end
    redis.call('ZADD', log, fmt(now), fmt(now) .. ':' .. fmt(q))
    store(counted + n)
  end
  -- Admitted: the newest entry is (or would be) now, so the state resets a window from now.
  return 1, limit, limit - counted - n, W, 0
end
)lua" KEEL_RL_EPILOGUE;

// Sliding window counter (Cloudflare). KEYS = hash {s = current window start, c = its count,
// p = the previous window's count} per limit. Per limit: window (us), limit. check() returns a
// sixth value, the estimate the decision was made on times the window (us), exact: previous *
// (window - elapsed) + current * window, before this request (Decision::estimate).
inline constexpr char kSlidingCounterScript[] = KEEL_RL_PRELUDE R"lua(
local NP, NK = 2, 1
local function check(i, n, apply)
  local key = KEYS[i]
  local W = tonumber(ARGV[2 + 2 * i])
  local limit = tonumber(ARGV[3 + 2 * i])
  local start = now - (now % W)
  local st = redis.call('HMGET', key, 's', 'c', 'p')
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
    return 0, limit, remaining_after(current), reset(current), retry, scaled(current)
  end
  local after = current + n
  if apply and n > 0 then
    redis.call('HSET', key, 's', fmt(start), 'c', fmt(after), 'p', fmt(previous))
    redis.call('PEXPIRE', key, ms(reset(after)))
  end
  return 1, limit, remaining_after(after), reset(after), 0, scaled(current)
end
)lua" KEEL_RL_EPILOGUE;

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
#undef KEEL_RL_EPILOGUE

}  // namespace keel::redis::internal
