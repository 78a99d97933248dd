// keel/keel.h: the umbrella header, including every public keel header.
//
// Convenient for examples and small programs; larger code bases should include the headers of the
// building blocks they use, which keeps builds fast and dependencies visible (a user of
// keel/resilience/ needs only keel::core, never hiredis or libpqxx).
//
// Thread safety: see each included header.
//
//   #include "keel/keel.h"
//   keel::MetricsRegistry registry;
//   auto deadline = keel::Deadline::After(std::chrono::milliseconds(200));
#pragma once

#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"
#include "keel/resilience/cancellation.h"
#include "keel/status.h"
#include "keel/version.h"
