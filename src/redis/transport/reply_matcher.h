// Private to keel::redis: matches the replies read from a multiplexed connection to the calls
// that sent their commands. Not part of keel's API. No sockets: bytes in, completions out.
//
// Redis answers the commands of one connection in the order it received them, so the matcher
// is a FIFO of in-flight calls (slots) plus hiredis's redisReader. Each slot expects a number of
// replies (1 for a command, k for a pipeline); once all are in, the slot's call completes with
// them. A slot whose caller gave up (its call was claimed by the caller's deadline, a cancel or
// backpressure) stays in the FIFO until its replies arrive: they are read and discarded
// (counted), so a caller is never handed another caller's reply. A protocol error (bytes that
// are not RESP, or a reply no slot is waiting for) fails every slot: the stream position is lost.
//
// Thread safety: NOT thread-safe; the connection's I/O thread owns it. The calls it completes
// are thread-safe (call.h).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "keel/redis/reply.h"
#include "redis/transport/call.h"

struct redisReader;

namespace keel::redis::transport {

class ReplyMatcher {
 public:
  // `name` prefixes error messages (`redis "127.0.0.1:6379"`).
  explicit ReplyMatcher(std::string name);
  // Fails the slots still in flight with CANCELLED (their owner should have failed them first).
  ~ReplyMatcher();
  ReplyMatcher(const ReplyMatcher&) = delete;
  ReplyMatcher& operator=(const ReplyMatcher&) = delete;

  // Appends a slot for `call`, whose command bytes are sent after those of every slot already in
  // the FIFO. REQUIRES: call->expected() >= 1.
  void Push(std::shared_ptr<Call> call);

  // A slot whose replies are all in, not completed yet (Feed with `finished`).
  struct Finished {
    std::shared_ptr<Call> call;
    CallResult result;
    uint32_t replies = 0;
  };

  // Decodes `bytes` (the next bytes of the stream) and completes every slot whose replies are
  // all in, in FIFO order. With `finished`, those slots are retired (TakeRetired counts them) but
  // appended there instead of completed: the transport settles its accounting first, then calls
  // Complete, so a caller woken by its completion finds its slot already gone. Returns OK, or
  // UNAVAILABLE on a protocol error, after failing every slot still in flight with it; the
  // matcher is then empty and the next bytes fed start a new stream.
  absl::Status Feed(std::string_view bytes, std::vector<Finished>* finished = nullptr);
  // Completes and clears `finished`; the replies of calls that had given up count as discarded.
  void Complete(std::vector<Finished>& finished);

  // Completes every slot with a fresh Status(code, message) each (calls already claimed are
  // skipped) and starts a new stream: what a connection error or shutdown does.
  void FailAll(absl::StatusCode code, std::string_view message);

  // Drops every slot without completing it and starts a new stream: for a matcher whose slots
  // were handed to another.
  void Clear();

  // Slots in flight, abandoned ones included.
  size_t in_flight() const { return slots_.size(); }
  // The oldest slot's call, or nullptr: the one the next reply belongs to.
  const Call* front() const { return slots_.empty() ? nullptr : slots_.front().get(); }
  // True when the oldest slot's caller gave up: the connection owes late replies.
  bool owes_late_replies() const { return !slots_.empty() && slots_.front()->claimed(); }
  // Calls `f(const std::shared_ptr<Call>&)` for every slot, oldest first.
  template <typename F>
  void ForEach(F&& f) const {
    for (const std::shared_ptr<Call>& call : slots_) f(call);
  }
  // True when bytes of a reply not yet complete have been fed: the stream cannot be handed to
  // another matcher at this point.
  bool mid_reply() const;
  // Replies read and discarded because their caller had given up (monotonic).
  // Any thread (the transport's Stats read it while the loop runs).
  uint64_t late_replies_discarded() const { return discarded_.load(std::memory_order_relaxed); }
  // Slots that left the FIFO (answered or failed) and their request bytes since the last call;
  // resets both. What the transport's backpressure accounting subtracts.
  struct Retired {
    size_t slots = 0;
    size_t bytes = 0;
  };
  Retired TakeRetired() { return std::exchange(retired_, Retired{}); }

 private:
  // Frees and recreates the reader: a new stream.
  void ResetReader();
  // Takes one decoded reply for the front slot; completes it when it is the last (or, with
  // `finished`, appends it there).
  void Take(void* raw, std::vector<Finished>* finished);

  const std::string name_;
  redisReader* reader_ = nullptr;
  std::deque<std::shared_ptr<Call>> slots_;
  CallReplies current_;         // replies of the front slot so far
  uint32_t current_count_ = 0;  // replies of the front slot so far, decoded or not
  // Counted before the completions that follow in the same read run, so a caller woken by a
  // later reply already sees the discard.
  std::atomic<uint64_t> discarded_{0};
  Retired retired_;
};

}  // namespace keel::redis::transport
