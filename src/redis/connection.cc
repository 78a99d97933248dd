#include "keel/redis/connection.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/time.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/redact.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "redis/reply_convert.h"

namespace keel::redis {
namespace {

using keel::internal::FormatDuration;
using keel::internal::RedactCredentials;
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

// Session bits: what state a command left in force (see session_clean()).
constexpr uint8_t kInMulti = 1;
constexpr uint8_t kWatching = 2;
constexpr uint8_t kChanged = 4;  // permanent: SUBSCRIBE, SELECT, AUTH, ...

std::string Name(const Endpoint& endpoint) { return StrCat("redis \"", endpoint.ToString(), "\""); }

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
      name_(Name(endpoint_)),
      command_timeout_(options.command_timeout) {}

Connection::~Connection() {
  if (context_ != nullptr) redisFree(context_);
}

int Connection::fd() const { return context_ != nullptr ? context_->fd : -1; }

int Connection::ReleaseSocket() {
  if (context_ == nullptr) return -1;
  const int fd = redisFreeKeepFd(context_);
  context_ = nullptr;
  broken_ = true;
  return fd;
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Connect(const Endpoint& endpoint,
                                                                const Options& options,
                                                                Deadline deadline) {
  const std::string name = Name(endpoint);
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
    const std::string err = RedactCredentials(c->errstr);
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
  // A setup step that times out leaves a reply owed on a connection nobody will use: say which
  // step, and whose time ran out.
  auto setup_failed = [&](std::string_view step, const absl::Status& status) {
    if (status.code() == absl::StatusCode::kDeadlineExceeded && !caller_bound) {
      return absl::UnavailableError(StrCat(name, ": no reply to ", step, " within connect_timeout ",
                                           FormatDuration(options.connect_timeout)));
    }
    if (step == "AUTH" && ServerError(status)) {
      // The server's words (WRONGPASS, NOAUTH, ...) never hold the password, but everything
      // passed on from a server or hiredis goes through the redactor.
      return absl::PermissionDeniedError(
          StrCat(name, ": AUTH failed",
                 options.user ? StrCat(" for user \"", *options.user, "\"") : std::string(), ": ",
                 RedactCredentials(*ServerError(status))));
    }
    return absl::Status(status.code(),
                        RedactCredentials(keel::internal::FromAbsl(status.message())));
  };
  if (options.password) {
    absl::StatusOr<Reply> auth =
        options.user ? conn->Command(setup, "AUTH", *options.user, *options.password)
                     : conn->Command(setup, "AUTH", *options.password);
    if (!auth.ok()) return setup_failed("AUTH", auth.status());
  }
  if (options.db != 0) {
    absl::StatusOr<Reply> select = conn->Command(setup, "SELECT", options.db);
    if (!select.ok()) return setup_failed("SELECT", select.status());
  }
  conn->session_ = 0;  // AUTH and SELECT are the configured state, not a caller's
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

bool Connection::TimedOut(int saved_errno) const {
  return context_->err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK);
}

void Connection::ClearTimeout() {
  // hiredis refuses every read and write once `err` is set; after a socket timeout its buffers
  // are intact (unsent bytes stay in obuf, a partial reply in the reader), so clearing the flag
  // resumes the stream where it stopped.
  context_->err = 0;
  context_->errstr[0] = '\0';
}

absl::Status Connection::Owe(Deadline deadline, uint64_t unread) {
  if (late_replies_ == 0) late_since_ = deadline.clock().Now();
  late_replies_ += unread;
  return absl::DeadlineExceededError(
      StrCat(name_, ": no reply within ",
             deadline.IsInfinite() ? StrCat("command_timeout ", FormatDuration(command_timeout_))
                                   : std::string("the deadline"),
             " (the connection is kept; the late reply will be discarded)"));
}

absl::Status Connection::Fail(Deadline deadline, int saved_errno) {
  broken_ = true;
  armed_timeout_ = Duration::min();
  if (TimedOut(saved_errno)) {
    return absl::DeadlineExceededError(
        StrCat(name_, ": no reply within ",
               deadline.IsInfinite() ? StrCat("command_timeout ", FormatDuration(command_timeout_))
                                     : std::string("the deadline")));
  }
  const char* what = context_->err == REDIS_ERR_EOF        ? "connection closed by the server"
                     : context_->err == REDIS_ERR_PROTOCOL ? "protocol error"
                                                           : "connection failed";
  return absl::UnavailableError(
      StrCat(name_, ": ", what, ": ", RedactCredentials(context_->errstr)));
}

absl::Status Connection::ReadReply(Deadline deadline, Reply& out, uint64_t unread) {
  // A request is already buffered or sent: its reply will come, so running out of time here
  // makes it a late reply for the next call to drain, never one for the next caller to read.
  if (absl::Status armed = ArmTimeout(deadline); !armed.ok()) {
    if (broken_) return armed;
    return Owe(deadline, unread);
  }
  void* raw = nullptr;
  if (redisGetReply(context_, &raw) != REDIS_OK) {
    const int saved = errno;
    if (!TimedOut(saved)) return Fail(deadline, saved);
    ClearTimeout();
    return Owe(deadline, unread);
  }
  ReplyPtr reply(raw);
  out = internal::ConvertReply(static_cast<const redisReply*>(raw));
  return absl::OkStatus();
}

absl::Status Connection::DrainLateReplies(Deadline deadline) {
  if (broken_) return absl::FailedPreconditionError(StrCat(name_, ": connection is broken"));
  while (late_replies_ > 0) {
    absl::Status armed = ArmTimeout(deadline);
    void* raw = nullptr;
    if (armed.ok() && redisGetReply(context_, &raw) == REDIS_OK) {
      freeReplyObject(raw);
      --late_replies_;
      ++drained_;
      continue;
    }
    if (armed.ok()) {
      const int saved = errno;
      if (!TimedOut(saved)) return Fail(deadline, saved);
      ClearTimeout();
    } else if (broken_) {
      return armed;
    }
    return absl::DeadlineExceededError(
        StrCat(name_, ": ", late_replies_, " late ", late_replies_ == 1 ? "reply" : "replies",
               " of an earlier call still pending at the deadline (nothing was sent)"));
  }
  return absl::OkStatus();
}

absl::Status Connection::Prepare(Deadline deadline) {
  if (broken_) return absl::FailedPreconditionError(StrCat(name_, ": connection is broken"));
  KEEL_RETURN_IF_ERROR(DrainLateReplies(deadline));
  return ArmTimeout(deadline);
}

void Connection::Track(internal::SessionEffect effect) {
  using internal::SessionEffect;
  switch (effect) {
    case SessionEffect::kNone:
      return;
    case SessionEffect::kMulti:
      session_ |= kInMulti;
      return;
    case SessionEffect::kEndMulti:
      session_ &= static_cast<uint8_t>(~(kInMulti | kWatching));
      return;
    case SessionEffect::kWatch:
      session_ |= kWatching;
      return;
    case SessionEffect::kUnwatch:
      session_ &= static_cast<uint8_t>(~kWatching);
      return;
    case SessionEffect::kPermanent:
      session_ |= kChanged;
      return;
  }
}

absl::StatusOr<Reply> Connection::CommandArgv(Deadline deadline,
                                              std::span<const std::string_view> argv) {
  if (argv.empty()) {
    return absl::InvalidArgumentError(StrCat(name_, ": empty command (no arguments)"));
  }
  KEEL_RETURN_IF_ERROR(Prepare(deadline));
  scratch_.clear();
  AppendRespCommand(argv, scratch_);
  if (redisAppendFormattedCommand(context_, scratch_.data(), scratch_.size()) != REDIS_OK) {
    return Fail(deadline, errno);
  }
  Track(internal::SessionEffectOf(argv));
  Reply reply;
  KEEL_RETURN_IF_ERROR(ReadReply(deadline, reply, 1));
  if (reply.is_error()) return ServerErrorToStatus(name_, reply.str());
  return reply;
}

absl::StatusOr<PipelineReplies> Connection::Run(Deadline deadline, const Pipeline& pipeline) {
  if (absl::Status valid = pipeline.Validate(); !valid.ok()) {
    return absl::InvalidArgumentError(StrCat(name_, ": ", valid.message()));
  }
  PipelineReplies replies;
  if (broken_) return absl::FailedPreconditionError(StrCat(name_, ": connection is broken"));
  if (pipeline.empty()) return replies;
  KEEL_RETURN_IF_ERROR(Prepare(deadline));
  const std::string& bytes = pipeline.encoded();
  if (redisAppendFormattedCommand(context_, bytes.data(), bytes.size()) != REDIS_OK) {
    return Fail(deadline, errno);
  }
  for (internal::SessionEffect effect : pipeline.session_effects()) Track(effect);
  replies.reserve(pipeline.size());
  for (size_t i = 0; i < pipeline.size(); ++i) {
    Reply reply;
    KEEL_RETURN_IF_ERROR(ReadReply(deadline, reply, pipeline.size() - i));
    if (reply.is_error()) {
      replies.emplace_back(ServerErrorToStatus(name_, reply.str()));
    } else {
      replies.emplace_back(std::move(reply));
    }
  }
  return replies;
}

absl::Status Connection::Send(Deadline deadline, std::span<const std::string_view> argv) {
  if (argv.empty()) {
    return absl::InvalidArgumentError(StrCat(name_, ": empty command (no arguments)"));
  }
  KEEL_RETURN_IF_ERROR(Prepare(deadline));
  scratch_.clear();
  AppendRespCommand(argv, scratch_);
  if (redisAppendFormattedCommand(context_, scratch_.data(), scratch_.size()) != REDIS_OK) {
    return Fail(deadline, errno);
  }
  Track(internal::SessionEffectOf(argv));
  // Nothing is read back here, so a write that cannot finish leaves the stream unknown to the
  // caller (who expects no reply): such a connection is broken, not late.
  int done = 0;
  while (!done) {
    if (redisBufferWrite(context_, &done) != REDIS_OK) return Fail(deadline, errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Reply>> Connection::Receive(Deadline deadline, int wake_fd) {
  if (broken_) return absl::FailedPreconditionError(StrCat(name_, ": connection is broken"));
  // Never poll(-1): an infinite deadline waits command_timeout, like every other call.
  if (deadline.IsInfinite()) deadline = Deadline::After(command_timeout_);
  while (true) {
    void* raw = nullptr;
    if (redisGetReplyFromReader(context_, &raw) != REDIS_OK) return Fail(deadline, errno);
    if (raw != nullptr) {
      ReplyPtr reply(raw);
      return std::optional<Reply>(internal::ConvertReply(static_cast<const redisReply*>(raw)));
    }
    const Duration left = deadline.Remaining();
    if (left <= Duration::zero()) return std::optional<Reply>();
    const int timeout_ms = static_cast<int>(std::min<int64_t>(
        duration_cast<milliseconds>(left + milliseconds(1) - std::chrono::nanoseconds(1)).count(),
        1 << 30));
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
