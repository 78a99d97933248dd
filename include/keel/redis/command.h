// keel/redis/command.h: binary-safe command arguments and pipelines.
//
// Defines `keel::redis::Arg` (one argument: any string-like value, viewed without copying, or an
// integer, formatted in place) and `keel::redis::Pipeline` (many commands encoded into one
// buffer, sent in one write and answered in one round trip).
//
// Commands are always sent as an argument vector in the RESP protocol (each argument
// length-prefixed), never built by string formatting, so keys and values may hold any bytes,
// spaces, newlines and NULs included.
//
// Thread safety: Arg is a value. A Pipeline is not thread-safe; build it on one thread, then
// run it (Client::Run / Connection::Run) from any thread, as often as you like.
//
//   keel::redis::Pipeline p;
//   for (const auto& [key, value] : batch) p.Add("SET", key, value, "EX", 60);
//   p.Add("INCR", "writes");
//   auto results = client.Run(deadline, p);       // one round trip
//   if (!results.ok()) return results.status();    // the connection failed: nothing is known
//   for (const absl::StatusOr<Reply>& r : *results) ...   // one per command, in order
#pragma once

#include <charconv>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "keel/redis/reply.h"

namespace keel::redis {

// One command argument. Holds a view of string-like values (the caller keeps them alive for
// the duration of the call) and formats integers into an inline buffer.
class Arg {
 public:
  Arg(std::string_view s) : data_(s.data()), size_(s.size()) {}    // NOLINT: implicit by design
  Arg(const std::string& s) : data_(s.data()), size_(s.size()) {}  // NOLINT
  Arg(const char* s) : Arg(std::string_view(s)) {}                 // NOLINT
  Arg(absl::string_view s) : data_(s.data()), size_(s.size()) {}   // NOLINT
  template <std::integral T>
  requires(!std::same_as<T, bool> && !std::same_as<T, char>) Arg(T v) : inline_(true) {  // NOLINT
    size_ = static_cast<size_t>(std::to_chars(buf_, buf_ + sizeof(buf_), v).ptr - buf_);
  }

  Arg(const Arg& other) { *this = other; }
  Arg& operator=(const Arg& other) {
    data_ = other.data_;
    size_ = other.size_;
    inline_ = other.inline_;
    if (inline_) std::copy(other.buf_, other.buf_ + other.size_, buf_);
    return *this;
  }

  std::string_view view() const {
    return inline_ ? std::string_view(buf_, size_) : std::string_view(data_, size_);
  }

 private:
  const char* data_ = nullptr;
  size_t size_ = 0;
  bool inline_ = false;
  char buf_[24];  // fits any 64-bit integer in decimal with its sign
};

// Appends the RESP encoding of `argv` (`*N\r\n$len\r\nbytes\r\n...`) to `out`.
void AppendRespCommand(std::span<const std::string_view> argv, std::string& out);

namespace internal {

// What a command does to the state of the connection it runs on, for the commands that leave a
// connection different for its next user. Not part of keel's API.
enum class SessionEffect : uint8_t {
  kNone,       // an ordinary command
  kMulti,      // MULTI: commands are queued until EXEC/DISCARD
  kEndMulti,   // EXEC, DISCARD: ends MULTI and any WATCH
  kWatch,      // WATCH: EXEC depends on the watched keys
  kUnwatch,    // UNWATCH
  kPermanent,  // SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE, MONITOR, SELECT, HELLO, RESET, AUTH, QUIT,
               // CLIENT REPLY: the connection cannot be given to anyone else afterwards
};

// The effect of `argv` (its command name compared case-insensitively). Cheap: no allocation.
SessionEffect SessionEffectOf(std::span<const std::string_view> argv);

// True for the commands that block the connection they run on until something happens (BLPOP,
// BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN, BZPOPMAX, BLMPOP, BZMPOP, WAIT, WAITAOF, and XREAD /
// XREADGROUP with BLOCK): they never go on a multiplexed connection, where they would hold up
// every other caller.
bool IsBlockingCommand(std::span<const std::string_view> argv);

// OK for a command a pooled call may run, otherwise INVALID_ARGUMENT `<who>: <COMMAND> changes
// the connection's state and is not allowed on a pooled call: <where it belongs>`. Also refuses
// an empty argument vector.
absl::Status CheckPooledCommand(std::string_view who, std::span<const std::string_view> argv);

}  // namespace internal

// The replies of a pipeline, one per command in order: each is the reply or the Status of the
// server's error reply for that command.
using PipelineReplies = std::vector<absl::StatusOr<Reply>>;

// Commands to send together. Arguments are copied into the pipeline's buffer when added.
class Pipeline {
 public:
  Pipeline() = default;

  // Appends one command, e.g. Add("HSET", key, field, value).
  template <typename... Args>
  Pipeline& Add(const Args&... args) {
    const Arg argv[] = {Arg(args)...};
    std::string_view views[sizeof...(Args)];
    for (size_t i = 0; i < sizeof...(Args); ++i) views[i] = argv[i].view();
    return AddArgv(views);
  }
  // Appends one command given as an argument vector. An empty `argv` is not encoded: it makes
  // the pipeline invalid() and every run of it fail with INVALID_ARGUMENT without I/O (Redis
  // would answer nothing to an empty command, and the call would wait out its deadline).
  Pipeline& AddArgv(std::span<const std::string_view> argv);

  // Appends every command of `other`, in order.
  Pipeline& Append(const Pipeline& other);

  size_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  void Clear() {
    encoded_.clear();
    count_ = 0;
    effects_.clear();
    first_refusal_.clear();
    first_empty_.reset();
    has_blocking_ = false;
  }

  // The RESP bytes of every command, in order.
  const std::string& encoded() const { return encoded_; }

  // OK, or INVALID_ARGUMENT naming the first empty command (`command #3 has no arguments`).
  absl::Status Validate() const;

  // The connection-state effects of the commands added, in order, leaving out kNone (empty for
  // an ordinary pipeline). What Client refuses and Connection tracks.
  const std::vector<internal::SessionEffect>& session_effects() const { return effects_; }
  // True when a command added blocks its connection (internal::IsBlockingCommand).
  bool has_blocking() const { return has_blocking_; }
  // OK when every command may run on a pooled connection, otherwise the INVALID_ARGUMENT of
  // internal::CheckPooledCommand for the first that may not, prefixed with `who`.
  absl::Status CheckPooled(std::string_view who) const;

 private:
  std::string encoded_;
  size_t count_ = 0;
  std::vector<internal::SessionEffect> effects_;
  std::string first_refusal_;          // why the first command with an effect is refused on a pool
  std::optional<size_t> first_empty_;  // index of the first empty command
  bool has_blocking_ = false;
};

}  // namespace keel::redis
