// keel/internal/status_of.h: the Status inside an absl::Status or absl::StatusOr<T>, for templates
// that handle both. Not part of keel's API.
//
// Thread safety: pure functions.
//
//   template <typename R> void Record(const R& result) { Count(StatusOf(result).code()); }
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace keel::internal {

inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

}  // namespace keel::internal
