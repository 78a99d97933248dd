#include "keel/redis/client.h"

#include <exception>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "redis/sentinel.h"
#include "redis/transport/call.h"
#include "redis/transport/mux_connection.h"

namespace keel::redis {
namespace {

using keel::internal::FormatDuration;
using keel::internal::StrCat;

constexpr std::string_view kMulti[] = {"MULTI"};
constexpr std::string_view kExec[] = {"EXEC"};
constexpr std::string_view kUnwatch[] = {"UNWATCH"};

}  // namespace

Client::Client(Options options, Clock& clock, Backoff backoff,
               std::optional<absl::BitGenRef> random)
    : options_(std::move(options)),
      name_(StrCat("redis \"", options_.pool.name, "\"")),
      clock_(clock),
      backoff_(backoff),
      own_random_(random ? std::nullopt : std::optional<absl::BitGen>(std::in_place)),
      random_(random ? *random : absl::BitGenRef(*own_random_)),
      locator_(std::make_unique<internal::PrimaryLocator>(options_)),
      delays_(backoff_.Start()),
      timeout_message_(StrCat(name_,
                              ": no reply within the deadline (the connection is kept; the late "
                              "reply will be discarded)")),
      timeout_message_inf_(StrCat(name_, ": no reply within command_timeout ",
                                  FormatDuration(options_.command_timeout),
                                  " (the connection is kept; the late reply will be discarded)")) {}

Client::~Client() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Client>> Client::Create(Options options, Clock& clock,
                                                       MetricsRegistry* metrics) {
  return CreateImpl(std::move(options), clock, metrics, std::nullopt);
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(Options options, Clock& clock,
                                                       MetricsRegistry* metrics,
                                                       absl::BitGenRef random) {
  return CreateImpl(std::move(options), clock, metrics, std::optional<absl::BitGenRef>(random));
}

absl::StatusOr<std::unique_ptr<Client>> Client::CreateImpl(Options options, Clock& clock,
                                                           MetricsRegistry* metrics,
                                                           std::optional<absl::BitGenRef> random) {
  KEEL_RETURN_IF_ERROR(options.Validate());
  // Multiplexed, the pool serves only transactions, Acquire() and blocking commands: it opens
  // connections when they are asked for, rather than keeping idle ones.
  if (options.transport == Transport::kMultiplexed && !options.pool.min_idle) {
    options.pool.min_idle = 0;
  }
  KEEL_ASSIGN_OR_RETURN(Backoff backoff,
                        Backoff::Create(options.reconnect_backoff, "redis.reconnect_backoff"));
  std::unique_ptr<Client> client(new Client(std::move(options), clock, backoff, random));
  Client* self = client.get();
  PoolHooks<Connection> hooks{
      .create = [self](Deadline deadline) { return self->Connect(deadline); },
      .validate = [self](Connection& conn,
                         Deadline deadline) { return self->Validate(conn, deadline); },
      .on_return = nullptr,
      .is_broken = [self](const Connection& conn) { return self->Unusable(conn); },
  };
  KEEL_ASSIGN_OR_RETURN(
      self->pool_, Pool<Connection>::Create(self->options_.pool, std::move(hooks), clock, metrics));
  if (self->options_.transport == Transport::kMultiplexed) {
    KEEL_RETURN_IF_ERROR(self->StartTransport());
  }
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(self->RegisterMetrics(*metrics));
  return client;
}

absl::Status Client::StartTransport() {
  if (options_.io_loop != nullptr) {
    loop_ = options_.io_loop;
  } else {
    KEEL_ASSIGN_OR_RETURN(loop_, IoLoop::Create({.name = options_.pool.name}));
  }
  if (loop_->stopped()) {
    return absl::FailedPreconditionError(
        StrCat(name_, ": io_loop \"", loop_->name(), "\" is stopped"));
  }
  const transport::MuxConnection::Options mux{
      .name = name_,
      .connect_timeout = options_.connect_timeout,
      .late_reply_timeout = options_.late_reply_timeout,
      .max_calls = options_.mux.max_queued_calls,
      .max_bytes = options_.mux.max_bytes_in_flight,
      .on_lost = options_.connection_hooks.on_lost,
  };
  for (int i = 0; i < options_.mux.connections; ++i) {
    // Connect applies the reconnect backoff and (Sentinel mode) finds the primary. Infinite:
    // Connection::Connect bounds the setup by connect_timeout and reports running out of it as
    // the server's UNAVAILABLE, which is what backs off.
    mux_.push_back(std::make_unique<transport::MuxConnection>(
        mux, loop_, [this](Deadline) { return Connect(Deadline::Infinite()); },
        [this] { return ConnectGate(); }));
  }
  return absl::OkStatus();
}

absl::Status Client::RegisterMetrics(MetricsRegistry& metrics) {
  struct Series {
    std::string_view name;
    std::string_view help;
    const std::atomic<uint64_t>* value;
  };
  const Series series[] = {
      {"keel_redis_client_connections_retired_total",
       "Connections discarded because a sibling's I/O error showed they were probably dead.",
       &retired_},
      {"keel_redis_client_connect_attempts_total", "Connection attempts made.", &connect_attempts_},
      {"keel_redis_client_connect_failures_total", "Connection attempts that failed.",
       &connect_failures_},
      {"keel_redis_client_connects_delayed_total",
       "Connection attempts not made because the reconnect backoff was running.",
       &connects_delayed_},
      {"keel_redis_client_late_replies_drained_total",
       "Replies of timed-out calls read and discarded before a connection was reused.",
       &late_drained_},
      {"keel_redis_client_late_connections_closed_total",
       "Connections closed because they still owed late replies after late_reply_timeout.",
       &late_closed_},
      {"keel_redis_client_dirty_connections_closed_total",
       "Leased connections closed because they came back in a changed session state.",
       &dirty_closed_},
      {"keel_redis_client_commands_refused_total",
       "Calls refused before any I/O (state commands, empty commands).", &refused_},
  };
  const Labels labels = {{"name", options_.pool.name}};
  for (const Series& s : series) {
    KEEL_ASSIGN_OR_RETURN(MetricsRegistry::Registration reg,
                          metrics.AddCounterCallback(s.name, s.help, labels, [value = s.value] {
                            return static_cast<double>(value->load(std::memory_order_relaxed));
                          }));
    registrations_.push_back(std::move(reg));
  }
  KEEL_ASSIGN_OR_RETURN(MetricsRegistry::Registration reg,
                        metrics.AddCounterCallback(
                            "keel_redis_client_primary_discoveries_total",
                            "Times the primary was (re)discovered through the sentinels.", labels,
                            [this] { return static_cast<double>(locator_->discoveries()); }));
  registrations_.push_back(std::move(reg));
  if (!multiplexed()) return absl::OkStatus();
  struct MuxSeries {
    std::string_view name;
    std::string_view help;
    bool gauge;
    uint64_t TransportStats::*field;
  };
  const MuxSeries mux_series[] = {
      {"keel_redis_client_mux_calls_total", "Calls submitted to a multiplexed connection.", false,
       &TransportStats::calls_total},
      {"keel_redis_client_mux_late_replies_discarded_total",
       "Replies of calls that had given up, read and discarded.", false,
       &TransportStats::late_replies_discarded_total},
      {"keel_redis_client_mux_rejected_full_total",
       "Calls refused because a multiplexed connection was full.", false,
       &TransportStats::rejected_full_total},
      {"keel_redis_client_mux_reconnects_total",
       "Multiplexed connections made after one was lost or closed.", false,
       &TransportStats::reconnects_total},
      {"keel_redis_client_mux_in_flight", "Calls queued or awaiting replies.", true,
       &TransportStats::in_flight},
      {"keel_redis_client_mux_queued_bytes", "Request bytes queued or awaiting replies.", true,
       &TransportStats::queued_bytes},
  };
  for (const MuxSeries& m : mux_series) {
    auto read = [this, field = m.field] { return static_cast<double>(MuxStats(nullptr).*field); };
    KEEL_ASSIGN_OR_RETURN(MetricsRegistry::Registration mux_reg,
                          m.gauge ? metrics.AddGaugeCallback(m.name, m.help, labels, read)
                                  : metrics.AddCounterCallback(m.name, m.help, labels, read));
    registrations_.push_back(std::move(mux_reg));
  }
  return absl::OkStatus();
}

absl::Status Client::ConnectGate() {
  MutexLock lock(connect_mu_);
  const TimePoint now = clock_.Now();
  if (now >= next_connect_) return absl::OkStatus();
  connects_delayed_.fetch_add(1, std::memory_order_relaxed);
  return absl::UnavailableError(StrCat(name_, ": not reconnecting for another ",
                                       FormatDuration(next_connect_ - now),
                                       " after a failed connect: ", last_connect_error_));
}

absl::StatusOr<std::unique_ptr<Connection>> Client::Connect(Deadline deadline) {
  if (absl::Status gate = ConnectGate(); !gate.ok()) return gate;
  // Stamp before connecting: a failure reported while we connect retires this one too, which
  // errs on the side of a fresh connection.
  const uint64_t generation = generation_.load(std::memory_order_relaxed);
  connect_attempts_.fetch_add(1, std::memory_order_relaxed);
  absl::StatusOr<std::unique_ptr<Connection>> conn = locator_->ConnectPrimary(deadline);
  if (conn.ok() && options_.connection_hooks.on_connect) {
    if (absl::Status hooked = RunConnectHook(**conn, deadline); !hooked.ok()) {
      conn = std::move(hooked);
    }
  }
  MutexLock lock(connect_mu_);
  if (conn.ok()) {
    delays_ = backoff_.Start();
    next_connect_ = TimePoint::min();
    (*conn)->set_generation(generation);
    return conn;
  }
  connect_failures_.fetch_add(1, std::memory_order_relaxed);
  // Only a failure of the server or the network backs off; a caller's short deadline says
  // nothing about the server.
  if (conn.status().code() == absl::StatusCode::kUnavailable) {
    next_connect_ = clock_.Now() + delays_.Next(random_);
    last_connect_error_ = std::string(conn.status().message());
  }
  return conn;
}

absl::Status Client::RunConnectHook(Connection& conn, Deadline deadline) {
  const Deadline bounded =
      Deadline::Min(deadline, Deadline::After(options_.connect_timeout, clock_));
  absl::Status status;
  try {
    status = options_.connection_hooks.on_connect(conn, bounded);
  } catch (const std::exception& e) {
    status = absl::InternalError(StrCat("threw: ", e.what()));
  } catch (...) {
    status = absl::InternalError("threw a non-standard exception");
  }
  if (status.ok()) {
    conn.MarkSessionConfigured();
    return status;
  }
  // As a failed setup step: the connection cannot be used, whatever the hook's own code was.
  return absl::UnavailableError(StrCat(name_, ": connection_hooks.on_connect failed on ",
                                       conn.endpoint().ToString(), ": ",
                                       keel::internal::FromAbsl(status.message())));
}

void Client::Reconnect(std::string_view why) {
  // Pooled connections made so far are retired as they come back (or are next handed out)...
  generation_.fetch_add(1, std::memory_order_relaxed);
  // ...and the multiplexed ones are closed now: their calls fail with UNAVAILABLE.
  for (const auto& mux : mux_) mux->Reconnect(std::string(why));
}

absl::Status Client::Validate(Connection& conn, Deadline deadline) const {
  if (conn.broken()) return absl::UnavailableError(StrCat(name_, ": connection is broken"));
  absl::Status status = conn.Command(deadline, "PING").status();
  // A PING that is merely late (the server is paused or slow) leaves a late reply, not a dead
  // connection: a new connection would wait just as long, so keep it unless it has been behind
  // for longer than late_reply_timeout.
  if (!status.ok() && !conn.broken() && conn.late_replies() > 0 && !LateTooLong(conn)) {
    return absl::OkStatus();
  }
  return status;
}

bool Client::LateTooLong(const Connection& conn) const {
  return conn.late_replies() > 0 && clock_.Now() - conn.late_since() >= options_.late_reply_timeout;
}

bool Client::Unusable(const Connection& conn) {
  if (conn.broken()) return true;
  if (!conn.session_clean()) {
    dirty_closed_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  if (LateTooLong(conn)) {
    late_closed_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

absl::StatusOr<Timer*> Client::SharedTimer() {
  MutexLock lock(timer_mu_);
  if (timer_ == nullptr) {
    KEEL_ASSIGN_OR_RETURN(timer_, Timer::Create({.name = options_.pool.name}, clock_));
  }
  return timer_.get();
}

void Client::Shutdown() {
  // Each connection fails its calls and fences itself off the loop; a loop of the client's own
  // then ends with it, a shared one goes on serving its other clients.
  for (const auto& mux : mux_) mux->Shutdown();
  if (loop_ && loop_ != options_.io_loop) loop_->Stop();
  if (pool_) pool_->Shutdown();
}

Deadline Client::Effective(Deadline deadline) const {
  if (!deadline.IsInfinite()) return deadline;
  return Deadline::After(options_.command_timeout, clock_);
}

bool Client::OnIoThread() const { return loop_ != nullptr && loop_->InLoop(); }

absl::Status Client::BlockingRefused() {
  return Refuse(absl::FailedPreconditionError(
      StrCat(name_,
             ": a blocking call on the client's I/O thread (in a future's callback or a coroutine "
             "resumed there) would stall every call of the client: use the Async form, or resume "
             "on another executor")));
}

absl::StatusOr<Lease<Connection>> Client::AcquireFresh(Deadline deadline) {
  if (OnIoThread()) return BlockingRefused();
  while (true) {
    KEEL_ASSIGN_OR_RETURN(Lease<Connection> lease, pool_->Acquire(deadline));
    if (lease->generation() >= generation_.load(std::memory_order_relaxed)) return lease;
    retired_.fetch_add(1, std::memory_order_relaxed);
    lease.Invalidate();
  }
}

absl::StatusOr<Lease<Connection>> Client::Acquire(Deadline deadline) {
  return AcquireFresh(Effective(deadline));
}

absl::Status Client::Refuse(absl::Status status) {
  refused_.fetch_add(1, std::memory_order_relaxed);
  return status;
}

void Client::AfterCall(Lease<Connection>& lease, const absl::Status& status) {
  if (const uint64_t drained = lease->TakeDrainedCount(); drained > 0) {
    late_drained_.fetch_add(drained, std::memory_order_relaxed);
  }
  if (status.ok()) return;
  const bool lost = lease->broken() && status.code() == absl::StatusCode::kUnavailable;
  const bool demoted = IsServerError(status, "READONLY");
  if (lost || demoted) {
    // Every connection opened up to now goes: the next calls get new ones (to the new primary).
    generation_.fetch_add(1, std::memory_order_relaxed);
    locator_->Forget();
  }
  if (lease->broken() || demoted) lease.Invalidate();
}

absl::StatusOr<Reply> Client::CommandArgv(Deadline deadline,
                                          std::span<const std::string_view> argv) {
  if (absl::Status ok = internal::CheckPooledCommand(name_, argv); !ok.ok()) {
    return Refuse(std::move(ok));
  }
  const bool infinite = deadline.IsInfinite();
  deadline = Effective(deadline);
  if (multiplexed() && !internal::IsBlockingCommand(argv)) {
    thread_local std::string request;
    request.clear();
    AppendRespCommand(argv, request);
    return CommandResult(RunMux(deadline, request, 1), infinite);
  }
  KEEL_ASSIGN_OR_RETURN(Lease<Connection> lease, AcquireFresh(deadline));
  absl::StatusOr<Reply> reply = lease->CommandArgv(deadline, argv);
  AfterCall(lease, reply.status());
  return reply;
}

absl::StatusOr<Reply> Client::CommandResult(transport::CallResult&& result, bool infinite) {
  if (!result.status.ok()) {
    if (infinite && result.status.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(timeout_message_inf_);
    }
    return std::move(result.status);
  }
  Reply& reply = result.replies.front();
  if (!reply.is_error()) return std::move(reply);
  Demoted(reply.str());
  return ServerErrorToStatus(name_, reply.str());
}

absl::StatusOr<PipelineReplies> Client::RunResult(transport::CallResult&& result, bool infinite) {
  if (!result.status.ok()) {
    if (infinite && result.status.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(timeout_message_inf_);
    }
    return std::move(result.status);
  }
  PipelineReplies replies;
  replies.reserve(result.replies.size());
  bool demoted = false;
  for (Reply& r : result.replies) {
    if (r.is_error()) {
      if (!demoted && r.str().rfind("READONLY", 0) == 0) {
        demoted = true;
        Demoted(r.str());
      }
      replies.emplace_back(ServerErrorToStatus(name_, r.str()));
    } else {
      replies.emplace_back(std::move(r));
    }
  }
  return replies;
}

void Client::SubmitAsync(Deadline deadline, std::string_view request, uint32_t expected,
                         absl::AnyInvocable<void(transport::CallResult&&)> done) {
  if (deadline.Expired()) {
    done(transport::CallResult{
        .status = absl::DeadlineExceededError(StrCat(name_, ": deadline passed before sending")),
        .replies = {}});
    return;
  }
  auto call = std::make_shared<transport::Call>(expected, deadline, std::move(done));
  const uint32_t pick = mux_.size() == 1 ? 0
                                         : next_mux_.fetch_add(1, std::memory_order_relaxed) %
                                               static_cast<uint32_t>(mux_.size());
  mux_[pick]->Submit(std::move(call), request);
}

absl::Status Client::PrepareAsyncCommand(Deadline& deadline, std::span<const std::string_view> argv,
                                         std::string& request, bool& infinite) {
  if (absl::Status ok = internal::CheckPooledCommand(name_, argv); !ok.ok()) {
    return Refuse(std::move(ok));
  }
  if (absl::Status ok = AsyncAllowed(internal::IsBlockingCommand(argv), argv.front()); !ok.ok()) {
    return Refuse(std::move(ok));
  }
  infinite = deadline.IsInfinite();
  deadline = Effective(deadline);
  AppendRespCommand(argv, request);
  return absl::OkStatus();
}

Future<Reply> Client::AsyncCommandArgv(Deadline deadline, std::span<const std::string_view> argv) {
  std::string request;
  bool infinite = false;
  if (absl::Status ok = PrepareAsyncCommand(deadline, argv, request, infinite); !ok.ok()) {
    return Future<Reply>::Ready(std::move(ok));
  }
  // The call owns the promise: nothing shared, one allocation fewer per call.
  Promise<Reply> promise(clock_);
  Future<Reply> future = promise.future();
  SubmitAsync(deadline, request, 1,
              [this, promise = std::move(promise), infinite](transport::CallResult&& r) mutable {
                promise.Set(CommandResult(std::move(r), infinite));
              });
  return future;
}

void Client::AsyncCommandArgv(Deadline deadline, std::span<const std::string_view> argv,
                              ReplyCallback done) {
  std::string request;
  bool infinite = false;
  if (absl::Status ok = PrepareAsyncCommand(deadline, argv, request, infinite); !ok.ok()) {
    done(std::move(ok));
    return;
  }
  SubmitAsync(deadline, request, 1,
              [this, done = std::move(done), infinite](transport::CallResult&& r) mutable {
                done(CommandResult(std::move(r), infinite));
              });
}

Future<PipelineReplies> Client::AsyncRun(Deadline deadline, const Pipeline& pipeline) {
  if (absl::Status ok = pipeline.Validate(); !ok.ok()) {
    return Future<PipelineReplies>::Ready(
        Refuse(absl::InvalidArgumentError(StrCat(name_, ": ", ok.message()))));
  }
  if (absl::Status ok = pipeline.CheckPooled(name_); !ok.ok()) {
    return Future<PipelineReplies>::Ready(Refuse(std::move(ok)));
  }
  if (absl::Status ok = AsyncAllowed(pipeline.has_blocking(), "a blocking command"); !ok.ok()) {
    return Future<PipelineReplies>::Ready(Refuse(std::move(ok)));
  }
  if (pipeline.empty()) return Future<PipelineReplies>::Ready(PipelineReplies());
  const bool infinite = deadline.IsInfinite();
  deadline = Effective(deadline);
  Promise<PipelineReplies> promise(clock_);
  Future<PipelineReplies> future = promise.future();
  SubmitAsync(deadline, pipeline.encoded(), static_cast<uint32_t>(pipeline.size()),
              [this, promise = std::move(promise), infinite](transport::CallResult&& r) mutable {
                promise.Set(RunResult(std::move(r), infinite));
              });
  return future;
}

absl::Status Client::AsyncAllowed(bool blocking, std::string_view what) const {
  if (!multiplexed()) {
    return absl::FailedPreconditionError(
        StrCat(name_,
               ": async calls run on the multiplexed transport; this client uses "
               "Transport::kPooled"));
  }
  if (blocking) {
    return absl::InvalidArgumentError(
        StrCat(name_, ": ", what,
               " blocks its connection and cannot share one: run it with Command or Run"));
  }
  return absl::OkStatus();
}

transport::CallResult Client::RunMux(Deadline deadline, std::string_view request,
                                     uint32_t expected) {
  if (OnIoThread()) return transport::CallResult{.status = BlockingRefused(), .replies = {}};
  if (deadline.Expired()) {
    return transport::CallResult{
        .status = absl::DeadlineExceededError(StrCat(name_, ": deadline passed before sending")),
        .replies = {}};
  }
  auto call = std::make_shared<transport::Call>(expected, deadline);
  const uint32_t pick = mux_.size() == 1 ? 0
                                         : next_mux_.fetch_add(1, std::memory_order_relaxed) %
                                               static_cast<uint32_t>(mux_.size());
  return mux_[pick]->Run(std::move(call), request, timeout_message_);
}

void Client::Demoted(std::string_view error) {
  if (error.rfind("READONLY", 0) != 0) return;
  // The primary became a replica (failover): find the new one and move every connection there.
  generation_.fetch_add(1, std::memory_order_relaxed);
  locator_->Forget();
  // Only the sentinels can name another server; a fixed address would reconnect to the same
  // replica, and closing the connection would fail the reads in flight on it for nothing.
  if (!options_.sentinel_mode()) return;
  for (const auto& mux : mux_) mux->Reconnect("the server is no longer the primary (READONLY)");
}

absl::StatusOr<PipelineReplies> Client::Run(Deadline deadline, const Pipeline& pipeline) {
  if (absl::Status ok = pipeline.Validate(); !ok.ok()) {
    return Refuse(absl::InvalidArgumentError(StrCat(name_, ": ", ok.message())));
  }
  if (absl::Status ok = pipeline.CheckPooled(name_); !ok.ok()) return Refuse(std::move(ok));
  if (pipeline.empty()) return PipelineReplies();
  const bool infinite = deadline.IsInfinite();
  deadline = Effective(deadline);
  if (multiplexed() && !pipeline.has_blocking()) {
    return RunResult(RunMux(deadline, pipeline.encoded(), static_cast<uint32_t>(pipeline.size())),
                     infinite);
  }
  KEEL_ASSIGN_OR_RETURN(Lease<Connection> lease, AcquireFresh(deadline));
  absl::StatusOr<PipelineReplies> replies = lease->Run(deadline, pipeline);
  if (!replies.ok()) {
    AfterCall(lease, replies.status());
  } else {
    absl::Status first_readonly;
    for (const auto& r : *replies) {
      if (!r.ok() && IsServerError(r.status(), "READONLY")) {
        first_readonly = r.status();
        break;
      }
    }
    AfterCall(lease, first_readonly);
  }
  return replies;
}

absl::StatusOr<PipelineReplies> Client::RunTransaction(Lease<Connection>& lease, Deadline deadline,
                                                       const Pipeline& commands) {
  Pipeline wrapped;
  wrapped.AddArgv(kMulti).Append(commands).AddArgv(kExec);
  absl::StatusOr<PipelineReplies> replies = lease->Run(deadline, wrapped);
  if (!replies.ok()) {
    AfterCall(lease, replies.status());
    return replies;
  }
  // MULTI's +OK, one +QUEUED (or a queueing error) per command, then EXEC's array.
  absl::StatusOr<Reply>& exec_reply = replies->back();
  if (!exec_reply.ok()) {
    AfterCall(lease, exec_reply.status());
    if (exec_reply.status().code() == absl::StatusCode::kAborted) {
      // EXECABORT: say which command was refused while queueing.
      for (size_t i = 1; i + 1 < replies->size(); ++i) {
        if (!(*replies)[i].ok()) {
          return absl::AbortedError(StrCat(name_, ": transaction discarded, command #", i - 1,
                                           " was refused: ", (*replies)[i].status().message()));
        }
      }
    }
    return exec_reply.status();
  }
  if (exec_reply->is_nil()) {
    return absl::AbortedError(
        StrCat(name_, ": transaction aborted: a watched key changed (nothing ran)"));
  }
  if (!exec_reply->is_array() || exec_reply->elements().size() != commands.size()) {
    return absl::InternalError(
        StrCat(name_, ": unexpected EXEC reply ", exec_reply->DebugString()));
  }
  PipelineReplies results;
  results.reserve(commands.size());
  for (const Reply& r : exec_reply->elements()) {
    if (r.is_error()) {
      results.emplace_back(ServerErrorToStatus(name_, r.str()));
    } else {
      results.emplace_back(r);
    }
  }
  return results;
}

absl::StatusOr<PipelineReplies> Client::Transaction(Deadline deadline, const Pipeline& commands) {
  if (absl::Status ok = commands.Validate(); !ok.ok()) {
    return Refuse(absl::InvalidArgumentError(StrCat(name_, ": ", ok.message())));
  }
  if (absl::Status ok = commands.CheckPooled(name_); !ok.ok()) return Refuse(std::move(ok));
  if (commands.empty()) return PipelineReplies();
  deadline = Effective(deadline);
  KEEL_ASSIGN_OR_RETURN(Lease<Connection> lease, AcquireFresh(deadline));
  return RunTransaction(lease, deadline, commands);
}

absl::StatusOr<PipelineReplies> Client::Transaction(
    Deadline deadline, std::span<const std::string_view> watch,
    const std::function<absl::StatusOr<Pipeline>(const TransactionReader& read)>& prepare) {
  if (watch.empty()) {
    return Refuse(absl::InvalidArgumentError(StrCat(name_, ": Transaction needs keys to watch")));
  }
  deadline = Effective(deadline);
  KEEL_ASSIGN_OR_RETURN(Lease<Connection> lease, AcquireFresh(deadline));
  std::vector<std::string_view> argv;
  argv.reserve(watch.size() + 1);
  argv.push_back("WATCH");
  argv.insert(argv.end(), watch.begin(), watch.end());
  if (absl::StatusOr<Reply> watched = lease->CommandArgv(deadline, argv); !watched.ok()) {
    AfterCall(lease, watched.status());
    return watched.status();
  }
  const TransactionReader read(
      [&](std::span<const std::string_view> command) -> absl::StatusOr<Reply> {
        if (absl::Status ok = internal::CheckPooledCommand(name_, command); !ok.ok()) {
          return Refuse(std::move(ok));
        }
        if (!lease) return absl::UnavailableError(StrCat(name_, ": connection lost"));
        absl::StatusOr<Reply> reply = lease->CommandArgv(deadline, command);
        AfterCall(lease, reply.status());
        return reply;
      });
  absl::StatusOr<Pipeline> commands = absl::InternalError("unset");
  try {
    commands = prepare(read);
  } catch (const std::exception& e) {
    commands = absl::InternalError(StrCat(name_, ": Transaction's prepare threw: ", e.what()));
  } catch (...) {
    commands = absl::InternalError(StrCat(name_, ": Transaction's prepare threw"));
  }
  // From here on the WATCH must end on this connection before it goes back: UNWATCH on every
  // early return (the pool closes it if even that fails).
  auto unwatch = [&] {
    if (lease) AfterCall(lease, lease->CommandArgv(deadline, kUnwatch).status());
  };
  if (!lease) {
    return commands.ok() ? absl::UnavailableError(StrCat(name_, ": connection lost"))
                         : commands.status();
  }
  if (!commands.ok()) {
    unwatch();
    return commands.status();
  }
  absl::Status valid = commands->Validate();
  if (valid.ok()) valid = commands->CheckPooled(name_);
  if (!valid.ok()) {
    unwatch();
    return Refuse(absl::InvalidArgumentError(StrCat(name_, ": ", valid.message())));
  }
  if (commands->empty()) {
    unwatch();
    return PipelineReplies();
  }
  return RunTransaction(lease, deadline, *commands);
}

TransportStats Client::MuxStats(uint64_t* late_closed) const {
  TransportStats total;
  for (const auto& mux : mux_) {
    const transport::MuxStats s = mux->Stats();
    total.calls_total += s.calls_total;
    total.late_replies_discarded_total += s.late_replies_discarded_total;
    total.rejected_full_total += s.rejected_full_total;
    total.reconnects_total += s.reconnects_total;
    total.direct_calls_total += s.direct_calls_total;
    total.in_flight += s.in_flight;
    total.queued_bytes += s.queued_bytes;
    if (late_closed != nullptr) *late_closed += s.late_connections_closed_total;
  }
  return total;
}

ClientStats Client::Stats() const {
  uint64_t mux_late_closed = 0;
  TransportStats transport = MuxStats(&mux_late_closed);
  return ClientStats{
      .pool = pool_->Stats(),
      .transport = transport,
      .connections_retired_total = retired_.load(std::memory_order_relaxed),
      .primary_discoveries_total = locator_->discoveries(),
      .connect_attempts_total = connect_attempts_.load(std::memory_order_relaxed),
      .connect_failures_total = connect_failures_.load(std::memory_order_relaxed),
      .connects_delayed_total = connects_delayed_.load(std::memory_order_relaxed),
      .late_replies_drained_total = late_drained_.load(std::memory_order_relaxed),
      .late_connections_closed_total =
          late_closed_.load(std::memory_order_relaxed) + mux_late_closed,
      .dirty_connections_closed_total = dirty_closed_.load(std::memory_order_relaxed),
      .commands_refused_total = refused_.load(std::memory_order_relaxed),
  };
}

}  // namespace keel::redis
