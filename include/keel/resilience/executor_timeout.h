// keel/resilience/executor_timeout.h: a timeout for callees that do not honour their deadline.
//
// Defines `keel::ExecutorTimeout`. It runs the call on a ThreadPoolBulkhead and waits for the
// result until Min(caller's deadline, now + timeout). If the deadline passes first it returns
// DEADLINE_EXCEEDED at once and signals the CancellationToken the call received in its
// CallContext. C++ cannot stop a thread: the call keeps running, holding a pool thread, until it
// returns or notices the token. That orphaned work is the price of this timeout; the cooperative
// Timeout (timeout.h) has none, so prefer it whenever the callee takes a deadline.
//
// Because the abandoned call may outlive the caller's stack, `fn` is moved into the task and must
// own (capture by value) everything it touches. For the same reason ExecutorTimeout is not a
// Pipeline stage: use it as the pipeline's call (docs/timeout.md).
//
// Thread safety: thread-safe. Each Execute allocates (the task and its cancellation flag).
//
//   auto timeout = keel::ExecutorTimeout::Create({.name = "legacy", .timeout = 200ms}, *pool);
//   absl::StatusOr<Report> r = timeout->Execute(ctx, [id](const keel::CallContext& c) {
//     return LegacyReport(id, c.cancellation);   // polls c.cancellation.cancelled()
//   });
#pragma once

#include <chrono>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/format.h"
#include "keel/internal/status_of.h"
#include "keel/internal/strings.h"
#include "keel/resilience/call_context.h"
#include "keel/resilience/cancellation.h"
#include "keel/resilience/thread_pool_bulkhead.h"

namespace keel {

class ExecutorTimeout {
 public:
  struct Options {
    // Names the policy in error messages. Default: "timeout".
    std::string name = "timeout";
    // The longest the caller waits for the call. Default: 1 s. Must be > 0.
    Duration timeout = std::chrono::seconds(1);
  };

  // INVALID_ARGUMENT naming the field ("executor_timeout.timeout must be > 0, got 0ms").
  // `pool` runs the calls and must outlive the ExecutorTimeout; `clock` must be the pool's clock.
  static absl::StatusOr<ExecutorTimeout> Create(Options options, ThreadPoolBulkhead& pool,
                                                Clock& clock = SteadyClock());

  // Runs `fn(const CallContext&)` (returning absl::Status or absl::StatusOr<T>) on the pool with
  // `ctx`'s deadline narrowed to now + timeout and a fresh cancellation token (the caller's token
  // is not forwarded: poll it in `fn` if you need both). Returns fn's result, or:
  //   DEADLINE_EXCEEDED `timeout "name": no result within 200ms ...` when the deadline passed
  //   first (the token is then cancelled);
  //   RESOURCE_EXHAUSTED / CANCELLED when the pool is full or shut down (fn never runs).
  template <typename F>
  auto Execute(const CallContext& ctx, F fn) const {
    CancellationSource source;
    CallContext inner = ctx;
    inner.deadline = Deadline::Min(ctx.deadline, Deadline::After(options_.timeout, *clock_));
    inner.cancellation = source.token();
    auto future = pool_->Submit([fn = std::move(fn), inner]() mutable { return fn(inner); });
    auto result = future.Get(inner.deadline);
    // A DEADLINE_EXCEEDED with the result not ready is Get giving up; one with the result
    // retrieved (ready() is then true) is the call's own answer and passes through.
    if (internal::StatusOf(result).code() == absl::StatusCode::kDeadlineExceeded &&
        !future.ready()) {
      source.Cancel();
      return decltype(result)(absl::DeadlineExceededError(internal::StrCat(
          "timeout \"", options_.name, "\": no result within ",
          internal::FormatDuration(options_.timeout), " on thread pool \"", pool_->name(),
          "\"; cancellation signalled, the call may still be running")));
    }
    return result;
  }

  const Options& options() const { return options_; }

 private:
  ExecutorTimeout(Options options, ThreadPoolBulkhead& pool, Clock& clock)
      : options_(std::move(options)), pool_(&pool), clock_(&clock) {}

  Options options_;
  ThreadPoolBulkhead* pool_;
  Clock* clock_;
};

}  // namespace keel
