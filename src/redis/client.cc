#include "keel/redis/client.h"

#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "redis/sentinel.h"

namespace keel::redis {

Client::Client(Options options, Clock& clock)
    : options_(std::move(options)),
      clock_(clock),
      locator_(std::make_unique<internal::PrimaryLocator>(options_)) {}

Client::~Client() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Client>> Client::Create(Options options, Clock& clock,
                                                       MetricsRegistry* metrics) {
  KEEL_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<Client> client(new Client(std::move(options), clock));
  Client* self = client.get();
  PoolHooks<Connection> hooks{
      .create = [self](Deadline deadline) -> absl::StatusOr<std::unique_ptr<Connection>> {
        // Stamp before connecting: a failure reported while we connect retires this one too,
        // which errs on the side of a fresh connection.
        const uint64_t generation = self->generation_.load(std::memory_order_relaxed);
        KEEL_ASSIGN_OR_RETURN(auto conn, self->locator_->ConnectPrimary(deadline));
        conn->set_generation(generation);
        return conn;
      },
      .validate = [](Connection& conn, Deadline deadline) -> absl::Status {
        if (conn.broken()) return absl::UnavailableError("broken");
        return conn.Command(deadline, "PING").status();
      },
  };
  KEEL_ASSIGN_OR_RETURN(
      self->pool_, Pool<Connection>::Create(self->options_.pool, std::move(hooks), clock, metrics));
  return client;
}

void Client::Shutdown() {
  if (pool_) pool_->Shutdown();
}

Deadline Client::Effective(Deadline deadline) const {
  if (!deadline.IsInfinite()) return deadline;
  return Deadline::After(options_.command_timeout, clock_);
}

absl::StatusOr<Lease<Connection>> Client::AcquireFresh(Deadline deadline) {
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

void Client::AfterCall(Lease<Connection>& lease, const absl::Status& status) {
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
  deadline = Effective(deadline);
  KEEL_ASSIGN_OR_RETURN(Lease<Connection> lease, AcquireFresh(deadline));
  absl::StatusOr<Reply> reply = lease->CommandArgv(deadline, argv);
  AfterCall(lease, reply.status());
  return reply;
}

absl::StatusOr<PipelineReplies> Client::Run(Deadline deadline, const Pipeline& pipeline) {
  deadline = Effective(deadline);
  KEEL_ASSIGN_OR_RETURN(Lease<Connection> lease, AcquireFresh(deadline));
  absl::StatusOr<PipelineReplies> replies = lease->Run(deadline, pipeline);
  if (!replies.ok()) {
    AfterCall(lease, replies.status());
  } else {
    for (const auto& r : *replies) {
      if (!r.ok() && IsServerError(r.status(), "READONLY")) {
        AfterCall(lease, r.status());
        break;
      }
    }
  }
  return replies;
}

ClientStats Client::Stats() const {
  return ClientStats{
      .pool = pool_->Stats(),
      .connections_retired_total = retired_.load(std::memory_order_relaxed),
      .primary_discoveries_total = locator_->discoveries(),
  };
}

}  // namespace keel::redis
