// SHA-1 from OpenSSL's libcrypto, only to name Lua scripts the way Redis does (EVALSHA takes the
// lowercase hex digest of the source). Not for anything security-related.
#pragma once

#include <string>
#include <string_view>

namespace keel::redis::internal {

// The 40-character lowercase hex SHA-1 digest of `data`.
std::string Sha1Hex(std::string_view data);

}  // namespace keel::redis::internal
