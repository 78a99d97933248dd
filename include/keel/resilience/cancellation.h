// keel/resilience/cancellation.h: cooperative cancellation for work keel can no longer wait for.
//
// Defines `keel::CancellationSource` (the side that cancels) and `keel::CancellationToken` (the
// side that polls). C++ cannot stop a blocked thread: when a Timeout gives up on a call running on
// a ThreadPoolBulkhead, the call keeps running. Passing it a token lets it notice and stop early
// (between statements, before the next network round trip), which bounds the orphaned work.
//
// Thread safety: thread-safe. Tokens are cheap to copy (one shared_ptr).
//
//   keel::CancellationSource source;
//   pool.Submit([token = source.token()]() -> absl::StatusOr<int> {
//     for (int i = 0; i < 1000; ++i) {
//       if (token.cancelled()) return absl::CancelledError("report: cancelled");
//       DoChunk(i);
//     }
//     return 1000;
//   });
//   source.Cancel();   // e.g. the caller's deadline passed
#pragma once

#include <atomic>
#include <memory>

namespace keel {

class CancellationToken {
 public:
  // A token that is never cancelled.
  CancellationToken() = default;

  bool cancelled() const {
    // acquire pairs with Cancel()'s release: what the canceller wrote before cancelling is visible.
    return flag_ != nullptr && flag_->load(std::memory_order_acquire);
  }

 private:
  friend class CancellationSource;
  explicit CancellationToken(std::shared_ptr<const std::atomic<bool>> flag)
      : flag_(std::move(flag)) {}
  std::shared_ptr<const std::atomic<bool>> flag_;
};

class CancellationSource {
 public:
  CancellationSource() : flag_(std::make_shared<std::atomic<bool>>(false)) {}

  CancellationToken token() const { return CancellationToken(flag_); }
  // Idempotent.
  void Cancel() { flag_->store(true, std::memory_order_release); }
  bool cancelled() const { return flag_->load(std::memory_order_acquire); }

 private:
  std::shared_ptr<std::atomic<bool>> flag_;
};

}  // namespace keel
