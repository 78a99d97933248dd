#include "keel/redis/script.h"

#include <utility>

#include "redis/sha1.h"

namespace keel::redis {

Script::Script(std::string source)
    : source_(std::move(source)), sha1_(internal::Sha1Hex(source_)) {}

Script::Argv Script::BuildArgv(std::span<const std::string_view> keys,
                               std::span<const std::string_view> args, std::string& numkeys) const {
  numkeys = std::to_string(keys.size());  // a few digits: no allocation
  Argv argv;
  argv.reserve(3 + keys.size() + args.size());
  argv.push_back("EVALSHA");
  argv.push_back(sha1_);
  argv.push_back(numkeys);
  argv.insert(argv.end(), keys.begin(), keys.end());
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

void Script::AddTo(Pipeline& pipeline, std::span<const std::string_view> keys,
                   std::span<const std::string_view> args) const {
  std::string numkeys;
  pipeline.AddArgv(BuildArgv(keys, args, numkeys));
}

}  // namespace keel::redis
