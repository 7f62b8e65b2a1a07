#include "net/repair/repair_channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/errno_status.h"
#include "base/log.h"

namespace vunet::net {
namespace {

// What the helper sent: bytes, and how many fds came with them (closed at
// once: the helper has no business sending any).
struct Received {
  ssize_t bytes;  // recvmsg's result: 0 at the end, -1 with errno.
  size_t fds = 0;
  bool truncated = false;  // More fds than there was room for.
};

// Reads what is there without waiting (EINTR retried).
Received ReceiveFromHelper(int socket, char* buf, size_t len) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * RepairChannel::kMaxFdsPerMessage)];
  iovec iov{.iov_base = buf, .iov_len = len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  Received r;
  do {
    r.bytes = recvmsg(socket, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (r.bytes < 0 && errno == EINTR);
  if (r.bytes <= 0) return r;
  r.truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
      close(fd);
    }
    r.fds += n;
  }
  return r;
}

// Milliseconds until `deadline` for poll(), rounded up, never negative.
int PollTimeoutMs(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(
      absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))), 60'000));
}

// Waits until `fd` reports `events` (or an error/hang-up) or `deadline`
// passes; false on the deadline.
absl::StatusOr<bool> WaitFor(int fd, short events, absl::Time deadline) {
  for (;;) {
    pollfd p{.fd = fd, .events = events, .revents = 0};
    const int n = poll(&p, 1, PollTimeoutMs(deadline));
    if (n > 0) return true;
    if (n == 0) {
      if (absl::Now() >= deadline) return false;
      continue;
    }
    if (errno != EINTR) return ErrnoStatus("repair helper: poll");
  }
}

}  // namespace

std::string RepairModeName(int8_t mode) {
  switch (mode) {
    case static_cast<int8_t>(RepairMode::kOn):
      return "on";
    case static_cast<int8_t>(RepairMode::kOff):
      return "off";
    case static_cast<int8_t>(RepairMode::kOffNoWindowProbe):
      return "off-no-window-probe";
  }
  return absl::StrCat(mode);
}

absl::StatusOr<RepairChannel> RepairChannel::Listen(std::string path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "repair socket path \"%s\" must be 1 to %d bytes", path, sizeof(addr.sun_path) - 1));
  }
  path.copy(addr.sun_path, path.size());

  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrFormat("%s exists and is not a socket; not removing it", path));
    }
    VUNET_LOG(kInfo, "repair: removing the old socket file %s", path);
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(absl::StrCat("cannot remove ", path));
    }
  } else if (errno != ENOENT) {
    return ErrnoStatus(absl::StrCat("cannot stat ", path));
  }

  UniqueFd listen_fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listen_fd.valid()) return ErrnoStatus("repair socket");
  if (bind(listen_fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(absl::StrCat("cannot bind ", path));
  }
  absl::Status failed;
  if (stat(path.c_str(), &st) != 0) {
    failed = ErrnoStatus(absl::StrCat("cannot stat ", path));
  } else if (listen(listen_fd.get(), 4) != 0) {
    failed = ErrnoStatus(absl::StrCat("cannot listen on ", path));
  }
  if (!failed.ok()) {
    unlink(path.c_str());
    return failed;
  }
  VUNET_LOG(kInfo, "repair: waiting for a helper on %s", path);
  return RepairChannel(std::move(path), std::move(listen_fd), st.st_dev, st.st_ino);
}

RepairChannel::RepairChannel(std::string path, UniqueFd listen, dev_t dev, ino_t ino)
    : path_(std::move(path)), listen_(std::move(listen)), dev_(dev), ino_(ino) {}

RepairChannel::RepairChannel(RepairChannel&& other) noexcept
    : path_(std::move(other.path_)),
      listen_(std::move(other.listen_)),
      helper_(std::move(other.helper_)),
      dev_(other.dev_),
      ino_(other.ino_) {
  other.path_.clear();
}

RepairChannel& RepairChannel::operator=(RepairChannel&& other) noexcept {
  if (this != &other) {
    Close();
    path_ = std::exchange(other.path_, std::string());
    listen_ = std::move(other.listen_);
    helper_ = std::move(other.helper_);
    dev_ = other.dev_;
    ino_ = other.ino_;
  }
  return *this;
}

RepairChannel::~RepairChannel() { Close(); }

void RepairChannel::Close() {
  DropHelper();
  if (!listen_.valid()) return;
  listen_.reset();
  // Only the file we bound: another process may have taken the path since.
  struct stat st;
  if (lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
    unlink(path_.c_str());
  }
}

void RepairChannel::DropHelper() { helper_.reset(); }

bool RepairChannel::OnListenReadable() {
  if (!listen_.valid()) return false;
  UniqueFd fd;
  for (;;) {
    fd.reset(accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (fd.valid()) break;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED) {
      VUNET_LOG(kWarning, "repair: accept on %s: %s", path_, strerror(errno));
    }
    return false;
  }
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) cred.pid = 0;
  if (helper_.valid()) {
    VUNET_LOG(kInfo, "repair: helper (pid %d) replaces the one connected before", cred.pid);
  } else {
    VUNET_LOG(kInfo, "repair: helper connected (pid %d, uid %d)", cred.pid, cred.uid);
  }
  helper_ = std::move(fd);
  return true;
}

void RepairChannel::OnHelperReadable() {
  if (!helper_.valid()) return;
  char byte;
  const Received r = ReceiveFromHelper(helper_.get(), &byte, 1);
  if (r.bytes < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
  if (r.bytes == 0) {
    VUNET_LOG(kInfo, "repair: helper disconnected");
  } else if (r.bytes < 0) {
    VUNET_LOG(kWarning, "repair: helper connection: %s; dropping it", strerror(errno));
  } else {
    VUNET_LOG(kWarning, "repair: helper sent data without a request; dropping it");
  }
  helper_.reset();
}

absl::Status RepairChannel::Set(absl::Span<const int> fds, RepairMode mode,
                                absl::Duration timeout) {
  if (std::any_of(fds.begin(), fds.end(), [](int fd) { return fd < 0; })) {
    return absl::InvalidArgumentError("repair: negative socket fd");
  }
  if (fds.empty()) return absl::OkStatus();
  if (!helper_.valid()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "no repair helper connected to %s (run vunet-repair or passt-repair on it)", path_));
  }
  const absl::Time deadline = absl::Now() + timeout;
  for (size_t done = 0; done < fds.size(); done += kMaxFdsPerMessage) {
    const absl::Span<const int> batch = fds.subspan(done, kMaxFdsPerMessage);
    absl::Status s = SendRequest(batch, mode, deadline);
    if (s.ok()) s = AwaitReply(mode, deadline);
    if (!s.ok()) {
      helper_.reset();
      return absl::Status(
          s.code(),
          absl::StrFormat("repair %s: %s; %d of %d sockets confirmed, the next %d unknown",
                          RepairModeName(static_cast<int8_t>(mode)), s.message(), done, fds.size(),
                          batch.size()));
    }
  }
  return absl::OkStatus();
}

absl::Status RepairChannel::SendRequest(absl::Span<const int> fds, RepairMode mode,
                                        absl::Time deadline) {
  // Bytes the helper sent before it was asked anything are a protocol error;
  // left in place they would be taken for this request's reply.
  char stray;
  const ssize_t early = recv(helper_.get(), &stray, 1, MSG_PEEK | MSG_DONTWAIT);
  if (early == 0) return absl::UnavailableError("the helper had hung up");
  if (early > 0) return absl::DataLossError("the helper sent data before the request");
  int8_t byte = static_cast<int8_t>(mode);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  iovec iov{.iov_base = &byte, .iov_len = 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  for (;;) {
    const ssize_t n = sendmsg(helper_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == 1) return absl::OkStatus();
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      absl::StatusOr<bool> ready = WaitFor(helper_.get(), POLLOUT, deadline);
      if (!ready.ok()) return ready.status();
      if (!*ready) return absl::DeadlineExceededError("the helper does not take requests");
      continue;
    }
    return absl::UnavailableError(absl::StrCat("sending to the helper: ", strerror(errno)));
  }
}

absl::Status RepairChannel::AwaitReply(RepairMode mode, absl::Time deadline) {
  for (;;) {
    absl::StatusOr<bool> ready = WaitFor(helper_.get(), POLLIN, deadline);
    if (!ready.ok()) return ready.status();
    if (!*ready) return absl::DeadlineExceededError("no reply from the helper in time");
    // Room for more than the one byte expected, so that a helper sending
    // more is caught rather than left in the socket.
    char reply[16];
    const Received r = ReceiveFromHelper(helper_.get(), reply, sizeof(reply));
    const ssize_t n = r.bytes;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n < 0) return absl::UnavailableError(absl::StrCat("helper connection: ", strerror(errno)));
    if (n == 0) {
      return absl::UnavailableError(
          "the helper closed the connection (it could not set repair mode on a socket)");
    }
    if (r.fds > 0 || r.truncated) {
      return absl::DataLossError(absl::StrFormat("the helper sent %d fds back", r.fds));
    }
    if (n != 1)
      return absl::DataLossError(absl::StrFormat("the helper replied %d bytes, not 1", n));
    if (static_cast<int8_t>(reply[0]) != static_cast<int8_t>(mode)) {
      return absl::DataLossError(absl::StrFormat(
          "the helper replied %d to %d", static_cast<int8_t>(reply[0]), static_cast<int8_t>(mode)));
    }
    return absl::OkStatus();
  }
}

}  // namespace vunet::net
