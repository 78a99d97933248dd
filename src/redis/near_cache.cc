// keel::redis::NearCacheTier's tracker: CLIENT TRACKING BCAST on a Subscriber connection (see
// near_cache.h).
#include "keel/redis/near_cache.h"

#include <utility>

#include "absl/hash/hash.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::redis::internal {

using keel::internal::StrCat;

namespace {
constexpr std::string_view kChannel = "__redis__:invalidate";

// The last read of this thread, checked by the fill that follows it (the cache reads a tier and
// fills it on the same thread).
thread_local NearCacheTracker::Ticket last_read;
}  // namespace

absl::StatusOr<std::unique_ptr<NearCacheTracker>> NearCacheTracker::Create(
    const std::string& name, Options redis, Clock& clock, MetricsRegistry* metrics) {
  const keel::internal::OptionsOf of("near cache", name);
  if (name.empty() || name.size() > 128) {
    return keel::internal::InvalidOption(of, "name", "1 to 128 bytes", name.size());
  }
  std::unique_ptr<NearCacheTracker> tracker(new NearCacheTracker(name, std::move(redis), clock));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(tracker->RegisterMetrics(*metrics));
  return tracker;
}

NearCacheTracker::NearCacheTracker(std::string name, Options redis, Clock& clock)
    : name_(std::move(name)),
      prefix_(StrCat("keel:cache:", name_, ":")),
      redis_(std::move(redis)),
      clock_(clock),
      stripes_(new std::atomic<uint64_t>[kStripes]) {
  for (size_t i = 0; i < kStripes; ++i) stripes_[i].store(0, std::memory_order_relaxed);
}

NearCacheTracker::~NearCacheTracker() {
  if (subscriber_) subscriber_->Shutdown();  // no hook runs after this
}

absl::Status NearCacheTracker::Start(Targets targets) {
  targets_ = std::move(targets);
  SubscriberHooks hooks{
      .on_message = [this](const Message& m) { OnInvalidate(m); },
      .on_reconnect = nullptr,
      .on_error =
          [this](const absl::Status&) {
            // Invalidations may be missed from now on: keep nothing until tracking is back.
            tracking_.store(false, std::memory_order_release);
            ClearAll();
          },
      .on_connect = [this](Connection& c, Deadline d) { return OnConnect(c, d); },
  };
  KEEL_ASSIGN_OR_RETURN(subscriber_, Subscriber::Create(redis_, std::move(hooks), clock_));
  return absl::OkStatus();
}

absl::Status NearCacheTracker::OnConnect(Connection& connection, Deadline deadline) {
  tracking_.store(false, std::memory_order_release);
  KEEL_ASSIGN_OR_RETURN(Reply id, connection.Command(deadline, "CLIENT", "ID"));
  KEEL_ASSIGN_OR_RETURN(int64_t own_id, id.AsInteger());
  // Redirected to this very connection: in RESP2 the invalidations then arrive as messages on
  // __redis__:invalidate once it is subscribed.
  KEEL_RETURN_IF_ERROR(connection
                           .Command(deadline, "CLIENT", "TRACKING", "on", "REDIRECT", own_id,
                                    "BCAST", "PREFIX", prefix_)
                           .status());
  const std::string_view subscribe[] = {"SUBSCRIBE", kChannel};
  KEEL_RETURN_IF_ERROR(connection.Send(deadline, subscribe));
  for (;;) {
    KEEL_ASSIGN_OR_RETURN(std::optional<Reply> reply, connection.Receive(deadline));
    if (!reply) {
      return absl::DeadlineExceededError(
          StrCat("near cache \"", name_, "\": no SUBSCRIBE confirmation within the deadline"));
    }
    const auto& e = reply->elements();
    if (e.size() >= 2 && e[0].str() == "subscribe" && e[1].str() == kChannel) break;
  }
  // Subscribed: every invalidation from now on reaches us. What the tier held before may have
  // missed some, so it goes.
  ClearAll();
  tracking_.store(true, std::memory_order_release);
  return absl::OkStatus();
}

void NearCacheTracker::OnInvalidate(const Message& m) {
  if (m.channel != kChannel) return;
  if (m.nil_payload) {  // FLUSHALL / FLUSHDB
    ClearAll();
    return;
  }
  for (const std::string& key : m.elements) {
    if (key.size() < prefix_.size() || key.compare(0, prefix_.size(), prefix_) != 0) continue;
    const std::string_view local = std::string_view(key).substr(prefix_.size());
    // The stripe first, the erase second: a fill that stored before the erase is erased by it;
    // one that stores after it sees the stripe moved and drops itself (FillStands).
    stripes_[Hash(local) % kStripes].fetch_add(1, std::memory_order_seq_cst);
    targets_.erase(local);
    invalidations_.fetch_add(1, std::memory_order_relaxed);
  }
}

void NearCacheTracker::ClearAll() {
  epoch_.fetch_add(1, std::memory_order_seq_cst);  // before the clear, as in OnInvalidate
  if (targets_.clear) targets_.clear();
  clears_.fetch_add(1, std::memory_order_relaxed);
}

uint64_t NearCacheTracker::Hash(std::string_view key) const {
  return absl::Hash<absl::string_view>()(absl::string_view(key.data(), key.size()));
}

void NearCacheTracker::NoteRead(std::string_view key) const {
  const uint64_t h = Hash(key);
  // seq_cst pairs with the invalidation's fetch_add: a read that misses an invalidation's stripe
  // change happened before it, and the fill's check after the store then sees the change.
  last_read = {.tracker = this,
               .hash = h,
               .epoch = epoch_.load(std::memory_order_seq_cst),
               .stripe = stripes_[h % kStripes].load(std::memory_order_seq_cst)};
}

bool NearCacheTracker::FillStands(std::string_view key) const {
  const uint64_t h = Hash(key);
  const bool stands = last_read.tracker == this && last_read.hash == h &&
                      last_read.epoch == epoch_.load(std::memory_order_seq_cst) &&
                      last_read.stripe == stripes_[h % kStripes].load(std::memory_order_seq_cst);
  if (!stands) skipped_.fetch_add(1, std::memory_order_relaxed);
  return stands;
}

NearCacheStats NearCacheTracker::Stats() const {
  return {.tracking = tracking(),
          .invalidations_total = invalidations_.load(std::memory_order_relaxed),
          .clears_total = clears_.load(std::memory_order_relaxed),
          .fills_skipped_total = skipped_.load(std::memory_order_relaxed)};
}

absl::Status NearCacheTracker::RegisterMetrics(MetricsRegistry& metrics) {
  const Labels labels = {{"name", name_}};
  const auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  const auto count = [](const std::atomic<uint64_t>& a) {
    return [&a] { return static_cast<double>(a.load(std::memory_order_relaxed)); };
  };
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_cache_invalidations_total", "Keys Redis invalidated in a near cache (dropped locally).",
      labels, count(invalidations_))));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_cache_near_clears_total",
      "Near cache clears: tracking (re)connected or dropped, FLUSHALL.", labels, count(clears_))));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_cache_near_fills_skipped_total",
      "Near cache fills not kept (raced with an invalidation, or no read before them).", labels,
      count(skipped_))));
  return keep(metrics.AddGaugeCallback("keel_cache_near_tracking",
                                       "1 while the near cache's invalidation connection is up.",
                                       labels, [this] { return tracking() ? 1.0 : 0.0; }));
}

}  // namespace keel::redis::internal
