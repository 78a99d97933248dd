// Helpers shared by keel's fuzz targets: an invariant check that aborts (so libFuzzer records the
// input), and a test for whether any part of a secret survives into text built from its input.
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace keel::fuzz {

// Aborts with `what` when `ok` is false; libFuzzer saves the input as crash-<sha1>.
inline void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

// `s` printable, for diagnostics: bytes outside 0x20..0x7e as \xHH.
inline std::string Escaped(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

// Prints `label: value` (escaped) to stderr, to explain the Check that fails next.
inline void Show(const char* label, std::string_view value) {
  std::fprintf(stderr, "%s: %s\n", label, Escaped(value).c_str());
}

// Whether to let an input through that trips a finding already reported (docs/fuzzing.md,
// "Findings"), so a long run can look for new ones. KEEL_FUZZ_STRICT=1 turns the skips off:
// the inputs under fuzz/regressions/<target>/ then fail until the finding is fixed, and a fixed
// finding's skip is deleted.
inline bool SkipKnown(bool trips_finding) {
  static const bool strict = [] {
    const char* v = std::getenv("KEEL_FUZZ_STRICT");
    return v != nullptr && v[0] == '1';
  }();
  return trips_finding && !strict;
}

// Whether `out` holds a piece of the secret at [pos, pos + len) of `input`.
//
// `out` is text keel built from `input` (an error message quoting a part of it, a redacted copy).
// A piece of the secret found in `out` only proves a leak if `input` holds that piece nowhere
// else, so only pieces that occur once in `input` count. Pieces are windows of 1..4, 6, 8, 16
// bytes and the whole secret; windows holding '*' are skipped (the redaction marker is "***").
// On a leak, `leaked` is set to the piece.
inline bool Leaks(std::string_view input, size_t pos, size_t len, std::string_view out,
                  std::string_view* leaked = nullptr) {
  constexpr size_t kWidths[] = {1, 2, 3, 4, 6, 8, 16, 0};  // 0: the whole secret
  for (size_t width : kWidths) {
    if (width == 0) width = len;
    if (width == 0 || width > len) continue;
    for (size_t off = pos; off + width <= pos + len; ++off) {
      const std::string_view piece = input.substr(off, width);
      if (piece.find('*') != std::string_view::npos) continue;
      if (input.find(piece) != off || input.find(piece, off + 1) != std::string_view::npos) {
        continue;
      }
      if (out.find(piece) != std::string_view::npos) {
        if (leaked != nullptr) *leaked = piece;
        return true;
      }
    }
  }
  return false;
}

}  // namespace keel::fuzz
