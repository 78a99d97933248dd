// Retry and Pipeline hot paths: what a call pays when nothing goes wrong. Every benchmark
// reports allocs_per_call (alloc_counter.h); the success path must allocate nothing.
//
// Per-stage overhead: BM_Pipeline_PassThroughStages/N runs N stages that only forward the call;
// (time(N) - time(0)) / N is what the Pipeline machinery costs per stage. BM_Pipeline_4Stages
// against BM_Pipeline_4Stages_ByHand (the same four policies nested by hand) is the same
// question with real policies.
#include <benchmark/benchmark.h>

#include <memory>

#include "alloc_counter.h"
#include "keel/resilience/pipeline.h"

namespace {

using namespace std::chrono_literals;
using keel::CallContext;

absl::StatusOr<int> Noop(const CallContext& ctx) {
  benchmark::DoNotOptimize(ctx.attempt);
  return 1;
}

keel::Retry MakeRetry() { return keel::Retry::Create(keel::Retry::Options()).value(); }
keel::Timeout MakeTimeout() {
  keel::Timeout::Options options;
  options.timeout = 1s;
  return keel::Timeout::Create(options).value();
}

void BM_Retry_FirstTrySuccess(benchmark::State& state) {
  const keel::Retry retry = MakeRetry();
  const uint64_t before = keel::bench::ThreadAllocations();
  for (auto _ : state) {
    absl::StatusOr<int> r = retry.Execute(keel::Deadline::Infinite(), Noop);
    benchmark::DoNotOptimize(r);
  }
  keel::bench::ReportAllocationsPerCall(state, before);
}
BENCHMARK(BM_Retry_FirstTrySuccess);

// A stage that only forwards: the cost of the Pipeline machinery itself.
class PassThrough final : public keel::Policy<int> {
 public:
  absl::StatusOr<int> Apply(const CallContext& ctx, Next next) const override { return next(ctx); }
};

void BM_Pipeline_PassThroughStages(benchmark::State& state) {
  keel::Pipeline<int>::Builder builder;
  for (int i = 0; i < state.range(0); ++i) builder.Add(std::make_shared<PassThrough>());
  const keel::Pipeline<int> pipeline = builder.Build();
  const uint64_t before = keel::bench::ThreadAllocations();
  for (auto _ : state) {
    absl::StatusOr<int> r = pipeline.Execute(keel::Deadline::Infinite(), Noop);
    benchmark::DoNotOptimize(r);
  }
  keel::bench::ReportAllocationsPerCall(state, before);
}
BENCHMARK(BM_Pipeline_PassThroughStages)->Arg(0)->Arg(1)->Arg(4)->Arg(8);

struct FourPolicies {
  FourPolicies()
      : bulkhead(keel::SemaphoreBulkhead::Create(keel::SemaphoreBulkhead::Options()).value()),
        breaker(keel::CircuitBreaker::Create(keel::CircuitBreaker::Options()).value()),
        retry(MakeRetry()),
        timeout(MakeTimeout()) {}
  std::unique_ptr<keel::SemaphoreBulkhead> bulkhead;
  std::unique_ptr<keel::CircuitBreaker> breaker;
  keel::Retry retry;
  keel::Timeout timeout;
};

// The benchmark: bulkhead, breaker, retry and timeout around a no-op.
void BM_Pipeline_4Stages(benchmark::State& state) {
  FourPolicies p;
  const keel::Pipeline<int> pipeline = keel::Pipeline<int>::Builder()
                                           .Add(*p.bulkhead)
                                           .Add(*p.breaker)
                                           .Add(p.retry)
                                           .Add(p.timeout)
                                           .Build();
  const uint64_t before = keel::bench::ThreadAllocations();
  for (auto _ : state) {
    absl::StatusOr<int> r = pipeline.Execute(keel::Deadline::Infinite(), Noop);
    benchmark::DoNotOptimize(r);
  }
  keel::bench::ReportAllocationsPerCall(state, before);
}
BENCHMARK(BM_Pipeline_4Stages);

// The same four policies nested by hand, as a caller would write them without a Pipeline: the
// policies' own cost, which BM_Pipeline_4Stages must not exceed by more than 4 x 5 ns.
void BM_Pipeline_4Stages_ByHand(benchmark::State& state) {
  FourPolicies p;
  const uint64_t before = keel::bench::ThreadAllocations();
  for (auto _ : state) {
    CallContext ctx;
    absl::StatusOr<int> r = [&]() -> absl::StatusOr<int> {
      auto permit = p.bulkhead->Acquire(ctx.deadline);
      if (!permit.ok()) return permit.status();
      return p.breaker->Execute([&]() -> absl::StatusOr<int> {
        return p.retry.Execute(ctx, [&](const CallContext& c) -> absl::StatusOr<int> {
          return Noop(p.timeout.Narrow(c));
        });
      });
    }();
    benchmark::DoNotOptimize(r);
  }
  keel::bench::ReportAllocationsPerCall(state, before);
}
BENCHMARK(BM_Pipeline_4Stages_ByHand);

}  // namespace
