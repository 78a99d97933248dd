// What keel::redis::JobQueue and keel::redis::Worker share: the scripts as Script objects, and
// the pure pieces (reply parsing, retry delays) the unit tests cover without a server. Private.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/redis/queue.h"
#include "keel/redis/reply.h"
#include "keel/redis/script.h"
#include "keel/resilience/backoff.h"
#include "keel/resilience/cancellation.h"

namespace keel::redis::internal {

// The consumer group of every queue stream.
inline constexpr std::string_view kQueueGroup = "keel";

const Script& EnqueueScript();
const Script& ClaimScript();
const Script& StartScript();
const Script& FinishScript();
const Script& InspectScript();
const Script& ProgressScript();
const Script& HeartbeatScript();

// `{keel:queue:<name>}`.
std::string QueuePrefix(std::string_view name);

// A job the take script started, with where its stream entry is.
struct TakenJob {
  int level = 0;
  std::string entry;
  bool reclaimed = false;
  Job job;
};
// A job a worker holds, prefetched or running: where its claim ends (moved by the heartbeat),
// whether it is lost, and its cancellation. Shared by the worker's buffer, its running table, a
// heartbeat in flight and the handler's JobContext.
struct HeldJob {
  HeldJob(TakenJob t, TimePoint visible_until)
      : taken(std::move(t)), until_ns(visible_until.time_since_epoch().count()) {}
  const TakenJob taken;
  // When another worker may take the job over: the send time of the last take or extension
  // Redis confirmed, plus the visibility timeout. Redis counts the entry's idle time from when it
  // ran that call, which is after the send, so the job stays ours at least until then.
  std::atomic<int64_t> until_ns;
  // Set once when a heartbeat finds the entry owned by another consumer, gone, or started again
  // as a later attempt: the job is no longer this worker's and its completion is dropped.
  std::atomic<bool> lost{false};
  CancellationSource source;

  TimePoint until() const { return TimePoint(Duration(until_ns.load(std::memory_order_acquire))); }
  // Moves the claim's end to `t` unless it is later already (answers may come out of order).
  void ExtendTo(TimePoint t) {
    const int64_t ns = t.time_since_epoch().count();
    int64_t seen = until_ns.load(std::memory_order_relaxed);
    // release pairs with until()'s acquire; the value is the only thing published.
    while (seen < ns && !until_ns.compare_exchange_weak(seen, ns, std::memory_order_release,
                                                        std::memory_order_relaxed)) {
    }
  }
};

// The heartbeat script's reply: one flag per job sent, true when the claim was extended.
// INTERNAL for another shape or count.
absl::StatusOr<std::vector<bool>> ParseFlags(const Reply& reply, size_t count,
                                             std::string_view what);

// An entry delivered to this consumer (by a claim or a blocking read), to start: its level,
// entry id and job.
struct Delivered {
  int level = 0;
  std::string entry;
  std::string id;
  bool reclaimed = false;  // taken over from another consumer (or this one) past its visibility
};
// The claim script's reply.
struct ClaimResult {
  std::optional<Duration> next_due;  // until the next delayed job is due; nullopt: none
  std::vector<std::string> due;      // delayed jobs due now, for the start script to move
  std::vector<Delivered> entries;
};
// INTERNAL for another shape.
absl::StatusOr<ClaimResult> ParseClaim(const Reply& reply);
// The start script's reply: the jobs it started. INTERNAL for another shape.
absl::StatusOr<std::vector<TakenJob>> ParseStart(const Reply& reply);

struct TakeResult {
  std::optional<Duration> next_due;  // until the next delayed job is due; nullopt: none
  std::vector<TakenJob> jobs;
  TimePoint sent;  // when the start script was sent: the started jobs' claims began after it
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
