// Test support: a throwaway PostgreSQL cluster (and streaming replicas of it) that a test may
// stop, restart and break. initdb + pg_ctl in a TempDir, run as the postgres user when we are
// root. Test code only; not part of keel.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "support/subprocess.h"

namespace keel::test {

class PgServer {
 public:
  // initdb (trust auth, fsync off) and start on a free loopback port. Takes ~2 s.
  static absl::StatusOr<std::unique_ptr<PgServer>> StartPrimary();
  // pg_basebackup -R from `primary` and start it as a hot-standby streaming replica.
  static absl::StatusOr<std::unique_ptr<PgServer>> StartReplicaOf(const PgServer& primary);

  ~PgServer();  // stops the server (immediate) and removes its directory

  int port() const { return port_; }
  // postgresql://postgres@127.0.0.1:<port>/<db>
  std::string url(const std::string& db = "postgres") const;

  absl::Status Stop(const std::string& mode = "fast");
  absl::Status Start();
  absl::Status Restart(const std::string& mode = "fast");
  // SIGSTOP / SIGCONT to the postmaster and every backend and auxiliary process it started: the
  // server keeps its sockets (the kernel still accepts TCP) but answers nothing.
  absl::Status Pause();
  absl::Status Resume();
  // Runs `sql` with psql; the output (unaligned, tuples only) or an error with psql's output.
  absl::StatusOr<std::string> Psql(const std::string& sql) const;

 private:
  PgServer() = default;
  std::string PgCtl(const std::string& args) const;
  absl::Status Signal(int sig);

  std::unique_ptr<TempDir> dir_;
  std::string bin_;
  std::string data_;
  int port_ = 0;
  bool running_ = false;
};

}  // namespace keel::test
