#include "tools/vunet_repair/repair_helper.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "base/errno_status.h"
#include "net/repair/socket_filter.h"

namespace vunet::tools {
namespace {

// The most fds one request carries (the kernel's SCM_MAX_FD).
constexpr size_t kMaxFds = 253;
// How long a socket that just appeared may refuse connections: the backend
// binds (which creates the file) before it listens.
constexpr int kRefusedRetries = 100;
constexpr long kRefusedRetryNs = 10'000'000;

// `retry_refused`: keep trying for a while a socket that does not listen yet.
absl::StatusOr<UniqueFd> ConnectSocket(const std::string& path, bool retry_refused) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: path too long for a socket", path));
  }
  path.copy(addr.sun_path, path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus("socket");
  for (int attempt = 0;; ++attempt) {
    if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
    if (errno == EINTR) continue;
    if (!retry_refused || errno != ECONNREFUSED || attempt == kRefusedRetries) {
      return ErrnoStatus(absl::StrFormat("connect to %s", path));
    }
    const timespec pause{.tv_sec = 0, .tv_nsec = kRefusedRetryNs};
    nanosleep(&pause, nullptr);
  }
}

absl::StatusOr<UniqueFd> WaitInDirectory(const std::string& dir) {
  UniqueFd watch(inotify_init1(IN_CLOEXEC));
  if (!watch.valid()) return ErrnoStatus("inotify_init1");
  if (inotify_add_watch(watch.get(), dir.c_str(), IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) < 0) {
    return ErrnoStatus(absl::StrFormat("watching %s", dir));
  }
  alignas(inotify_event) char events[4096];
  for (;;) {
    const ssize_t n = read(watch.get(), events, sizeof(events));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoStatus(absl::StrFormat("waiting in %s", dir));
    for (ssize_t at = 0; at < n;) {
      const auto* e = reinterpret_cast<const inotify_event*>(events + at);
      at += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
      if (e->mask & IN_IGNORED) return absl::NotFoundError(absl::StrFormat("%s went away", dir));
      if (e->len == 0 || !absl::EndsWith(e->name, ".repair")) continue;
      const std::string path = absl::StrFormat("%s/%s", dir, e->name);
      struct stat st;
      if (lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
      return ConnectSocket(path, /*retry_refused=*/true);
    }
  }
}

// The fds a request brought, closed whatever happens to the request.
struct ReceivedFds {
  int fds[kMaxFds];
  size_t count = 0;
  ~ReceivedFds() {
    for (size_t i = 0; i < count; ++i) close(fds[i]);
  }
};

bool IsTcpSocket(int fd) {
  int domain = 0, type = 0, protocol = 0;
  socklen_t len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return false;
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return false;
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) != 0) return false;
  return (domain == AF_INET || domain == AF_INET6) && type == SOCK_STREAM &&
         protocol == IPPROTO_TCP;
}

}  // namespace

absl::StatusOr<UniqueFd> ConnectToRepairSocket(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoStatus(path);
  if (S_ISDIR(st.st_mode)) return WaitInDirectory(path);
  if (!S_ISSOCK(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: neither a socket nor a directory", path));
  }
  return ConnectSocket(path, /*retry_refused=*/false);
}

absl::StatusOr<bool> HandleRepairRequest(int connection) {
  uint8_t byte = 0;
  iovec iov{.iov_base = &byte, .iov_len = 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(connection, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoStatus("reading a request");

  ReceivedFds received;
  bool other_control = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
      other_control = true;
      continue;
    }
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count && received.count < kMaxFds; ++i) {
      std::memcpy(&received.fds[received.count++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
  }
  if (n == 0 && received.count == 0) return false;
  if (n == 0) return absl::DataLossError("sockets without a request byte");
  if (msg.msg_flags & MSG_CTRUNC) {
    return absl::InvalidArgumentError(
        absl::StrFormat("a request with more than %d sockets", kMaxFds));
  }
  if (other_control) return absl::InvalidArgumentError("a request with unexpected control data");
  // The byte is a signed 8-bit value: 0xff is TCP_REPAIR_OFF_NO_WP (-1).
  const int mode = byte < 0x80 ? byte : byte - 0x100;
  if (mode != TCP_REPAIR_ON && mode != TCP_REPAIR_OFF && mode != TCP_REPAIR_OFF_NO_WP) {
    return absl::InvalidArgumentError(absl::StrFormat("unknown request %d", mode));
  }
  if (received.count == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("request %d without sockets", mode));
  }
  // Every socket checked before any is changed.
  for (size_t i = 0; i < received.count; ++i) {
    if (!IsTcpSocket(received.fds[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "request %d: socket %d of %d is not a TCP socket", mode, i + 1, received.count));
    }
  }
  for (size_t i = 0; i < received.count; ++i) {
    // Out of repair mode: the filter that kept the peer's segments out goes
    // first, so that the reply to the window probe repair-off sends gets in.
    if (mode != TCP_REPAIR_ON) net::DetachSocketFilter(received.fds[i]);
    if (setsockopt(received.fds[i], IPPROTO_TCP, TCP_REPAIR, &mode, sizeof(mode)) != 0) {
      const int error = errno;
      return absl::ErrnoToStatus(
          error, absl::StrFormat("setsockopt(TCP_REPAIR, %d) on socket %d of %d%s", mode, i + 1,
                                 received.count,
                                 error == EPERM ? " (vunet-repair needs CAP_NET_ADMIN)" : ""));
    }
    // Into repair mode: a filter that drops every segment, so that the
    // socket takes (and acknowledges) nothing more, nor opens its send window
    // on the peer's updates, while the backend dumps it and until it comes
    // out again. The backend cannot attach one itself where unprivileged
    // socket filters are refused (kernel.unprivileged_bpf_disabled on some
    // kernels). Best effort: the backend has a weaker fallback, and
    // passt-repair attaches none.
    if (mode == TCP_REPAIR_ON) (void)net::AttachDropAllFilter(received.fds[i]);
  }
  if (send(connection, &byte, 1, MSG_NOSIGNAL) != 1) return ErrnoStatus("replying");
  return true;
}

absl::Status ServeRepairRequests(int connection) {
  for (;;) {
    absl::StatusOr<bool> handled = HandleRepairRequest(connection);
    if (!handled.ok()) return handled.status();
    if (!*handled) return absl::OkStatus();
  }
}

}  // namespace vunet::tools
