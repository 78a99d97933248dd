// Shared by the fuzz targets that feed arbitrary bytes to hiredis's redisReader.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace keel::fuzz {

// hiredis 0.14 allocates an array's element vector from the declared count before any element
// arrives, and trusts negative counts other than -1: a 13-byte reply can ask for gigabytes.
// That is hiredis's (a server keel connects to is trusted), so such inputs are skipped.
inline bool DeclaresHugeSize(std::string_view data) {
  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i] != '*' && data[i] != '$') continue;
    size_t j = i + 1;
    const bool negative = j < data.size() && data[j] == '-';
    if (negative) ++j;
    uint64_t value = 0;
    size_t digits = 0;
    for (; j < data.size() && data[j] >= '0' && data[j] <= '9' && digits < 19; ++j, ++digits) {
      value = value * 10 + static_cast<uint64_t>(data[j] - '0');
    }
    if (negative && digits > 0 && value != 1) return true;
    if (!negative && value > (1u << 20)) return true;
  }
  return false;
}

}  // namespace keel::fuzz
