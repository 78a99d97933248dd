// keel/resilience/call_context.h: what every policy passes down to the call it protects.
//
// Defines `keel::CallContext`: the deadline the call must honour, the cancellation token it may
// poll, which attempt this is, how critical the call is, and whether it may run twice at once.
// Policies derive the context they pass inward from the one they received (a Timeout shortens the
// deadline, a Retry sets the attempt number), so the innermost call sees the tightest bound of
// every layer around it.
//
// Thread safety: a value; copy it freely.
//
//   pipeline.Execute(keel::Deadline::After(250ms), [&](const keel::CallContext& ctx) {
//     return db.Query(sql, ctx.deadline);   // statement timeout from what is left
//   });
#pragma once

#include "keel/deadline.h"
#include "keel/resilience/cancellation.h"

namespace keel {

// How much a caller loses when this call is shed, from most to least critical. Overload controls
// shed lower criticalities first. The names and their meaning follow the Google SRE book
// ("Handling Overload"):
//   kCriticalPlus   the user sees a failure if this call fails; reserve for the few that matter
//                   most (payment, login).
//   kCritical       the default: traffic served to users, failure is visible.
//   kSheddablePlus  partial unavailability is expected and tolerated (batch work that retries).
//   kSheddable      frequent partial unavailability is fine (prefetch, analytics).
enum class Criticality : int {
  kCriticalPlus = 0,
  kCritical = 1,
  kSheddablePlus = 2,
  kSheddable = 3,
};

// "critical_plus", "critical", "sheddable_plus" or "sheddable": for messages and metric labels.
constexpr const char* CriticalityName(Criticality c) {
  switch (c) {
    case Criticality::kCriticalPlus:
      return "critical_plus";
    case Criticality::kCritical:
      return "critical";
    case Criticality::kSheddablePlus:
      return "sheddable_plus";
    case Criticality::kSheddable:
      return "sheddable";
  }
  return "unknown";
}

struct CallContext {
  // The time by which the call must have returned. Infinite unless a caller or a policy set one.
  Deadline deadline = Deadline::Infinite();
  // Signalled when nobody waits for the result any more (an executor Timeout gave up). A default
  // token is never cancelled.
  CancellationToken cancellation;
  // 1 for the first attempt, 2 for the first retry, ...
  int attempt = 1;
  // How critical the call is; overload controls shed the least critical first. Policies pass it
  // inward unchanged.
  Criticality criticality = Criticality::kCritical;
  // Whether running the call more than once at the same time is harmless (a read, a write with
  // an idempotency key). keel::overload::Hedge sends extra attempts only for idempotent calls.
  // Policies pass it inward unchanged.
  bool idempotent = false;
};

}  // namespace keel
