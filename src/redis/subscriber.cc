#include "keel/redis/subscriber.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/redis/connection.h"
#include "redis/sentinel.h"

namespace keel::redis {
namespace {

using keel::internal::FormatDuration;
using keel::internal::StrCat;

// With no traffic for this long the thread sends PING; no answer within command_timeout means
// the connection is dead (a paused server or a silent network cut that TCP has not noticed).
constexpr Duration kHealthCheckInterval = std::chrono::seconds(5);

std::string_view CommandFor(int op) {
  static constexpr std::string_view kNames[] = {"SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE",
                                                "PUNSUBSCRIBE"};
  return kNames[op];
}

absl::Status SendNames(Connection& conn, std::string_view command,
                       const std::vector<std::string>& names, Deadline deadline) {
  if (names.empty()) return absl::OkStatus();
  std::vector<std::string_view> argv;
  argv.reserve(names.size() + 1);
  argv.push_back(command);
  for (const std::string& n : names) argv.push_back(n);
  return conn.Send(deadline, argv);
}

// `redis subscriber "<server or master name>"`, the prefix of the subscriber's errors.
std::string SubscriberName(const Options& options) {
  return StrCat("redis subscriber \"",
                options.sentinel_mode() ? options.master_name : options.server.ToString(), "\"");
}

}  // namespace

Subscriber::Subscriber(Options options, SubscriberHooks hooks, Clock& clock)
    : name_(SubscriberName(options)),
      options_(std::move(options)),
      hooks_(std::move(hooks)),
      clock_(clock),
      locator_(std::make_unique<internal::PrimaryLocator>(options_)) {}

absl::StatusOr<std::unique_ptr<Subscriber>> Subscriber::Create(Options options,
                                                               SubscriberHooks hooks,
                                                               Clock& clock) {
  KEEL_RETURN_IF_ERROR(options.Validate());
  if (!hooks.on_message) {
    return absl::InvalidArgumentError(
        StrCat(SubscriberName(options), ": hooks.on_message is required"));
  }
  std::unique_ptr<Subscriber> sub(new Subscriber(std::move(options), std::move(hooks), clock));
  sub->wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (sub->wake_fd_ < 0) return absl::InternalError(StrCat(sub->name_, ": eventfd failed"));
  sub->thread_ = std::thread([s = sub.get()] { s->Loop(); });
  return sub;
}

Subscriber::~Subscriber() {
  Shutdown();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void Subscriber::Shutdown() {
  {
    MutexLock lock(mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  Wake();
  if (thread_.joinable()) thread_.join();
}

void Subscriber::Wake() {
  const uint64_t one = 1;
  // A full counter (impossible in practice) still leaves the fd readable: ignoring is safe.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

SubscriberStats Subscriber::Stats() const {
  MutexLock lock(mu_);
  return {.connected = connected_,
          .messages_total = messages_,
          .reconnects_total = reconnects_,
          .hook_errors_total = hook_errors_};
}

template <typename F>
void Subscriber::CallHook(F&& hook) {
  // User code must not end the subscriber's thread (an escaping exception would terminate the
  // process) nor skip the bookkeeping after it: catch everything, count it, go on.
  try {
    hook();
  } catch (...) {
    MutexLock lock(mu_);
    ++hook_errors_;
  }
}

absl::Status Subscriber::Subscribe(Deadline deadline, std::vector<std::string> channels) {
  return Change(Op::kSubscribe, std::move(channels), deadline);
}
absl::Status Subscriber::PSubscribe(Deadline deadline, std::vector<std::string> patterns) {
  return Change(Op::kPSubscribe, std::move(patterns), deadline);
}
absl::Status Subscriber::Unsubscribe(std::vector<std::string> channels) {
  return Change(Op::kUnsubscribe, std::move(channels), std::nullopt);
}
absl::Status Subscriber::PUnsubscribe(std::vector<std::string> patterns) {
  return Change(Op::kPUnsubscribe, std::move(patterns), std::nullopt);
}

absl::Status Subscriber::Change(Op op, std::vector<std::string> names,
                                std::optional<Deadline> wait) {
  if (names.empty()) {
    return absl::InvalidArgumentError(
        StrCat(name_, ": ", CommandFor(static_cast<int>(op)), " needs a name"));
  }
  MutexLock lock(mu_);
  if (stop_) return absl::FailedPreconditionError(StrCat(name_, ": shut down"));
  const bool channel = op == Op::kSubscribe || op == Op::kUnsubscribe;
  std::set<std::string>& wanted = channel ? channels_ : patterns_;
  for (const std::string& n : names) {
    if (op == Op::kSubscribe || op == Op::kPSubscribe) {
      wanted.insert(n);
    } else {
      wanted.erase(n);
    }
  }
  // While disconnected the wanted sets are enough: the thread subscribes to all on connect.
  if (connected_) requests_.push_back({op, names});
  Wake();
  if (!wait) return absl::OkStatus();
  const std::set<std::string>& active = channel ? active_channels_ : active_patterns_;
  // On the deadline's own clock (API rule 1). WaitUntil is non-const only because a clock may
  // keep waiter bookkeeping (ManualClock); the Deadline holds its clock const because it only
  // reads the time, so casting the const away is sound here.
  Clock& wait_clock = const_cast<Clock&>(wait->clock());
  const bool confirmed = wait_clock.WaitUntil(mu_, cv_, wait->time(), [&] {
    mu_.AssertHeld();
    return stop_ || std::all_of(names.begin(), names.end(),
                                [&](const std::string& n) { return active.count(n) > 0; });
  });
  if (stop_) return absl::CancelledError(StrCat(name_, ": shut down while subscribing"));
  if (!confirmed) {
    return absl::DeadlineExceededError(
        StrCat(name_, ": ", CommandFor(static_cast<int>(op)),
               " not confirmed within the deadline (it stays pending and applies on connect)"));
  }
  return absl::OkStatus();
}

void Subscriber::Loop() {
  Duration backoff = kMinBackoff;
  bool ever_connected = false;
  while (true) {
    {
      MutexLock lock(mu_);
      if (stop_) return;
    }
    auto conn = locator_->ConnectPrimary(Deadline::After(options_.connect_timeout));
    if (!conn.ok()) {
      if (hooks_.on_error) CallHook([&] { hooks_.on_error(conn.status()); });
      MutexLock lock(mu_);
      clock_.WaitUntil(mu_, cv_, clock_.Now() + backoff, [&] {
        mu_.AssertHeld();
        return stop_;
      });
      backoff = std::min(backoff * 2, kMaxBackoff);
      continue;
    }
    backoff = kMinBackoff;
    std::vector<std::string> channels, patterns;
    {
      MutexLock lock(mu_);
      channels.assign(channels_.begin(), channels_.end());
      patterns.assign(patterns_.begin(), patterns_.end());
      requests_.clear();  // the snapshot above covers them
      connected_ = true;
    }
    const Deadline send_by = Deadline::After(options_.command_timeout);
    absl::Status status;
    if (hooks_.on_connect) {
      status = absl::InternalError(StrCat(name_, ": the on_connect hook threw"));
      CallHook([&] { status = hooks_.on_connect(**conn, send_by); });
    }
    if (status.ok()) status = SendNames(**conn, "SUBSCRIBE", channels, send_by);
    if (status.ok()) status = SendNames(**conn, "PSUBSCRIBE", patterns, send_by);
    if (status.ok() && ever_connected) {
      {
        MutexLock lock(mu_);
        ++reconnects_;
      }
      // Before any message on the new connection is delivered: a cache clears itself first and
      // then sees every invalidation published from now on.
      if (hooks_.on_reconnect) CallHook([&] { hooks_.on_reconnect(); });
    }
    ever_connected = true;

    TimePoint last_rx = clock_.Now();
    std::optional<TimePoint> ping_sent;
    while (status.ok()) {
      std::vector<Request> requests;
      {
        MutexLock lock(mu_);
        if (stop_) break;
        requests.swap(requests_);
      }
      for (const Request& r : requests) {
        status = SendNames(**conn, CommandFor(static_cast<int>(r.op)), r.names,
                           Deadline::After(options_.command_timeout));
        if (!status.ok()) break;
      }
      if (!status.ok()) break;
      if (!ping_sent && clock_.Now() - last_rx >= kHealthCheckInterval) {
        static constexpr std::string_view kPing[] = {"PING"};
        status = (*conn)->Send(Deadline::After(options_.command_timeout), kPing);
        if (!status.ok()) break;
        ping_sent = clock_.Now();
      }
      const TimePoint wake_at =
          ping_sent ? *ping_sent + options_.command_timeout : last_rx + kHealthCheckInterval;
      absl::StatusOr<std::optional<Reply>> got =
          (*conn)->Receive(Deadline::At(wake_at, clock_), wake_fd_);
      if (!got.ok()) {
        status = got.status();
        break;
      }
      if (!got->has_value()) {
        uint64_t drained;
        [[maybe_unused]] ssize_t n = read(wake_fd_, &drained, sizeof(drained));
        if (ping_sent && clock_.Now() >= *ping_sent + options_.command_timeout) {
          status = absl::UnavailableError(
              StrCat(name_, ": no answer to PING from ", (*conn)->endpoint().ToString(),
                     " within command_timeout ", FormatDuration(options_.command_timeout)));
        }
        continue;
      }
      last_rx = clock_.Now();
      ping_sent.reset();
      const Reply& reply = **got;
      if (reply.is_error()) {
        if (hooks_.on_error) {
          CallHook([&] { hooks_.on_error(ServerErrorToStatus(name_, reply.str())); });
        }
        continue;
      }
      if (!reply.is_array() || reply.elements().empty()) continue;
      const auto& e = reply.elements();
      const std::string& kind = e[0].str();
      if (kind == "message" && e.size() == 3) {
        {
          MutexLock lock(mu_);
          ++messages_;
        }
        Message m{.channel = e[1].str(), .payload = e[2].str()};
        for (const Reply& element : e[2].elements()) m.elements.push_back(element.str());
        m.nil_payload = e[2].is_nil();
        CallHook([&] { hooks_.on_message(m); });
      } else if (kind == "pmessage" && e.size() == 4) {
        {
          MutexLock lock(mu_);
          ++messages_;
        }
        CallHook([&] {
          hooks_.on_message(
              Message{.channel = e[2].str(), .payload = e[3].str(), .pattern = e[1].str()});
        });
      } else if (e.size() >= 2 && (kind == "subscribe" || kind == "psubscribe" ||
                                   kind == "unsubscribe" || kind == "punsubscribe")) {
        {
          MutexLock lock(mu_);
          std::set<std::string>& active = kind[0] == 'p' ? active_patterns_ : active_channels_;
          if (kind == "subscribe" || kind == "psubscribe") {
            active.insert(e[1].str());
          } else {
            active.erase(e[1].str());
          }
        }
        cv_.SignalAll();
      }
    }
    {
      MutexLock lock(mu_);
      connected_ = false;
      active_channels_.clear();
      active_patterns_.clear();
      if (stop_) return;
    }
    if (!status.ok()) {
      locator_->Forget();
      if (hooks_.on_error) CallHook([&] { hooks_.on_error(status); });
    }
  }
}

}  // namespace keel::redis
