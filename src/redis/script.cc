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

std::vector<size_t> Script::UnknownScript(const PipelineReplies& replies) {
  std::vector<size_t> unknown;
  for (size_t i = 0; i < replies.size(); ++i) {
    if (!replies[i].ok() && IsServerError(replies[i].status(), "NOSCRIPT")) unknown.push_back(i);
  }
  return unknown;
}

void Script::MergeRetried(PipelineReplies& replies, const std::vector<size_t>& unknown,
                          absl::StatusOr<PipelineReplies> retried) {
  if (!retried.ok() || retried->size() != unknown.size() + 1) {
    const absl::Status failed = retried.ok()
                                    ? absl::InternalError("script: a retried pipeline lost replies")
                                    : std::move(retried).status();
    for (size_t i : unknown) replies[i] = failed;
    return;
  }
  const absl::StatusOr<Reply>& loaded = (*retried)[0];
  for (size_t j = 0; j < unknown.size(); ++j) {
    absl::StatusOr<Reply>& entry = (*retried)[j + 1];
    // Still unknown after a failed load: the load's error says why.
    if (!loaded.ok() && !entry.ok() && IsServerError(entry.status(), "NOSCRIPT")) {
      replies[unknown[j]] = loaded.status();
    } else {
      replies[unknown[j]] = std::move(entry);
    }
  }
}

}  // namespace keel::redis
