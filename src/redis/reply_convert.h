// Private to keel::redis: how a hiredis reply tree becomes a keel::redis::Reply. Separate from
// connection.cc so the decoder can be exercised without a socket (fuzz/redis_reply_fuzzer.cc).
#pragma once

#include <hiredis/hiredis.h>

#include "keel/redis/reply.h"

namespace keel::redis::internal {

// A deep copy of `r` (hiredis 0.14's RESP2 types: string, status, error, integer, nil, array).
// REQUIRES: r != nullptr, as returned by redisGetReply / redisReaderGetReply.
Reply ConvertReply(const redisReply* r);

}  // namespace keel::redis::internal
