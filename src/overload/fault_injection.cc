#include "keel/overload/fault_injection.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/time_math.h"
#include "keel/internal/validate.h"

namespace keel::overload {
namespace {

constexpr const char* kFaultNames[] = {"latency", "error", "hang"};

}  // namespace

absl::StatusOr<std::unique_ptr<FaultInjection>> FaultInjection::Create(Options options,
                                                                       Clock& clock,
                                                                       MetricsRegistry* metrics) {
  return CreateImpl(std::move(options), clock, std::nullopt, metrics);
}

absl::StatusOr<std::unique_ptr<FaultInjection>> FaultInjection::Create(Options options,
                                                                       Clock& clock,
                                                                       absl::BitGenRef gen,
                                                                       MetricsRegistry* metrics) {
  return CreateImpl(std::move(options), clock, gen, metrics);
}

absl::StatusOr<std::unique_ptr<FaultInjection>> FaultInjection::CreateImpl(
    Options options, Clock& clock, std::optional<absl::BitGenRef> gen, MetricsRegistry* metrics) {
  namespace ki = keel::internal;
  const ki::OptionsOf of("fault injection", options.name);
  if (options.name.empty()) return ki::InvalidOption(of, "name", "non-empty", "\"\"");
  if (!(options.injection_rate >= 0 && options.injection_rate <= 1)) {
    return ki::InvalidOption(of, "injection_rate", "in [0, 1]", options.injection_rate);
  }
  KEEL_RETURN_IF_ERROR(ki::RequirePositive(of, "latency", options.latency));
  KEEL_RETURN_IF_ERROR(ki::RequirePositive(of, "max_hang", options.max_hang));
  if (options.error_code == absl::StatusCode::kOk) {
    return ki::InvalidOption(of, "error_code", "an error", "OK");
  }
  std::unique_ptr<FaultInjection> f(new FaultInjection(std::move(options), clock, gen));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(f->RegisterMetrics(*metrics));
  return f;
}

FaultInjection::FaultInjection(Options options, Clock& clock, std::optional<absl::BitGenRef> gen)
    : options_(std::move(options)), clock_(clock), gen_(gen), enabled_(options_.enabled) {}

FaultInjection::~FaultInjection() = default;

absl::Status FaultInjection::RegisterMetrics(MetricsRegistry& metrics) {
  const Labels labels = {{"name", options_.name}};
  KEEL_ASSIGN_OR_RETURN(
      auto calls,
      metrics.AddCounterCallback(
          "keel_fault_injection_calls_total", "Calls through the fault injection policy.", labels,
          [this] { return double(calls_.load(std::memory_order_relaxed)); }));
  registrations_.push_back(std::move(calls));
  for (size_t i = 0; i < injected_.size(); ++i) {
    Labels l = labels;
    l.emplace_back("fault", kFaultNames[i]);
    KEEL_ASSIGN_OR_RETURN(
        auto injected,
        metrics.AddCounterCallback(
            "keel_fault_injection_injected_total", "Faults injected, by kind.", l,
            [this, i] { return double(injected_[i].load(std::memory_order_relaxed)); }));
    registrations_.push_back(std::move(injected));
  }
  return absl::OkStatus();
}

std::optional<FaultInjection::Fault> FaultInjection::Decide(const CallContext& ctx) {
  calls_.fetch_add(1, std::memory_order_relaxed);
  if (!enabled()) return std::nullopt;
  bool inject;
  if (options_.should_inject) {
    try {
      inject = options_.should_inject(ctx);
    } catch (...) {
      predicate_exceptions_.fetch_add(1, std::memory_order_relaxed);
      inject = false;
    }
  } else if (options_.injection_rate <= 0) {
    inject = false;
  } else if (options_.injection_rate >= 1) {
    inject = true;
  } else {
    thread_local absl::InsecureBitGen thread_gen;
    absl::BitGenRef gen = gen_.has_value() ? *gen_ : absl::BitGenRef(thread_gen);
    inject = absl::Uniform(gen, 0.0, 1.0) < options_.injection_rate;
  }
  if (!inject) return std::nullopt;
  injected_[static_cast<size_t>(options_.fault)].fetch_add(1, std::memory_order_relaxed);
  return options_.fault;
}

Duration FaultInjection::WaitFor(Fault fault, const Deadline& deadline) const {
  Duration wait;
  switch (fault) {
    case Fault::kError:
      return Duration::zero();
    case Fault::kLatency:
      wait = options_.latency;
      break;
    case Fault::kHang:
      wait = deadline.IsInfinite() ? options_.max_hang : Duration::max();
      break;
  }
  if (!deadline.IsInfinite())
    wait = std::min(wait, std::max(Duration::zero(), deadline.Remaining()));
  return wait;
}

absl::Status FaultInjection::FaultStatus(Fault fault, Duration waited) const {
  using internal::FormatDuration;
  using internal::StrCat;
  const std::string prefix = StrCat("fault injection \"", options_.name, "\": ");
  switch (fault) {
    case Fault::kError:
      return absl::Status(options_.error_code, StrCat(prefix, options_.error_message));
    case Fault::kLatency:
      return absl::DeadlineExceededError(
          StrCat(prefix, "injected latency of ", FormatDuration(options_.latency),
                 " reached the deadline after ", FormatDuration(waited)));
    case Fault::kHang:
      break;
  }
  return absl::DeadlineExceededError(
      StrCat(prefix, "injected hang, no answer after ", FormatDuration(waited)));
}

absl::Status FaultInjection::Inject(const CallContext& ctx) {
  const std::optional<Fault> fault = Decide(ctx);
  if (!fault) return absl::OkStatus();
  if (*fault == Fault::kError) return FaultStatus(*fault, Duration::zero());
  const Duration wait = WaitFor(*fault, ctx.deadline);
  if (!ctx.cancellation.SleepUntil(clock_, internal::AddSaturating(clock_.Now(), wait))) {
    return absl::CancelledError(internal::StrCat("fault injection \"", options_.name,
                                                 "\": the call was cancelled during an injected ",
                                                 kFaultNames[static_cast<size_t>(*fault)]));
  }
  // A latency shorter than what the deadline left lets the call run.
  if (*fault == Fault::kLatency && wait == options_.latency &&
      (ctx.deadline.IsInfinite() || !ctx.deadline.Expired())) {
    return absl::OkStatus();
  }
  return FaultStatus(*fault, wait);
}

FaultInjectionStats FaultInjection::Stats() const {
  FaultInjectionStats s;
  s.enabled = enabled();
  s.calls_total = calls_.load(std::memory_order_relaxed);
  for (size_t i = 0; i < injected_.size(); ++i) {
    s.injected_total[i] = injected_[i].load(std::memory_order_relaxed);
  }
  s.predicate_exceptions_total = predicate_exceptions_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keel::overload
