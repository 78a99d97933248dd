// keel/redis/rate_limiter.h: rate limits shared by every process through Redis, with the same
// algorithms, semantics and Decision as keel's in-process limiters.
//
// Defines `keel::redis::RateLimiter`, its `Options` and `RateLimiterStats`; `FailMode` is in
// keel/redis/fail_mode.h.
//
// Each check is one atomic Lua script (keel::redis::Script: EVALSHA, reloaded on NOSCRIPT) that
// reads the server's clock (`TIME`), so the clocks of the clients do not matter. The algorithms
// are those of keel/limit/ (token bucket, GCRA, fixed window, sliding window log and counter),
// chosen by the type of `Options::algorithm`, so moving a limit from one process to many means
// changing one type. Keys:
//   - every key of one check is `{<name>:<key>}:<suffix>`: one hash tag, so a check runs on Redis
//     Cluster (all its keys in one slot) and different user keys spread over the slots;
//   - every key has an expiry (PEXPIRE) set to when its state becomes the same as a fresh one, so
//     idle keys vanish on their own.
//
// Like keel::limit::Keyed, a limiter can hold several limits on one key (20/minute and 100/hour,
// `more_limits`), checked all-or-none in the same single script call, and a penalty block
// (`block_for`) kept in Redis so every process sees it.
//
// Differences from the in-process limiters (the scenario suite checks everything else decision by
// decision, tests/integration/redis_limits/scenario_test.cc and multi_limit_test.cc):
//   - Redis TIME has microsecond resolution, so intervals are whole microseconds: the GCRA
//     interval period/count and the token bucket interval 1s/rate are truncated to microseconds
//     (Create rejects intervals under 1 us), windows and block_for must be whole microseconds, and
//     durations in a Decision are whole microseconds, rounded up where the in-process value has a
//     fraction of a microsecond (a client told to retry after it never retries too early).
//   - TokenBucket::Reserve (borrowing from the future) has no Redis counterpart.
//   - The sliding counter needs limit * window (in microseconds) below 2^52: Lua numbers are
//     doubles, and the script's integer arithmetic must stay exact. Its Decision::estimate is the
//     in-process value bit for bit (the script returns it times the window, exactly); a denial
//     answered by the blocked-key cache repeats the figures of the denial it remembers, estimate
//     included, and a local fallback's decision carries its own (this process's share) estimate.
//
// Verbs, as in-process: TryAcquire consumes, Check is a dry run (what TryAcquire would answer,
// changing nothing and starting no block). Keys follow limit::Keyed's rules: 1 to kMaxKeyBytes
// bytes (an empty key is INVALID_ARGUMENT in both).
//
// When Redis fails (unreachable, an error reply, or the caller's deadline passes), the call never
// blocks past the deadline (Deadline::Infinite() means the client's command_timeout). Then, in
// order of preference: with `local_fallback`, an in-process limiter holding 1/processes of each
// limit decides; otherwise `fail_mode`: kOpen admits, kClosed returns UNAVAILABLE. A fallback or
// fail-open decision has `Decision::degraded` set (limit::HttpHeaders then sends no figures it
// does not know) and is counted in Stats(). A check Redis runs after its caller gave up (Redis
// paused, then resumed) charges nothing: the script compares the caller's deadline with TIME,
// allowing `late_check_allowance` for clock skew. A small local cache remembers keys Redis just
// denied until their retry_after (or the end of their block), so a client hammering a blocked key
// costs no round trips.
//
// Thread safety: thread-safe; share one per limit and process.
//
//   auto client = keel::redis::Client::Create(keel::redis::Options::FromUrl(url).value()).value();
//   auto per_user = keel::redis::RateLimiter::Create(
//       {.name = "api",
//        .algorithm = keel::limit::Gcra::Options{.count = 20, .period = 1min, .max_burst = 4},
//        .local_fallback = keel::redis::LocalFallbackOptions{.processes = 8}},
//       *client, keel::SteadyClock(), &metrics).value();
//   absl::StatusOr<keel::limit::Decision> d = per_user->TryAcquire(Deadline::After(20ms), user_id);
//   if (!d.ok()) return d.status();             // INVALID_ARGUMENT, or UNAVAILABLE (kClosed)
//   if (!d->allowed) return TooManyRequests(d->retry_after);
//   // Per IP and per user in one pipelined round trip:
//   auto many = per_user->TryAcquireMany(Deadline::After(20ms), ip_and_user_keys);
//
//   // Keyed<Gcra>::Create({.block_for = 15min}, {per_minute, per_hour}) shared by every process:
//   auto logins = keel::redis::RateLimiter::Create(
//       {.name = "login", .algorithm = per_minute, .more_limits = {per_hour}, .block_for = 15min},
//       *client).value();
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/limit/decision.h"
#include "keel/limit/fixed_window.h"
#include "keel/limit/gcra.h"
#include "keel/limit/sliding_window.h"
#include "keel/limit/token_bucket.h"
#include "keel/metrics.h"
#include "keel/redis/client.h"
#include "keel/redis/fail_mode.h"
#include "keel/redis/script.h"
#include "keel/sync.h"

namespace keel::redis {

namespace internal {
struct RateLimitPlan;
class LocalFallback;
}  // namespace internal

// The sliding window algorithms take the in-process options, wrapped so the two are told apart.
struct SlidingWindowLogOptions {
  limit::SlidingWindowOptions window;
};
struct SlidingWindowCounterOptions {
  limit::SlidingWindowOptions window;
};

// While Redis is unavailable, decide with an in-process limiter per process (rate-limiter-
// flexible's "insurance" limiter) instead of failing open or closed.
struct LocalFallbackOptions {
  // How many processes share the limit. Each one's fallback holds 1/processes of every limit
  // (counts, bursts and rates divided, rounded down, at least 1), so all of them together admit
  // about the shared limit while Redis is down. Set it to the number of processes (or a little
  // below it: fewer admitted is the safe side). Required: must be >= 1.
  size_t processes = 0;
  // Keys the fallback holds at most (limit::Keyed::Options::max_keys). Default: 100'000.
  size_t max_keys = 100'000;
};

struct RateLimiterStats {
  uint64_t allowed_total = 0;             // admitted by Redis
  uint64_t denied_total = 0;              // denied by Redis or by the blocked-key cache
  uint64_t blocked_cache_hits_total = 0;  // denials answered locally, without a round trip
  uint64_t fail_open_total = 0;           // admitted because Redis failed (kOpen, no fallback)
  uint64_t fail_closed_total = 0;         // refused with UNAVAILABLE because Redis failed (kClosed)
  uint64_t fallback_allowed_total = 0;    // admitted by the local fallback while Redis failed
  uint64_t fallback_denied_total = 0;     // denied by the local fallback while Redis failed
};

class RateLimiter {
 public:
  using Algorithm =
      std::variant<limit::Gcra::Options, limit::TokenBucket::Options, limit::FixedWindow::Options,
                   SlidingWindowLogOptions, SlidingWindowCounterOptions>;

  struct Options {
    // Names the limit: the first part of every Redis key's hash tag (`{name:key}`), the
    // `name` label of the metrics, and the component in errors. Two limiters with the same
    // name and algorithm share their counters (that is how processes share a limit); give
    // different limits different names. Required: 1 to 128 bytes.
    std::string name;

    // The algorithm and its parameters, with the in-process options and validation (errors name
    // the field, e.g. `gcra.count must be >= 1, got 0`). Default: Gcra::Options{} (invalid until
    // `count` is set).
    Algorithm algorithm = limit::Gcra::Options{};

    // What happens when Redis errors or the deadline passes and there is no local_fallback.
    // Default: kOpen (availability over strictness: most limits protect against abuse, not
    // against a hard capacity).
    FailMode fail_mode = FailMode::kOpen;

    // An in-process limiter that decides while Redis fails, instead of fail_mode (see
    // LocalFallbackOptions). Its decisions are marked degraded and counted in
    // fallback_*_total. Default: none.
    std::optional<LocalFallbackOptions> local_fallback = std::nullopt;

    // A check that reaches Redis after its caller's deadline plus this allowance charges
    // nothing: the script compares the deadline (sent as wall-clock time) with the server's
    // TIME, so when a paused Redis resumes, the checks queued for callers that already gave up
    // do not spend quota. The allowance covers the skew between this machine's clock and the
    // server's: set it above the skew NTP keeps (milliseconds) and below the outage you want
    // covered. A late check within the allowance still charges. A client clock behind the
    // server's by more than deadline + allowance makes every check charge nothing: keep clocks
    // synchronised, or use nullopt. nullopt: every check charges, however late. Must be >= 0.
    // Default: 1s.
    std::optional<Duration> late_check_allowance = std::chrono::seconds(1);

    // How many denied keys are remembered locally until their retry_after, so repeated requests
    // on a blocked key are denied without a round trip. A remembered denial for quantity q also
    // answers requests of quantity >= q (other processes can only make them wait longer); smaller
    // quantities still go to Redis. 0 disables the cache. When full, expired entries are dropped
    // and new denials are not remembered until there is room. Default: 10000.
    size_t blocked_cache_size = 10000;

    // Further limits on the same key, checked together with `algorithm` all-or-none in the same
    // script call (one round trip), as keel::limit::Keyed with several limits: a request is
    // admitted only if every limit admits it, and then counts against all of them; if any denies,
    // none is touched. The Decision is the most constraining: the smallest `remaining` (with its
    // `limit`), the longest `reset_after`, when denied the longest `retry_after`. Each entry must
    // use the same algorithm as `algorithm` (one script checks them all); at most 15 entries.
    // E.g. 20 per minute and 100 per hour: algorithm = 20/min, more_limits = {100/hour}. With
    // more_limits each limit's key is named by its parameters, so a deployment that changes a
    // limit starts it fresh. Default: none.
    std::vector<Algorithm> more_limits = {};

    // Penalty, as keel::limit::Keyed's block_for: after a denial the key is denied outright for
    // this long, without touching its counters (retry_after = the time left in the block), so
    // hammering during the block earns nothing (login brute force). A request that can never fit
    // (quantity above a limit, retry_after kNever) does not start a block. The block lives in
    // Redis (key `{<name>:<key>}:block`, expiring with the block), so every process sees it; the
    // local blocked-key cache then answers the key's requests (any quantity) until the block
    // ends. Must be in (0, 50 years] and a whole number of microseconds. Default: none.
    std::optional<Duration> block_for = std::nullopt;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field). No I/O. `client` (and `clock`,
  // `metrics`) must outlive the limiter. `clock` times the blocked-key cache and the local
  // fallback only: decisions use the server's clock. With `metrics`, registers
  // keel_rate_limit_decisions_total{name, decision, backend="redis"} (decision: allowed, denied,
  // fail_open, fail_closed, fallback_allowed, fallback_denied) and
  // keel_redis_rate_limiter_blocked_cache_hits_total{name}.
  static absl::StatusOr<std::unique_ptr<RateLimiter>> Create(Options options, Client& client,
                                                             Clock& clock = SteadyClock(),
                                                             MetricsRegistry* metrics = nullptr);
  ~RateLimiter();
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // Admits quantity `n` for `key` or not, consuming it when admitted (n == 0 peeks and changes
  // no counter), with the semantics of the in-process algorithm (keel::limit::Keyed with these
  // limits and block_for: during a block every request, peeks included, is denied). Returns
  // within `deadline` (Infinite: the client's command_timeout).
  // Errors: INVALID_ARGUMENT for an empty key, a key over limit::kMaxKeyBytes, or n < 0;
  // UNAVAILABLE when Redis failed, there is no local_fallback and fail_mode is kClosed. Never
  // DEADLINE_EXCEEDED: a deadline that passes is a Redis failure (see the banner).
  absl::StatusOr<limit::Decision> TryAcquire(Deadline deadline, std::string_view key,
                                             int64_t n = 1);

  // TryAcquire without a thread waiting: returns at once; the future completes on the client's
  // I/O thread (docs/async.md: never block there) with what TryAcquire would have returned,
  // fallback and fail_mode included. A denial remembered in the blocked-key cache, or a bad
  // argument, completes it before it is returned. The limiter must outlive the future's
  // completion. Requires the multiplexed transport (else FAILED_PRECONDITION).
  Future<limit::Decision> TryAcquireAsync(Deadline deadline, std::string_view key, int64_t n = 1);

  // TryAcquire for each of `keys` (quantity `n` each, independently: one may be admitted while
  // another is denied), in one pipelined round trip; decisions in the order of `keys`.
  // Errors: INVALID_ARGUMENT as TryAcquire (for any key: then nothing is checked); UNAVAILABLE
  // when Redis failed for any key, there is no local_fallback and fail_mode is kClosed.
  absl::StatusOr<std::vector<limit::Decision>> TryAcquireMany(
      Deadline deadline, std::span<const std::string_view> keys, int64_t n = 1);

  // Dry run: what TryAcquire(deadline, key, n) would answer now, changing nothing in Redis
  // (no counter, no block) and counted in no Stats. Errors: as TryAcquire.
  absl::StatusOr<limit::Decision> Check(Deadline deadline, std::string_view key, int64_t n = 1);

  // TryAcquire (or with `dry_run`, Check) with the script's clock set to `server_time`
  // (microseconds since the Unix epoch) instead of TIME, without the blocked-key cache and the
  // late-check rule. For tests that replay scenarios with exact times.
  absl::StatusOr<limit::Decision> TryAcquireAtForTesting(Deadline deadline, std::string_view key,
                                                         int64_t n,
                                                         std::chrono::microseconds server_time,
                                                         bool dry_run = false);

  // The Redis keys holding `key`'s state (for tests and operators: TTL, DEL to reset a key).
  std::vector<std::string> RedisKeys(std::string_view key) const;

  RateLimiterStats Stats() const;
  const std::string& name() const { return name_; }
  // The largest quantity ever admitted at once (with more_limits, the smallest limit).
  int64_t limit() const;

 private:
  struct Blocked {
    TimePoint until;
    int64_t quantity;
    limit::Decision decision;  // as Redis answered, at `until - decision.retry_after`
  };

  RateLimiter(Options options, Client& client, Clock& clock,
              std::unique_ptr<const internal::RateLimitPlan> plan);

  enum class Mode { kConsume, kDryRun, kReplay, kReplayDryRun };

  absl::Status ValidateKey(std::string_view key, int64_t n) const;
  // The script's control argument (rate_limiter_scripts.h) for a call under `deadline`, written
  // into `buf` (a time in microseconds has 16 digits: too long for a string's inline buffer).
  struct ControlBuf {
    char bytes[24];
  };
  std::string_view Control(Mode mode, Deadline deadline, ControlBuf& buf) const;
  // `now` is "" (TIME) or a time in microseconds.
  absl::StatusOr<limit::Decision> Run(Deadline deadline, std::string_view key, int64_t n,
                                      std::string_view now, Mode mode);
  // The decision a script reply (or its failure) stands for: what Run returns after the call.
  absl::StatusOr<limit::Decision> Decide(absl::StatusOr<Reply> reply, std::string_view key,
                                         int64_t n, Mode mode);
  // The result of a failed call: the local fallback's decision, else fail_mode's (counted).
  absl::StatusOr<limit::Decision> Fail(const absl::Status& cause, std::string_view key, int64_t n,
                                       Mode mode);
  // Counts a decision from Redis and remembers a denial in the blocked-key cache; a penalty
  // block (`while_blocked`: the decision during the block) for every quantity.
  void Record(std::string_view key, int64_t n, const limit::Decision& d,
              const std::optional<limit::Decision>& while_blocked, bool use_cache)
      ABSL_LOCKS_EXCLUDED(mu_);
  std::optional<limit::Decision> CachedDenial(std::string_view key, int64_t n)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status RegisterMetrics(MetricsRegistry& metrics);

  const std::string name_;
  const FailMode fail_mode_;
  const size_t cache_size_;
  const std::optional<Duration> late_allowance_;
  Client& client_;
  Clock& clock_;
  const std::unique_ptr<const internal::RateLimitPlan> plan_;
  std::unique_ptr<internal::LocalFallback> fallback_;  // null without local_fallback

  // Relaxed counters: they order nothing; Stats() is a snapshot.
  std::atomic<uint64_t> allowed_{0};
  std::atomic<uint64_t> denied_{0};
  std::atomic<uint64_t> cache_hits_{0};
  std::atomic<uint64_t> fail_open_{0};
  std::atomic<uint64_t> fail_closed_{0};
  std::atomic<uint64_t> fallback_allowed_{0};
  std::atomic<uint64_t> fallback_denied_{0};

  // blocked_.size(), read without the lock so that a limiter with nothing cached (the common
  // case) takes no lock per call. Relaxed: a stale zero only sends a call to Redis, which
  // answers the same.
  std::atomic<size_t> cached_{0};
  Mutex mu_;
  // The cache: by key (node-based, so `by_expiry_` may point at the keys), and the same entries
  // ordered by when they end, so that making room at the cap is O(log n) per dropped entry
  // instead of a scan of the whole map under the lock on every denial.
  absl::node_hash_map<std::string, Blocked> blocked_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<TimePoint, const std::string*>> by_expiry_ ABSL_GUARDED_BY(mu_);
  std::vector<MetricsRegistry::Registration> registrations_;
};

}  // namespace keel::redis
