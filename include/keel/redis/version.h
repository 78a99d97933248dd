// keel/redis/version.h: the hiredis version keel::redis was built with.
//
// Thread safety: pure function.
//
//   std::printf("keel %s, hiredis %s\n", keel::kVersion, keel::redis::HiredisVersion().c_str());
#pragma once

#include <string>

#include "keel/version.h"

namespace keel::redis {
// The hiredis version keel::redis was compiled against, "major.minor.patch".
std::string HiredisVersion();
}  // namespace keel::redis
