// Private to keel::redis: the completion of one multiplexed call. Not part of keel's API.
//
// A Call is shared (std::shared_ptr) by the caller and the transport: the caller may leave at its
// deadline while the I/O thread still holds the call's slot in the reply matcher. Exactly one
// party completes it, chosen by an atomic claim:
//
//   - the reply matcher, when every reply of the call has been read (on the I/O thread);
//   - the blocking caller itself, at its deadline (Wait), or the I/O thread's deadline heap for a
//     callback call: DEADLINE_EXCEEDED; the slot stays in the matcher, whose replies are then
//     read and discarded;
//   - the transport on a connection error, backpressure or shutdown.
//
// The result is moved to its one reader (the waiter or the callback), never copied: an
// absl::Status copied across threads reads as a race under TSan.
//
// A future or awaitable can sit on the callback later: it runs on the completing thread (usually
// the I/O thread) and must never block.
//
// Thread safety: thread-safe as described; the result is read once.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/redis/reply.h"
#include "keel/sync.h"

namespace keel::redis::transport {

// What a call yields: OK with one reply per command (server error replies are Reply values of
// type kError here; the client maps them), or why the call failed.
// Inline for one reply: a command (the common call) allocates no vector for its result.
using CallReplies = absl::InlinedVector<Reply, 1>;
struct CallResult {
  absl::Status status;
  CallReplies replies;
};

class Call {
 public:
  // Runs on the completing thread with the result; must not block and must not throw.
  // Move-only: it may own what it completes (a Promise).
  using Callback = absl::AnyInvocable<void(CallResult&&)>;

  // A call of `expected` replies (1 for a command, k for a pipeline of k commands) that gives up
  // at `deadline`. Without `callback` the result is collected with Wait().
  Call(uint32_t expected, Deadline deadline, Callback callback = nullptr)
      : expected_(expected), deadline_(deadline), callback_(std::move(callback)) {}
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  uint32_t expected() const { return expected_; }
  bool has_callback() const { return callback_ != nullptr; }
  // Bytes of the call's request, for the transport's bytes-in-flight cap, and when a callback
  // call expires on the steady clock (TimePoint::max() for none). Set by the transport before it
  // publishes the call to another thread; read-only afterwards.
  size_t request_bytes = 0;
  TimePoint expires_at = TimePoint::max();
  const Deadline& deadline() const { return deadline_; }

  // True once some party claimed the completion (finished or finishing). The matcher skips
  // decoding the replies of a claimed call. Acquire pairs with Claim's release-on-success.
  bool claimed() const { return state_.load(std::memory_order_acquire) != kPending; }

  // Completes the call with `result` if nobody claimed it first; false (and `result` dropped)
  // otherwise. Runs the callback, or wakes the waiter.
  bool TryComplete(CallResult&& result);
  // As TryComplete with a fresh Status(code, message): what a party failing many calls uses, so
  // that no two calls share one Status representation.
  bool TryFail(absl::StatusCode code, std::string_view message);

  // Blocks until the call completes or its deadline passes; at the deadline the caller claims
  // the call itself and gets DEADLINE_EXCEEDED with `timeout_message` (its late replies are then
  // discarded by the matcher). REQUIRES: no callback; called once.
  CallResult Wait(std::string_view timeout_message) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  enum : uint8_t { kPending, kClaimed };
  bool Claim() {
    uint8_t expected = kPending;
    return state_.compare_exchange_strong(expected, kClaimed, std::memory_order_acq_rel,
                                          std::memory_order_acquire);
  }
  void Finish(CallResult&& result) ABSL_LOCKS_EXCLUDED(mu_);

  const uint32_t expected_;
  const Deadline deadline_;
  Callback callback_;  // run once, by the party that claimed the call
  std::atomic<uint8_t> state_{kPending};

  Mutex mu_;
  CondVar cv_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  CallResult result_ ABSL_GUARDED_BY(mu_);
};

}  // namespace keel::redis::transport
