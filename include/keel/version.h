// keel/version.h: the keel version.
//
// Thread safety: constants.
//
//   std::printf("keel %s\n", keel::kVersion);
//
// The versions of the client libraries keel::redis and keel::postgres were built with are in
// keel/redis/version.h and keel/postgres/version.h, so that keel::core names neither library.
#pragma once

namespace keel {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace keel
