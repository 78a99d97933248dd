// keel::redis::JobQueue: enqueue, status, dead letters and figures of a queue (see queue.h).
#include "keel/redis/queue.h"

#include <deque>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "lease.h"
#include "queue_internal.h"

namespace keel::redis {

using keel::internal::InvalidOption;
using keel::internal::StrCat;

namespace {

constexpr size_t kMaxIdempotencyKeyBytes = 1024;

absl::Status ValidateQueueOptions(const JobQueue::Options& o) {
  const keel::internal::OptionsOf of("redis job queue", o.name);
  if (o.name.empty() || o.name.size() > 128) {
    return InvalidOption(of, "name", "1 to 128 bytes", StrCat(o.name.size(), " bytes"));
  }
  if (o.priority_levels < 1 || o.priority_levels > 16) {
    return InvalidOption(of, "priority_levels", "in [1, 16]", o.priority_levels);
  }
  KEEL_RETURN_IF_ERROR(
      keel::internal::RequireAtLeast(of, "default_max_attempts", o.default_max_attempts, 1));
  KEEL_RETURN_IF_ERROR(
      keel::internal::RequireAtLeast(of, "max_payload_bytes", o.max_payload_bytes, size_t{1}));
  KEEL_RETURN_IF_ERROR(
      keel::internal::RequirePositive(of, "idempotency_window", o.idempotency_window));
  KEEL_RETURN_IF_ERROR(keel::internal::RequirePositive(of, "retention", o.retention));
  return keel::internal::RequireAtLeast(of, "dead_letter_max", o.dead_letter_max, int64_t{1});
}

}  // namespace

JobQueue::JobQueue(Options options, Client& client, Clock& clock, MetricsRegistry* metrics)
    : options_(std::move(options)),
      client_(client),
      clock_(clock),
      metrics_(metrics),
      prefix_(internal::QueuePrefix(options_.name)),
      error_prefix_(StrCat("redis job queue \"", options_.name, "\": ")) {
  script_keys_.push_back(prefix_ + ":delayed");
  script_keys_.push_back(prefix_ + ":dead");
  for (int level = 0; level < options_.priority_levels; ++level) {
    script_keys_.push_back(StrCat(prefix_, ":s:", level));
  }
}

JobQueue::~JobQueue() = default;

absl::StatusOr<std::unique_ptr<JobQueue>> JobQueue::Create(Options options, Client& client,
                                                           Clock& clock, MetricsRegistry* metrics) {
  KEEL_RETURN_IF_ERROR(ValidateQueueOptions(options));
  std::unique_ptr<JobQueue> queue(new JobQueue(std::move(options), client, clock, metrics));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(queue->RegisterMetrics());
  return queue;
}

absl::Status JobQueue::RegisterMetrics() {
  const Labels labels = {{"name", options_.name}};
  KEEL_ASSIGN_OR_RETURN(enqueued_counter_, metrics_->AddCounter("keel_queue_enqueued_total",
                                                                "Jobs enqueued.", labels));
  KEEL_ASSIGN_OR_RETURN(
      duplicates_counter_,
      metrics_->AddCounter("keel_queue_duplicates_total",
                           "Enqueues answered with an existing job id (idempotency key).", labels));
  struct GaugeSpec {
    const char* name;
    const char* help;
    std::function<double()> read;
  };
  const GaugeSpec gauges[] = {
      {"keel_queue_depth", "Jobs waiting for a worker (as of the last inspection).",
       [this] { return static_cast<double>(depth_.load(std::memory_order_relaxed)); }},
      {"keel_queue_pending", "Jobs taken and not acknowledged (as of the last inspection).",
       [this] { return static_cast<double>(pending_.load(std::memory_order_relaxed)); }},
      {"keel_queue_delayed", "Delayed jobs and scheduled retries (as of the last inspection).",
       [this] { return static_cast<double>(delayed_.load(std::memory_order_relaxed)); }},
      {"keel_queue_dead_letters", "Entries of the dead-letter stream (as of the last inspection).",
       [this] { return static_cast<double>(dead_.load(std::memory_order_relaxed)); }},
      {"keel_queue_oldest_job_age_seconds",
       "Age of the oldest job in the streams (as of the last inspection).",
       [this] { return oldest_age_seconds_.load(std::memory_order_relaxed); }},
  };
  for (const GaugeSpec& g : gauges) {
    KEEL_ASSIGN_OR_RETURN(MetricsRegistry::Registration r,
                          metrics_->AddGaugeCallback(g.name, g.help, labels, g.read));
    registrations_.push_back(std::move(r));
  }
  return absl::OkStatus();
}

absl::Status JobQueue::CheckJob(const EnqueueOptions& o, std::string_view payload,
                                std::string_view where) const {
  const std::string owner = StrCat(error_prefix_, where);
  auto invalid = [&](std::string_view field, std::string_view rule, std::string_view got) {
    return absl::InvalidArgumentError(StrCat(owner, field, " must be ", rule, ", got ", got));
  };
  if (payload.size() > options_.max_payload_bytes) {
    return invalid("payload", StrCat("<= ", options_.max_payload_bytes, " bytes"),
                   StrCat(payload.size(), " bytes"));
  }
  if (o.delay < Duration::zero()) {
    return invalid("delay", ">= 0", keel::internal::FormatDuration(o.delay));
  }
  if (o.max_attempts.has_value() && *o.max_attempts < 1) {
    return invalid("max_attempts", ">= 1", StrCat(*o.max_attempts));
  }
  if (o.priority < 0 || o.priority >= options_.priority_levels) {
    return invalid("priority", StrCat("in [0, ", options_.priority_levels - 1, "]"),
                   StrCat(o.priority));
  }
  if (o.idempotency_key.size() > kMaxIdempotencyKeyBytes) {
    return invalid("idempotency_key", StrCat("<= ", kMaxIdempotencyKeyBytes, " bytes"),
                   StrCat(o.idempotency_key.size(), " bytes"));
  }
  return absl::OkStatus();
}

namespace {

// The keys and arguments of one enqueue script run (owning what the views point at).
struct EnqueueCall {
  EnqueueCall(const EnqueueCall&) = delete;  // `keys` and `args` view the members
  EnqueueCall& operator=(const EnqueueCall&) = delete;
  std::string stream, job, idem, id, max_attempts, priority, delay_ms, window_ms;
  std::string_view payload;
  std::vector<std::string_view> keys, args;

  EnqueueCall(const JobQueue& queue, const std::string& delayed, std::string_view payload_in,
              const EnqueueOptions& o)
      : payload(payload_in) {
    const std::string& prefix = queue.KeyPrefix();
    id = internal::NewLockToken();
    stream = StrCat(prefix, ":s:", o.priority);
    job = StrCat(prefix, ":job:", id);
    idem = o.idempotency_key.empty() ? job : StrCat(prefix, ":idem:", o.idempotency_key);
    max_attempts = StrCat(o.max_attempts.value_or(queue.options().default_max_attempts));
    priority = StrCat(o.priority);
    delay_ms = StrCat(internal::CeilMillis(o.delay));
    window_ms = o.idempotency_key.empty()
                    ? "0"
                    : StrCat(internal::CeilMillis(queue.options().idempotency_window));
    keys = {stream, delayed, job, idem};
    args = {id, payload, max_attempts, priority, delay_ms, window_ms};
  }
};

}  // namespace

absl::StatusOr<std::string> JobQueue::Enqueue(Deadline deadline, std::string_view payload,
                                              const EnqueueOptions& options) {
  KEEL_RETURN_IF_ERROR(CheckJob(options, payload, ""));
  EnqueueCall call(*this, script_keys_[0], payload, options);
  absl::StatusOr<Reply> reply =
      internal::EnqueueScript().RunArgv(client_, deadline, call.keys, call.args);
  if (!reply.ok()) return std::move(reply).status();
  const auto& f = reply->elements();
  if (f.size() != 2 || !f[0].is_string() || !f[1].is_integer()) {
    return absl::InternalError(
        StrCat(error_prefix_, "unexpected enqueue reply: ", reply->DebugString()));
  }
  if (f[1].integer() == 1) {
    enqueued_.fetch_add(1, std::memory_order_relaxed);
    if (enqueued_counter_ != nullptr) enqueued_counter_->Increment();
  } else {
    duplicates_.fetch_add(1, std::memory_order_relaxed);
    if (duplicates_counter_ != nullptr) duplicates_counter_->Increment();
  }
  return f[0].str();
}

absl::StatusOr<std::vector<absl::StatusOr<std::string>>> JobQueue::EnqueueMany(
    Deadline deadline, std::span<const NewJob> jobs) {
  for (size_t i = 0; i < jobs.size(); ++i) {
    KEEL_RETURN_IF_ERROR(CheckJob(jobs[i].options, jobs[i].payload, StrCat("jobs[", i, "].")));
  }
  std::deque<EnqueueCall> owned;  // never moves its elements
  std::vector<Script::Call> calls;
  calls.reserve(jobs.size());
  for (const NewJob& job : jobs) {
    owned.emplace_back(*this, script_keys_[0], job.payload, job.options);
    calls.push_back({owned.back().keys, owned.back().args});
  }
  KEEL_ASSIGN_OR_RETURN(PipelineReplies replies,
                        internal::EnqueueScript().RunMany(client_, deadline, calls));
  std::vector<absl::StatusOr<std::string>> out;
  out.reserve(replies.size());
  uint64_t added = 0, duplicates = 0;
  for (absl::StatusOr<Reply>& reply : replies) {
    if (!reply.ok()) {
      out.push_back(std::move(reply).status());
      continue;
    }
    const auto& f = reply->elements();
    if (f.size() != 2 || !f[0].is_string() || !f[1].is_integer()) {
      out.push_back(absl::InternalError(
          StrCat(error_prefix_, "unexpected enqueue reply: ", reply->DebugString())));
      continue;
    }
    (f[1].integer() == 1 ? added : duplicates) += 1;
    out.push_back(f[0].str());
  }
  enqueued_.fetch_add(added, std::memory_order_relaxed);
  duplicates_.fetch_add(duplicates, std::memory_order_relaxed);
  if (enqueued_counter_ != nullptr) enqueued_counter_->Increment(added);
  if (duplicates_counter_ != nullptr) duplicates_counter_->Increment(duplicates);
  return out;
}

absl::StatusOr<JobStatus> JobQueue::Status(Deadline deadline, std::string_view id) {
  const std::string key = StrCat(prefix_, ":job:", id);
  std::vector<std::string_view> argv = {"HMGET", key};
  for (std::string_view field : internal::kStatusFields) argv.push_back(field);
  KEEL_ASSIGN_OR_RETURN(Reply reply, client_.CommandArgv(deadline, argv));
  KEEL_ASSIGN_OR_RETURN(std::optional<JobStatus> status, internal::ParseStatus(reply));
  if (!status.has_value()) {
    return absl::NotFoundError(StrCat(error_prefix_, "no job ", id, " (never enqueued, or its ",
                                      keel::internal::FormatDuration(options_.retention),
                                      " retention passed)"));
  }
  return std::move(*status);
}

absl::StatusOr<std::vector<DeadLetter>> JobQueue::DeadLetters(Deadline deadline, int64_t max) {
  if (max < 1)
    return absl::InvalidArgumentError(StrCat(error_prefix_, "max must be >= 1, got ", max));
  KEEL_ASSIGN_OR_RETURN(
      Reply reply, client_.Command(deadline, "XRANGE", script_keys_[1], "-", "+", "COUNT", max));
  return internal::ParseDeadLetters(reply);
}

absl::StatusOr<QueueInfo> JobQueue::Inspect(Deadline deadline) {
  const std::string_view group = internal::kQueueGroup;
  std::vector<std::string_view> keys(script_keys_.begin(), script_keys_.end());
  const std::string_view args[] = {group};
  KEEL_ASSIGN_OR_RETURN(Reply reply,
                        internal::InspectScript().RunArgv(client_, deadline, keys, args));
  KEEL_ASSIGN_OR_RETURN(QueueInfo info, internal::ParseInspect(reply));
  depth_.store(info.depth, std::memory_order_relaxed);
  pending_.store(info.pending, std::memory_order_relaxed);
  delayed_.store(info.delayed, std::memory_order_relaxed);
  dead_.store(info.dead, std::memory_order_relaxed);
  oldest_age_seconds_.store(std::chrono::duration<double>(info.oldest_age).count(),
                            std::memory_order_relaxed);
  return info;
}

JobQueueStats JobQueue::Stats() const {
  return {.enqueued_total = enqueued_.load(std::memory_order_relaxed),
          .duplicates_total = duplicates_.load(std::memory_order_relaxed)};
}

absl::Status JobContext::SetProgress(Deadline deadline, std::string_view progress) {
  const std::string key = StrCat(queue_.KeyPrefix(), ":job:", id_);
  const std::string_view keys[] = {key};
  const std::string_view args[] = {progress};
  return internal::ProgressScript().RunArgv(queue_.client(), deadline, keys, args).status();
}

}  // namespace keel::redis
