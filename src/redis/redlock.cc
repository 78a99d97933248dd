// keel::redis::Redlock: a lease lock held by a majority of independent Redis nodes (see
// redlock.h).
#include "keel/redis/redlock.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/sync.h"
#include "lease.h"
#include "lock_node.h"

namespace keel::redis {

using keel::internal::StrCat;

namespace {

// How the nodes answered an extension or a release.
struct Votes {
  size_t ok = 0;
  size_t aborted = 0;
  absl::Status first_error;  // of the nodes that failed otherwise

  void Add(absl::Status s) {
    if (s.ok()) {
      ++ok;
    } else if (absl::IsAborted(s)) {
      ++aborted;
      if (first_error.ok()) first_error = std::move(s);
    } else if (first_error.ok() || absl::IsAborted(first_error)) {
      first_error = std::move(s);
    }
  }

  // OK with a majority; ABORTED when too many nodes lost the token for a majority to hold it;
  // otherwise the first error.
  absl::Status Outcome(std::string_view prefix, std::string_view what, size_t nodes) {
    const size_t quorum = internal::Quorum(nodes);
    if (ok >= quorum) return absl::OkStatus();
    if (aborted > nodes - quorum) {
      return absl::AbortedError(StrCat(prefix, what, ": the lease was gone on ", aborted, " of ",
                                       nodes, " nodes (it ran out)"));
    }
    return absl::Status(first_error.ok() ? absl::StatusCode::kUnavailable : first_error.code(),
                        StrCat(prefix, what, ": only ", ok, " of ", nodes,
                               " nodes answered OK: ", first_error.message()));
  }
};

// Completes with the votes of `futures` once every one of them completed, on the thread that
// completed the last; never blocks.
Future<Votes> Tally(std::vector<Future<void>> futures) {
  struct State {
    Mutex mu;
    Votes votes ABSL_GUARDED_BY(mu);
    size_t remaining ABSL_GUARDED_BY(mu) = 0;
    Promise<Votes> promise;
  };
  auto state = std::make_shared<State>();
  Future<Votes> future = state->promise.future();
  {
    MutexLock lock(state->mu);
    state->remaining = futures.size();
  }
  for (Future<void>& f : futures) {
    f.Then([state](absl::Status s) {
      std::optional<Votes> done;
      {
        MutexLock lock(state->mu);
        state->votes.Add(std::move(s));
        if (--state->remaining == 0) done.emplace(std::move(state->votes));
      }
      if (done.has_value()) state->promise.Set(std::move(*done));
    });
  }
  return future;
}

}  // namespace

class Redlock::Backend final : public internal::LeaseBackend {
 public:
  Backend(Options options, std::vector<Client*> nodes, Clock& clock, Timer* timer, Backoff backoff)
      : LeaseBackend(ConfigOf("redlock", options, backoff), clock, timer),
        options_(std::move(options)),
        nodes_(std::move(nodes)),
        keys_(internal::MakeLockKeys("redlock", options_.name, internal::TtlMillis(options_.ttl))) {
  }

  // Each node's request is bounded by node_timeout as well as by the caller's deadline.
  Deadline NodeDeadline(Deadline deadline) const {
    return Deadline::Min(deadline, Deadline::After(options_.node_timeout, clock()));
  }

  Future<void> AsyncExtend(Deadline deadline, const std::string& token) override {
    const Deadline d = NodeDeadline(deadline);
    std::vector<Future<void>> futures;
    futures.reserve(nodes_.size());
    for (Client* node : nodes_)
      futures.push_back(internal::AsyncNodeExtend(*node, d, keys_, token));
    auto promise = std::make_shared<Promise<void>>();
    Future<void> future = promise->future();
    Tally(std::move(futures))
        .Then([promise, prefix = keys_.prefix, n = nodes_.size()](absl::StatusOr<Votes> votes) {
          promise->Set(votes.ok() ? votes->Outcome(prefix, "extend", n) : votes.status());
        });
    return future;
  }
  absl::Status Extend(Deadline deadline, const std::string& token) override {
    return AsyncExtend(deadline, token).Get();
  }
  absl::Status Release(Deadline deadline, const std::string& token) override {
    return ReleaseOn(deadline, token, std::vector<bool>(nodes_.size(), true));
  }

  // Releases `token` on the nodes marked in `on`, in parallel; waits for all of them.
  absl::Status ReleaseOn(Deadline deadline, const std::string& token, const std::vector<bool>& on) {
    const Deadline d = NodeDeadline(deadline);
    std::vector<Future<void>> futures;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (on[i]) futures.push_back(internal::AsyncNodeRelease(*nodes_[i], d, keys_, token));
    }
    if (futures.empty()) return absl::OkStatus();
    absl::StatusOr<Votes> votes = Tally(std::move(futures)).Get();
    if (!votes.ok()) return votes.status();
    return votes->Outcome(keys_.prefix, "release", nodes_.size());
  }

  absl::StatusOr<std::optional<LockGuard>> TryAcquire(Deadline deadline) override {
    std::string token = internal::NewLockToken();
    const TimePoint started = clock().Now();
    const Deadline d = NodeDeadline(deadline);
    std::vector<Future<int64_t>> futures;
    futures.reserve(nodes_.size());
    for (Client* node : nodes_) {
      futures.push_back(internal::AsyncNodeAcquire(*node, d, keys_, token));
    }
    // Every future completes by `d` on its own (the client's deadline), so these waits end too.
    std::vector<absl::StatusOr<int64_t>> answers;
    answers.reserve(futures.size());
    for (Future<int64_t>& f : futures) answers.push_back(f.Get());
    const Duration elapsed = clock().Now() - started;

    size_t granted = 0, answered = 0;
    absl::Status first_error;
    std::vector<bool> release(nodes_.size(), false);
    for (size_t i = 0; i < answers.size(); ++i) {
      if (answers[i].ok()) {
        ++answered;
        if (*answers[i] > 0) ++granted;
        release[i] = *answers[i] > 0;
      } else {
        release[i] = true;  // the SET may have been applied before the reply was lost
        if (first_error.ok()) first_error = answers[i].status();
      }
    }
    if (internal::RedlockHolds(granted, nodes_.size(), options_.ttl, elapsed)) {
      const absl::StatusOr<int64_t>& fencing = answers[options_.fencing_node];
      std::optional<int64_t> token_of_node;
      if (fencing.ok() && *fencing > 0) token_of_node = *fencing;
      return std::optional<LockGuard>(MakeGuard(std::move(token), token_of_node, started));
    }
    // A failed attempt leaves nothing behind (redlock.h, step 4).
    (void)ReleaseOn(Deadline::After(options_.node_timeout, clock()), token, release);
    const size_t quorum = internal::Quorum(nodes_.size());
    if (answered >= quorum && granted < quorum) {
      counters().contended.fetch_add(1, std::memory_order_relaxed);
      return std::optional<LockGuard>();
    }
    counters().errors.fetch_add(1, std::memory_order_relaxed);
    if (granted >= quorum) {
      return absl::UnavailableError(StrCat(
          keys_.prefix, granted, " of ", nodes_.size(), " nodes granted the lock, but only after ",
          keel::internal::FormatDuration(elapsed), ": no validity left of the ",
          keel::internal::FormatDuration(options_.ttl), " ttl"));
    }
    return absl::UnavailableError(StrCat(keys_.prefix, "only ", answered, " of ", nodes_.size(),
                                         " nodes answered (", quorum,
                                         " needed): ", first_error.message()));
  }

  const Options& options() const { return options_; }
  size_t size() const { return nodes_.size(); }

 private:
  const Options options_;
  const std::vector<Client*> nodes_;
  const internal::LockKeys keys_;
};

absl::StatusOr<std::unique_ptr<Redlock>> Redlock::Create(Options options,
                                                         std::vector<Client*> nodes, Clock& clock,
                                                         MetricsRegistry* metrics, Timer* timer) {
  const keel::internal::OptionsOf of("redlock", options.name);
  KEEL_ASSIGN_OR_RETURN(Backoff backoff, internal::ValidateLockOptions(
                                             of, options.name, options.ttl, options.acquire_timeout,
                                             options.release_timeout, options.retry, timer, clock));
  if (options.node_timeout <= Duration::zero() || options.node_timeout > options.ttl / 10) {
    return keel::internal::InvalidOption(
        of, "node_timeout",
        StrCat("in (0, ttl / 10 = ", keel::internal::FormatDuration(options.ttl / 10), "]"),
        options.node_timeout);
  }
  if (nodes.empty()) return keel::internal::InvalidOption(of, "nodes", "non-empty", "none");
  absl::flat_hash_set<Client*> seen;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i] == nullptr) {
      return keel::internal::InvalidOption(of, StrCat("nodes[", i, "]"), "a client", "null");
    }
    if (!seen.insert(nodes[i]).second) {
      return keel::internal::InvalidOption(of, StrCat("nodes[", i, "]"), "a distinct client",
                                           "a repeated one");
    }
    if (nodes[i]->options().transport != Transport::kMultiplexed) {
      return keel::internal::InvalidOption(
          of, StrCat("nodes[", i, "]"), "a client on the multiplexed transport", "a pooled client");
    }
  }
  if (options.fencing_node >= nodes.size()) {
    return keel::internal::InvalidOption(of, "fencing_node", StrCat("< ", nodes.size()),
                                         options.fencing_node);
  }
  // As Lock: the watchdog runs on the first node's shared timer when the clocks agree.
  if (timer == nullptr && options.watchdog && &nodes.front()->clock() == &clock) {
    KEEL_ASSIGN_OR_RETURN(timer, nodes.front()->SharedTimer());
  }
  auto backend =
      std::make_unique<Backend>(std::move(options), std::move(nodes), clock, timer, backoff);
  KEEL_RETURN_IF_ERROR(backend->Init(metrics, "redlock"));
  return std::unique_ptr<Redlock>(new Redlock(std::move(backend)));
}

Redlock::Redlock(std::unique_ptr<Backend> backend) : LockBase(std::move(backend)) {}

const Redlock::Backend& Redlock::typed() const { return static_cast<const Backend&>(backend()); }
const Redlock::Options& Redlock::options() const { return typed().options(); }
size_t Redlock::nodes() const { return typed().size(); }

}  // namespace keel::redis
