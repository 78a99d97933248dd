// keel/overload/fault_injection_stage.h: a FaultInjection as a Pipeline stage.
//
// Defines `keel::overload::FaultInjectionStage<T>` (a keel::Policy<T>). Each call through the
// stage is decided once (FaultInjection::Decide); an injected fault acts on the stages inside
// it, as a faulty dependency would: put it innermost, next to the call, to test every policy
// around the call (a Timeout placed inside it bounds the injected wait, as it bounds the call).
// Apply waits on the calling thread (FaultInjection::Inject); ApplyAsync never holds a thread:
// an injected latency or hang is a sleep on the pipeline's Timer (a cancellation token is not
// watched there: the hang ends at the deadline or max_hang), and an error is a ready future.
//
// Thread safety: thread-safe. REQUIRES: the FaultInjection outlives the pipeline.
//
//   auto pipeline = keel::Pipeline<Row>::Builder()
//                       .Add(retry)
//                       .Add(timeout)
//                       .Add(keel::overload::FaultInjectionStage<Row>::Make(*chaos))
//                       .Build();
#pragma once

#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/async/timer.h"
#include "keel/internal/time_math.h"
#include "keel/overload/fault_injection.h"
#include "keel/resilience/pipeline.h"

namespace keel::overload {

template <typename T>
class FaultInjectionStage final : public Policy<T> {
 public:
  explicit FaultInjectionStage(FaultInjection& faults) : faults_(faults) {}

  // The stage, ready for Pipeline<T>::Builder::Add.
  static std::shared_ptr<const Policy<T>> Make(FaultInjection& faults) {
    return std::make_shared<FaultInjectionStage>(faults);
  }

  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    absl::Status injected = faults_.Inject(ctx);
    if (!injected.ok()) return injected;
    return next(ctx);
  }

  bool SupportsAsync() const override { return true; }
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer& timer) const override {
    const std::optional<FaultInjection::Fault> fault = faults_.Decide(ctx);
    if (!fault) return next(ctx);
    using Fault = FaultInjection::Fault;
    if (*fault == Fault::kError) {
      return Future<T>::Ready(faults_.FaultStatus(*fault, Duration::zero()));
    }
    const Duration wait = faults_.WaitFor(*fault, ctx.deadline);
    const bool runs = *fault == Fault::kLatency && wait < ctx.deadline.Remaining();
    Promise<T> promise;
    Future<T> out = promise.future();
    timer.Schedule(
        internal::AddSaturating(timer.clock().Now(), wait),
        [this, fault = *fault, wait, runs, ctx, next, promise = std::move(promise)]() mutable {
          if (!runs) {
            promise.Set(faults_.FaultStatus(fault, wait));
            return;
          }
          next(ctx).Then([promise = std::move(promise)](absl::StatusOr<T> r) mutable {
            promise.Set(std::move(r));
          });
        });
    return out;
  }

 private:
  FaultInjection& faults_;
};

}  // namespace keel::overload
