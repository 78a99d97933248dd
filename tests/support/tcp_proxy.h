// Test support: a loopback TCP proxy that forwards every byte between its clients and one
// target, and counts round trips as the client sees them: a "flight" is a burst of client bytes
// sent after the server last answered (or first), so a request/reply exchange is one flight and
// requests pipelined in one write are one flight too. Test code only; not part of keel.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

namespace keel::test {

class TcpProxy {
 public:
  // Listens on 127.0.0.1 (a port the kernel picks) and forwards to 127.0.0.1:`target_port`.
  explicit TcpProxy(int target_port);
  ~TcpProxy();  // stops the thread and closes every connection
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  // Client flights forwarded so far, over every connection.
  uint64_t flights() const { return flights_.load(); }

 private:
  void Loop();

  int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  int stop_pipe_[2] = {-1, -1};
  std::atomic<uint64_t> flights_{0};
  std::thread thread_;
};

}  // namespace keel::test
