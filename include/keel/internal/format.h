// keel/internal/format.h: how keel prints values in its messages, one way everywhere. Not part of
// keel's API.
//
// Thread safety: pure functions.
//
//   FormatDuration(1500ms) -> "1.5s";  FormatDuration(250us) -> "250us"
#pragma once

#include <chrono>
#include <string>

namespace keel::internal {

// A duration as Abseil prints it ("1.5s", "250ms", "2m30s", "0"); Duration::max() prints "inf".
// Every keel error, log line and Decision that names a duration uses this.
std::string FormatDuration(std::chrono::nanoseconds d);

}  // namespace keel::internal
