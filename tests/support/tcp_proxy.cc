#include "support/tcp_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <vector>

namespace keel::test {
namespace {

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

// Writes all of `data` to a blocking socket; false when the peer is gone.
bool WriteAll(int fd, const char* data, ssize_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, data, static_cast<size_t>(n), MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= w;
  }
  return true;
}

struct Link {
  int client;
  int server;
  bool server_spoke_last = true;  // the first client bytes start a flight
};

}  // namespace

TcpProxy::TcpProxy(int target_port) : target_port_(target_port) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = Loopback(0);
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 16) != 0 || ::pipe(stop_pipe_) != 0) {
    std::abort();  // test support: a machine that cannot do this cannot run the test
  }
  socklen_t len = sizeof addr;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { Loop(); });
}

TcpProxy::~TcpProxy() {
  (void)!::write(stop_pipe_[1], "x", 1);
  thread_.join();
  ::close(listen_fd_);
  ::close(stop_pipe_[0]);
  ::close(stop_pipe_[1]);
}

void TcpProxy::Loop() {
  std::vector<Link> links;
  char buf[64 * 1024];
  for (;;) {
    std::vector<pollfd> fds = {{.fd = stop_pipe_[0], .events = POLLIN, .revents = 0},
                               {.fd = listen_fd_, .events = POLLIN, .revents = 0}};
    for (const Link& l : links) {
      fds.push_back({.fd = l.client, .events = POLLIN, .revents = 0});
      fds.push_back({.fd = l.server, .events = POLLIN, .revents = 0});
    }
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents != 0) break;
    std::vector<Link> kept;
    for (size_t i = 0; i < links.size(); ++i) {
      Link& l = links[i];
      const pollfd& c = fds[2 + 2 * i];
      const pollfd& s = fds[3 + 2 * i];
      bool alive = true;
      if (s.revents != 0) {
        const ssize_t n = ::recv(l.server, buf, sizeof buf, 0);
        alive = n > 0 && WriteAll(l.client, buf, n);
        if (alive) l.server_spoke_last = true;
      }
      if (alive && c.revents != 0) {
        const ssize_t n = ::recv(l.client, buf, sizeof buf, 0);
        alive = n > 0 && WriteAll(l.server, buf, n);
        if (alive && l.server_spoke_last) {
          flights_.fetch_add(1);
          l.server_spoke_last = false;
        }
      }
      if (alive) {
        kept.push_back(l);
      } else {
        ::close(l.client);
        ::close(l.server);
      }
    }
    links.swap(kept);
    // Accepted after the links polled above are handled: `fds` has no entries for a new one.
    if (fds[1].revents != 0) {
      const int client = ::accept(listen_fd_, nullptr, nullptr);
      const int server = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in to = Loopback(target_port_);
      if (client >= 0 && server >= 0 &&
          ::connect(server, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0) {
        links.push_back({client, server});
      } else {
        if (client >= 0) ::close(client);
        if (server >= 0) ::close(server);
      }
    }
  }
  for (const Link& l : links) {
    ::close(l.client);
    ::close(l.server);
  }
}

}  // namespace keel::test
