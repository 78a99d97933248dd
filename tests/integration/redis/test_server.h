// A redis-server (or redis-sentinel) of a test's own, on a free loopback port, that the test may
// kill, pause and restart. Test code only.
#pragma once

#include <fstream>
#include <string>
#include <vector>

#include "support/subprocess.h"

namespace keel::test {

class RedisServer {
 public:
  // Starts redis-server on a free port with persistence off; `extra` is appended to the argv.
  explicit RedisServer(std::vector<std::string> extra = {}) : port_(FreeLoopbackPort()) {
    extra_ = std::move(extra);
    Start();
  }

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  const Subprocess& process() const { return process_; }

  // (Re)starts the server on the same port; waits until it accepts connections.
  bool Start() {
    std::vector<std::string> argv = {"redis-server",
                                     "--port",
                                     std::to_string(port_),
                                     "--bind",
                                     "127.0.0.1",
                                     "--save",
                                     "",
                                     "--appendonly",
                                     "no",
                                     "--dir",
                                     dir_.path().string()};
    argv.insert(argv.end(), extra_.begin(), extra_.end());
    process_ = Subprocess::Start(argv, (dir_.path() / "redis.log").string());
    return WaitForPort(port_);
  }
  // kill -9 and reap.
  void Kill() { process_.Kill(); }
  void Stop() { process_.Signal(SIGSTOP); }
  void Continue() { process_.Signal(SIGCONT); }

 private:
  TempDir dir_{"keel-redis"};
  int port_;
  std::vector<std::string> extra_;
  Subprocess process_;
};

// A redis-sentinel monitoring `master_name` at 127.0.0.1:`primary_port`, with short timeouts so
// a failover takes a few seconds.
class SentinelServer {
 public:
  SentinelServer(const std::string& master_name, int primary_port) : port_(FreeLoopbackPort()) {
    const auto conf = dir_.path() / "sentinel.conf";
    std::ofstream out(conf);
    out << "port " << port_ << "\n"
        << "bind 127.0.0.1\n"
        << "dir " << dir_.path().string() << "\n"
        << "sentinel monitor " << master_name << " 127.0.0.1 " << primary_port << " 2\n"
        << "sentinel down-after-milliseconds " << master_name << " 1000\n"
        << "sentinel failover-timeout " << master_name << " 4000\n"
        << "sentinel parallel-syncs " << master_name << " 1\n";
    out.close();
    process_ = Subprocess::Start({"redis-sentinel", conf.string()},
                                 (dir_.path() / "sentinel.log").string());
    WaitForPort(port_);
  }
  int port() const { return port_; }

 private:
  TempDir dir_{"keel-sentinel"};
  int port_;
  Subprocess process_;
};

}  // namespace keel::test
