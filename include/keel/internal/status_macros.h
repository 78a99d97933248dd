// keel/internal/status_macros.h: early-return helpers for absl::Status and absl::StatusOr.
//
// Abseil 20220623 ships no public RETURN_IF_ERROR / ASSIGN_OR_RETURN; keel uses these inside its
// own code. They are not part of keel's API and may change.
//
// Thread safety: macros, no state.
//
//   absl::StatusOr<int> Parse(absl::string_view s);
//   absl::Status Use(absl::string_view s) {
//     KEEL_ASSIGN_OR_RETURN(int n, Parse(s));
//     KEEL_RETURN_IF_ERROR(Check(n));
//     return absl::OkStatus();
//   }
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KEEL_INTERNAL_CONCAT_INNER(a, b) a##b
#define KEEL_INTERNAL_CONCAT(a, b) KEEL_INTERNAL_CONCAT_INNER(a, b)

// Evaluates `expr` (an absl::Status) once and returns it from the enclosing function if not OK.
#define KEEL_RETURN_IF_ERROR(expr)                               \
  do {                                                           \
    ::absl::Status keel_internal_status = (expr);                \
    if (!keel_internal_status.ok()) return keel_internal_status; \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>) once; returns its status if not OK, otherwise moves
// the value into `lhs` (a declaration such as `auto x` or an existing lvalue).
#define KEEL_ASSIGN_OR_RETURN(lhs, rexpr) \
  KEEL_INTERNAL_ASSIGN_OR_RETURN(KEEL_INTERNAL_CONCAT(keel_internal_or_, __LINE__), lhs, rexpr)

#define KEEL_INTERNAL_ASSIGN_OR_RETURN(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                   \
  if (!tmp.ok()) return std::move(tmp).status();        \
  lhs = std::move(tmp).value()
