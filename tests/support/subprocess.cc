#include "support/subprocess.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

namespace keel::test {

Subprocess Subprocess::Start(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const std::string log = log_path.empty() ? "/dev/null" : log_path;
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    setpgid(0, 0);  // signals to the test binary's group never reach the server
    execvp(args[0], args.data());
    _exit(127);
  }
  Subprocess p;
  p.pid_ = pid;
  return p;
}

Subprocess& Subprocess::operator=(Subprocess&& other) noexcept {
  if (this != &other) {
    Kill();
    pid_ = other.pid_;
    other.pid_ = -1;
  }
  return *this;
}

void Subprocess::Signal(int sig) const {
  if (pid_ > 0) ::kill(pid_, sig);
}

void Subprocess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGCONT);  // a stopped process must run to die promptly
  ::kill(pid_, SIGKILL);
  Wait();
}

int Subprocess::Wait() {
  if (pid_ <= 0) return -1;
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

namespace {
bool Accepts(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}
}  // namespace

int FreeLoopbackPort() {
  // A random port outside the kernel's ephemeral range (ip_local_port_range, 32768-60999 by
  // default): asking the kernel for port 0 returns an ephemeral port, which any outgoing
  // connection may take before the server binds it. Candidates are 10000 up to the range and
  // above it; each must bind now (SO_REUSEADDR, as servers set it, so TIME_WAIT does not count),
  // and a port is handed out once per process, so a test server that is killed and restarted on
  // its port never finds it given to another.
  static std::mutex mu;
  static std::set<int> handed_out;
  static std::mt19937 random{std::random_device{}()};
  int lo = 32768, hi = 60999;
  if (std::FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (std::fscanf(f, "%d %d", &lo, &hi) != 2) {
      lo = 32768;
      hi = 60999;
    }
    std::fclose(f);
  }
  const int below = std::max(0, lo - 10000), above = std::max(0, 65535 - hi);
  if (below + above == 0) throw std::runtime_error("no loopback port outside the ephemeral range");
  std::lock_guard<std::mutex> lock(mu);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int n = std::uniform_int_distribution<int>(0, below + above - 1)(random);
    const int port = n < below ? 10000 + n : hi + 1 + (n - below);
    if (handed_out.count(port) != 0) continue;
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const bool free = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    if (!free) continue;
    handed_out.insert(port);
    return port;
  }
  throw std::runtime_error("no free loopback port outside the ephemeral range");
}

bool WaitForPort(int port, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (Accepts(port)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return Accepts(port);
}

bool WaitForPortClosed(int port, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (!Accepts(port)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return !Accepts(port);
}

TempDir::TempDir(const std::string& prefix) {
  std::random_device rd;
  for (int i = 0; i < 100; ++i) {
    auto candidate = std::filesystem::temp_directory_path() /
                     (prefix + "-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
    if (std::filesystem::create_directory(candidate)) {
      path_ = candidate;
      std::filesystem::permissions(path_, std::filesystem::perms::all);  // 0777: postgres user too
      return;
    }
  }
  throw std::runtime_error("cannot create a temp dir");
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ShellResult RunShell(const std::string& command) {
  ShellResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) result.output.append(buf.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::optional<std::string> Env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

std::string RequireEnv(const char* name) {
  auto v = Env(name);
  if (!v) {
    throw std::runtime_error(std::string(name) +
                             " is not set: run scripts/test, or eval \"$(scripts/services env)\"");
  }
  return *v;
}

Subprocess StartSelf(const std::string& env, const std::string& tag, const std::string& log_path) {
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  return Subprocess::Start({"/usr/bin/env", env, exe, tag}, log_path);
}

bool AwaitFile(const std::filesystem::path& path, std::chrono::milliseconds timeout) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  while (!std::filesystem::exists(path) && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::filesystem::exists(path);
}

}  // namespace keel::test
