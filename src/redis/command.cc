#include "keel/redis/command.h"

#include "absl/strings/str_cat.h"
#include "keel/internal/strings.h"

namespace keel::redis {
namespace {

using internal::SessionEffect;
using keel::internal::StrCat;

// `s` equals `upper` (an upper-case ASCII name) ignoring case.
bool NameIs(std::string_view s, std::string_view upper) {
  if (s.size() != upper.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (c != upper[i]) return false;
  }
  return true;
}

struct StateCommand {
  std::string_view name;
  SessionEffect effect;
  std::string_view belongs;  // where a caller should go instead
};

constexpr std::string_view kTransaction = "use Client::Transaction";
constexpr std::string_view kSubscriber = "use redis::Subscriber";
constexpr std::string_view kOptions = "set it in redis::Options";

constexpr StateCommand kStateCommands[] = {
    {"MULTI", SessionEffect::kMulti, kTransaction},
    {"EXEC", SessionEffect::kEndMulti, kTransaction},
    {"DISCARD", SessionEffect::kEndMulti, kTransaction},
    {"WATCH", SessionEffect::kWatch, kTransaction},
    {"UNWATCH", SessionEffect::kUnwatch, kTransaction},
    {"SUBSCRIBE", SessionEffect::kPermanent, kSubscriber},
    {"PSUBSCRIBE", SessionEffect::kPermanent, kSubscriber},
    {"SSUBSCRIBE", SessionEffect::kPermanent, kSubscriber},
    {"MONITOR", SessionEffect::kPermanent, "run it on a connection of your own"},
    {"SELECT", SessionEffect::kPermanent, "set Options::db"},
    {"AUTH", SessionEffect::kPermanent, "set Options::user and Options::password"},
    {"HELLO", SessionEffect::kPermanent, kOptions},
    {"RESET", SessionEffect::kPermanent, kOptions},
    {"QUIT", SessionEffect::kPermanent, "destroy the Client instead"},
};

const StateCommand* Find(std::span<const std::string_view> argv) {
  if (argv.empty()) return nullptr;
  const std::string_view name = argv[0];
  // Every state command is 4 to 10 letters: most commands leave after one length check.
  if (name.size() < 4 || name.size() > 10) return nullptr;
  for (const StateCommand& c : kStateCommands) {
    if (NameIs(name, c.name)) return &c;
  }
  return nullptr;
}

bool IsClientReply(std::span<const std::string_view> argv) {
  return argv.size() >= 2 && NameIs(argv[0], "CLIENT") && NameIs(argv[1], "REPLY");
}

// CLIENT TRACKING on a shared or pooled connection would track (or stop tracking) the keys of
// whichever callers happen to use it next.
bool IsClientTracking(std::span<const std::string_view> argv) {
  return argv.size() >= 2 && NameIs(argv[0], "CLIENT") && NameIs(argv[1], "TRACKING");
}

}  // namespace

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

namespace internal {

SessionEffect SessionEffectOf(std::span<const std::string_view> argv) {
  if (const StateCommand* c = Find(argv)) return c->effect;
  if (IsClientReply(argv) || IsClientTracking(argv)) return SessionEffect::kPermanent;
  return SessionEffect::kNone;
}

bool IsBlockingCommand(std::span<const std::string_view> argv) {
  if (argv.empty()) return false;
  constexpr std::string_view kBlocking[] = {"BLPOP",    "BRPOP",    "BLMOVE", "BRPOPLPUSH",
                                            "BZPOPMIN", "BZPOPMAX", "BLMPOP", "BZMPOP",
                                            "WAIT",     "WAITAOF"};
  const std::string_view name = argv[0];
  if (name.size() < 4 || name.size() > 10) return false;
  for (std::string_view b : kBlocking) {
    if (NameIs(name, b)) return true;
  }
  if (NameIs(name, "XREAD") || NameIs(name, "XREADGROUP")) {
    // Options come before STREAMS; after it only keys and IDs follow.
    for (size_t i = 1; i < argv.size(); ++i) {
      if (NameIs(argv[i], "STREAMS")) return false;
      if (NameIs(argv[i], "BLOCK")) return true;
    }
  }
  return false;
}

absl::Status CheckPooledCommand(std::string_view who, std::span<const std::string_view> argv) {
  if (argv.empty()) {
    return absl::InvalidArgumentError(StrCat(who, ": empty command (no arguments)"));
  }
  std::string_view name, belongs;
  if (const StateCommand* c = Find(argv)) {
    name = c->name;
    belongs = c->belongs;
  } else if (IsClientReply(argv)) {
    name = "CLIENT REPLY";
    belongs = "every pooled call reads its reply";
  } else if (IsClientTracking(argv)) {
    name = "CLIENT TRACKING";
    belongs = "set it in Options::connection_hooks, or use redis::NearCacheTier";
  } else {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      StrCat(who, who.empty() ? "" : ": ", name,
             " changes the connection's state and is not allowed on a pooled call: ", belongs));
}

}  // namespace internal

Pipeline& Pipeline::AddArgv(std::span<const std::string_view> argv) {
  if (argv.empty()) {
    if (!first_empty_) first_empty_ = count_;
    ++count_;
    return *this;
  }
  AppendRespCommand(argv, encoded_);
  if (internal::IsBlockingCommand(argv)) has_blocking_ = true;
  if (const SessionEffect effect = internal::SessionEffectOf(argv);
      effect != SessionEffect::kNone) {
    if (effects_.empty()) {
      first_refusal_ =
          StrCat("command #", count_, " ", internal::CheckPooledCommand("", argv).message());
    }
    effects_.push_back(effect);
  }
  ++count_;
  return *this;
}

Pipeline& Pipeline::Append(const Pipeline& other) {
  if (other.first_empty_ && !first_empty_) first_empty_ = count_ + *other.first_empty_;
  if (effects_.empty() && !other.effects_.empty()) first_refusal_ = other.first_refusal_;
  effects_.insert(effects_.end(), other.effects_.begin(), other.effects_.end());
  encoded_ += other.encoded_;
  count_ += other.count_;
  has_blocking_ = has_blocking_ || other.has_blocking_;
  return *this;
}

absl::Status Pipeline::CheckPooled(std::string_view who) const {
  if (effects_.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(StrCat(who, ": pipeline ", first_refusal_));
}

absl::Status Pipeline::Validate() const {
  if (!first_empty_) return absl::OkStatus();
  return absl::InvalidArgumentError(
      StrCat("pipeline command #", *first_empty_, " has no arguments"));
}

}  // namespace keel::redis
