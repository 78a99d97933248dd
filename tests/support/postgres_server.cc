#include "support/postgres_server.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace keel::test {
namespace {

std::string AsPostgres(const std::string& command) {
  return getuid() == 0 ? "runuser -u postgres -- " + command : command;
}

std::string PgBin() { return Env("KEEL_TEST_PG_BIN").value_or("/usr/lib/postgresql/15/bin"); }

absl::Status Run(const std::string& what, const std::string& command) {
  ShellResult r = RunShell(command);
  if (r.exit_code != 0) {
    return absl::InternalError(absl::StrCat(what, " failed (", r.exit_code, "): ", r.output));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TempDir>> OwnedTempDir() {
  auto dir = std::make_unique<TempDir>("keel-pg");
  if (getuid() == 0) {
    if (auto s = Run("chown", "chown postgres:postgres " + dir->path().string()); !s.ok()) return s;
  }
  return dir;
}

}  // namespace

std::string PgServer::PgCtl(const std::string& args) const {
  return AsPostgres(
      absl::StrCat(bin_, "/pg_ctl -D ", data_, " -l ", data_, "/../server.log ", args));
}

absl::StatusOr<std::unique_ptr<PgServer>> PgServer::StartPrimary() {
  std::unique_ptr<PgServer> s(new PgServer);
  auto dir = OwnedTempDir();
  if (!dir.ok()) return dir.status();
  s->dir_ = std::move(*dir);
  s->bin_ = PgBin();
  s->data_ = (s->dir_->path() / "data").string();
  s->port_ = FreeLoopbackPort();
  if (auto st = Run("initdb", AsPostgres(absl::StrCat(s->bin_, "/initdb -D ", s->data_,
                                                      " -U postgres --auth=trust -E UTF8 "
                                                      "--no-sync --no-instructions")));
      !st.ok()) {
    return st;
  }
  if (auto st = s->Start(); !st.ok()) return st;
  return s;
}

absl::StatusOr<std::unique_ptr<PgServer>> PgServer::StartReplicaOf(const PgServer& primary) {
  std::unique_ptr<PgServer> s(new PgServer);
  auto dir = OwnedTempDir();
  if (!dir.ok()) return dir.status();
  s->dir_ = std::move(*dir);
  s->bin_ = primary.bin_;
  s->data_ = (s->dir_->path() / "data").string();
  s->port_ = FreeLoopbackPort();
  if (auto st =
          Run("pg_basebackup", AsPostgres(absl::StrCat(s->bin_, "/pg_basebackup -h 127.0.0.1 -p ",
                                                       primary.port_, " -U postgres -D ", s->data_,
                                                       " -R -X stream -c fast --no-sync")));
      !st.ok()) {
    return st;
  }
  if (auto st = s->Start(); !st.ok()) return st;
  return s;
}

PgServer::~PgServer() {
  if (running_) RunShell(PgCtl("-m immediate -w stop"));
}

std::string PgServer::url(const std::string& db) const {
  return absl::StrCat("postgresql://postgres@127.0.0.1:", port_, "/", db);
}

absl::Status PgServer::Start() {
  auto st = Run("pg_ctl start", PgCtl(absl::StrCat("-w -t 60 -o \"-p ", port_, " -k ", data_,
                                                   " -c listen_addresses=127.0.0.1 -c fsync=off "
                                                   "-c max_connections=100 -c wal_level=replica "
                                                   "-c max_wal_senders=10\" start")));
  if (st.ok()) running_ = true;
  return st;
}

absl::Status PgServer::Stop(const std::string& mode) {
  auto st = Run("pg_ctl stop", PgCtl(absl::StrCat("-m ", mode, " -w stop")));
  if (st.ok()) running_ = false;
  return st;
}

absl::Status PgServer::Restart(const std::string& mode) {
  return Run("pg_ctl restart",
             PgCtl(absl::StrCat("-m ", mode, " -w -t 60 -o \"-p ", port_, " -k ", data_,
                                " -c listen_addresses=127.0.0.1 -c fsync=off "
                                "-c max_connections=100 -c wal_level=replica "
                                "-c max_wal_senders=10\" restart")));
}

absl::Status PgServer::Signal(int sig) {
  std::ifstream pid_file(data_ + "/postmaster.pid");
  int postmaster = 0;
  if (!(pid_file >> postmaster) || postmaster <= 0) {
    return absl::InternalError("no postmaster.pid in " + data_);
  }
  // The postmaster's children, from /proc/<pid>/stat (field 4 is the parent's pid; the command
  // in field 2 is parenthesised and may contain spaces, so parse after its closing ')').
  std::vector<int> pids = {postmaster};
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == postmaster) {
      pids.push_back(std::stoi(name));
    }
  }
  // Children first when stopping, so none notices its parent stopped; the parent first when
  // resuming.
  if (sig == SIGSTOP) std::reverse(pids.begin(), pids.end());
  for (int pid : pids) ::kill(pid, sig);
  return absl::OkStatus();
}

absl::Status PgServer::Pause() { return Signal(SIGSTOP); }
absl::Status PgServer::Resume() { return Signal(SIGCONT); }

absl::StatusOr<std::string> PgServer::Psql(const std::string& sql) const {
  // Single-quoted for the shell, with embedded quotes spelled '\''.
  std::string quoted = "'";
  for (char c : sql) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  quoted += "'";
  ShellResult r =
      RunShell(absl::StrCat(bin_, "/psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p ", port_,
                            " -U postgres -d postgres -c ", quoted));
  if (r.exit_code != 0) return absl::InternalError(absl::StrCat("psql: ", r.output));
  while (!r.output.empty() && r.output.back() == '\n') r.output.pop_back();
  return r.output;
}

}  // namespace keel::test
