#include "keel/redis/connection.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/time.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "redis/reply_convert.h"

namespace keel::redis {
namespace {

using keel::internal::StrCat;
using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;

// Socket timeouts are re-armed only when the wanted value moves outside [armed - kSlack, armed]:
// a kernel timer has jiffy granularity (1-4 ms) anyway, and setsockopt twice per call would cost
// more than the rest of a pooled PING's client-side work. The armed value is padded by half the
// slack so a steady stream of "now + X" deadlines stays inside the window.
constexpr Duration kTimeoutSlack = milliseconds(2);
constexpr Duration kMinTimeout = milliseconds(1);

std::string Millis(Duration d) { return StrCat(duration_cast<milliseconds>(d).count(), "ms"); }

timeval ToTimeval(Duration d) {
  const auto us = duration_cast<microseconds>(d).count();
  timeval tv;
  tv.tv_sec = static_cast<time_t>(us / 1000000);
  tv.tv_usec = static_cast<suseconds_t>(us % 1000000);
  return tv;
}

struct ReplyDeleter {
  void operator()(void* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<void, ReplyDeleter>;

}  // namespace

Connection::Connection(redisContext* context, Endpoint endpoint, const Options& options)
    : context_(context),
      endpoint_(std::move(endpoint)),
      name_(StrCat("redis ", endpoint_.ToString())),
      command_timeout_(options.command_timeout) {}

Connection::~Connection() { redisFree(context_); }

int Connection::fd() const { return context_ != nullptr ? context_->fd : -1; }

absl::StatusOr<std::unique_ptr<Connection>> Connection::Connect(const Endpoint& endpoint,
                                                                const Options& options,
                                                                Deadline deadline) {
  const std::string name = StrCat("redis ", endpoint.ToString());
  if (deadline.Expired()) {
    return absl::DeadlineExceededError(StrCat(name, ": deadline passed before connecting"));
  }
  // The caller's deadline wins when it is the earlier one; then running out is the caller's
  // DEADLINE_EXCEEDED, otherwise it is the server's fault (UNAVAILABLE).
  const Deadline own = Deadline::After(options.connect_timeout);
  const bool caller_bound = deadline.Remaining() < options.connect_timeout;
  const Duration budget = std::max(caller_bound ? deadline.Remaining() : options.connect_timeout,
                                   Duration(kMinTimeout));
  redisContext* c =
      redisConnectWithTimeout(endpoint.host.c_str(), endpoint.port, ToTimeval(budget));
  if (c == nullptr) return absl::ResourceExhaustedError(StrCat(name, ": out of memory"));
  if (c->err != 0) {
    const std::string err = c->errstr;
    const bool timed_out = c->err == REDIS_ERR_IO &&
                           (errno == ETIMEDOUT || err.find("timed out") != std::string::npos);
    redisFree(c);
    if (timed_out && caller_bound) {
      return absl::DeadlineExceededError(StrCat(name, ": cannot connect within the deadline"));
    }
    return absl::UnavailableError(StrCat(name, ": cannot connect: ", err));
  }
  redisEnableKeepAlive(c);
  std::unique_ptr<Connection> conn(new Connection(c, endpoint, options));
  const Deadline setup = caller_bound ? deadline : own;
  if (options.password) {
    absl::StatusOr<Reply> auth =
        options.user ? conn->Command(setup, "AUTH", *options.user, *options.password)
                     : conn->Command(setup, "AUTH", *options.password);
    if (!auth.ok()) {
      if (auth.status().code() == absl::StatusCode::kDeadlineExceeded && !caller_bound) {
        return absl::UnavailableError(StrCat(name, ": no reply to AUTH within connect_timeout ",
                                             Millis(options.connect_timeout)));
      }
      return auth.status();
    }
  }
  if (options.db != 0) {
    absl::StatusOr<Reply> select = conn->Command(setup, "SELECT", options.db);
    if (!select.ok()) {
      if (select.status().code() == absl::StatusCode::kDeadlineExceeded && !caller_bound) {
        return absl::UnavailableError(StrCat(name, ": no reply to SELECT within connect_timeout ",
                                             Millis(options.connect_timeout)));
      }
      return select.status();
    }
  }
  return conn;
}

absl::Status Connection::ArmTimeout(Deadline deadline) {
  Duration want = command_timeout_;
  if (!deadline.IsInfinite()) {
    want = deadline.Remaining();
    if (want <= Duration::zero()) {
      return absl::DeadlineExceededError(StrCat(name_, ": deadline passed before sending"));
    }
  }
  want = std::max(want, Duration(kMinTimeout));
  if (armed_timeout_ >= want && armed_timeout_ - want <= kTimeoutSlack) return absl::OkStatus();
  const Duration arm = want + kTimeoutSlack / 2;
  if (redisSetTimeout(context_, ToTimeval(arm)) != REDIS_OK) {
    return Fail(deadline, errno);
  }
  armed_timeout_ = arm;
  return absl::OkStatus();
}

absl::Status Connection::Fail(Deadline deadline, int saved_errno) {
  broken_ = true;
  armed_timeout_ = Duration::min();
  if (context_->err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)) {
    return absl::DeadlineExceededError(
        StrCat(name_, ": no reply within ",
               deadline.IsInfinite() ? StrCat("command_timeout ", Millis(command_timeout_))
                                     : std::string("the deadline")));
  }
  const char* what = context_->err == REDIS_ERR_EOF        ? "connection closed by the server"
                     : context_->err == REDIS_ERR_PROTOCOL ? "protocol error"
                                                           : "connection failed";
  return absl::UnavailableError(StrCat(name_, ": ", what, ": ", context_->errstr));
}

absl::Status Connection::ReadReply(Deadline deadline, Reply& out) {
  // A request is already buffered or sent: failing here without reading its reply would pair the
  // next caller's request with this reply, so the connection must be discarded.
  if (absl::Status armed = ArmTimeout(deadline); !armed.ok()) {
    broken_ = true;
    return armed;
  }
  void* raw = nullptr;
  if (redisGetReply(context_, &raw) != REDIS_OK) return Fail(deadline, errno);
  ReplyPtr reply(raw);
  out = internal::ConvertReply(static_cast<const redisReply*>(raw));
  return absl::OkStatus();
}

absl::StatusOr<Reply> Connection::CommandArgv(Deadline deadline,
                                              std::span<const std::string_view> argv) {
  if (broken_) return absl::FailedPreconditionError(StrCat(name_, ": connection is broken"));
  KEEL_RETURN_IF_ERROR(ArmTimeout(deadline));
  scratch_.clear();
  AppendRespCommand(argv, scratch_);
  if (redisAppendFormattedCommand(context_, scratch_.data(), scratch_.size()) != REDIS_OK) {
    return Fail(deadline, errno);
  }
  Reply reply;
  KEEL_RETURN_IF_ERROR(ReadReply(deadline, reply));
  if (reply.is_error()) return ServerErrorToStatus(name_, reply.str());
  return reply;
}

absl::StatusOr<PipelineReplies> Connection::Run(Deadline deadline, const Pipeline& pipeline) {
  if (broken_) return absl::FailedPreconditionError(StrCat(name_, ": connection is broken"));
  PipelineReplies replies;
  if (pipeline.empty()) return replies;
  KEEL_RETURN_IF_ERROR(ArmTimeout(deadline));
  const std::string& bytes = pipeline.encoded();
  if (redisAppendFormattedCommand(context_, bytes.data(), bytes.size()) != REDIS_OK) {
    return Fail(deadline, errno);
  }
  replies.reserve(pipeline.size());
  for (size_t i = 0; i < pipeline.size(); ++i) {
    Reply reply;
    absl::Status read = ReadReply(deadline, reply);
    if (!read.ok()) {
      // Unsent or unread commands leave the stream in an unknown state; ArmTimeout failing on
      // an expired deadline mid-way must break the connection as well.
      broken_ = true;
      return read;
    }
    if (reply.is_error()) {
      replies.emplace_back(ServerErrorToStatus(name_, reply.str()));
    } else {
      replies.emplace_back(std::move(reply));
    }
  }
  return replies;
}

absl::Status Connection::Send(Deadline deadline, std::span<const std::string_view> argv) {
  if (broken_) return absl::FailedPreconditionError(StrCat(name_, ": connection is broken"));
  KEEL_RETURN_IF_ERROR(ArmTimeout(deadline));
  scratch_.clear();
  AppendRespCommand(argv, scratch_);
  if (redisAppendFormattedCommand(context_, scratch_.data(), scratch_.size()) != REDIS_OK) {
    return Fail(deadline, errno);
  }
  int done = 0;
  while (!done) {
    if (redisBufferWrite(context_, &done) != REDIS_OK) return Fail(deadline, errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Reply>> Connection::Receive(Deadline deadline, int wake_fd) {
  if (broken_) return absl::FailedPreconditionError(StrCat(name_, ": connection is broken"));
  while (true) {
    void* raw = nullptr;
    if (redisGetReplyFromReader(context_, &raw) != REDIS_OK) return Fail(deadline, errno);
    if (raw != nullptr) {
      ReplyPtr reply(raw);
      return std::optional<Reply>(internal::ConvertReply(static_cast<const redisReply*>(raw)));
    }
    int timeout_ms = -1;
    if (!deadline.IsInfinite()) {
      const Duration left = deadline.Remaining();
      if (left <= Duration::zero()) return std::optional<Reply>();
      timeout_ms = static_cast<int>(std::min<int64_t>(
          duration_cast<milliseconds>(left + milliseconds(1) - std::chrono::nanoseconds(1)).count(),
          1 << 30));
    }
    pollfd pfd[2] = {{.fd = context_->fd, .events = POLLIN, .revents = 0},
                     {.fd = wake_fd, .events = POLLIN, .revents = 0}};
    const int ready = poll(pfd, wake_fd >= 0 ? 2 : 1, timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      broken_ = true;
      return absl::UnavailableError(StrCat(name_, ": poll failed"));
    }
    if (ready == 0) continue;  // loop re-checks the deadline
    if (wake_fd >= 0 && (pfd[1].revents & POLLIN) != 0 && (pfd[0].revents & POLLIN) == 0) {
      return std::optional<Reply>();
    }
    if (redisBufferRead(context_) != REDIS_OK) return Fail(deadline, errno);
  }
}

}  // namespace keel::redis
