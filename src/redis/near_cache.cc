// keel::redis::NearCacheTier's tracker: CLIENT TRACKING, BCAST on a Subscriber connection or
// per key on a reading client redirected to it (see near_cache.h).
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

// A hook's use of the tracker through the link: none once the tracker is going.
class NearCacheTracker::LinkUse {
 public:
  explicit LinkUse(const std::shared_ptr<Link>& link) : link_(*link) {
    MutexLock lock(link_.mu);
    tracker_ = link_.tracker;
    if (tracker_ != nullptr) ++link_.running;
  }
  ~LinkUse() {
    if (tracker_ == nullptr) return;
    MutexLock lock(link_.mu);
    if (--link_.running == 0) link_.idle.SignalAll();
  }
  LinkUse(const LinkUse&) = delete;
  LinkUse& operator=(const LinkUse&) = delete;
  NearCacheTracker* tracker() const { return tracker_; }

 private:
  Link& link_;
  NearCacheTracker* tracker_ = nullptr;
};

absl::StatusOr<std::unique_ptr<NearCacheTracker>> NearCacheTracker::Create(
    const std::string& name, NearCacheMode mode, Options redis, Clock& clock,
    MetricsRegistry* metrics) {
  const keel::internal::OptionsOf of("near cache", name);
  if (name.empty() || name.size() > 128) {
    return keel::internal::InvalidOption(of, "name", "1 to 128 bytes", name.size());
  }
  if (mode != NearCacheMode::kBroadcast && mode != NearCacheMode::kPerKey) {
    return keel::internal::InvalidOption(of, "mode", "kBroadcast or kPerKey",
                                         static_cast<int>(mode));
  }
  std::unique_ptr<NearCacheTracker> tracker(
      new NearCacheTracker(name, mode, std::move(redis), clock));
  if (mode == NearCacheMode::kPerKey) {
    Options reads = tracker->redis_;
    reads.transport = Transport::kMultiplexed;
    reads.mux.connections = 1;  // one connection to track, one redirect to keep pointed
    if (reads.pool.name == "redis") reads.pool.name = StrCat("near cache ", name);
    std::shared_ptr<Link> link = tracker->link_;
    reads.connection_hooks = {
        .on_connect = [link](Connection& c, Deadline d) -> absl::Status {
          LinkUse use(link);
          if (use.tracker() == nullptr) return absl::OkStatus();
          return use.tracker()->OnReaderConnect(c, d);
        },
        .on_lost =
            [link] {
              LinkUse use(link);
              if (use.tracker() != nullptr) use.tracker()->OnReaderLost();
            },
    };
    KEEL_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Create(std::move(reads), clock));
    tracker->client_ = std::move(client);
  }
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(tracker->RegisterMetrics(*metrics));
  return tracker;
}

NearCacheTracker::NearCacheTracker(std::string name, NearCacheMode mode, Options redis,
                                   Clock& clock)
    : name_(std::move(name)),
      mode_(mode),
      prefix_(StrCat("keel:cache:", name_, ":")),
      redis_(std::move(redis)),
      clock_(clock),
      stripes_(new std::atomic<uint64_t>[kStripes]),
      link_(std::make_shared<Link>()) {
  for (size_t i = 0; i < kStripes; ++i) stripes_[i].store(0, std::memory_order_relaxed);
  MutexLock lock(link_->mu);
  link_->tracker = this;
}

NearCacheTracker::~NearCacheTracker() {
  if (subscriber_) subscriber_->Shutdown();  // no hook runs after this
  // The reading client may live on (its user holds it): detach its hooks, and wait for any
  // running now (they do not wait for anything that waits for this).
  MutexLock lock(link_->mu);
  link_->tracker = nullptr;
  while (link_->running > 0) link_->idle.Wait(link_->mu);
}

absl::Status NearCacheTracker::Start(Targets targets) {
  targets_ = std::move(targets);
  SubscriberHooks hooks{
      .on_message = [this](const Message& m) { OnInvalidate(m); },
      .on_reconnect = nullptr,
      .on_error = [this](const absl::Status&) { OnSubscriberDown(); },
      .on_connect = [this](Connection& c, Deadline d) { return OnConnect(c, d); },
  };
  KEEL_ASSIGN_OR_RETURN(subscriber_, Subscriber::Create(redis_, std::move(hooks), clock_));
  return absl::OkStatus();
}

absl::Status NearCacheTracker::OnConnect(Connection& connection, Deadline deadline) {
  OnSubscriberDown();  // a new connection: not tracking until it is subscribed
  KEEL_ASSIGN_OR_RETURN(Reply id, connection.Command(deadline, "CLIENT", "ID"));
  KEEL_ASSIGN_OR_RETURN(int64_t own_id, id.AsInteger());
  if (mode_ == NearCacheMode::kBroadcast) {
    // Redirected to this very connection: in RESP2 the invalidations then arrive as messages on
    // __redis__:invalidate once it is subscribed.
    KEEL_RETURN_IF_ERROR(connection
                             .Command(deadline, "CLIENT", "TRACKING", "on", "REDIRECT", own_id,
                                      "BCAST", "PREFIX", prefix_)
                             .status());
  }
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
  // Subscribed: every invalidation from now on reaches us.
  bool repoint = false;
  {
    MutexLock lock(mu_);
    subscriber_id_ = own_id;
    // kPerKey: a reading connection tracked with another redirect (or none) sends its
    // invalidations nowhere: it must be set up again, pointing here.
    // Only one that is up: one not up yet, or still being set up, points here by itself.
    repoint = client_ != nullptr && reader_up_ && reader_redirect_ != own_id;
  }
  UpdateTracking();
  if (repoint) {
    repoints_.fetch_add(1, std::memory_order_relaxed);
    client_->Reconnect(
        StrCat("near cache \"", name_, "\": its invalidation connection changed: tracking again"));
  }
  if (client_ != nullptr) {
    // A reading client not connected (never, or just closed) connects now, so tracking comes up
    // without waiting for the first read. The reply does not matter.
    (void)client_->AsyncCommand(Deadline::After(redis_.connect_timeout, clock_), "PING");
  }
  return absl::OkStatus();
}

void NearCacheTracker::OnSubscriberDown() {
  {
    MutexLock lock(mu_);
    subscriber_id_ = 0;
  }
  UpdateTracking();
}

absl::Status NearCacheTracker::OnReaderConnect(Connection& connection, Deadline deadline) {
  // Track with the subscriber's current id; if it changes while the command is on its way, do it
  // again with the new one. With the subscriber down, the connection is made untracked (reads
  // work, the tier keeps nothing) and the subscriber re-points it once it is back. The last check
  // and the state it leaves are under one lock with the subscriber's update, so either this
  // setup sees the subscriber's new id or the subscriber sees this connection and re-points it.
  int64_t id = 0;
  {
    MutexLock lock(mu_);
    id = subscriber_id_;
  }
  for (;;) {
    if (id != 0) {
      KEEL_RETURN_IF_ERROR(
          connection.Command(deadline, "CLIENT", "TRACKING", "on", "REDIRECT", id).status());
    }
    MutexLock lock(mu_);
    if (subscriber_id_ == id) {
      reader_redirect_ = id;
      reader_up_ = true;
      break;
    }
    id = subscriber_id_;
  }
  UpdateTracking();
  return absl::OkStatus();
}

void NearCacheTracker::OnReaderLost() {
  {
    MutexLock lock(mu_);
    reader_redirect_ = 0;  // Redis forgot what the lost connection read
    reader_up_ = false;
  }
  UpdateTracking();
}

void NearCacheTracker::UpdateTracking() {
  // Under the lock, so that concurrent updates (subscriber thread, connector, I/O thread) apply
  // in the order they computed. The clear takes the store's shard locks, never this one.
  MutexLock lock(mu_);
  const bool on = subscriber_id_ != 0 &&
                  (mode_ == NearCacheMode::kBroadcast || reader_redirect_ == subscriber_id_);
  const bool was = tracking_.load(std::memory_order_acquire);
  if (on == was) return;
  // Turning on, what the tier held may have missed invalidations; turning off, nothing will
  // invalidate it any more: either way it goes. Off before the clear, on after it.
  if (!on) tracking_.store(false, std::memory_order_release);
  ClearAll();
  if (on) tracking_.store(true, std::memory_order_release);
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
          .fills_skipped_total = skipped_.load(std::memory_order_relaxed),
          .repoints_total = repoints_.load(std::memory_order_relaxed)};
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
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_cache_near_repoints_total",
      "Per-key near cache: reading connections reconnected to track for a new invalidation "
      "connection.",
      labels, count(repoints_))));
  return keep(metrics.AddGaugeCallback("keel_cache_near_tracking",
                                       "1 while the near cache's invalidation connection is up.",
                                       labels, [this] { return tracking() ? 1.0 : 0.0; }));
}

}  // namespace keel::redis::internal
