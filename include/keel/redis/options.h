// keel/redis/options.h: where a Redis client connects and how long it waits.
//
// Defines `keel::redis::Endpoint` and `keel::redis::Options`, built by hand with designated
// initializers or from a URL:
//
//   redis://[[user]:password@]host[:port][/db]
//   redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/master_name[/db]
//
// Hosts may be names, IPv4 addresses or bracketed IPv6 addresses (`[::1]:6379`). The port
// defaults to 6379 (26379 for sentinels). User and password are percent-decoded, so a password
// holding `@`, `:` or `/` is written `%40`, `%3A`, `%2F`. With `redis+sentinel://` the
// credentials are those of the Redis servers, not of the sentinels.
//
// Thread safety: plain values.
//
//   auto options = keel::redis::Options::FromUrl("redis://:s3cret@10.0.0.5:6379/2");
//   if (!options.ok()) return options.status();   // INVALID_ARGUMENT naming the bad part
//   options->command_timeout = 200ms;
//   options->pool.max_size = 16;
//   auto client = keel::redis::Client::Create(*options);
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/async/io_loop.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/pool/pool.h"
#include "keel/resilience/backoff.h"

namespace keel::redis {

class Connection;

inline constexpr int kDefaultPort = 6379;
inline constexpr int kDefaultSentinelPort = 26379;

// One TCP address.
struct Endpoint {
  std::string host = "127.0.0.1";
  int port = kDefaultPort;

  // "host:port", or "[v6]:port" for IPv6 literals.
  std::string ToString() const;
  friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

// How a Client runs its calls (Options::transport).
enum class Transport {
  // Calls share a few connections per server, driven by the client's I/O thread; commands are
  // pipelined automatically (docs/redis-transport.md). Transactions, Acquire() and blocking
  // commands still
  // use dedicated pooled connections.
  kMultiplexed,
  // Every call leases a pooled connection for its whole round trip (keel before the
  // multiplexed transport).
  kPooled,
};

// The multiplexed transport's limits (Options::mux).
struct MuxOptions {
  // Multiplexed connections to the server. One connection already carries what one Redis
  // thread can serve; a second helps only when the client's one I/O thread, not Redis, is the
  // bottleneck. Default: 1. Range: 1..64.
  int connections = 1;
  // Calls queued or awaiting replies per connection; one more is refused at once with
  // RESOURCE_EXHAUSTED and a retry-after hint, so a stalled server costs memory and waiting
  // callers only up to this bound. Default: 4096.
  size_t max_queued_calls = 4096;
  // Request bytes queued or awaiting replies per connection, bounded the same way (large
  // values, long pipelines). Default: 64 MiB.
  size_t max_bytes_in_flight = size_t{64} << 20;
};

// Hooks on the connections a Client opens (Options::connection_hooks), for session state every
// connection must carry, such as `CLIENT TRACKING on REDIRECT <id>` (keel::redis::NearCacheTier
// in per-key mode). A Subscriber does not run them (it has SubscriberHooks::on_connect).
struct ConnectionHooks {
  // Runs on every connection the client opens, multiplexed or pooled, after its setup (AUTH,
  // SELECT, ROLE in Sentinel mode) and before any call uses it, on the thread making the
  // connection (a connector or a caller, never the I/O thread), bounded by `deadline` (at most
  // connect_timeout). What it leaves in force is the connection's configured state, not a
  // changed session (Connection::session_clean stays true). A non-OK status, or a throw, fails
  // the connect: UNAVAILABLE naming the hook, counted as a connect failure, reconnect backoff
  // applied. Default: none.
  std::function<absl::Status(Connection& connection, Deadline deadline)> on_connect = nullptr;
  // Runs when a multiplexed connection that was up is closed: lost, replaced after
  // late_reply_timeout, or closed by Client::Reconnect (not at Shutdown). On the client's I/O
  // thread: it must not block or call the client. Pooled connections are closed by the pool
  // (idle, broken) without it. Default: none.
  std::function<void()> on_lost = nullptr;
};

// How a Client (and a Subscriber) reaches Redis. Validate() (called by every Create) names the
// first field that is wrong.
struct Options {
  // The Redis server. Ignored when `sentinels` is non-empty (the primary is discovered).
  // Default: 127.0.0.1:6379.
  Endpoint server;

  // Sentinels to ask for the current primary of `master_name`; non-empty switches the client to
  // Sentinel mode. Sentinels are tried in order until one answers. Default: none.
  std::vector<Endpoint> sentinels;

  // The name the sentinels monitor the primary under. REQUIRED in Sentinel mode.
  std::string master_name;

  // ACL user for `AUTH user password` (Redis 6+). Without it, `AUTH password` authenticates the
  // `default` user. Default: none.
  std::optional<std::string> user;

  // Password sent with AUTH on every new connection. Default: none (no AUTH).
  std::optional<std::string> password;

  // Database selected with SELECT on every new connection. Default: 0 (no SELECT sent).
  int db = 0;

  // Upper bound on establishing a connection (TCP connect plus AUTH/SELECT/ROLE), further
  // bounded by the caller's deadline. Keep it short: a connect that takes longer than a few
  // round trips means the server is down or overloaded. Default: 1 s.
  Duration connect_timeout = std::chrono::seconds(1);

  // Socket timeout applied when the caller's deadline is infinite, so a call never blocks
  // forever on a paused server. A finite caller deadline always wins (also when longer, which
  // blocking commands such as BLPOP need). Default: 1 s.
  Duration command_timeout = std::chrono::seconds(1);

  // How long a connection may keep owing late replies (the replies of calls that timed out,
  // which the next call on it reads and discards first) before the client closes it instead.
  // While Redis is paused or slow, keeping the connection is what avoids a reconnect storm: a new
  // connection would wait just as long. Only a connection that stays behind for longer is
  // replaced. Raise it for servers that stall for long (big RDB forks); lower it to replace
  // connections stuck behind a cut network path sooner. Default: 10 s.
  Duration late_reply_timeout = std::chrono::seconds(10);

  // Delays between connection attempts after a connect failed (refused, unreachable, timed
  // out): while it runs, calls that need a new connection fail at once with UNAVAILABLE carrying
  // the last connect error, without touching the network. Doubles from `base` up to `cap`, with
  // equal jitter so many processes do not reconnect in step; a successful connect resets it.
  // A shorter cap finds a restarted server sooner; a longer one spares a struggling one.
  // Default: equal jitter from 10 ms up to 500 ms.
  Backoff::Options reconnect_backoff = {
      .kind = Backoff::Kind::kEqualJitter,
      .base = std::chrono::milliseconds(10),
      .cap = std::chrono::milliseconds(500),
  };

  // How calls run: multiplexed (the default) or one pooled connection per call.
  Transport transport = Transport::kMultiplexed;

  // Limits of the multiplexed transport (ignored with Transport::kPooled).
  MuxOptions mux;

  // The I/O loop the multiplexed transport runs on (keel/async/io_loop.h). Share one loop among
  // several clients (Redis clients, PostgreSQL pools' async calls) to run all their sockets on
  // one thread; the client keeps it alive and, on Shutdown, fences its callbacks off it without
  // stopping it. If the loop is stopped under the client, its calls fail naming the loop.
  // Ignored with Transport::kPooled. Default: none (the client starts a loop of its own,
  // stopped with the client).
  std::shared_ptr<IoLoop> io_loop;

  // The client's connection pool (keel/pool/pool.h; HikariCP's defaults). Its `name` appears in
  // every pool error and metric. Redis runs commands on one thread, so a handful of connections
  // per process saturates it; raise max_size only for blocking commands or long pipelines.
  // With the multiplexed transport the pool serves only transactions, Acquire() and blocking
  // commands, and opens its connections on demand (min_idle 0 unless set).
  // Default: PoolOptions{} named "redis" (10 connections, kept open in pooled mode).
  PoolOptions pool = {.name = "redis"};

  // Hooks on every connection the client opens (see ConnectionHooks). Default: none.
  ConnectionHooks connection_hooks = {};

  // Parses a redis:// or redis+sentinel:// URL (grammar in the banner); fields the URL does not
  // carry keep their defaults. INVALID_ARGUMENT naming the part that is wrong (scheme, host,
  // port, db, master name, user, password); passwords are never echoed in errors.
  static absl::StatusOr<Options> FromUrl(std::string_view url);

  // OK, or INVALID_ARGUMENT naming the first bad field
  // (`redis.connect_timeout must be positive, got -1ms`). The pool options are checked by
  // the pool itself (Client::Create).
  absl::Status Validate() const;

  bool sentinel_mode() const { return !sentinels.empty(); }
};

}  // namespace keel::redis
