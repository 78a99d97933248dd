// Private to keel::redis: one multiplexed Redis connection. Not part of keel's API.
//
// Many callers share the connection; each call's request goes out in order and its replies are
// matched to it by the ReplyMatcher (reply_matcher.h). Who does what:
//
//   - Callers Submit (request bytes + Call) under a short lock: the bytes are appended to the
//     pending buffer and the call to the list the I/O thread moves into the matcher, in the same
//     critical section, so the order of bytes is the order of slots. No I/O under the lock.
//   - Writing: at most one thread writes at a time (the `writing_` flag), outside the lock,
//     taking the whole pending buffer out under the lock, so everything queued goes out in one
//     write. A blocking caller that finds no write in progress writes itself (no wake-up of the
//     I/O thread to send); a callback call hands the write to the I/O thread with one posted
//     task per batch, so a thread submitting many in a row gets them out in one write. A write
//     that hits EAGAIN hands the rest to the I/O thread, which finishes it on EPOLLOUT.
//   - The I/O thread reads, feeds the matcher, and so completes the calls. Before feeding bytes
//     it adopts the calls submitted so far: any reply read was sent for bytes written after their
//     call was listed, so its slot is always there.
//   - A lone blocking caller reads its own reply: when nothing else is queued or in flight, the
//     caller takes the read side too (`direct_`), disarms the socket in epoll, writes, and waits
//     in poll() on the socket itself, so its reply wakes it directly instead of waking the I/O
//     thread, which would then wake the caller. Calls submitted meanwhile queue (their bytes go
//     out when the direct call ends, at most one round trip later) and the I/O thread neither
//     reads nor adopts until it ends. A direct call whose deadline passes hands its slot to the
//     I/O thread, first in line, so its late reply is discarded there like any other.
//   - Deadlines: a blocking caller claims its own call at its deadline (Call::Wait); for callback
//     calls the I/O thread keeps one timer armed at or before the earliest of their deadlines
//     and, when it fires, fails the expired ones and re-arms for the next (a timer per call would
//     stay in the heap until its deadline, long after the reply). The late replies are discarded
//     by the matcher and the connection is kept, unless it still owes them late_reply_timeout
//     after the oldest one's deadline: then it is closed and reconnected.
//   - A connection error fails every call in flight with UNAVAILABLE (a write may have been
//     applied) and reconnects at once, then on demand; the connector (Client::Connect) applies the
//     reconnect backoff. While it runs, a call that finds the connection down fails in Submit
//     with the last connect error (the gate), without waking the I/O thread or the connector.
//   - Backpressure: at most max_calls calls and max_bytes request bytes queued or in flight;
//     beyond, RESOURCE_EXHAUSTED with a retry-after hint, without queueing.
//   - Shutdown fails everything with CANCELLED.
//
// The connection's setup (TCP connect, AUTH, SELECT, and ROLE in Sentinel mode) is the blocking
// Connection::Connect, run on a connector thread of its own (one at a time per connection) and
// bounded by connect_timeout, so a slow or paused server never stalls the I/O thread; the socket
// is then handed to the I/O thread and taken over non-blocking.
//
// Thread safety: Submit, Reconnect, Stats and Shutdown are thread-safe; the rest runs on the
// loop thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "keel/async/io_loop.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/redis/connection.h"
#include "keel/sync.h"
#include "redis/transport/call.h"
#include "redis/transport/reply_matcher.h"

namespace keel::redis::transport {

struct MuxStats {
  uint64_t calls_total = 0;                    // calls submitted
  uint64_t late_replies_discarded_total = 0;   // replies of calls that gave up, read and dropped
  uint64_t rejected_full_total = 0;            // calls refused by backpressure
  uint64_t reconnects_total = 0;               // connections made after the first
  uint64_t late_connections_closed_total = 0;  // closed for owing late replies too long
  uint64_t direct_calls_total = 0;             // calls whose caller read its own reply
  uint64_t in_flight = 0;                      // calls queued or awaiting replies (gauge)
  uint64_t queued_bytes = 0;                   // their request bytes (gauge)
};

class MuxConnection final : public IoLoop::Watcher {
 public:
  using Connector = std::function<absl::StatusOr<std::unique_ptr<Connection>>(Deadline)>;
  // Says, without I/O, whether a connection attempt may be made now: not OK (UNAVAILABLE with
  // the last connect error) while the reconnect backoff runs. Called under the connection's lock.
  using ConnectGate = std::function<absl::Status()>;
  struct Options {
    std::string name;  // `redis "<pool name>"`, the prefix of errors
    Duration connect_timeout = std::chrono::seconds(1);
    Duration late_reply_timeout = std::chrono::seconds(10);
    size_t max_calls = 4096;
    size_t max_bytes = 64 << 20;
    // A lone blocking caller in Run reads its own reply (see the banner). Off only to measure
    // the difference.
    bool lone_caller_reads = true;
    // Called on the loop thread when a connection that was up is closed (not at Shutdown).
    std::function<void()> on_lost = nullptr;
  };

  // Connects on the first Submit (on `loop`, possibly shared with other clients), not before.
  // Whatever `connect` and `gate` use must outlive the connection. A call submitted while the
  // connection is down and `gate` refuses fails at once with the gate's status, on the caller's
  // thread: no task for the I/O thread, no setup attempted. On a loop already stopped, or once
  // it stops, every call fails (CANCELLED in flight, FAILED_PRECONDITION after) naming the loop.
  MuxConnection(Options options, std::shared_ptr<IoLoop> loop, Connector connect,
                ConnectGate gate = nullptr);
  ~MuxConnection() override;  // Shutdown(), then joins the connector thread
  MuxConnection(const MuxConnection&) = delete;
  MuxConnection& operator=(const MuxConnection&) = delete;

  // Queues `request` (the RESP bytes of call->expected() commands) for `call`. Refusals
  // complete the call at once: CANCELLED after Shutdown, RESOURCE_EXHAUSTED when full.
  void Submit(std::shared_ptr<Call> call, std::string_view request) ABSL_LOCKS_EXCLUDED(mu_);

  // Submits `call` (no callback) and waits for its result: what a blocking caller does. When
  // nothing else is queued or in flight the caller reads its own reply (see the banner).
  CallResult Run(std::shared_ptr<Call> call, std::string_view request,
                 std::string_view timeout_message) ABSL_LOCKS_EXCLUDED(mu_);

  // Closes the current connection (its calls fail with UNAVAILABLE: `why`) and connects again:
  // after a -READONLY reply, so the connection follows a new primary. A setup in progress is
  // closed the same way as soon as it completes (it may have been made with what is now stale).
  void Reconnect(std::string why) ABSL_LOCKS_EXCLUDED(mu_);

  // Fails every call with CANCELLED, closes the socket; later Submits are refused. Then the
  // fence (IoLoop::Scope::Close): when it returns no task, timer or watcher of this connection
  // runs any more, so the loop may go on serving other clients. Idempotent; bounded (it waits
  // only for the loop thread's current callback). On the loop thread it closes at once.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  MuxStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

  // IoLoop::Watcher.
  void OnReady(uint32_t events) override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // A socket shared by the I/O thread and a writing caller: closed when the last one lets go,
  // so a caller never writes to a descriptor number that was closed and reused.
  struct Socket {
    explicit Socket(int fd) : fd(fd) {}
    ~Socket();
    const int fd;
    IoLoop::WatchId watch = 0;  // set on the loop thread before the socket is published
  };
  enum class State { kDown, kConnecting, kUp };

  // Submit, or Run's submission when `may_read_reply`.
  void Enqueue(std::shared_ptr<Call> call, std::string_view request, bool may_read_reply)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Loop thread: starts the setup on the connector thread (unless one runs).
  void Connect() ABSL_LOCKS_EXCLUDED(mu_);
  // Loop thread: installs the setup's result, or fails the calls waiting for it.
  void Connected(absl::StatusOr<std::unique_ptr<Connection>> conn) ABSL_LOCKS_EXCLUDED(mu_);
  // Writes the pending buffer until it is empty, EAGAIN (handed to the I/O thread) or an error.
  // REQUIRES: the caller set writing_.
  void Flush(bool on_loop) ABSL_LOCKS_EXCLUDED(mu_);
  enum class WriteOutcome { kDone, kFailed, kHandedOver };
  // Writes `buf` to `sock`: kDone when written (or the socket was replaced meanwhile), kFailed
  // (the failure is posted to the I/O thread), kHandedOver when EAGAIN handed the rest and the
  // write side to the I/O thread.
  WriteOutcome WriteAll(const std::shared_ptr<Socket>& sock, std::string& buf, bool on_loop)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Reads until EAGAIN; feeds the matcher.
  void ReadAll() ABSL_LOCKS_EXCLUDED(mu_);
  // The lone caller's round trip on `sock` (see the banner). REQUIRES: the caller set direct_
  // and writing_ for `call`, counted in calls_.
  void RunDirect(const std::shared_ptr<Call>& call, std::string_view request,
                 std::shared_ptr<Socket> sock) ABSL_LOCKS_EXCLUDED(mu_);
  // Loop thread: arms the callback-deadline timer for `when` (posted by Submit, or re-armed by
  // Expire).
  void ArmExpiry(TimePoint when);
  // Loop thread: fails the callback calls whose deadline passed and re-arms for the next.
  void Expire() ABSL_LOCKS_EXCLUDED(mu_);
  // Moves the submitted calls into the matcher (arming timers of callback calls) and subtracts
  // the retired ones from the backpressure counts.
  void Adopt() ABSL_LOCKS_EXCLUDED(mu_);
  // Closes the connection and fails every call in flight with `code`/`message`; reconnects
  // unless shutting down.
  void Close(absl::StatusCode code, std::string_view message, bool reconnect)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Housekeep();
  // Loop thread: arms EPOLLOUT after a write hit EAGAIN.
  void WatchWrites(bool on);
  // Loop thread, when the loop stops under the connection: fails everything, refuses the rest.
  void LoopStopped() ABSL_LOCKS_EXCLUDED(mu_);
  // Through the scope; false when the scope is closed or the loop stopped.
  bool Post(IoLoop::Task task);
  std::string ShutMessage() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Completes `calls` (listed, not yet in the matcher) with code/message.
  static void FailCalls(std::vector<std::shared_ptr<Call>>& calls, absl::StatusCode code,
                        std::string_view message);

  const Options options_;
  const std::string loop_name_;
  // Everything this connection runs on the loop goes through it (null when the loop was stopped
  // before the connection was made).
  std::unique_ptr<IoLoop::Scope> scope_;
  const Connector connect_;
  const ConnectGate gate_;
  const std::string lost_suffix_;

  mutable Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kDown;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_stopped_ ABSL_GUARDED_BY(mu_) = false;  // shut down because the loop stopped
  bool writing_ ABSL_GUARDED_BY(mu_) = false;       // a thread owns the write side
  std::shared_ptr<Socket> socket_ ABSL_GUARDED_BY(mu_);
  std::string pending_ ABSL_GUARDED_BY(mu_);  // bytes not yet written, in slot order
  std::vector<std::shared_ptr<Call>> submitted_ ABSL_GUARDED_BY(mu_);  // not yet in the matcher
  size_t calls_ ABSL_GUARDED_BY(mu_) = 0;                              // queued or in flight
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool loop_writes_ ABSL_GUARDED_BY(mu_) = false;   // writing_ was handed to the I/O thread
  bool flush_posted_ ABSL_GUARDED_BY(mu_) = false;  // a task to flush for callback calls is queued
  bool ever_connected_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_reading_ ABSL_GUARDED_BY(mu_) = false;  // the I/O thread is inside ReadAll
  bool direct_ ABSL_GUARDED_BY(mu_) = false;        // a lone caller reads its own reply
  // A timer is armed (or posted to be) at or before this time, which is at or before the
  // deadline of every unclaimed callback call; TimePoint::max() when none is.
  TimePoint expiry_armed_ ABSL_GUARDED_BY(mu_) = TimePoint::max();

  // Loop thread only.
  ReplyMatcher matcher_;
  std::shared_ptr<Socket> read_socket_;  // the socket the loop watches
  std::string conn_name_;                // `redis "host:port"` of the current connection
  std::vector<std::shared_ptr<Call>> adopting_;
  std::vector<ReplyMatcher::Finished> finished_;  // answered by the last read, not completed yet
  bool connecting_ = false;                       // the connector thread runs a setup
  std::string reconnect_after_setup_;             // a Reconnect(why) that came during it
  std::thread connector_;  // started and joined on the loop thread; joined by the destructor
  std::unique_ptr<char[]> read_buf_;
  // The direct caller's only (it owns direct_).
  ReplyMatcher direct_matcher_;
  std::unique_ptr<char[]> direct_buf_;

  std::atomic<uint64_t> calls_total_{0};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> reconnects_{0};
  std::atomic<uint64_t> late_closed_{0};
  std::atomic<uint64_t> direct_calls_{0};
};

}  // namespace keel::redis::transport
