#include "redis/sha1.h"

#include <openssl/sha.h>

namespace keel::redis::internal {

std::string Sha1Hex(std::string_view data) {
  // OpenSSL's one-shot SHA1() (libcrypto): a maintained implementation, and a script is hashed
  // only once, at construction.
  unsigned char digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(2 * SHA_DIGEST_LENGTH, '0');
  for (int i = 0; i < SHA_DIGEST_LENGTH; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 0xf];
  }
  return out;
}

}  // namespace keel::redis::internal
