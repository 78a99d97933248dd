// keel/keel.h: the umbrella header, including every public keel header this keel build has.
//
// Convenient for examples and small programs; larger code bases should include the headers of the
// building blocks they use, which keeps builds fast and dependencies visible (a user of
// keel/resilience/ needs only keel::core, never hiredis or libpqxx). The keel::redis and
// keel::postgres headers are included when keel was built with them (keel/config.h says which).
//
// Thread safety: see each included header.
//
//   #include "keel/keel.h"
//   keel::MetricsRegistry registry;
//   auto deadline = keel::Deadline::After(std::chrono::milliseconds(200));
//   #if KEEL_WITH_REDIS  // keel::redis was built: its headers are here too
//   auto options = keel::redis::Options::FromUrl("redis://127.0.0.1:6379");
//   #endif
#pragma once

#include "keel/async/executor.h"
#include "keel/async/future.h"
#include "keel/async/io_loop.h"
#include "keel/async/task.h"
#include "keel/async/timer.h"
#include "keel/cache/cache.h"
#include "keel/cache/cache_options.h"
#include "keel/cache/codec.h"
#include "keel/cache/local_store.h"
#include "keel/cache/local_tier.h"
#include "keel/cache/store_types.h"
#include "keel/cache/tier.h"
#include "keel/cache/write_behind.h"
#include "keel/clock.h"
#include "keel/config.h"
#include "keel/deadline.h"
#include "keel/limit/concurrency_limiter.h"
#include "keel/limit/decision.h"
#include "keel/limit/fixed_window.h"
#include "keel/limit/gcra.h"
#include "keel/limit/http_headers.h"
#include "keel/limit/keyed.h"
#include "keel/limit/keyed_concurrency_limiter.h"
#include "keel/limit/leaky_bucket.h"
#include "keel/limit/sliding_window.h"
#include "keel/limit/token_bucket.h"
#include "keel/metrics.h"
#include "keel/overload/adaptive_limit_stage.h"
#include "keel/overload/adaptive_limiter.h"
#include "keel/overload/adaptive_throttle.h"
#include "keel/overload/adaptive_throttle_stage.h"
#include "keel/overload/aimd_limit.h"
#include "keel/overload/codel_queue.h"
#include "keel/overload/fault_injection.h"
#include "keel/overload/fault_injection_stage.h"
#include "keel/overload/gradient2_limit.h"
#include "keel/overload/gradient_limit.h"
#include "keel/overload/hedge.h"
#include "keel/overload/hedge_stage.h"
#include "keel/overload/keyed_adaptive_limiter.h"
#include "keel/overload/latency_percentile.h"
#include "keel/overload/limit_algorithm.h"
#include "keel/overload/vegas_limit.h"
#include "keel/overload/windowed_limit.h"
#include "keel/pool/pool.h"
#include "keel/resilience/backoff.h"
#include "keel/resilience/bulkhead.h"
#include "keel/resilience/call_context.h"
#include "keel/resilience/cancellation.h"
#include "keel/resilience/circuit_breaker.h"
#include "keel/resilience/executor_timeout.h"
#include "keel/resilience/fallback.h"
#include "keel/resilience/pipeline.h"
#include "keel/resilience/retry.h"
#include "keel/resilience/retry_budget.h"
#include "keel/resilience/thread_pool_bulkhead.h"
#include "keel/resilience/timeout.h"
#include "keel/status.h"
#include "keel/sync.h"
#include "keel/version.h"

#if KEEL_WITH_REDIS
#include "keel/redis/cache_stampede.h"
#include "keel/redis/cache_store.h"
#include "keel/redis/client.h"
#include "keel/redis/command.h"
#include "keel/redis/concurrency_limiter.h"
#include "keel/redis/connection.h"
#include "keel/redis/fail_mode.h"
#include "keel/redis/lock.h"
#include "keel/redis/near_cache.h"
#include "keel/redis/options.h"
#include "keel/redis/queue.h"
#include "keel/redis/rate_limiter.h"
#include "keel/redis/redlock.h"
#include "keel/redis/reply.h"
#include "keel/redis/script.h"
#include "keel/redis/subscriber.h"
#include "keel/redis/version.h"
#include "keel/redis/write_behind_log.h"
#endif  // KEEL_WITH_REDIS

#if KEEL_WITH_POSTGRES
#include "keel/postgres/batch.h"
#include "keel/postgres/connection.h"
#include "keel/postgres/fencing.h"
#include "keel/postgres/pool.h"
#include "keel/postgres/router.h"
#include "keel/postgres/transaction.h"
#include "keel/postgres/version.h"
#endif  // KEEL_WITH_POSTGRES
