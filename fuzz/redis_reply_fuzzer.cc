// Fuzzes how keel decodes Redis replies: arbitrary bytes go through hiredis's redisReader, as
// they do on a connection, and each reply through internal::ConvertReply into a Reply.
//
// Invariants, beyond "no crash, no sanitizer report":
//   - the Reply is a faithful deep copy of hiredis's tree (types, bytes, integers, sizes);
//   - the Reply re-encodes as RESP that decodes to an equal Reply, with nothing left over;
//   - feeding the same bytes in chunks (as a socket delivers them) yields the same replies and
//     the same error outcome as feeding them at once;
//   - checked accessors agree with type(), and an error reply's Status carries its message.
#include <hiredis/hiredis.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "keel/redis/reply.h"
#include "redis/reply_convert.h"
#include "resp_limits.h"

namespace {

using keel::fuzz::Check;
using keel::fuzz::DeclaresHugeSize;
using keel::redis::Reply;

// The hiredis tree and keel's Reply hold the same thing.
void CheckSame(const redisReply* r, const Reply& reply) {
  switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      Check(reply.type() == (r->type == REDIS_REPLY_STRING   ? Reply::Type::kString
                             : r->type == REDIS_REPLY_STATUS ? Reply::Type::kStatus
                                                             : Reply::Type::kError),
            "string type");
      Check(reply.str() == std::string_view(r->str, r->len), "string bytes");
      Check(reply.elements().empty(), "string has no elements");
      return;
    case REDIS_REPLY_INTEGER:
      Check(reply.is_integer() && reply.integer() == r->integer, "integer");
      return;
    case REDIS_REPLY_NIL:
      Check(reply.is_nil(), "nil");
      return;
    case REDIS_REPLY_ARRAY:
      Check(reply.is_array() && reply.elements().size() == r->elements, "array size");
      for (size_t i = 0; i < r->elements; ++i) CheckSame(r->element[i], reply.elements()[i]);
      return;
    default:
      Check(false, "unknown hiredis reply type");
  }
}

// RESP2, as a server would send `reply`.
void Encode(const Reply& reply, std::string& out) {
  switch (reply.type()) {
    case Reply::Type::kNil:
      out += "$-1\r\n";
      return;
    case Reply::Type::kInteger:
      out += ':' + std::to_string(reply.integer()) + "\r\n";
      return;
    case Reply::Type::kString:
      out += '$' + std::to_string(reply.str().size()) + "\r\n" + reply.str() + "\r\n";
      return;
    case Reply::Type::kStatus:
      out += '+' + reply.str() + "\r\n";
      return;
    case Reply::Type::kError:
      out += '-' + reply.str() + "\r\n";
      return;
    case Reply::Type::kArray:
      out += '*' + std::to_string(reply.elements().size()) + "\r\n";
      for (const Reply& e : reply.elements()) Encode(e, out);
      return;
  }
}

struct Decoded {
  std::vector<Reply> replies;
  bool error = false;
};

// Feeds `data` in pieces of `chunk` bytes (0: at once), collecting replies as keel does.
Decoded Decode(std::string_view data, size_t chunk, bool check_tree) {
  Decoded out;
  redisReader* reader = redisReaderCreate();
  Check(reader != nullptr, "reader");
  size_t fed = 0;
  while (!out.error) {
    if (fed < data.size()) {
      const size_t n = chunk == 0 ? data.size() : std::min(chunk, data.size() - fed);
      if (redisReaderFeed(reader, data.data() + fed, n) != REDIS_OK) out.error = true;
      fed += n;
    }
    while (!out.error) {
      void* raw = nullptr;
      if (redisReaderGetReply(reader, &raw) != REDIS_OK) {
        out.error = true;
        break;
      }
      if (raw == nullptr) break;
      const auto* r = static_cast<const redisReply*>(raw);
      out.replies.push_back(keel::redis::internal::ConvertReply(r));
      if (check_tree) CheckSame(r, out.replies.back());
      freeReplyObject(raw);
    }
    if (fed >= data.size()) break;
  }
  redisReaderFree(reader);
  return out;
}

void CheckAccessors(const Reply& reply) {
  (void)reply.DebugString();
  Check(reply.AsInteger().ok() == reply.is_integer(), "AsInteger");
  Check(reply.AsString().ok() == (reply.is_string() || reply.is_status()), "AsString");
  Check(reply.AsOptionalString().ok() == (reply.is_string() || reply.is_status() || reply.is_nil()),
        "AsOptionalString");
  if (reply.is_error()) {
    const absl::Status status = keel::redis::ServerErrorToStatus("redis fuzz", reply.str());
    Check(!status.ok(), "error reply became OK");
    Check(keel::redis::ServerError(status) == reply.str(), "ServerError payload");
    const std::string_view word = std::string_view(reply.str()).substr(0, reply.str().find(' '));
    Check(keel::redis::IsServerError(status, word), "IsServerError of the first word");
  }
  for (const Reply& e : reply.elements()) CheckAccessors(e);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the chunk size the second decode feeds with (1..16 bytes).
  const size_t chunk = (data[0] & 0x0f) + 1;
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  if (DeclaresHugeSize(input)) return 0;

  const Decoded whole = Decode(input, 0, /*check_tree=*/true);
  const Decoded pieces = Decode(input, chunk, /*check_tree=*/false);
  Check(pieces.error == whole.error, "chunked feeding changed the error outcome");
  Check(pieces.replies == whole.replies, "chunked feeding changed the replies");

  for (const Reply& reply : whole.replies) {
    CheckAccessors(reply);
    std::string encoded;
    Encode(reply, encoded);
    const Decoded again = Decode(encoded, 0, /*check_tree=*/true);
    Check(!again.error && again.replies.size() == 1, "re-encoded reply does not decode once");
    Check(again.replies[0] == reply, "re-encoded reply decodes to another value");
  }
  return 0;
}
