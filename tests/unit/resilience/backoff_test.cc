#include "keel/resilience/backoff.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

#include "absl/random/random.h"

using namespace std::chrono_literals;
using keel::Backoff;
using keel::Duration;

namespace {

// A fixed random source: every run draws the same numbers.
std::mt19937_64 FixedGen() { return std::mt19937_64(42); }

constexpr int kSamples = 20000;

struct Summary {
  Duration min = Duration::max();
  Duration max = Duration::min();
  double mean_ns = 0;
};

// Draws the delay of retry number `n` from `kSamples` fresh sequences.
Summary SampleRetry(const Backoff& backoff, int n, std::mt19937_64& gen) {
  Summary s;
  double sum = 0;
  for (int i = 0; i < kSamples; ++i) {
    keel::BackoffSequence seq = backoff.Start();
    Duration d{};
    for (int k = 0; k <= n; ++k) d = seq.Next(gen);
    s.min = std::min(s.min, d);
    s.max = std::max(s.max, d);
    sum += static_cast<double>(d.count());
  }
  s.mean_ns = sum / kSamples;
  return s;
}

}  // namespace

TEST_CASE("constant backoff always waits base") {
  auto gen = FixedGen();
  auto seq = Backoff::Constant(7ms).value().Start();
  for (int i = 0; i < 5; ++i) CHECK(seq.Next(gen) == 7ms);
  CHECK(seq.retries() == 5);
}

TEST_CASE("exponential backoff doubles from base and stops at cap") {
  auto gen = FixedGen();
  auto seq = Backoff::Exponential(5ms, 100ms).value().Start();
  const std::vector<Duration> want = {5ms, 10ms, 20ms, 40ms, 80ms, 100ms, 100ms};
  for (Duration w : want) CHECK(seq.Next(gen) == w);
}

TEST_CASE("exponential backoff never overflows however many retries") {
  auto gen = FixedGen();
  auto seq = Backoff::Exponential(1ns, Duration::max()).value().Start();
  Duration last{};
  for (int i = 0; i < 200; ++i) {
    const Duration d = seq.Next(gen);
    CHECK(d >= last);
    last = d;
  }
  CHECK(last == Duration::max());
}

TEST_CASE("full jitter draws uniformly from zero to the capped exponential") {
  auto gen = FixedGen();
  const Backoff backoff = Backoff::FullJitter(10ms, 60ms).value();
  // v = 10, 20, 40, 60 (capped), 60 ms.
  const std::vector<Duration> v = {10ms, 20ms, 40ms, 60ms, 60ms};
  for (int n = 0; n < static_cast<int>(v.size()); ++n) {
    INFO("retry " << n);
    const Summary s = SampleRetry(backoff, n, gen);
    CHECK(s.min >= 0ns);
    CHECK(s.max <= v[n]);
    // Uniform over [0, v] fills it: some draw lands in each outer 2% of the range.
    CHECK(s.min < v[n] / 50);
    CHECK(s.max > v[n] - v[n] / 50);
    CHECK(s.mean_ns == Approx(static_cast<double>(v[n].count()) / 2).epsilon(0.02));
  }
}

TEST_CASE("equal jitter waits half the capped exponential plus a uniform half") {
  auto gen = FixedGen();
  const Backoff backoff = Backoff::EqualJitter(10ms, 60ms).value();
  const std::vector<Duration> v = {10ms, 20ms, 40ms, 60ms};
  for (int n = 0; n < static_cast<int>(v.size()); ++n) {
    INFO("retry " << n);
    const Summary s = SampleRetry(backoff, n, gen);
    CHECK(s.min >= v[n] / 2);
    CHECK(s.max <= v[n]);
    CHECK(s.min < v[n] / 2 + v[n] / 50);
    CHECK(s.max > v[n] - v[n] / 50);
    CHECK(s.mean_ns == Approx(static_cast<double>(v[n].count()) * 0.75).epsilon(0.02));
  }
}

TEST_CASE("equal jitter keeps the last nanosecond of an odd interval") {
  auto gen = FixedGen();
  auto backoff = Backoff::EqualJitter(3ns, 3ns).value();
  Duration max{};
  for (int i = 0; i < 1000; ++i) max = std::max(max, backoff.Start().Next(gen));
  CHECK(max == 3ns);
}

TEST_CASE("decorrelated jitter draws between base and three times the previous delay") {
  auto gen = FixedGen();
  const Backoff backoff = Backoff::DecorrelatedJitter(10ms, 1s).value();
  // The first delay is U(base, 3 * base): mean 2 * base.
  const Summary first = SampleRetry(backoff, 0, gen);
  CHECK(first.min >= 10ms);
  CHECK(first.max <= 30ms);
  CHECK(first.mean_ns == Approx(20e6).epsilon(0.02));
  // Every later delay lies in [base, min(cap, 3 * previous)].
  for (int i = 0; i < 2000; ++i) {
    auto seq = backoff.Start();
    Duration prev = 10ms;
    for (int k = 0; k < 12; ++k) {
      const Duration d = seq.Next(gen);
      REQUIRE(d >= 10ms);
      REQUIRE(d <= std::min<Duration>(1s, 3 * prev));
      prev = d;
    }
  }
}

TEST_CASE("decorrelated jitter reaches the cap and stays within it") {
  auto gen = FixedGen();
  auto seq = Backoff::DecorrelatedJitter(10ms, 50ms).value().Start();
  int at_cap = 0;
  for (int i = 0; i < 1000; ++i) {
    const Duration d = seq.Next(gen);
    REQUIRE(d <= 50ms);
    REQUIRE(d >= 10ms);
    at_cap += d == 50ms ? 1 : 0;
  }
  CHECK(at_cap > 0);
}

TEST_CASE("decorrelated jitter state belongs to one sequence") {
  auto gen = FixedGen();
  const Backoff backoff = Backoff::DecorrelatedJitter(10ms, 10s).value();
  auto grown = backoff.Start();
  for (int i = 0; i < 30; ++i) grown.Next(gen);
  // A new call starts again from base, whatever another call's sequence has reached.
  for (int i = 0; i < 100; ++i) CHECK(backoff.Start().Next(gen) <= 30ms);
}

TEST_CASE("backoff rejects a non-positive base naming the field") {
  auto s = Backoff::FullJitter(0ms, 1s).status();
  CHECK(absl::IsInvalidArgument(s));
  CHECK(std::string(s.message()).find("backoff.base must be > 0") != std::string::npos);
  CHECK(absl::IsInvalidArgument(Backoff::Constant(-1ms).status()));
}

TEST_CASE("backoff rejects base greater than cap naming both fields") {
  auto s = Backoff::Create(Backoff::Kind::kExponential, 2s, 1s, "retry.backoff").status();
  CHECK(absl::IsInvalidArgument(s));
  CHECK(std::string(s.message()) ==
        "retry.backoff.base must be <= retry.backoff.cap, got base 2s > cap 1s");
}

TEST_CASE("backoff kinds have stable printable names") {
  CHECK(Backoff::KindName(Backoff::Kind::kFullJitter) == "full_jitter");
  CHECK(Backoff::KindName(Backoff::Kind::kDecorrelatedJitter) == "decorrelated_jitter");
}

TEST_CASE("backoff accepts a zero constant delay: no backoff") {
  auto none = Backoff::Constant(0ms);
  REQUIRE(none.ok());
  absl::InsecureBitGen gen;
  keel::BackoffSequence s = none->Start();
  for (int i = 0; i < 5; ++i) CHECK(s.Next(gen) == keel::Duration::zero());
  auto negative = Backoff::Create(Backoff::Kind::kConstant, -1ms, 0ms, "retry.backoff").status();
  CHECK(std::string(negative.message()) ==
        "retry.backoff.base must be >= 0 for a constant backoff, got -1ms");
  CHECK(absl::IsInvalidArgument(Backoff::Exponential(0ms, 1s).status()));
}

TEST_CASE("backoff StartAt(1) numbers the first retry as Brooker's simulator does") {
  auto expo = Backoff::Exponential(5ms, 2000ms).value();
  absl::InsecureBitGen gen;
  keel::BackoffSequence post = expo.StartAt(1);
  CHECK(post.Next(gen) == 10ms);  // the post's expo(1) = 2 * base
  CHECK(post.Next(gen) == 20ms);
  CHECK(post.retries() == 3);
  keel::BackoffSequence keel_default = expo.Start();
  CHECK(keel_default.Next(gen) == 5ms);
  // Full jitter's first draw then spans [0, 10ms], not [0, 5ms].
  auto full = Backoff::FullJitter(5ms, 2000ms).value();
  keel::Duration most{0};
  for (int i = 0; i < 2000; ++i) most = std::max(most, full.StartAt(1).Next(gen));
  CHECK(most > 5ms);
  CHECK(most <= 10ms);
}
