// The Lua scripts behind keel::redis::Lock and keel::redis::Redlock. Private.
//
// KEYS[1] is the lock key (the holder's token, with the lease as its expiry); KEYS[2], for the
// acquire script, the fencing counter. Both share one hash tag. ARGV[1] is the caller's token,
// ARGV[2] the ttl in milliseconds.
#pragma once

namespace keel::redis::internal {

// Acquire: SET NX PX, and on success the next fencing token (INCR: strictly increasing, and the
// counter never expires). Reply: the fencing token (>= 1), or 0 when someone holds the lock.
inline constexpr char kLockAcquireScript[] = R"lua(
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
)lua";

// Release: compare-and-delete. Reply: 1 when the caller's token was there (deleted), else 0.
inline constexpr char kLockReleaseScript[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
)lua";

// Extend: compare-and-pexpire. Reply: 1 when the caller's token was there (lease reset to
// ARGV[2] ms from now), else 0.
inline constexpr char kLockExtendScript[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
)lua";

}  // namespace keel::redis::internal
