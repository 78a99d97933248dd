// keel/redis/client.h: the pooled, failover-aware Redis client every Redis-backed keel block uses.
//
// Defines `keel::redis::Client` and `keel::redis::ClientStats`. A Client owns a
// `keel::Pool<redis::Connection>` and runs each call on a leased connection:
//
//   - Commands are argument vectors (binary-safe; never formatted strings), replies are typed
//     `Reply` values, server error replies are Status values with the server's message (codes in
//     keel/redis/reply.h).
//   - The deadline bounds the whole call: waiting for a connection, connecting, and the socket
//     timeout of the exchange. Deadline::Infinite() means `Options::command_timeout`.
//   - I/O and protocol errors return UNAVAILABLE and discard the connection, plus every other
//     connection opened before it (they almost always share its fate: a restart, a failover, a
//     network cut), so the calls after the first failure don't each trip over a dead socket.
//     Timeouts return DEADLINE_EXCEEDED and discard only that connection. Nothing is retried
//     automatically: a failed write may or may not have been applied; wrap calls in keel::Retry
//     where the command is idempotent.
//   - While Redis is down, calls fail fast with UNAVAILABLE (the pool reports the connect error at
//     once), and the pool reconnects in the background: the first call after Redis is back
//     succeeds.
//   - Sentinel mode (Options::sentinels): the primary is discovered with
//     `SENTINEL get-master-addr-by-name`, checked with ROLE, and rediscovered after a connection
//     error or a `-READONLY` reply (the old primary demoted to replica).
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
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"
#include "keel/pool/pool.h"
#include "keel/redis/command.h"
#include "keel/redis/connection.h"
#include "keel/redis/options.h"
#include "keel/redis/reply.h"

namespace keel::redis {

namespace internal {
class PrimaryLocator;
}

struct ClientStats {
  PoolStats pool;
  // Connections discarded because an I/O error on a sibling showed they were probably dead.
  uint64_t connections_retired_total = 0;
  // Times the primary's address was (re)discovered through the sentinels (Sentinel mode).
  uint64_t primary_discoveries_total = 0;
};

class Client {
 public:
  // Validates `options` and creates the pool (no I/O: succeeds while Redis is down; the pool
  // connects in the background and on demand). `clock` and `metrics` must outlive the Client.
  // With `metrics`, the pool registers keel_pool_* series labelled name=<options.pool.name>.
  // Errors: INVALID_ARGUMENT naming the bad field.
  static absl::StatusOr<std::unique_ptr<Client>> Create(Options options,
                                                        Clock& clock = SteadyClock(),
                                                        MetricsRegistry* metrics = nullptr);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Runs one command, e.g. Command(d, "HSET", key, "field", value) or Command(d, "INCRBY", k, 5).
  // Arguments: anything convertible to std::string_view (viewed, not copied) and integers.
  // Errors: UNAVAILABLE (Redis unreachable, connection lost, failover in progress: READONLY,
  // LOADING, MASTERDOWN), DEADLINE_EXCEEDED (no connection or reply in time), CANCELLED /
  // FAILED_PRECONDITION (after Shutdown), other codes for server error replies (reply.h).
  template <typename... Args>
  absl::StatusOr<Reply> Command(Deadline deadline, const Args&... args) {
    const Arg argv[] = {Arg(args)...};
    std::string_view views[sizeof...(Args)];
    for (size_t i = 0; i < sizeof...(Args); ++i) views[i] = argv[i].view();
    return CommandArgv(deadline, views);
  }
  // As Command, with the argument vector given at run time. REQUIRES: !argv.empty().
  absl::StatusOr<Reply> CommandArgv(Deadline deadline, std::span<const std::string_view> argv);

  // Runs a pipeline on one connection in one round trip: one result per command, in order (see
  // Connection::Run). The outer Status carries connection-level failures as for Command.
  absl::StatusOr<PipelineReplies> Run(Deadline deadline, const Pipeline& pipeline);

  // Leases a connection for a sequence that must share one (WATCH/MULTI/EXEC). Return it by
  // destroying the lease; call Invalidate() on it if a call left it broken().
  absl::StatusOr<Lease<Connection>> Acquire(Deadline deadline);

  ClientStats Stats() const;
  const Options& options() const { return options_; }

  // Fails waiting callers with CANCELLED and closes idle connections; later calls fail with
  // FAILED_PRECONDITION. Idempotent; the destructor calls it.
  void Shutdown();

 private:
  Client(Options options, Clock& clock);

  // The deadline a call runs under: the caller's, or command_timeout from now.
  Deadline Effective(Deadline deadline) const;
  // Leases a connection made after the last failure (older ones are discarded on the way).
  absl::StatusOr<Lease<Connection>> AcquireFresh(Deadline deadline);
  // After a call: discards a broken connection; on a lost connection or READONLY retires its
  // siblings and, in Sentinel mode, forgets the primary.
  void AfterCall(Lease<Connection>& lease, const absl::Status& status);

  const Options options_;
  Clock& clock_;
  std::unique_ptr<internal::PrimaryLocator> locator_;
  // Connections stamped with an older generation are discarded when leased. Relaxed is enough:
  // a connection that slips through once just fails (or works) like any other.
  std::atomic<uint64_t> generation_{1};
  std::atomic<uint64_t> retired_{0};
  std::unique_ptr<Pool<Connection>> pool_;
};

}  // namespace keel::redis
