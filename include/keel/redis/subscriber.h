// keel/redis/subscriber.h: Redis Pub/Sub on a dedicated connection that survives restarts.
//
// Defines `keel::redis::Subscriber`, `SubscriberHooks` and `Message`. A Subscriber owns one
// connection (a connection in subscribe mode can run nothing else, so it never comes from the
// Client's pool) and one thread that reads messages and calls `on_message` for each.
//
// When the connection is lost (server restart, failover, network error) the thread reconnects
// with capped exponential backoff, re-issues every SUBSCRIBE and PSUBSCRIBE, and then calls
// `on_reconnect`. Messages published while it was disconnected are lost (Pub/Sub keeps nothing):
// `on_reconnect` is where a cache drops local state that may have missed invalidations.
// In Sentinel mode it reconnects to the current primary.
//
// Hooks that throw do not stop the subscriber: the exception is caught, counted in
// SubscriberStats::hook_errors_total, and delivery goes on with the next message.
//
// Thread safety: Subscribe/Unsubscribe/Shutdown/Stats are thread-safe. Hooks run on the
// subscriber's thread, one at a time, never under a keel lock; keep them short (hand heavy work to
// a queue), and never call Shutdown() or destroy the Subscriber from inside a hook.
//
//   auto sub = keel::redis::Subscriber::Create(options, {
//       .on_message = [&](const keel::redis::Message& m) { cache.Erase(m.payload); },
//       .on_reconnect = [&] { cache.Clear(); },
//   }).value();
//   absl::Status s = sub->Subscribe(Deadline::After(1s), {"cache:invalidate"});
//   // s is OK once the server confirmed; on DEADLINE_EXCEEDED the subscription still stands and
//   // takes effect as soon as Redis is reachable.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/redis/connection.h"
#include "keel/redis/options.h"
#include "keel/sync.h"

namespace keel::redis {

namespace internal {
class PrimaryLocator;
}

// One published message.
struct Message {
  std::string channel;
  std::string payload;
  // The matching pattern for messages delivered through PSUBSCRIBE; empty otherwise.
  std::string pattern;
  // When the payload is an array (Redis's own `__redis__:invalidate` messages of client-side
  // caching: the invalidated keys), its elements; `payload` is then empty.
  std::vector<std::string> elements;
  // True when the payload is nil (an `__redis__:invalidate` message after FLUSHALL/FLUSHDB).
  bool nil_payload = false;
};

struct SubscriberHooks {
  // Called for every message. Required.
  std::function<void(const Message&)> on_message = nullptr;
  // Called after a lost connection was re-established and every subscription restored (not on
  // the first connect). Optional.
  std::function<void()> on_reconnect = nullptr;
  // Called when a connection attempt fails or the connection is lost, with the cause. Optional.
  std::function<void(const absl::Status&)> on_error = nullptr;
  // Called on every new connection (the first one too) before the subscriptions are restored,
  // with a deadline of command_timeout from now. It may run commands on the connection: Command
  // for a connection setup (`CLIENT TRACKING ... REDIRECT <its own CLIENT ID>`), Send and Receive
  // for a SUBSCRIBE it waits on. A non-OK status (or a throw, counted in hook_errors_total) drops
  // the connection like a connection error: on_error, backoff, reconnect. Optional.
  std::function<absl::Status(Connection& connection, Deadline deadline)> on_connect = nullptr;
};

struct SubscriberStats {
  bool connected = false;  // a gauge: the connection is up and subscribed
  uint64_t messages_total = 0;
  uint64_t reconnects_total = 0;
  // Hook calls (on_message, on_reconnect, on_error) that threw; the exception was dropped.
  uint64_t hook_errors_total = 0;
};

class Subscriber {
 public:
  // Reconnect backoff: doubles from kMinBackoff up to kMaxBackoff while Redis stays unreachable.
  static constexpr Duration kMinBackoff = std::chrono::milliseconds(50);
  static constexpr Duration kMaxBackoff = std::chrono::seconds(2);

  // Validates `options` (only the address, credentials, db and timeouts are used) and starts the
  // thread, which connects in the background. Errors: INVALID_ARGUMENT (bad options or no
  // on_message hook).
  static absl::StatusOr<std::unique_ptr<Subscriber>> Create(Options options, SubscriberHooks hooks,
                                                            Clock& clock = SteadyClock());
  ~Subscriber();  // Shutdown()
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  // Subscribes to channels (SUBSCRIBE) or patterns (PSUBSCRIBE) and waits until the server has
  // confirmed all of them, measured on the deadline's own clock. Subscriptions are kept across
  // reconnects until unsubscribed. Deadline::Infinite() waits for the confirmation for as long as
  // it takes (the subscriber itself never blocks on the server: see Options::command_timeout).
  // Errors: DEADLINE_EXCEEDED (not confirmed in time: still pending, applied on connect),
  // INVALID_ARGUMENT (empty list), FAILED_PRECONDITION (after Shutdown), CANCELLED (Shutdown
  // while waiting).
  absl::Status Subscribe(Deadline deadline, std::vector<std::string> channels)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status PSubscribe(Deadline deadline, std::vector<std::string> patterns)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Stops delivering these channels/patterns. Returns once queued (no confirmation wait).
  absl::Status Unsubscribe(std::vector<std::string> channels) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status PUnsubscribe(std::vector<std::string> patterns) ABSL_LOCKS_EXCLUDED(mu_);

  SubscriberStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

  // Stops the thread and closes the connection; no hook runs after it returns. Idempotent.
  // REQUIRES: not called from a hook.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  enum class Op { kSubscribe, kPSubscribe, kUnsubscribe, kPUnsubscribe };
  struct Request {
    Op op;
    std::vector<std::string> names;
  };

  Subscriber(Options options, SubscriberHooks hooks, Clock& clock);
  absl::Status Change(Op op, std::vector<std::string> names, std::optional<Deadline> wait)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Loop();
  void Wake();
  // Runs a hook; an exception it throws is counted and dropped.
  template <typename F>
  void CallHook(F&& hook) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string name_;  // `redis subscriber "<server or master>"`: prefixes every error
  const Options options_;
  const SubscriberHooks hooks_;
  Clock& clock_;
  std::unique_ptr<internal::PrimaryLocator> locator_;
  int wake_fd_ = -1;  // eventfd: makes the thread look at requests_ / stop_ now

  mutable Mutex mu_;
  CondVar cv_;  // confirmations, stop_
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  std::set<std::string> channels_ ABSL_GUARDED_BY(mu_);  // wanted
  std::set<std::string> patterns_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> active_channels_ ABSL_GUARDED_BY(mu_);  // confirmed on this connection
  std::set<std::string> active_patterns_ ABSL_GUARDED_BY(mu_);
  std::vector<Request> requests_ ABSL_GUARDED_BY(mu_);  // to send on the current connection
  uint64_t messages_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t reconnects_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t hook_errors_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace keel::redis
