// The pure pieces of the job queue: what its scripts' replies mean, and retry delays.
#include <charconv>
#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "keel/internal/strings.h"
#include "queue_internal.h"
#include "queue_scripts.h"

namespace keel::redis::internal {

using keel::internal::StrCat;

namespace {

absl::Status Unexpected(std::string_view what, const Reply& reply) {
  return absl::InternalError(
      StrCat("redis job queue: unexpected ", what, " reply: ", reply.DebugString()));
}

std::optional<int64_t> ToInt(std::string_view s) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

const Script& EnqueueScript() {
  static const Script script(std::string(kQueuePrelude) + kEnqueueBody);
  return script;
}
const Script& ClaimScript() {
  static const Script script(std::string(kQueuePrelude) + kClaimBody);
  return script;
}
const Script& StartScript() {
  static const Script script(std::string(kQueuePrelude) + kStartBody);
  return script;
}
const Script& FinishScript() {
  static const Script script(std::string(kQueuePrelude) + kFinishBody);
  return script;
}
const Script& InspectScript() {
  static const Script script(std::string(kQueuePrelude) + kInspectBody);
  return script;
}
const Script& HeartbeatScript() {
  static const Script script(std::string(kQueuePrelude) + kHeartbeatBody);
  return script;
}
const Script& ProgressScript() {
  static const Script script(kProgressScript);
  return script;
}

std::string QueuePrefix(std::string_view name) { return StrCat("{keel:queue:", name, "}"); }

absl::StatusOr<std::vector<bool>> ParseFlags(const Reply& reply, size_t count,
                                             std::string_view what) {
  // An empty Lua table comes back as an empty array.
  if (!reply.is_array() || reply.elements().size() != count) return Unexpected(what, reply);
  std::vector<bool> flags;
  flags.reserve(count);
  for (const Reply& f : reply.elements()) {
    if (!f.is_integer() || (f.integer() != 0 && f.integer() != 1)) return Unexpected(what, reply);
    flags.push_back(f.integer() == 1);
  }
  return flags;
}

absl::StatusOr<ClaimResult> ParseClaim(const Reply& reply) {
  const auto& top = reply.elements();
  if (!reply.is_array() || top.size() != 3 || !top[0].is_integer() || !top[1].is_array() ||
      !top[2].is_array()) {
    return Unexpected("claim", reply);
  }
  ClaimResult result;
  if (top[0].integer() >= 0) result.next_due = std::chrono::milliseconds(top[0].integer());
  for (const Reply& id : top[1].elements()) {
    if (!id.is_string()) return Unexpected("claim", reply);
    result.due.push_back(id.str());
  }
  for (const Reply& e : top[2].elements()) {
    const auto& f = e.elements();
    if (f.size() != 4 || !f[0].is_integer() || !f[1].is_string() || !f[2].is_string() ||
        !f[3].is_integer()) {
      return Unexpected("claim", reply);
    }
    result.entries.push_back({.level = static_cast<int>(f[0].integer()),
                              .entry = f[1].str(),
                              .id = f[2].str(),
                              .reclaimed = f[3].integer() != 0});
  }
  return result;
}

absl::StatusOr<std::vector<TakenJob>> ParseStart(const Reply& reply) {
  if (!reply.is_array()) return Unexpected("start", reply);
  std::vector<TakenJob> jobs;
  for (const Reply& j : reply.elements()) {
    const auto& f = j.elements();
    if (f.size() != 7 || !f[0].is_integer() || !f[1].is_string() || !f[2].is_string() ||
        !f[3].is_string() || !f[4].is_integer() || !f[5].is_integer() || !f[6].is_integer()) {
      return Unexpected("start", reply);
    }
    TakenJob taken;
    taken.level = static_cast<int>(f[0].integer());
    taken.entry = f[1].str();
    taken.reclaimed = f[6].integer() != 0;
    taken.job.id = f[2].str();
    taken.job.payload = f[3].str();
    taken.job.attempt = static_cast<int>(f[4].integer());
    taken.job.max_attempts = static_cast<int>(f[5].integer());
    taken.job.priority = taken.level;
    jobs.push_back(std::move(taken));
  }
  return jobs;
}

absl::StatusOr<std::vector<Delivered>> ParseBlockingRead(const Reply& reply,
                                                         std::span<const std::string> streams) {
  std::vector<Delivered> out;
  if (reply.is_nil()) return out;
  if (!reply.is_array()) return Unexpected("XREADGROUP", reply);
  for (const Reply& stream : reply.elements()) {
    const auto& s = stream.elements();
    if (s.size() != 2 || !s[0].is_string() || !s[1].is_array()) {
      return Unexpected("XREADGROUP", reply);
    }
    int level = -1;
    for (size_t i = 0; i < streams.size(); ++i) {
      if (streams[i] == s[0].str()) level = static_cast<int>(i);
    }
    if (level < 0) return Unexpected("XREADGROUP", reply);
    for (const Reply& entry : s[1].elements()) {
      const auto& e = entry.elements();
      if (e.size() != 2 || !e[0].is_string() || e[1].elements().size() != 2 ||
          e[1].elements()[0].str() != "id") {
        return Unexpected("XREADGROUP", reply);
      }
      out.push_back({level, e[0].str(), e[1].elements()[1].str(), false});
    }
  }
  return out;
}

absl::StatusOr<QueueInfo> ParseInspect(const Reply& reply) {
  const auto& f = reply.elements();
  if (f.size() != 5) return Unexpected("inspect", reply);
  for (const Reply& r : f) {
    if (!r.is_integer()) return Unexpected("inspect", reply);
  }
  QueueInfo info;
  info.depth = f[0].integer();
  info.pending = f[1].integer();
  info.delayed = f[2].integer();
  info.dead = f[3].integer();
  if (f[4].integer() > 0) info.oldest_age = std::chrono::milliseconds(f[4].integer());
  return info;
}

std::optional<JobState> ParseJobState(std::string_view name) {
  for (JobState s : {JobState::kQueued, JobState::kDelayed, JobState::kRunning, JobState::kDone,
                     JobState::kFailed, JobState::kDead}) {
    if (JobStateName(s) == name) return s;
  }
  return std::nullopt;
}

absl::StatusOr<std::optional<JobStatus>> ParseStatus(const Reply& reply) {
  const auto& f = reply.elements();
  if (f.size() != std::size(kStatusFields)) return Unexpected("HMGET", reply);
  if (f[0].is_nil()) return std::optional<JobStatus>();
  const std::optional<JobState> state = ParseJobState(f[0].str());
  const std::optional<int64_t> attempts = ToInt(f[1].str());
  const std::optional<int64_t> max_attempts = ToInt(f[2].str());
  const std::optional<int64_t> priority = ToInt(f[3].str());
  if (!state || !attempts || !max_attempts || !priority) return Unexpected("HMGET", reply);
  JobStatus status;
  status.state = *state;
  status.attempts = static_cast<int>(*attempts);
  status.max_attempts = static_cast<int>(*max_attempts);
  status.priority = static_cast<int>(*priority);
  status.progress = f[4].str();
  status.last_error = f[5].str();
  return std::optional<JobStatus>(std::move(status));
}

absl::StatusOr<std::vector<DeadLetter>> ParseDeadLetters(const Reply& reply) {
  std::vector<DeadLetter> out;
  if (!reply.is_array()) return Unexpected("XRANGE", reply);
  for (const Reply& entry : reply.elements()) {
    const auto& e = entry.elements();
    if (e.size() != 2 || !e[1].is_array() || e[1].elements().size() % 2 != 0) {
      return Unexpected("XRANGE", reply);
    }
    DeadLetter letter;
    const auto& fields = e[1].elements();
    for (size_t i = 0; i + 1 < fields.size(); i += 2) {
      const std::string& name = fields[i].str();
      const std::string& value = fields[i + 1].str();
      if (name == "id") letter.id = value;
      if (name == "payload") letter.payload = value;
      if (name == "error") letter.error = value;
      if (name == "attempts") letter.attempts = static_cast<int>(ToInt(value).value_or(0));
    }
    out.push_back(std::move(letter));
  }
  return out;
}

Duration RetryDelay(const Backoff& backoff, int attempt, absl::BitGenRef random) {
  BackoffSequence delays = backoff.StartAt(attempt < 1 ? 0 : attempt - 1);
  return delays.Next(random);
}

int64_t CeilMillis(Duration d) {
  if (d <= Duration::zero()) return 0;
  return std::chrono::ceil<std::chrono::milliseconds>(d).count();
}

}  // namespace keel::redis::internal

namespace keel::redis {

std::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return "queued";
    case JobState::kDelayed:
      return "delayed";
    case JobState::kRunning:
      return "running";
    case JobState::kDone:
      return "done";
    case JobState::kFailed:
      return "failed";
    case JobState::kDead:
      return "dead";
  }
  return "unknown";
}

}  // namespace keel::redis
