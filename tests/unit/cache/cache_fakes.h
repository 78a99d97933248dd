// In-memory stand-ins for a remote cache tier and a cross-process stampede lock. Test code only.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "keel/cache/tier.h"
#include "keel/sync.h"

namespace keel::test {

// A tier that keeps no metadata (like Redis), can be taken down, and counts its calls.
class FakeRemoteTier final : public cache::Tier<std::string> {
 public:
  std::string_view kind() const override { return "remote"; }

  absl::StatusOr<std::optional<Hit>> Get(Deadline, std::string_view key) override {
    gets.fetch_add(1);
    if (down.load()) return absl::UnavailableError("remote tier down");
    MutexLock lock(mu_);
    auto it = entries_.find(std::string(key));
    if (it == entries_.end()) return std::optional<Hit>();
    return std::optional<Hit>(Hit{it->second.value, std::nullopt});
  }
  absl::Status Set(Deadline, std::string_view key, const std::optional<std::string>& value,
                   Duration ttl, Duration) override {
    sets.fetch_add(1);
    if (down.load() || refuse_sets.load()) return absl::UnavailableError("remote tier down");
    MutexLock lock(mu_);
    entries_[std::string(key)] = {value, ttl};
    return absl::OkStatus();
  }
  absl::Status Erase(Deadline, std::string_view key) override {
    erases.fetch_add(1);
    if (down.load()) return absl::UnavailableError("remote tier down");
    MutexLock lock(mu_);
    entries_.erase(std::string(key));
    return absl::OkStatus();
  }

  // What the tier holds for `key`: nullopt when nothing; a value of nullopt for a negative entry.
  std::optional<std::optional<std::string>> Peek(const std::string& key) {
    MutexLock lock(mu_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return std::nullopt;
    return it->second.value;
  }
  std::optional<Duration> TtlOf(const std::string& key) {
    MutexLock lock(mu_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return std::nullopt;
    return it->second.ttl;
  }
  void Put(const std::string& key, std::optional<std::string> value) {
    MutexLock lock(mu_);
    entries_[key] = {std::move(value), std::chrono::hours(1)};
  }

  std::atomic<bool> down{false};
  std::atomic<bool> refuse_sets{false};
  std::atomic<int> gets{0}, sets{0}, erases{0};

 private:
  struct Entry {
    std::optional<std::string> value;
    Duration ttl;
  };
  Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

// A stampede lock whose holder the test decides: free, held by "another process", or failing.
class FakeStampedeLock final : public cache::StampedeLock {
 public:
  enum class State { kFree, kHeldElsewhere, kDown };
  absl::StatusOr<std::unique_ptr<Hold>> TryAcquire(Deadline, std::string_view) override {
    attempts.fetch_add(1);
    switch (state.load()) {
      case State::kDown:
        return absl::UnavailableError("lock backend down");
      case State::kHeldElsewhere:
        return std::unique_ptr<Hold>();
      case State::kFree:
        break;
    }
    return std::unique_ptr<Hold>(new Held(this));
  }
  std::atomic<State> state{State::kFree};
  std::atomic<int> attempts{0}, held{0}, released{0};

 private:
  struct Held final : Hold {
    explicit Held(FakeStampedeLock* l) : lock(l) { lock->held.fetch_add(1); }
    ~Held() override { lock->released.fetch_add(1); }
    FakeStampedeLock* lock;
  };
};

}  // namespace keel::test
