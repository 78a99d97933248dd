// postgres::Pool against the physical floors in baselines.cc, measured in the same run:
//   BM_Pg_PooledSelect1       Execute(deadline, "SELECT 1"): acquire, one round trip bounded by
//                             the deadline, release. Target: <= 1.2x BM_Baseline_PgSelect1 (one
//                             round trip on a held connection).
//   BM_Pg_HeldExecuteSelect1  Execute on a held lease: the same without acquire and release.
//   BM_Pg_PooledTransaction3  Transact() with three statements: acquire, BEGIN + SELECT 1 in one
//                             round trip, 2 x SELECT 1, COMMIT (k + 1 round trips).
//                             Floor: BM_Baseline_Pg3RoundTrips; the ideal ratio is 4/3.
//   BM_Pg_PooledRun3          Run() (libpqxx) with the same three statements: k + 2 round trips
//                             (libpqxx sends BEGIN on its own); the ideal ratio is 5/3.
//   BM_Pg_PooledRunSelect1    Run() with one statement (3 round trips), for comparison.
//   BM_Pg_ConnectPerCall      a fresh libpqxx connection per SELECT 1: what pooling saves.
//   BM_Pg_AsyncSelect1/N      AsyncExecute("SELECT 1") with N calls in flight from one thread,
//                             pipelined over one async connection; time per call. N = 1 against
//                             BM_Baseline_PgSelect1 (one round trip, held connection); N = 16
//                             shows what pipelining saves over one round trip per call.
// Needs KEEL_TEST_POSTGRES_URL (scripts/bench sets it); skipped with an error otherwise.
#include <benchmark/benchmark.h>

#include <chrono>
#include <deque>
#include <memory>
#include <string>

#include "bench_env.h"
#include "keel/postgres/pool.h"

namespace {

using namespace std::chrono_literals;

// A pool of one connection, connected before timing: the loops measure pooled calls only.
std::unique_ptr<keel::postgres::Pool> MakePool(benchmark::State& state) {
  auto url = keel::bench::Env("KEEL_TEST_POSTGRES_URL");
  if (!url) {
    state.SkipWithError("KEEL_TEST_POSTGRES_URL is not set (run scripts/bench)");
    return nullptr;
  }
  auto pool = keel::postgres::Pool::Create(
      {.conninfo = *url,
       .pool = {.name = "bench", .max_size = 1, .background_maintenance = false}});
  if (!pool.ok()) {
    state.SkipWithError(std::string(pool.status().message()).c_str());
    return nullptr;
  }
  (*pool)->RunMaintenance();
  return std::move(*pool);
}

void BM_Pg_PooledSelect1(benchmark::State& state) {
  auto pool = MakePool(state);
  if (!pool) return;
  for (auto _ : state) {
    absl::StatusOr<keel::postgres::Rows> one = pool->Execute(keel::Deadline::After(5s), "SELECT 1");
    if (!one.ok()) {
      state.SkipWithError(std::string(one.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(one->Text(0, 0));
  }
}
BENCHMARK(BM_Pg_PooledSelect1)->UseRealTime();

// Execute on a lease held across iterations: the bounded round trip without the pool's acquire
// and release, to tell the two costs apart.
void BM_Pg_HeldExecuteSelect1(benchmark::State& state) {
  auto pool = MakePool(state);
  if (!pool) return;
  auto lease = pool->Acquire(keel::Deadline::After(5s));
  if (!lease.ok()) {
    state.SkipWithError(std::string(lease.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    absl::StatusOr<keel::postgres::Rows> one =
        pool->Execute(keel::Deadline::After(5s), *lease, "SELECT 1");
    if (!one.ok()) {
      state.SkipWithError(std::string(one.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(one->Text(0, 0));
  }
}
BENCHMARK(BM_Pg_HeldExecuteSelect1)->UseRealTime();

template <int kStatements>
void PooledRun(benchmark::State& state) {
  auto pool = MakePool(state);
  if (!pool) return;
  for (auto _ : state) {
    absl::StatusOr<int> sum = pool->Run(keel::Deadline::After(5s), [](pqxx::work& tx) {
      int total = 0;
      for (int i = 0; i < kStatements; ++i) total += tx.exec1("SELECT 1")[0].as<int>();
      return total;
    });
    if (!sum.ok()) {
      state.SkipWithError(std::string(sum.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(*sum);
  }
}

void BM_Pg_PooledTransaction3(benchmark::State& state) {
  auto pool = MakePool(state);
  if (!pool) return;
  for (auto _ : state) {
    absl::StatusOr<int> sum =
        pool->Transact(keel::Deadline::After(5s), [](keel::postgres::Transaction& tx) {
          int total = 0;
          for (int i = 0; i < 3; ++i) {
            absl::StatusOr<keel::postgres::Rows> one = tx.Execute("SELECT 1");
            if (!one.ok()) return absl::StatusOr<int>(one.status());
            total += one->Text(0, 0).size();
          }
          return absl::StatusOr<int>(total);
        });
    if (!sum.ok()) {
      state.SkipWithError(std::string(sum.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(*sum);
  }
}
BENCHMARK(BM_Pg_PooledTransaction3)->UseRealTime();

void BM_Pg_PooledRun3(benchmark::State& state) { PooledRun<3>(state); }
BENCHMARK(BM_Pg_PooledRun3)->UseRealTime();

void BM_Pg_PooledRunSelect1(benchmark::State& state) { PooledRun<1>(state); }
BENCHMARK(BM_Pg_PooledRunSelect1)->UseRealTime();

void BM_Pg_ConnectPerCall(benchmark::State& state) {
  const auto url = keel::bench::Env("KEEL_TEST_POSTGRES_URL");
  if (!url) {
    state.SkipWithError("KEEL_TEST_POSTGRES_URL is not set (run scripts/bench)");
    return;
  }
  for (auto _ : state) {
    try {
      pqxx::connection conn(*url);
      pqxx::work tx(conn);
      benchmark::DoNotOptimize(tx.exec1("SELECT 1")[0].as<int>());
      tx.commit();
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
      break;
    }
  }
}
BENCHMARK(BM_Pg_ConnectPerCall)->UseRealTime();

void BM_Pg_AsyncSelect1(benchmark::State& state) {
  auto pool = MakePool(state);
  if (!pool) return;
  const size_t depth = static_cast<size_t>(state.range(0));
  std::deque<keel::Future<keel::postgres::Rows>> in_flight;
  auto issue = [&] {
    in_flight.push_back(pool->AsyncExecute(keel::Deadline::After(5s), "SELECT 1"));
  };
  // Warm: the async connection is opened by the first call.
  if (!pool->AsyncExecute(keel::Deadline::After(5s), "SELECT 1").Get().ok()) {
    state.SkipWithError("async SELECT 1 failed");
    return;
  }
  for (size_t i = 0; i < depth; ++i) issue();
  for (auto _ : state) {
    absl::StatusOr<keel::postgres::Rows> one = in_flight.front().Get();
    in_flight.pop_front();
    if (!one.ok()) {
      state.SkipWithError(std::string(one.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(one->Text(0, 0));
    issue();
  }
  while (!in_flight.empty()) {
    (void)in_flight.front().Get();
    in_flight.pop_front();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Pg_AsyncSelect1)->Arg(1)->Arg(16)->UseRealTime();

}  // namespace
