#include "redis/transport/event_loop.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <utility>

#include "keel/internal/strings.h"

namespace keel::redis::transport {

using keel::internal::StrCat;

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Start(std::string name) {
  const int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd < 0) return absl::InternalError(StrCat(name, ": epoll_create1: ", strerror(errno)));
  const int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) {
    const int saved = errno;
    close(epoll_fd);
    return absl::InternalError(StrCat(name, ": eventfd: ", strerror(saved)));
  }
  std::unique_ptr<EventLoop> loop(new EventLoop(std::move(name), epoll_fd, wake_fd));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the wake-up
  if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &ev) != 0) {
    return absl::InternalError(StrCat(loop->name_, ": epoll_ctl: ", strerror(errno)));
  }
  loop->thread_ = std::thread([raw = loop.get()] { raw->Run(); });
  return loop;
}

EventLoop::EventLoop(std::string name, int epoll_fd, int wake_fd)
    : name_(std::move(name)), epoll_fd_(epoll_fd), wake_fd_(wake_fd) {}

EventLoop::~EventLoop() {
  Stop();
  close(wake_fd_);
  close(epoll_fd_);
}

void EventLoop::Post(Task task) {
  bool wake = false;
  {
    MutexLock lock(mu_);
    if (stopped_) return;
    // Only the first task since the loop last took them needs a wake-up: the loop takes every
    // task queued by then.
    wake = tasks_.empty();
    tasks_.push_back(std::move(task));
  }
  if (wake) {
    const uint64_t one = 1;
    // EAGAIN means the counter is already non-zero: the loop will wake anyway.
    [[maybe_unused]] const ssize_t n = write(wake_fd_, &one, sizeof(one));
  }
}

void EventLoop::Stop() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

absl::Status EventLoop::Control(int op, int fd, uint32_t events, Watcher* watcher) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = watcher;
  if (epoll_ctl(epoll_fd_, op, fd, &ev) != 0) {
    return absl::InternalError(StrCat(name_, ": epoll_ctl: ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status EventLoop::Watch(int fd, uint32_t events, Watcher* watcher) {
  return Control(EPOLL_CTL_ADD, fd, events, watcher);
}

absl::Status EventLoop::Rewatch(int fd, uint32_t events, Watcher* watcher) {
  return Control(EPOLL_CTL_MOD, fd, events, watcher);
}

void EventLoop::Unwatch(int fd) { epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr); }

void EventLoop::At(TimePoint when, Task task) {
  timers_.push(Timer{.when = when, .seq = timer_seq_++, .task = std::move(task)});
}

void EventLoop::RunTasks() {
  std::vector<Task> tasks;
  {
    MutexLock lock(mu_);
    tasks.swap(tasks_);
  }
  for (Task& task : tasks) task();
}

void EventLoop::RunTimers() {
  const TimePoint now = std::chrono::steady_clock::now();
  while (!timers_.empty() && timers_.top().when <= now) {
    Task task = std::move(const_cast<Timer&>(timers_.top()).task);
    timers_.pop();
    task();
  }
}

int EventLoop::TimeoutMs() const {
  if (timers_.empty()) return -1;
  const auto left = timers_.top().when - std::chrono::steady_clock::now();
  if (left <= Duration::zero()) return 0;
  // Round up: waking a little late is fine, waking early just loops once more.
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

void EventLoop::Run() {
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  while (true) {
    RunTasks();
    RunTimers();
    {
      MutexLock lock(mu_);
      if (stopping_ && tasks_.empty()) {
        stopped_ = true;
        break;
      }
    }
    const int n = epoll_wait(epoll_fd_, events, kMaxEvents, TimeoutMs());
    if (n < 0) {
      if (errno == EINTR) continue;
      // Nothing sensible is left to do on a broken epoll fd but to stop looping hot.
      break;
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.ptr == nullptr) {
        uint64_t count = 0;
        [[maybe_unused]] const ssize_t r = read(wake_fd_, &count, sizeof(count));
        continue;
      }
      static_cast<Watcher*>(events[i].data.ptr)->OnReady(events[i].events);
    }
  }
  // Tasks that raced with the stop still run (they complete calls with CANCELLED).
  RunTasks();
}

}  // namespace keel::redis::transport
