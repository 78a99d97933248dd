// The engine under Pool::AsyncExecute / AsyncPipeline: a few connections of its own, each
// carrying many callers' statement batches back to back in libpq pipeline mode (one Sync per
// batch), all driven by an I/O loop (keel/async/io_loop.h): the pool's own, or one shared with
// other clients (PoolOptions::Async::io_loop). A waiting call is an entry in a queue, not a
// thread. Private to src/postgres.
//
// Per batch: its statements and a Sync are queued in libpq's output buffer and flushed without
// waiting; results come back in order, matched to the oldest batch in flight. A batch whose
// deadline passes completes with DEADLINE_EXCEEDED at once and stays in the queue as abandoned:
// its results are read and dropped when they come, so the connection survives a paused server.
// A connection that still owes abandoned results after `late_timeout`, or that fails, is closed;
// its batches in flight complete UNAVAILABLE (a statement may have run).
//
// On the loop: a task (posted by the first Submit or connect result since the last one ran)
// adopts new connections and calls, sends, and arms one timer at the earliest deadline (at most
// 1 s away: deadlines on an injected clock and late_timeout are checked at least that often); a
// watcher per connection reads results and finishes flushing. Connecting blocks (session setup,
// on_connect), so it runs on a connector thread per attempt, bounded by connect_timeout, and
// hands the connection to the loop.
//
// Thread safety: Submit, Stats and Shutdown are thread-safe; everything else runs on the loop
// thread.
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
#include "keel/async/io_loop.h"
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
    // The loop to run on; none: one of the engine's own, named `loop_name`, stopped with it.
    std::shared_ptr<IoLoop> io_loop;
    std::string loop_name = "postgres";
  };
  // Never fails: an engine whose loop cannot run (a stopped shared loop, no epoll) refuses every
  // Submit with the reason.
  AsyncEngine(Settings settings, Connector connect);
  ~AsyncEngine();  // Shutdown()
  AsyncEngine(const AsyncEngine&) = delete;
  AsyncEngine& operator=(const AsyncEngine&) = delete;

  // Queues `statements` as one pipelined batch (one entry per statement, as ExecPipeline).
  Future<Batch> Submit(Deadline deadline, std::vector<Statement> statements)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Completes everything queued or in flight with CANCELLED, closes the connections, fences the
  // engine off its loop (no callback of it runs after) and joins the connector threads; stops
  // the loop if it is the engine's own. Idempotent. Not from one of the engine's own completion
  // callbacks (they run inside the engine's reads).
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);
  AsyncEngineStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Op;
  struct Lane;
  // Posts Pump unless one is queued. REQUIRES: mu_ held; the caller posts when true.
  bool NeedPump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PostPump();
  // Loop thread only.
  void Pump() ABSL_LOCKS_EXCLUDED(mu_);
  void OnTimer() ABSL_LOCKS_EXCLUDED(mu_);
  void OnReady(Lane& lane, uint32_t events);
  // Watches the lane's socket for what it waits for (reads; writes while flushing), or unwatches
  // it when the lane is not up. Before a connection is closed.
  void UpdateWatch(Lane& lane);
  void Rearm();
  // Completes everything with CANCELLED `why` and closes the connections.
  void CloseAll(const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);
  // Empties the engine: returns the calls queued, waiting and in flight (to complete outside),
  // drops the connections opened and not yet taken and every lane's connection. `unwatch`: on the
  // loop thread, the lanes' watches still registered, so they are marked down and unwatched too.
  std::vector<std::unique_ptr<Op>> TakeAll(bool unwatch) ABSL_LOCKS_EXCLUDED(mu_);
  void LoopStopped() ABSL_LOCKS_EXCLUDED(mu_);
  void Assign(std::vector<std::unique_ptr<Op>>& incoming);
  void Drive(Lane& lane, TimePoint now);
  void Read(Lane& lane);
  void FailLane(Lane& lane, const std::string& why);
  void Expire(Lane& lane, TimePoint now);
  void Complete(Op& op, absl::StatusOr<Batch> result);

  const Settings settings_;
  const Connector connect_;
  std::shared_ptr<IoLoop> loop_;
  bool own_loop_ = false;
  std::unique_ptr<IoLoop::Scope> scope_;  // null when the loop could not be used: broken_ says why
  absl::Status broken_;
  mutable Mutex mu_;
  std::vector<std::unique_ptr<Op>> incoming_ ABSL_GUARDED_BY(mu_);
  // Connections opened by connect threads, for the engine thread to adopt: (lane, result).
  std::vector<std::pair<int, absl::StatusOr<std::unique_ptr<Connection>>>> connected_
      ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_stopped_ ABSL_GUARDED_BY(mu_) = false;  // stop_ because the loop stopped
  bool pump_posted_ ABSL_GUARDED_BY(mu_) = false;
  AsyncEngineStats stats_ ABSL_GUARDED_BY(mu_);
  // Loop thread only (and the shutting-down thread after the fence).
  std::vector<std::unique_ptr<Lane>> lanes_;
  IoLoop::TimerId timer_ = 0;
  TimePoint timer_at_ = TimePoint::max();
  std::once_flag shut_;
};

}  // namespace keel::postgres::internal
