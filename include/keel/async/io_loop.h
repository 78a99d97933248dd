// keel/async/io_loop.h: one I/O thread (epoll) that several network clients share, so a service
// with three Redis clients and two PostgreSQL pools can run all their sockets on one thread (or
// on the few it chooses) instead of one thread per client.
//
// Defines `keel::IoLoop`, `keel::IoLoopOptions`, `keel::IoLoopStats`, and `keel::IoLoop::Scope`
// (one owner's share of a loop: its tasks, timers and watched sockets, ended together).
//
//   auto loop = keel::IoLoop::Create({.name = "io"}).value();    // one thread
//   auto redis = keel::redis::Client::Create({.server = ..., .io_loop = loop});
//   auto pg = keel::postgres::Pool::Create({.conninfo = ..., .async = {.io_loop = loop}});
//   // ... both clients' sockets, deadlines and completions now run on the loop's thread.
//   pg->reset(); redis->reset();  // clients first (each fences its callbacks off the loop) ...
//   loop->Stop();                 // ... then the loop (also done when its last owner lets go).
//
// The rule: everything that runs on the loop thread (tasks, timers, watchers, and the future
// callbacks and coroutines the clients complete there) must never block: a blocked loop thread
// delays every call of every client on the loop. Hand heavier work to an executor of your own.
//
// Owners: a client opens a Scope and posts, arms timers and watches sockets through it. Closing
// the scope (Scope::Close, or its destructor) is the shutdown fence: from any thread other than
// the loop's it waits until the loop thread has dropped the scope's queued tasks, timers and
// watches, so none of the owner's callbacks runs after Close returns (it never waits for anything
// but the loop thread finishing its current callback). On the loop thread (an owner destroyed
// from another owner's callback) Close does the same at once: tasks the scope queued and that
// have not run yet are dropped unrun, so an owner runs its own cleanup inline there first.
// Closing a scope from one of that same scope's callbacks is a bug (the callback's owner is still
// running): keel's clients never do it, and users must not destroy a client inside its own
// callbacks.
//
// Stopping: Stop() (or the last shared_ptr going) runs the tasks already queued, then calls
// every open scope's `on_stop` on the loop thread, drops the scopes' timers and watches, and ends
// the thread. A client whose loop stops under it fails its calls in flight with CANCELLED and
// refuses later ones, naming the stopped loop; nothing waits for a loop that no longer runs.
//
// Timers use the steady clock (`std::chrono::steady_clock`): the loop waits in epoll_wait, which
// cannot follow an injected keel::Clock. Components that keep time on an injected clock check it
// from a timer (or a periodic one), as keel's clients do.
//
// Linux only (epoll). Watchers receive epoll's event bits (EPOLLIN, EPOLLOUT, EPOLLERR, ...).
//
// Thread safety: IoLoop and Scope are thread-safe, except the methods marked "loop thread only".
// A task, timer or watcher that throws is caught and counted (callback_exceptions_total).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"

namespace keel {

struct IoLoopOptions {
  // Names the loop in errors and names its thread (the first 15 characters, as `top -H` and
  // /proc/<pid>/task/<tid>/comm show it). Default: "keel-io".
  std::string name = "keel-io";
};

struct IoLoopStats {
  uint64_t tasks_run_total = 0;
  uint64_t timers_fired_total = 0;
  uint64_t timers_cancelled_total = 0;     // removed by Cancel before they ran
  uint64_t callback_exceptions_total = 0;  // tasks, timers, watchers and on_stop that threw
  uint64_t scopes = 0;                     // open scopes (gauge)
  uint64_t watched_fds = 0;                // descriptors watched (gauge)
};

class IoLoop : public std::enable_shared_from_this<IoLoop> {
 public:
  using Task = absl::AnyInvocable<void()>;
  // Names an armed timer for Cancel. 0 is never a valid id (At returns it when it refused).
  using TimerId = uint64_t;
  // Names a watched descriptor for Rewatch and Unwatch.
  using WatchId = uint64_t;

  // What a watched descriptor calls back with its epoll events, on the loop thread.
  class Watcher {
   public:
    virtual ~Watcher() = default;
    virtual void OnReady(uint32_t events) = 0;
  };

  class Scope;

  // Starts the loop's thread. Errors: INVALID_ARGUMENT for an empty name; INTERNAL when epoll,
  // eventfd or the thread cannot be created.
  static absl::StatusOr<std::shared_ptr<IoLoop>> Create(IoLoopOptions options = {});
  ~IoLoop();  // Stop()
  IoLoop(const IoLoop&) = delete;
  IoLoop& operator=(const IoLoop&) = delete;

  // Opens a scope for one owner (`owner` names it in errors). `on_stop`, when given, runs once on
  // the loop thread if the loop stops while the scope is open, before the scope's timers and
  // watches are dropped: the owner fails its calls there (posting is refused by then). The scope
  // keeps the loop (this object) alive. Errors: FAILED_PRECONDITION when the loop is stopped.
  absl::StatusOr<std::unique_ptr<Scope>> OpenScope(std::string owner, Task on_stop = nullptr);

  // Runs the tasks queued so far, calls the open scopes' on_stop, drops every timer and watch,
  // and ends the thread. Idempotent. From another thread it returns once the thread has ended;
  // on the loop thread (a callback stopping its own loop) it asks for the stop and returns, and
  // the thread ends after the current callback.
  void Stop();
  // True once Stop() began: scopes can no longer be opened and posts are refused.
  bool stopped() const;

  bool InLoop() const;
  std::thread::id thread_id() const;
  const std::string& name() const;
  IoLoopStats Stats() const;

 private:
  struct Impl;
  struct ScopeState;
  explicit IoLoop(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// One owner's share of a loop. Destroying it closes it (the fence: see the banner).
class IoLoop::Scope {
 public:
  ~Scope();  // Close()
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

  // Runs `task` on the loop thread soon, after the tasks posted before it (by any scope). False
  // (and `task` dropped unrun) once the scope is closed or the loop stopped.
  bool Post(Task task);

  // Runs `task` on the loop thread at `when` (steady clock) or soon after; in time order, ties in
  // arming order. Returns 0 (and drops `task`) once the scope is closed or the loop stopped.
  TimerId At(TimePoint when, Task task);
  // Removes a timer that has not started; true if it was removed (it will never run).
  bool Cancel(TimerId id);

  // Loop thread only. Watches `fd` for `events` (level-triggered unless EPOLLET/EPOLLONESHOT are
  // among them), calling `watcher` on the loop thread until Unwatch or Close. `watcher` must stay
  // valid until then. Errors: FAILED_PRECONDITION off the loop thread or on a closed scope;
  // INTERNAL when epoll refuses (a descriptor already watched, not pollable).
  absl::StatusOr<WatchId> Watch(int fd, uint32_t events, Watcher* watcher);
  // Any thread. Changes the events of a watch (one epoll_ctl: a caller reading a socket itself
  // can disarm and re-arm it). REQUIRES: the watched descriptor has not been closed (after
  // Unwatch, NOT_FOUND as long as it is open). Errors: INTERNAL for other epoll failures.
  absl::Status Rewatch(WatchId id, uint32_t events);
  // Loop thread only. Stops watching; the watcher is not called again, also for events the loop
  // has already collected. Unwatch before closing the descriptor.
  void Unwatch(WatchId id);

  // The fence: see the banner. Idempotent; later Posts and Ats are refused.
  void Close();

  bool InLoop() const;
  IoLoop& loop() const { return *loop_; }

 private:
  friend class IoLoop;
  Scope(std::shared_ptr<IoLoop> loop, std::shared_ptr<ScopeState> state);
  const std::shared_ptr<IoLoop> loop_;
  const std::shared_ptr<ScopeState> state_;
};

}  // namespace keel
