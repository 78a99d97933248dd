#include "keel/cache/internal/cache_support.h"

#include <cmath>
#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"
#include "keel/resilience/thread_pool_bulkhead.h"

namespace keel::cache::internal {

using keel::internal::InvalidOption;
using keel::internal::OptionsOf;
using keel::internal::RequireAtLeast;
using keel::internal::RequirePositive;
using keel::internal::RequireSet;

absl::Status ValidateCacheOptions(const CacheOptions& o, size_t tiers, bool null_tier) {
  const OptionsOf of("cache", o.name);
  KEEL_RETURN_IF_ERROR(RequirePositive(of, "ttl", o.ttl));
  if (o.ttl_jitter < Duration::zero() || o.ttl_jitter > o.ttl) {
    return InvalidOption(of, "ttl_jitter", "in [0, ttl]", o.ttl_jitter);
  }
  if (o.negative_ttl) KEEL_RETURN_IF_ERROR(RequirePositive(of, "negative_ttl", *o.negative_ttl));
  if (o.refresh_after) {
    KEEL_RETURN_IF_ERROR(RequirePositive(of, "refresh_after", *o.refresh_after));
    if (*o.refresh_after >= o.ttl) {
      return InvalidOption(of, "refresh_after", "< ttl", *o.refresh_after);
    }
  }
  if (!(o.xfetch_beta > 0) || std::isinf(o.xfetch_beta)) {
    return InvalidOption(of, "xfetch_beta", "> 0 and finite", o.xfetch_beta);
  }
  KEEL_RETURN_IF_ERROR(RequirePositive(of, "background_timeout", o.background_timeout));
  KEEL_RETURN_IF_ERROR(RequireAtLeast(of, "background_threads", o.background_threads, 1));
  KEEL_RETURN_IF_ERROR(RequirePositive(of, "stampede_poll_interval", o.stampede_poll_interval));
  KEEL_RETURN_IF_ERROR(RequirePositive(of, "stampede_max_wait", o.stampede_max_wait));
  KEEL_RETURN_IF_ERROR(RequirePositive(of, "stampede_lock_timeout", o.stampede_lock_timeout));
  if (tiers > 32) return InvalidOption(of, "tiers", "at most 32", tiers);
  if (null_tier) return InvalidOption(of, "tiers", "non-null", "a null tier");
  return absl::OkStatus();
}

absl::Status ValidateWriteBehind(const std::string& cache_name, bool has_writer,
                                 Duration flush_interval, size_t batch_size, size_t max_pending,
                                 bool wait_when_full, bool durable, Duration flush_timeout,
                                 bool has_drop_on) {
  const OptionsOf of("cache", cache_name);
  KEEL_RETURN_IF_ERROR(RequireSet(of, "write_behind.writer_batch", has_writer));
  KEEL_RETURN_IF_ERROR(RequirePositive(of, "write_behind.flush_interval", flush_interval));
  KEEL_RETURN_IF_ERROR(RequireAtLeast(of, "write_behind.batch_size", batch_size, size_t{1}));
  if (max_pending < batch_size) {
    return InvalidOption(of, "write_behind.max_pending", ">= write_behind.batch_size", max_pending);
  }
  if (wait_when_full && durable) {
    return InvalidOption(of, "write_behind.when_full",
                         "kReject with a durable pending set (kWait needs the in-process one)",
                         "kWait");
  }
  KEEL_RETURN_IF_ERROR(RequirePositive(of, "write_behind.flush_timeout", flush_timeout));
  return RequireSet(of, "write_behind.drop_on", has_drop_on);
}

bool XFetchDue(TimePoint now, TimePoint expires, Duration delta, double beta, double u) {
  if (delta <= Duration::zero() || u <= 0) return now >= expires;
  // -ln(u) >= 0: how far ahead of the expiry, in units of delta * beta, this read looks.
  const double ahead_ns = static_cast<double>(delta.count()) * beta * -std::log(u);
  const double gap_ns = static_cast<double>((expires - now).count());
  return ahead_ns >= gap_ns;
}

namespace {
class BulkheadExecutor final : public Executor {
 public:
  explicit BulkheadExecutor(std::unique_ptr<ThreadPoolBulkhead> pool) : pool_(std::move(pool)) {}
  ~BulkheadExecutor() override { pool_->Shutdown(ThreadPoolBulkhead::ShutdownMode::kCancelQueued); }
  void Post(absl::AnyInvocable<void()> task) override {
    // A full queue drops the task (its destructor runs, which the cache counts as dropped).
    pool_->Submit([task = std::move(task)]() mutable -> absl::Status {
      task();
      return absl::OkStatus();
    });
  }

 private:
  std::unique_ptr<ThreadPoolBulkhead> pool_;
};
}  // namespace

absl::StatusOr<std::unique_ptr<Executor>> MakeBackgroundExecutor(const std::string& name,
                                                                 int threads, Clock& clock) {
  KEEL_ASSIGN_OR_RETURN(
      std::unique_ptr<ThreadPoolBulkhead> pool,
      ThreadPoolBulkhead::Create(
          {.name = name + "-refresh", .threads = threads, .queue_capacity = 100}, clock));
  return std::unique_ptr<Executor>(new BulkheadExecutor(std::move(pool)));
}

bool BackgroundGate::Enter() {
  MutexLock lock(mu_);
  if (closed_) return false;
  ++inside_;
  return true;
}

void BackgroundGate::Exit() {
  MutexLock lock(mu_);
  if (--inside_ == 0) cv_.SignalAll();
}

void BackgroundGate::Close() {
  MutexLock lock(mu_);
  closed_ = true;
  while (inside_ > 0) cv_.Wait(mu_);
}

CacheCounters::CacheCounters(std::vector<std::string> k)
    : kinds(std::move(k)), tiers(new Tier[kinds.size()]) {}

CacheStats CacheCounters::Snapshot() const {
  const auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  CacheStats s{.hits_total = get(hits),
               .negative_hits_total = get(negative_hits),
               .misses_total = get(misses),
               .loads_total = get(loads),
               .load_not_found_total = get(load_not_found),
               .load_errors_total = get(load_errors),
               .loader_exceptions_total = get(loader_exceptions),
               .stampede_waits_total = get(stampede_waits),
               .stampede_lock_waits_total = get(lock_waits),
               .stampede_lock_errors_total = get(lock_errors),
               .stampede_lock_timeouts_total = get(lock_timeouts),
               .early_recomputes_total = get(early_recomputes),
               .refreshes_total = get(refreshes),
               .refresh_failures_total = get(refresh_failures),
               .refreshes_dropped_total = get(refreshes_dropped),
               .writes_total = get(writes),
               .writer_errors_total = get(writer_errors),
               .warmed_total = get(warmed),
               .write_behind_pending = get(wb_pending),
               .write_behind_writes_total = get(wb_writes),
               .write_behind_coalesced_total = get(wb_coalesced),
               .write_behind_rejected_total = get(wb_rejected),
               .write_behind_flushed_total = get(wb_flushed),
               .write_behind_batches_total = get(wb_batches),
               .write_behind_failures_total = get(wb_failures),
               .write_behind_dropped_total = get(wb_dropped),
               .write_behind_superseded_total = get(wb_superseded),
               .write_behind_errors_total = get(wb_errors),
               .pending_reads_total = get(pending_reads)};
  for (size_t i = 0; i < kinds.size(); ++i) {
    s.tiers.push_back({.kind = kinds[i],
                       .hits_total = get(tiers[i].hits),
                       .misses_total = get(tiers[i].misses),
                       .errors_total = get(tiers[i].errors),
                       .write_errors_total = get(tiers[i].write_errors)});
  }
  return s;
}

namespace {

// Registers one cache's series, each labelled with the cache's name, keeping the registrations.
class Registrar {
 public:
  Registrar(MetricsRegistry& metrics, const std::string& name,
            std::vector<MetricsRegistry::Registration>& out)
      : metrics_(metrics), name_(name), out_(out) {}

  absl::Status Keep(absl::StatusOr<MetricsRegistry::Registration> r) {
    if (!r.ok()) return r.status();
    out_.push_back(std::move(r).value());
    return absl::OkStatus();
  }
  // A counter read from `value`; the name label is added to `labels`.
  absl::Status Counter(const char* family, const char* help, Labels labels,
                       const std::atomic<uint64_t>& value) {
    labels.emplace_back("name", name_);
    return Keep(metrics_.AddCounterCallback(family, help, labels, [&value] {
      return static_cast<double>(value.load(std::memory_order_relaxed));
    }));
  }

 private:
  MetricsRegistry& metrics_;
  const std::string& name_;
  std::vector<MetricsRegistry::Registration>& out_;
};

}  // namespace

absl::Status CacheCounters::Register(MetricsRegistry& metrics, const std::string& name) {
  Registrar r(metrics, name, registrations);
  const char* lookups = "Cache reads (GetOrLoad, Get) by result.";
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_lookups_total", lookups, {{"result", "hit"}}, hits));
  KEEL_RETURN_IF_ERROR(
      r.Counter("keel_cache_lookups_total", lookups, {{"result", "miss"}}, misses));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_negative_hits_total",
                                 "Cache reads answered NOT_FOUND by a negative entry.", {},
                                 negative_hits));
  const char* tier_reads =
      "Cache tier reads by result (error: the tier failed, the cache went on).";
  for (size_t i = 0; i < kinds.size(); ++i) {
    const std::pair<const char*, const std::atomic<uint64_t>*> results[] = {
        {"hit", &tiers[i].hits}, {"miss", &tiers[i].misses}, {"error", &tiers[i].errors}};
    for (const auto& [result, value] : results) {
      KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_tier_reads_total", tier_reads,
                                     {{"tier", kinds[i]}, {"result", result}}, *value));
    }
    KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_tier_write_errors_total",
                                   "Cache tier writes that failed.", {{"tier", kinds[i]}},
                                   tiers[i].write_errors));
  }
  // Loads by result: ok is what is left of all loads after the two kinds of failure.
  KEEL_RETURN_IF_ERROR(r.Keep(metrics.AddCounterCallback(
      "keel_cache_loads_total", "Loader calls by result.", {{"name", name}, {"result", "ok"}},
      [this] {
        const auto get = [](const std::atomic<uint64_t>& a) {
          return a.load(std::memory_order_relaxed);
        };
        return static_cast<double>(get(loads) - get(load_not_found) - get(load_errors));
      })));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_loads_total", "Loader calls by result.",
                                 {{"result", "not_found"}}, load_not_found));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_loads_total", "Loader calls by result.",
                                 {{"result", "error"}}, load_errors));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_loader_exceptions_total",
                                 "Loader calls that threw (caught, returned as INTERNAL).", {},
                                 loader_exceptions));
  const char* waits = "Loads a cache read waited for instead of loading itself, by scope.";
  KEEL_RETURN_IF_ERROR(
      r.Counter("keel_cache_stampede_waits_total", waits, {{"scope", "process"}}, stampede_waits));
  KEEL_RETURN_IF_ERROR(
      r.Counter("keel_cache_stampede_waits_total", waits, {{"scope", "cluster"}}, lock_waits));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_stampede_lock_errors_total",
                                 "Stampede lock attempts that failed (loaded without the lock).",
                                 {}, lock_errors));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_stampede_lock_timeouts_total",
                                 "Waits for another process's load that gave up and loaded.", {},
                                 lock_timeouts));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_early_recomputes_total",
                                 "Background reloads started early by XFetch.", {},
                                 early_recomputes));
  const char* refresh_help = "Background reloads (refresh-ahead, XFetch) by result.";
  KEEL_RETURN_IF_ERROR(
      r.Counter("keel_cache_refreshes_total", refresh_help, {{"result", "ok"}}, refreshes));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_refreshes_total", refresh_help, {{"result", "failed"}},
                                 refresh_failures));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_refreshes_total", refresh_help,
                                 {{"result", "dropped"}}, refreshes_dropped));
  const char* writes_help = "Write-through Put calls by result of the writer.";
  KEEL_RETURN_IF_ERROR(
      r.Counter("keel_cache_writes_total", writes_help, {{"result", "ok"}}, writes));
  KEEL_RETURN_IF_ERROR(
      r.Counter("keel_cache_writes_total", writes_help, {{"result", "error"}}, writer_errors));
  KEEL_ASSIGN_OR_RETURN(
      load_seconds,
      metrics.AddHistogram("keel_cache_load_seconds", "Loader latency (foreground and background).",
                           DefaultLatencyBuckets(), {{"name", name}}));
  return absl::OkStatus();
}

Duration CacheCounters::WriteBehindLag(TimePoint now) const {
  // Relaxed: a gauge; the engine stores it under its lock, readers want a recent value only.
  const int64_t oldest = wb_oldest_ns.load(std::memory_order_relaxed);
  if (oldest == 0) return Duration::zero();
  const Duration lag = now.time_since_epoch() - Duration(oldest);
  return lag > Duration::zero() ? lag : Duration::zero();
}

absl::Status CacheCounters::RegisterWriteBehind(MetricsRegistry& metrics, const std::string& name,
                                                const Clock& clock) {
  Registrar r(metrics, name, registrations);
  KEEL_RETURN_IF_ERROR(r.Keep(metrics.AddGaugeCallback(
      "keel_cache_write_behind_pending",
      "Keys waiting for the write-behind writer (the batch being written included).",
      {{"name", name}},
      [this] { return static_cast<double>(wb_pending.load(std::memory_order_relaxed)); })));
  KEEL_RETURN_IF_ERROR(r.Keep(metrics.AddGaugeCallback(
      "keel_cache_write_behind_lag_seconds",
      "How long the oldest pending write-behind write has waited.", {{"name", name}},
      [this, &clock] {
        return std::chrono::duration<double>(WriteBehindLag(clock.Now())).count();
      })));
  const char* writes = "Write-behind PutBehind calls by result.";
  KEEL_RETURN_IF_ERROR(r.Keep(metrics.AddCounterCallback(
      "keel_cache_write_behind_writes_total", writes, {{"name", name}, {"result", "new"}}, [this] {
        return static_cast<double>(wb_writes.load(std::memory_order_relaxed) -
                                   wb_coalesced.load(std::memory_order_relaxed));
      })));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_write_behind_writes_total", writes,
                                 {{"result", "coalesced"}}, wb_coalesced));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_write_behind_writes_total", writes,
                                 {{"result", "rejected"}}, wb_rejected));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_write_behind_flushed_total",
                                 "Writes the write-behind writer wrote to the source of truth.", {},
                                 wb_flushed));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_write_behind_batches_total",
                                 "Write-behind batches written.", {}, wb_batches));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_write_behind_failures_total",
                                 "Write-behind batches that failed after retries (kept pending).",
                                 {}, wb_failures));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_write_behind_dropped_total",
                                 "Write-behind writes dropped because the writer refused them.", {},
                                 wb_dropped));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_write_behind_superseded_total",
                                 "Pending write-behind writes a write-through Put replaced.", {},
                                 wb_superseded));
  KEEL_RETURN_IF_ERROR(r.Counter("keel_cache_write_behind_errors_total",
                                 "Calls to the durable pending set that failed.", {}, wb_errors));
  return r.Counter("keel_cache_pending_reads_total",
                   "Reads that missed every tier and were answered by a pending write.", {},
                   pending_reads);
}

}  // namespace keel::cache::internal
