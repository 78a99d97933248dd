#include "redis/transport/mux_connection.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/epoll.h>
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
// Requests up to this size may be sent by a lone caller reading its own reply: an idle socket's
// send buffer takes them in one send.
constexpr size_t kDirectMaxRequest = 16 * 1024;
// A direct caller re-checks its deadline at least this often while it waits in poll(), so a
// deadline on an injected clock is noticed when the clock moves.
constexpr Duration kDirectPollSlice = std::chrono::milliseconds(50);

}  // namespace

MuxConnection::Socket::~Socket() { close(fd); }

MuxConnection::MuxConnection(Options options, std::shared_ptr<IoLoop> loop, Connector connect,
                             ConnectGate gate)
    : options_(std::move(options)),
      loop_name_(loop->name()),
      connect_(std::move(connect)),
      gate_(std::move(gate)),
      lost_suffix_(" (a command in flight may or may not have been applied)"),
      matcher_(options_.name),
      read_buf_(new char[kReadChunk]),
      direct_matcher_(options_.name) {
  absl::StatusOr<std::unique_ptr<IoLoop::Scope>> scope =
      loop->OpenScope(options_.name, [this] { LoopStopped(); });
  if (!scope.ok()) {
    MutexLock lock(mu_);
    shutdown_ = true;
    loop_stopped_ = true;
    return;
  }
  scope_ = std::move(*scope);
  // No I/O until the first call (as Client::Create promises): it finds kDown and connects.
  Post([this] { Housekeep(); });
}

MuxConnection::~MuxConnection() {
  Shutdown();
  // Bounded by connect_timeout: a setup still running finishes (its result is dropped: the
  // scope refuses its task).
  if (connector_.joinable()) connector_.join();
  // Fenced: whatever Shutdown's task did not reach is cancelled here.
  std::vector<std::shared_ptr<Call>> listed;
  {
    MutexLock lock(mu_);
    listed.swap(submitted_);
  }
  FailCalls(listed, absl::StatusCode::kCancelled, StrCat(options_.name, ": client shut down"));
}

bool MuxConnection::Post(IoLoop::Task task) {
  return scope_ != nullptr && scope_->Post(std::move(task));
}

std::string MuxConnection::ShutMessage() const {
  return loop_stopped_ ? StrCat(options_.name, ": its I/O loop \"", loop_name_, "\" was stopped")
                       : StrCat(options_.name, ": client is shut down");
}

void MuxConnection::LoopStopped() {
  std::string message;
  {
    MutexLock lock(mu_);
    shutdown_ = true;
    loop_stopped_ = true;
    message = ShutMessage();
  }
  // Posting is refused by now: everything listed or in flight fails here.
  Close(absl::StatusCode::kCancelled, message, false);
}

void MuxConnection::FailCalls(std::vector<std::shared_ptr<Call>>& calls, absl::StatusCode code,
                              std::string_view message) {
  for (const std::shared_ptr<Call>& call : calls) call->TryFail(code, message);
  calls.clear();
}

void MuxConnection::Submit(std::shared_ptr<Call> call, std::string_view request) {
  Enqueue(std::move(call), request, /*may_read_reply=*/false);
}

CallResult MuxConnection::Run(std::shared_ptr<Call> call, std::string_view request,
                              std::string_view timeout_message) {
  Enqueue(call, request, /*may_read_reply=*/!call->has_callback());
  return call->Wait(timeout_message);
}

void MuxConnection::Enqueue(std::shared_ptr<Call> call, std::string_view request,
                            bool may_read_reply) {
  call->request_bytes = request.size();
  if (call->has_callback() && !call->deadline().IsInfinite()) {
    call->expires_at = std::chrono::steady_clock::now() + call->deadline().Remaining();
  }
  calls_total_.fetch_add(1, std::memory_order_relaxed);
  bool write = false, connect = false, shut = false, full = false, arm = false, kick = false;
  std::shared_ptr<Socket> direct;
  absl::Status refused;
  size_t calls = 0, bytes = 0;
  std::string shut_message;
  {
    MutexLock lock(mu_);
    shut = shutdown_;
    if (shut) shut_message = ShutMessage();
    full = calls_ + 1 > options_.max_calls || bytes_ + request.size() > options_.max_bytes;
    calls = calls_;
    bytes = bytes_;
    // Down, and the reconnect backoff runs: no attempt would be made, so fail here rather than
    // queue the call for a setup that the connector would refuse one task later.
    if (!shut && !full && state_ == State::kDown && gate_) refused = gate_();
    if (!shut && !full && refused.ok()) {
      if (may_read_reply && options_.lone_caller_reads && state_ == State::kUp &&
          socket_ != nullptr && calls_ == 0 && !writing_ && !loop_reading_ &&
          request.size() <= kDirectMaxRequest) {
        direct_ = true;
        writing_ = true;
        direct = socket_;
      } else {
        pending_.append(request.data(), request.size());
        submitted_.push_back(call);
        if (state_ == State::kDown) {
          state_ = State::kConnecting;
          connect = true;
        } else if (state_ == State::kUp && !writing_) {
          writing_ = true;
          if (call->has_callback()) {
            // A thread submitting callback calls usually submits several in a row: the I/O
            // thread writes them all at once (one wake-up per batch, not a send per call).
            loop_writes_ = true;
            kick = !flush_posted_;
            flush_posted_ = true;
          } else {
            write = true;
          }
        }
        if (call->expires_at < expiry_armed_) {
          expiry_armed_ = call->expires_at;
          arm = true;
        }
      }
      ++calls_;
      bytes_ += request.size();
    }
  }
  if (shut) {
    call->TryFail(absl::StatusCode::kFailedPrecondition, shut_message);
    return;
  }
  if (!refused.ok()) {
    call->TryComplete(CallResult{.status = std::move(refused), .replies = {}});
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
  if (direct != nullptr) {
    RunDirect(call, request, std::move(direct));
    return;
  }
  // Only a callback call whose deadline is earlier than every armed one wakes the I/O thread.
  if (arm) Post([this, when = call->expires_at] { ArmExpiry(when); });
  if (connect) {
    Post([this] { Connect(); });
  } else if (write) {
    Flush(/*on_loop=*/false);
  } else if (kick) {
    Post([this] {
      bool flush = false;
      {
        MutexLock lock(mu_);
        flush_posted_ = false;
        if (loop_writes_ && writing_) {
          loop_writes_ = false;
          flush = true;
        }
      }
      if (flush) Flush(/*on_loop=*/true);
    });
  }
}

void MuxConnection::RunDirect(const std::shared_ptr<Call>& call, std::string_view request,
                              std::shared_ptr<Socket> sock) {
  direct_calls_.fetch_add(1, std::memory_order_relaxed);
  if (direct_buf_ == nullptr) direct_buf_.reset(new char[kReadChunk]);
  // The I/O thread must not read this reply: one-shot with no events reports only an error,
  // once (the I/O thread then finds direct_ set and leaves the socket alone).
  const bool disarmed = scope_->Rewatch(sock->watch, EPOLLONESHOT).ok();
  const Deadline& deadline = call->deadline();
  // Waits in poll() for `events` until the deadline; false at the deadline.
  auto wait_for = [&](short events) {
    while (true) {
      const Duration left = deadline.Remaining();
      if (left <= Duration::zero()) return false;
      const Duration slice = std::min<Duration>(left, kDirectPollSlice);
      pollfd p{.fd = sock->fd, .events = events, .revents = 0};
      const int n = poll(
          &p, 1, static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(slice).count()));
      if (n > 0) return true;
      if (n < 0 && errno != EINTR) return true;  // the next send or recv reports the error
    }
  };
  std::string failure;  // why the connection is lost, empty when it is not
  bool late = false;    // the deadline passed before the reply was read
  size_t off = 0;
  while (failure.empty() && off < request.size()) {
    const ssize_t n = send(sock->fd, request.data() + off, request.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Part of the request is out: the stream cannot be resumed by anyone else.
      if (!wait_for(POLLOUT)) failure = "no room to send the request before the deadline";
    } else {
      failure = StrCat("write failed: ", strerror(errno));
    }
  }
  if (failure.empty() && disarmed) direct_matcher_.Push(call);
  while (failure.empty() && disarmed && !call->claimed()) {
    const ssize_t n = recv(sock->fd, direct_buf_.get(), kReadChunk, 0);
    if (n > 0) {
      if (absl::Status fed = direct_matcher_.Feed(std::string_view(direct_buf_.get(), n));
          !fed.ok()) {
        failure = std::string(fed.message());  // the call has been failed with it
      }
    } else if (n < 0 && errno == EINTR) {
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_for(POLLIN)) {
        late = true;
        break;
      }
    } else {
      failure = n == 0 ? std::string("closed by the server") : std::string(strerror(errno));
    }
  }
  // A reply ends where its bytes end; anything after it, or a late reply partly read, leaves the
  // stream where no one can pick it up.
  if (failure.empty() && direct_matcher_.mid_reply()) {
    failure = "the stream cannot be resumed after a partly read reply";
  }
  if (failure.empty() && !disarmed) {
    // The I/O thread reads this reply as any other (the socket is being closed, or epoll failed).
    late = true;
  }
  // Let the I/O thread read again, then give up the read side. Re-arming first: a readiness the
  // I/O thread sees before direct_ clears is reported again (level-triggered) after it.
  if (disarmed) (void)scope_->Rewatch(sock->watch, EPOLLIN | EPOLLRDHUP);
  direct_matcher_.Clear();
  bool shut = false, handed_over = false;
  {
    MutexLock lock(mu_);
    shut = shutdown_;
    direct_ = false;
    if (late && failure.empty() && socket_ == sock && !call->claimed()) {
      // First in line: its bytes went out before those of every call listed since.
      submitted_.insert(submitted_.begin(), call);
      handed_over = true;
    } else {
      --calls_;
      bytes_ -= call->request_bytes;
    }
  }
  if (!handed_over && !call->claimed()) {
    // Failed, or the connection was closed under the call (its socket replaced).
    if (failure.empty()) failure = "closed while the call was in flight";
    if (shut) {
      call->TryFail(absl::StatusCode::kCancelled, StrCat(options_.name, ": client shut down"));
    } else {
      call->TryFail(absl::StatusCode::kUnavailable,
                    StrCat(options_.name, ": connection lost: ", failure, lost_suffix_));
    }
  }
  if (!failure.empty()) {
    std::string message = StrCat(options_.name, ": connection lost: ", failure, lost_suffix_);
    Post([this, sock, message = std::move(message)] {
      if (read_socket_ == sock) Close(absl::StatusCode::kUnavailable, message, true);
    });
  }
  // What was queued meanwhile goes out now (Flush clears writing_ when nothing is).
  Flush(/*on_loop=*/false);
}

void MuxConnection::ArmExpiry(TimePoint when) {
  scope_->At(when, [this] { Expire(); });
}

void MuxConnection::Expire() {
  Adopt();
  const TimePoint now = std::chrono::steady_clock::now();
  TimePoint next = TimePoint::max();
  std::vector<std::shared_ptr<Call>> expired;
  auto visit = [&](const std::shared_ptr<Call>& call) {
    if (call->expires_at == TimePoint::max() || call->claimed()) return;
    if (call->expires_at <= now) {
      expired.push_back(call);
    } else {
      next = std::min(next, call->expires_at);
    }
  };
  matcher_.ForEach(visit);
  {
    MutexLock lock(mu_);
    // Listed but not adopted (a direct call holds the read side): they expire all the same.
    for (const std::shared_ptr<Call>& call : submitted_) visit(call);
    expiry_armed_ = next;
  }
  if (next != TimePoint::max()) ArmExpiry(next);
  for (const std::shared_ptr<Call>& call : expired) {
    call->TryFail(absl::StatusCode::kDeadlineExceeded,
                  StrCat(options_.name,
                         ": no reply within the deadline (the connection is kept; the late reply "
                         "will be discarded)"));
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
        Post([this] { WatchWrites(true); });
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
      Post(fail);
    }
    return WriteOutcome::kFailed;
  }
  return WriteOutcome::kDone;
}

void MuxConnection::WatchWrites(bool on) {
  if (read_socket_ == nullptr) return;
  const uint32_t events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u);
  if (absl::Status s = scope_->Rewatch(read_socket_->watch, events); !s.ok()) {
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
    // While a direct call holds the read side, a direct call that runs late goes first in line:
    // nothing listed after it may enter the matcher before it.
    if (!direct_) adopting_.swap(submitted_);
    calls_ -= retired.slots;
    bytes_ -= retired.bytes;
  }
  for (std::shared_ptr<Call>& call : adopting_) matcher_.Push(std::move(call));
  adopting_.clear();
}

void MuxConnection::ReadAll() {
  {
    MutexLock lock(mu_);
    // A lone caller is reading its own reply on this socket: leave it alone.
    if (direct_) return;
    loop_reading_ = true;
  }
  while (read_socket_ != nullptr) {
    const ssize_t n = recv(read_socket_->fd, read_buf_.get(), kReadChunk, 0);
    if (n > 0) {
      // Every reply in these bytes answers bytes written after their call was submitted.
      Adopt();
      const absl::Status fed = matcher_.Feed(std::string_view(read_buf_.get(), n), &finished_);
      // The answered calls leave the backpressure counts before they complete: a caller woken
      // by its reply that calls again at once finds the connection idle (and reads its own).
      const ReplyMatcher::Retired retired = matcher_.TakeRetired();
      // A short read drained the socket: no recv more (epoll is level-triggered, so bytes that
      // arrive later wake the loop again), and the read side is free before the completions run.
      const bool drained = fed.ok() && static_cast<size_t>(n) < kReadChunk;
      {
        MutexLock lock(mu_);
        calls_ -= retired.slots;
        bytes_ -= retired.bytes;
        if (drained) loop_reading_ = false;
      }
      matcher_.Complete(finished_);
      if (drained) return;
      if (!fed.ok()) {
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
  // Return the answered calls' share of the backpressure budget promptly.
  const ReplyMatcher::Retired retired = matcher_.TakeRetired();
  MutexLock lock(mu_);
  calls_ -= retired.slots;
  bytes_ -= retired.bytes;
  loop_reading_ = false;
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
  const bool was_up = read_socket_ != nullptr;
  if (read_socket_ != nullptr) {
    scope_->Unwatch(read_socket_->watch);
    // A caller may still be writing to it: shut it down now, close it with its last owner.
    ::shutdown(read_socket_->fd, SHUT_RDWR);
    read_socket_.reset();
  }
  matcher_.FailAll(code, message);
  FailCalls(listed, code, message);
  const ReplyMatcher::Retired retired = matcher_.TakeRetired();
  {
    MutexLock lock(mu_);
    calls_ -= retired.slots;
    bytes_ -= retired.bytes;
  }
  if (was_up && !shutdown && options_.on_lost) {
    try {
      options_.on_lost();
    } catch (...) {  // a hook's throw must not end the I/O thread
    }
  }
  if (reconnect && !shutdown) Post([this] { Connect(); });
}

void MuxConnection::Connect() {
  {
    MutexLock lock(mu_);
    if (shutdown_) return;
  }
  if (connecting_) return;  // one setup at a time; its end decides what comes next
  connecting_ = true;
  // The previous connector has posted its result, so it is ending: joining it is immediate.
  if (connector_.joinable()) connector_.join();
  // The setup is blocking (TCP connect, AUTH, SELECT, ROLE), bounded by connect_timeout: on a
  // thread of its own, so a slow or paused server never stalls the I/O thread, whose timers
  // fail async calls at their deadlines meanwhile.
  connector_ = std::thread([this] {
    auto conn = std::make_shared<absl::StatusOr<std::unique_ptr<Connection>>>(
        connect_(Deadline::After(options_.connect_timeout)));
    // Dropped (closing the connection) when the loop has stopped.
    Post([this, conn] { Connected(std::move(*conn)); });
  });
}

void MuxConnection::Connected(absl::StatusOr<std::unique_ptr<Connection>> conn) {
  connecting_ = false;
  bool shut = false;
  {
    MutexLock lock(mu_);
    shut = shutdown_;
  }
  if (shut) {
    // Shut down while connecting: Shutdown's task has failed the calls; the connection closes
    // here, never watched.
    Close(absl::StatusCode::kCancelled, StrCat(options_.name, ": client shut down"), false);
    return;
  }
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
    absl::StatusOr<IoLoop::WatchId> watched = scope_->Watch(fd, EPOLLIN | EPOLLRDHUP, this);
    if (watched.ok()) {
      sock->watch = *watched;
    } else {
      conn = absl::UnavailableError(std::string(watched.status().message()));
      sock.reset();
    }
  }
  if (!conn.ok()) {
    reconnect_after_setup_.clear();  // the next setup is made afresh anyway
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
    // A Shutdown from now on posts its Close after this task: it closes this socket.
    if (!shutdown_) state_ = State::kUp;
    socket_ = sock;
    if (ever_connected_) reconnects_.fetch_add(1, std::memory_order_relaxed);
    ever_connected_ = true;
    if (!writing_ && !pending_.empty() && state_ == State::kUp) {
      writing_ = true;
      flush = true;
    }
  }
  Adopt();
  if (!reconnect_after_setup_.empty()) {
    const std::string why = std::exchange(reconnect_after_setup_, std::string());
    Close(absl::StatusCode::kUnavailable, StrCat(conn_name_, ": ", why, lost_suffix_), true);
    return;
  }
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
  scope_->At(std::chrono::steady_clock::now() + kHousekeepingPeriod, [this] { Housekeep(); });
}

void MuxConnection::Reconnect(std::string why) {
  Post([this, why = std::move(why)]() mutable {
    if (read_socket_ != nullptr) {
      Close(absl::StatusCode::kUnavailable, StrCat(conn_name_, ": ", why, lost_suffix_), true);
    } else if (connecting_) {
      reconnect_after_setup_ = std::move(why);
    }
  });
}

void MuxConnection::Shutdown() {
  bool first = false;
  {
    MutexLock lock(mu_);
    first = !shutdown_;
    shutdown_ = true;
  }
  if (scope_ == nullptr) return;
  if (first) {
    auto close = [this] {
      Close(absl::StatusCode::kCancelled, StrCat(options_.name, ": client shut down"), false);
    };
    // On the loop thread (destroyed from another client's callback) the fence below drops the
    // tasks still queued: close here. Elsewhere a refused post means the loop is stopping, and
    // LoopStopped closes instead.
    if (scope_->InLoop()) {
      close();
    } else {
      Post(close);
    }
  }
  // The fence: after it no task, timer or watcher of this connection runs.
  scope_->Close();
}

MuxStats MuxConnection::Stats() const {
  MuxStats stats{
      .calls_total = calls_total_.load(std::memory_order_relaxed),
      .late_replies_discarded_total = matcher_.late_replies_discarded(),
      .rejected_full_total = rejected_.load(std::memory_order_relaxed),
      .reconnects_total = reconnects_.load(std::memory_order_relaxed),
      .late_connections_closed_total = late_closed_.load(std::memory_order_relaxed),
      .direct_calls_total = direct_calls_.load(std::memory_order_relaxed),
  };
  MutexLock lock(mu_);
  stats.in_flight = calls_;
  stats.queued_bytes = bytes_;
  return stats;
}

}  // namespace keel::redis::transport
