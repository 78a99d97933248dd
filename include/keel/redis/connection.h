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
// Late replies. A call whose reply does not arrive by its deadline returns DEADLINE_EXCEEDED but
// does not break the connection: Redis answers in order, so the connection remembers how many
// replies it still owes (late_replies()) and the next call first reads and discards them, within
// that call's own deadline, before it sends anything. A call that cannot drain them in time fails
// with DEADLINE_EXCEEDED and sends nothing, so no caller is ever handed another's reply, and a
// paused or slow server does not turn every timeout into a new TCP connection.
//
// Errors: server error replies become a Status (see ServerErrorToStatus) and leave the
// connection usable. An I/O or protocol error (UNAVAILABLE) marks it broken(): the stream
// position is unknown, so it must be discarded, never reused.
//
// Session state. The connection notes the commands that change its state (MULTI, WATCH,
// SUBSCRIBE, SELECT, ...; see internal::SessionEffectOf): session_clean() is false while such a
// state is in force, and a pool must not give the connection to another caller then.
//
// Thread safety: NOT thread-safe. One thread uses a Connection at a time (the pool ensures it).
//
//   auto conn = keel::redis::Connection::Connect(options.server, options, Deadline::After(1s));
//   if (!conn.ok()) return conn.status();                      // UNAVAILABLE: refused, ...
//   auto r = (*conn)->Command(Deadline::After(50ms), "SET", key, value, "PX", 5000);
//   if (!r.ok() && (*conn)->broken()) { /* discard the connection */ }
//   // after DEADLINE_EXCEEDED the connection stays usable: the next call drains the late reply
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
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

  // Sends one command and waits for its reply, e.g. Command(d, "HINCRBY", key, "n", 1). Late
  // replies of earlier calls are drained first, within `deadline`.
  // Errors: DEADLINE_EXCEEDED (no reply in time; the connection stays usable and owes the
  // reply), UNAVAILABLE (I/O or protocol error: broken()), INVALID_ARGUMENT (no arguments),
  // FAILED_PRECONDITION (already broken()), other codes for server error replies (reply.h).
  template <typename... Args>
  absl::StatusOr<Reply> Command(Deadline deadline, const Args&... args) {
    const Arg argv[] = {Arg(args)...};
    std::string_view views[sizeof...(Args)];
    for (size_t i = 0; i < sizeof...(Args); ++i) views[i] = argv[i].view();
    return CommandArgv(deadline, views);
  }
  // As Command, with the argument vector given at run time. An empty `argv` fails with
  // INVALID_ARGUMENT without I/O.
  absl::StatusOr<Reply> CommandArgv(Deadline deadline, std::span<const std::string_view> argv);

  // Sends every command of `pipeline` in one write and reads one reply per command. The outer
  // Status fails when the exchange itself fails (UNAVAILABLE: broken(); DEADLINE_EXCEEDED: the
  // unread replies become late replies); server error replies fail only their own entry. An
  // empty pipeline returns an empty vector without I/O; one with an empty command fails with
  // INVALID_ARGUMENT without I/O.
  absl::StatusOr<PipelineReplies> Run(Deadline deadline, const Pipeline& pipeline);

  // For push-style use (SUBSCRIBE): sends a command without reading a reply. Errors as Command.
  absl::Status Send(Deadline deadline, std::span<const std::string_view> argv);
  // Waits until `deadline` for the next reply or pushed message; nullopt when none arrived in
  // time, or when `wake_fd` (if >= 0) became readable first (the connection stays usable: this
  // wait uses poll(), not the socket timeout). Deadline::Infinite() waits at most
  // Options::command_timeout. Server error replies are returned as Reply values of type kError
  // here. Errors: UNAVAILABLE (I/O or protocol error: broken()), FAILED_PRECONDITION (broken()).
  absl::StatusOr<std::optional<Reply>> Receive(Deadline deadline, int wake_fd = -1);

  // Reads and discards the late replies of calls that timed out, within `deadline`. OK when none
  // is left. Errors: DEADLINE_EXCEEDED (some still owed; the connection stays usable),
  // UNAVAILABLE (I/O or protocol error: broken()). Every call does this first by itself; a pool
  // may call it to clean an idle connection.
  absl::Status DrainLateReplies(Deadline deadline);

  // True after an I/O or protocol error: discard the connection.
  bool broken() const { return broken_; }
  // Replies owed to calls that gave up waiting (drained before the next command is sent).
  uint64_t late_replies() const { return late_replies_; }
  // When the oldest owed reply was given up on, on the clock of that call's deadline. Meaningful
  // only while late_replies() > 0.
  TimePoint late_since() const { return late_since_; }
  // Late replies read and discarded since the last call of this; resets the count.
  uint64_t TakeDrainedCount() { return std::exchange(drained_, 0); }
  // False while a command that changes the connection's session is in force (inside MULTI, after
  // WATCH, SUBSCRIBE, SELECT, AUTH, HELLO, RESET, CLIENT REPLY, QUIT, MONITOR): such a connection
  // must not be given to another caller. The setup in Connect (AUTH, SELECT) does not count.
  bool session_clean() const { return session_ == 0; }
  // Makes the session state now in force the connection's configured state (session_clean()
  // true again): what Client does after Options::connection_hooks.on_connect ran.
  void MarkSessionConfigured() { session_ = 0; }
  const Endpoint& endpoint() const { return endpoint_; }
  // The socket, for poll() by callers that multiplex (Subscriber). -1 if none.
  int fd() const;

  // Hands the connected socket to the caller (who must close it) and leaves this connection
  // broken(): how the multiplexed transport takes over a connection set up (AUTH, SELECT, ROLE)
  // by Connect. -1 if none. REQUIRES: no reply is owed or buffered.
  int ReleaseSocket();

  // Opaque number the owner (Client) stamps on a connection, e.g. to retire every connection
  // made before a failover. Not used by Connection itself.
  uint64_t generation() const { return generation_; }
  void set_generation(uint64_t g) { generation_ = g; }

 private:
  Connection(redisContext* context, Endpoint endpoint, const Options& options);

  // Applies the deadline as the socket timeout; DEADLINE_EXCEEDED if it has already passed.
  absl::Status ArmTimeout(Deadline deadline);
  // Checks, drains late replies and arms the timeout: what every sending call does first.
  absl::Status Prepare(Deadline deadline);
  // Reads one reply (flushing pending output first) into `out`. `unread` counts the replies this
  // call still expects, this one included: on a timeout they become late replies.
  absl::Status ReadReply(Deadline deadline, Reply& out, uint64_t unread);
  // True when the last hiredis error was a socket timeout (the stream is intact, only late).
  bool TimedOut(int saved_errno) const;
  // Clears hiredis' error after a timeout, so the context reads and writes again.
  void ClearTimeout();
  // Records `unread` replies as owed after a timeout; returns the call's DEADLINE_EXCEEDED.
  absl::Status Owe(Deadline deadline, uint64_t unread);
  // Notes the session effect of a command being sent.
  void Track(internal::SessionEffect effect);
  // Marks the connection broken and maps the hiredis error to a Status.
  absl::Status Fail(Deadline deadline, int saved_errno);

  redisContext* context_;
  Endpoint endpoint_;
  std::string name_;  // `redis "127.0.0.1:6379"`, the prefix of every error
  Duration command_timeout_;
  Duration armed_timeout_ = Duration::min();  // what the socket has now; min() = unknown
  bool broken_ = false;
  uint64_t late_replies_ = 0;
  TimePoint late_since_{};
  uint64_t drained_ = 0;
  uint8_t session_ = 0;  // bits of kInMulti, kWatching, kChanged (connection.cc)
  uint64_t generation_ = 0;
  std::string scratch_;  // encoding buffer, reused between calls
};

}  // namespace keel::redis
