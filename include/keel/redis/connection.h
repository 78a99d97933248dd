// keel/redis/connection.h: one Redis connection (hiredis, blocking) with per-call deadlines.
//
// Defines `keel::redis::Connection`, what keel's pool holds and what Client, Script and
// Subscriber talk through. Most code uses `redis::Client` (pooled, failover-aware) instead.
//
// Deadlines: every call's deadline becomes the socket timeout of that call (SO_RCVTIMEO /
// SO_SNDTIMEO through redisSetTimeout; only re-set when it changes by more than a couple of
// milliseconds, so steady traffic pays no extra system call). An infinite deadline uses
// `Options::command_timeout`, so nothing ever blocks forever on a paused server. A call whose
// deadline has already passed fails with DEADLINE_EXCEEDED without any I/O.
//
// Errors: server error replies become a Status (see ServerErrorToStatus) and leave the
// connection usable. A timeout (DEADLINE_EXCEEDED) or an I/O or protocol error (UNAVAILABLE)
// marks it broken(): the stream position is unknown, so it must be discarded, never reused.
//
// Thread safety: NOT thread-safe. One thread uses a Connection at a time (the pool ensures it).
//
//   auto conn = keel::redis::Connection::Connect(options.server, options, Deadline::After(1s));
//   if (!conn.ok()) return conn.status();                      // UNAVAILABLE: refused, ...
//   auto r = (*conn)->Command(Deadline::After(50ms), "SET", key, value, "PX", 5000);
//   if (!r.ok() && (*conn)->broken()) { /* discard the connection */ }
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/deadline.h"
#include "keel/redis/command.h"
#include "keel/redis/options.h"
#include "keel/redis/reply.h"

struct redisContext;

namespace keel::redis {

class Connection {
 public:
  // Connects to `endpoint`, then sends AUTH (when options.password is set) and SELECT (when
  // options.db != 0). The whole setup is bounded by the earlier of `deadline` and
  // options.connect_timeout. Errors: UNAVAILABLE (refused, unreachable, connect timeout, reset),
  // DEADLINE_EXCEEDED (the caller's deadline ran out first), PERMISSION_DENIED (AUTH rejected),
  // INVALID_ARGUMENT (SELECT rejected).
  static absl::StatusOr<std::unique_ptr<Connection>> Connect(const Endpoint& endpoint,
                                                             const Options& options,
                                                             Deadline deadline);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Sends one command and waits for its reply, e.g. Command(d, "HINCRBY", key, "n", 1).
  // REQUIRES: !broken().
  template <typename... Args>
  absl::StatusOr<Reply> Command(Deadline deadline, const Args&... args) {
    const Arg argv[] = {Arg(args)...};
    std::string_view views[sizeof...(Args)];
    for (size_t i = 0; i < sizeof...(Args); ++i) views[i] = argv[i].view();
    return CommandArgv(deadline, views);
  }
  // As Command, with the argument vector given at run time. REQUIRES: !argv.empty().
  absl::StatusOr<Reply> CommandArgv(Deadline deadline, std::span<const std::string_view> argv);

  // Sends every command of `pipeline` in one write and reads one reply per command. The outer
  // Status fails (and the connection is broken) when the exchange itself fails; server error
  // replies fail only their own entry. An empty pipeline returns an empty vector without I/O.
  absl::StatusOr<PipelineReplies> Run(Deadline deadline, const Pipeline& pipeline);

  // For push-style use (SUBSCRIBE): sends a command without reading a reply.
  absl::Status Send(Deadline deadline, std::span<const std::string_view> argv);
  // Waits until `deadline` for the next reply or pushed message; nullopt when none arrived in
  // time, or when `wake_fd` (if >= 0) became readable first (the connection stays usable: this
  // wait uses poll(), not the socket timeout). Server error replies are returned as Reply values
  // of type kError here.
  absl::StatusOr<std::optional<Reply>> Receive(Deadline deadline, int wake_fd = -1);

  // True after a timeout or an I/O or protocol error: discard the connection.
  bool broken() const { return broken_; }
  const Endpoint& endpoint() const { return endpoint_; }
  // The socket, for poll() by callers that multiplex (Subscriber). -1 if none.
  int fd() const;

  // Opaque number the owner (Client) stamps on a connection, e.g. to retire every connection
  // made before a failover. Not used by Connection itself.
  uint64_t generation() const { return generation_; }
  void set_generation(uint64_t g) { generation_ = g; }

 private:
  Connection(redisContext* context, Endpoint endpoint, const Options& options);

  // Applies the deadline as the socket timeout; DEADLINE_EXCEEDED if it has already passed.
  absl::Status ArmTimeout(Deadline deadline);
  // Reads one reply (flushing pending output first) into `out`.
  absl::Status ReadReply(Deadline deadline, Reply& out);
  // Marks the connection broken and maps the hiredis error to a Status.
  absl::Status Fail(Deadline deadline, int saved_errno);

  redisContext* context_;
  Endpoint endpoint_;
  std::string name_;  // "redis 127.0.0.1:6379", the prefix of every error
  Duration command_timeout_;
  Duration armed_timeout_ = Duration::min();  // what the socket has now; min() = unknown
  bool broken_ = false;
  uint64_t generation_ = 0;
  std::string scratch_;  // encoding buffer, reused between calls
};

}  // namespace keel::redis
