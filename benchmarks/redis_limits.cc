// keel::redis::RateLimiter against its floor, measured in the same run:
//   BM_RedisLimiter_Gcra/threads:N           target: throughput >= 90% of
//                                            BM_Baseline_RedisEvalshaTrivial/threads:N
//   BM_RedisLimiter_GcraCallsOnly/threads:N  what any server-clock GCRA must cost at least: plain
//                                            hiredis (as the floor) running a script that does
//                                            only the three redis.calls (TIME, GET, SET PX)
//   BM_RedisLimiter_ClientFloor/threads:N    keel's pooled client running `return 1` (what the
//                                            limiter's client side cannot go below)
//   BM_RedisLimiter_GcraTwoLimits            two GCRA limits on one key: one round trip
//   BM_RedisLimiter_TryAcquireMany100        100 keys per pipelined round trip (items/s)
//   BM_RedisLimiter_DenialAtFullCache/N      a denial from Redis while the blocked-key cache is
//                                            full with N running entries: target flat in N (the
//                                            cache is ordered by expiry, so making room does not
//                                            scan it)
//   BM_RedisLimiter_GcraAsync/64             64 TryAcquireAsync in flight from one thread on the
//                                            multiplexed transport (one connection): target
//                                            throughput >= 90% of BM_Baseline_RedisPipelinedGcra/64
//                                            and process CPU per check (cpu_us_per_check, all
//                                            threads: the I/O thread included) <= 1/3 of
//                                            BM_RedisLimiter_GcraPooled/threads:16's; also
//                                            allocs_per_check (every thread's allocations)
//   BM_Baseline_RedisPipelinedGcra/64        the floor: the limiter's own script with its own
//                                            keys and arguments, 64 EVALSHA written at once on one
//                                            plain hiredis connection
//   BM_RedisLimiter_GcraPooled/threads:N     TryAcquire with Transport::kPooled (a connection per
//                                            call in flight)
// The floor (baselines.cc: plain hiredis, `return 1`, one connection per thread) runs at 1 and 16
// threads, the limiter's concurrencies. Reads KEEL_TEST_REDIS_URL; skips when it is absent.
#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "alloc_counter.h"
#include "bench_env.h"
#include "bench_redis.h"
#include "keel/redis/client.h"
#include "keel/redis/rate_limiter.h"
#include "keel/redis/script.h"
#include "keel/sync.h"
#include "redis/rate_limiter_plan.h"

namespace {

using keel::Deadline;
using namespace std::chrono_literals;

constexpr int kMaxThreads = 16;

// One client (kMaxThreads connections) and one GCRA limiter shared by every benchmark thread.
struct Shared {
  std::unique_ptr<keel::redis::Client> client;
  std::unique_ptr<keel::redis::RateLimiter> limiter;
  // The same limit on a Transport::kPooled client.
  std::unique_ptr<keel::redis::Client> pooled_client;
  std::unique_ptr<keel::redis::RateLimiter> pooled_limiter;
  std::unique_ptr<keel::redis::RateLimiter> two_limits;
  std::string error;
};

// A limit no benchmark reaches, so every check runs the whole script and writes its key.
keel::redis::RateLimiter::Options GcraOptions() {
  return {.name = "bench-gcra",
          .algorithm =
              keel::limit::Gcra::Options{.count = 1'000'000, .period = 1s, .max_burst = 1'000'000},
          .fail_mode = keel::redis::FailMode::kClosed};
}

// Process CPU time (every thread: user + system), for client CPU per check.
std::chrono::microseconds ProcessCpu() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return std::chrono::seconds(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         std::chrono::microseconds(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

Shared& GetShared() {
  static Shared* shared = [] {
    auto* s = new Shared;
    const auto url = keel::bench::Env("KEEL_TEST_REDIS_URL");
    if (!url) {
      s->error = "KEEL_TEST_REDIS_URL is not set (run scripts/bench or scripts/test)";
      return s;
    }
    auto options = keel::redis::Options::FromUrl(*url);
    if (!options.ok()) {
      s->error = std::string(options.status().message());
      return s;
    }
    options->pool.max_size = kMaxThreads;
    auto client = keel::redis::Client::Create(*options);
    if (!client.ok()) {
      s->error = std::string(client.status().message());
      return s;
    }
    s->client = std::move(*client);
    options->transport = keel::redis::Transport::kPooled;
    auto pooled = keel::redis::Client::Create(*options);
    if (!pooled.ok()) {
      s->error = std::string(pooled.status().message());
      return s;
    }
    s->pooled_client = std::move(*pooled);
    auto limiter = keel::redis::RateLimiter::Create(GcraOptions(), *s->client);
    auto pooled_limiter = keel::redis::RateLimiter::Create(GcraOptions(), *s->pooled_client);
    if (!pooled_limiter.ok()) {
      s->error = std::string(pooled_limiter.status().message());
      return s;
    }
    s->pooled_limiter = std::move(*pooled_limiter);
    if (!limiter.ok()) {
      s->error = std::string(limiter.status().message());
      return s;
    }
    s->limiter = std::move(*limiter);
    auto two = keel::redis::RateLimiter::Create(
        {.name = "bench-gcra-2",
         .algorithm =
             keel::limit::Gcra::Options{.count = 1'000'000, .period = 1s, .max_burst = 1'000'000},
         .fail_mode = keel::redis::FailMode::kClosed,
         .more_limits = {keel::limit::Gcra::Options{
             .count = 100'000'000, .period = 1h, .max_burst = 100'000'000}}},
        *s->client);
    if (!two.ok()) {
      s->error = std::string(two.status().message());
      return s;
    }
    s->two_limits = std::move(*two);
    // Load the script and open the connections outside the measurement.
    if (auto d = s->limiter->TryAcquire(Deadline::After(1s), "warm-up", 1); !d.ok()) {
      s->error = std::string(d.status().message());
    }
    if (auto d = s->pooled_limiter->TryAcquire(Deadline::After(1s), "warm-up", 1); !d.ok()) {
      s->error = std::string(d.status().message());
    }
    return s;
  }();
  return *shared;
}

// Reports cpu_us_per_check: the process's CPU time (all threads) over the run, per check, as
// measured by thread 0 (counters are summed over threads: only thread 0 sets it).
class CpuPerCheck {
 public:
  explicit CpuPerCheck(benchmark::State& state) : state_(state), start_(ProcessCpu()) {}
  void Report(int64_t checks_per_iteration) {
    if (state_.thread_index() != 0 || state_.iterations() == 0) return;
    const double checks = static_cast<double>(state_.iterations()) *
                          static_cast<double>(state_.threads()) *
                          static_cast<double>(checks_per_iteration);
    state_.counters["cpu_us_per_check"] =
        static_cast<double>((ProcessCpu() - start_).count()) / checks;
  }

 private:
  benchmark::State& state_;
  const std::chrono::microseconds start_;
};

// One blocking check per iteration, a key per thread, on the shared client's limiter
// (`Shared::limiter`: multiplexed) or its pooled twin.
void CheckEachIteration(benchmark::State& state,
                        std::unique_ptr<keel::redis::RateLimiter> Shared::*limiter) {
  Shared& shared = GetShared();
  if (!shared.error.empty()) {
    state.SkipWithError(shared.error.c_str());
    return;
  }
  const std::string key = "user:" + std::to_string(state.thread_index());
  CpuPerCheck cpu(state);
  for (auto _ : state) {
    auto d = (shared.*limiter)->TryAcquire(Deadline::After(1s), key, 1);
    if (!d.ok() || !d->allowed) {
      state.SkipWithError("check failed or denied");
      break;
    }
    benchmark::DoNotOptimize(d);
  }
  cpu.Report(1);
  state.SetItemsProcessed(state.iterations());
}

void BM_RedisLimiter_Gcra(benchmark::State& state) { CheckEachIteration(state, &Shared::limiter); }
BENCHMARK(BM_RedisLimiter_Gcra)->UseRealTime()->Threads(1)->Threads(kMaxThreads);

void BM_RedisLimiter_GcraPooled(benchmark::State& state) {
  CheckEachIteration(state, &Shared::pooled_limiter);
}
BENCHMARK(BM_RedisLimiter_GcraPooled)->UseRealTime()->Threads(1)->Threads(kMaxThreads);

// N async checks in flight from one thread: submit N, wait until the N decisions are in (their
// continuations count down on the I/O thread, the last wakes this thread, as an event loop
// resuming N coroutines would be woken once per batch), repeat.
void BM_RedisLimiter_GcraAsync(benchmark::State& state) {
  Shared& shared = GetShared();
  if (!shared.error.empty()) {
    state.SkipWithError(shared.error.c_str());
    return;
  }
  const auto n = static_cast<int>(state.range(0));
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) keys.push_back("user:" + std::to_string(i));
  keel::Mutex mu;
  keel::CondVar cv;
  int left = 0;
  bool failed = false;
  CpuPerCheck cpu(state);
  keel::bench::CountProcessAllocations(true);
  const uint64_t allocations_before = keel::bench::ProcessAllocations();
  for (auto _ : state) {
    {
      keel::MutexLock lock(mu);
      left = n;
    }
    const Deadline deadline = Deadline::After(1s);
    for (int i = 0; i < n; ++i) {
      shared.limiter->TryAcquireAsync(deadline, keys[i])
          .Then([&](absl::StatusOr<keel::limit::Decision> d) {
            keel::MutexLock lock(mu);
            if (!d.ok() || !d->allowed) failed = true;
            if (--left == 0) cv.Signal();
          });
    }
    keel::MutexLock lock(mu);
    while (left > 0) cv.Wait(mu);
    if (failed) {
      state.SkipWithError("check failed or denied");
      break;
    }
  }
  cpu.Report(n);
  keel::bench::CountProcessAllocations(false);
  if (state.iterations() > 0) {
    // Every thread's (the I/O thread's included), per check.
    state.counters["allocs_per_check"] =
        static_cast<double>(keel::bench::ProcessAllocations() - allocations_before) /
        static_cast<double>(state.iterations() * n);
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["connections"] = static_cast<double>(shared.client->options().mux.connections);
}
BENCHMARK(BM_RedisLimiter_GcraAsync)->UseRealTime()->Arg(64);

// The limiter's own script, keys and arguments, N EVALSHA written at once on one plain hiredis
// connection, then the N replies read: the pipelined floor of BM_RedisLimiter_GcraAsync/N.
void BM_Baseline_RedisPipelinedGcra(benchmark::State& state) {
  auto options = keel::bench::RedisOptionsOrSkip(state);
  if (!options) return;
  auto plan = keel::redis::internal::MakePlan(GcraOptions());
  if (!plan.ok()) {
    state.SkipWithError(std::string(plan.status().message()).c_str());
    return;
  }
  redisContext* c = redisConnect(options->server.host.c_str(), options->server.port);
  if (c == nullptr || c->err != 0) {
    state.SkipWithError("cannot connect");
    if (c) redisFree(c);
    return;
  }
  const auto n = static_cast<int>(state.range(0));
  // EVALSHA sha numkeys keys... n control plan.args... (the generated GCRA script's layout:
  // the server's clock, no late allowance: an empty control).
  std::vector<std::vector<std::string>> argvs;
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> argv = {"EVALSHA", plan->script->sha1(),
                                     std::to_string(plan->suffixes.size())};
    for (const std::string& suffix : plan->suffixes) {
      argv.push_back("{bench-gcra:user:" + std::to_string(i) + "}" + suffix);
    }
    argv.push_back("1");
    if (plan->compact_argv) {
      argv.push_back("");
    } else {
      argv.push_back("");
      argv.push_back("");
    }
    for (const std::string& a : plan->args) argv.push_back(a);
    argvs.push_back(std::move(argv));
  }
  std::vector<std::vector<const char*>> ptrs(argvs.size());
  std::vector<std::vector<size_t>> lens(argvs.size());
  for (size_t i = 0; i < argvs.size(); ++i) {
    for (const std::string& a : argvs[i]) {
      ptrs[i].push_back(a.data());
      lens[i].push_back(a.size());
    }
  }
  // Load the script (EVAL once) outside the measurement.
  auto* load =
      static_cast<redisReply*>(redisCommand(c, "SCRIPT LOAD %s", plan->script->source().c_str()));
  if (load) freeReplyObject(load);
  for (auto _ : state) {
    for (size_t i = 0; i < argvs.size(); ++i) {
      redisAppendCommandArgv(c, static_cast<int>(ptrs[i].size()), ptrs[i].data(), lens[i].data());
    }
    bool failed = false;
    for (int i = 0; i < n; ++i) {
      void* reply = nullptr;
      if (redisGetReply(c, &reply) != REDIS_OK) {
        failed = true;
        break;
      }
      failed = failed || static_cast<redisReply*>(reply)->type == REDIS_REPLY_ERROR;
      freeReplyObject(reply);
    }
    if (failed) {
      state.SkipWithError("pipelined EVALSHA failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
  redisFree(c);
}
BENCHMARK(BM_Baseline_RedisPipelinedGcra)->UseRealTime()->Arg(64);

void BM_RedisLimiter_ClientFloor(benchmark::State& state) {
  Shared& shared = GetShared();
  if (!shared.error.empty()) {
    state.SkipWithError(shared.error.c_str());
    return;
  }
  static const keel::redis::Script kReturn1("return 1");
  for (auto _ : state) {
    auto r = kReturn1.Run(*shared.client, Deadline::After(1s), {});
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_RedisLimiter_ClientFloor)->UseRealTime()->Threads(1)->Threads(kMaxThreads);

void BM_RedisLimiter_GcraTwoLimits(benchmark::State& state) {
  Shared& shared = GetShared();
  if (!shared.error.empty()) {
    state.SkipWithError(shared.error.c_str());
    return;
  }
  for (auto _ : state) {
    auto d = shared.two_limits->TryAcquire(Deadline::After(1s), "user:two", 1);
    if (!d.ok() || !d->allowed) {
      state.SkipWithError("check failed or denied");
      break;
    }
    benchmark::DoNotOptimize(d);
  }
}
BENCHMARK(BM_RedisLimiter_GcraTwoLimits)->UseRealTime();

// The three redis.calls of a GCRA on the server's clock, and nothing else, through the floor's
// client path (plain hiredis, one connection per thread) with the limiter's key and arguments:
// what remains between this and the floor is Redis's own cost of TIME, GET and SET inside a
// script, which no script can avoid.
void BM_RedisLimiter_GcraCallsOnly(benchmark::State& state) {
  auto options = keel::bench::RedisOptionsOrSkip(state);
  if (!options) return;
  redisContext* c = redisConnect(options->server.host.c_str(), options->server.port);
  if (c == nullptr || c->err != 0) {
    state.SkipWithError("cannot connect");
    if (c) redisFree(c);
    return;
  }
  constexpr const char* kScript =
      "local t = redis.call('TIME') "
      "local tat = redis.call('GET', KEYS[1]) "
      "redis.call('SET', KEYS[1], t[2], 'PX', '1') "
      "return 1";
  auto* load = static_cast<redisReply*>(redisCommand(c, "SCRIPT LOAD %s", kScript));
  if (load == nullptr || load->type != REDIS_REPLY_STRING) {
    state.SkipWithError("SCRIPT LOAD failed");
    if (load) freeReplyObject(load);
    redisFree(c);
    return;
  }
  const std::string sha(load->str, load->len);
  freeReplyObject(load);
  const std::string key = "{bench-calls:user:" + std::to_string(state.thread_index()) + "}:gcra";
  for (auto _ : state) {
    auto* reply = static_cast<redisReply*>(
        redisCommand(c, "EVALSHA %s 1 %s 1 %s 1 1000001", sha.c_str(), key.c_str(), ""));
    if (reply == nullptr || reply->type != REDIS_REPLY_INTEGER) {
      state.SkipWithError("EVALSHA failed");
      if (reply) freeReplyObject(reply);
      break;
    }
    freeReplyObject(reply);
  }
  redisFree(c);
}
BENCHMARK(BM_RedisLimiter_GcraCallsOnly)->UseRealTime()->Threads(1)->Threads(kMaxThreads);

void BM_RedisLimiter_TryAcquireMany100(benchmark::State& state) {
  Shared& shared = GetShared();
  if (!shared.error.empty()) {
    state.SkipWithError(shared.error.c_str());
    return;
  }
  std::vector<std::string> names;
  for (int i = 0; i < 100; ++i) names.push_back("many:" + std::to_string(i));
  const std::vector<std::string_view> keys(names.begin(), names.end());
  for (auto _ : state) {
    auto d = shared.limiter->TryAcquireMany(Deadline::After(1s), keys, 1);
    if (!d.ok()) {
      state.SkipWithError(std::string(d.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(d);
  }
  state.SetItemsProcessed(state.iterations() * 100);
}
BENCHMARK(BM_RedisLimiter_TryAcquireMany100)->UseRealTime();

// A limiter (1 per hour per key) whose blocked-key cache holds `size` denials that run for the
// hour, and a key Redis denies: built once per size, outside the measurement.
keel::redis::RateLimiter* FullCache(Shared& shared, size_t size, std::string* error) {
  static std::map<size_t, std::unique_ptr<keel::redis::RateLimiter>> built;
  if (auto it = built.find(size); it != built.end()) return it->second.get();
  auto limiter = keel::redis::RateLimiter::Create(
      {.name = "bench-cache-" + std::to_string(::getpid()) + "-" + std::to_string(size),
       .algorithm = keel::limit::Gcra::Options{.count = 1, .period = 1h},
       .fail_mode = keel::redis::FailMode::kClosed,
       .blocked_cache_size = size},
      *shared.client);
  if (!limiter.ok()) {
    *error = std::string(limiter.status().message());
    return nullptr;
  }
  std::vector<std::string> names;
  for (size_t i = 0; i < size; ++i) names.push_back("fill:" + std::to_string(i));
  for (size_t start = 0; start < size; start += 1000) {
    const size_t end = std::min(size, start + 1000);
    const std::vector<std::string_view> batch(names.begin() + start, names.begin() + end);
    // The first pass admits each key, the second is denied and remembered.
    for (int pass = 0; pass < 2; ++pass) {
      if (auto d = (*limiter)->TryAcquireMany(Deadline::After(10s), batch, 1); !d.ok()) {
        *error = std::string(d.status().message());
        return nullptr;
      }
    }
  }
  if ((*limiter)->Stats().denied_total != size) {
    *error = "the cache was not filled";
    return nullptr;
  }
  if (auto d = (*limiter)->TryAcquire(Deadline::After(1s), "probe", 1); !d.ok() || !d->allowed) {
    *error = "probe not admitted";
    return nullptr;
  }
  return (built[size] = *std::move(limiter)).get();
}

void BM_RedisLimiter_DenialAtFullCache(benchmark::State& state) {
  Shared& shared = GetShared();
  if (!shared.error.empty()) {
    state.SkipWithError(shared.error.c_str());
    return;
  }
  std::string error;
  keel::redis::RateLimiter* limiter =
      FullCache(shared, static_cast<size_t>(state.range(0)), &error);
  if (limiter == nullptr) {
    state.SkipWithError(error.c_str());
    return;
  }
  // Redis denies "probe" every time; the full cache cannot remember it, so every call is a
  // round trip plus the cache's attempt to make room.
  for (auto _ : state) {
    auto d = limiter->TryAcquire(Deadline::After(1s), "probe", 1);
    if (!d.ok() || d->allowed) {
      state.SkipWithError("probe not denied by Redis");
      break;
    }
    benchmark::DoNotOptimize(d);
  }
}
BENCHMARK(BM_RedisLimiter_DenialAtFullCache)->UseRealTime()->Arg(1000)->Arg(10'000)->Arg(100'000);

}  // namespace
