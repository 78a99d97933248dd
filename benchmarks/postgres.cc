// postgres::Pool: a pooled `SELECT 1` through Run() (acquire, BEGIN, SET LOCAL statement_timeout,
// SELECT 1, COMMIT, release) against a fresh connection per call. Target: pooled >= 50x faster.
// Floor: BM_Baseline_PgSelect1 (plain libpqxx on one connection, no transaction) in baselines.cc.
// Needs KEEL_TEST_POSTGRES_URL (scripts/bench sets it); skipped with an error otherwise.
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <string>

#include "bench_env.h"
#include "keel/postgres/pool.h"

namespace {

using namespace std::chrono_literals;

std::optional<std::string> Url(benchmark::State& state) {
  auto url = keel::bench::Env("KEEL_TEST_POSTGRES_URL");
  if (!url) state.SkipWithError("KEEL_TEST_POSTGRES_URL is not set (run scripts/bench)");
  return url;
}

void BM_Pg_PooledSelect1(benchmark::State& state) {
  const auto url = Url(state);
  if (!url) return;
  auto pool = keel::postgres::Pool::Create(
      {.conninfo = *url,
       .pool = {.name = "bench", .max_size = 1, .background_maintenance = false}});
  if (!pool.ok()) {
    state.SkipWithError(std::string(pool.status().message()).c_str());
    return;
  }
  (*pool)->RunMaintenance();  // connect before timing: the loop measures pooled calls only
  for (auto _ : state) {
    absl::StatusOr<int> one = (*pool)->Run(keel::Deadline::After(5s), [](pqxx::work& tx) {
      return tx.exec1("SELECT 1")[0].as<int>();
    });
    if (!one.ok()) {
      state.SkipWithError(std::string(one.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(*one);
  }
}
BENCHMARK(BM_Pg_PooledSelect1)->UseRealTime();

void BM_Pg_ConnectPerCall(benchmark::State& state) {
  const auto url = Url(state);
  if (!url) return;
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

}  // namespace
