#include "lock_node.h"

#include <memory>
#include <utility>

#include "keel/internal/strings.h"
#include "keel/redis/script.h"
#include "lock_scripts.h"

namespace keel::redis::internal {
namespace {

using keel::internal::StrCat;

const Script& AcquireScript() {
  static const Script* s = new Script(kLockAcquireScript);
  return *s;
}
const Script& ExtendScript() {
  static const Script* s = new Script(kLockExtendScript);
  return *s;
}
const Script& ReleaseScript() {
  static const Script* s = new Script(kLockReleaseScript);
  return *s;
}

absl::StatusOr<int64_t> AcquireResult(std::string_view prefix, absl::StatusOr<Reply> reply) {
  if (!reply.ok()) return std::move(reply).status();
  if (!reply->is_integer() || reply->integer() < 0) {
    return absl::InternalError(
        StrCat(prefix, "unexpected acquire script reply ", reply->DebugString()));
  }
  return reply->integer();
}

// An extend or release reply: 1 when the token was there.
absl::Status CompareResult(std::string_view prefix, std::string_view what,
                           absl::StatusOr<Reply> reply) {
  if (!reply.ok()) return std::move(reply).status();
  if (reply->is_integer() && reply->integer() == 1) return absl::OkStatus();
  if (reply->is_integer() && reply->integer() == 0) {
    return absl::AbortedError(StrCat(prefix, what,
                                     ": the lease was gone (it ran out; the lock may have been "
                                     "taken by someone else since)"));
  }
  return absl::InternalError(
      StrCat(prefix, "unexpected ", what, " script reply ", reply->DebugString()));
}

Future<void> AsyncCompare(const Script& script, std::string_view what, Client& client,
                          Deadline deadline, const LockKeys& keys, std::string_view token) {
  const std::string ttl = StrCat(keys.ttl_ms);
  const std::string_view k[] = {keys.lock};
  const std::string_view a[] = {token, ttl};
  Promise<void> promise;
  Future<void> future = promise.future();
  // The prefix is copied: the answer may come after the lock is gone (a release that timed out).
  script.AsyncRunArgv(client, deadline, k, a,
                      [promise = std::move(promise), prefix = keys.prefix,
                       what](absl::StatusOr<Reply> reply) mutable {
                        promise.Set(CompareResult(prefix, what, std::move(reply)));
                      });
  return future;
}

}  // namespace

LockKeys MakeLockKeys(std::string_view type, std::string_view name, int64_t ttl_ms) {
  LockKeys keys;
  keys.lock = StrCat("{keel:lock:", name, "}");
  keys.fence = StrCat(keys.lock, ":fence");
  keys.prefix = StrCat(type, " \"", name, "\": ");
  keys.ttl_ms = ttl_ms;
  return keys;
}

absl::StatusOr<int64_t> NodeAcquire(Client& client, Deadline deadline, const LockKeys& keys,
                                    std::string_view token) {
  return AcquireResult(keys.prefix, AcquireScript().Run(client, deadline, {keys.lock, keys.fence},
                                                        {token, keys.ttl_ms}));
}

Future<int64_t> AsyncNodeAcquire(Client& client, Deadline deadline, const LockKeys& keys,
                                 std::string_view token) {
  const std::string ttl = StrCat(keys.ttl_ms);
  const std::string_view k[] = {keys.lock, keys.fence};
  const std::string_view a[] = {token, ttl};
  Promise<int64_t> promise;
  Future<int64_t> future = promise.future();
  AcquireScript().AsyncRunArgv(
      client, deadline, k, a,
      [promise = std::move(promise), prefix = keys.prefix](absl::StatusOr<Reply> reply) mutable {
        promise.Set(AcquireResult(prefix, std::move(reply)));
      });
  return future;
}

absl::Status NodeExtend(Client& client, Deadline deadline, const LockKeys& keys,
                        std::string_view token) {
  return CompareResult(keys.prefix, "extend",
                       ExtendScript().Run(client, deadline, {keys.lock}, {token, keys.ttl_ms}));
}

Future<void> AsyncNodeExtend(Client& client, Deadline deadline, const LockKeys& keys,
                             std::string_view token) {
  return AsyncCompare(ExtendScript(), "extend", client, deadline, keys, token);
}

absl::Status NodeRelease(Client& client, Deadline deadline, const LockKeys& keys,
                         std::string_view token) {
  return CompareResult(keys.prefix, "release",
                       ReleaseScript().Run(client, deadline, {keys.lock}, {token, keys.ttl_ms}));
}

Future<void> AsyncNodeRelease(Client& client, Deadline deadline, const LockKeys& keys,
                              std::string_view token) {
  return AsyncCompare(ReleaseScript(), "release", client, deadline, keys, token);
}

}  // namespace keel::redis::internal
