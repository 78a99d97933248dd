// keel/redis/client.h: the pooled, failover-aware Redis client every Redis-backed keel block uses.
//
// Defines `keel::redis::Client`, `keel::redis::ClientStats` and `keel::redis::TransportStats`.
//
// Transport (Options::transport). By default (Transport::kMultiplexed) Command, CommandArgv and
// Run share Options::mux.connections connections (default 1), driven by the client's I/O thread:
// every caller's command is queued, everything queued goes out in one write, and each caller
// gets its own reply (automatic pipelining; docs/redis-transport.md). A call whose deadline passes
// returns DEADLINE_EXCEEDED at once and its late reply is discarded with the connection kept; a
// lost connection fails every call in flight with UNAVAILABLE and reconnects; a full connection
// refuses calls with RESOURCE_EXHAUSTED and a retry-after hint. Transaction, the WATCH
// transaction, Acquire() and blocking commands (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN/MAX,
// BLMPOP, BZMPOP, WAIT, WAITAOF, XREAD/XREADGROUP with BLOCK) always run on connections of the
// client's `keel::Pool<redis::Connection>`, which in multiplexed mode opens them on demand.
// Transport::kPooled runs every call on a leased pooled connection. The rules below hold for
// both unless they say otherwise:
//
//   - Commands are argument vectors (binary-safe; never formatted strings), replies are typed
//     `Reply` values, server error replies are Status values with the server's message (codes in
//     keel/redis/reply.h).
//   - The deadline bounds the whole call: waiting for a connection, connecting, and the socket
//     timeout of the exchange. Deadline::Infinite() means `Options::command_timeout`.
//   - I/O and protocol errors return UNAVAILABLE and discard the connection, plus every other
//     connection opened before it (they almost always share its fate: a restart, a failover, a
//     network cut), so the calls after the first failure don't each trip over a dead socket.
//     Nothing is retried automatically: a failed write may or may not have been applied; wrap
//     calls in keel::Retry where the command is idempotent.
//   - Timeouts return DEADLINE_EXCEEDED and keep the connection. Pooled: its late reply is read and
//     discarded by the next call on it, within that call's deadline, before it sends anything
//     (see keel/redis/connection.h), so a paused or slow server costs each caller only its own
//     deadline and never a new TCP connection. A connection still behind after
//     Options::late_reply_timeout is replaced.
//   - While Redis is down, calls fail fast with UNAVAILABLE (the pool reports the connect error at
//     once), and connection attempts back off (Options::reconnect_backoff, jittered, capped at
//     500 ms by default): the first calls after Redis is back succeed within that cap.
//   - Pooled calls refuse commands that change the state of the connection they run on, with
//     INVALID_ARGUMENT naming the command: MULTI/EXEC/DISCARD/WATCH/UNWATCH (use Transaction),
//     SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE/MONITOR (use redis::Subscriber), SELECT/AUTH/HELLO/RESET/
//     QUIT/CLIENT REPLY (set Options). A connection leased with Acquire and returned in such a
//     state is closed, never handed to another caller.
//   - Sentinel mode (Options::sentinels): the primary is discovered with
//     `SENTINEL get-master-addr-by-name`, checked with ROLE, and rediscovered after a connection
//     error or a `-READONLY` reply (the old primary demoted to replica).
//   - Errors start with `redis "<pool name>"` (the client's) or `redis "<host:port>"` (a
//     connection's).
//
// Thread safety: Client is thread-safe; share one per process and Redis deployment.
//
//   auto client = keel::redis::Client::Create(
//       keel::redis::Options::FromUrl("redis://127.0.0.1:6379/0").value()).value();
//   auto ok = client->Command(Deadline::After(50ms), "SET", key, bytes, "PX", 60000);
//   absl::StatusOr<Reply> got = client->Command(Deadline::After(50ms), "GET", key);
//   if (!got.ok()) return got.status();          // UNAVAILABLE / DEADLINE_EXCEEDED / server error
//   if (got->is_nil()) return absl::NotFoundError(key);
//   keel::redis::Pipeline p;
//   p.Add("INCR", "a").Add("INCR", "b");
//   auto both = client->Run(Deadline::After(50ms), p);   // one round trip
//   auto atomic = client->Transaction(Deadline::After(50ms), p);  // MULTI ... EXEC
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

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/random/bit_gen_ref.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/async/timer.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"
#include "keel/pool/pool.h"
#include "keel/redis/command.h"
#include "keel/redis/connection.h"
#include "keel/redis/options.h"
#include "keel/redis/reply.h"
#include "keel/resilience/backoff.h"
#include "keel/sync.h"

namespace keel::redis {

namespace internal {
class PrimaryLocator;
}
namespace transport {
class Call;
class MuxConnection;
struct CallResult;
}  // namespace transport

// The multiplexed transport's counters and gauges (zero with Transport::kPooled), summed over
// its connections.
struct TransportStats {
  // Calls submitted to a multiplexed connection.
  uint64_t calls_total = 0;
  // Replies of calls that had given up (deadline), read and discarded.
  uint64_t late_replies_discarded_total = 0;
  // Calls refused with RESOURCE_EXHAUSTED because a connection was full (mux limits).
  uint64_t rejected_full_total = 0;
  // Connections made after a connection was lost or closed.
  uint64_t reconnects_total = 0;
  // Blocking calls that found the connection idle and read their own reply (no I/O thread
  // hand-off; docs/redis-transport.md).
  uint64_t direct_calls_total = 0;
  // Calls queued or awaiting replies now, and their request bytes (gauges).
  uint64_t in_flight = 0;
  uint64_t queued_bytes = 0;
};

struct ClientStats {
  PoolStats pool;
  TransportStats transport;
  // Connections discarded because an I/O error on a sibling showed they were probably dead.
  uint64_t connections_retired_total = 0;
  // Times the primary's address was (re)discovered through the sentinels (Sentinel mode).
  uint64_t primary_discoveries_total = 0;
  // Connection attempts made, and those that failed.
  uint64_t connect_attempts_total = 0;
  uint64_t connect_failures_total = 0;
  // Connection attempts not made because the reconnect backoff was running (the caller got
  // UNAVAILABLE at once).
  uint64_t connects_delayed_total = 0;
  // Late replies (of calls that timed out) read and discarded before a connection was reused.
  uint64_t late_replies_drained_total = 0;
  // Connections closed because they still owed late replies after late_reply_timeout (pooled and
  // multiplexed).
  uint64_t late_connections_closed_total = 0;
  // Leased connections closed because they came back in a changed session state (inside MULTI,
  // after WATCH, SUBSCRIBE, SELECT, ...).
  uint64_t dirty_connections_closed_total = 0;
  // Calls refused before any I/O: INVALID_ARGUMENT (state commands, empty commands), and
  // FAILED_PRECONDITION (async calls on kPooled, blocking calls on the I/O thread).
  uint64_t commands_refused_total = 0;
};

class Client {
 public:
  // Validates `options` and creates the pool (no I/O: succeeds while Redis is down; the pool
  // connects in the background and on demand). `clock` and `metrics` must outlive the Client.
  // With `metrics`, the pool registers its keel_pool_* series (see keel/pool/pool.h), labelled
  // name=<options.pool.name>, and the client registers counters mirroring ClientStats:
  // keel_redis_client_{connections_retired,primary_discoveries,connect_attempts,connect_failures,
  // connects_delayed,late_replies_drained,late_connections_closed,dirty_connections_closed,
  // commands_refused}_total{name=<options.pool.name>}; multiplexed, also mirrors of
  // TransportStats: keel_redis_client_mux_{calls,late_replies_discarded,rejected_full,
  // reconnects}_total and the gauges keel_redis_client_mux_{in_flight,queued_bytes}.
  // Errors: INVALID_ARGUMENT naming the bad field.
  static absl::StatusOr<std::unique_ptr<Client>> Create(Options options,
                                                        Clock& clock = SteadyClock(),
                                                        MetricsRegistry* metrics = nullptr);
  // As above, with the random source of the reconnect backoff's jitter. `random` must outlive
  // the Client; the client uses it under its own lock only.
  static absl::StatusOr<std::unique_ptr<Client>> Create(Options options, Clock& clock,
                                                        MetricsRegistry* metrics,
                                                        absl::BitGenRef random);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Runs one command, e.g. Command(d, "HSET", key, "field", value) or Command(d, "INCRBY", k, 5).
  // Arguments: anything convertible to std::string_view (viewed, not copied) and integers.
  // Errors: UNAVAILABLE (Redis unreachable, connection lost, failover in progress: READONLY,
  // LOADING, MASTERDOWN), DEADLINE_EXCEEDED (no connection or reply in time), CANCELLED /
  // FAILED_PRECONDITION (after Shutdown), INVALID_ARGUMENT (a state command, see the banner,
  // refused before any I/O), other codes for server error replies (reply.h).
  template <typename... Args>
  absl::StatusOr<Reply> Command(Deadline deadline, const Args&... args) {
    const Arg argv[] = {Arg(args)...};
    std::string_view views[sizeof...(Args)];
    for (size_t i = 0; i < sizeof...(Args); ++i) views[i] = argv[i].view();
    return CommandArgv(deadline, views);
  }
  // As Command, with the argument vector given at run time. An empty `argv` fails at once with
  // INVALID_ARGUMENT.
  absl::StatusOr<Reply> CommandArgv(Deadline deadline, std::span<const std::string_view> argv);

  // Async forms of Command, CommandArgv and Run: return at once with a keel::Future
  // (keel/async/future.h: Get with a deadline, Then, or co_await), completed on the client's I/O
  // thread, so callbacks and coroutines resumed there must never block. Same routing, deadlines
  // (the future completes DEADLINE_EXCEEDED at the deadline; the late reply is discarded),
  // errors and server error mapping as the blocking forms. FAILED_PRECONDITION with
  // Transport::kPooled; INVALID_ARGUMENT for blocking commands (BLPOP, XREAD BLOCK, ...), which
  // cannot share a connection: run those with Command. CANCELLED at Shutdown.
  template <typename... Args>
  Future<Reply> AsyncCommand(Deadline deadline, const Args&... args) {
    const Arg argv[] = {Arg(args)...};
    std::string_view views[sizeof...(Args)];
    for (size_t i = 0; i < sizeof...(Args); ++i) views[i] = argv[i].view();
    return AsyncCommandArgv(deadline, views);
  }
  Future<Reply> AsyncCommandArgv(Deadline deadline, std::span<const std::string_view> argv);
  Future<PipelineReplies> AsyncRun(Deadline deadline, const Pipeline& pipeline);

  // As AsyncCommandArgv, completing `done` instead of a future, for code that composes its own
  // completion (keel's Script and limiters do): no future state and no continuation to allocate.
  // `done` runs exactly once, on the I/O thread, or on this thread before the call returns when
  // the command is refused at once (the refusals of AsyncCommandArgv). It must not block.
  using ReplyCallback = absl::AnyInvocable<void(absl::StatusOr<Reply>)>;
  void AsyncCommandArgv(Deadline deadline, std::span<const std::string_view> argv,
                        ReplyCallback done);

  // Runs a pipeline on one connection in one round trip: one result per command, in order (see
  // Connection::Run). The outer Status carries connection-level failures as for Command, and
  // INVALID_ARGUMENT (without I/O) for a pipeline holding an empty or a state command.
  absl::StatusOr<PipelineReplies> Run(Deadline deadline, const Pipeline& pipeline);

  // Runs `commands` as one transaction: MULTI, the commands and EXEC, sent in one round trip on
  // one connection; Redis runs them without any other client's command in between. Returns one
  // result per command, in order, as Run does. The outer Status fails as for Run, and with
  // ABORTED when Redis discarded the transaction (EXECABORT: a command was rejected while
  // queueing, e.g. a wrong number of arguments; nothing ran). An empty `commands` returns an empty
  // vector without I/O. Errors: as Run.
  absl::StatusOr<PipelineReplies> Transaction(Deadline deadline, const Pipeline& commands);

  // Optimistic transaction (check-and-set): WATCHes `watch`, calls `prepare` with a reader that
  // runs commands on the same connection (to read the watched keys), then runs the pipeline
  // `prepare` returns as MULTI ... EXEC. Returns ABORTED when a watched key changed in between
  // (EXEC answered nil; nothing ran: read again and retry, e.g. with keel::Retry); the status of
  // `prepare` when it fails (or INTERNAL when it throws); otherwise as Transaction. The reader
  // refuses state commands like every pooled call. REQUIRES: !watch.empty().
  class TransactionReader;
  absl::StatusOr<PipelineReplies> Transaction(
      Deadline deadline, std::span<const std::string_view> watch,
      const std::function<absl::StatusOr<Pipeline>(const TransactionReader& read)>& prepare);

  // Leases a connection for a sequence that must share one. Return it by destroying the lease;
  // call Invalidate() on it if a call left it broken(). A connection returned in a changed
  // session state (inside MULTI, after WATCH, SUBSCRIBE, SELECT, ...; see
  // Connection::session_clean) or broken() is closed, never handed to another caller.
  absl::StatusOr<Lease<Connection>> Acquire(Deadline deadline);

  ClientStats Stats() const ABSL_LOCKS_EXCLUDED(connect_mu_);
  const Options& options() const { return options_; }
  // True on the client's I/O thread, where future callbacks and coroutines resumed there run.
  // Blocking calls (Command, Run, Transaction, Acquire, Script::Run) made there return
  // FAILED_PRECONDITION at once: they would wait for a reply only that thread can read.
  bool OnIoThread() const;

  // The clock the client was created with.
  Clock& clock() const { return clock_; }
  // A timer thread on the client's clock shared by the blocks built on this client (the lock
  // watchdogs of every Lock and Redlock on it), so a process holding many locks runs one timer
  // thread per client, not one per lock. Started on first use; lives as long as the client.
  // Errors: INTERNAL when its thread cannot start.
  absl::StatusOr<Timer*> SharedTimer() ABSL_LOCKS_EXCLUDED(timer_mu_);

  // Closes the multiplexed connections now (their calls in flight fail with UNAVAILABLE: `why`)
  // and retires the pooled ones (each is closed when it is next returned or handed out), so
  // every later call runs on a new connection, set up again by Options::connection_hooks: for a
  // hook whose session state has changed (a new CLIENT TRACKING redirect target). Thread-safe;
  // never blocks.
  void Reconnect(std::string_view why);

  // Fails waiting callers with CANCELLED and closes idle connections; later calls fail with
  // FAILED_PRECONDITION. Idempotent; the destructor calls it.
  void Shutdown();

 private:
  Client(Options options, Clock& clock, Backoff backoff, std::optional<absl::BitGenRef> random);
  static absl::StatusOr<std::unique_ptr<Client>> CreateImpl(Options options, Clock& clock,
                                                            MetricsRegistry* metrics,
                                                            std::optional<absl::BitGenRef> random);

  // The pool's hooks: connect with backoff, validate, and the handout check.
  absl::StatusOr<std::unique_ptr<Connection>> Connect(Deadline deadline)
      ABSL_LOCKS_EXCLUDED(connect_mu_);
  // Options::connection_hooks.on_connect on a new connection; UNAVAILABLE naming it on failure.
  absl::Status RunConnectHook(Connection& conn, Deadline deadline);
  // OK when a connection attempt may be made now; UNAVAILABLE with the last connect error (and
  // counted in connects_delayed_total) while the reconnect backoff runs. No I/O.
  absl::Status ConnectGate() ABSL_LOCKS_EXCLUDED(connect_mu_);
  absl::Status Validate(Connection& conn, Deadline deadline) const;
  bool Unusable(const Connection& conn);
  // True when `conn` has owed late replies for longer than late_reply_timeout.
  bool LateTooLong(const Connection& conn) const;
  absl::Status RegisterMetrics(MetricsRegistry& metrics);
  // Refusal of a call before any I/O (counted).
  absl::Status Refuse(absl::Status status);
  // Runs `pipeline` wrapped in MULTI/EXEC on `conn` and unpacks EXEC's reply.
  absl::StatusOr<PipelineReplies> RunTransaction(Lease<Connection>& lease, Deadline deadline,
                                                 const Pipeline& commands);

  // The deadline a call runs under: the caller's, or command_timeout from now.
  Deadline Effective(Deadline deadline) const;
  // Leases a connection made after the last failure (older ones are discarded on the way).
  absl::StatusOr<Lease<Connection>> AcquireFresh(Deadline deadline);
  // The multiplexed path of CommandArgv and Run: submits `request` (`expected` replies) and waits.
  transport::CallResult RunMux(Deadline deadline, std::string_view request, uint32_t expected);
  // The async path: submits `request` and calls `done` with its result on the completing thread.
  void SubmitAsync(Deadline deadline, std::string_view request, uint32_t expected,
                   absl::AnyInvocable<void(transport::CallResult&&)> done);
  // What a multiplexed call's result becomes for Command and Run (server errors mapped, READONLY
  // handled).
  absl::StatusOr<Reply> CommandResult(transport::CallResult&& result, bool infinite);
  absl::StatusOr<PipelineReplies> RunResult(transport::CallResult&& result, bool infinite);
  // OK when an async call may run: the multiplexed transport, no blocking command.
  absl::Status AsyncAllowed(bool blocking, std::string_view what) const;
  // The checks and the encoding both async command forms share: OK with `request` encoded,
  // `deadline` made effective and `infinite` set; or the (counted) refusal.
  absl::Status PrepareAsyncCommand(Deadline& deadline, std::span<const std::string_view> argv,
                                   std::string& request, bool& infinite);
  // After a multiplexed call whose replies hold a -READONLY: the primary moved.
  void Demoted(std::string_view error);
  bool multiplexed() const { return !mux_.empty(); }
  // FAILED_PRECONDITION (counted as refused) for a blocking call made on the I/O thread.
  absl::Status BlockingRefused();
  absl::Status StartTransport();
  TransportStats MuxStats(uint64_t* late_closed) const;

  // After a call: discards a broken connection; on a lost connection or READONLY retires its
  // siblings and, in Sentinel mode, forgets the primary.
  void AfterCall(Lease<Connection>& lease, const absl::Status& status);

  const Options options_;
  const std::string name_;  // `redis "<pool name>"`, the prefix of the client's own errors
  Clock& clock_;
  const Backoff backoff_;
  std::optional<absl::BitGen> own_random_;  // when Create was given none
  absl::BitGenRef random_;
  std::unique_ptr<internal::PrimaryLocator> locator_;
  // Connections stamped with an older generation are discarded when leased. Relaxed is enough:
  // a connection that slips through once just fails (or works) like any other.
  std::atomic<uint64_t> generation_{1};
  std::atomic<uint64_t> retired_{0};

  // Reconnect backoff. Only bookkeeping under the lock; the connect itself runs outside it.
  mutable Mutex connect_mu_;
  TimePoint next_connect_ ABSL_GUARDED_BY(connect_mu_) = TimePoint::min();
  BackoffSequence delays_ ABSL_GUARDED_BY(connect_mu_);
  std::string last_connect_error_ ABSL_GUARDED_BY(connect_mu_);

  // Relaxed counters: statistics only, no ordering with anything else.
  std::atomic<uint64_t> connect_attempts_{0};
  std::atomic<uint64_t> connect_failures_{0};
  std::atomic<uint64_t> connects_delayed_{0};
  std::atomic<uint64_t> late_drained_{0};
  std::atomic<uint64_t> late_closed_{0};
  std::atomic<uint64_t> dirty_closed_{0};
  std::atomic<uint64_t> refused_{0};
  std::unique_ptr<Pool<Connection>> pool_;
  // The multiplexed transport (empty with Transport::kPooled): the connections go before the
  // loop that drives them.
  // options_.io_loop when set, else the client's own (stopped by Shutdown).
  std::shared_ptr<IoLoop> loop_;
  std::vector<std::unique_ptr<transport::MuxConnection>> mux_;
  std::atomic<uint32_t> next_mux_{0};
  std::string timeout_message_;      // a multiplexed call's DEADLINE_EXCEEDED
  std::string timeout_message_inf_;  // the same when the caller's deadline was infinite
  // After the transport, so destroyed before it: its callbacks call into the transport.
  Mutex timer_mu_;
  std::unique_ptr<Timer> timer_ ABSL_GUARDED_BY(timer_mu_);
  // Last: removed from the registry before anything their callbacks read is destroyed.
  std::vector<MetricsRegistry::Registration> registrations_;
};

// What Transaction's `prepare` reads the watched keys with: runs commands on the transaction's
// connection, within its deadline. Valid only during `prepare`.
class Client::TransactionReader {
 public:
  // As Client::Command, on the transaction's connection.
  template <typename... Args>
  absl::StatusOr<Reply> Command(const Args&... args) const {
    const Arg argv[] = {Arg(args)...};
    std::string_view views[sizeof...(Args)];
    for (size_t i = 0; i < sizeof...(Args); ++i) views[i] = argv[i].view();
    return CommandArgv(views);
  }
  absl::StatusOr<Reply> CommandArgv(std::span<const std::string_view> argv) const {
    return run_(argv);
  }

 private:
  friend class Client;
  using Run = std::function<absl::StatusOr<Reply>(std::span<const std::string_view>)>;
  explicit TransactionReader(Run run) : run_(std::move(run)) {}
  Run run_;
};

}  // namespace keel::redis
