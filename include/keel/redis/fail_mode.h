// keel/redis/fail_mode.h: what a Redis-backed limiter does when Redis gives no answer.
//
// Defines `keel::redis::FailMode`, the `fail_mode` option of keel::redis::RateLimiter and
// keel::redis::ConcurrencyLimiter. "No answer" is one case, whatever its cause: Redis unreachable,
// an error reply, or the caller's deadline passing first. Either way the limiter returns by the
// deadline and counts the outcome (`fail_open_total` / `fail_closed_total` in its Stats, the
// fail_open / fail_closed decisions in its metrics).
//
//   kOpen   the request goes ahead: RateLimiter admits it with `Decision::degraded` set (its
//           figures are unknown, so limit::HttpHeaders sends none); ConcurrencyLimiter hands out
//           a permit Redis does not record (releasing it does nothing).
//   kClosed the request is refused with UNAVAILABLE naming the limiter
//           (`redis rate limiter "api": unavailable (fail_mode kClosed): ...`).
//
// Choose kOpen when the limit protects against abuse and an outage of Redis must not take the
// service down with it; kClosed when it protects a capacity that must never be overrun. A
// RateLimiter with `local_fallback` decides with its in-process share instead and never uses
// fail_mode.
//
// Thread safety: a plain enum.
//
//   auto payments = keel::redis::RateLimiter::Create(
//       {.name = "payments",
//        .algorithm = keel::limit::Gcra::Options{.count = 100, .period = 1s},
//        .fail_mode = keel::redis::FailMode::kClosed},
//       *client).value();
//   auto d = payments->TryAcquire(keel::Deadline::After(20ms), merchant_id);
//   if (!d.ok()) return d.status();   // UNAVAILABLE while Redis cannot answer
#pragma once

namespace keel::redis {

// What a Redis-backed limiter does when it cannot get an answer from Redis.
enum class FailMode {
  kOpen,    // admit the request: a Redis outage must not take the service down with it
  kClosed,  // refuse with UNAVAILABLE: the limit protects something that must not be overrun
};

}  // namespace keel::redis
