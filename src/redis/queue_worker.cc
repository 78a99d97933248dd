// keel::redis::Worker: runs a handler over a JobQueue's jobs (see queue.h).
//
// One Redis thread (the fetcher) does every Redis call: take scripts, finish scripts, the
// blocking XREADGROUP on its own leased connection, and inspections. `concurrency` handler
// threads take jobs from the fetcher's buffer, run the handler, and leave a completion for the
// fetcher to finish in a batch. Nothing does I/O under the worker's mutex.
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <thread>
#include <utility>

#include "absl/random/random.h"
#include "keel/internal/exception.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/redis/queue.h"
#include "keel/status.h"
#include "lease.h"
#include "queue_internal.h"

namespace keel::redis {

using keel::internal::StrCat;

namespace {

absl::StatusOr<Backoff> ValidateWorkerOptions(const Worker::Options& o, std::string_view name) {
  const keel::internal::OptionsOf of("redis job worker", name);
  KEEL_RETURN_IF_ERROR(keel::internal::RequireSet(of, "handler", o.handler != nullptr));
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "concurrency", o.concurrency, 1));
  if (o.batch < 1 || o.batch > 1000) {
    return keel::internal::InvalidOption(of, "batch", "in [1, 1000]", o.batch);
  }
  KEEL_RETURN_IF_ERROR(
      keel::internal::RequirePositive(of, "visibility_timeout", o.visibility_timeout));
  KEEL_RETURN_IF_ERROR(keel::internal::RequirePositive(of, "poll_interval", o.poll_interval));
  KEEL_RETURN_IF_ERROR(
      keel::internal::RequirePositive(of, "redis_retry_delay", o.redis_retry_delay));
  if (o.inspect_interval.has_value()) {
    KEEL_RETURN_IF_ERROR(
        keel::internal::RequirePositive(of, "inspect_interval", *o.inspect_interval));
  }
  KEEL_RETURN_IF_ERROR(keel::internal::RequireNonNegative(of, "stop_timeout", o.stop_timeout));
  absl::StatusOr<Backoff> backoff = Backoff::Create(o.retry_backoff, "retry_backoff");
  if (!backoff.ok()) return of.Nest(backoff.status());
  return *backoff;
}

std::string ConsumerName() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return StrCat(host, "-", getpid(), "-", internal::NewLockToken().substr(0, 8));
}

}  // namespace

class Worker::Impl {
 public:
  Impl(Options options, JobQueue& queue, Clock& clock, Backoff backoff,
       std::optional<absl::BitGenRef> random)
      : options_(std::move(options)),
        queue_(queue),
        clock_(clock),
        backoff_(backoff),
        random_(random.has_value() ? *random : absl::BitGenRef(own_random_)),
        consumer_(ConsumerName()),
        job_prefix_(queue.KeyPrefix() + ":job:"),
        capacity_(static_cast<size_t>(options_.concurrency + options_.batch)),
        batch_(static_cast<size_t>(options_.batch)) {}

  ~Impl() {
    if (fetcher_.joinable()) fetcher_.join();
    for (std::thread& t : handlers_) t.join();
  }

  absl::Status RegisterMetrics(MetricsRegistry& metrics) {
    const Labels labels = {{"name", queue_.options().name}};
    struct Spec {
      const char* name;
      const char* help;
      Counter** out;
    };
    const Spec specs[] = {
        {"keel_queue_jobs_taken_total", "Job attempts started (new and taken over).", &taken_c_},
        {"keel_queue_jobs_succeeded_total", "Jobs whose handler returned OK (acknowledged).",
         &succeeded_c_},
        {"keel_queue_jobs_retried_total", "Failed attempts with a retry scheduled.", &retried_c_},
        {"keel_queue_jobs_dead_total", "Jobs moved to the dead letters.", &dead_c_},
        {"keel_queue_jobs_handed_back_total", "Jobs handed back by a stopping worker.",
         &handed_back_c_},
    };
    for (const Spec& s : specs) {
      KEEL_ASSIGN_OR_RETURN(*s.out, metrics.AddCounter(s.name, s.help, labels));
    }
    KEEL_ASSIGN_OR_RETURN(latency_, metrics.AddHistogram("keel_queue_handler_seconds",
                                                         "Handler run time per attempt.",
                                                         DefaultLatencyBuckets(), labels));
    return absl::OkStatus();
  }

  void Start() {
    for (int i = 0; i < options_.concurrency; ++i)
      handlers_.emplace_back([this] { HandlerLoop(); });
    fetcher_ = std::thread([this] { FetchLoop(); });
  }

  absl::Status Stop(Deadline deadline) ABSL_LOCKS_EXCLUDED(mu_);
  bool stop_called() const ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(mu_);
    return stop_called_;
  }

  WorkerStats Stats() const ABSL_LOCKS_EXCLUDED(mu_) {
    auto get = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
    WorkerStats s{.taken_total = get(taken_),
                  .reclaimed_total = get(reclaimed_),
                  .succeeded_total = get(succeeded_),
                  .retried_total = get(retried_),
                  .dead_total = get(dead_),
                  .handed_back_total = get(handed_back_),
                  .handler_exceptions_total = get(exceptions_),
                  .redis_errors_total = get(redis_errors_),
                  .take_calls_total = get(take_calls_),
                  .finish_calls_total = get(finish_calls_),
                  .blocking_reads_total = get(blocking_reads_),
                  .limiter_errors_total = get(limiter_errors_)};
    MutexLock lock(mu_);
    s.running = running_.size();
    s.buffered = buffered_.size();
    return s;
  }

  const std::string& consumer() const { return consumer_; }
  Duration stop_timeout() const { return options_.stop_timeout; }

 private:
  struct Held {
    internal::TakenJob taken;
    Deadline deadline;
  };
  // What the finish script is told about one job. `attempt` is for the retry delay.
  struct Completion {
    char kind = 'd';  // 'd' done, 'r' retry, 'x' dead, 'h' handed back
    int level = 0;
    std::string entry;
    std::string id;
    int attempt = 0;
    std::string error;
  };

  struct Running {
    Completion hand_back;  // what Stop queues when it gives the job back
    Deadline deadline = Deadline::Infinite();
    CancellationSource source;
    bool started = false;      // past the start limiter: the handler runs
    bool handed_back = false;  // Stop gave the job back: its completion is dropped
  };
  static Completion HandBack(const internal::TakenJob& t) {
    return {.kind = 'h', .level = t.level, .entry = t.entry, .id = t.job.id};
  }

  void FetchLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void HandlerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void RunOne(Held held, uint64_t slot, CancellationToken token) ABSL_LOCKS_EXCLUDED(mu_);
  // Waits for the start limiter's permit; false when the job is cancelled first.
  bool AwaitPermit(const Held& held, const CancellationToken& token);

  // Redis calls (fetcher thread only). Each bounded by the client's command_timeout, and while
  // stopping, by Stop's deadline.
  Deadline CallDeadline() ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<internal::TakeResult> Take(size_t want);
  absl::Status Finish(const std::vector<Completion>& done);
  absl::Status BlockingRead(Duration block) ABSL_LOCKS_EXCLUDED(mu_);
  void MaybeInspect();
  // Waits on fetch_cv_ until `until` or `ready`.
  template <typename Pred>
  void WaitFetch(Duration at_most, Pred ready) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(mu_);
    clock_.WaitUntil(mu_, fetch_cv_, clock_.Now() + at_most, [&] {
      mu_.AssertHeld();
      return ready();
    });
  }
  size_t HeldLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return running_.size() + buffered_.size();
  }
  void Count(std::atomic<uint64_t>& own, Counter* shared, uint64_t n = 1) {
    own.fetch_add(n, std::memory_order_relaxed);
    if (shared != nullptr) shared->Increment(n);
  }

  const Options options_;
  JobQueue& queue_;
  Clock& clock_;
  const Backoff backoff_;
  absl::BitGen own_random_;
  absl::BitGenRef random_;  // fetcher thread only
  const std::string consumer_;
  const std::string job_prefix_;
  const size_t capacity_;  // concurrency + batch: the most jobs held at once
  const size_t batch_;

  // Fetcher thread only.
  Lease<Connection> blocking_conn_;
  int64_t blocking_client_id_ = 0;
  std::vector<internal::Delivered> delivered_;  // by a blocking read, to start by the next take
  std::optional<Duration> next_due_;
  TimePoint next_inspect_ = TimePoint::min();

  mutable Mutex mu_;
  CondVar fetch_cv_;  // the fetcher: completions, room, stop
  CondVar work_cv_;   // handler threads: buffered jobs, stop
  CondVar stop_cv_;   // Stop: handlers finished, fetcher done, blocking read over
  std::deque<Held> buffered_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Running> running_ ABSL_GUARDED_BY(mu_);
  uint64_t next_slot_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Completion> completions_ ABSL_GUARDED_BY(mu_);
  bool stop_called_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool abandoned_ ABSL_GUARDED_BY(mu_) = false;  // Stop handed back what still runs
  bool fetch_done_ ABSL_GUARDED_BY(mu_) = false;
  bool final_ok_ ABSL_GUARDED_BY(mu_) = true;  // every finish while stopping was confirmed
  bool in_blocking_read_ ABSL_GUARDED_BY(mu_) = false;
  int64_t unblock_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<Deadline> stop_deadline_ ABSL_GUARDED_BY(mu_);

  std::vector<std::thread> handlers_;
  std::thread fetcher_;

  // Relaxed counters: statistics only.
  std::atomic<uint64_t> taken_{0}, reclaimed_{0}, succeeded_{0}, retried_{0}, dead_{0},
      handed_back_{0}, exceptions_{0}, redis_errors_{0}, take_calls_{0}, finish_calls_{0},
      blocking_reads_{0}, limiter_errors_{0};
  Counter* taken_c_ = nullptr;
  Counter* succeeded_c_ = nullptr;
  Counter* retried_c_ = nullptr;
  Counter* dead_c_ = nullptr;
  Counter* handed_back_c_ = nullptr;
  Histogram* latency_ = nullptr;
};

Deadline Worker::Impl::CallDeadline() {
  const Deadline call = Deadline::After(queue_.client().options().command_timeout, clock_);
  MutexLock lock(mu_);
  return stop_deadline_.has_value() ? Deadline::Min(call, *stop_deadline_) : call;
}

absl::StatusOr<internal::TakeResult> Worker::Impl::Take(size_t want) {
  const std::vector<std::string>& keys_owned = queue_.script_keys_;
  std::vector<std::string_view> keys(keys_owned.begin(), keys_owned.end());
  const std::string want_s = StrCat(want);
  const std::string idle_ms = StrCat(internal::CeilMillis(options_.visibility_timeout));
  const std::string retention_ms = StrCat(internal::CeilMillis(queue_.options().retention));
  const std::string dead_max = StrCat(queue_.options().dead_letter_max);
  std::vector<std::string> levels;
  levels.reserve(delivered_.size());
  for (const internal::Delivered& d : delivered_) levels.push_back(StrCat(d.level));
  std::vector<std::string_view> args = {internal::kQueueGroup, consumer_,    want_s,  idle_ms,
                                        job_prefix_,           retention_ms, dead_max};
  for (size_t i = 0; i < delivered_.size(); ++i) {
    args.insert(args.end(), {levels[i], delivered_[i].entry, delivered_[i].id});
  }
  take_calls_.fetch_add(1, std::memory_order_relaxed);
  KEEL_ASSIGN_OR_RETURN(
      Reply reply, internal::TakeScript().RunArgv(queue_.client(), CallDeadline(), keys, args));
  return internal::ParseTake(reply);
}

absl::Status Worker::Impl::Finish(const std::vector<Completion>& done) {
  const std::vector<std::string>& keys_owned = queue_.script_keys_;
  std::vector<std::string_view> keys(keys_owned.begin(), keys_owned.end());
  const std::string retention_ms = StrCat(internal::CeilMillis(queue_.options().retention));
  const std::string dead_max = StrCat(queue_.options().dead_letter_max);
  std::vector<std::string> numbers;  // level and delay of each completion
  numbers.reserve(2 * done.size());
  for (const Completion& c : done) {
    numbers.push_back(StrCat(c.level));
    const Duration delay =
        c.kind == 'r' ? internal::RetryDelay(backoff_, c.attempt, random_) : Duration::zero();
    numbers.push_back(StrCat(internal::CeilMillis(delay)));
  }
  static constexpr std::string_view kKinds[] = {"d", "r", "x", "h"};
  auto kind = [](char k) {
    return k == 'd' ? kKinds[0] : k == 'r' ? kKinds[1] : k == 'x' ? kKinds[2] : kKinds[3];
  };
  std::vector<std::string_view> args = {internal::kQueueGroup, consumer_, job_prefix_, retention_ms,
                                        dead_max};
  for (size_t i = 0; i < done.size(); ++i) {
    const Completion& c = done[i];
    args.insert(args.end(),
                {kind(c.kind), numbers[2 * i], c.entry, c.id, numbers[2 * i + 1], c.error});
  }
  finish_calls_.fetch_add(1, std::memory_order_relaxed);
  KEEL_RETURN_IF_ERROR(
      internal::FinishScript().RunArgv(queue_.client(), CallDeadline(), keys, args).status());
  for (const Completion& c : done) {
    if (c.kind == 'd') Count(succeeded_, succeeded_c_);
    if (c.kind == 'r') Count(retried_, retried_c_);
    if (c.kind == 'x') Count(dead_, dead_c_);
    if (c.kind == 'h') Count(handed_back_, handed_back_c_);
  }
  return absl::OkStatus();
}

absl::Status Worker::Impl::BlockingRead(Duration block) {
  if (!blocking_conn_) {
    KEEL_ASSIGN_OR_RETURN(blocking_conn_, queue_.client().Acquire(CallDeadline()));
    absl::StatusOr<Reply> id = blocking_conn_->Command(CallDeadline(), "CLIENT", "ID");
    if (!id.ok() || !id->is_integer()) {
      blocking_conn_.Invalidate();
      blocking_conn_ = Lease<Connection>();
      return id.ok() ? absl::InternalError("CLIENT ID: unexpected reply") : id.status();
    }
    blocking_client_id_ = id->integer();
  }
  {
    MutexLock lock(mu_);
    if (stopping_) return absl::OkStatus();
    in_blocking_read_ = true;
    unblock_id_ = blocking_client_id_;
  }
  const int64_t block_ms = std::max<int64_t>(1, internal::CeilMillis(block));
  const std::string block_s = StrCat(block_ms);
  const std::string count_s = StrCat(batch_);
  const std::vector<std::string>& keys = queue_.script_keys_;
  std::vector<std::string_view> argv = {"XREADGROUP", "GROUP", internal::kQueueGroup,
                                        consumer_,    "COUNT", count_s,
                                        "BLOCK",      block_s, "STREAMS"};
  const size_t levels = keys.size() - 2;
  for (size_t l = levels; l-- > 0;) argv.push_back(keys[2 + l]);
  for (size_t l = 0; l < levels; ++l) argv.push_back(">");
  blocking_reads_.fetch_add(1, std::memory_order_relaxed);
  const Deadline deadline =
      Deadline::After(block + queue_.client().options().command_timeout, clock_);
  absl::StatusOr<Reply> reply = blocking_conn_->CommandArgv(deadline, argv);
  {
    MutexLock lock(mu_);
    in_blocking_read_ = false;
  }
  stop_cv_.SignalAll();
  if (!reply.ok()) {
    if (blocking_conn_->broken() || !blocking_conn_->session_clean()) blocking_conn_.Invalidate();
    blocking_conn_ = Lease<Connection>();
    return reply.status();
  }
  const std::span<const std::string> streams(keys.data() + 2, levels);
  KEEL_ASSIGN_OR_RETURN(std::vector<internal::Delivered> got,
                        internal::ParseBlockingRead(*reply, streams));
  delivered_.insert(delivered_.end(), got.begin(), got.end());
  return absl::OkStatus();
}

void Worker::Impl::MaybeInspect() {
  if (!options_.inspect_interval.has_value() || clock_.Now() < next_inspect_) return;
  next_inspect_ = clock_.Now() + *options_.inspect_interval;
  if (!queue_.Inspect(CallDeadline()).ok()) redis_errors_.fetch_add(1, std::memory_order_relaxed);
}

void Worker::Impl::FetchLoop() {
  while (true) {
    std::vector<Completion> done;
    bool stopping = false;
    size_t held = 0;
    {
      MutexLock lock(mu_);
      if (stop_deadline_.has_value() && stop_deadline_->Expired()) {
        // Stop's time is up: what is left comes back after its visibility timeout.
        final_ok_ = completions_.empty() && buffered_.empty() && delivered_.empty();
        fetch_done_ = true;
        stop_cv_.SignalAll();
        return;
      }
      // Visibility timeouts that ran out: another worker may take the job now; tell the handler.
      for (auto& [slot, r] : running_) {
        if (r.deadline.Expired() && !r.source.cancelled()) r.source.Cancel();
      }
      if (stopping_) {
        for (const Held& h : buffered_) completions_.push_back(HandBack(h.taken));
        buffered_.clear();
      }
      done.swap(completions_);
      stopping = stopping_;
      held = HeldLocked();
    }
    if (!done.empty()) {
      if (absl::Status s = Finish(done); !s.ok()) {
        redis_errors_.fetch_add(1, std::memory_order_relaxed);
        {
          MutexLock lock(mu_);
          completions_.insert(completions_.begin(), done.begin(), done.end());
          if (stop_deadline_.has_value() && stop_deadline_->Expired()) {
            // Stop's time is up: these jobs come back after their visibility timeout.
            final_ok_ = false;
            fetch_done_ = true;
            stop_cv_.SignalAll();
            return;
          }
        }
        WaitFetch(options_.redis_retry_delay, [&] {
          mu_.AssertHeld();
          return abandoned_;
        });
        continue;
      }
    }
    if (stopping && delivered_.empty()) {
      MutexLock lock(mu_);
      if ((running_.empty() || abandoned_) && completions_.empty()) {
        fetch_done_ = true;
        stop_cv_.SignalAll();
        return;
      }
      clock_.WaitUntil(mu_, fetch_cv_, clock_.Now() + options_.redis_retry_delay, [&] {
        mu_.AssertHeld();
        return !completions_.empty() || abandoned_ || running_.empty();
      });
      continue;
    }
    if (!stopping) MaybeInspect();
    const size_t room = capacity_ - std::min(capacity_, held);
    if (!delivered_.empty() || room >= batch_) {
      const size_t want = stopping ? 0 : std::min(batch_, room);
      absl::StatusOr<internal::TakeResult> taken = Take(want);
      if (!taken.ok()) {
        redis_errors_.fetch_add(1, std::memory_order_relaxed);
        WaitFetch(options_.redis_retry_delay, [&] {
          mu_.AssertHeld();
          return stopping_ && delivered_.empty();
        });
        continue;
      }
      delivered_.clear();
      next_due_ = taken->next_due;
      const size_t got = taken->jobs.size();
      const Deadline deadline = Deadline::After(options_.visibility_timeout, clock_);
      {
        MutexLock lock(mu_);
        for (internal::TakenJob& t : taken->jobs) {
          Count(taken_, taken_c_);
          if (t.reclaimed) reclaimed_.fetch_add(1, std::memory_order_relaxed);
          buffered_.push_back({std::move(t), deadline});
        }
      }
      work_cv_.SignalAll();
      if (got > 0 || stopping) continue;
      const Duration wait = next_due_.has_value() ? std::min(options_.poll_interval, *next_due_)
                                                  : options_.poll_interval;
      if (held == 0) {
        if (absl::Status s = BlockingRead(wait); !s.ok()) {
          redis_errors_.fetch_add(1, std::memory_order_relaxed);
          WaitFetch(options_.redis_retry_delay, [&] {
            mu_.AssertHeld();
            return stopping_;
          });
        }
        continue;
      }
      WaitFetch(wait, [&] {
        mu_.AssertHeld();
        return stopping_ || !completions_.empty();
      });
      continue;
    }
    WaitFetch(options_.poll_interval, [&] {
      mu_.AssertHeld();
      return stopping_ || completions_.size() >= batch_ ||
             capacity_ - std::min(capacity_, HeldLocked()) >= batch_ ||
             (HeldLocked() == 0 && !completions_.empty());
    });
  }
}

void Worker::Impl::HandlerLoop() {
  while (true) {
    std::optional<Held> held;
    uint64_t slot = 0;
    CancellationToken token;
    {
      MutexLock lock(mu_);
      while (!stopping_ && buffered_.empty()) work_cv_.Wait(mu_);
      // While stopping, the fetcher hands the buffered jobs back.
      if (stopping_) return;
      held.emplace(std::move(buffered_.front()));
      buffered_.pop_front();
      slot = next_slot_++;
      Running& r = running_[slot];
      r.hand_back = HandBack(held->taken);
      r.deadline = held->deadline;
      token = r.source.token();
    }
    RunOne(std::move(*held), slot, std::move(token));
  }
}

bool Worker::Impl::AwaitPermit(const Held& held, const CancellationToken& token) {
  // Cancelled before it started: Stop is handing it back (or its visibility ran out already).
  if (!options_.start_limiter) return !token.cancelled();
  while (!token.cancelled()) {
    absl::StatusOr<limit::Decision> decision;
    try {
      decision = options_.start_limiter(held.deadline);
    } catch (...) {
      decision = absl::InternalError(StrCat(
          "start_limiter threw ", keel::internal::DescribeException(std::current_exception())));
    }
    if (!decision.ok()) {
      // Pacing, not protection: a limiter that fails lets the job start.
      limiter_errors_.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    if (decision->allowed) return true;
    const Duration wait = std::min(decision->retry_after, held.deadline.Remaining());
    token.SleepUntil(clock_, clock_.Now() + std::max(wait, Duration(std::chrono::milliseconds(1))));
  }
  return false;
}

void Worker::Impl::RunOne(Held held, uint64_t slot, CancellationToken token) {
  const internal::TakenJob& t = held.taken;
  const bool permitted = AwaitPermit(held, token);
  bool handed_back = false;
  {
    MutexLock lock(mu_);
    Running& r = running_.at(slot);
    r.started = permitted && !r.handed_back;
    handed_back = r.handed_back;
  }
  Completion c{.level = t.level, .entry = t.entry, .id = t.job.id, .attempt = t.job.attempt};
  if (!permitted || handed_back) {
    c = HandBack(t);
  } else {
    JobContext context(queue_, t.job.id, t.job.attempt, t.job.max_attempts, held.deadline, token);
    const TimePoint started = clock_.Now();
    absl::Status status;
    try {
      status = options_.handler(t.job, context);
    } catch (...) {
      exceptions_.fetch_add(1, std::memory_order_relaxed);
      status = absl::InternalError(
          StrCat("handler threw ", keel::internal::DescribeException(std::current_exception())));
    }
    if (latency_ != nullptr) latency_->ObserveDuration(clock_.Now() - started);
    if (!status.ok()) {
      c.kind = t.job.attempt >= t.job.max_attempts ? 'x' : 'r';
      c.error = StatusText(status);
    }
  }
  {
    MutexLock lock(mu_);
    auto it = running_.find(slot);
    // A job Stop handed back already has its hand-back queued.
    if (!it->second.handed_back) completions_.push_back(std::move(c));
    running_.erase(it);
  }
  fetch_cv_.Signal();
  stop_cv_.SignalAll();
}

absl::Status Worker::Impl::Stop(Deadline deadline) {
  {
    MutexLock lock(mu_);
    if (stop_called_) {
      return absl::FailedPreconditionError(
          StrCat("redis job worker \"", queue_.options().name, "\": already stopped"));
    }
    stop_called_ = true;
    stopping_ = true;
    stop_deadline_ = deadline;
    // Jobs still waiting for a start permit are handed back at once.
    for (auto& [slot, r] : running_) {
      if (!r.started) r.source.Cancel();
    }
  }
  work_cv_.SignalAll();
  fetch_cv_.SignalAll();
  // A blocking read ends when its BLOCK does: CLIENT UNBLOCK ends it now (again until the
  // fetcher is out of it: the first may arrive before the read was sent).
  while (true) {
    int64_t id = 0;
    {
      MutexLock lock(mu_);
      if (!in_blocking_read_ || deadline.Expired()) break;
      id = unblock_id_;
    }
    (void)queue_.client().Command(Deadline::Min(deadline, CallDeadline()), "CLIENT", "UNBLOCK", id);
    MutexLock lock(mu_);
    clock_.WaitUntil(mu_, stop_cv_, clock_.Now() + std::chrono::milliseconds(5), [&] {
      mu_.AssertHeld();
      return !in_blocking_read_;
    });
  }
  // Running handlers get until shortly before the deadline; the rest is for the hand-back.
  const Duration reserve =
      std::min<Duration>(deadline.Remaining() / 4, std::chrono::milliseconds(250));
  MutexLock lock(mu_);
  const TimePoint handlers_by =
      deadline.IsInfinite() ? TimePoint::max() : deadline.time() - reserve;
  clock_.WaitUntil(mu_, stop_cv_, handlers_by, [&] {
    mu_.AssertHeld();
    return running_.empty();
  });
  for (auto& [slot, r] : running_) {
    if (r.handed_back) continue;
    r.handed_back = true;
    r.source.Cancel();
    completions_.push_back(r.hand_back);
  }
  abandoned_ = true;
  fetch_cv_.SignalAll();
  clock_.WaitUntil(mu_, stop_cv_, deadline.time(), [&] {
    mu_.AssertHeld();
    return fetch_done_;
  });
  if (fetch_done_ && final_ok_) return absl::OkStatus();
  return absl::DeadlineExceededError(
      StrCat("redis job worker \"", queue_.options().name,
             "\": stopped without Redis confirming every acknowledgement and hand-back; those "
             "jobs run again after their visibility timeout"));
}

Worker::Worker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Worker::~Worker() {
  if (!impl_->stop_called()) {
    (void)impl_->Stop(Deadline::After(impl_->stop_timeout()));
  }
}

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(Options options, JobQueue& queue,
                                                       Clock& clock, MetricsRegistry* metrics) {
  return CreateImpl(std::move(options), queue, clock, metrics, std::nullopt);
}

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(Options options, JobQueue& queue,
                                                       Clock& clock, MetricsRegistry* metrics,
                                                       absl::BitGenRef random) {
  return CreateImpl(std::move(options), queue, clock, metrics, random);
}

absl::StatusOr<std::unique_ptr<Worker>> Worker::CreateImpl(Options options, JobQueue& queue,
                                                           Clock& clock, MetricsRegistry* metrics,
                                                           std::optional<absl::BitGenRef> random) {
  KEEL_ASSIGN_OR_RETURN(Backoff backoff, ValidateWorkerOptions(options, queue.options().name));
  auto impl = std::make_unique<Impl>(std::move(options), queue, clock, backoff, random);
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(impl->RegisterMetrics(*metrics));
  impl->Start();
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

absl::Status Worker::Stop(Deadline deadline) { return impl_->Stop(deadline); }
WorkerStats Worker::Stats() const { return impl_->Stats(); }
const std::string& Worker::consumer() const { return impl_->consumer(); }

}  // namespace keel::redis
