// The parts of keel::cache::Cache<T> that do not depend on T. Not part of keel's API.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/async/executor.h"
#include "keel/cache/cache_options.h"
#include "keel/clock.h"
#include "keel/metrics.h"
#include "keel/sync.h"

namespace keel::cache::internal {

// INVALID_ARGUMENT naming the field (`cache "profiles": ttl must be > 0, got 0`).
absl::Status ValidateCacheOptions(const CacheOptions& options, size_t tiers, bool null_tier);

// INVALID_ARGUMENT naming the write-behind field (`cache "profiles": write_behind.batch_size must
// be >= 1, got 0`).
absl::Status ValidateWriteBehind(const std::string& cache_name, bool has_writer,
                                 Duration flush_interval, size_t batch_size, size_t max_pending,
                                 bool wait_when_full, bool durable, Duration flush_timeout,
                                 bool has_drop_on);

// XFetch's test: now - delta * beta * ln(u) >= expires, for u in (0, 1].
bool XFetchDue(TimePoint now, TimePoint expires, Duration delta, double beta, double u);

// The cache's own background executor: a ThreadPoolBulkhead behind the Executor interface.
absl::StatusOr<std::unique_ptr<Executor>> MakeBackgroundExecutor(const std::string& name,
                                                                 int threads, Clock& clock);

// Background tasks enter it before they touch the cache; Close (the cache's destructor) waits
// for those inside and turns later ones away.
class BackgroundGate {
 public:
  bool Enter() ABSL_LOCKS_EXCLUDED(mu_);
  void Exit() ABSL_LOCKS_EXCLUDED(mu_);
  void Close() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  Mutex mu_;
  CondVar cv_;
  int inside_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// Relaxed counters: statistics only.
struct CacheCounters {
  struct Tier {
    std::atomic<uint64_t> hits{0}, misses{0}, errors{0}, write_errors{0};
  };
  explicit CacheCounters(std::vector<std::string> kinds);
  CacheStats Snapshot() const;
  // Registers keel_cache_* series mirroring the counters (cache.h's Create lists them).
  absl::Status Register(MetricsRegistry& metrics, const std::string& name);
  // Registers the keel_cache_write_behind_* series (a cache with write-behind only).
  absl::Status RegisterWriteBehind(MetricsRegistry& metrics, const std::string& name,
                                   const Clock& clock);
  // The lag gauge: now - the oldest pending write; zero when none.
  Duration WriteBehindLag(TimePoint now) const;
  void ObserveLoad(Duration took) {
    if (load_seconds != nullptr) load_seconds->ObserveDuration(took);
  }

  std::vector<std::string> kinds;
  std::unique_ptr<Tier[]> tiers;
  std::atomic<uint64_t> hits{0}, negative_hits{0}, misses{0}, loads{0}, load_not_found{0},
      load_errors{0}, loader_exceptions{0}, stampede_waits{0}, lock_waits{0}, lock_errors{0},
      lock_timeouts{0}, early_recomputes{0}, refreshes{0}, refresh_failures{0},
      refreshes_dropped{0}, writes{0}, writer_errors{0}, warmed{0};
  // Write-behind. pending and oldest_ns are gauges kept by the write-behind engine (oldest_ns:
  // the oldest pending write's time on the cache's clock, in ns since its epoch; 0 when none).
  std::atomic<uint64_t> wb_writes{0}, wb_coalesced{0}, wb_rejected{0}, wb_flushed{0}, wb_batches{0},
      wb_failures{0}, wb_dropped{0}, wb_superseded{0}, wb_errors{0}, pending_reads{0},
      wb_pending{0};
  std::atomic<int64_t> wb_oldest_ns{0};
  Histogram* load_seconds = nullptr;
  std::vector<MetricsRegistry::Registration> registrations;
};

}  // namespace keel::cache::internal
