// keel::redis::Worker: runs a handler over a JobQueue's jobs (see queue.h).
//
// One Redis thread (the fetcher) does every Redis call: take scripts, finish scripts, the
// blocking XREADGROUP on its own leased connection, and inspections. `concurrency` handler
// threads take jobs from the fetcher's buffer, run the handler, and leave a completion for the
// fetcher to finish in a batch. The heartbeat runs on a timer thread (the client's shared one):
// each tick sends one async script extending every held job's claim, answered on the client's
// I/O thread. Nothing does I/O under the worker's mutex.
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <thread>
#include <utility>

#include "absl/random/random.h"
#include "keel/async/timer.h"
#include "keel/internal/exception.h"
#include "keel/internal/format.h"
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
  if (o.heartbeat_interval.has_value()) {
    KEEL_RETURN_IF_ERROR(
        keel::internal::RequirePositive(of, "heartbeat_interval", *o.heartbeat_interval));
    if (*o.heartbeat_interval >= o.visibility_timeout) {
      return keel::internal::InvalidOption(
          of, "heartbeat_interval",
          StrCat("< visibility_timeout (", keel::internal::FormatDuration(o.visibility_timeout),
                 ")"),
          *o.heartbeat_interval);
    }
  }
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
        batch_(static_cast<size_t>(options_.batch)),
        heartbeat_interval_(options_.heartbeat_interval.value_or(options_.visibility_timeout / 3)) {
  }

  ~Impl() {
    if (fetcher_.joinable()) fetcher_.join();
    for (std::thread& t : handlers_) t.join();
    // Stop ended the ticks; an extension still in flight is answered (or fails) by its deadline.
    MutexLock lock(hb_->mu);
    hb_->stopped = true;
    if (hb_->tick != 0 && timer_->Cancel(hb_->tick)) hb_->tick = 0;
    clock_.WaitUntil(hb_->mu, hb_->cv, TimePoint::max(), [&] {
      hb_->mu.AssertHeld();
      return !hb_->busy;
    });
  }

  // The heartbeat's timer: the client's shared one when the clocks agree, else the worker's own.
  absl::Status InitHeartbeat() {
    if (!options_.heartbeat) return absl::OkStatus();
    if (&queue_.client().clock() == &clock_) {
      KEEL_ASSIGN_OR_RETURN(timer_, queue_.client().SharedTimer());
    } else {
      KEEL_ASSIGN_OR_RETURN(own_timer_, Timer::Create({.name = "redis job worker"}, clock_));
      timer_ = own_timer_.get();
    }
    return absl::OkStatus();
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
        {"keel_queue_jobs_extended_total", "Job claims extended by a worker's heartbeat.",
         &extended_c_},
        {"keel_queue_jobs_lost_total",
         "Held jobs a heartbeat found taken over by another worker or deleted.", &lost_c_},
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
    if (timer_ != nullptr) {
      MutexLock lock(hb_->mu);
      ScheduleHeartbeat(clock_.Now() + heartbeat_interval_);
    }
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
                  .limiter_errors_total = get(limiter_errors_),
                  .heartbeats_total = get(heartbeats_),
                  .extended_total = get(extended_),
                  .lost_total = get(lost_),
                  .stale_completions_total = get(stale_)};
    MutexLock lock(mu_);
    s.running = running_.size();
    s.buffered = buffered_.size();
    return s;
  }

  const std::string& consumer() const { return consumer_; }
  Duration stop_timeout() const { return options_.stop_timeout; }

 private:
  using Held = std::shared_ptr<internal::HeldJob>;
  // What the finish script is told about one job. `attempt` is for the ownership check and the
  // retry delay.
  struct Completion {
    char kind = 'd';  // 'd' done, 'r' retry, 'x' dead, 'h' handed back
    int level = 0;
    std::string entry;
    std::string id;
    int attempt = 0;
    std::string error;
  };

  struct Running {
    Held job;
    Completion hand_back;      // what Stop queues when it gives the job back
    bool started = false;      // past the start limiter: the handler runs
    bool handed_back = false;  // Stop gave the job back: its completion is dropped
  };
  static Completion HandBack(const internal::TakenJob& t) {
    return {
        .kind = 'h', .level = t.level, .entry = t.entry, .id = t.job.id, .attempt = t.job.attempt};
  }

  // The heartbeat's state, shared with the timer's and the client's callbacks: once `stopped`,
  // a callback touches nothing but this (kept alive by its own reference), so the Impl may go
  // as soon as `busy` is false.
  struct HeartbeatControl {
    Mutex mu;
    CondVar cv;                                // signalled when busy becomes false
    bool busy ABSL_GUARDED_BY(mu) = false;     // a tick or its extension in flight
    bool stopped ABSL_GUARDED_BY(mu) = false;  // no tick runs or is scheduled again
    TimerId tick ABSL_GUARDED_BY(mu) = 0;      // the scheduled tick, 0 when none
  };
  void ScheduleHeartbeat(TimePoint at) ABSL_EXCLUSIVE_LOCKS_REQUIRED(hb_->mu);
  // The timer callback (busy set): extends every held job's claim in one async script. `hb` is
  // the callback's own reference to hb_.
  void HeartbeatTick(std::shared_ptr<HeartbeatControl> hb) ABSL_LOCKS_EXCLUDED(mu_);
  // The script's answer for `jobs`, sent at `sent`.
  void Heartbeated(std::shared_ptr<HeartbeatControl> hb, const std::vector<Held>& jobs,
                   TimePoint sent, absl::StatusOr<Reply> reply);
  // Ends a tick: schedules the next at `next` unless stopped, then clears busy. The Impl may be
  // destroyed as soon as busy is clear: after that only `hb` (the caller's own) is touched.
  void HeartbeatDone(std::shared_ptr<HeartbeatControl> hb, TimePoint next)
      ABSL_LOCKS_EXCLUDED(hb_->mu);
  // Ends the ticks (Stop); an extension in flight still completes.
  void StopHeartbeat();
  // Marks `job` lost (once) and cancels its token.
  void Lose(internal::HeldJob& job);

  void FetchLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void HandlerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void RunOne(const Held& held, uint64_t slot, CancellationToken token) ABSL_LOCKS_EXCLUDED(mu_);
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
  const Duration heartbeat_interval_;
  std::unique_ptr<Timer> own_timer_;
  Timer* timer_ = nullptr;  // the heartbeat's; null without one
  const std::shared_ptr<HeartbeatControl> hb_ = std::make_shared<HeartbeatControl>();

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
      blocking_reads_{0}, limiter_errors_{0}, heartbeats_{0}, extended_{0}, lost_{0}, stale_{0};
  Counter* taken_c_ = nullptr;
  Counter* succeeded_c_ = nullptr;
  Counter* retried_c_ = nullptr;
  Counter* dead_c_ = nullptr;
  Counter* handed_back_c_ = nullptr;
  Counter* extended_c_ = nullptr;
  Counter* lost_c_ = nullptr;
  Histogram* latency_ = nullptr;
};

Deadline Worker::Impl::CallDeadline() {
  const Deadline call = Deadline::After(queue_.client().options().command_timeout, clock_);
  MutexLock lock(mu_);
  return stop_deadline_.has_value() ? Deadline::Min(call, *stop_deadline_) : call;
}

absl::StatusOr<internal::TakeResult> Worker::Impl::Take(size_t want) {
  const std::vector<std::string>& fixed = queue_.script_keys_;
  const std::vector<std::string_view> fixed_keys(fixed.begin(), fixed.end());
  internal::ClaimResult claim{.next_due = next_due_};
  // Entries a blocking read (or a claim whose start failed) delivered are started first, without
  // a claim: the next take claims.
  if (delivered_.empty()) {
    const std::string want_s = StrCat(want);
    const std::string idle_ms = StrCat(internal::CeilMillis(options_.visibility_timeout));
    const std::string_view claim_args[] = {internal::kQueueGroup, consumer_, want_s, idle_ms};
    take_calls_.fetch_add(1, std::memory_order_relaxed);
    KEEL_ASSIGN_OR_RETURN(
        Reply claimed,
        internal::ClaimScript().RunArgv(queue_.client(), CallDeadline(), fixed_keys, claim_args));
    KEEL_ASSIGN_OR_RETURN(claim, internal::ParseClaim(claimed));
    // Delivered to this consumer now: kept until a start succeeds (a failed one is retried).
    delivered_ = claim.entries;
  }
  internal::TakeResult result{.next_due = claim.next_due};
  if (claim.due.empty() && delivered_.empty()) return result;

  // The start script's keys: the fixed ones, each due job's hash, each entry's job hash.
  std::vector<std::string> job_keys;
  job_keys.reserve(claim.due.size() + delivered_.size());
  for (const std::string& id : claim.due) job_keys.push_back(job_prefix_ + id);
  for (const internal::Delivered& d : delivered_) job_keys.push_back(job_prefix_ + d.id);
  std::vector<std::string_view> keys = fixed_keys;
  keys.insert(keys.end(), job_keys.begin(), job_keys.end());
  const std::string levels = StrCat(queue_.options().priority_levels);
  const std::string retention_ms = StrCat(internal::CeilMillis(queue_.options().retention));
  const std::string dead_max = StrCat(queue_.options().dead_letter_max);
  const std::string ndue = StrCat(claim.due.size());
  std::vector<std::string> numbers;  // each entry's level
  numbers.reserve(delivered_.size());
  for (const internal::Delivered& d : delivered_) numbers.push_back(StrCat(d.level));
  std::vector<std::string_view> args = {internal::kQueueGroup, consumer_, levels,
                                        retention_ms,          dead_max,  ndue};
  args.insert(args.end(), claim.due.begin(), claim.due.end());
  for (size_t i = 0; i < delivered_.size(); ++i) {
    args.insert(args.end(), {numbers[i], delivered_[i].entry, delivered_[i].id,
                             delivered_[i].reclaimed ? "1" : "0"});
  }
  take_calls_.fetch_add(1, std::memory_order_relaxed);
  // Before the send: the script restarts each started entry's idle time when it runs.
  result.sent = clock_.Now();
  KEEL_ASSIGN_OR_RETURN(
      Reply started, internal::StartScript().RunArgv(queue_.client(), CallDeadline(), keys, args));
  KEEL_ASSIGN_OR_RETURN(result.jobs, internal::ParseStart(started));
  return result;
}

absl::Status Worker::Impl::Finish(const std::vector<Completion>& done) {
  const std::vector<std::string>& fixed = queue_.script_keys_;
  std::vector<std::string> job_keys;  // KEYS after the fixed ones: each completion's job hash
  job_keys.reserve(done.size());
  for (const Completion& c : done) job_keys.push_back(job_prefix_ + c.id);
  std::vector<std::string_view> keys(fixed.begin(), fixed.end());
  keys.insert(keys.end(), job_keys.begin(), job_keys.end());
  const std::string levels = StrCat(queue_.options().priority_levels);
  const std::string retention_ms = StrCat(internal::CeilMillis(queue_.options().retention));
  const std::string dead_max = StrCat(queue_.options().dead_letter_max);
  std::vector<std::string> numbers;  // level, attempt and delay of each completion
  numbers.reserve(3 * done.size());
  for (const Completion& c : done) {
    numbers.push_back(StrCat(c.level));
    numbers.push_back(StrCat(c.attempt));
    const Duration delay =
        c.kind == 'r' ? internal::RetryDelay(backoff_, c.attempt, random_) : Duration::zero();
    numbers.push_back(StrCat(internal::CeilMillis(delay)));
  }
  static constexpr std::string_view kKinds[] = {"d", "r", "x", "h"};
  auto kind = [](char k) {
    return k == 'd' ? kKinds[0] : k == 'r' ? kKinds[1] : k == 'x' ? kKinds[2] : kKinds[3];
  };
  std::vector<std::string_view> args = {internal::kQueueGroup, consumer_, levels, retention_ms,
                                        dead_max};
  for (size_t i = 0; i < done.size(); ++i) {
    const Completion& c = done[i];
    args.insert(args.end(), {kind(c.kind), numbers[3 * i], c.entry, c.id, numbers[3 * i + 1],
                             numbers[3 * i + 2], c.error});
  }
  finish_calls_.fetch_add(1, std::memory_order_relaxed);
  KEEL_ASSIGN_OR_RETURN(
      Reply reply, internal::FinishScript().RunArgv(queue_.client(), CallDeadline(), keys, args));
  KEEL_ASSIGN_OR_RETURN(std::vector<bool> applied,
                        internal::ParseFlags(reply, done.size(), "finish"));
  for (size_t i = 0; i < done.size(); ++i) {
    const char k = done[i].kind;
    if (!applied[i]) {
      // Another worker holds the job now (or finished it): its outcome is not ours to record.
      stale_.fetch_add(1, std::memory_order_relaxed);
    } else if (k == 'd') {
      Count(succeeded_, succeeded_c_);
    } else if (k == 'r') {
      Count(retried_, retried_c_);
    } else if (k == 'x') {
      Count(dead_, dead_c_);
    } else {
      Count(handed_back_, handed_back_c_);
    }
  }
  return absl::OkStatus();
}

void Worker::Impl::ScheduleHeartbeat(TimePoint at) {
  // `this` is used only while `stopped` is false (see HeartbeatControl).
  hb_->tick = timer_->Schedule(at, [this, hb = hb_] {
    {
      MutexLock lock(hb->mu);
      hb->tick = 0;
      if (hb->stopped) return;
      hb->busy = true;
    }
    HeartbeatTick(std::move(hb));
  });
}

void Worker::Impl::HeartbeatTick(std::shared_ptr<HeartbeatControl> hb) {
  std::vector<Held> jobs;
  {
    MutexLock lock(mu_);
    for (const Held& h : buffered_) {
      if (!h->lost.load(std::memory_order_relaxed)) jobs.push_back(h);
    }
    for (const auto& [slot, r] : running_) {
      if (!r.handed_back && !r.job->lost.load(std::memory_order_relaxed)) jobs.push_back(r.job);
    }
  }
  const TimePoint sent = clock_.Now();
  if (jobs.empty()) return HeartbeatDone(std::move(hb), sent + heartbeat_interval_);
  std::vector<std::string> owned;  // each job's hash, then its level and attempt
  owned.reserve(3 * jobs.size());
  for (const Held& h : jobs) owned.push_back(job_prefix_ + h->taken.job.id);
  for (const Held& h : jobs) {
    owned.push_back(StrCat(h->taken.level));
    owned.push_back(StrCat(h->taken.job.attempt));
  }
  const std::vector<std::string>& fixed = queue_.script_keys_;
  std::vector<std::string_view> keys(fixed.begin(), fixed.end());
  keys.insert(keys.end(), owned.begin(), owned.begin() + static_cast<ptrdiff_t>(jobs.size()));
  const std::string levels = StrCat(queue_.options().priority_levels);
  std::vector<std::string_view> args = {internal::kQueueGroup, consumer_, levels};
  for (size_t i = 0; i < jobs.size(); ++i) {
    args.insert(args.end(),
                {owned[jobs.size() + 2 * i], jobs[i]->taken.entry, owned[jobs.size() + 2 * i + 1]});
  }
  heartbeats_.fetch_add(1, std::memory_order_relaxed);
  // An answer later than the next tick is of no use: the next tick sends a fresh extension.
  const Deadline deadline =
      Deadline::Min(Deadline::After(queue_.client().options().command_timeout, clock_),
                    Deadline::After(heartbeat_interval_, clock_));
  // Keys and arguments are copied by the call; the answer comes on the client's I/O thread.
  internal::HeartbeatScript().AsyncRunArgv(queue_.client(), deadline, keys, args,
                                           [this, hb = std::move(hb), jobs = std::move(jobs),
                                            sent](absl::StatusOr<Reply> reply) mutable {
                                             // busy is still set: the Impl lives until
                                             // HeartbeatDone clears it.
                                             Heartbeated(std::move(hb), jobs, sent,
                                                         std::move(reply));
                                           });
}

void Worker::Impl::Heartbeated(std::shared_ptr<HeartbeatControl> hb, const std::vector<Held>& jobs,
                               TimePoint sent, absl::StatusOr<Reply> reply) {
  absl::StatusOr<std::vector<bool>> held =
      reply.ok() ? internal::ParseFlags(*reply, jobs.size(), "heartbeat")
                 : absl::StatusOr<std::vector<bool>>(std::move(reply).status());
  if (!held.ok()) {
    // The claims keep their end; try again soon, while they may still be ours.
    redis_errors_.fetch_add(1, std::memory_order_relaxed);
    return HeartbeatDone(std::move(hb),
                         clock_.Now() + std::min(options_.redis_retry_delay, heartbeat_interval_));
  }
  uint64_t extended = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if ((*held)[i]) {
      jobs[i]->ExtendTo(sent + options_.visibility_timeout);
      ++extended;
    } else {
      Lose(*jobs[i]);
    }
  }
  Count(extended_, extended_c_, extended);
  HeartbeatDone(std::move(hb), sent + heartbeat_interval_);
}

void Worker::Impl::HeartbeatDone(std::shared_ptr<HeartbeatControl> hb, TimePoint next) {
  {
    MutexLock lock(hb_->mu);  // hb's: the lock keeps a reference to the mutex, not to this
    if (!hb_->stopped) ScheduleHeartbeat(next);
    hb_->busy = false;
  }
  // The Impl may be gone from here on: only `hb` is touched.
  hb->cv.SignalAll();
}

void Worker::Impl::StopHeartbeat() {
  MutexLock lock(hb_->mu);
  hb_->stopped = true;
  if (hb_->tick != 0 && timer_->Cancel(hb_->tick)) hb_->tick = 0;
}

void Worker::Impl::Lose(internal::HeldJob& job) {
  if (job.lost.exchange(true, std::memory_order_acq_rel)) return;
  Count(lost_, lost_c_);
  job.source.Cancel();
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
      // Claims that ran out: another worker may take the job now; tell the handler.
      const TimePoint now = clock_.Now();
      for (auto& [slot, r] : running_) {
        if (r.job->until() <= now && !r.job->source.cancelled()) r.job->source.Cancel();
      }
      if (stopping_) {
        for (const Held& h : buffered_) {
          // A lost job is another worker's now: nothing to hand back.
          if (!h->lost.load(std::memory_order_acquire)) completions_.push_back(HandBack(h->taken));
        }
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
      const TimePoint visible_until = taken->sent + options_.visibility_timeout;
      {
        MutexLock lock(mu_);
        for (internal::TakenJob& t : taken->jobs) {
          Count(taken_, taken_c_);
          if (t.reclaimed) reclaimed_.fetch_add(1, std::memory_order_relaxed);
          buffered_.push_back(std::make_shared<internal::HeldJob>(std::move(t), visible_until));
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
    Held held;
    uint64_t slot = 0;
    CancellationToken token;
    {
      MutexLock lock(mu_);
      while (!stopping_ && buffered_.empty()) work_cv_.Wait(mu_);
      // While stopping, the fetcher hands the buffered jobs back.
      if (stopping_) return;
      held = std::move(buffered_.front());
      buffered_.pop_front();
      // Taken over while it waited here: another worker runs it.
      if (held->lost.load(std::memory_order_acquire)) continue;
      slot = next_slot_++;
      Running& r = running_[slot];
      r.job = held;
      r.hand_back = HandBack(held->taken);
      token = held->source.token();
    }
    RunOne(held, slot, std::move(token));
  }
}

bool Worker::Impl::AwaitPermit(const Held& held, const CancellationToken& token) {
  // Cancelled before it started: Stop is handing it back (or its visibility ran out already).
  if (!options_.start_limiter) return !token.cancelled();
  while (!token.cancelled()) {
    absl::StatusOr<limit::Decision> decision;
    try {
      decision = options_.start_limiter(Deadline::At(held->until(), clock_));
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
    const Duration wait = std::min(decision->retry_after, held->until() - clock_.Now());
    token.SleepUntil(clock_, clock_.Now() + std::max(wait, Duration(std::chrono::milliseconds(1))));
  }
  return false;
}

void Worker::Impl::RunOne(const Held& held, uint64_t slot, CancellationToken token) {
  const internal::TakenJob& t = held->taken;
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
    JobContext context(queue_, *held, t.job.id, t.job.attempt, t.job.max_attempts, clock_, token);
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
    if (held->lost.load(std::memory_order_acquire)) {
      // A heartbeat found the job another worker's: its outcome is the new owner's to record.
      stale_.fetch_add(1, std::memory_order_relaxed);
    } else if (!it->second.handed_back) {
      // (A job Stop handed back already has its hand-back queued.)
      completions_.push_back(std::move(c));
    }
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
      if (!r.started) r.job->source.Cancel();
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
    r.job->source.Cancel();
    // A lost job is another worker's now: nothing to hand back.
    if (!r.job->lost.load(std::memory_order_acquire)) completions_.push_back(r.hand_back);
  }
  abandoned_ = true;
  // Nothing runs for this worker any more: no claim needs extending.
  StopHeartbeat();
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
  if (options.heartbeat && queue.client().options().transport != Transport::kMultiplexed) {
    return keel::internal::InvalidOption(
        keel::internal::OptionsOf("redis job worker", queue.options().name), "heartbeat",
        "used with a client on the multiplexed transport (or false)", "a pooled client");
  }
  auto impl = std::make_unique<Impl>(std::move(options), queue, clock, backoff, random);
  KEEL_RETURN_IF_ERROR(impl->InitHeartbeat());
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(impl->RegisterMetrics(*metrics));
  impl->Start();
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

absl::Status Worker::Stop(Deadline deadline) { return impl_->Stop(deadline); }

Deadline JobContext::deadline() const { return Deadline::At(held_.until(), clock_); }
WorkerStats Worker::Stats() const { return impl_->Stats(); }
const std::string& Worker::consumer() const { return impl_->consumer(); }

}  // namespace keel::redis
