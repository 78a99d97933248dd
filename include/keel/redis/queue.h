// keel/redis/queue.h: a reliable job queue on Redis Streams consumer groups.
//
// Defines `keel::redis::JobQueue` (enqueue, status, dead letters, queue figures),
// `keel::redis::Worker` (runs a handler over the queue's jobs on its own threads), and the
// values they exchange: `EnqueueOptions`, `NewJob`, `Job`, `JobContext`, `JobState`,
// `JobStatus`, `DeadLetter`, `QueueInfo`, `JobQueueStats`, `WorkerStats`.
//
// Delivery is at least once: a job runs until a handler returns OK for it, and may run more than
// once (a worker killed after the effect and before the acknowledgement, a worker whose
// heartbeats could not reach Redis for a visibility timeout, or with the heartbeat off a handler
// that outlives its visibility timeout). Make effects idempotent by job id; with PostgreSQL, record
// the job id in the same transaction as the effect (docs/queue.md shows the idiom).
//
// On Redis, every key of a queue is under one hash tag, `{keel:queue:<name>}`:
//   ...:s:<p>        one stream per priority level p (0 .. priority_levels - 1), each with the
//                    consumer group "keel"; an entry holds only the job id and lives from
//                    enqueue (or promotion) until the job's attempt is acknowledged (XACK + XDEL)
//   ...:delayed      sorted set of job ids by due time (ms): delayed jobs and scheduled retries,
//                    moved into their stream by the take script when due
//   ...:dead         the dead-letter stream (id, payload, last error, attempts)
//   ...:job:<id>     hash: payload, state, attempts, max_attempts, priority, progress, error;
//                    expires `retention` after the job is done or dead
//   ...:idem:<key>   the job id an idempotency key was first used for, for idempotency_window
// Workers take jobs with two scripts (claim: XAUTOCLAIM jobs idle longer than the visibility
// timeout and XREADGROUP up to a batch, highest priority first, and list due delayed jobs;
// start: those jobs' hashes, and the due jobs moved into their streams), finish a batch with
// another (multi-id XACK, retry scheduling, dead letters), extend the claims of the jobs they
// hold with a heartbeat (one script per tick for all of them), and wait for new jobs with
// XREADGROUP BLOCK on a connection of their own (Client::Acquire), never on the multiplexed one.
// Every script gets every key it touches in KEYS (Redis Cluster's rule), all under the tag.
//
// Priority: a job's priority picks its stream; a take serves the highest level first and reads
// a lower level only when the higher ones are empty, so under sustained load of high-priority
// jobs, lower ones wait (strict priority, by design; keep levels few).
//
// Thread safety: JobQueue and Worker are thread-safe. REQUIRES: the Client outlives the
// JobQueue, and the JobQueue outlives its Workers.
//
//   auto queue = keel::redis::JobQueue::Create({.name = "emails"}, *client).value();
//   absl::StatusOr<std::string> id = queue->Enqueue(Deadline::After(100ms), payload,
//                                                   {.idempotency_key = "welcome:42"});
//   auto worker = keel::redis::Worker::Create(
//       {.handler = [&](const keel::redis::Job& job, keel::redis::JobContext& ctx) {
//          return SendEmail(job.payload, ctx.deadline());   // OK acknowledges; an error retries
//        },
//        .concurrency = 8,
//        .visibility_timeout = 30s},
//       *queue).value();
//   ...
//   worker->Stop(Deadline::After(10s));   // finishes or hands back the jobs it holds
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/limit/decision.h"
#include "keel/metrics.h"
#include "keel/redis/client.h"
#include "keel/resilience/backoff.h"
#include "keel/resilience/cancellation.h"

namespace keel::redis {

// Where a job is in its life.
enum class JobState {
  kQueued,   // in its stream, waiting for a worker
  kDelayed,  // enqueued with a delay that has not passed yet
  kRunning,  // taken by a worker, not acknowledged yet
  kDone,     // a handler returned OK
  kFailed,   // the last attempt failed; a retry is scheduled
  kDead,     // failed max_attempts times: in the dead letters
};
// "queued", "delayed", "running", "done", "failed", "dead".
std::string_view JobStateName(JobState state);

// Per-job options of Enqueue.
struct EnqueueOptions {
  // How long to wait before the job may run (Redis's clock). Default: 0 (at once). Must be >= 0.
  Duration delay = Duration::zero();
  // How many attempts before the job goes to the dead letters. Default: nullopt, the queue's
  // default_max_attempts. Must be >= 1.
  std::optional<int> max_attempts = std::nullopt;
  // Which priority level, 0 (lowest) .. priority_levels - 1; higher levels are taken first.
  // Default: 0.
  int priority = 0;
  // When set, a second Enqueue with the same key within the queue's idempotency_window enqueues
  // nothing and returns the first job's id. Default: empty (none). At most 1024 bytes.
  std::string idempotency_key;
};

// One job of EnqueueMany (views: keep them alive for the call).
struct NewJob {
  std::string_view payload;
  EnqueueOptions options;
};

// A job as a handler sees it.
struct Job {
  std::string id;
  std::string payload;
  int attempt = 0;  // 1 for the first run
  int max_attempts = 0;
  int priority = 0;
};

// What Status reports about a job.
struct JobStatus {
  JobState state = JobState::kQueued;
  int attempts = 0;  // attempts started so far
  int max_attempts = 0;
  int priority = 0;
  std::string progress;    // the last JobContext::SetProgress of a handler, or empty
  std::string last_error;  // the last failed attempt's error, or empty
};

// A job in the dead-letter stream.
struct DeadLetter {
  std::string id;
  std::string payload;
  std::string error;  // the last attempt's error
  int attempts = 0;
};

// The queue's figures from Redis (JobQueue::Inspect).
struct QueueInfo {
  int64_t depth = 0;    // jobs in the streams not taken by any worker
  int64_t pending = 0;  // jobs taken and not acknowledged (running, or held by a dead worker)
  int64_t delayed = 0;  // delayed jobs and scheduled retries
  int64_t dead = 0;     // entries of the dead-letter stream
  // Age of the oldest job in the streams (queued or pending), by its stream entry's time; zero
  // when the streams are empty.
  Duration oldest_age = Duration::zero();
};

// Counters of one JobQueue (monotonic; relaxed loads).
struct JobQueueStats {
  uint64_t enqueued_total = 0;    // jobs added
  uint64_t duplicates_total = 0;  // enqueues answered with an existing id (idempotency key)
};

class JobQueue {
 public:
  struct Options {
    // Names the queue: its Redis keys, its errors (`redis job queue "<name>": `) and its metric
    // label. Required; at most 128 bytes.
    std::string name;
    // Priority levels (one stream each). More levels cost a take a few more commands inside its
    // script. Default: 3. Must be in [1, 16].
    int priority_levels = 3;
    // Attempts of a job whose EnqueueOptions leave max_attempts unset. Default: 5. Must be >= 1.
    int default_max_attempts = 5;
    // The largest payload Enqueue accepts; larger ones are refused with INVALID_ARGUMENT, never
    // truncated. Default: 1 MiB. Must be >= 1.
    size_t max_payload_bytes = size_t{1} << 20;
    // How long an idempotency key keeps returning its first job's id. Default: 24 h. Must be > 0.
    Duration idempotency_window = std::chrono::hours(24);
    // How long Status still knows a job after it is done or dead. Default: 24 h. Must be > 0.
    Duration retention = std::chrono::hours(24);
    // The dead-letter stream is trimmed to about this many entries (XADD MAXLEN ~). Default:
    // 100 000. Must be >= 1.
    int64_t dead_letter_max = 100'000;
  };

  // Validates `options`; no I/O. `client`, `clock` and `metrics` must outlive the queue. With
  // `metrics`: counters keel_queue_{enqueued,duplicates}_total and gauges keel_queue_{depth,
  // pending,delayed,dead_letters,oldest_job_age_seconds}{name=<name>}, the gauges as of the last
  // Inspect (a Worker calls it every Worker::Options::inspect_interval).
  // Errors: INVALID_ARGUMENT naming the bad field.
  static absl::StatusOr<std::unique_ptr<JobQueue>> Create(Options options, Client& client,
                                                          Clock& clock = SteadyClock(),
                                                          MetricsRegistry* metrics = nullptr);
  ~JobQueue();
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // Adds a job (one script, one round trip) and returns its id (32 hex digits), or, for an
  // idempotency key seen within idempotency_window, the first job's id without adding anything.
  // Once this returns OK the job is in Redis: with appendonly yes (and appendfsync always for a
  // machine crash) it survives a Redis restart.
  // Errors: INVALID_ARGUMENT naming the field (payload over max_payload_bytes, a negative delay,
  // max_attempts < 1, priority out of range, idempotency key too long), without I/O; the
  // client's errors (UNAVAILABLE, DEADLINE_EXCEEDED: the job may or may not have been added).
  absl::StatusOr<std::string> Enqueue(Deadline deadline, std::string_view payload,
                                      const EnqueueOptions& options = {});

  // Enqueue for many jobs in one pipelined round trip; one result per job, in order.
  // Errors: INVALID_ARGUMENT (any job, naming its index) before any I/O, then nothing is sent;
  // the client's errors when the round trip fails as a whole.
  absl::StatusOr<std::vector<absl::StatusOr<std::string>>> EnqueueMany(
      Deadline deadline, std::span<const NewJob> jobs);

  // Where job `id` is. Errors: NOT_FOUND for an id never enqueued or whose retention passed;
  // the client's errors.
  absl::StatusOr<JobStatus> Status(Deadline deadline, std::string_view id);

  // The oldest `max` entries of the dead-letter stream.
  absl::StatusOr<std::vector<DeadLetter>> DeadLetters(Deadline deadline, int64_t max = 100);

  // The queue's figures, in one script; also updates the gauges.
  absl::StatusOr<QueueInfo> Inspect(Deadline deadline);

  JobQueueStats Stats() const;
  const Options& options() const { return options_; }
  Client& client() const { return client_; }
  Clock& clock() const { return clock_; }
  MetricsRegistry* metrics() const { return metrics_; }
  // `{keel:queue:<name>}`: every Redis key of the queue starts with it.
  const std::string& KeyPrefix() const { return prefix_; }

 private:
  friend class Worker;
  JobQueue(Options options, Client& client, Clock& clock, MetricsRegistry* metrics);
  absl::Status RegisterMetrics();
  absl::Status CheckJob(const EnqueueOptions& options, std::string_view payload,
                        std::string_view where) const;

  const Options options_;
  Client& client_;
  Clock& clock_;
  MetricsRegistry* metrics_;
  const std::string prefix_;
  const std::string error_prefix_;  // `redis job queue "<name>": `
  // Every key a take or finish script touches: delayed, dead, then the streams by level.
  std::vector<std::string> script_keys_;
  std::atomic<uint64_t> enqueued_{0};
  std::atomic<uint64_t> duplicates_{0};
  // The last Inspect's figures, for the gauges (relaxed: each a figure on its own).
  std::atomic<int64_t> depth_{0}, pending_{0}, delayed_{0}, dead_{0};
  std::atomic<double> oldest_age_seconds_{0};
  Counter* enqueued_counter_ = nullptr;
  Counter* duplicates_counter_ = nullptr;
  std::vector<MetricsRegistry::Registration> registrations_;
};

namespace internal {
struct HeldJob;
}  // namespace internal

// What a handler gets besides its job.
class JobContext {
 public:
  int attempt() const { return attempt_; }
  int max_attempts() const { return max_attempts_; }
  // When the job's claim runs out: after it another worker may take the job over. It is the
  // time this worker sent the take (or, with the heartbeat, the last extension Redis
  // confirmed) plus Worker::Options::visibility_timeout: Redis starts the claim's clock when it
  // runs that call, after the send, so the job is this worker's at least until then. The
  // heartbeat moves it forward while the handler runs; each call reads the current one, and a
  // Deadline already passed down keeps the time it was read at (read it again before each
  // long step). Pass it down to the job's own calls.
  Deadline deadline() const;
  // Cancelled when the worker stops before the handler finished (the job is being handed back),
  // when a heartbeat finds the job no longer this worker's (another worker took it over, or it
  // was deleted), or once deadline() has passed (noticed by the worker's Redis thread within
  // about Worker::Options::poll_interval).
  CancellationToken cancellation() const { return cancellation_; }
  // Records a progress note that Status(id) reports (one script on the client; Infinite: the
  // client's command_timeout). Does nothing once the job's record is gone. Errors: the client's.
  absl::Status SetProgress(Deadline deadline, std::string_view progress);

 private:
  friend class Worker;
  JobContext(JobQueue& queue, const internal::HeldJob& held, std::string_view id, int attempt,
             int max_attempts, const Clock& clock, CancellationToken cancellation)
      : queue_(queue),
        held_(held),
        id_(id),
        attempt_(attempt),
        max_attempts_(max_attempts),
        clock_(clock),
        cancellation_(std::move(cancellation)) {}
  JobQueue& queue_;
  const internal::HeldJob& held_;
  std::string_view id_;
  int attempt_;
  int max_attempts_;
  const Clock& clock_;
  CancellationToken cancellation_;
};

// Counters and gauges of one Worker (relaxed loads: each exact, not taken together).
struct WorkerStats {
  uint64_t taken_total = 0;               // attempts started (new and reclaimed)
  uint64_t reclaimed_total = 0;           // of which taken over from a dead or late worker
  uint64_t succeeded_total = 0;           // handlers that returned OK (acknowledged)
  uint64_t retried_total = 0;             // failed attempts with a retry scheduled
  uint64_t dead_total = 0;                // jobs this worker moved to the dead letters
  uint64_t handed_back_total = 0;         // jobs handed back at Stop (not run or not finished)
  uint64_t handler_exceptions_total = 0;  // handlers that threw (counted as failed attempts)
  uint64_t redis_errors_total = 0;        // take / finish / wait / inspect calls that failed
  uint64_t take_calls_total = 0;          // claim and start scripts run (round trips)
  uint64_t finish_calls_total = 0;        // finish scripts run (round trips)
  uint64_t blocking_reads_total = 0;      // XREADGROUP BLOCK waits on the dedicated connection
  uint64_t limiter_errors_total = 0;      // start_limiter errors (the job then started anyway)
  uint64_t heartbeats_total = 0;          // heartbeat scripts sent (one round trip each)
  uint64_t extended_total = 0;            // job claims a heartbeat extended
  uint64_t lost_total = 0;                // held jobs a heartbeat found no longer this worker's
  uint64_t stale_completions_total = 0;   // completions dropped: the job was no longer ours
  uint64_t running = 0;                   // handlers running now
  uint64_t buffered = 0;                  // jobs taken and waiting for a handler thread
};

class Worker {
 public:
  // Runs one attempt of `job`. OK acknowledges the job; an error (or an exception, caught)
  // fails the attempt: a retry after the backoff, or the dead letters after max_attempts.
  using Handler = std::function<absl::Status(const Job& job, JobContext& context)>;
  // Asked before each job starts; a denial waits its retry_after (or until Stop) and asks again.
  // Wrap any keel limiter: `[&](Deadline) { return bucket.TryAcquire(); }`.
  using StartLimiter = std::function<absl::StatusOr<limit::Decision>(Deadline deadline)>;

  struct Options {
    // The job handler. Required.
    Handler handler;
    // Handler threads. Default: 4. Must be >= 1.
    int concurrency = 4;
    // Most jobs taken per read, and completions finished per script: Redis round trips per job
    // are about 2 / batch under load. The worker holds at most concurrency + batch jobs (the
    // rest prefetched). Default: 16. Must be in [1, 1000].
    int batch = 16;
    // How long a taken job stays invisible to other workers; after it, a worker takes it over
    // (its attempt counted). Cover the job's run plus its wait in the prefetch. Default: 30 s.
    // Must be > 0. With the heartbeat, a job stays invisible while the worker holds it, and
    // this bounds how long a dead worker's jobs wait to be taken over.
    Duration visibility_timeout = std::chrono::seconds(30);
    // While the worker holds jobs (running or prefetched), extend their claims every
    // heartbeat_interval, all of them in one script (one round trip per tick), from the client's
    // shared timer thread (Client::SharedTimer) when the worker's clock is the client's. A job a
    // heartbeat finds taken over by another worker (or deleted) has its cancellation token
    // cancelled, is not extended again, and its completion is dropped. Off: a handler that
    // outlives visibility_timeout has its job taken over while it runs. REQUIRES a client on the
    // multiplexed transport (the extension is an async call). Default: true.
    bool heartbeat = true;
    // The heartbeat's period. Default: nullopt, visibility_timeout / 3 (two ticks may fail before
    // a claim runs out). Must be > 0 and < visibility_timeout.
    std::optional<Duration> heartbeat_interval = std::nullopt;
    // Delay before retry n (n = 1 for the first retry): the schedule's (n - 1)-th delay, with
    // its jitter. Default: full jitter from 1 s, capped at 5 min.
    Backoff::Options retry_backoff = {.kind = Backoff::Kind::kFullJitter,
                                      .base = std::chrono::seconds(1),
                                      .cap = std::chrono::minutes(5)};
    // Longest XREADGROUP BLOCK wait of an idle worker (shorter when a delayed job is due
    // sooner). Default: 1 s. Must be > 0.
    Duration poll_interval = std::chrono::seconds(1);
    // Wait after a Redis error before the worker tries again. Default: 100 ms. Must be > 0.
    Duration redis_retry_delay = std::chrono::milliseconds(100);
    // How often the worker refreshes its queue's figures (JobQueue::Inspect). Default: 5 s;
    // nullopt: never.
    std::optional<Duration> inspect_interval = std::chrono::seconds(5);
    // Optional pacing of job starts (see StartLimiter). A job waiting for a permit spends its
    // visibility timeout. Default: none.
    StartLimiter start_limiter;
    // Bound of the Stop the destructor runs. Default: 10 s. Must be >= 0.
    Duration stop_timeout = std::chrono::seconds(10);
  };

  // Validates `options` and starts the worker's threads (one for Redis, `concurrency` for
  // handlers; the heartbeat runs on the client's shared timer, or on a timer of the worker's own
  // when `clock` is not the client's). With `metrics`: counters keel_queue_jobs_{taken,
  // succeeded,retried,dead,handed_back,extended,lost}_total and the histogram
  // keel_queue_handler_seconds{name=<queue name>} (shared by the workers of one queue in one
  // registry). Errors: INVALID_ARGUMENT naming the bad field (heartbeat on a pooled client too);
  // INTERNAL when the heartbeat's timer cannot start.
  static absl::StatusOr<std::unique_ptr<Worker>> Create(Options options, JobQueue& queue,
                                                        Clock& clock = SteadyClock(),
                                                        MetricsRegistry* metrics = nullptr);
  // As above, with the random source of the retry jitter (used by the worker's Redis thread
  // only). `random` must outlive the worker.
  static absl::StatusOr<std::unique_ptr<Worker>> Create(Options options, JobQueue& queue,
                                                        Clock& clock, MetricsRegistry* metrics,
                                                        absl::BitGenRef random);
  // Stop(Deadline::After(stop_timeout)), then waits for the handler threads to return (a
  // handler that ignores its cancellation token holds the destructor up).
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Stops taking jobs, hands back the jobs taken but not started, waits for running handlers
  // until shortly before `deadline`, then cancels the ones still running and hands their jobs
  // back (visible to other workers at once, the attempt not counted), and acknowledges what
  // finished. Returns by `deadline`.
  // Errors: DEADLINE_EXCEEDED when the last acknowledgements or hand-backs were not confirmed
  // by Redis in time (those jobs come back after their visibility timeout); FAILED_PRECONDITION
  // when already stopped.
  absl::Status Stop(Deadline deadline);

  WorkerStats Stats() const;
  // The worker's consumer name in the group: `<host>-<pid>-<random>`.
  const std::string& consumer() const;

 private:
  class Impl;
  explicit Worker(std::unique_ptr<Impl> impl);
  static absl::StatusOr<std::unique_ptr<Worker>> CreateImpl(Options options, JobQueue& queue,
                                                            Clock& clock, MetricsRegistry* metrics,
                                                            std::optional<absl::BitGenRef> random);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::redis
