// Private to keel::redis: the I/O thread of a multiplexed Client. Not part of keel's API.
//
// One thread running epoll over the sockets it watches, an eventfd that wakes it for posted
// tasks, and a deadline heap of timers (on the steady clock). Everything a watcher, a task or a
// timer does runs on that thread and must never block for long: a blocked I/O thread delays
// every call of the client. (A connection's blocking setup runs on a connector thread of its
// own for that reason: mux_connection.h.)
//
// Thread safety: Post, InLoop and Rewatch are thread-safe (Rewatch is one epoll_ctl: a caller
// reading its own reply disarms and re-arms its socket with it); Watch, Unwatch and At are for the
// loop thread only (from a watcher, task or timer).
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/sync.h"

namespace keel::redis::transport {

class EventLoop {
 public:
  using Task = std::function<void()>;

  // What a watched socket calls back with its epoll events (EPOLLIN, EPOLLOUT, EPOLLERR, ...).
  class Watcher {
   public:
    virtual ~Watcher() = default;
    virtual void OnReady(uint32_t events) = 0;
  };

  // Starts the thread. `name` prefixes errors. Errors: INTERNAL when epoll or eventfd fail.
  static absl::StatusOr<std::unique_ptr<EventLoop>> Start(std::string name);
  // Stop()s.
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Runs `task` on the loop thread soon, in posting order. Tasks posted after Stop() are dropped.
  void Post(Task task) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs the tasks posted so far, then ends the thread and joins it. Idempotent.
  // REQUIRES: not called on the loop thread.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);
  bool InLoop() const { return std::this_thread::get_id() == thread_.get_id(); }

  // Loop thread only. Watches `fd` for `events` (level-triggered), calling `watcher`.
  absl::Status Watch(int fd, uint32_t events, Watcher* watcher);
  // Any thread. Changes the events of a watched `fd`.
  absl::Status Rewatch(int fd, uint32_t events, Watcher* watcher);
  void Unwatch(int fd);
  // Loop thread only. Runs `task` at `when` (steady clock) or soon after.
  void At(TimePoint when, Task task);

 private:
  EventLoop(std::string name, int epoll_fd, int wake_fd);
  void Run();
  absl::Status Control(int op, int fd, uint32_t events, Watcher* watcher);
  void RunTasks() ABSL_LOCKS_EXCLUDED(mu_);
  void RunTimers();
  int TimeoutMs() const;

  struct Timer {
    TimePoint when;
    uint64_t seq;
    Task task;
    bool operator>(const Timer& o) const { return when != o.when ? when > o.when : seq > o.seq; }
  };

  const std::string name_;
  const int epoll_fd_;
  const int wake_fd_;
  std::thread thread_;

  Mutex mu_;
  std::vector<Task> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;

  // Loop thread only.
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
  uint64_t timer_seq_ = 0;
};

}  // namespace keel::redis::transport
