// One Redis node's side of a lock: the acquire, extend and release scripts run on one Client,
// blocking or async, and what their replies mean. Shared by keel::redis::Lock (one node) and
// keel::redis::Redlock (each of its nodes). Private.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/deadline.h"
#include "keel/redis/client.h"

namespace keel::redis::internal {

// The keys of lock `name` (one hash tag) and the prefix of its errors.
struct LockKeys {
  std::string lock;    // {keel:lock:<name>}
  std::string fence;   // {keel:lock:<name>}:fence
  std::string prefix;  // `<type> "<name>": `
  int64_t ttl_ms = 0;
};
LockKeys MakeLockKeys(std::string_view type, std::string_view name, int64_t ttl_ms);

// SET NX PX + INCR: the fencing token (>= 1), or 0 when the lock is held by someone else.
// Errors: the client's; INTERNAL for a reply of another shape.
absl::StatusOr<int64_t> NodeAcquire(Client& client, Deadline deadline, const LockKeys& keys,
                                    std::string_view token);
Future<int64_t> AsyncNodeAcquire(Client& client, Deadline deadline, const LockKeys& keys,
                                 std::string_view token);

// Compare-and-pexpire / compare-and-delete: OK, ABORTED when `token` was not there, or the
// client's error.
absl::Status NodeExtend(Client& client, Deadline deadline, const LockKeys& keys,
                        std::string_view token);
Future<void> AsyncNodeExtend(Client& client, Deadline deadline, const LockKeys& keys,
                             std::string_view token);
absl::Status NodeRelease(Client& client, Deadline deadline, const LockKeys& keys,
                         std::string_view token);
Future<void> AsyncNodeRelease(Client& client, Deadline deadline, const LockKeys& keys,
                              std::string_view token);

}  // namespace keel::redis::internal
