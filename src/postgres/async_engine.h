// The engine under Pool::AsyncExecute / AsyncPipeline: a few connections of its own, each
// carrying many callers' statement batches back to back in libpq pipeline mode (one Sync per
// batch), all driven by one thread polling their sockets. A waiting call is an entry in a queue,
// not a thread. Private to src/postgres.
//
// Per batch: its statements and a Sync are queued in libpq's output buffer and flushed without
// waiting; results come back in order, matched to the oldest batch in flight. A batch whose
// deadline passes completes with DEADLINE_EXCEEDED at once and stays in the queue as abandoned:
// its results are read and dropped when they come, so the connection survives a paused server.
// A connection that still owes abandoned results after `late_timeout`, or that fails, is closed;
// its batches in flight complete UNAVAILABLE (a statement may have run).
//
// Thread safety: Submit, Stats and Shutdown are thread-safe; everything else runs on the
// engine's thread.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/postgres/connection.h"
#include "keel/postgres/pool.h"
#include "keel/sync.h"

namespace keel::postgres::internal {

using Batch = std::vector<absl::StatusOr<Rows>>;

using AsyncEngineStats = AsyncStats;

class AsyncEngine {
 public:
  // Opens one connection by the deadline (runs on a thread of its own: connecting, session setup
  // and on_connect block).
  using Connector = std::function<absl::StatusOr<std::unique_ptr<Connection>>(Deadline)>;
  struct Settings {
    std::string component;  // `postgres pool "<name>"`
    int connections = 1;
    int max_in_flight = 1024;
    Duration connect_timeout = std::chrono::seconds(1);
    Duration late_timeout = std::chrono::seconds(10);
    Duration reconnect_delay = std::chrono::milliseconds(100);
  };
  AsyncEngine(Settings settings, Connector connect);
  ~AsyncEngine();  // Shutdown()
  AsyncEngine(const AsyncEngine&) = delete;
  AsyncEngine& operator=(const AsyncEngine&) = delete;

  // Queues `statements` as one pipelined batch (one entry per statement, as ExecPipeline).
  Future<Batch> Submit(Deadline deadline, std::vector<Statement> statements)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Completes everything queued or in flight with CANCELLED, closes the connections and joins
  // the threads. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);
  AsyncEngineStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Op;
  struct Lane;
  void Loop();
  void Wake();
  // Engine thread only.
  void Assign(std::vector<std::unique_ptr<Op>>& incoming);
  void Drive(Lane& lane, TimePoint now);
  void Read(Lane& lane);
  void FailLane(Lane& lane, const std::string& why);
  void Expire(Lane& lane, TimePoint now);
  void Complete(Op& op, absl::StatusOr<Batch> result);

  const Settings settings_;
  const Connector connect_;
  int wake_fd_ = -1;
  mutable Mutex mu_;
  std::vector<std::unique_ptr<Op>> incoming_ ABSL_GUARDED_BY(mu_);
  // Connections opened by connect threads, for the engine thread to adopt: (lane, result).
  std::vector<std::pair<int, absl::StatusOr<std::unique_ptr<Connection>>>> connected_
      ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  AsyncEngineStats stats_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Lane>> lanes_;  // engine thread only
  std::once_flag joined_;
  std::thread thread_;
};

}  // namespace keel::postgres::internal
