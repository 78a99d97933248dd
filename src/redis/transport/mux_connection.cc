#include "redis/transport/mux_connection.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/strings.h"
#include "keel/status.h"

namespace keel::redis::transport {
namespace {

using keel::internal::FormatDuration;
using keel::internal::StrCat;

constexpr size_t kReadChunk = 64 * 1024;
// How often the I/O thread checks for a connection owing late replies for too long.
constexpr Duration kHousekeepingPeriod = std::chrono::milliseconds(50);
// The retry-after hint of a call refused because the connection is full: the I/O thread
// answers thousands of calls per millisecond while Redis keeps up, so a short pause is enough
// unless Redis is stalled (then the caller's deadline decides).
constexpr Duration kFullRetryAfter = std::chrono::milliseconds(10);

}  // namespace

MuxConnection::Socket::~Socket() { close(fd); }

MuxConnection::MuxConnection(Options options, EventLoop& loop, Connector connect)
    : options_(std::move(options)),
      loop_(loop),
      connect_(std::move(connect)),
      lost_suffix_(" (a command in flight may or may not have been applied)"),
      matcher_(options_.name),
      read_buf_(new char[kReadChunk]) {
  // No I/O until the first call (as Client::Create promises): it finds kDown and connects.
  loop_.Post([this] { Housekeep(); });
}

MuxConnection::~MuxConnection() {
  // The loop is stopped: whatever Shutdown's task did not reach is cancelled here.
  std::vector<std::shared_ptr<Call>> listed;
  {
    MutexLock lock(mu_);
    listed.swap(submitted_);
  }
  FailCalls(listed, absl::StatusCode::kCancelled, StrCat(options_.name, ": client shut down"));
}

void MuxConnection::FailCalls(std::vector<std::shared_ptr<Call>>& calls, absl::StatusCode code,
                              std::string_view message) {
  for (const std::shared_ptr<Call>& call : calls) call->TryFail(code, message);
  calls.clear();
}

void MuxConnection::Submit(std::shared_ptr<Call> call, std::string_view request) {
  call->request_bytes = request.size();
  calls_total_.fetch_add(1, std::memory_order_relaxed);
  bool write = false, connect = false, kick = false, shut = false, full = false;
  size_t calls = 0, bytes = 0;
  {
    MutexLock lock(mu_);
    shut = shutdown_;
    full = calls_ + 1 > options_.max_calls || bytes_ + request.size() > options_.max_bytes;
    calls = calls_;
    bytes = bytes_;
    if (!shut && !full) {
      pending_.append(request.data(), request.size());
      submitted_.push_back(call);
      ++calls_;
      bytes_ += request.size();
      if (state_ == State::kDown) {
        state_ = State::kConnecting;
        connect = true;
      } else if (state_ == State::kUp && !writing_) {
        writing_ = true;
        // A blocking caller writes itself; a callback call goes through the I/O thread, which
        // arms its deadline anyway.
        if (call->has_callback()) {
          loop_writes_ = true;
          kick = true;
        } else {
          write = true;
        }
      } else if (call->has_callback()) {
        kick = true;
      }
    }
  }
  if (shut) {
    call->TryFail(absl::StatusCode::kFailedPrecondition,
                  StrCat(options_.name, ": client is shut down"));
    return;
  }
  if (full) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    call->TryComplete(CallResult{
        .status = WithRetryAfter(
            absl::ResourceExhaustedError(
                StrCat(options_.name, ": multiplexed connection full (", calls, " calls and ",
                       bytes, " bytes in flight; limits mux.max_queued_calls ", options_.max_calls,
                       ", mux.max_bytes_in_flight ", options_.max_bytes, ")")),
            kFullRetryAfter),
        .replies = {}});
    return;
  }
  if (connect) {
    loop_.Post([this] { Connect(); });
  } else if (write) {
    Flush(/*on_loop=*/false);
  } else if (kick) {
    loop_.Post([this] {
      Adopt();
      bool flush = false;
      {
        MutexLock lock(mu_);
        if (loop_writes_ && writing_) {
          loop_writes_ = false;
          flush = true;
        }
      }
      if (flush) Flush(/*on_loop=*/true);
    });
  }
}

void MuxConnection::Flush(bool on_loop) {
  std::string buf;
  std::shared_ptr<Socket> sock;
  while (true) {
    {
      MutexLock lock(mu_);
      if (state_ != State::kUp || pending_.empty() || socket_ == nullptr) {
        writing_ = false;
        return;
      }
      buf.swap(pending_);
      pending_.clear();
      sock = socket_;
    }
    const WriteOutcome outcome = WriteAll(sock, buf, on_loop);
    buf.clear();
    if (outcome == WriteOutcome::kHandedOver) return;
    if (outcome == WriteOutcome::kFailed) {
      MutexLock lock(mu_);
      // The current socket failed: the I/O thread closes it and fails every call queued on it.
      if (socket_ == sock) {
        writing_ = false;
        return;
      }
    }
    // Written, or failed on a socket that is gone: what was queued for the current one (if any)
    // still needs this writer.
  }
}

MuxConnection::WriteOutcome MuxConnection::WriteAll(const std::shared_ptr<Socket>& sock,
                                                    std::string& buf, bool on_loop) {
  size_t off = 0;
  while (off < buf.size()) {
    const ssize_t n = send(sock->fd, buf.data() + off, buf.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      {
        MutexLock lock(mu_);
        // Closed meanwhile: these bytes' calls have been failed; go on with the new socket.
        if (socket_ != sock) return WriteOutcome::kDone;
        // The rest goes before anything queued since; the I/O thread finishes it on EPOLLOUT.
        pending_.insert(0, buf, off, std::string::npos);
        loop_writes_ = true;
      }
      if (on_loop) {
        WatchWrites(true);
      } else {
        loop_.Post([this] { WatchWrites(true); });
      }
      return WriteOutcome::kHandedOver;
    }
    const std::string message =
        StrCat(options_.name, ": connection lost: write failed: ", strerror(errno), lost_suffix_);
    // The I/O thread closes the connection (unless it already has: then the socket differs).
    auto fail = [this, sock, message] {
      if (read_socket_ == sock) Close(absl::StatusCode::kUnavailable, message, true);
    };
    if (on_loop) {
      fail();
    } else {
      loop_.Post(fail);
    }
    return WriteOutcome::kFailed;
  }
  return WriteOutcome::kDone;
}

void MuxConnection::WatchWrites(bool on) {
  if (read_socket_ == nullptr) return;
  const uint32_t events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u);
  if (absl::Status s = loop_.Rewatch(read_socket_->fd, events, this); !s.ok()) {
    Close(absl::StatusCode::kUnavailable, StrCat(s.message(), lost_suffix_), true);
  }
}

void MuxConnection::OnReady(uint32_t events) {
  if (read_socket_ == nullptr) return;
  if ((events & EPOLLOUT) != 0) {
    WatchWrites(false);
    bool flush = false;
    {
      MutexLock lock(mu_);
      if (loop_writes_) {
        loop_writes_ = false;
        flush = true;
      }
    }
    if (flush) Flush(/*on_loop=*/true);
  }
  if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0) ReadAll();
}

void MuxConnection::Adopt() {
  const ReplyMatcher::Retired retired = matcher_.TakeRetired();
  {
    MutexLock lock(mu_);
    adopting_.swap(submitted_);
    calls_ -= retired.slots;
    bytes_ -= retired.bytes;
  }
  for (std::shared_ptr<Call>& call : adopting_) {
    if (call->has_callback() && !call->deadline().IsInfinite()) {
      const Duration left = call->deadline().Remaining();
      loop_.At(std::chrono::steady_clock::now() + left,
               [weak = std::weak_ptr<Call>(call), name = &options_.name] {
                 if (std::shared_ptr<Call> c = weak.lock()) {
                   c->TryFail(absl::StatusCode::kDeadlineExceeded,
                              StrCat(*name,
                                     ": no reply within the deadline (the connection is "
                                     "kept; the late reply will be discarded)"));
                 }
               });
    }
    matcher_.Push(std::move(call));
  }
  adopting_.clear();
}

void MuxConnection::ReadAll() {
  while (read_socket_ != nullptr) {
    const ssize_t n = recv(read_socket_->fd, read_buf_.get(), kReadChunk, 0);
    if (n > 0) {
      // Every reply in these bytes answers bytes written after their call was submitted.
      Adopt();
      if (absl::Status fed = matcher_.Feed(std::string_view(read_buf_.get(), n)); !fed.ok()) {
        Close(absl::StatusCode::kUnavailable, StrCat(fed.message(), lost_suffix_), true);
        break;
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    Close(absl::StatusCode::kUnavailable,
          n == 0 ? StrCat(conn_name_, ": connection lost: closed by the server", lost_suffix_)
                 : StrCat(conn_name_, ": connection lost: ", strerror(errno), lost_suffix_),
          true);
    break;
  }
  discarded_.store(matcher_.late_replies_discarded(), std::memory_order_relaxed);
  // Return the answered calls' share of the backpressure budget promptly.
  const ReplyMatcher::Retired retired = matcher_.TakeRetired();
  MutexLock lock(mu_);
  calls_ -= retired.slots;
  bytes_ -= retired.bytes;
}

void MuxConnection::Close(absl::StatusCode code, std::string_view message, bool reconnect) {
  std::vector<std::shared_ptr<Call>> listed;
  bool shutdown = false;
  {
    MutexLock lock(mu_);
    shutdown = shutdown_;
    listed.swap(submitted_);
    pending_.clear();
    socket_.reset();
    state_ = reconnect && !shutdown ? State::kConnecting : State::kDown;
    if (loop_writes_) {
      loop_writes_ = false;
      writing_ = false;
    }
    for (const std::shared_ptr<Call>& call : listed) {
      --calls_;
      bytes_ -= call->request_bytes;
    }
  }
  if (read_socket_ != nullptr) {
    loop_.Unwatch(read_socket_->fd);
    // A caller may still be writing to it: shut it down now, close it with its last owner.
    ::shutdown(read_socket_->fd, SHUT_RDWR);
    read_socket_.reset();
  }
  matcher_.FailAll(code, message);
  FailCalls(listed, code, message);
  discarded_.store(matcher_.late_replies_discarded(), std::memory_order_relaxed);
  const ReplyMatcher::Retired retired = matcher_.TakeRetired();
  {
    MutexLock lock(mu_);
    calls_ -= retired.slots;
    bytes_ -= retired.bytes;
  }
  if (reconnect && !shutdown) loop_.Post([this] { Connect(); });
}

void MuxConnection::Connect() {
  {
    MutexLock lock(mu_);
    if (shutdown_) return;
  }
  // Blocking, on the I/O thread, bounded by connect_timeout (see the banner).
  absl::StatusOr<std::unique_ptr<Connection>> conn =
      connect_(Deadline::After(options_.connect_timeout));
  int fd = -1;
  if (conn.ok()) {
    conn_name_ = StrCat("redis \"", (*conn)->endpoint().ToString(), "\"");
    fd = (*conn)->ReleaseSocket();
    const int flags = fd >= 0 ? fcntl(fd, F_GETFL, 0) : -1;
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      if (fd >= 0) close(fd);
      conn = absl::UnavailableError(StrCat(conn_name_, ": cannot make the socket non-blocking"));
    }
  }
  std::shared_ptr<Socket> sock;
  if (conn.ok()) {
    sock = std::make_shared<Socket>(fd);
    if (absl::Status watched = loop_.Watch(fd, EPOLLIN | EPOLLRDHUP, this); !watched.ok()) {
      conn = absl::UnavailableError(std::string(watched.message()));
      sock.reset();
    }
  }
  if (!conn.ok()) {
    std::vector<std::shared_ptr<Call>> listed;
    {
      MutexLock lock(mu_);
      state_ = State::kDown;
      listed.swap(submitted_);
      pending_.clear();
      for (const std::shared_ptr<Call>& call : listed) {
        --calls_;
        bytes_ -= call->request_bytes;
      }
    }
    // As the pooled client reports a failed connect: the server is unavailable, whatever the
    // setup step that failed (the message says which: AUTH, SELECT, ROLE, ...). Calls adopted
    // while connecting (housekeeping, callback calls) are in the matcher: their bytes were just
    // dropped with the pending buffer, so they fail too, or the next connection's replies would
    // be matched to them.
    const std::string_view message = keel::internal::FromAbsl(conn.status().message());
    matcher_.FailAll(absl::StatusCode::kUnavailable, message);
    FailCalls(listed, absl::StatusCode::kUnavailable, message);
    const ReplyMatcher::Retired retired = matcher_.TakeRetired();
    MutexLock lock(mu_);
    calls_ -= retired.slots;
    bytes_ -= retired.bytes;
    return;
  }
  read_socket_ = sock;
  bool flush = false;
  {
    MutexLock lock(mu_);
    if (shutdown_) {
      // Shutdown's task runs next and closes it.
    } else {
      state_ = State::kUp;
    }
    socket_ = sock;
    if (ever_connected_) reconnects_.fetch_add(1, std::memory_order_relaxed);
    ever_connected_ = true;
    if (!writing_ && !pending_.empty() && state_ == State::kUp) {
      writing_ = true;
      flush = true;
    }
  }
  Adopt();
  if (flush) Flush(/*on_loop=*/true);
}

void MuxConnection::Housekeep() {
  // Calls written by their callers reach the matcher only here while no reply comes.
  Adopt();
  if (read_socket_ != nullptr && matcher_.owes_late_replies()) {
    const Deadline& oldest = matcher_.front()->deadline();
    if (!oldest.IsInfinite() &&
        oldest.clock().Now() - oldest.time() >= options_.late_reply_timeout) {
      late_closed_.fetch_add(1, std::memory_order_relaxed);
      Close(absl::StatusCode::kUnavailable,
            StrCat(conn_name_, ": still owing late replies ",
                   FormatDuration(options_.late_reply_timeout),
                   " (late_reply_timeout) after a call's deadline: reconnecting", lost_suffix_),
            true);
    }
  }
  {
    MutexLock lock(mu_);
    if (shutdown_) return;
  }
  loop_.At(std::chrono::steady_clock::now() + kHousekeepingPeriod, [this] { Housekeep(); });
}

void MuxConnection::Reconnect(std::string why) {
  loop_.Post([this, why = std::move(why)] {
    if (read_socket_ != nullptr) {
      Close(absl::StatusCode::kUnavailable, StrCat(conn_name_, ": ", why, lost_suffix_), true);
    }
  });
}

void MuxConnection::Shutdown() {
  {
    MutexLock lock(mu_);
    if (shutdown_) return;
    shutdown_ = true;
  }
  loop_.Post([this] {
    Close(absl::StatusCode::kCancelled, StrCat(options_.name, ": client shut down"), false);
  });
}

MuxStats MuxConnection::Stats() const {
  MuxStats stats{
      .calls_total = calls_total_.load(std::memory_order_relaxed),
      .late_replies_discarded_total = discarded_.load(std::memory_order_relaxed),
      .rejected_full_total = rejected_.load(std::memory_order_relaxed),
      .reconnects_total = reconnects_.load(std::memory_order_relaxed),
      .late_connections_closed_total = late_closed_.load(std::memory_order_relaxed),
  };
  MutexLock lock(mu_);
  stats.in_flight = calls_;
  stats.queued_bytes = bytes_;
  return stats;
}

}  // namespace keel::redis::transport
