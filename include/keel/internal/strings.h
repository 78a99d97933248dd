// keel/internal/strings.h: string helpers for keel's own code. Not part of keel's API.
//
// Debian's Abseil 20220623 is built with its own absl::string_view, distinct from
// std::string_view, so absl::StrCat does not accept std::string_view. keel's public APIs take
// std::string_view; keel::internal::StrCat bridges the two.
//
// Thread safety: pure functions.
//
//   std::string msg = keel::internal::StrCat("pool \"", name_sv, "\": ", in_use, "/", max);
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace keel::internal {

inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view FromAbsl(absl::string_view s) {
  return std::string_view(s.data(), s.size());
}

template <typename T>
decltype(auto) StrCatArg(const T& v) {
  if constexpr (std::is_convertible_v<const T&, std::string_view> &&
                !std::is_same_v<T, absl::string_view>) {
    return ToAbsl(std::string_view(v));
  } else {
    return (v);
  }
}

// absl::StrCat that also takes std::string_view.
template <typename... Args>
std::string StrCat(const Args&... args) {
  return absl::StrCat(StrCatArg(args)...);
}

}  // namespace keel::internal
