// keel.h is self-contained (it is this file's first include) and includes every public header.
// clang-format off
#include "keel/keel.h"
// clang-format on

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

TEST_CASE("keel.h compiles on its own and offers every building block's header", "[core]") {
  CHECK(std::string(keel::kVersion).size() >= 5);
  keel::ManualClock clock;
  CHECK(keel::Deadline::After(std::chrono::seconds(1), clock).Remaining() ==
        std::chrono::seconds(1));
#if KEEL_WITH_REDIS
  CHECK(keel::redis::Options::FromUrl("redis://127.0.0.1:6379").ok());
  CHECK_FALSE(keel::redis::HiredisVersion().empty());
#endif
#if KEEL_WITH_POSTGRES
  CHECK_FALSE(keel::postgres::PqxxVersion().empty());
#endif
}

TEST_CASE("keel.h includes every public header outside internal/", "[core]") {
  const fs::path include = fs::path(KEEL_SOURCE_DIR) / "include";
  std::ifstream in(include / "keel" / "keel.h");
  REQUIRE(in);
  std::stringstream umbrella;
  umbrella << in.rdbuf();
  int headers = 0;
  for (const auto& entry : fs::recursive_directory_iterator(include / "keel")) {
    const fs::path rel = fs::relative(entry.path(), include);
    if (!entry.is_regular_file() || rel.extension() != ".h") continue;
    if (rel.string().find("/internal/") != std::string::npos) continue;
    if (rel == "keel/keel.h") continue;
    ++headers;
    INFO(rel.string());
    CHECK(umbrella.str().find("#include \"" + rel.string() + "\"") != std::string::npos);
  }
  CHECK(headers > 30);
}
