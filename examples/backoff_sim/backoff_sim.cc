// backoff_sim: the optimistic-concurrency contention simulation from Marc Brooker's
// "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015), run on keel's real Backoff
// classes.
//
// N clients each want to update one record guarded by a version number (OCC). A client reads the
// version, then sends a conditional write that succeeds only if nobody wrote since its read; on a
// conflict it backs off (keel::BackoffSequence::Next) and starts again with a fresh read. Every
// network hop (request or response) takes |Normal(10 ms, sd 2 ms)| of simulated time; backoff
// base 5 ms, cap 2 s. For each strategy and each N in 10..200 it reports, averaged over the
// trials, the writes sent ("calls": the work the contended resource does) and the simulated time
// at which the last client succeeded ("time"). Output: a table on stdout and a CSV file.
//
// It follows the post's simulator (backoff_simulator.py in aws-samples/aws-arch-backoff-simulator)
// step for step: the same hops, the same message order, the same "time" (the last event), and
// its attempt numbering: a client's first retry is attempt 1, so its first exponential delay is
// already 2 * base (keel::Backoff::StartAt(1)); decorrelated jitter starts from base whatever the
// number. "none" is the post's no-backoff baseline, keel::Backoff::Constant(0s).
//
//   backoff_sim [--csv=backoff_sim.csv] [--trials=100] [--seed=1]
//
// Simulated time only: it runs in seconds whatever the delays.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <queue>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/random/distributions.h"
#include "keel/resilience/backoff.h"

namespace {

using namespace std::chrono_literals;
using keel::Backoff;

constexpr double kHopMeanMs = 10;
constexpr double kHopSdMs = 2;

enum class EventType : uint8_t { kReadArrives, kReadReturns, kWriteArrives, kWriteReturns };

struct Event {
  double t_ms;
  int client;
  EventType type;
  bool operator>(const Event& o) const { return t_ms > o.t_ms; }
};

struct Client {
  keel::BackoffSequence backoff;
  int64_t version_read = 0;
  bool won = false;
};

struct Outcome {
  int64_t calls = 0;
  double time_ms = 0;
};

// One trial: n clients race until every one has written once.
Outcome RunTrial(const Backoff& backoff, int n, std::mt19937_64& gen) {
  auto hop = [&gen] { return std::abs(absl::Gaussian<double>(gen, kHopMeanMs, kHopSdMs)); };
  std::vector<Client> clients(static_cast<size_t>(n), Client{backoff.StartAt(1)});
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;
  for (int c = 0; c < n; ++c) events.push({hop(), c, EventType::kReadArrives});
  int64_t server_version = 0;
  Outcome out;
  while (!events.empty()) {
    const Event e = events.top();
    events.pop();
    Client& client = clients[static_cast<size_t>(e.client)];
    switch (e.type) {
      case EventType::kReadArrives:
        client.version_read = server_version;
        events.push({e.t_ms + hop(), e.client, EventType::kReadReturns});
        break;
      case EventType::kReadReturns:
        ++out.calls;  // the conditional write
        events.push({e.t_ms + hop(), e.client, EventType::kWriteArrives});
        break;
      case EventType::kWriteArrives:
        client.won = client.version_read == server_version;
        if (client.won) ++server_version;
        events.push({e.t_ms + hop(), e.client, EventType::kWriteReturns});
        break;
      case EventType::kWriteReturns:
        if (client.won) {
          out.time_ms = e.t_ms;  // events come in time order: the last one is the completion
        } else {
          const double sleep_ms =
              std::chrono::duration<double, std::milli>(client.backoff.Next(gen)).count();
          events.push({e.t_ms + sleep_ms + hop(), e.client, EventType::kReadArrives});
        }
        break;
    }
  }
  return out;
}

// The strategy's name in the table: the post calls the zero constant "None".
std::string_view Label(const Backoff& b) {
  if (b.kind() == Backoff::Kind::kConstant && b.base() == keel::Duration::zero()) return "none";
  return Backoff::KindName(b.kind());
}

std::string Flag(int argc, char** argv, std::string_view name, std::string fallback) {
  const std::string prefix = "--" + std::string(name) + "=";
  for (int i = 1; i < argc; ++i) {
    std::string_view arg(argv[i]);
    if (arg.substr(0, prefix.size()) == prefix) return std::string(arg.substr(prefix.size()));
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string csv_path = Flag(argc, argv, "csv", "backoff_sim.csv");
  const int trials = std::atoi(Flag(argc, argv, "trials", "100").c_str());
  const auto seed = static_cast<uint64_t>(std::atoll(Flag(argc, argv, "seed", "1").c_str()));
  if (trials < 1) {
    std::fprintf(stderr, "backoff_sim: --trials must be >= 1\n");
    return 2;
  }
  const std::vector<Backoff::Kind> kinds = {Backoff::Kind::kExponential, Backoff::Kind::kFullJitter,
                                            Backoff::Kind::kEqualJitter,
                                            Backoff::Kind::kDecorrelatedJitter};
  std::vector<Backoff> backoffs;
  for (Backoff::Kind kind : kinds) backoffs.push_back(Backoff::Create(kind, 5ms, 2s).value());
  backoffs.push_back(Backoff::Constant(0s).value());  // the post's NoBackoff baseline

  std::FILE* csv = std::fopen(csv_path.c_str(), "w");
  if (csv == nullptr) {
    std::perror(csv_path.c_str());
    return 1;
  }
  std::fprintf(csv, "clients,strategy,calls,time_ms\n");
  std::printf("OCC contention, %d trials per cell, hop |N(10ms, 2ms)|, base 5ms, cap 2s\n", trials);
  std::printf("%8s", "clients");
  for (const Backoff& b : backoffs) {
    std::printf(" | %-28.*s", static_cast<int>(Label(b).size()), Label(b).data());
  }
  std::printf("\n%8s", "");
  for (size_t i = 0; i < backoffs.size(); ++i) std::printf(" | %9s %18s", "calls", "time (ms)");
  std::printf("\n");

  std::mt19937_64 gen(seed);
  for (int n = 10; n <= 200; n += 10) {
    std::printf("%8d", n);
    for (const Backoff& b : backoffs) {
      double calls = 0;
      double time_ms = 0;
      for (int t = 0; t < trials; ++t) {
        const Outcome o = RunTrial(b, n, gen);
        calls += static_cast<double>(o.calls);
        time_ms += o.time_ms;
      }
      calls /= trials;
      time_ms /= trials;
      std::printf(" | %9.0f %18.0f", calls, time_ms);
      std::fprintf(csv, "%d,%.*s,%.1f,%.1f\n", n, static_cast<int>(Label(b).size()),
                   Label(b).data(), calls, time_ms);
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  std::fclose(csv);
  std::printf("wrote %s\n", csv_path.c_str());
  return 0;
}
