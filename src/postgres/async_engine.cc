// The pipelined async engine (see async_engine.h).
#include "async_engine.h"

#include <libpq-fe.h>
#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/strings.h"
#include "keel/status.h"
#include "libpq_io.h"

namespace keel::postgres::internal {

using keel::internal::StrCat;

struct AsyncEngine::Op {
  std::vector<Statement> statements;
  Deadline deadline = Deadline::Infinite();
  Promise<Batch> promise;
  Batch results;
  // While reading: the result of the statement being read, or its error.
  std::optional<Rows> rows;
  absl::Status error;
  bool abandoned = false;  // completed (deadline); results are read and dropped
  TimePoint abandoned_at{};
};

struct AsyncEngine::Lane final : IoLoop::Watcher {
  enum class State { kDown, kConnecting, kUp };
  explicit Lane(AsyncEngine& engine) : engine(engine) {}
  void OnReady(uint32_t events) override { engine.OnReady(*this, events); }

  AsyncEngine& engine;
  State state = State::kDown;
  std::unique_ptr<Connection> conn;
  std::deque<std::unique_ptr<Op>> waiting;    // not sent yet
  std::deque<std::unique_ptr<Op>> in_flight;  // sent, results owed, oldest first
  bool flushing = false;                      // libpq holds output not yet written
  TimePoint retry_at{};                       // after a failed connect
  std::string last_error;
  std::thread connector;      // opening `conn` (connecting blocks: see Connector)
  IoLoop::WatchId watch = 0;  // the socket's watch while up
  uint32_t watched_events = 0;
  PGconn* pg() const { return conn ? conn->raw() : nullptr; }
  size_t load() const { return waiting.size() + in_flight.size(); }
};

namespace {
// Deadlines on an injected clock, and late_timeout, are checked at least this often while calls
// are queued or owed.
constexpr Duration kMaxTimerWait = std::chrono::seconds(1);
}  // namespace

AsyncEngine::AsyncEngine(Settings settings, Connector connect)
    : settings_(std::move(settings)), connect_(std::move(connect)) {
  for (int i = 0; i < std::max(1, settings_.connections); ++i) {
    lanes_.push_back(std::make_unique<Lane>(*this));
  }
  loop_ = settings_.io_loop;
  if (loop_ == nullptr) {
    absl::StatusOr<std::shared_ptr<IoLoop>> own = IoLoop::Create({.name = settings_.loop_name});
    if (!own.ok()) {
      broken_ = absl::InternalError(StrCat(settings_.component, ": ", own.status().message()));
      return;
    }
    loop_ = std::move(*own);
    own_loop_ = true;
  }
  absl::StatusOr<std::unique_ptr<IoLoop::Scope>> scope =
      loop_->OpenScope(settings_.component, [this] { LoopStopped(); });
  if (!scope.ok()) {
    broken_ = absl::FailedPreconditionError(
        StrCat(settings_.component, ": async.io_loop \"", loop_->name(), "\" is stopped"));
    return;
  }
  scope_ = std::move(*scope);
}

AsyncEngine::~AsyncEngine() { Shutdown(); }

bool AsyncEngine::NeedPump() {
  if (pump_posted_) return false;
  pump_posted_ = true;
  return true;
}

void AsyncEngine::PostPump() {
  // Refused only once the loop stops (LoopStopped then fails what is queued) or after the fence.
  (void)scope_->Post([this] { Pump(); });
}

Future<Batch> AsyncEngine::Submit(Deadline deadline, std::vector<Statement> statements) {
  if (!broken_.ok()) return Future<Batch>::Ready(broken_);
  for (const Statement& st : statements) {
    absl::Status nul = CheckNoNul(settings_.component, StatementRef{st.sql, st.params});
    if (!nul.ok()) return Future<Batch>::Ready(std::move(nul));
  }
  if (deadline.Expired()) {
    return Future<Batch>::Ready(absl::DeadlineExceededError(
        StrCat(settings_.component, ": deadline expired before the call started")));
  }
  auto op = std::make_unique<Op>();
  op->statements = std::move(statements);
  op->deadline = deadline;
  Future<Batch> future = op->promise.future();
  bool post = false;
  {
    MutexLock lock(mu_);
    if (stop_) {
      return Future<Batch>::Ready(absl::FailedPreconditionError(
          loop_stopped_
              ? StrCat(settings_.component, ": its I/O loop \"", loop_->name(), "\" was stopped")
              : StrCat(settings_.component, ": shut down")));
    }
    if (stats_.in_flight >= static_cast<uint64_t>(settings_.max_in_flight)) {
      ++stats_.rejected_full_total;
      return Future<Batch>::Ready(WithRetryAfter(
          absl::ResourceExhaustedError(StrCat(settings_.component, ": ", settings_.max_in_flight,
                                              " async calls already in flight")),
          std::chrono::milliseconds(10)));
    }
    ++stats_.submitted_total;
    ++stats_.in_flight;
    incoming_.push_back(std::move(op));
    post = NeedPump();
  }
  if (post) PostPump();
  return future;
}

void AsyncEngine::Complete(Op& op, absl::StatusOr<Batch> result) {
  if (op.abandoned) return;
  {
    MutexLock lock(mu_);
    ++stats_.completed_total;
    --stats_.in_flight;
    if (!result.ok() && result.status().code() == absl::StatusCode::kDeadlineExceeded) {
      ++stats_.timed_out_total;
    }
  }
  op.abandoned = true;  // completed: nothing more is delivered to it
  op.promise.Set(std::move(result));
}

void AsyncEngine::Assign(std::vector<std::unique_ptr<Op>>& incoming) {
  for (std::unique_ptr<Op>& op : incoming) {
    Lane* best = lanes_.front().get();
    for (auto& lane : lanes_) {
      // Prefer a connection that is up, then the least loaded.
      const bool up = lane->state == Lane::State::kUp;
      const bool best_up = best->state == Lane::State::kUp;
      if ((up && !best_up) || (up == best_up && lane->load() < best->load())) best = lane.get();
    }
    best->waiting.push_back(std::move(op));
  }
  incoming.clear();
}

void AsyncEngine::FailLane(Lane& lane, const std::string& why) {
  for (auto& op : lane.in_flight) {
    Complete(*op, absl::UnavailableError(StrCat(
                      settings_.component, ": ", why,
                      "; the statements may or may not have run, and the connection is closed")));
  }
  lane.in_flight.clear();
  lane.flushing = false;
  lane.state = Lane::State::kDown;
  UpdateWatch(lane);  // before the socket closes
  lane.conn.reset();
}

void AsyncEngine::Expire(Lane& lane, TimePoint now) {
  for (auto it = lane.waiting.begin(); it != lane.waiting.end();) {
    if ((*it)->deadline.Expired()) {
      Complete(**it, absl::DeadlineExceededError(
                         StrCat(settings_.component, ": no connection to send on by the deadline",
                                lane.last_error.empty() ? "" : " (", lane.last_error,
                                lane.last_error.empty() ? "" : ")")));
      it = lane.waiting.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& op : lane.in_flight) {
    if (!op->abandoned && op->deadline.Expired()) {
      Complete(*op, absl::DeadlineExceededError(
                        StrCat(settings_.component,
                               ": no reply by the deadline; the connection is kept and the late "
                               "results will be dropped")));
      op->abandoned_at = now;
    }
  }
  if (!lane.in_flight.empty() && lane.in_flight.front()->abandoned &&
      lane.in_flight.front()->abandoned_at != TimePoint{} &&
      now - lane.in_flight.front()->abandoned_at > settings_.late_timeout) {
    FailLane(lane, StrCat("late results still owed after ",
                          keel::internal::FormatDuration(settings_.late_timeout)));
  }
}

void AsyncEngine::Drive(Lane& lane, TimePoint now) {
  if (lane.state == Lane::State::kDown && !lane.waiting.empty()) {
    if (now < lane.retry_at) {
      // Connecting failed a moment ago: fail fast with its error rather than pile up.
      for (auto& op : lane.waiting) {
        Complete(*op, absl::UnavailableError(StrCat(settings_.component, ": ", lane.last_error)));
      }
      lane.waiting.clear();
      return;
    }
    lane.state = Lane::State::kConnecting;
    int lane_index = 0;
    for (size_t i = 0; i < lanes_.size(); ++i) {
      if (lanes_[i].get() == &lane) lane_index = static_cast<int>(i);
    }
    {
      MutexLock lock(mu_);
      ++stats_.connects_total;
    }
    if (lane.connector.joinable()) lane.connector.join();  // the previous one, long finished
    lane.connector = std::thread([this, lane_index] {
      absl::StatusOr<std::unique_ptr<Connection>> conn =
          connect_(Deadline::After(settings_.connect_timeout));
      bool post = false;
      {
        MutexLock lock(mu_);
        connected_.emplace_back(lane_index, std::move(conn));
        post = NeedPump();
      }
      if (post) PostPump();
    });
    return;
  }
  if (lane.state != Lane::State::kUp) return;
  PGconn* pg = lane.pg();
  while (!lane.waiting.empty()) {
    std::unique_ptr<Op> op = std::move(lane.waiting.front());
    lane.waiting.pop_front();
    bool sent = true;
    for (const Statement& st : op->statements) {
      if (!SendOne(pg, StatementRef{st.sql, st.params}, /*simple=*/false)) {
        sent = false;
        break;
      }
    }
    if (sent) sent = PQpipelineSync(pg) != 0;
    if (!sent) {
      const std::string why = LibpqMessage(pg);
      lane.in_flight.push_back(std::move(op));
      FailLane(lane, "send failed: " + why);
      return;
    }
    lane.in_flight.push_back(std::move(op));
    lane.flushing = true;
  }
  if (lane.flushing) {
    const int flushed = PQflush(pg);
    if (flushed < 0) return FailLane(lane, "send failed: " + LibpqMessage(pg));
    lane.flushing = flushed == 1;
  }
}

void AsyncEngine::Read(Lane& lane) {
  PGconn* pg = lane.pg();
  if (!PQconsumeInput(pg)) return FailLane(lane, "connection lost: " + LibpqMessage(pg));
  int nulls = 0;
  while (!lane.in_flight.empty() && !PQisBusy(pg)) {
    Op& op = *lane.in_flight.front();
    PGresult* r = PQgetResult(pg);
    if (r == nullptr) {
      if (op.results.size() < op.statements.size() && (op.rows || !op.error.ok())) {
        // The end of one statement's results.
        if (op.error.ok()) {
          op.results.emplace_back(std::move(*op.rows));
        } else {
          op.results.emplace_back(std::move(op.error));
          op.error = absl::OkStatus();
        }
        op.rows.reset();
        nulls = 0;
        continue;
      }
      if (++nulls >= 2) break;  // libpq has nothing more until more input arrives
      continue;
    }
    nulls = 0;
    const ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      std::unique_ptr<Op> done = std::move(lane.in_flight.front());
      lane.in_flight.pop_front();
      if (done->abandoned) {
        MutexLock lock(mu_);
        ++stats_.late_results_dropped_total;
      } else {
        Complete(*done, std::move(done->results));
      }
      continue;
    }
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY) {
      op.rows.emplace(r);
    } else if (st == PGRES_PIPELINE_ABORTED) {
      PQclear(r);
      op.error = absl::AbortedError(
          StrCat(settings_.component, ": not run: an earlier statement of the batch failed"));
    } else {
      bool broken = false;
      op.error = StatusFromResult(settings_.component, r, pg, &broken);
      PQclear(r);
      if (broken) return FailLane(lane, "connection lost: " + std::string(op.error.message()));
    }
  }
  if (PQstatus(pg) != CONNECTION_OK) FailLane(lane, "connection lost: " + LibpqMessage(pg));
}

void AsyncEngine::UpdateWatch(Lane& lane) {
  if (lane.state != Lane::State::kUp || lane.pg() == nullptr) {
    if (lane.watch != 0) scope_->Unwatch(lane.watch);
    lane.watch = 0;
    lane.watched_events = 0;
    return;
  }
  const uint32_t events = EPOLLIN | (lane.flushing ? EPOLLOUT : 0u);
  if (lane.watch == 0) {
    absl::StatusOr<IoLoop::WatchId> watch = scope_->Watch(PQsocket(lane.pg()), events, &lane);
    if (!watch.ok())
      return FailLane(lane, StrCat("cannot watch the socket: ", watch.status().message()));
    lane.watch = *watch;
  } else if (events != lane.watched_events) {
    if (absl::Status s = scope_->Rewatch(lane.watch, events); !s.ok()) {
      return FailLane(lane, StrCat("cannot watch the socket: ", s.message()));
    }
  }
  lane.watched_events = events;
}

void AsyncEngine::Rearm() {
  // The earliest deadline of a call still waiting for its result; a periodic check while any
  // call is queued or owed (injected clocks, late_timeout).
  bool any = false;
  Duration wait = kMaxTimerWait;
  for (auto& lane : lanes_) {
    for (const auto* q : {&lane->waiting, &lane->in_flight}) {
      for (const auto& op : *q) {
        any = true;
        if (!op->abandoned) wait = std::min(wait, op->deadline.Remaining());
      }
    }
  }
  if (!any) return;
  const TimePoint at = std::chrono::steady_clock::now() + std::max(wait, Duration::zero());
  if (timer_ != 0 && timer_at_ <= at) return;  // an earlier one is armed
  if (timer_ != 0) scope_->Cancel(timer_);
  timer_at_ = at;
  timer_ = scope_->At(at, [this] { OnTimer(); });
}

void AsyncEngine::OnTimer() {
  timer_ = 0;
  timer_at_ = TimePoint::max();
  const TimePoint now = std::chrono::steady_clock::now();
  for (auto& lane : lanes_) {
    Expire(*lane, now);
    Drive(*lane, now);
    UpdateWatch(*lane);
  }
  Rearm();
}

void AsyncEngine::Pump() {
  std::vector<std::unique_ptr<Op>> incoming;
  std::vector<std::pair<int, absl::StatusOr<std::unique_ptr<Connection>>>> connected;
  {
    MutexLock lock(mu_);
    pump_posted_ = false;
    incoming.swap(incoming_);
    connected.swap(connected_);
  }
  const TimePoint now = std::chrono::steady_clock::now();
  for (auto& [index, conn] : connected) {
    Lane& lane = *lanes_[static_cast<size_t>(index)];
    // Its connector posted this and is ending: joined now (immediate), so no finished connector
    // outlives the connection it opened.
    if (lane.connector.joinable()) lane.connector.join();
    if (conn.ok() && PQenterPipelineMode((*conn)->raw()) &&
        PQsetnonblocking((*conn)->raw(), 1) == 0) {
      lane.conn = std::move(*conn);
      lane.state = Lane::State::kUp;
      lane.last_error.clear();
    } else {
      lane.state = Lane::State::kDown;
      lane.last_error = conn.ok() ? "cannot enter pipeline mode"
                                  : StrCat("connect failed: ", conn.status().message());
      lane.retry_at = now + settings_.reconnect_delay;
      MutexLock lock(mu_);
      ++stats_.connect_failures_total;
    }
  }
  Assign(incoming);
  for (auto& lane : lanes_) {
    Expire(*lane, now);
    Drive(*lane, now);
    UpdateWatch(*lane);
  }
  Rearm();
}

void AsyncEngine::OnReady(Lane& lane, uint32_t events) {
  if (lane.state != Lane::State::kUp) return;
  if (lane.flushing && (events & (EPOLLOUT | EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) {
    const int flushed = PQflush(lane.pg());
    if (flushed < 0) {
      FailLane(lane, "send failed: " + LibpqMessage(lane.pg()));
    } else {
      lane.flushing = flushed == 1;
    }
  }
  if (lane.state == Lane::State::kUp && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) {
    Read(lane);
  }
  // Calls queued meanwhile go out (or, on a lane that just failed, reconnect).
  Drive(lane, std::chrono::steady_clock::now());
  UpdateWatch(lane);
}

std::vector<std::unique_ptr<AsyncEngine::Op>> AsyncEngine::TakeAll(bool unwatch) {
  std::vector<std::unique_ptr<Op>> left;
  std::vector<std::pair<int, absl::StatusOr<std::unique_ptr<Connection>>>> opened;
  {
    MutexLock lock(mu_);
    left.swap(incoming_);
    opened.swap(connected_);
  }
  for (auto& lane : lanes_) {
    for (auto* q : {&lane->waiting, &lane->in_flight}) {
      for (auto& op : *q) left.push_back(std::move(op));
      q->clear();
    }
    if (unwatch) {
      lane->state = Lane::State::kDown;
      lane->flushing = false;
      UpdateWatch(*lane);
    }
    lane->conn.reset();
  }
  return left;  // `opened` goes here, before the calls are completed
}

void AsyncEngine::CloseAll(const std::string& why) {
  std::vector<std::unique_ptr<Op>> left = TakeAll(/*unwatch=*/true);
  if (timer_ != 0) scope_->Cancel(timer_);
  timer_ = 0;
  for (auto& op : left) Complete(*op, absl::CancelledError(why));
}

void AsyncEngine::LoopStopped() {
  {
    MutexLock lock(mu_);
    stop_ = true;
    loop_stopped_ = true;
  }
  // Posting is refused by now: everything queued or in flight fails here.
  CloseAll(StrCat(settings_.component, ": its I/O loop \"", loop_->name(), "\" was stopped"));
}

void AsyncEngine::Shutdown() {
  std::call_once(shut_, [this] {
    {
      MutexLock lock(mu_);
      stop_ = true;
    }
    if (scope_ != nullptr) {
      auto close = [this] { CloseAll(StrCat(settings_.component, ": shut down")); };
      // On the loop thread the fence drops queued tasks: close here. Elsewhere a refused post
      // means the loop is stopping, and LoopStopped closes instead.
      if (scope_->InLoop()) {
        close();
      } else {
        (void)scope_->Post(close);
      }
      // The fence: no task, timer or watcher of the engine runs after it, so the lanes are this
      // thread's now.
      scope_->Close();
    }
    // A connect in flight ends by connect_timeout (the pool's abort ends it at once); what it
    // opened is dropped with connected_.
    for (auto& lane : lanes_) {
      if (lane->connector.joinable()) lane->connector.join();
    }
    std::vector<std::unique_ptr<Op>> left = TakeAll(/*unwatch=*/false);
    for (auto& op : left) {
      Complete(*op, absl::CancelledError(StrCat(settings_.component, ": shut down")));
    }
    if (own_loop_) loop_->Stop();
  });
}

AsyncEngineStats AsyncEngine::Stats() const {
  MutexLock lock(mu_);
  return stats_;
}

}  // namespace keel::postgres::internal
