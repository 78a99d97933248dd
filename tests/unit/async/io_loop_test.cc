// keel::IoLoop: tasks, timers and watches on one thread, the scope fence (Close) from another
// thread and from the loop thread, stopping with scopes open, and callbacks that throw. Waits are
// on completions (a task posted behind the ones under test), never sleeps; timers are armed in
// the past so they are due at once.
#include "keel/async/io_loop.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <functional>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace keel {
namespace {

using namespace std::chrono_literals;

std::shared_ptr<IoLoop> MakeLoop(std::string name = "test-io") {
  auto loop = IoLoop::Create({.name = std::move(name)});
  REQUIRE(loop.ok());
  return std::move(*loop);
}

std::unique_ptr<IoLoop::Scope> Open(IoLoop& loop, std::string owner,
                                    IoLoop::Task on_stop = nullptr) {
  auto scope = loop.OpenScope(std::move(owner), std::move(on_stop));
  REQUIRE(scope.ok());
  return std::move(*scope);
}

// Returns once the loop has run everything posted (by any scope) before this call.
void Drain(IoLoop::Scope& scope) {
  std::promise<void> done;
  REQUIRE(scope.Post([&] { done.set_value(); }));
  done.get_future().wait();
}

// A readable eventfd and a watcher that counts its calls and drains it.
struct EventFd final : IoLoop::Watcher {
  EventFd() : fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) { REQUIRE(fd >= 0); }
  ~EventFd() override { close(fd); }
  void Signal() const {
    const uint64_t one = 1;
    REQUIRE(write(fd, &one, sizeof(one)) == sizeof(one));
  }
  void OnReady(uint32_t) override {
    uint64_t count = 0;
    (void)!read(fd, &count, sizeof(count));
    calls.fetch_add(1);
    if (on_ready) on_ready();
  }
  const int fd;
  std::atomic<int> calls{0};
  std::function<void()> on_ready;
};

TEST_CASE("io loop runs posted tasks on its own thread, in posting order", "[async][io_loop]") {
  auto loop = MakeLoop();
  auto scope = Open(*loop, "test");
  std::vector<int> order;  // loop thread only until Drain returns
  std::vector<std::thread::id> threads;
  for (int i = 0; i < 5; ++i) {
    REQUIRE(scope->Post([&, i] {
      order.push_back(i);
      threads.push_back(std::this_thread::get_id());
    }));
  }
  Drain(*scope);
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
  for (std::thread::id id : threads) CHECK(id == loop->thread_id());
  CHECK(loop->thread_id() != std::this_thread::get_id());
  CHECK_FALSE(loop->InLoop());
  CHECK(loop->Stats().tasks_run_total >= 6);
}

TEST_CASE("io loop runs due timers in time order and never a cancelled one", "[async][io_loop]") {
  auto loop = MakeLoop();
  auto scope = Open(*loop, "test");
  std::vector<std::string> ran;
  std::promise<void> last;
  // The loop waits in a task while the timers are armed, so it finds them all due at once.
  std::promise<void> gate;
  REQUIRE(scope->Post([f = gate.get_future().share()] { f.wait(); }));
  const TimePoint now = std::chrono::steady_clock::now();
  scope->At(now - 1ms, [&] { ran.push_back("c"); });
  const IoLoop::TimerId cancelled = scope->At(now - 2ms, [&] { ran.push_back("cancelled"); });
  scope->At(now - 3ms, [&] { ran.push_back("a"); });
  scope->At(now - 2ms, [&] { ran.push_back("b"); });  // ties after the cancelled one: arming order
  CHECK(scope->Cancel(cancelled));
  CHECK_FALSE(scope->Cancel(cancelled));
  scope->At(now, [&] { last.set_value(); });
  gate.set_value();
  last.get_future().wait();
  CHECK(ran == std::vector<std::string>{"a", "b", "c"});
  CHECK(loop->Stats().timers_cancelled_total == 1);
  CHECK(loop->Stats().timers_fired_total == 4);
}

TEST_CASE("io loop timer cancel only removes the scope's own timers", "[async][io_loop]") {
  auto loop = MakeLoop();
  auto mine = Open(*loop, "mine");
  auto other = Open(*loop, "other");
  std::promise<void> fired;
  const IoLoop::TimerId id =
      mine->At(std::chrono::steady_clock::now() - 1ms, [&] { fired.set_value(); });
  CHECK_FALSE(other->Cancel(id));
  fired.get_future().wait();  // it ran
}

TEST_CASE("io loop scope closed from another thread runs none of its callbacks after Close",
          "[async][io_loop]") {
  auto loop = MakeLoop();
  auto closing = Open(*loop, "closing");
  auto staying = Open(*loop, "staying");
  EventFd watched;
  std::atomic<bool> timer_ran{false};
  std::atomic<int> tasks_ran{0};
  std::promise<absl::Status> watch;
  REQUIRE(closing->Post(
      [&] { watch.set_value(closing->Watch(watched.fd, EPOLLIN, &watched).status()); }));
  REQUIRE(watch.get_future().get().ok());
  closing->At(std::chrono::steady_clock::now() + 1h, [&] { timer_ran = true; });
  for (int i = 0; i < 100; ++i) closing->Post([&] { tasks_ran.fetch_add(1); });
  CHECK(loop->Stats().watched_fds == 1);
  CHECK(loop->Stats().scopes == 2);
  closing->Close();
  // The tasks posted before Close ran (the fence comes after them); nothing of the scope is left.
  CHECK(tasks_ran.load() == 100);
  CHECK(loop->Stats().watched_fds == 0);
  CHECK(loop->Stats().scopes == 1);
  CHECK_FALSE(closing->Post([&] { tasks_ran.fetch_add(1); }));
  CHECK(closing->At(std::chrono::steady_clock::now(), [&] { timer_ran = true; }) == 0);
  watched.Signal();
  Drain(*staying);
  Drain(*staying);
  CHECK(watched.calls.load() == 0);
  CHECK_FALSE(timer_ran.load());
  CHECK(tasks_ran.load() == 100);
  closing->Close();  // idempotent
}

TEST_CASE("io loop scope closed on the loop thread drops its queued tasks at once",
          "[async][io_loop]") {
  auto loop = MakeLoop();
  auto closer = Open(*loop, "closer");
  auto closed = Open(*loop, "closed");
  std::atomic<int> dropped_ran{0};
  std::promise<void> gate;
  std::shared_future<void> open_gate = gate.get_future().share();
  // Hold the loop so the next tasks land in one batch.
  REQUIRE(closer->Post([open_gate] { open_gate.wait(); }));
  REQUIRE(closer->Post([&] { closed->Close(); }));
  REQUIRE(closed->Post([&] { dropped_ran.fetch_add(1); }));
  const IoLoop::TimerId timer =
      closed->At(std::chrono::steady_clock::now() + 1h, [&] { dropped_ran.fetch_add(1); });
  gate.set_value();
  Drain(*closer);
  Drain(*closer);
  CHECK(dropped_ran.load() == 0);
  CHECK_FALSE(closed->Cancel(timer));  // the fence removed it
  CHECK_FALSE(closed->Post([] {}));
}

TEST_CASE("io loop never calls a watcher unwatched earlier in the same batch", "[async][io_loop]") {
  auto loop = MakeLoop();
  auto scope = Open(*loop, "test");
  EventFd a, b;
  IoLoop::WatchId ida = 0, idb = 0;
  // Whichever is called first unwatches the other: both are readable before the loop waits.
  a.on_ready = [&] { scope->Unwatch(idb); };
  b.on_ready = [&] { scope->Unwatch(ida); };
  a.Signal();
  b.Signal();
  bool watched = false;
  REQUIRE(scope->Post([&] {
    auto x = scope->Watch(a.fd, EPOLLIN, &a);
    auto y = scope->Watch(b.fd, EPOLLIN, &b);
    watched = x.ok() && y.ok();
    if (watched) {
      ida = *x;
      idb = *y;
    }
  }));
  Drain(*scope);
  REQUIRE(watched);
  Drain(*scope);
  CHECK(a.calls.load() + b.calls.load() == 1);
}

TEST_CASE("io loop watch and rewatch follow the descriptor's events", "[async][io_loop]") {
  auto loop = MakeLoop();
  auto scope = Open(*loop, "test");
  EventFd e;
  auto off_loop = scope->Watch(e.fd, EPOLLIN, &e);
  CHECK(off_loop.status().code() == absl::StatusCode::kFailedPrecondition);
  std::promise<absl::StatusOr<IoLoop::WatchId>> watch;
  absl::Status twice;
  REQUIRE(scope->Post([&] {
    auto id = scope->Watch(e.fd, EPOLLIN, &e);
    twice = scope->Watch(e.fd, EPOLLIN, &e).status();
    watch.set_value(std::move(id));
  }));
  absl::StatusOr<IoLoop::WatchId> watched = watch.get_future().get();
  REQUIRE(watched.ok());
  CHECK(twice.code() == absl::StatusCode::kInternal);
  const IoLoop::WatchId id = *watched;
  // Disarmed from this thread: a signal is not reported.
  REQUIRE(scope->Rewatch(id, 0).ok());
  e.Signal();
  Drain(*scope);
  CHECK(e.calls.load() == 0);
  std::promise<void> called;
  // Set on the loop thread: the wake-up through epoll is no ordering TSan can see.
  REQUIRE(scope->Post([&] { e.on_ready = [&] { called.set_value(); }; }));
  Drain(*scope);
  REQUIRE(scope->Rewatch(id, EPOLLIN).ok());
  called.get_future().wait();
  CHECK(e.calls.load() == 1);
  REQUIRE(scope->Post([&] { scope->Unwatch(id); }));
  Drain(*scope);
  CHECK(scope->Rewatch(id, EPOLLIN).code() == absl::StatusCode::kNotFound);
}

TEST_CASE("io loop stop runs queued tasks, then on_stop of every open scope, then refuses",
          "[async][io_loop]") {
  auto loop = MakeLoop();
  std::vector<std::string> seen;  // loop thread until Stop returns
  auto a = Open(*loop, "a", [&] { seen.push_back("a stopped"); });
  auto b = Open(*loop, "b", [&] { seen.push_back("b stopped"); });
  auto closed = Open(*loop, "closed", [&] { seen.push_back("closed stopped"); });
  closed->Close();
  std::atomic<bool> timer_ran{false};
  a->At(std::chrono::steady_clock::now() + 1h, [&] { timer_ran = true; });
  REQUIRE(a->Post([&] { seen.push_back(loop->InLoop() ? "task" : "task off the loop"); }));
  loop->Stop();
  CHECK(seen == std::vector<std::string>{"task", "a stopped", "b stopped"});
  CHECK(loop->stopped());
  CHECK_FALSE(a->Post([] {}));
  CHECK(b->At(std::chrono::steady_clock::now(), [] {}) == 0);
  CHECK_FALSE(timer_ran.load());
  a->Close();  // at once: the loop fenced it
  CHECK(loop->OpenScope("late").status().code() == absl::StatusCode::kFailedPrecondition);
  loop->Stop();  // idempotent
}

TEST_CASE("io loop counts callbacks that throw and keeps running", "[async][io_loop]") {
  auto loop = MakeLoop();
  auto scope = Open(*loop, "test");
  REQUIRE(scope->Post([] { throw std::runtime_error("task"); }));
  scope->At(std::chrono::steady_clock::now() - 1ms, [] { throw 7; });
  Drain(*scope);
  Drain(*scope);
  CHECK(loop->Stats().callback_exceptions_total == 2);
}

TEST_CASE("io loop whose last owner lets go on its own thread ends without deadlock",
          "[async][io_loop]") {
  auto loop = MakeLoop();
  auto scope = Open(*loop, "test");
  IoLoop::Scope* raw = scope.get();
  std::promise<void> released;
  REQUIRE(raw->Post([loop = std::move(loop), scope = std::move(scope), &released]() mutable {
    scope.reset();  // the fence, on the loop thread: at once
    loop.reset();   // the last handle: Stop from the loop thread asks and returns
    released.set_value();
  }));
  released.get_future().wait();
}

TEST_CASE("io loop names its thread after the loop", "[async][io_loop]") {
  auto loop = MakeLoop("a-very-long-loop-name");
  auto scope = Open(*loop, "test");
  std::promise<std::string> name;
  REQUIRE(scope->Post([&] {
    char buf[32] = {};
    pthread_getname_np(pthread_self(), buf, sizeof(buf));
    name.set_value(buf);
  }));
  CHECK(name.get_future().get() == "a-very-long-loo");
  CHECK(IoLoop::Create({.name = ""}).status().code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace keel
