// Fuzzes the multiplexed transport's reply matcher (src/redis/transport/reply_matcher.h): an
// arbitrary byte stream arrives in arbitrary pieces while calls are pushed and their callers
// give up at arbitrary moments.
//
// Input: a sequence of operations, each one header byte (top two bits: the operation, low six:
// its argument) and, for a feed, the bytes it feeds:
//   00xxxxxx  push a call expecting (x % 8) + 1 replies
//   01xxxxxx  the caller of the x-th still pending call (mod their count) gives up
//   10xxxxxx  feed the next x + 1 bytes of the input
//   11xxxxxx  a connection error (FailAll) when x == 63; otherwise feed x + 1 bytes
// At the end the matcher is destroyed (shutdown), which cancels what is left.
//
// Invariants, beyond "no crash, no sanitizer report":
//   - every call completes exactly once;
//   - calls completed with replies complete in FIFO (push) order, with exactly their expected
//     number of replies, and those are the replies a reference decoder assigns to them;
//   - a call whose caller gave up never completes with replies;
//   - the discarded-reply count never exceeds the replies owed to calls that gave up.
#include <hiredis/hiredis.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "redis/reply_convert.h"
#include "redis/transport/call.h"
#include "redis/transport/reply_matcher.h"
#include "resp_limits.h"

namespace {

using keel::fuzz::Check;
using keel::redis::Reply;
using keel::redis::transport::Call;
using keel::redis::transport::CallResult;
using keel::redis::transport::ReplyMatcher;

struct Tracked {
  std::shared_ptr<Call> call;
  uint32_t expected = 0;
  int completions = 0;
  bool gave_up = false;
  bool ok = false;
  keel::redis::transport::CallReplies replies;    // what the matcher handed over
  keel::redis::transport::CallReplies reference;  // what the reference decoder says is this call's
  bool reference_complete = false;                // the reference assigned all its replies
};

// A second, independent reading of the stream: hiredis's reader fed the same bytes, its replies
// dealt to the pushed calls in order.
struct Reference {
  redisReader* reader = redisReaderCreate();
  std::deque<size_t> fifo;  // indices into the tracked calls
  ~Reference() { redisReaderFree(reader); }
  void Reset() {
    redisReaderFree(reader);
    reader = redisReaderCreate();
    fifo.clear();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  if (keel::fuzz::DeclaresHugeSize(input)) return 0;
  keel::ManualClock clock;
  const keel::Deadline deadline = keel::Deadline::After(std::chrono::seconds(1), clock);
  std::vector<std::unique_ptr<Tracked>> calls;
  int64_t last_ok = -1;
  uint64_t owed_to_gave_up = 0;
  Reference ref;
  {
    ReplyMatcher matcher("redis \"fuzz\"");
    size_t pos = 0;
    while (pos < input.size()) {
      const auto header = static_cast<uint8_t>(input[pos++]);
      const uint8_t op = header >> 6, arg = header & 0x3f;
      if (op == 0) {
        auto t = std::make_unique<Tracked>();
        t->expected = (arg % 8) + 1;
        const auto index = static_cast<int64_t>(calls.size());
        Tracked* raw = t.get();
        t->call =
            std::make_shared<Call>(t->expected, deadline, [raw, index, &last_ok](CallResult&& r) {
              ++raw->completions;
              Check(raw->completions == 1, "a call completed twice");
              if (!r.status.ok()) return;
              Check(!raw->gave_up, "a call that gave up completed with replies");
              Check(index > last_ok, "completions with replies out of FIFO order");
              Check(r.replies.size() == raw->expected, "wrong number of replies");
              last_ok = index;
              raw->ok = true;
              raw->replies = std::move(r.replies);
            });
        ref.fifo.push_back(calls.size());
        matcher.Push(t->call);
        calls.push_back(std::move(t));
      } else if (op == 1) {
        std::vector<Tracked*> pending;
        for (auto& t : calls) {
          if (t->completions == 0) pending.push_back(t.get());
        }
        if (pending.empty()) continue;
        Tracked* t = pending[arg % pending.size()];
        t->gave_up = true;
        Check(t->call->TryFail(absl::StatusCode::kDeadlineExceeded, "gave up"),
              "a pending call could not be claimed");
        owed_to_gave_up += t->expected;
      } else if (op == 3 && arg == 63) {
        matcher.FailAll(absl::StatusCode::kUnavailable, "redis \"fuzz\": connection lost");
        ref.Reset();
        Check(matcher.in_flight() == 0, "FailAll left calls in flight");
      } else {
        const size_t n = std::min<size_t>(arg + 1, input.size() - pos);
        const std::string_view bytes = input.substr(pos, n);
        pos += n;
        // The reference first: what each call's replies must be.
        bool ref_error = redisReaderFeed(ref.reader, bytes.data(), bytes.size()) != REDIS_OK;
        while (!ref_error) {
          void* raw = nullptr;
          if (redisReaderGetReply(ref.reader, &raw) != REDIS_OK) {
            ref_error = true;
            break;
          }
          if (raw == nullptr) break;
          Reply reply = keel::redis::internal::ConvertReply(static_cast<const redisReply*>(raw));
          freeReplyObject(raw);
          if (ref.fifo.empty()) {
            ref_error = true;
            break;
          }
          Tracked& front = *calls[ref.fifo.front()];
          front.reference.push_back(std::move(reply));
          if (front.reference.size() == front.expected) {
            front.reference_complete = true;
            ref.fifo.pop_front();
          }
        }
        const bool error = !matcher.Feed(bytes).ok();
        Check(error == ref_error, "the matcher and the reference disagree on a protocol error");
        if (error) {
          ref.Reset();
          Check(matcher.in_flight() == 0, "a protocol error left calls in flight");
        }
        Check(matcher.in_flight() == ref.fifo.size(), "in-flight count differs from the reference");
      }
      Check(matcher.late_replies_discarded() <= owed_to_gave_up,
            "discarded more replies than calls that gave up owed");
    }
  }  // the matcher's destructor cancels what is left
  for (const auto& t : calls) {
    Check(t->completions == 1, "a call did not complete exactly once");
    if (t->ok) {
      Check(t->reference_complete, "a call completed with replies the reference did not assign");
      Check(t->replies == t->reference, "a call got replies that are not its own");
    }
  }
  return 0;
}
