// keel/postgres/version.h: the libpqxx version keel::postgres was built with.
//
// Thread safety: pure function.
//
//   std::printf("keel %s, libpqxx %s\n", keel::kVersion, keel::postgres::PqxxVersion().c_str());
#pragma once

#include <string>

#include "keel/version.h"

namespace keel::postgres {
// The libpqxx version keel::postgres was compiled against, "major.minor.patch".
std::string PqxxVersion();
}  // namespace keel::postgres
