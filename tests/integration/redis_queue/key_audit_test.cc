// Every key a job queue script touches is one it declared in KEYS, as Redis Cluster requires.
//
// The check runs the queue's every path on a Redis of the test's own (enqueue with a delay and
// an idempotency key, takes, promotion of due jobs, retries, dead letters from a failed last
// attempt and from a take-over past max_attempts, heartbeats, progress, hand-back at Stop, a
// late completion of a job taken over, inspection) while `redis-cli monitor` records every
// command Redis runs, those run inside scripts included (`[0 lua]` lines follow the EVALSHA or
// EVAL that ran them: a script runs atomically). Redis itself says which arguments of each such
// command are keys (COMMAND GETKEYS), and each must be among that script run's KEYS. What it
// proves: on the paths run here, no script touched an undeclared key; it cannot see a path the
// run did not take.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis/test_server.h"
#include "integration/redis_queue/helpers.h"
#include "redis/queue_internal.h"

using keel::Deadline;
using keel::redis::Job;
using keel::redis::JobContext;
using keel::redis::JobState;
using namespace std::chrono_literals;

namespace {

// The quoted arguments of one MONITOR line (after `] `), unescaped as Redis escapes them
// (sdscatrepr: \\ \" \n \r \t \a \b \xHH).
std::vector<std::string> MonitorArgs(const std::string& line, std::string* source) {
  std::vector<std::string> out;
  const size_t open = line.find('[');
  const size_t close = line.find("] ", open);
  if (open == std::string::npos || close == std::string::npos) return out;
  *source = line.substr(open + 1, close - open - 1);
  size_t i = close + 2;
  while (i < line.size()) {
    if (line[i] != '"') {
      ++i;
      continue;
    }
    std::string arg;
    for (++i; i < line.size() && line[i] != '"'; ++i) {
      if (line[i] != '\\' || i + 1 >= line.size()) {
        arg.push_back(line[i]);
        continue;
      }
      const char c = line[++i];
      switch (c) {
        case 'n':
          arg.push_back('\n');
          break;
        case 'r':
          arg.push_back('\r');
          break;
        case 't':
          arg.push_back('\t');
          break;
        case 'a':
          arg.push_back('\a');
          break;
        case 'b':
          arg.push_back('\b');
          break;
        case 'x':
          arg.push_back(static_cast<char>(std::stoi(line.substr(i + 1, 2), nullptr, 16)));
          i += 2;
          break;
        default:
          arg.push_back(c);  // \\ and \"
      }
    }
    ++i;  // the closing quote
    out.push_back(std::move(arg));
  }
  return out;
}

bool LogHas(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(needle) != std::string::npos) return true;
  }
  return false;
}

void WaitForLog(const std::string& path, const std::string& needle) {
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (!LogHas(path, needle)) {
    REQUIRE(std::chrono::steady_clock::now() < give_up);
    std::this_thread::sleep_for(10ms);
  }
}

void WaitForState(keel::redis::JobQueue& queue, const std::string& id, JobState state) {
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (true) {
    auto status = queue.Status(Deadline::After(2s), id);
    if (status.ok() && status->state == state) return;
    INFO("job " << id << " still not in state " << keel::redis::JobStateName(state));
    REQUIRE(std::chrono::steady_clock::now() < give_up);
    std::this_thread::sleep_for(10ms);
  }
}

}  // namespace

TEST_CASE("job queue: every key a queue script touches is declared in its KEYS", "[redis_queue]") {
  keel::test::RedisServer server;
  keel::test::TempDir dir("keel-queue-audit");
  const std::string log = (dir.path() / "monitor.log").string();
  keel::test::Subprocess monitor = keel::test::Subprocess::Start(
      {"redis-cli", "-p", std::to_string(server.port()), "monitor"}, log);
  auto client = keel::test::MakeRedisClient(server.url());
  // MONITOR has started once it records this.
  const auto started = keel::SteadyClock().Now() + 10s;
  while (!LogHas(log, "audit-start")) {
    REQUIRE(keel::SteadyClock().Now() < started);
    REQUIRE(client->Command(Deadline::After(2s), "ECHO", "audit-start").ok());
    std::this_thread::sleep_for(20ms);
  }

  auto queue = keel::test::MakeQueue(*client, {.name = "audit"});
  const Deadline d = Deadline::After(5s);
  const std::string ok = queue->Enqueue(d, "ok").value();
  const std::string later = queue->Enqueue(d, "later", {.delay = 100ms}).value();
  const std::string keyed = queue->Enqueue(d, "keyed", {.idempotency_key = "k"}).value();
  CHECK(queue->Enqueue(d, "keyed again", {.idempotency_key = "k"}).value() == keyed);
  const std::string flaky = queue->Enqueue(d, "flaky", {.max_attempts = 3, .priority = 2}).value();
  const std::string poison = queue->Enqueue(d, "poison", {.max_attempts = 1}).value();
  const std::string progress = queue->Enqueue(d, "progress").value();
  const std::string slow = queue->Enqueue(d, "slow").value();
  const keel::redis::NewJob many[] = {{"many-1", {}}, {"many-2", {.priority = 1}}};
  const auto many_ids = queue->EnqueueMany(d, many).value();

  {
    auto worker = keel::test::MakeWorker(
        *queue,
        {.handler = [&](const Job& job, JobContext& ctx) -> absl::Status {
           if (job.payload == "flaky" && ctx.attempt() == 1) return absl::UnavailableError("1");
           if (job.payload == "poison") return absl::UnavailableError("poison");
           if (job.payload == "progress") return ctx.SetProgress(Deadline::After(2s), "half");
           if (job.payload == "slow") {  // long enough for a few heartbeats
             ctx.cancellation().SleepUntil(keel::SteadyClock(), keel::SteadyClock().Now() + 400ms);
           }
           return absl::OkStatus();
         },
         .visibility_timeout = 300ms,
         .heartbeat_interval = 50ms,
         .retry_backoff = {.kind = keel::Backoff::Kind::kEqualJitter, .base = 20ms, .cap = 40ms},
         .poll_interval = 50ms,
         .inspect_interval = 50ms});
    for (const std::string& id : {ok, later, keyed, flaky, progress, slow}) {
      WaitForState(*queue, id, JobState::kDone);
    }
    for (const auto& id : many_ids) WaitForState(*queue, id.value(), JobState::kDone);
    WaitForState(*queue, poison, JobState::kDead);
    CHECK(worker->Stats().extended_total > 0);
    CHECK(worker->Stats().retried_total == 1);
    REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  }

  // Hand-back at Stop.
  const std::string held = queue->Enqueue(Deadline::After(2s), "held").value();
  {
    keel::test::Seen seen;
    auto worker = keel::test::MakeWorker(*queue, {.handler = [&](const Job& job, JobContext& ctx) {
      seen.Add(job.id);
      ctx.cancellation().SleepUntil(keel::SteadyClock(), keel::SteadyClock().Now() + 10s);
      return absl::CancelledError("stopping");
    }});
    REQUIRE(seen.WaitFor(1, 10s));
    REQUIRE(worker->Stop(Deadline::After(400ms)).ok());
    CHECK(worker->Stats().handed_back_total == 1);
  }

  {
    auto worker = keel::test::MakeWorker(
        *queue, {.handler = [](const Job&, JobContext&) { return absl::OkStatus(); }});
    WaitForState(*queue, held, JobState::kDone);
    REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  }

  // A take-over past max_attempts (buried by the start script), and the late completion of the
  // worker that lost the job (refused by the finish script).
  const std::string cursed =
      queue->Enqueue(Deadline::After(2s), "cursed", {.max_attempts = 1}).value();
  {
    keel::CancellationSource release;
    keel::test::Seen ghost_seen;
    auto ghost = keel::test::MakeWorker(*queue, {.handler =
                                                     [&](const Job& job, JobContext&) {
                                                       ghost_seen.Add(job.id);
                                                       while (!release.cancelled()) {
                                                         std::this_thread::sleep_for(2ms);
                                                       }
                                                       return absl::OkStatus();
                                                     },
                                                 .visibility_timeout = 200ms,
                                                 .heartbeat = false});
    REQUIRE(ghost_seen.WaitFor(1, 10s));
    auto other = keel::test::MakeWorker(
        *queue, {.handler = [](const Job&, JobContext&) { return absl::OkStatus(); },
                 .visibility_timeout = 200ms,
                 .poll_interval = 50ms});
    WaitForState(*queue, cursed, JobState::kDead);
    REQUIRE(other->Stop(Deadline::After(5s)).ok());
    release.Cancel();
    REQUIRE(ghost->Stop(Deadline::After(5s)).ok());
    CHECK(ghost->Stats().stale_completions_total == 1);
  }
  REQUIRE(queue->Inspect(Deadline::After(2s)).ok());

  REQUIRE(client->Command(Deadline::After(2s), "ECHO", "audit-end").ok());
  WaitForLog(log, "audit-end");
  monitor.Kill();

  // Which script each run is, by its SHA-1 (EVALSHA) or its source (EVAL, after NOSCRIPT).
  namespace qi = keel::redis::internal;
  const std::map<std::string, const keel::redis::Script*> scripts = {
      {"enqueue", &qi::EnqueueScript()},     {"claim", &qi::ClaimScript()},
      {"start", &qi::StartScript()},         {"finish", &qi::FinishScript()},
      {"heartbeat", &qi::HeartbeatScript()}, {"inspect", &qi::InspectScript()},
      {"progress", &qi::ProgressScript()}};
  auto script_of = [&](const std::vector<std::string>& args) -> std::string {
    for (const auto& [name, s] : scripts) {
      if (args[0] == "EVALSHA" && args[1] == s->sha1()) return name;
      if (args[0] == "EVAL" && args[1] == s->source()) return name;
    }
    return "";
  };

  std::ifstream in(log);
  std::string line;
  std::string current;                 // the script of the run the lua lines belong to
  std::set<std::string> declared;      // its KEYS
  std::map<std::string, int> audited;  // script -> key accesses checked
  std::vector<std::string> undeclared;
  std::map<std::string, std::vector<std::string>> keys_of;  // COMMAND GETKEYS, cached
  while (std::getline(in, line)) {
    std::string source;
    std::vector<std::string> args = MonitorArgs(line, &source);
    if (args.empty()) continue;
    for (char& c : args[0]) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (source != "0 lua") {
      current.clear();
      declared.clear();
      if ((args[0] == "EVALSHA" || args[0] == "EVAL") && args.size() >= 3) {
        current = script_of(args);
        const size_t n = std::stoul(args[2]);
        REQUIRE(args.size() >= 3 + n);
        declared.insert(args.begin() + 3, args.begin() + 3 + static_cast<ptrdiff_t>(n));
      }
      continue;
    }
    INFO(line);
    REQUIRE(!current.empty());  // a script command follows a run of one of the queue's scripts
    std::string sig;
    for (const std::string& a : args) sig += a + '\0';
    auto cached = keys_of.find(sig);
    if (cached == keys_of.end()) {
      std::vector<std::string_view> argv = {"COMMAND", "GETKEYS"};
      argv.insert(argv.end(), args.begin(), args.end());
      absl::StatusOr<keel::redis::Reply> keys = client->CommandArgv(Deadline::After(2s), argv);
      std::vector<std::string> found;
      // An error: a command without keys (TIME).
      if (keys.ok()) {
        for (const auto& k : keys->elements()) found.push_back(k.str());
      }
      cached = keys_of.emplace(sig, std::move(found)).first;
    }
    for (const std::string& key : cached->second) {
      ++audited[current];
      if (declared.count(key) == 0) undeclared.push_back(current + ": " + args[0] + " " + key);
    }
  }
  std::string report;
  for (const std::string& u : undeclared) report += u + "\n";
  INFO("undeclared keys:\n" << report);
  CHECK(undeclared.empty());
  // Every script ran and touched keys here: the audit covered each.
  for (const auto& [name, s] : scripts) {
    INFO(name);
    CHECK(audited[name] > 0);
  }
}
