// keel/metrics.h: counters, gauges and histograms, rendered in the Prometheus text format.
//
// Defines `keel::MetricsRegistry` and the metric types it hands out: `Counter`, `Gauge`,
// `Histogram`, plus callback series (`AddCounterCallback`/`AddGaugeCallback`) for values a
// component already keeps, so its hot path never updates the same number twice.
//
// Thread safety: everything here is thread-safe. Updates (`Increment`, `Set`, `Observe`) are
// lock-free and never allocate; registration and rendering take the registry's mutex.
//
//   keel::MetricsRegistry registry;
//   keel::Counter* requests = registry.AddCounter(
//       "diary_requests_total", "Requests served.", {{"route", "/diaries"}}).value();
//   keel::Histogram* latency = registry.AddHistogram(
//       "diary_request_seconds", "Request latency.", keel::DefaultLatencyBuckets()).value();
//   requests->Increment();
//   latency->Observe(0.012);
//   auto reg = registry.AddGaugeCallback("diary_pool_in_use", "Leased connections.", {},
//                                        [&pool] { return pool.Stats().in_use; }).value();
//   std::string body = registry.RenderPrometheus();   // serve at /metrics
//
// Rules (checked at registration, INVALID_ARGUMENT otherwise, so rendering can never produce
// unparsable output): metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names match
// [a-zA-Z_][a-zA-Z0-9_]* and do not start with "__"; counters end in "_total" and nothing else
// does (Prometheus' naming convention, which `promtool check metrics` enforces); a histogram may
// not use the label "le". Label values and help text may hold any text; they are escaped.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/sync.h"

namespace keel {

// Label pairs of one series, in any order (rendered sorted by name).
using Labels = std::vector<std::pair<std::string, std::string>>;

// A monotonically increasing count.
class Counter {
 public:
  void Increment(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  // Relaxed: a counter orders nothing; readers only need an eventually consistent total.
  alignas(64) std::atomic<uint64_t> value_{0};
};

// A value that goes up and down.
class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double d) { value_.fetch_add(d, std::memory_order_relaxed); }
  void Sub(double d) { value_.fetch_sub(d, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  alignas(64) std::atomic<double> value_{0.0};
};

// Observations counted into fixed buckets; rendered cumulatively with _sum and _count.
class Histogram {
 public:
  // `bounds`: strictly increasing finite upper bounds; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);

  void Observe(double value);
  template <typename Rep, typename Period>
  void ObserveDuration(std::chrono::duration<Rep, Period> d) {
    Observe(std::chrono::duration<double>(d).count());
  }

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // one per bound, then +Inf (== count)
    double sum = 0;
    uint64_t count = 0;
  };
  // Counts are read bucket by bucket without a lock: under concurrent updates a snapshot may miss
  // observations still in flight, but is always internally consistent (count == +Inf bucket).
  Snapshot Snap() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1, not cumulative
  std::atomic<double> sum_{0.0};
};

// Latency buckets in seconds, 0.5 ms to 10 s.
std::vector<double> DefaultLatencyBuckets();

class MetricsRegistry {
 public:
  enum class Type { kCounter, kGauge, kHistogram };

  // Removes a callback series when destroyed. Move-only.
  // REQUIRES: the registry outlives every Registration it returned.
  class Registration {
   public:
    Registration() = default;
    Registration(Registration&& other) noexcept { *this = std::move(other); }
    Registration& operator=(Registration&& other) noexcept;
    ~Registration() { Reset(); }
    void Reset();

   private:
    friend class MetricsRegistry;
    Registration(MetricsRegistry* registry, std::string name, std::string key)
        : registry_(registry), name_(std::move(name)), key_(std::move(key)) {}
    MetricsRegistry* registry_ = nullptr;
    std::string name_;
    std::string key_;
  };

  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Returns the series named `name` with `labels`, creating it on first use; the pointer stays
  // valid for the registry's lifetime. Registering the same name and labels again returns the
  // same object. The first registration of a name fixes its help text and type.
  // Errors: INVALID_ARGUMENT for a bad name or label, or a name already used with another type
  // (or, for histograms, other bounds); ALREADY_EXISTS when the series is a callback.
  absl::StatusOr<Counter*> AddCounter(std::string_view name, std::string_view help,
                                      const Labels& labels = {}) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Gauge*> AddGauge(std::string_view name, std::string_view help,
                                  const Labels& labels = {}) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Histogram*> AddHistogram(std::string_view name, std::string_view help,
                                          std::vector<double> bounds, const Labels& labels = {})
      ABSL_LOCKS_EXCLUDED(mu_);

  // A series whose value is read from `read` at render time. `read` runs under the registry's
  // mutex: it must be cheap, thread-safe and must not call into the registry.
  // Errors: as above; ALREADY_EXISTS when the series already exists.
  absl::StatusOr<Registration> AddCounterCallback(std::string_view name, std::string_view help,
                                                  const Labels& labels,
                                                  std::function<double()> read)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<Registration> AddGaugeCallback(std::string_view name, std::string_view help,
                                                const Labels& labels, std::function<double()> read)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Every series in the Prometheus text exposition format 0.0.4: families sorted by name, each
  // with HELP and TYPE lines, series sorted by their labels.
  std::string RenderPrometheus() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Series;
  struct Family;

  absl::StatusOr<Series*> FindOrAdd(std::string_view name, std::string_view help, Type type,
                                    const Labels& labels, const std::vector<double>* bounds,
                                    bool callback) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Registration> AddCallback(std::string_view name, std::string_view help, Type type,
                                           const Labels& labels, std::function<double()> read)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Remove(const std::string& name, const std::string& key) ABSL_LOCKS_EXCLUDED(mu_);

  mutable Mutex mu_;
  std::map<std::string, std::unique_ptr<Family>, std::less<>> families_ ABSL_GUARDED_BY(mu_);
};

}  // namespace keel
