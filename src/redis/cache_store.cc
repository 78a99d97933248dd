// keel::redis::CacheStore: cache entries on Redis (see cache_store.h).
#include "keel/redis/cache_store.h"

#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"
#include "keel/redis/command.h"

namespace keel::redis {

using keel::internal::InvalidOption;
using keel::internal::OptionsOf;
using keel::internal::RequirePositive;
using keel::internal::StrCat;

namespace {
// PX takes whole milliseconds: round up, so an entry never lives shorter than asked.
int64_t TtlMillis(Duration ttl) {
  return std::chrono::ceil<std::chrono::milliseconds>(ttl).count();
}
}  // namespace

absl::StatusOr<std::unique_ptr<CacheStore>> CacheStore::Create(Options options, Client& client,
                                                               Clock& clock,
                                                               MetricsRegistry* metrics) {
  const OptionsOf of("redis cache store", options.name);
  if (options.name.empty() || options.name.size() > 128) {
    return InvalidOption(of, "name", "1 to 128 bytes", options.name.size());
  }
  if (options.max_key_bytes < 1) return InvalidOption(of, "max_key_bytes", ">= 1", 0);
  if (options.max_value_bytes < 1) return InvalidOption(of, "max_value_bytes", ">= 1", 0);
  KEEL_RETURN_IF_ERROR(RequirePositive(of, "command_timeout", options.command_timeout));
  std::unique_ptr<CacheStore> store(new CacheStore(std::move(options), client, clock));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(store->RegisterMetrics(*metrics));
  return store;
}

CacheStore::CacheStore(Options options, Client& client, Clock& clock)
    : options_(std::move(options)),
      prefix_(StrCat("keel:cache:", options_.name, ":")),
      error_name_(StrCat("redis cache store \"", options_.name, "\": ")),
      client_(client),
      clock_(clock) {}

std::string CacheStore::RedisKey(std::string_view key) const { return StrCat(prefix_, key); }

Deadline CacheStore::Bound(Deadline deadline) const {
  return Deadline::Min(deadline, Deadline::After(options_.command_timeout, clock_));
}

absl::Status CacheStore::CheckKey(std::string_view key) {
  if (key.size() <= options_.max_key_bytes) return absl::OkStatus();
  refused_.fetch_add(1, std::memory_order_relaxed);
  return absl::InvalidArgumentError(StrCat(error_name_, "key of ", key.size(),
                                           " bytes is longer than max_key_bytes (",
                                           options_.max_key_bytes, ")"));
}

absl::Status CacheStore::CheckWrite(std::string_view key, std::string_view value, Duration ttl) {
  KEEL_RETURN_IF_ERROR(CheckKey(key));
  if (value.size() > options_.max_value_bytes) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    return absl::InvalidArgumentError(StrCat(error_name_, "value of ", value.size(),
                                             " bytes is longer than max_value_bytes (",
                                             options_.max_value_bytes, ")"));
  }
  if (ttl <= Duration::zero()) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    return InvalidOption(OptionsOf("redis cache store", options_.name), "ttl", "> 0", ttl);
  }
  return absl::OkStatus();
}

absl::Status CacheStore::Failed(const absl::Status& status) {
  errors_.fetch_add(1, std::memory_order_relaxed);
  return absl::Status(status.code(), StrCat(error_name_, status.message()));
}

absl::StatusOr<std::optional<std::string>> CacheStore::Get(Deadline deadline,
                                                           std::string_view key) {
  KEEL_RETURN_IF_ERROR(CheckKey(key));
  const std::string redis_key = RedisKey(key);
  absl::StatusOr<Reply> reply = client_.Command(Bound(deadline), "GET", redis_key);
  if (!reply.ok()) return Failed(reply.status());
  if (reply->is_nil()) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return std::optional<std::string>();
  }
  if (!reply->is_string()) {
    return Failed(absl::InternalError(StrCat("GET answered ", reply->DebugString())));
  }
  hits_.fetch_add(1, std::memory_order_relaxed);
  return std::optional<std::string>(reply->str());
}

absl::StatusOr<std::vector<std::optional<std::string>>> CacheStore::GetMany(
    Deadline deadline, std::span<const std::string_view> keys) {
  std::vector<std::optional<std::string>> out;
  if (keys.empty()) return out;
  std::vector<std::string> redis_keys;
  redis_keys.reserve(keys.size());
  std::vector<std::string_view> argv = {"MGET"};
  for (std::string_view k : keys) {
    KEEL_RETURN_IF_ERROR(CheckKey(k));
    redis_keys.push_back(RedisKey(k));
  }
  for (const std::string& k : redis_keys) argv.push_back(k);
  absl::StatusOr<Reply> reply = client_.CommandArgv(Bound(deadline), argv);
  if (!reply.ok()) return Failed(reply.status());
  if (!reply->is_array() || reply->elements().size() != keys.size()) {
    return Failed(absl::InternalError(StrCat("MGET answered ", reply->DebugString())));
  }
  out.reserve(keys.size());
  for (const Reply& r : reply->elements()) {
    if (r.is_string()) {
      hits_.fetch_add(1, std::memory_order_relaxed);
      out.emplace_back(r.str());
    } else {
      misses_.fetch_add(1, std::memory_order_relaxed);
      out.emplace_back();
    }
  }
  return out;
}

absl::Status CacheStore::Set(Deadline deadline, std::string_view key, std::string_view value,
                             Duration ttl) {
  KEEL_RETURN_IF_ERROR(CheckWrite(key, value, ttl));
  const std::string redis_key = RedisKey(key);
  absl::StatusOr<Reply> reply =
      client_.Command(Bound(deadline), "SET", redis_key, value, "PX", TtlMillis(ttl));
  if (!reply.ok()) return Failed(reply.status());
  sets_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status CacheStore::SetMany(Deadline deadline, std::span<const Write> writes) {
  if (writes.empty()) return absl::OkStatus();
  Pipeline pipeline;
  for (const Write& w : writes) {
    KEEL_RETURN_IF_ERROR(CheckWrite(w.key, w.value, w.ttl));
    pipeline.Add("SET", RedisKey(w.key), w.value, "PX", TtlMillis(w.ttl));
  }
  absl::StatusOr<PipelineReplies> replies = client_.Run(Bound(deadline), pipeline);
  if (!replies.ok()) return Failed(replies.status());
  absl::Status first;
  for (const absl::StatusOr<Reply>& r : *replies) {
    if (r.ok()) {
      sets_.fetch_add(1, std::memory_order_relaxed);
    } else if (first.ok()) {
      first = Failed(r.status());
    }
  }
  return first;
}

absl::Status CacheStore::Erase(Deadline deadline, std::string_view key) {
  KEEL_RETURN_IF_ERROR(CheckKey(key));
  const std::string redis_key = RedisKey(key);
  absl::StatusOr<Reply> reply = client_.Command(Bound(deadline), "DEL", redis_key);
  if (!reply.ok()) return Failed(reply.status());
  deletes_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

CacheStoreStats CacheStore::Stats() const {
  const auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  return {.hits_total = get(hits_),
          .misses_total = get(misses_),
          .errors_total = get(errors_),
          .sets_total = get(sets_),
          .deletes_total = get(deletes_),
          .refused_total = get(refused_)};
}

absl::Status CacheStore::RegisterMetrics(MetricsRegistry& metrics) {
  const auto add = [&](const char* family, const char* help, const char* result,
                       const std::atomic<uint64_t>& value) -> absl::Status {
    Labels labels = {{"name", options_.name}, {"tier", "redis"}};
    if (result != nullptr) labels.emplace_back("result", result);
    absl::StatusOr<MetricsRegistry::Registration> r = metrics.AddCounterCallback(
        family, help, labels,
        [&value] { return static_cast<double>(value.load(std::memory_order_relaxed)); });
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  const char* requests = "Cache reads by result.";
  KEEL_RETURN_IF_ERROR(add("keel_cache_requests_total", requests, "hit", hits_));
  KEEL_RETURN_IF_ERROR(add("keel_cache_requests_total", requests, "miss", misses_));
  KEEL_RETURN_IF_ERROR(add("keel_cache_requests_total", requests, "error", errors_));
  KEEL_RETURN_IF_ERROR(
      add("keel_cache_puts_total", "Values stored in a cache tier.", nullptr, sets_));
  return add("keel_cache_refused_total",
             "Cache tier calls refused before any I/O (key or value too long).", nullptr, refused_);
}

}  // namespace keel::redis
