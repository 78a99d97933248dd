#include "keel/postgres/batch.h"

#include <string_view>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/strings.h"

namespace keel::postgres {
namespace {

using keel::internal::FormatDuration;
using keel::internal::StrCat;

constexpr int kMaxBatchSize = 1'000'000;

bool IsIdentifier(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
  if (!letter(s[0])) return false;
  for (char c : s) {
    if (!letter(c) && !(c >= '0' && c <= '9')) return false;
  }
  return true;
}

absl::Status Validate(const BatchOptions& o, const std::string& prefix) {
  if (o.name.empty()) return absl::InvalidArgumentError("postgres batch: name must not be empty");
  if (o.query.empty()) return absl::InvalidArgumentError(StrCat(prefix, "query must not be empty"));
  if (!IsIdentifier(o.key_column)) {
    return absl::InvalidArgumentError(
        StrCat(prefix,
               "key_column must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63 "
               "bytes), got \"",
               o.key_column, "\""));
  }
  if (o.batch_size < 1 || o.batch_size > kMaxBatchSize) {
    return absl::InvalidArgumentError(
        StrCat(prefix, "batch_size must be 1 to ", kMaxBatchSize, ", got ", o.batch_size));
  }
  return absl::OkStatus();
}

// Runs one batch's statement: `after` binds $1 of `sql` when set.
using RunBatch =
    absl::FunctionRef<absl::StatusOr<Rows>(const std::string& sql, const std::string* after)>;

// Waits until the pacer admits `rows` more, within the deadline; OK to go on.
absl::Status Pace(BatchOptions& o, const std::string& prefix, int64_t rows,
                  const Deadline& deadline, Clock& clock) {
  while (true) {
    absl::StatusOr<limit::Decision> d = o.pace(rows);
    if (!d.ok()) return d.status();
    if (d->allowed) return absl::OkStatus();
    if (d->retry_after > deadline.Remaining()) {
      return absl::DeadlineExceededError(StrCat(
          prefix, "pacing asks to wait ", FormatDuration(d->retry_after), ", past the deadline"));
    }
    if (!o.cancellation.SleepUntil(clock, clock.Now() + d->retry_after)) {
      return absl::CancelledError(StrCat(prefix, "cancelled"));
    }
  }
}

BatchResult Walk(BatchOptions o, RunBatch run, absl::FunctionRef<absl::Status(const Rows&)> fn,
                 const Deadline& deadline, Clock& clock) {
  const std::string prefix = StrCat("postgres batch \"", o.name, "\": ");
  BatchResult result;
  result.progress.last_key = o.start_after;
  if (absl::Status valid = Validate(o, prefix); !valid.ok()) {
    result.status = std::move(valid);
    return result;
  }
  const std::string& key = o.key_column;
  const std::string order = StrCat(" ORDER BY keel_batch.", key, " LIMIT ", o.batch_size);
  const std::string first = StrCat("SELECT * FROM (", o.query, ") AS keel_batch", order);
  const std::string next =
      StrCat("SELECT * FROM (", o.query, ") AS keel_batch WHERE keel_batch.", key, " > $1", order);
  BatchProgress& p = result.progress;
  int key_col = -1;
  int64_t previous = -1;  // rows of the batch before, -1 before the first
  while (true) {
    if (o.cancellation.cancelled()) {
      result.status =
          absl::CancelledError(StrCat(prefix, "cancelled after ", p.batches, " batches"));
      return result;
    }
    if (deadline.Expired()) {
      result.status = absl::DeadlineExceededError(
          StrCat(prefix, "deadline passed after ", p.batches, " batches (", p.rows, " rows)"));
      return result;
    }
    if (previous >= 0 && o.pace) {
      if (absl::Status paced = Pace(o, prefix, previous, deadline, clock); !paced.ok()) {
        result.status = std::move(paced);
        return result;
      }
    }
    absl::StatusOr<Rows> rows =
        p.last_key ? run(next, &*p.last_key) : run(first, static_cast<const std::string*>(nullptr));
    if (!rows.ok()) {
      result.status = rows.status();
      return result;
    }
    if (rows->empty()) {
      p.done = true;
      return result;
    }
    if (key_col < 0) {
      for (int c = 0; c < rows->columns(); ++c) {
        if (rows->column_name(c) == key) key_col = c;
      }
      if (key_col < 0) {
        result.status = absl::InvalidArgumentError(
            StrCat(prefix, "the query does not select key_column \"", key, "\""));
        return result;
      }
    }
    const int last = rows->size() - 1;
    if (rows->IsNull(last, key_col)) {
      result.status = absl::InvalidArgumentError(
          StrCat(prefix, "key_column \"", key, "\" is NULL in a row: keys must be non-null"));
      return result;
    }
    std::string last_key(rows->Text(last, key_col));
    if (absl::Status done = fn(*rows); !done.ok()) {
      result.status = std::move(done);
      return result;
    }
    ++p.batches;
    p.rows += rows->size();
    p.last_key = std::move(last_key);
    if (rows->size() < o.batch_size) {
      p.done = true;
      return result;
    }
    previous = rows->size();
  }
}

}  // namespace

BatchResult ForEachBatch(Router& router, BatchOptions options,
                         absl::FunctionRef<absl::Status(const Rows&)> fn, Deadline deadline,
                         Clock& clock) {
  const Consistency consistency = options.consistency;
  return Walk(
      std::move(options),
      [&](const std::string& sql, const std::string* after) -> absl::StatusOr<Rows> {
        absl::StatusOr<RoutedLease> lease = router.Read(deadline, consistency);
        if (!lease.ok()) return lease.status();
        if (after == nullptr) return lease->pool->Execute(deadline, lease->lease, sql);
        return lease->pool->Execute(deadline, lease->lease, sql, *after);
      },
      fn, deadline, clock);
}

BatchResult ForEachBatch(Pool& pool, BatchOptions options,
                         absl::FunctionRef<absl::Status(const Rows&)> fn, Deadline deadline,
                         Clock& clock) {
  return Walk(
      std::move(options),
      [&](const std::string& sql, const std::string* after) -> absl::StatusOr<Rows> {
        if (after == nullptr) return pool.Execute(deadline, sql);
        return pool.Execute(deadline, sql, *after);
      },
      fn, deadline, clock);
}

}  // namespace keel::postgres
