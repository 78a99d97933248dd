// keel::redis::WriteBehindStore: the write-behind pending set on Redis (see write_behind_log.h).
#include "keel/redis/write_behind_log.h"

#include <algorithm>
#include <charconv>
#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"
#include "keel/redis/script.h"

namespace keel::redis {

using keel::internal::OptionsOf;
using keel::internal::RequirePositive;
using keel::internal::StrCat;

namespace {

// Every script gets KEYS[1..5] = values, versions, since, dirty, claimed; Append also KEYS[6] =
// the tier's entry. Times are Redis's, in milliseconds.
constexpr char kNow[] = R"lua(
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
)lua";

// ARGV: key, frame, value, ttl ms, max_pending. Returns 1 when it replaced a pending write, 0
// for a new one, -1 when max_pending keys are pending (nothing written).
const Script& AppendScript() {
  static const Script* script = new Script(StrCat(kNow, R"lua(
local key = ARGV[1]
local replaced = redis.call('HEXISTS', KEYS[1], key)
if replaced == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then return -1 end
redis.call('SET', KEYS[6], ARGV[2], 'PX', ARGV[4])
redis.call('HSET', KEYS[1], key, ARGV[3])
redis.call('HINCRBY', KEYS[2], key, 1)
if replaced == 0 then redis.call('HSET', KEYS[3], key, now_ms()) end
-- A claimed key is being written: Complete finds its version moved and makes it pending again,
-- so no second flusher writes it while the first does.
if not redis.call('ZSCORE', KEYS[5], key) then
  redis.call('ZADD', KEYS[4], 'NX', redis.call('HGET', KEYS[3], key), key)
end
return replaced
)lua"));
  return *script;
}

// ARGV: key, value, version. 0: nothing pending; 1: a newer write is pending (left alone);
// 2: claimed, replaced by the value (written again after the flush in flight); 3: dropped.
const Script& SupersedeScript() {
  static const Script* script = new Script(R"lua(
local key = ARGV[1]
local v = tonumber(redis.call('HGET', KEYS[2], key) or '0')
if v == 0 then return 0 end
if v > tonumber(ARGV[3]) then return 1 end
if redis.call('ZSCORE', KEYS[5], key) then
  redis.call('HSET', KEYS[1], key, ARGV[2])
  redis.call('HINCRBY', KEYS[2], key, 1)
  return 2
end
redis.call('HDEL', KEYS[1], key)
redis.call('HDEL', KEYS[2], key)
redis.call('HDEL', KEYS[3], key)
redis.call('ZREM', KEYS[4], key)
return 3
)lua");
  return *script;
}

// ARGV: max, min_age ms, lease ms. Returns {pending, oldest age ms or -1, key, value, version,
// ...}.
const Script& ClaimScript() {
  static const Script* script = new Script(StrCat(kNow, R"lua(
local now = now_ms()
-- Leases that ran out (a flusher died or stalled): their keys are pending again.
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  redis.call('ZREM', KEYS[5], k)
  local since = redis.call('HGET', KEYS[3], k)
  if since then redis.call('ZADD', KEYS[4], since, k) end
end
local out = {0, -1}
local keys = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0,
                        tonumber(ARGV[1]))
for _, k in ipairs(keys) do
  redis.call('ZREM', KEYS[4], k)
  local v = redis.call('HGET', KEYS[1], k)
  if v then
    redis.call('ZADD', KEYS[5], now + tonumber(ARGV[3]), k)
    out[#out + 1] = k
    out[#out + 1] = v
    out[#out + 1] = redis.call('HGET', KEYS[2], k)
  end
end
out[1] = redis.call('HLEN', KEYS[1])
local oldest = nil
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if first[2] then oldest = tonumber(first[2]) end
for _, k in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  local since = tonumber(redis.call('HGET', KEYS[3], k) or now)
  if oldest == nil or since < oldest then oldest = since end
end
if oldest then out[2] = math.max(0, now - oldest) end
return out
)lua"));
  return *script;
}

// ARGV: key, version, key, version, ... Written: removed unless written again since the claim
// (then pending again).
const Script& CompleteScript() {
  static const Script* script = new Script(StrCat(kNow, R"lua(
for i = 1, #ARGV, 2 do
  local k = ARGV[i]
  redis.call('ZREM', KEYS[5], k)
  local v = redis.call('HGET', KEYS[2], k)
  if v == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], k)
    redis.call('HDEL', KEYS[2], k)
    redis.call('HDEL', KEYS[3], k)
    redis.call('ZREM', KEYS[4], k)
  elseif v then
    redis.call('ZADD', KEYS[4], 'NX', redis.call('HGET', KEYS[3], k) or now_ms(), k)
  end
end
return 0
)lua"));
  return *script;
}

// ARGV: key, version, ... Not written: unclaimed, pending at their first-write time.
const Script& ReleaseScript() {
  static const Script* script = new Script(R"lua(
for i = 1, #ARGV, 2 do
  local k = ARGV[i]
  redis.call('ZREM', KEYS[5], k)
  local since = redis.call('HGET', KEYS[3], k)
  if since then redis.call('ZADD', KEYS[4], 'NX', since, k) end
end
return 0
)lua");
  return *script;
}

int64_t Millis(Duration d) { return std::chrono::ceil<std::chrono::milliseconds>(d).count(); }

std::optional<uint64_t> ParseVersion(const Reply& r) {
  if (r.is_integer()) return static_cast<uint64_t>(r.integer());
  if (!r.is_string()) return std::nullopt;
  uint64_t v = 0;
  const std::string& s = r.str();
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WriteBehindStore>> WriteBehindStore::Create(const CacheStore& tier,
                                                                           Client& client,
                                                                           Options options,
                                                                           Clock& clock) {
  const OptionsOf of("redis write-behind log", tier.options().name);
  KEEL_RETURN_IF_ERROR(RequirePositive(of, "command_timeout", options.command_timeout));
  return std::unique_ptr<WriteBehindStore>(new WriteBehindStore(tier, client, options, clock));
}

WriteBehindStore::WriteBehindStore(const CacheStore& tier, Client& client, Options options,
                                   Clock& clock)
    : tier_(tier),
      client_(client),
      options_(options),
      clock_(clock),
      name_(tier.options().name),
      error_name_(StrCat("redis write-behind log \"", name_, "\": ")),
      values_(RedisKey("values")),
      versions_(RedisKey("versions")),
      since_(RedisKey("since")),
      dirty_(RedisKey("dirty")),
      claimed_(RedisKey("claimed")) {}

std::string WriteBehindStore::RedisKey(std::string_view part) const {
  return StrCat("{keel:wb:", name_, "}:", part);
}

Deadline WriteBehindStore::Bound(Deadline deadline) const {
  return Deadline::Min(deadline, Deadline::After(options_.command_timeout, clock_));
}

absl::Status WriteBehindStore::Failed(const absl::Status& status) const {
  return absl::Status(status.code(), StrCat(error_name_, status.message()));
}

absl::StatusOr<Reply> WriteBehindStore::Run(Deadline deadline, const Script& script,
                                            std::span<const std::string_view> keys,
                                            std::span<const std::string_view> args) {
  absl::StatusOr<Reply> reply = script.RunArgv(client_, Bound(deadline), keys, args);
  if (!reply.ok()) return Failed(reply.status());
  return reply;
}

absl::StatusOr<bool> WriteBehindStore::Append(Deadline deadline, std::string_view key,
                                              std::string_view frame, std::string_view value,
                                              Duration ttl, size_t max_pending) {
  const CacheStore::Options& o = tier_.options();
  if (key.size() > o.max_key_bytes) {
    return absl::InvalidArgumentError(StrCat(error_name_, "key of ", key.size(),
                                             " bytes is longer than max_key_bytes (",
                                             o.max_key_bytes, ")"));
  }
  if (frame.size() > o.max_value_bytes) {
    return absl::InvalidArgumentError(StrCat(error_name_, "value of ", frame.size(),
                                             " bytes is longer than max_value_bytes (",
                                             o.max_value_bytes, ")"));
  }
  if (ttl <= Duration::zero()) {
    return keel::internal::InvalidOption(OptionsOf("redis write-behind log", name_), "ttl", "> 0",
                                         ttl);
  }
  const std::string tier_key = tier_.RedisKey(key);
  const std::string ttl_ms = std::to_string(Millis(ttl));
  const std::string max = std::to_string(max_pending);
  const std::string_view keys[] = {values_, versions_, since_, dirty_, claimed_, tier_key};
  const std::string_view args[] = {key, frame, value, ttl_ms, max};
  KEEL_ASSIGN_OR_RETURN(Reply reply, Run(deadline, AppendScript(), keys, args));
  if (!reply.is_integer()) {
    return Failed(absl::InternalError(StrCat("append answered ", reply.DebugString())));
  }
  if (reply.integer() < 0) {
    return absl::ResourceExhaustedError(
        StrCat(error_name_, max_pending, " keys pending (max_pending)"));
  }
  return reply.integer() == 1;
}

absl::StatusOr<std::optional<std::string>> WriteBehindStore::Lookup(Deadline deadline,
                                                                    std::string_view key) {
  absl::StatusOr<Reply> reply = client_.Command(Bound(deadline), "HGET", values_, key);
  if (!reply.ok()) return Failed(reply.status());
  if (reply->is_nil()) return std::optional<std::string>();
  if (!reply->is_string()) {
    return Failed(absl::InternalError(StrCat("HGET answered ", reply->DebugString())));
  }
  return std::optional<std::string>(reply->str());
}

absl::StatusOr<uint64_t> WriteBehindStore::Version(Deadline deadline, std::string_view key) {
  absl::StatusOr<Reply> reply = client_.Command(Bound(deadline), "HGET", versions_, key);
  if (!reply.ok()) return Failed(reply.status());
  if (reply->is_nil()) return uint64_t{0};
  std::optional<uint64_t> v = ParseVersion(*reply);
  if (!v) return Failed(absl::InternalError(StrCat("HGET answered ", reply->DebugString())));
  return *v;
}

absl::StatusOr<bool> WriteBehindStore::Supersede(Deadline deadline, std::string_view key,
                                                 std::string_view value, uint64_t version) {
  const std::string v = std::to_string(version);
  const std::string_view keys[] = {values_, versions_, since_, dirty_, claimed_};
  const std::string_view args[] = {key, value, v};
  KEEL_ASSIGN_OR_RETURN(Reply reply, Run(deadline, SupersedeScript(), keys, args));
  if (!reply.is_integer()) {
    return Failed(absl::InternalError(StrCat("supersede answered ", reply.DebugString())));
  }
  return reply.integer() == 1;
}

absl::StatusOr<WriteBehindStore::Batch> WriteBehindStore::Claim(Deadline deadline, size_t max,
                                                                Duration min_age, Duration lease) {
  const std::string max_s = std::to_string(max);
  const std::string age_s = std::to_string(std::max<int64_t>(0, Millis(min_age)));
  const std::string lease_s = std::to_string(std::max<int64_t>(1, Millis(lease)));
  const std::string_view keys[] = {values_, versions_, since_, dirty_, claimed_};
  const std::string_view args[] = {max_s, age_s, lease_s};
  KEEL_ASSIGN_OR_RETURN(Reply reply, Run(deadline, ClaimScript(), keys, args));
  const auto bad = [&] {
    return Failed(absl::InternalError(StrCat("claim answered ", reply.DebugString())));
  };
  if (!reply.is_array() || reply.elements().size() < 2 || (reply.elements().size() - 2) % 3 != 0 ||
      !reply.elements()[0].is_integer() || !reply.elements()[1].is_integer()) {
    return bad();
  }
  const std::vector<Reply>& e = reply.elements();
  Batch out;
  out.pending = static_cast<uint64_t>(e[0].integer());
  if (e[1].integer() >= 0) out.oldest_age = std::chrono::milliseconds(e[1].integer());
  for (size_t i = 2; i + 2 < e.size(); i += 3) {
    std::optional<uint64_t> version = ParseVersion(e[i + 2]);
    if (!e[i].is_string() || !e[i + 1].is_string() || !version) return bad();
    out.writes.push_back({e[i].str(), e[i + 1].str(), *version});
  }
  return out;
}

namespace {
std::vector<std::string> SettleArgs(std::span<const WriteBehindStore::Settle> writes) {
  std::vector<std::string> out;
  out.reserve(writes.size() * 2);
  for (const WriteBehindStore::Settle& w : writes) {
    out.emplace_back(w.key);
    out.push_back(std::to_string(w.version));
  }
  return out;
}
}  // namespace

absl::Status WriteBehindStore::Complete(Deadline deadline, std::span<const Settle> writes) {
  if (writes.empty()) return absl::OkStatus();
  const std::vector<std::string> owned = SettleArgs(writes);
  const std::vector<std::string_view> args(owned.begin(), owned.end());
  const std::string_view keys[] = {values_, versions_, since_, dirty_, claimed_};
  return Run(deadline, CompleteScript(), keys, args).status();
}

absl::Status WriteBehindStore::Release(Deadline deadline, std::span<const Settle> writes) {
  if (writes.empty()) return absl::OkStatus();
  const std::vector<std::string> owned = SettleArgs(writes);
  const std::vector<std::string_view> args(owned.begin(), owned.end());
  const std::string_view keys[] = {values_, versions_, since_, dirty_, claimed_};
  return Run(deadline, ReleaseScript(), keys, args).status();
}

}  // namespace keel::redis
