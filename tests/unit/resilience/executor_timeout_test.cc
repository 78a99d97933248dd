#include "keel/resilience/executor_timeout.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <string>
#include <thread>

// GCC 12 warns about fields a designated initializer leaves to their defaults (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;
using keel::CallContext;
using keel::ExecutorTimeout;

TEST_CASE("executor timeout returns the call's result with a narrowed deadline and a token") {
  keel::ManualClock clock;
  auto pool = keel::ThreadPoolBulkhead::Create({.threads = 1, .queue_capacity = 1}, clock).value();
  auto timeout = ExecutorTimeout::Create({.timeout = 200ms}, *pool, clock).value();
  const keel::TimePoint start = clock.Now();
  auto r = timeout.Execute(CallContext{.deadline = keel::Deadline::After(1s, clock), .attempt = 2},
                           [start](const CallContext& ctx) -> absl::StatusOr<int> {
                             if (ctx.deadline.time() != start + 200ms) return -1;
                             if (ctx.attempt != 2 || ctx.cancellation.cancelled()) return -2;
                             return 7;
                           });
  REQUIRE(r.ok());
  CHECK(*r == 7);
}

TEST_CASE("executor timeout returns DEADLINE_EXCEEDED at the deadline and cancels the call") {
  keel::ManualClock clock;
  auto pool = keel::ThreadPoolBulkhead::Create({.name = "legacy", .threads = 1}, clock).value();
  auto timeout =
      ExecutorTimeout::Create({.name = "report", .timeout = 200ms}, *pool, clock).value();
  auto saw_cancel = std::make_shared<std::atomic<bool>>(false);
  absl::Status result;
  std::thread caller([&] {
    result = timeout.Execute(CallContext{}, [saw_cancel](const CallContext& ctx) {
      // A callee that ignores its deadline but polls its token.
      while (!ctx.cancellation.cancelled()) std::this_thread::yield();
      saw_cancel->store(true);
      return absl::CancelledError("report: cancelled");
    });
  });
  clock.AwaitSleepers(1);  // the caller waits in Future::Get on the manual clock
  clock.Advance(200ms);
  caller.join();
  CHECK(absl::IsDeadlineExceeded(result));
  CHECK(std::string(result.message()).find("timeout \"report\": no result within 200ms") !=
        std::string::npos);
  pool->Shutdown(keel::ThreadPoolBulkhead::ShutdownMode::kDrain);  // waits for the orphan
  CHECK(saw_cancel->load());
}

TEST_CASE("executor timeout passes the call's own DEADLINE_EXCEEDED through") {
  keel::ManualClock clock;
  auto pool = keel::ThreadPoolBulkhead::Create({.threads = 1}, clock).value();
  auto timeout = ExecutorTimeout::Create({.timeout = 1s}, *pool, clock).value();
  absl::Status s = timeout.Execute(CallContext{}, [](const CallContext&) {
    return absl::DeadlineExceededError("db: statement timeout");
  });
  CHECK(s == absl::DeadlineExceededError("db: statement timeout"));
}

TEST_CASE("executor timeout rejects a non-positive timeout naming the field") {
  auto pool = keel::ThreadPoolBulkhead::Create({.threads = 1}).value();
  auto r = ExecutorTimeout::Create({.timeout = -1ms}, *pool);
  CHECK(absl::IsInvalidArgument(r.status()));
  CHECK(std::string(r.status().message()) == "timeout \"timeout\": timeout must be > 0, got -1ms");
}
