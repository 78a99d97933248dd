// The shared I/O loop (see keel/async/io_loop.h).
//
// Invariants:
//   - A task or timer carries its scope's state; a scope's `closed` (loop thread only) is set by
//     its fence, after which its tasks and timers are dropped when reached and its watches are
//     gone. Posting checks `closing` under mu_, and the fence task is queued under mu_ after it
//     is set, so no task of a scope is queued behind its own fence.
//   - Watches are dispatched through a table indexed by descriptor, checked against the watch's
//     generation (in the upper half of epoll's data word): an event collected before an Unwatch
//     in the same epoll_wait batch finds the slot empty or re-used and is dropped, never sent to
//     a watcher that has gone.
//   - `stopped` is set under mu_ only when no task is queued, so a fence queued before it always
//     runs; after it the final phase fences every scope still open.
#include "keel/async/io_loop.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "keel/internal/strings.h"
#include "keel/sync.h"

namespace keel {

using keel::internal::StrCat;

struct IoLoop::ScopeState {
  std::string owner;
  Task on_stop;
  // Guarded by Impl::mu (not annotatable across the two structs).
  bool closing = false;  // no new tasks or timers
  bool fenced = false;   // no callback of the scope runs any more
  // Loop thread only.
  bool closed = false;
  std::vector<int> fds;
};

struct IoLoop::Impl {
  struct Queued {
    std::shared_ptr<ScopeState> scope;
    Task task;
    bool fence = false;
  };
  struct Armed {
    std::shared_ptr<ScopeState> scope;
    Task task;
  };
  struct Slot {
    uint32_t gen = 0;
    Watcher* watcher = nullptr;
    ScopeState* scope = nullptr;
  };

  Impl(std::string name, int epoll_fd, int wake_fd)
      : name(std::move(name)), epoll_fd(epoll_fd), wake_fd(wake_fd) {}
  ~Impl() {
    close(wake_fd);
    close(epoll_fd);
  }

  bool InLoop() const { return std::this_thread::get_id() == thread_id.load(); }
  void Wake() {
    const uint64_t one = 1;
    // EAGAIN means the counter is already non-zero: the loop wakes anyway.
    [[maybe_unused]] const ssize_t n = write(wake_fd, &one, sizeof(one));
  }
  // Runs a user callback: nothing thrown escapes onto the loop thread.
  void Guarded(Task& task) {
    if (!task) return;
    try {
      task();
    } catch (...) {
      exceptions.fetch_add(1, std::memory_order_relaxed);
    }
  }

  bool Post(const std::shared_ptr<ScopeState>& scope, Task task, bool fence)
      ABSL_LOCKS_EXCLUDED(mu);
  TimerId At(const std::shared_ptr<ScopeState>& scope, TimePoint when, Task task)
      ABSL_LOCKS_EXCLUDED(mu);
  bool Cancel(const ScopeState& scope, TimerId id) ABSL_LOCKS_EXCLUDED(mu);
  absl::StatusOr<WatchId> Watch(ScopeState& scope, int fd, uint32_t events, Watcher* watcher);
  absl::Status Rewatch(WatchId id, uint32_t events);
  void Unwatch(ScopeState& scope, WatchId id);
  void Close(const std::shared_ptr<ScopeState>& scope) ABSL_LOCKS_EXCLUDED(mu);
  // Loop thread: drops the scope's watches and timers and marks it fenced.
  void Fence(ScopeState& scope) ABSL_LOCKS_EXCLUDED(mu);
  void RequestStop() ABSL_LOCKS_EXCLUDED(mu);
  void Run() ABSL_LOCKS_EXCLUDED(mu);
  void RunTasks() ABSL_LOCKS_EXCLUDED(mu);
  void RunTimers() ABSL_LOCKS_EXCLUDED(mu);
  int TimeoutMs() ABSL_LOCKS_EXCLUDED(mu);
  void Dispatch(uint64_t token, uint32_t events);

  const std::string name;
  const int epoll_fd;
  const int wake_fd;
  std::atomic<std::thread::id> thread_id{};
  Mutex join_mu;
  std::thread thread ABSL_GUARDED_BY(join_mu);

  mutable Mutex mu;
  CondVar fenced_cv;  // a scope was fenced, or the final phase ended
  std::vector<Queued> tasks ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;
  bool stopped ABSL_GUARDED_BY(mu) = false;   // posts refused; the final phase runs or ran
  bool finished ABSL_GUARDED_BY(mu) = false;  // the final phase ran
  std::vector<std::shared_ptr<ScopeState>> scopes ABSL_GUARDED_BY(mu);  // open
  std::map<std::pair<TimePoint, TimerId>, Armed> timers ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<TimerId, TimePoint> timer_when ABSL_GUARDED_BY(mu);
  TimerId next_timer ABSL_GUARDED_BY(mu) = 1;

  // Loop thread only.
  std::vector<Slot> slots;
  uint32_t next_gen = 1;

  std::atomic<uint64_t> tasks_run{0};
  std::atomic<uint64_t> timers_fired{0};
  std::atomic<uint64_t> timers_cancelled{0};
  std::atomic<uint64_t> exceptions{0};
  std::atomic<uint64_t> watched{0};
};

bool IoLoop::Impl::Post(const std::shared_ptr<ScopeState>& scope, Task task, bool fence) {
  bool wake = false;
  {
    MutexLock lock(mu);
    if (stopped || (scope->closing && !fence)) return false;
    // Only the first task since the loop last took them needs a wake-up: the loop takes every
    // task queued by then.
    wake = tasks.empty();
    tasks.push_back(Queued{.scope = scope, .task = std::move(task), .fence = fence});
  }
  if (wake) Wake();
  return true;
}

IoLoop::TimerId IoLoop::Impl::At(const std::shared_ptr<ScopeState>& scope, TimePoint when,
                                 Task task) {
  TimerId id = 0;
  bool wake = false;
  {
    MutexLock lock(mu);
    if (stopped || scope->closing) return 0;
    id = next_timer++;
    // Off the loop thread, an earlier timer than the one the loop sleeps towards must wake it;
    // on it, the wait is computed after the current callback.
    wake = !InLoop() && (timers.empty() || when < timers.begin()->first.first);
    timers.emplace(std::make_pair(when, id), Armed{.scope = scope, .task = std::move(task)});
    timer_when.emplace(id, when);
  }
  if (wake) Wake();
  return id;
}

bool IoLoop::Impl::Cancel(const ScopeState& scope, TimerId id) {
  MutexLock lock(mu);
  auto it = timer_when.find(id);
  if (it == timer_when.end()) return false;
  auto armed = timers.find(std::make_pair(it->second, id));
  if (armed->second.scope.get() != &scope) return false;  // another owner's timer
  timers.erase(armed);
  timer_when.erase(it);
  timers_cancelled.fetch_add(1, std::memory_order_relaxed);
  return true;
}

absl::StatusOr<IoLoop::WatchId> IoLoop::Impl::Watch(ScopeState& scope, int fd, uint32_t events,
                                                    Watcher* watcher) {
  if (!InLoop()) {
    return absl::FailedPreconditionError(
        StrCat("io loop \"", name, "\": Watch called off the loop thread by ", scope.owner));
  }
  if (scope.closed) {
    return absl::FailedPreconditionError(
        StrCat("io loop \"", name, "\": Watch on the closed scope of ", scope.owner));
  }
  if (fd < 0) {
    return absl::InvalidArgumentError(StrCat("io loop \"", name, "\": Watch of fd ", fd));
  }
  if (static_cast<size_t>(fd) >= slots.size()) slots.resize(static_cast<size_t>(fd) + 1);
  Slot& slot = slots[static_cast<size_t>(fd)];
  if (slot.watcher != nullptr) {
    return absl::InternalError(
        StrCat("io loop \"", name, "\": fd ", fd, " is already watched (", scope.owner, ")"));
  }
  // Generation 0 is never used: token 0 is the wake-up.
  uint32_t gen = next_gen++;
  if (gen == 0) gen = next_gen++;
  const WatchId id = (uint64_t{gen} << 32) | static_cast<uint32_t>(fd);
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = id;
  if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    return absl::InternalError(StrCat("io loop \"", name, "\": epoll_ctl: ", strerror(errno)));
  }
  slot = Slot{.gen = gen, .watcher = watcher, .scope = &scope};
  scope.fds.push_back(fd);
  watched.fetch_add(1, std::memory_order_relaxed);
  return id;
}

absl::Status IoLoop::Impl::Rewatch(WatchId id, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = id;
  if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, static_cast<int>(id & 0xffffffffu), &ev) != 0) {
    const int err = errno;
    const std::string message = StrCat("io loop \"", name, "\": epoll_ctl: ", strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
  }
  return absl::OkStatus();
}

void IoLoop::Impl::Unwatch(ScopeState& scope, WatchId id) {
  const int fd = static_cast<int>(id & 0xffffffffu);
  const auto gen = static_cast<uint32_t>(id >> 32);
  if (fd < 0 || static_cast<size_t>(fd) >= slots.size()) return;
  Slot& slot = slots[static_cast<size_t>(fd)];
  if (slot.gen != gen || slot.scope != &scope) return;
  epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, nullptr);
  slot = Slot{};
  scope.fds.erase(std::remove(scope.fds.begin(), scope.fds.end(), fd), scope.fds.end());
  watched.fetch_sub(1, std::memory_order_relaxed);
}

void IoLoop::Impl::Fence(ScopeState& scope) {
  scope.closed = true;
  for (const int fd : scope.fds) {
    Slot& slot = slots[static_cast<size_t>(fd)];
    if (slot.scope != &scope) continue;
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, nullptr);
    slot = Slot{};
    watched.fetch_sub(1, std::memory_order_relaxed);
  }
  scope.fds.clear();
  // Destroyed outside the lock: a task's captures may run destructors that post or cancel.
  std::vector<Armed> dropped;
  std::shared_ptr<ScopeState> self;
  {
    MutexLock lock(mu);
    for (auto it = timers.begin(); it != timers.end();) {
      if (it->second.scope.get() == &scope) {
        timer_when.erase(it->first.second);
        dropped.push_back(std::move(it->second));
        it = timers.erase(it);
      } else {
        ++it;
      }
    }
    scope.closing = true;
    scope.fenced = true;
    for (auto it = scopes.begin(); it != scopes.end(); ++it) {
      if (it->get() == &scope) {
        self = std::move(*it);
        scopes.erase(it);
        break;
      }
    }
  }
  fenced_cv.SignalAll();
}

void IoLoop::Impl::Close(const std::shared_ptr<ScopeState>& scope) {
  if (InLoop()) {
    {
      MutexLock lock(mu);
      if (scope->fenced) return;
      scope->closing = true;
    }
    Fence(*scope);
    return;
  }
  bool queue = false;
  {
    MutexLock lock(mu);
    if (scope->fenced) return;
    if (!scope->closing) {
      scope->closing = true;
      // Stopped: the final phase fences every open scope; wait for it below.
      queue = !stopped;
    }
  }
  if (queue) Post(scope, nullptr, /*fence=*/true);
  MutexLock lock(mu);
  while (!scope->fenced) fenced_cv.Wait(mu);
}

void IoLoop::Impl::RunTasks() {
  std::vector<Queued> batch;
  {
    MutexLock lock(mu);
    batch.swap(tasks);
  }
  for (Queued& q : batch) {
    if (q.fence) {
      if (!q.scope->closed) Fence(*q.scope);
      continue;
    }
    // A scope closed on the loop thread by an earlier task drops the rest of its own.
    if (q.scope->closed) continue;
    tasks_run.fetch_add(1, std::memory_order_relaxed);
    Guarded(q.task);
  }
}

void IoLoop::Impl::RunTimers() {
  const TimePoint now = std::chrono::steady_clock::now();
  while (true) {
    Armed armed;
    {
      // One at a time: a callback may cancel the next timer or close its scope.
      MutexLock lock(mu);
      if (timers.empty() || timers.begin()->first.first > now) return;
      auto it = timers.begin();
      timer_when.erase(it->first.second);
      armed = std::move(it->second);
      timers.erase(it);
    }
    if (armed.scope->closed) continue;
    timers_fired.fetch_add(1, std::memory_order_relaxed);
    Guarded(armed.task);
  }
}

int IoLoop::Impl::TimeoutMs() {
  MutexLock lock(mu);
  if (!tasks.empty()) return 0;
  if (timers.empty()) return -1;
  const auto left = timers.begin()->first.first - std::chrono::steady_clock::now();
  if (left <= Duration::zero()) return 0;
  // Round up: waking a little late is fine, waking early just loops once more.
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

void IoLoop::Impl::Dispatch(uint64_t token, uint32_t events) {
  const auto fd = static_cast<size_t>(token & 0xffffffffu);
  const auto gen = static_cast<uint32_t>(token >> 32);
  if (fd >= slots.size()) return;
  const Slot& slot = slots[fd];
  if (slot.watcher == nullptr || slot.gen != gen) return;  // unwatched in this batch
  try {
    slot.watcher->OnReady(events);
  } catch (...) {
    exceptions.fetch_add(1, std::memory_order_relaxed);
  }
}

void IoLoop::Impl::RequestStop() {
  {
    MutexLock lock(mu);
    stopping = true;
  }
  Wake();
}

void IoLoop::Impl::Run() {
  // Thread names are at most 15 characters.
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  while (true) {
    RunTasks();
    RunTimers();
    {
      MutexLock lock(mu);
      if (stopping && tasks.empty()) break;
    }
    const int n = epoll_wait(epoll_fd, events, kMaxEvents, TimeoutMs());
    if (n < 0) {
      if (errno == EINTR) continue;
      // Nothing sensible is left to do on a broken epoll fd but to stop looping hot.
      break;
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.u64 == 0) {
        uint64_t count = 0;
        [[maybe_unused]] const ssize_t r = read(wake_fd, &count, sizeof(count));
        continue;
      }
      Dispatch(events[i].data.u64, events[i].events);
    }
  }
  // The final phase. Tasks queued until now still run (owners complete calls with CANCELLED in
  // them; fences queued before the stop run too).
  std::vector<std::shared_ptr<ScopeState>> open;
  {
    MutexLock lock(mu);
    stopped = true;
  }
  RunTasks();
  {
    MutexLock lock(mu);
    open = scopes;
  }
  for (const std::shared_ptr<ScopeState>& scope : open) {
    if (scope->closed) continue;
    if (scope->on_stop) Guarded(scope->on_stop);
    Fence(*scope);
  }
  std::map<std::pair<TimePoint, TimerId>, Armed> left;
  {
    MutexLock lock(mu);
    left.swap(timers);
    timer_when.clear();
    finished = true;
  }
  fenced_cv.SignalAll();
}

IoLoop::IoLoop(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::shared_ptr<IoLoop>> IoLoop::Create(IoLoopOptions options) {
  if (options.name.empty()) return absl::InvalidArgumentError("io_loop.name must not be empty");
  const int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd < 0) {
    return absl::InternalError(
        StrCat("io loop \"", options.name, "\": epoll_create1: ", strerror(errno)));
  }
  const int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) {
    const int saved = errno;
    close(epoll_fd);
    return absl::InternalError(
        StrCat("io loop \"", options.name, "\": eventfd: ", strerror(saved)));
  }
  auto impl = std::make_shared<Impl>(std::move(options.name), epoll_fd, wake_fd);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;  // the wake-up
  if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &ev) != 0) {
    return absl::InternalError(
        StrCat("io loop \"", impl->name, "\": epoll_ctl: ", strerror(errno)));
  }
  {
    MutexLock lock(impl->join_mu);
    try {
      // The thread keeps the state alive: a loop stopped from its own thread (its last owner
      // let go in a callback) outlives its handle until the thread ends.
      impl->thread = std::thread([impl] { impl->Run(); });
    } catch (const std::system_error& e) {
      return absl::InternalError(
          StrCat("io loop \"", impl->name, "\": cannot start its thread: ", e.what()));
    }
    impl->thread_id.store(impl->thread.get_id());
  }
  return std::shared_ptr<IoLoop>(new IoLoop(std::move(impl)));
}

IoLoop::~IoLoop() { Stop(); }

absl::StatusOr<std::unique_ptr<IoLoop::Scope>> IoLoop::OpenScope(std::string owner, Task on_stop) {
  auto state = std::make_shared<ScopeState>();
  state->owner = std::move(owner);
  state->on_stop = std::move(on_stop);
  {
    MutexLock lock(impl_->mu);
    if (impl_->stopped || impl_->stopping) {
      return absl::FailedPreconditionError(
          StrCat("io loop \"", impl_->name, "\" is stopped (", state->owner, ")"));
    }
    impl_->scopes.push_back(state);
  }
  return std::unique_ptr<Scope>(new Scope(shared_from_this(), std::move(state)));
}

void IoLoop::Stop() {
  impl_->RequestStop();
  std::thread thread;
  {
    MutexLock lock(impl_->join_mu);
    if (impl_->InLoop()) {
      // Cannot join itself: the thread ends after the current callback and frees the state.
      if (impl_->thread.joinable()) impl_->thread.detach();
      return;
    }
    // Joined outside the lock: an on_stop that stops the loop again must not wait for it.
    thread = std::move(impl_->thread);
  }
  if (thread.joinable()) {
    thread.join();
    return;
  }
  // Joined by a concurrent Stop, or detached by one on the loop thread: wait for the final phase.
  MutexLock lock(impl_->mu);
  while (!impl_->finished) impl_->fenced_cv.Wait(impl_->mu);
}

bool IoLoop::stopped() const {
  MutexLock lock(impl_->mu);
  return impl_->stopping || impl_->stopped;
}

bool IoLoop::InLoop() const { return impl_->InLoop(); }
std::thread::id IoLoop::thread_id() const { return impl_->thread_id.load(); }
const std::string& IoLoop::name() const { return impl_->name; }

IoLoopStats IoLoop::Stats() const {
  IoLoopStats stats{
      .tasks_run_total = impl_->tasks_run.load(std::memory_order_relaxed),
      .timers_fired_total = impl_->timers_fired.load(std::memory_order_relaxed),
      .timers_cancelled_total = impl_->timers_cancelled.load(std::memory_order_relaxed),
      .callback_exceptions_total = impl_->exceptions.load(std::memory_order_relaxed),
      .watched_fds = impl_->watched.load(std::memory_order_relaxed),
  };
  MutexLock lock(impl_->mu);
  stats.scopes = impl_->scopes.size();
  return stats;
}

IoLoop::Scope::Scope(std::shared_ptr<IoLoop> loop, std::shared_ptr<ScopeState> state)
    : loop_(std::move(loop)), state_(std::move(state)) {}

IoLoop::Scope::~Scope() { Close(); }

// A task may own this scope and the loop's last handle, and run (on the loop thread) before the
// call that queued it returns, destroying both: the call holds the loop's state and the scope's
// until it returns, and reads nothing of the Scope object after queuing.
bool IoLoop::Scope::Post(Task task) {
  const std::shared_ptr<Impl> impl = loop_->impl_;
  const std::shared_ptr<ScopeState> state = state_;
  return impl->Post(state, std::move(task), /*fence=*/false);
}
IoLoop::TimerId IoLoop::Scope::At(TimePoint when, Task task) {
  const std::shared_ptr<Impl> impl = loop_->impl_;
  const std::shared_ptr<ScopeState> state = state_;
  return impl->At(state, when, std::move(task));
}
bool IoLoop::Scope::Cancel(TimerId id) { return loop_->impl_->Cancel(*state_, id); }
absl::StatusOr<IoLoop::WatchId> IoLoop::Scope::Watch(int fd, uint32_t events, Watcher* watcher) {
  return loop_->impl_->Watch(*state_, fd, events, watcher);
}
absl::Status IoLoop::Scope::Rewatch(WatchId id, uint32_t events) {
  return loop_->impl_->Rewatch(id, events);
}
void IoLoop::Scope::Unwatch(WatchId id) {
  if (loop_->impl_->InLoop()) loop_->impl_->Unwatch(*state_, id);
}
void IoLoop::Scope::Close() { loop_->impl_->Close(state_); }
bool IoLoop::Scope::InLoop() const { return loop_->impl_->InLoop(); }

}  // namespace keel
