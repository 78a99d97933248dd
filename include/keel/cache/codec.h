// keel/cache/codec.h: how a cache value becomes bytes for a tier that stores bytes (Redis).
//
// Defines `keel::cache::Codec<T>`, the customization point a byte-storing tier uses: specialize
// it for your type (the diary example does it for JSON), or pass your own codec type to the tier.
// keel provides `Codec<std::string>`, which passes bytes through unchanged.
//
// A codec is a type with two static functions:
//   static std::string Encode(const T& value);
//   static absl::StatusOr<T> Decode(std::string_view bytes);
// Decode's errors (INVALID_ARGUMENT or INTERNAL, typically) make the tier report the entry as
// unreadable: the cache counts a tier error and loads the value again, overwriting it.
//
// Thread safety: codecs must be stateless (static functions, callable from any thread).
//
//   template <>
//   struct keel::cache::Codec<Profile> {
//     static std::string Encode(const Profile& p) { return p.SerializeAsString(); }
//     static absl::StatusOr<Profile> Decode(std::string_view bytes) {
//       Profile p;
//       if (!p.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
//         return absl::InvalidArgumentError("not a Profile");
//       return p;
//     }
//   };
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace keel::cache {

template <typename T>
struct Codec;  // specialize for T (see the banner)

// Bytes stored as given, any bytes.
template <>
struct Codec<std::string> {
  static std::string Encode(const std::string& value) { return value; }
  static absl::StatusOr<std::string> Decode(std::string_view bytes) { return std::string(bytes); }
};

}  // namespace keel::cache
