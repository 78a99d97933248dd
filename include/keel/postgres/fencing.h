// keel/postgres/fencing.h: the storage side of a lock's fencing tokens on PostgreSQL: a write is
// applied only if its token is not older than the last one recorded for its resource.
//
// Defines `keel::postgres::Fencing` and `keel::postgres::FencingOptions`.
//
// A lease lock (keel/redis/lock.h) cannot stop a holder that stalled past its lease from writing
// after someone else acquired the lock; the fencing token can (Kleppmann, "How to do distributed
// locking", 2016). Every acquisition carries a strictly increasing token; the storage remembers,
// per resource, the highest token that wrote, and refuses a writer whose token is lower.
// Fencing::Check is that refusal, as one conditional statement inside the caller's transaction:
//
//   INSERT INTO <table> (resource, token) VALUES ($1, $2)
//   ON CONFLICT (resource) DO UPDATE SET token = EXCLUDED.token
//   WHERE <table>.token <= EXCLUDED.token
//
// which inserts or raises the recorded token, or changes nothing (0 rows: ABORTED) for a stale
// one. Run it first in the transaction that makes the guarded write: the row it touches stays
// locked until that transaction ends, so a stale writer racing a newer one waits for it, then
// re-reads the newer token and is refused; a refused check fails the callback, and Transact
// rolls the write back. The same token may write any number of times (one holder, several
// transactions): only a token *older* than the recorded one is refused.
//
// Thread safety: a Fencing is an immutable value; share it.
//
//   auto fencing = keel::postgres::Fencing::Create({.table = "app_fencing"}).value();
//   KEEL_RETURN_IF_ERROR(fencing.CreateTable(*pool, deadline));      // once, at startup
//   absl::Status s = pool->Transact(deadline, [&](keel::postgres::Transaction& tx) {
//     KEEL_RETURN_IF_ERROR(fencing.Check(tx, "order:42", *guard.fencing_token()));
//     return tx.Execute("UPDATE orders SET paid = true WHERE id = $1", 42).status();
//   });
//   if (absl::IsAborted(s)) { /* a newer holder wrote: our lease was lost; nothing applied */ }
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/deadline.h"
#include "keel/postgres/pool.h"
#include "keel/postgres/transaction.h"

namespace keel::postgres {

struct FencingOptions {
  // The table recording the last token per resource (`resource text PRIMARY KEY, token bigint`).
  // An unquoted identifier, optionally schema-qualified (`app.fencing`): letters, digits and
  // underscores, not starting with a digit, each part 1 to 63 bytes. Default: "keel_fencing".
  std::string table = "keel_fencing";
};

class Fencing {
 public:
  // Validates `options` (INVALID_ARGUMENT naming the field); no I/O.
  static absl::StatusOr<Fencing> Create(FencingOptions options = {});

  // `CREATE TABLE IF NOT EXISTS <table> (resource text PRIMARY KEY, token bigint NOT NULL)`.
  // Errors: as Pool::Execute.
  absl::Status CreateTable(Pool& pool, const Deadline& deadline) const;

  // Records `token` for `resource` in the caller's transaction, or refuses it (see the banner).
  // Errors: ABORTED when a newer token is recorded for `resource` (the caller's lease was lost;
  // return it from the callback so the transaction rolls back); INVALID_ARGUMENT for an empty
  // resource, one with a NUL byte, or a token < 1 (keel's tokens start at 1); otherwise as
  // Transaction::Execute.
  absl::Status Check(Transaction& tx, std::string_view resource, int64_t token) const;

  const std::string& table() const { return table_; }

 private:
  explicit Fencing(std::string table);
  std::string table_;
  std::string prefix_;  // `postgres fencing "<table>": `
  std::string check_sql_;
};

}  // namespace keel::postgres
