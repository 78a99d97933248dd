#include "redis/transport/reply_matcher.h"

#include <hiredis/hiredis.h>

#include <utility>

#include "keel/internal/redact.h"
#include "keel/internal/strings.h"
#include "redis/reply_convert.h"

namespace keel::redis::transport {

using keel::internal::StrCat;

ReplyMatcher::ReplyMatcher(std::string name) : name_(std::move(name)) { ResetReader(); }

ReplyMatcher::~ReplyMatcher() {
  FailAll(absl::StatusCode::kCancelled, StrCat(name_, ": connection closed"));
  redisReaderFree(reader_);
}

void ReplyMatcher::ResetReader() {
  if (reader_ != nullptr) redisReaderFree(reader_);
  reader_ = redisReaderCreate();
  current_.clear();
  current_count_ = 0;
}

bool ReplyMatcher::mid_reply() const {
  // Unparsed bytes, or an aggregate reply under construction (ridx alone is not a sign: it is 0
  // after a read found nothing).
  return current_count_ > 0 || reader_->pos < reader_->len || reader_->reply != nullptr;
}

void ReplyMatcher::Clear() {
  slots_.clear();
  retired_ = Retired{};
  ResetReader();
}

void ReplyMatcher::Push(std::shared_ptr<Call> call) { slots_.push_back(std::move(call)); }

void ReplyMatcher::Take(void* raw, std::vector<Finished>* finished) {
  Call& call = *slots_.front();
  // A caller that gave up gets nothing: skip the copy.
  if (!call.claimed()) {
    current_.push_back(internal::ConvertReply(static_cast<const redisReply*>(raw)));
  }
  freeReplyObject(raw);
  if (++current_count_ < call.expected()) return;
  // Every reply of the front slot is in. Keep the reference across the completion (the call may
  // be the caller's last owner otherwise).
  std::shared_ptr<Call> done = std::move(slots_.front());
  slots_.pop_front();
  ++retired_.slots;
  retired_.bytes += done->request_bytes;
  const uint32_t count = current_count_;
  current_count_ = 0;
  CallResult result{.status = absl::OkStatus(), .replies = std::move(current_)};
  current_.clear();
  if (finished != nullptr) {
    finished->push_back(
        Finished{.call = std::move(done), .result = std::move(result), .replies = count});
    return;
  }
  if (!done->TryComplete(std::move(result))) discarded_.fetch_add(count, std::memory_order_relaxed);
}

void ReplyMatcher::Complete(std::vector<Finished>& finished) {
  for (Finished& f : finished) {
    if (!f.call->TryComplete(std::move(f.result))) {
      discarded_.fetch_add(f.replies, std::memory_order_relaxed);
    }
  }
  finished.clear();
}

absl::Status ReplyMatcher::Feed(std::string_view bytes, std::vector<Finished>* finished) {
  // The stream position is lost: every slot fails, and the next bytes start a new stream.
  auto protocol_error = [this](std::string_view what) {
    const std::string message =
        StrCat(name_, ": protocol error: ", keel::internal::RedactCredentials(what));
    FailAll(absl::StatusCode::kUnavailable, message);
    return absl::UnavailableError(message);
  };
  if (!bytes.empty() && redisReaderFeed(reader_, bytes.data(), bytes.size()) != REDIS_OK) {
    return protocol_error(reader_->errstr);
  }
  while (true) {
    void* raw = nullptr;
    if (redisReaderGetReply(reader_, &raw) != REDIS_OK) return protocol_error(reader_->errstr);
    if (raw == nullptr) return absl::OkStatus();
    if (slots_.empty()) {
      freeReplyObject(raw);
      return protocol_error("a reply no call is waiting for");
    }
    Take(raw, finished);
  }
}

void ReplyMatcher::FailAll(absl::StatusCode code, std::string_view message) {
  std::deque<std::shared_ptr<Call>> failing = std::exchange(slots_, {});
  for (const std::shared_ptr<Call>& call : failing) {
    ++retired_.slots;
    retired_.bytes += call->request_bytes;
    call->TryFail(code, message);
  }
  ResetReader();
}

}  // namespace keel::redis::transport
