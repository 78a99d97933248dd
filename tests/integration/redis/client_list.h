// CLIENT LIST, parsed: one field map per connection of the server (`id`, `name`, `flags`, ...).
#pragma once

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "keel/redis/client.h"

namespace keel::test {

inline std::vector<std::map<std::string, std::string>> ClientList(redis::Client& admin) {
  auto list = admin.Command(Deadline::After(std::chrono::seconds(1)), "CLIENT", "LIST");
  REQUIRE(list.ok());
  std::vector<std::map<std::string, std::string>> clients;
  const std::string text = list->str();
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::map<std::string, std::string> fields;
    // Fields are `key=value` separated by spaces; only the last ones (cmd, user, ...) may be
    // empty, and none holds a space.
    size_t f = at;
    while (f < end) {
      size_t space = text.find(' ', f);
      if (space == std::string::npos || space > end) space = end;
      const size_t eq = text.find('=', f);
      if (eq != std::string::npos && eq < space) {
        fields[text.substr(f, eq - f)] = text.substr(eq + 1, space - eq - 1);
      }
      f = space + 1;
    }
    if (!fields.empty()) clients.push_back(std::move(fields));
    at = end + 1;
  }
  return clients;
}

}  // namespace keel::test
