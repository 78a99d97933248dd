// keel/resilience/call_context.h: what every policy passes down to the call it protects.
//
// Defines `keel::CallContext`: the deadline the call must honour, the cancellation token it may
// poll, and which attempt this is. Policies derive the context they pass inward from the one they
// received (a Timeout shortens the deadline, a Retry sets the attempt number), so the innermost
// call sees the tightest bound of every layer around it.
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

struct CallContext {
  // The time by which the call must have returned. Infinite unless a caller or a policy set one.
  Deadline deadline = Deadline::Infinite();
  // Signalled when nobody waits for the result any more (an executor Timeout gave up). A default
  // token is never cancelled.
  CancellationToken cancellation;
  // 1 for the first attempt, 2 for the first retry, ...
  int attempt = 1;
};

}  // namespace keel
