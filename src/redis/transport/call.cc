#include "redis/transport/call.h"

#include <exception>
#include <string>
#include <utility>

namespace keel::redis::transport {

bool Call::TryComplete(CallResult&& result) {
  if (!Claim()) return false;
  Finish(std::move(result));
  return true;
}

bool Call::TryFail(absl::StatusCode code, std::string_view message) {
  if (!Claim()) return false;
  Finish(CallResult{.status = absl::Status(code, std::string(message)), .replies = {}});
  return true;
}

void Call::Finish(CallResult&& result) {
  if (callback_) {
    // User code cannot wedge keel: a throwing callback is dropped here (the transport counts
    // nothing for it; the only callbacks today are keel's own).
    try {
      callback_(std::move(result));
    } catch (...) {
    }
    return;
  }
  {
    MutexLock lock(mu_);
    result_ = std::move(result);
    done_ = true;
  }
  cv_.SignalAll();
}

CallResult Call::Wait(std::string_view timeout_message) {
  MutexLock lock(mu_);
  const bool completed = deadline_.clock().WaitUntil(mu_, cv_, deadline_.time(), [&] {
    mu_.AssertHeld();
    return done_;
  });
  if (!completed && Claim()) {
    return CallResult{.status = absl::DeadlineExceededError(std::string(timeout_message)),
                      .replies = {}};
  }
  // Completed, or claimed by another party an instant before the deadline: its Finish is
  // running and does not block, so this wait is short.
  while (!done_) cv_.Wait(mu_);
  return std::move(result_);
}

}  // namespace keel::redis::transport
