#include "keel/redis/command.h"

#include <cassert>

#include "absl/strings/str_cat.h"

namespace keel::redis {

void AppendRespCommand(std::span<const std::string_view> argv, std::string& out) {
  size_t total = 16;
  for (std::string_view a : argv) total += a.size() + 16;
  out.reserve(out.size() + total);
  absl::StrAppend(&out, "*", argv.size(), "\r\n");
  for (std::string_view a : argv) {
    absl::StrAppend(&out, "$", a.size(), "\r\n");
    out.append(a.data(), a.size());
    out.append("\r\n", 2);
  }
}

Pipeline& Pipeline::AddArgv(std::span<const std::string_view> argv) {
  assert(!argv.empty());
  AppendRespCommand(argv, encoded_);
  ++count_;
  return *this;
}

}  // namespace keel::redis
