// Primary discovery through Redis Sentinel, for Client and Subscriber. Not part of keel's API.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "keel/deadline.h"
#include "keel/redis/connection.h"
#include "keel/redis/options.h"
#include "keel/sync.h"

namespace keel::redis::internal {

// Where the primary is. In direct mode always options.server; in Sentinel mode the address the
// sentinels report, cached until Forget() (called after connection errors and READONLY).
// Thread-safe; discovery I/O happens outside the lock.
class PrimaryLocator {
 public:
  explicit PrimaryLocator(const Options& options) : options_(options) {}

  // The primary's address: cached, or asked of each sentinel in turn.
  // Errors: UNAVAILABLE when no sentinel answers or none knows the master; DEADLINE_EXCEEDED.
  absl::StatusOr<Endpoint> Primary(Deadline deadline) ABSL_LOCKS_EXCLUDED(mu_);

  // Connects to the primary (AUTH/SELECT per options) and, in Sentinel mode, verifies with ROLE
  // that it is a primary; a server that is not makes Forget() happen and UNAVAILABLE return.
  absl::StatusOr<std::unique_ptr<Connection>> ConnectPrimary(Deadline deadline)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Drops the cached address so the next Primary() asks the sentinels again.
  void Forget() ABSL_LOCKS_EXCLUDED(mu_);

  uint64_t discoveries() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::StatusOr<Endpoint> AskSentinels(Deadline deadline) const;

  const Options& options_;
  mutable Mutex mu_;
  std::optional<Endpoint> cached_ ABSL_GUARDED_BY(mu_);
  uint64_t discoveries_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace keel::redis::internal
