// The non-template parts of keel::Pool<T>: option checks, error messages and metrics.
#include "keel/pool/internal/pool_support.h"

#include <cstdio>
#include <utility>

#include "absl/time/time.h"
#include "keel/internal/exception.h"
#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/pool/pool.h"

namespace keel::pool_internal {
namespace {

using internal::StrCat;

std::string Quoted(const PoolOptions& o) { return StrCat("pool \"", o.name, "\""); }

}  // namespace

absl::Status ValidateOptions(const PoolOptions& o) {
  const internal::OptionsOf of("pool", o.name);
  if (o.name.empty()) return internal::InvalidOption(of, "name", "non-empty", "\"\"");
  KEEL_RETURN_IF_ERROR(internal::RequireAtLeast(of, "max_size", o.max_size, 1));
  if (o.min_idle && (*o.min_idle < 0 || *o.min_idle > o.max_size)) {
    return internal::InvalidOption(of, "min_idle", StrCat("in [0, max_size = ", o.max_size, "]"),
                                   *o.min_idle);
  }
  KEEL_RETURN_IF_ERROR(internal::RequireAtLeast(of, "max_connecting", o.max_connecting, 1));
  const std::pair<std::string_view, Duration> positive[] = {
      {"acquire_timeout", o.acquire_timeout},
      {"idle_timeout", o.idle_timeout},
      {"max_lifetime", o.max_lifetime},
      {"keepalive_interval", o.keepalive_interval},
      {"validation_timeout", o.validation_timeout},
      {"maintenance_interval", o.maintenance_interval},
  };
  for (const auto& [field, d] : positive) {
    KEEL_RETURN_IF_ERROR(internal::RequirePositive(of, field, d));
  }
  KEEL_RETURN_IF_ERROR(internal::RequireNonNegative(of, "validation_bypass", o.validation_bypass));
  if (o.leak_detection_threshold) {
    KEEL_RETURN_IF_ERROR(
        internal::RequirePositive(of, "leak_detection_threshold", *o.leak_detection_threshold));
  }
  return absl::OkStatus();
}

std::string HumanDuration(Duration d) {
  // Whole milliseconds below 10 s, tenths of a second up to a minute, whole seconds above: enough
  // precision to read, no "2.000134517s".
  absl::Duration a = absl::FromChrono(d);
  if (a < absl::Seconds(10)) {
    a = absl::Trunc(a, absl::Milliseconds(1));
  } else if (a < absl::Minutes(1)) {
    a = absl::Trunc(a, absl::Milliseconds(100));
  } else {
    a = absl::Trunc(a, absl::Seconds(1));
  }
  return internal::FormatDuration(absl::ToChronoNanoseconds(a));
}

std::string DescribeCreateError(std::string_view cause, Duration age) {
  return StrCat(HumanDuration(age), " ago: ", cause);
}

absl::Status AcquireTimeoutError(const PoolOptions& o, Duration budget, const Snapshot& s) {
  std::string detail = StrCat(s.in_use, "/", s.max_size, " in use, ", s.waiting, " waiting");
  if (s.connecting > 0) absl::StrAppend(&detail, ", ", s.connecting, " connecting");
  if (s.last_create_error) absl::StrAppend(&detail, ", last create error ", *s.last_create_error);
  return absl::DeadlineExceededError(StrCat(Quoted(o), ": no ", o.resource_kind, " within ",
                                            HumanDuration(budget), " (", detail, ")"));
}

absl::Status CreateFailedError(const PoolOptions& o, const absl::Status& cause) {
  // A hook that threw or broke its contract is a bug, not a backend outage: keep INTERNAL so
  // a Retry does not hammer it.
  const absl::StatusCode code =
      absl::IsInternal(cause) ? absl::StatusCode::kInternal : absl::StatusCode::kUnavailable;
  return absl::Status(
      code, StrCat(Quoted(o), ": cannot create a ", o.resource_kind, ": ", cause.message()));
}

absl::Status ShutDownError(const PoolOptions& o) {
  return absl::FailedPreconditionError(StrCat(Quoted(o), " is shut down"));
}

absl::Status CancelledError(const PoolOptions& o) {
  return absl::CancelledError(
      StrCat(Quoted(o), " shut down while waiting for a ", o.resource_kind));
}

absl::Status ExhaustedError(const PoolOptions& o, int in_use, int waiting) {
  return absl::ResourceExhaustedError(StrCat(Quoted(o), ": no idle ", o.resource_kind, " (", in_use,
                                             "/", o.max_size, " in use, ", waiting, " waiting)"));
}

absl::Status HookExceptionError(const PoolOptions& o, std::string_view hook,
                                std::exception_ptr thrown) {
  return absl::InternalError(
      StrCat(Quoted(o), ": the ", hook, " hook threw ", internal::DescribeException(thrown)));
}

std::string LeakReport(const PoolOptions& o, std::string_view label, Duration held) {
  return StrCat(Quoted(o), ": ", o.resource_kind, " leased by ",
                label.empty() ? std::string("an unlabelled lease") : StrCat("\"", label, "\""),
                " has been held for ", HumanDuration(held), " (leak_detection_threshold ",
                HumanDuration(*o.leak_detection_threshold), "); possible leak");
}

void WriteLeakReportToStderr(std::string_view report) {
  std::fprintf(stderr, "keel: %.*s\n", static_cast<int>(report.size()), report.data());
}

absl::StatusOr<std::vector<MetricsRegistry::Registration>> RegisterMetrics(
    MetricsRegistry& registry, const std::string& name, std::function<PoolStats()> stats,
    Histogram** histogram) {
  const Labels labels = {{"name", name}};
  std::vector<MetricsRegistry::Registration> out;
  struct Series {
    const char* name;
    const char* help;
    bool counter;
    double (*read)(const PoolStats&);
  };
  static const Series kSeries[] = {
      {"keel_pool_in_use", "Resources leased to callers.", false,
       [](const PoolStats& s) { return double(s.in_use); }},
      {"keel_pool_idle", "Resources ready to be leased.", false,
       [](const PoolStats& s) { return double(s.idle); }},
      {"keel_pool_pending", "Callers waiting for a resource.", false,
       [](const PoolStats& s) { return double(s.pending); }},
      {"keel_pool_connecting", "Resource creations in flight.", false,
       [](const PoolStats& s) { return double(s.connecting); }},
      {"keel_pool_size", "Open resources: in use, idle or being checked.", false,
       [](const PoolStats& s) { return double(s.total); }},
      {"keel_pool_max_size", "Configured maximum pool size.", false,
       [](const PoolStats& s) { return double(s.max_size); }},
      {"keel_pool_acquired_total", "Leases handed out.", true,
       [](const PoolStats& s) { return double(s.acquired_total); }},
      {"keel_pool_created_total", "Resources created.", true,
       [](const PoolStats& s) { return double(s.created_total); }},
      {"keel_pool_destroyed_total", "Resources closed.", true,
       [](const PoolStats& s) { return double(s.destroyed_total); }},
      {"keel_pool_acquire_timeouts_total", "Acquire calls that ran out of time.", true,
       [](const PoolStats& s) { return double(s.timeouts_total); }},
      {"keel_pool_create_failures_total", "Failed resource creations.", true,
       [](const PoolStats& s) { return double(s.create_failures_total); }},
      {"keel_pool_validation_failures_total", "Resources discarded by validation.", true,
       [](const PoolStats& s) { return double(s.validation_failures_total); }},
      {"keel_pool_leaks_detected_total", "Leases held past leak_detection_threshold.", true,
       [](const PoolStats& s) { return double(s.leaks_detected_total); }},
      {"keel_pool_maintenance_runs_total", "Housekeeping passes.", true,
       [](const PoolStats& s) { return double(s.maintenance_runs_total); }},
      {"keel_pool_hook_exceptions_total", "Hook calls that threw (caught).", true,
       [](const PoolStats& s) { return double(s.hook_exceptions_total); }},
  };
  for (const Series& series : kSeries) {
    auto read = [stats, f = series.read] { return f(stats()); };
    auto reg = series.counter ? registry.AddCounterCallback(series.name, series.help, labels, read)
                              : registry.AddGaugeCallback(series.name, series.help, labels, read);
    if (!reg.ok()) return reg.status();
    out.push_back(std::move(*reg));
  }
  auto h = registry.AddHistogram("keel_pool_acquire_seconds",
                                 "Time from Acquire to a lease (successful acquires).",
                                 DefaultLatencyBuckets(), labels);
  if (!h.ok()) return h.status();
  *histogram = *h;
  return out;
}

}  // namespace keel::pool_internal
