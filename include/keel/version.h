// keel/version.h: the keel version and the versions of the client libraries it was built with.
//
// Thread safety: constants and pure functions.
//
//   std::printf("keel %s (hiredis %s, libpqxx %s)\n", keel::kVersion,
//               keel::redis::HiredisVersion().c_str(), keel::postgres::PqxxVersion().c_str());
#pragma once

#include <string>

namespace keel {
inline constexpr const char* kVersion = "0.1.0";
namespace redis {
// The hiredis version keel::redis was compiled against, "major.minor.patch".
std::string HiredisVersion();
}  // namespace redis
namespace postgres {
// The libpqxx version keel::postgres was compiled against.
std::string PqxxVersion();
}  // namespace postgres
}  // namespace keel
