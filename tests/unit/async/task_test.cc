// keel::Task: lazy, chains by co_await, turns exceptions into INTERNAL, frees its frame whether
// it ran or not (the ASan build checks for leaks and use after free).
#include "keel/async/task.h"

#include <catch2/catch.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace keel {
namespace {

Task<int> Leaf(std::vector<std::string>* log, int v) {
  log->push_back("leaf " + std::to_string(v));
  co_return v;
}

Task<int> Sum(std::vector<std::string>* log, Future<int> wait) {
  absl::StatusOr<int> a = co_await Leaf(log, 1);
  absl::StatusOr<int> w = co_await std::move(wait);
  if (!w.ok()) co_return w.status();
  absl::StatusOr<int> b = co_await Leaf(log, 2);
  co_return *a + *w + *b;
}

TEST_CASE("task is lazy, chains tasks and futures, and finishes when the future does", "[async]") {
  std::vector<std::string> log;
  Promise<int> p;
  Task<int> task = Sum(&log, p.future());
  CHECK(log.empty());  // nothing runs before it is started or awaited
  Future<int> out = std::move(task).Start();
  CHECK(log == std::vector<std::string>{"leaf 1"});  // ran to the future, suspended there
  CHECK_FALSE(out.ready());
  p.Set(10);
  CHECK(log == std::vector<std::string>{"leaf 1", "leaf 2"});
  CHECK(out.Get().value() == 13);
}

TEST_CASE("a task never started frees its frame unrun", "[async]") {
  std::vector<std::string> log;
  { Task<int> task = Leaf(&log, 3); }
  CHECK(log.empty());
}

Task<void> Throws() {
  throw std::runtime_error("bad input");
  co_return absl::OkStatus();
}

Task<int> AwaitsThrower() {
  absl::Status s = co_await Throws();
  co_return s;  // an error status converts to StatusOr<int>
}

TEST_CASE("an exception escaping a task becomes INTERNAL, also through co_await", "[async]") {
  absl::Status direct = Throws().Start().Get();
  CHECK(direct.code() == absl::StatusCode::kInternal);
  CHECK(direct.message().find("bad input") != absl::string_view::npos);
  absl::StatusOr<int> chained = AwaitsThrower().Start().Get();
  CHECK(chained.status().code() == absl::StatusCode::kInternal);
}

Task<int> Hop(Executor& executor, std::vector<std::string>* log) {
  log->push_back("before");
  co_await ResumeOn(executor);
  log->push_back("after");
  co_return 1;
}

TEST_CASE("ResumeOn moves the rest of the task onto the executor", "[async]") {
  ManualExecutor executor;
  std::vector<std::string> log;
  Future<int> out = Hop(executor, &log).Start();
  CHECK(log == std::vector<std::string>{"before"});
  CHECK(executor.pending() == 1);
  executor.RunPending();
  CHECK(log == std::vector<std::string>{"before", "after"});
  CHECK(out.Get().value() == 1);
}

}  // namespace
}  // namespace keel
