// keel::Future consumed by Then and co_await: exactly once, on the right thread or executor,
// CANCELLED for a dropped promise. No sleeps: ManualExecutor runs what was posted.
#include "keel/async/future.h"

#include <catch2/catch.hpp>
#include <coroutine>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "keel/async/task.h"

namespace keel {
namespace {

TEST_CASE("future Then runs once with the result, set before or after", "[async]") {
  SECTION("set after Then: runs on the thread that sets") {
    Promise<int> p;
    int calls = 0;
    std::thread::id ran_on;
    absl::StatusOr<int> got;
    p.future().Then([&](absl::StatusOr<int> r) {
      ++calls;
      ran_on = std::this_thread::get_id();
      got = std::move(r);
    });
    CHECK(calls == 0);
    std::thread setter([&] { p.Set(41 + 1); });
    const std::thread::id setter_id = setter.get_id();
    setter.join();
    CHECK(calls == 1);
    CHECK(ran_on == setter_id);
    CHECK(got.value() == 42);
  }
  SECTION("already set: runs before Then returns") {
    Future<std::string> f = Future<std::string>::Ready(std::string("ready"));
    std::string got;
    f.Then([&](absl::StatusOr<std::string> r) { got = *r; });
    CHECK(got == "ready");
  }
}

TEST_CASE("future Then posts to its executor, a throwing callback is dropped", "[async]") {
  ManualExecutor executor;
  Promise<void> p;
  int calls = 0;
  p.future().Then(executor, [&](absl::Status s) {
    ++calls;
    CHECK(s.ok());
    throw std::runtime_error("user code");
  });
  p.Set(absl::OkStatus());
  CHECK(calls == 0);  // posted, not run
  CHECK(executor.RunPending() == 1);
  CHECK(calls == 1);
}

TEST_CASE("future is consumed once: Get after Then fails, Then after Get fails", "[async]") {
  Promise<int> p;
  Future<int> f = p.future();
  f.Then([](absl::StatusOr<int>) {});
  CHECK(f.Get(Deadline::Infinite()).status().code() == absl::StatusCode::kFailedPrecondition);
  p.Set(1);

  Future<int> g = Future<int>::Ready(2);
  CHECK(g.Get().value() == 2);
  absl::Status second;
  g.Then([&](absl::StatusOr<int> r) { second = r.status(); });
  CHECK(second.code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("a dropped promise completes its callback with CANCELLED", "[async]") {
  absl::Status got;
  {
    Promise<int> p;
    p.future().Then([&](absl::StatusOr<int> r) { got = r.status(); });
  }
  CHECK(got.code() == absl::StatusCode::kCancelled);
}

// A coroutine that awaits `f` and records what it got.
Task<int> AwaitOne(Future<int> f, std::thread::id* resumed_on) {
  absl::StatusOr<int> r = co_await std::move(f);
  *resumed_on = std::this_thread::get_id();
  if (!r.ok()) co_return r.status();
  co_return *r * 2;
}

TEST_CASE("co_await of a future resumes on the completing thread with the result", "[async]") {
  Promise<int> p;
  std::thread::id resumed_on;
  Future<int> out = AwaitOne(p.future(), &resumed_on).Start();
  CHECK_FALSE(out.ready());  // suspended on the future
  std::thread setter([&] { p.Set(21); });
  const std::thread::id setter_id = setter.get_id();
  setter.join();
  CHECK(out.Get().value() == 42);
  CHECK(resumed_on == setter_id);
}

TEST_CASE("co_await of a ready future does not suspend", "[async]") {
  std::thread::id resumed_on;
  Future<int> out = AwaitOne(Future<int>::Ready(5), &resumed_on).Start();
  CHECK(out.ready());
  CHECK(out.Get().value() == 10);
  CHECK(resumed_on == std::this_thread::get_id());
}

Task<int> AwaitVia(Future<int> f, Executor& executor) {
  absl::StatusOr<int> r = co_await std::move(f).Via(executor);
  co_return r;
}

TEST_CASE("co_await ... Via(executor) resumes on the executor, ready or not", "[async]") {
  ManualExecutor executor;
  SECTION("not ready yet") {
    Promise<int> p;
    Future<int> out = AwaitVia(p.future(), executor).Start();
    p.Set(7);
    CHECK_FALSE(out.ready());  // resumption posted, not run
    CHECK(executor.RunPending() == 1);
    CHECK(out.Get().value() == 7);
  }
  SECTION("already ready") {
    Future<int> out = AwaitVia(Future<int>::Ready(8), executor).Start();
    CHECK_FALSE(out.ready());
    CHECK(executor.RunPending() == 1);
    CHECK(out.Get().value() == 8);
  }
}

TEST_CASE("a coroutine awaiting a dropped promise resumes with CANCELLED", "[async]") {
  std::thread::id resumed_on;
  Future<int> out = [&] {
    Promise<int> p;
    return AwaitOne(p.future(), &resumed_on).Start();
  }();  // the promise is gone: the coroutine resumed and finished
  CHECK(out.Get().status().code() == absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace keel
