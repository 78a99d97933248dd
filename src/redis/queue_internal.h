// What keel::redis::JobQueue and keel::redis::Worker share: the scripts as Script objects, and
// the pure pieces (reply parsing, retry delays) the unit tests cover without a server. Private.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/redis/queue.h"
#include "keel/redis/reply.h"
#include "keel/redis/script.h"
#include "keel/resilience/backoff.h"

namespace keel::redis::internal {

// The consumer group of every queue stream.
inline constexpr std::string_view kQueueGroup = "keel";

const Script& EnqueueScript();
const Script& TakeScript();
const Script& FinishScript();
const Script& InspectScript();
const Script& ProgressScript();

// `{keel:queue:<name>}`.
std::string QueuePrefix(std::string_view name);

// A job the take script started, with where its stream entry is.
struct TakenJob {
  int level = 0;
  std::string entry;
  bool reclaimed = false;
  Job job;
};
struct TakeResult {
  std::optional<Duration> next_due;  // until the next delayed job is due; nullopt: none
  std::vector<TakenJob> jobs;
};
// The take script's reply. INTERNAL for another shape.
absl::StatusOr<TakeResult> ParseTake(const Reply& reply);

// An entry a blocking XREADGROUP delivered: its level (from the stream's name), entry id and job.
struct Delivered {
  int level = 0;
  std::string entry;
  std::string id;
};
// XREADGROUP's reply (nil: nothing) over `streams` (the level's stream names, by level).
absl::StatusOr<std::vector<Delivered>> ParseBlockingRead(const Reply& reply,
                                                         std::span<const std::string> streams);

absl::StatusOr<QueueInfo> ParseInspect(const Reply& reply);

// The fields Status reads, in the order ParseStatus expects them.
inline constexpr std::string_view kStatusFields[] = {"state",    "attempts", "max_attempts",
                                                     "priority", "progress", "error"};
// HMGET's reply for kStatusFields; nullopt when the job is unknown (no state).
absl::StatusOr<std::optional<JobStatus>> ParseStatus(const Reply& reply);
std::optional<JobState> ParseJobState(std::string_view name);

// XRANGE's reply over the dead-letter stream.
absl::StatusOr<std::vector<DeadLetter>> ParseDeadLetters(const Reply& reply);

// The delay before the retry after failed attempt `attempt` (1 = the first attempt): the
// schedule's (attempt - 1)-th delay, with its jitter.
Duration RetryDelay(const Backoff& backoff, int attempt, absl::BitGenRef random);

// `d` in whole milliseconds, rounded up (a delay never ends early), at least 0.
int64_t CeilMillis(Duration d);

}  // namespace keel::redis::internal
