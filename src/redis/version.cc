#include "keel/redis/version.h"

#include <hiredis/hiredis.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace keel::redis {

std::string HiredisVersion() {
  return absl::StrCat(HIREDIS_MAJOR, ".", HIREDIS_MINOR, ".", HIREDIS_PATCH);
}

}  // namespace keel::redis
