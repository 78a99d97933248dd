// keel/overload/limit_algorithm.h: the interface an adaptive concurrency limit algorithm
// implements, and the sample it learns from.
//
// Defines `keel::overload::LimitSample`, `keel::overload::RttEstimates` and
// `keel::overload::LimitAlgorithm`. keel ships four algorithms, each in its own header:
// VegasLimit (vegas_limit.h), Gradient2Limit (gradient2_limit.h), GradientLimit (Envoy's gradient
// controller, gradient_limit.h) and AimdLimit (aimd_limit.h). An AdaptiveLimiter
// (adaptive_limiter.h) owns one, feeds it one sample per completed call and enforces the limit it
// returns; a custom algorithm plugs in by implementing this interface.
//
// Thread safety: an algorithm is not thread-safe. Its owner serialises every call (the
// AdaptiveLimiter holds a lock around Update, as Netflix's AbstractLimit.onSample is
// synchronized), so implementations keep plain members.
//
//   class FixedLimit final : public keel::overload::LimitAlgorithm {
//    public:
//     const char* name() const override { return "fixed"; }
//     int limit() const override { return 10; }
//     int Update(const keel::overload::LimitSample&) override { return 10; }
//     keel::overload::RttEstimates Rtt() const override { return {}; }
//   };
#pragma once

#include "keel/clock.h"

namespace keel::overload {

// One completed call, as the limiter saw it.
struct LimitSample {
  TimePoint start;  // when the call's permit was granted
  TimePoint now;    // when its outcome was recorded
  Duration rtt;     // now - start (> 0: a zero reading is recorded as 1ns)
  // Permits held when this one was granted, itself included (Netflix's `inflight`, captured at
  // acquisition): what the algorithms' "app-limited" guards compare with the limit.
  int in_flight = 0;
  // The dependency rejected or timed the call out (Netflix's `didDrop`). An ignored call (the
  // caller gave up, or the outcome says nothing about the dependency) is never sampled.
  bool dropped = false;
};

// The algorithm's view of latency, for Stats and metrics. Zero when the algorithm has no estimate
// yet (or keeps none of that kind).
struct RttEstimates {
  Duration no_load = Duration::zero();  // the latency without queueing (min / long-term RTT)
  Duration sample = Duration::zero();   // the latency the last update used (short-term RTT)
};

class LimitAlgorithm {
 public:
  virtual ~LimitAlgorithm() = default;
  // "vegas", "gradient2", "gradient" or "aimd" for keel's; used in metric labels.
  virtual const char* name() const = 0;
  // The current limit (>= 1).
  virtual int limit() const = 0;
  // Learns from one sample and returns the new limit (>= 1), which limit() then returns.
  virtual int Update(const LimitSample& sample) = 0;
  virtual RttEstimates Rtt() const = 0;
};

}  // namespace keel::overload
