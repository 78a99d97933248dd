// Test support: real server processes for integration tests (spawn, signal, kill, restart), free
// loopback ports, scratch directories and shell commands. Test code only; not part of keel.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace keel::test {

// A child process started with execvp; killed (SIGKILL) and reaped when destroyed.
class Subprocess {
 public:
  // Starts `argv[0]` with `argv`, stdout/stderr appended to `log_path` (or /dev/null).
  static Subprocess Start(const std::vector<std::string>& argv, const std::string& log_path = "");

  Subprocess() = default;
  Subprocess(Subprocess&& other) noexcept : pid_(other.pid_) { other.pid_ = -1; }
  Subprocess& operator=(Subprocess&& other) noexcept;
  ~Subprocess() { Kill(); }

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // Sends `sig` (SIGSTOP, SIGCONT, SIGTERM, ...) without waiting.
  void Signal(int sig) const;
  // SIGKILL and reap. Idempotent.
  void Kill();
  // Waits for exit; returns the exit status (or 128+signal).
  int Wait();

 private:
  pid_t pid_ = -1;
};

// A loopback TCP port nothing listens on right now, outside the kernel's ephemeral port range
// (so no outgoing connection takes it before a server binds it), never returned twice in one
// process.
int FreeLoopbackPort();

// Polls until something accepts TCP connections on 127.0.0.1:`port`; false after `timeout`.
bool WaitForPort(int port, std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Polls until nothing accepts on the port any more.
bool WaitForPortClosed(int port, std::chrono::milliseconds timeout = std::chrono::seconds(10));

// A fresh directory under the system temp dir, removed (recursively) when destroyed.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "keel-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct ShellResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};
// Runs `command` with /bin/sh -c and captures its output.
ShellResult RunShell(const std::string& command);

// The value of an environment variable, or nullopt when unset or empty.
std::optional<std::string> Env(const char* name);

// KEEL_TEST_REDIS_URL / KEEL_TEST_POSTGRES_URL, or a failure naming the variable and how to set
// it (scripts/test sets both; by hand: eval "$(scripts/services env)").
std::string RequireEnv(const char* name);

// Starts this test binary again with `env` ("NAME=value") in its environment, running the test
// cases tagged `tag` (a hidden tag such as "[.cache_worker]"): how multi-process tests start their
// workers. Output goes to `log_path`.
Subprocess StartSelf(const std::string& env, const std::string& tag, const std::string& log_path);

// Polls (every millisecond) until `path` exists; false after `timeout`: how a parent and its
// workers signal each other.
bool AwaitFile(const std::filesystem::path& path,
               std::chrono::milliseconds timeout = std::chrono::seconds(30));

}  // namespace keel::test
