#include "keel/overload/adaptive_throttle.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "overload/criticality_share.h"

namespace keel::overload {

bool BackendAccepted(const absl::Status& status) {
  return !absl::IsResourceExhausted(status) && !absl::IsUnavailable(status);
}

absl::StatusOr<std::unique_ptr<AdaptiveThrottle>> AdaptiveThrottle::Create(
    Options options, Clock& clock, MetricsRegistry* metrics) {
  return CreateImpl(std::move(options), clock, std::nullopt, metrics);
}

absl::StatusOr<std::unique_ptr<AdaptiveThrottle>> AdaptiveThrottle::Create(
    Options options, Clock& clock, absl::BitGenRef gen, MetricsRegistry* metrics) {
  return CreateImpl(std::move(options), clock, gen, metrics);
}

absl::StatusOr<std::unique_ptr<AdaptiveThrottle>> AdaptiveThrottle::CreateImpl(
    Options options, Clock& clock, std::optional<absl::BitGenRef> gen, MetricsRegistry* metrics) {
  namespace ki = keel::internal;
  const ki::OptionsOf of("adaptive throttle", options.name);
  if (options.name.empty()) return ki::InvalidOption(of, "name", "non-empty", "\"\"");
  if (!(options.k >= 1 && std::isfinite(options.k))) {
    return ki::InvalidOption(of, "k", ">= 1", options.k);
  }
  KEEL_RETURN_IF_ERROR(ki::ValidateCriticalityShare(of, options.criticality_share));
  KEEL_RETURN_IF_ERROR(ki::RequirePositive(of, "window", options.window));
  if (options.buckets < 1 || options.buckets > 3600) {
    return ki::InvalidOption(of, "buckets", "in [1, 3600]", options.buckets);
  }
  if (options.window / options.buckets < std::chrono::milliseconds(1)) {
    return ki::InvalidOption(of, "window",
                             ki::StrCat(">= 1ms per bucket (", options.buckets, " buckets)"),
                             options.window);
  }
  std::unique_ptr<AdaptiveThrottle> t(new AdaptiveThrottle(std::move(options), clock, gen));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(t->RegisterMetrics(*metrics));
  return t;
}

AdaptiveThrottle::AdaptiveThrottle(Options options, Clock& clock,
                                   std::optional<absl::BitGenRef> gen)
    : options_(std::move(options)),
      clock_(clock),
      gen_(gen),
      origin_(clock.Now()),
      bucket_width_ns_((options_.window / options_.buckets).count()),
      buckets_(options_.buckets),
      ring_(static_cast<size_t>(options_.buckets)),
      next_boundary_(bucket_width_ns_) {
  for (int c = 0; c < kLevels; ++c) {
    k_[c] = std::max(1.0, options_.k * options_.criticality_share[c]);
  }
}

AdaptiveThrottle::~AdaptiveThrottle() = default;

absl::Status AdaptiveThrottle::RegisterMetrics(MetricsRegistry& metrics) {
  const Labels labels = {{"name", options_.name}};
  auto with = [&](std::initializer_list<std::pair<const char*, const char*>> extra) {
    Labels l = labels;
    for (const auto& [k, v] : extra) l.emplace_back(k, v);
    return l;
  };
  auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  const char* requests_help = "Calls attempted through the throttle, by local decision.";
  const char* probability_help = "The current local rejection probability.";
  for (int c = 0; c < kLevels; ++c) {
    const char* level = CriticalityName(static_cast<Criticality>(c));
    KEEL_RETURN_IF_ERROR(
        keep(metrics.AddCounterCallback("keel_adaptive_throttle_requests_total", requests_help,
                                        with({{"criticality", level}, {"decision", "admitted"}}),
                                        [this, c] { return double(Stats().admitted_total[c]); })));
    KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
        "keel_adaptive_throttle_requests_total", requests_help,
        with({{"criticality", level}, {"decision", "rejected"}}),
        [this, c] { return double(rejected_total_[c].load(std::memory_order_relaxed)); })));
    KEEL_RETURN_IF_ERROR(keep(metrics.AddGaugeCallback(
        "keel_adaptive_throttle_rejection_probability", probability_help,
        with({{"criticality", level}}),
        [this, c] { return RejectionProbability(static_cast<Criticality>(c)); })));
  }
  const char* responses_help = "Admitted calls by recorded backend answer.";
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_adaptive_throttle_responses_total", responses_help, with({{"result", "accepted"}}),
      [this] { return double(Stats().accepted_total); })));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_adaptive_throttle_responses_total", responses_help, with({{"result", "rejected"}}),
      [this] { return double(Stats().backend_rejected_total); })));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_adaptive_throttle_responses_total", responses_help, with({{"result", "ignored"}}),
      [this] { return double(Stats().ignored_total); })));
  const char* window_help = "Requests and accepts counted in the window.";
  KEEL_RETURN_IF_ERROR(keep(metrics.AddGaugeCallback("keel_adaptive_throttle_window", window_help,
                                                     with({{"count", "requests"}}),
                                                     [this] { return double(Stats().requests); })));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddGaugeCallback("keel_adaptive_throttle_window", window_help,
                                                     with({{"count", "accepts"}}),
                                                     [this] { return double(Stats().accepts); })));
  return absl::OkStatus();
}

int64_t AdaptiveThrottle::SinceOrigin(TimePoint now) const {
  const int64_t since = (now - origin_).count();
  return since < 0 ? 0 : since;
}

void AdaptiveThrottle::AdvanceToLocked(int64_t since) const {
  // The common case, a call within the newest bucket, costs one comparison, not a division.
  if (since < next_boundary_) return;
  AdvanceLocked(since / bucket_width_ns_);
}

void AdaptiveThrottle::AdvanceLocked(int64_t b) const {
  if (b <= newest_) return;
  if (b - newest_ >= buckets_) {
    for (Bucket& bucket : ring_) bucket = Bucket{};
    requests_ = {};
    accepts_ = {};
  } else {
    for (int64_t i = newest_ + 1; i <= b; ++i) {
      Bucket& bucket = ring_[static_cast<size_t>(i % buckets_)];
      for (int c = 0; c < kLevels; ++c) {
        requests_[c] -= bucket.requests[c];
        accepts_[c] -= bucket.accepts[c];
      }
      bucket = Bucket{};
    }
  }
  newest_ = b;
  next_boundary_ = (b + 1) * bucket_width_ns_;
}

double AdaptiveThrottle::ProbabilityLocked(Criticality c, int64_t* requests_out,
                                           int64_t* accepts_out) const {
  const int level = static_cast<int>(c);
  int64_t requests = 0;
  int64_t accepts = 0;
  for (int i = 0; i <= level; ++i) {
    requests += requests_[i];
    accepts += accepts_[i];
  }
  if (requests_out != nullptr) *requests_out = requests;
  if (accepts_out != nullptr) *accepts_out = accepts;
  const double excess = static_cast<double>(requests) - k_[level] * static_cast<double>(accepts);
  return excess <= 0 ? 0.0 : excess / static_cast<double>(requests + 1);
}

absl::StatusOr<AdaptiveThrottle::Ticket> AdaptiveThrottle::TryAcquire(Criticality c,
                                                                      TimePoint now) {
  const int level = static_cast<int>(c);
  const int64_t since = SinceOrigin(now);
  double p;
  int64_t bucket;
  bool changed;
  int64_t requests;  // what p was computed on
  int64_t accepts;
  {
    internal::SpinLockGuard guard(mu_);
    AdvanceToLocked(since);
    p = ProbabilityLocked(c, &requests, &accepts);
    bucket = newest_;  // an older `now` counts in the newest bucket
    ++ring_[static_cast<size_t>(bucket % buckets_)].requests[level];
    ++requests_[level];
    const bool throttling = p > 0;
    changed = options_.on_throttling_change && throttling != throttling_[level];
    throttling_[level] = throttling;
    if (p == 0) ++admitted_total_[level];
  }
  if (changed) DeliverThrottlingChanges();
  if (p == 0) return Ticket(this, bucket, c);
  thread_local absl::InsecureBitGen thread_gen;
  absl::BitGenRef gen = gen_.has_value() ? *gen_ : absl::BitGenRef(thread_gen);
  if (absl::Uniform(gen, 0.0, 1.0) >= p) {
    internal::SpinLockGuard guard(mu_);
    ++admitted_total_[level];
    return Ticket(this, bucket, c);
  }
  rejected_total_[level].fetch_add(1, std::memory_order_relaxed);
  return RejectedError(c, p, requests, accepts);
}

absl::Status AdaptiveThrottle::RejectedError(Criticality c, double p, int64_t requests,
                                             int64_t accepts) const {
  const int level = static_cast<int>(c);
  const std::string who =
      c == Criticality::kCritical ? std::string() : internal::StrCat(" ", CriticalityName(c));
  const std::string scope = level == 0 ? std::string(CriticalityName(c))
                                       : internal::StrCat(CriticalityName(c), " or more critical");
  char probability[16];
  std::snprintf(probability, sizeof probability, "%.2f", p);
  return absl::ResourceExhaustedError(internal::StrCat(
      "adaptive throttle \"", options_.name, "\": rejected", who, " call locally with probability ",
      probability, " (", requests, " requests, ", accepts, " accepts of ", scope,
      " calls in the last ", internal::FormatDuration(options_.window), ", K ", k_[level], ")"));
}

bool AdaptiveThrottle::Classify(const absl::Status& status) {
  if (!options_.accepted) return BackendAccepted(status);
  try {
    return options_.accepted(status);
  } catch (...) {
    classifier_exceptions_.fetch_add(1, std::memory_order_relaxed);
    return true;  // never throttle on a classifier's bug
  }
}

void AdaptiveThrottle::Ticket::Record(const absl::Status& status) {
  if (owner_ == nullptr) return;
  Finish(owner_->Classify(status) ? kAccepted : kRejected);
}

void AdaptiveThrottle::Complete(const Ticket& ticket, Ticket::Outcome outcome) {
  const int level = static_cast<int>(ticket.criticality_);
  internal::SpinLockGuard guard(mu_);
  // The request's bucket is still in the window unless the ring has moved past it.
  const bool in_window = ticket.bucket_ > newest_ - buckets_;
  Bucket& bucket = ring_[static_cast<size_t>(ticket.bucket_ % buckets_)];
  switch (outcome) {
    case Ticket::kAccepted:
      ++accepted_total_;
      if (in_window) {
        ++bucket.accepts[level];
        ++accepts_[level];
      }
      break;
    case Ticket::kRejected:
      ++backend_rejected_total_;
      break;
    case Ticket::kIgnored:
      ++ignored_total_;
      if (in_window) {
        --bucket.requests[level];
        --requests_[level];
      }
      break;
  }
}

void AdaptiveThrottle::DeliverThrottlingChanges() {
  mu_.Lock();
  // One deliverer at a time keeps each criticality's calls in order; changes made meanwhile are
  // delivered by the loop (a flip and a flip back while it runs are merged into nothing).
  if (delivering_) {
    mu_.Unlock();
    return;
  }
  delivering_ = true;
  for (;;) {
    int level = 0;
    while (level < kLevels && delivered_[level] == throttling_[level]) ++level;
    if (level == kLevels) break;
    const bool throttling = throttling_[level];
    delivered_[level] = throttling;
    mu_.Unlock();
    // User code: an exception is counted and dropped, never left to wedge delivery.
    try {
      options_.on_throttling_change(static_cast<Criticality>(level), throttling);
    } catch (...) {
      listener_exceptions_.fetch_add(1, std::memory_order_relaxed);
    }
    mu_.Lock();
  }
  delivering_ = false;
  mu_.Unlock();
}

double AdaptiveThrottle::RejectionProbability(Criticality c) const {
  const int64_t since = SinceOrigin(clock_.Now());
  internal::SpinLockGuard guard(mu_);
  AdvanceToLocked(since);
  return ProbabilityLocked(c);
}

AdaptiveThrottleStats AdaptiveThrottle::Stats() const {
  const int64_t since = SinceOrigin(clock_.Now());
  AdaptiveThrottleStats s;
  {
    internal::SpinLockGuard guard(mu_);
    AdvanceToLocked(since);
    for (int c = 0; c < kLevels; ++c) {
      s.requests += requests_[c];
      s.accepts += accepts_[c];
      s.rejection_probability[c] = ProbabilityLocked(static_cast<Criticality>(c));
      s.admitted_total[c] = admitted_total_[c];
    }
    s.accepted_total = accepted_total_;
    s.backend_rejected_total = backend_rejected_total_;
    s.ignored_total = ignored_total_;
  }
  for (int c = 0; c < kLevels; ++c) {
    s.rejected_total[c] = rejected_total_[c].load(std::memory_order_relaxed);
  }
  s.listener_exceptions_total = listener_exceptions_.load(std::memory_order_relaxed);
  s.classifier_exceptions_total = classifier_exceptions_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keel::overload
