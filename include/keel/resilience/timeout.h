// keel/resilience/timeout.h: bound how long a call may take.
//
// Defines `keel::Timeout`, the cooperative timeout: the callee receives the deadline
// `Deadline::Min(outer, now + timeout)` in its CallContext and is trusted to honour it (keel's
// Redis and PostgreSQL clients turn it into socket and statement timeouts). It costs one clock
// read and never starts a thread. A callee that ignores its deadline is not stopped: C++ cannot
// kill a blocked thread. For such callees, ExecutorTimeout (executor_timeout.h) runs the call on
// a ThreadPoolBulkhead, returns DEADLINE_EXCEEDED at the deadline and signals a CancellationToken.
//
// Per attempt versus total: a Timeout inside a Retry (Pipeline order ... Retry, Timeout, call)
// bounds each attempt; the deadline the caller passes to Execute bounds the whole call, sleeps
// included. Both usually exist: 200 ms per attempt within a 1 s request budget.
//
// Thread safety: thread-safe (immutable).
//
//   auto timeout = keel::Timeout::Create({.name = "db", .timeout = 200ms}).value();
//   absl::StatusOr<Row> row = timeout.Execute(request_deadline, [&](const keel::CallContext& ctx) {
//     return db.QueryRow(sql, ctx.deadline);   // at most 200 ms, never past request_deadline
//   });
#pragma once

#include <chrono>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/resilience/call_context.h"

namespace keel {

class Timeout {
 public:
  struct Options {
    // Names the policy in error messages. Default: "timeout".
    std::string name = "timeout";
    // The longest a call may take. Set it from the callee's normal latency (p99.9 plus margin),
    // not from the caller's patience, which the outer deadline already expresses. Default: 1 s.
    // Must be > 0.
    Duration timeout = std::chrono::seconds(1);
  };

  // INVALID_ARGUMENT naming the field ("timeout.timeout must be > 0, got 0ms").
  static absl::StatusOr<Timeout> Create(Options options, Clock& clock = SteadyClock());

  // The context the callee gets: `ctx` with deadline Min(ctx.deadline, now + timeout).
  CallContext Narrow(const CallContext& ctx) const {
    CallContext inner = ctx;
    inner.deadline = Deadline::Min(ctx.deadline, Deadline::After(options_.timeout, *clock_));
    return inner;
  }

  // Runs `fn(const CallContext&)` with the narrowed deadline and returns what it returns. The
  // result is not second-guessed: a callee that returns a value late still returns it, and
  // DEADLINE_EXCEEDED comes from the callee.
  template <typename F>
  auto Execute(const CallContext& ctx, F&& fn) const {
    return std::forward<F>(fn)(Narrow(ctx));
  }
  template <typename F>
  auto Execute(Deadline deadline, F&& fn) const {
    CallContext ctx;
    ctx.deadline = deadline;
    return Execute(ctx, std::forward<F>(fn));
  }

  const Options& options() const { return options_; }

 private:
  Timeout(Options options, Clock& clock) : options_(std::move(options)), clock_(&clock) {}

  Options options_;
  Clock* clock_;
};

}  // namespace keel
