// keel/postgres/batch.h: walks a large query's rows in batches by keyset pagination, resumable,
// paced, bounded by a deadline and a cancellation token.
//
// Defines `keel::postgres::ForEachBatch`, `keel::postgres::BatchOptions`,
// `keel::postgres::BatchProgress` and `keel::postgres::BatchResult`.
//
// Each batch is one statement, `SELECT * FROM (<query>) AS keel_batch WHERE <key> > $1 ORDER BY
// <key> LIMIT <batch_size>` ($1 the last key of the batch before; the first batch has no WHERE
// unless resuming), so every batch costs an index range scan of its own rows, never the OFFSET
// scan of every row before it, and rows inserted or deleted between batches never shift the walk:
// each row whose key was in the table throughout is seen exactly once. PostgreSQL pushes the key
// predicate into the subquery, so an index on the key column serves it.
//
//   keel::postgres::BatchOptions opt{.name = "reindex", .query = "SELECT id, body FROM entries",
//                                    .key_column = "id", .batch_size = 500};
//   opt.start_after = LoadCheckpoint();              // resume where a previous walk stopped
//   keel::postgres::BatchResult r = keel::postgres::ForEachBatch(
//       *router, opt, [&](const keel::postgres::Rows& rows) { return Index(rows); },
//       keel::Deadline::After(10min));
//   if (r.progress.last_key) SaveCheckpoint(*r.progress.last_key);
//
// Thread safety: ForEachBatch is reentrant; `fn` runs on the calling thread, one batch at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/limit/decision.h"
#include "keel/postgres/pool.h"
#include "keel/postgres/router.h"
#include "keel/resilience/cancellation.h"

namespace keel::postgres {

struct BatchOptions {
  // Names the walk in errors (`postgres batch "<name>": ...`). Required: non-empty.
  std::string name;
  // A SELECT without ORDER BY, LIMIT or a trailing ';' that selects `key_column`, for example
  // "SELECT id, body FROM entries WHERE user_id = 7". Required.
  std::string query;
  // The column the walk is ordered by: unique and not null among the query's rows, with an
  // index for speed. A plain identifier ([A-Za-z_][A-Za-z0-9_]*, as written in the query).
  // Required.
  std::string key_column;
  // Rows per batch (and per statement). 1 to 1 000 000. Default: 1000.
  int batch_size = 1000;
  // Resume: only rows whose key is greater than this (the text form of a key, as
  // BatchProgress::last_key gives it). Default: from the first row.
  std::optional<std::string> start_after = std::nullopt;
  // Where batches are read (ForEachBatch on a Router). kEventual reads from a replica when one
  // is usable: each batch may come from a different node and see a different replication point,
  // which a keyset walk tolerates (a row inserted meanwhile may or may not be seen). Default:
  // kReadYourWrites (the primary).
  Consistency consistency = Consistency::kReadYourWrites;
  // Checked before each batch and during pacing waits: when cancelled, the walk stops with
  // CANCELLED after the last finished batch.
  CancellationToken cancellation;
  // Pacing, optional: called before each batch after the first with the number of rows of the
  // batch before (for example `[&](int64_t n) { return bucket.TryAcquire(n); }` over a
  // keel::limit::TokenBucket); a denial waits its retry_after, then asks again. An error from it
  // stops the walk with that error.
  absl::AnyInvocable<absl::StatusOr<limit::Decision>(int64_t rows)> pace;
};

struct BatchProgress {
  int64_t batches = 0;  // batches `fn` finished with OK
  int64_t rows = 0;     // their rows
  // The key of the last row of the last finished batch (text form): pass it as start_after to
  // resume. The options' start_after when no batch finished.
  std::optional<std::string> last_key;
  bool done = false;  // every row was walked
};

struct BatchResult {
  // OK when done; else why the walk stopped: `fn`'s error, DEADLINE_EXCEEDED, CANCELLED, the
  // pacer's error, or the query's error (as Pool::Execute reports it). INVALID_ARGUMENT (naming
  // the field) for bad options, before any statement.
  absl::Status status;
  BatchProgress progress;
};

// Walks `options.query`'s rows in key order, batch_size at a time, calling `fn` with each batch
// (never an empty one); stops at the first non-OK `fn` result, the deadline, a cancellation or an
// error. Bounded by `deadline` throughout (statements and pacing waits). `clock` times the
// pacing waits.
BatchResult ForEachBatch(Router& router, BatchOptions options,
                         absl::FunctionRef<absl::Status(const Rows&)> fn, Deadline deadline,
                         Clock& clock = SteadyClock());
// The same on one pool (its connections; `consistency` does not apply).
BatchResult ForEachBatch(Pool& pool, BatchOptions options,
                         absl::FunctionRef<absl::Status(const Rows&)> fn, Deadline deadline,
                         Clock& clock = SteadyClock());

}  // namespace keel::postgres
