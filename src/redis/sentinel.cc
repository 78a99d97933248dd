#include "redis/sentinel.h"

#include <charconv>
#include <utility>

#include "keel/internal/redact.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"

namespace keel::redis::internal {

using keel::internal::StrCat;

absl::StatusOr<Endpoint> PrimaryLocator::Primary(Deadline deadline) {
  if (!options_.sentinel_mode()) return options_.server;
  {
    MutexLock lock(mu_);
    if (cached_) return *cached_;
  }
  KEEL_ASSIGN_OR_RETURN(Endpoint found, AskSentinels(deadline));
  MutexLock lock(mu_);
  cached_ = found;
  ++discoveries_;
  return found;
}

void PrimaryLocator::Forget() {
  if (!options_.sentinel_mode()) return;
  MutexLock lock(mu_);
  cached_.reset();
}

uint64_t PrimaryLocator::discoveries() const {
  MutexLock lock(mu_);
  return discoveries_;
}

absl::StatusOr<Endpoint> PrimaryLocator::AskSentinels(Deadline deadline) const {
  // Sentinels take no AUTH/SELECT of the data servers: connect with address-only options.
  Options plain;
  plain.connect_timeout = options_.connect_timeout;
  plain.command_timeout = options_.command_timeout;
  std::string errors;
  for (const Endpoint& sentinel : options_.sentinels) {
    if (deadline.Expired()) break;
    const Deadline ask = Deadline::Min(deadline, Deadline::After(options_.connect_timeout));
    auto conn = Connection::Connect(sentinel, plain, ask);
    absl::StatusOr<Reply> reply =
        conn.ok()
            ? (*conn)->Command(ask, "SENTINEL", "get-master-addr-by-name", options_.master_name)
            : absl::StatusOr<Reply>(conn.status());
    if (reply.ok() && reply->is_array() && reply->elements().size() == 2 &&
        reply->elements()[0].is_string() && reply->elements()[1].is_string()) {
      const std::string& port_text = reply->elements()[1].str();
      int port = 0;
      auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
      if (ec == std::errc() && end == port_text.data() + port_text.size()) {
        return Endpoint{reply->elements()[0].str(), port};
      }
    }
    // A failed call's message already names the sentinel (`redis "host:port": ...`).
    const std::string why =
        !reply.ok()       ? std::string(reply.status().message())
        : reply->is_nil() ? StrCat("redis \"", sentinel.ToString(), "\": does not know the master")
                          : StrCat("redis \"", sentinel.ToString(), "\": unexpected reply ",
                                   reply->DebugString());
    if (!errors.empty()) errors += "; ";
    errors += why;
  }
  if (deadline.Expired() && errors.empty()) {
    return absl::DeadlineExceededError(
        StrCat("redis sentinel \"", options_.master_name, "\": no primary within the deadline"));
  }
  return absl::UnavailableError(StrCat("redis sentinel \"", options_.master_name,
                                       "\": no primary (",
                                       keel::internal::RedactCredentials(errors), ")"));
}

absl::StatusOr<std::unique_ptr<Connection>> PrimaryLocator::ConnectPrimary(Deadline deadline) {
  KEEL_ASSIGN_OR_RETURN(Endpoint primary, Primary(deadline));
  auto conn = Connection::Connect(primary, options_, deadline);
  if (!options_.sentinel_mode()) return conn;
  if (!conn.ok()) {
    if (conn.status().code() == absl::StatusCode::kUnavailable) Forget();
    return conn;
  }
  // A sentinel may still name the old primary for a moment after a failover, and a restarted old
  // primary comes back as a replica: only a server that says it is a master is used.
  const Deadline check = Deadline::Min(deadline, Deadline::After(options_.connect_timeout));
  absl::StatusOr<Reply> role = (*conn)->Command(check, "ROLE");
  if (!role.ok()) {
    Forget();
    return role.status().code() == absl::StatusCode::kDeadlineExceeded && !deadline.Expired()
               ? absl::UnavailableError(std::string(role.status().message()))
               : role.status();
  }
  if (!role->is_array() || role->elements().empty() || role->elements()[0].str() != "master") {
    Forget();
    return absl::UnavailableError(
        StrCat("redis \"", primary.ToString(), "\": sentinel named it as ", "primary of \"",
               options_.master_name, "\" but ROLE says ", role->DebugString()));
  }
  return conn;
}

}  // namespace keel::redis::internal
