#include "keel/overload/gradient_limit.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/random/distributions.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"

namespace keel::overload {

absl::Status GradientLimit::Validate(const Options& o) {
  namespace ki = keel::internal;
  const ki::OptionsOf of("gradient_limit");
  KEEL_RETURN_IF_ERROR(ki::RequirePositive(of, "min_rtt_interval", o.min_rtt_interval));
  KEEL_RETURN_IF_ERROR(ki::RequireAtLeast(of, "min_rtt_request_count", o.min_rtt_request_count, 1));
  if (!(o.jitter >= 0 && o.jitter <= 1))
    return ki::InvalidOption(of, "jitter", "in [0, 1]", o.jitter);
  if (!(o.min_rtt_buffer >= 0)) {
    return ki::InvalidOption(of, "min_rtt_buffer", ">= 0", o.min_rtt_buffer);
  }
  KEEL_RETURN_IF_ERROR(ki::RequireAtLeast(of, "min_concurrency", o.min_concurrency, 1));
  KEEL_RETURN_IF_ERROR(
      ki::RequireAtLeast(of, "max_concurrency", o.max_concurrency, o.min_concurrency));
  KEEL_RETURN_IF_ERROR(ki::RequireFraction(of, "sample_percentile", o.sample_percentile));
  KEEL_RETURN_IF_ERROR(ki::RequirePositive(of, "update_interval", o.update_interval));
  return ki::RequireAtLeast(of, "max_samples_per_window", o.max_samples_per_window, 1);
}

absl::StatusOr<std::unique_ptr<GradientLimit>> GradientLimit::Create(Options options,
                                                                     Clock& clock) {
  KEEL_RETURN_IF_ERROR(Validate(options));
  return std::unique_ptr<GradientLimit>(
      new GradientLimit(options, absl::BitGen(), nullptr, clock.Now()));
}

absl::StatusOr<std::unique_ptr<GradientLimit>> GradientLimit::Create(Options options,
                                                                     absl::BitGenRef random,
                                                                     Clock& clock) {
  KEEL_RETURN_IF_ERROR(Validate(options));
  return std::unique_ptr<GradientLimit>(
      new GradientLimit(options, std::nullopt, &random, clock.Now()));
}

GradientLimit::GradientLimit(Options options, std::optional<absl::BitGen> own,
                             absl::BitGenRef* random, TimePoint now)
    : options_(options),
      own_random_(std::move(own)),
      random_(random != nullptr ? *random : absl::BitGenRef(*own_random_)),
      limit_(options.min_concurrency) {
  samples_.reserve(static_cast<size_t>(options_.max_samples_per_window));
  // Envoy's constructor enters the first minRTT window at once.
  EnterMinRttWindow(now);
}

Duration GradientLimit::Jittered(Duration interval) {
  if (options_.jitter == 0) return interval;
  using std::chrono::milliseconds;
  const auto ms = std::chrono::duration_cast<milliseconds>(interval).count();
  const auto range = static_cast<uint64_t>(std::ceil(static_cast<double>(ms) * options_.jitter));
  if (range == 0) return interval;
  const uint64_t extra = absl::Uniform<uint64_t>(random_, 0, range);
  return interval + milliseconds(static_cast<int64_t>(extra));
}

void GradientLimit::EnterMinRttWindow(TimePoint now) {
  if (in_min_rtt_window()) return;
  deferred_limit_ = limit_;
  SetLimit(options_.min_concurrency);
  samples_.clear();
  seen_in_window_ = 0;
  min_rtt_epoch_ = now;
}

void GradientLimit::FinishMinRttWindow(TimePoint now) {
  if (!samples_.empty()) min_rtt_ = Percentile();
  SetLimit(deferred_limit_);
  deferred_limit_ = 0;
  next_min_rtt_at_ = now + Jittered(options_.min_rtt_interval);
  next_sample_at_ = now + options_.update_interval;
}

void GradientLimit::CloseSampleWindow() {
  if (samples_.empty()) return;
  sample_rtt_ = Percentile();
  SetLimit(CalculateNewLimit());
}

int GradientLimit::CalculateNewLimit() const {
  const double buffered = static_cast<double>(min_rtt_.count()) * (1 + options_.min_rtt_buffer);
  const double raw = buffered / static_cast<double>(sample_rtt_.count());
  const double gradient = std::max(0.5, std::min(2.0, raw));
  const double limit = limit_ * gradient;
  const double next = limit + std::sqrt(limit);
  // Envoy converts to uint32_t before clamping; the value is positive, so floor is the same.
  const double clamped =
      std::max<double>(options_.min_concurrency, std::min<double>(options_.max_concurrency, next));
  return static_cast<int>(clamped);
}

void GradientLimit::SetLimit(int limit) {
  const int old = limit_;
  limit_ = limit;
  if (!in_min_rtt_window() && old == options_.min_concurrency &&
      limit == options_.min_concurrency) {
    ++consecutive_min_;
  } else {
    consecutive_min_ = 0;
  }
  // Five windows in a row at the floor: the minRTT is probably wrong; measure it again now.
  if (consecutive_min_ >= 5) next_min_rtt_at_ = TimePoint::min();
}

void GradientLimit::AddSample(Duration rtt) {
  ++seen_in_window_;
  const auto cap = static_cast<int64_t>(options_.max_samples_per_window);
  if (seen_in_window_ <= cap) {
    samples_.push_back(rtt);
    return;
  }
  // Algorithm R: the n-th sample replaces a random slot with probability cap / n.
  const int64_t j = absl::Uniform<int64_t>(random_, 0, seen_in_window_);
  if (j < cap) samples_[static_cast<size_t>(j)] = rtt;
}

Duration GradientLimit::Percentile() {
  // Nearest rank: the smallest sample with at least `percentile` of the samples at or below it.
  const size_t n = samples_.size();
  size_t rank = static_cast<size_t>(std::ceil(options_.sample_percentile * static_cast<double>(n)));
  rank = std::clamp<size_t>(rank, 1, n);
  std::nth_element(samples_.begin(), samples_.begin() + static_cast<ptrdiff_t>(rank - 1),
                   samples_.end());
  const Duration p = samples_[rank - 1];
  samples_.clear();
  seen_in_window_ = 0;
  return p;
}

int GradientLimit::Update(const LimitSample& s) {
  if (!in_min_rtt_window()) {
    if (s.now >= next_min_rtt_at_) {
      EnterMinRttWindow(s.now);
    } else if (s.now >= next_sample_at_) {
      CloseSampleWindow();
      next_sample_at_ = s.now + options_.update_interval;
    }
  }
  // Samples of calls started before the minRTT window began may not represent it.
  if (s.start < min_rtt_epoch_) return limit_;
  AddSample(std::max(s.rtt, Duration(1)));
  if (in_min_rtt_window() && seen_in_window_ >= options_.min_rtt_request_count) {
    FinishMinRttWindow(s.now);
  }
  return limit_;
}

}  // namespace keel::overload
