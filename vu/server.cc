#include "vu/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/errno_status.h"
#include "base/log.h"
#include "vu/message.h"

namespace vunet::vu {
namespace {

absl::StatusOr<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrFormat("socket path \"%s\" must be 1 to %d bytes",
                                                      path, sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// Clears the way for bind(): removes a socket file nobody listens on.
absl::Status RemoveStaleSocket(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(absl::StrCat("cannot stat ", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s exists and is not a socket; not removing it", path));
  }
  UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return ErrnoStatus(absl::StrCat("socket for ", path));
  int rc;
  do {
    rc = connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) {
    return absl::AlreadyExistsError(
        absl::StrFormat("%s: another backend is listening there", path));
  }
  if (errno != ECONNREFUSED) return ErrnoStatus(absl::StrCat("cannot probe ", path));
  VUNET_LOG(kInfo, "vhost-user: removing stale socket %s", path);
  if (unlink(path.c_str()) != 0 && errno != ENOENT)
    return ErrnoStatus(absl::StrCat("cannot remove ", path));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Listen(const Options& options,
                                                       DataPlane* data_plane) {
  absl::StatusOr<sockaddr_un> addr = Address(options.socket_path);
  if (!addr.ok()) return addr.status();
  if (absl::Status s = RemoveStaleSocket(options.socket_path, *addr); !s.ok()) return s;
  // Non-blocking, so a frontend that connects and leaves before we accept
  // cannot block the loop in accept().
  UniqueFd listen_fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_fd.valid()) return ErrnoStatus(absl::StrCat("socket for ", options.socket_path));
  if (bind(listen_fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return ErrnoStatus(absl::StrCat("cannot bind ", options.socket_path));
  }
  struct stat st;
  if (stat(options.socket_path.c_str(), &st) != 0) {
    const absl::Status s = ErrnoStatus(absl::StrCat("cannot stat ", options.socket_path));
    unlink(options.socket_path.c_str());
    return s;
  }
  if (listen(listen_fd.get(), 16) != 0) {
    const absl::Status s = ErrnoStatus(absl::StrCat("cannot listen on ", options.socket_path));
    unlink(options.socket_path.c_str());
    return s;
  }
  VUNET_LOG(kInfo, "vhost-user: listening on %s", options.socket_path);
  return std::unique_ptr<Server>(
      new Server(options, data_plane, std::move(listen_fd), st.st_dev, st.st_ino));
}

absl::StatusOr<std::unique_ptr<Server>> Server::Adopt(const Options& options, UniqueFd fd,
                                                      DataPlane* data_plane) {
  struct stat st;
  if (!fd.valid() || fstat(fd.get(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("fd ", fd.get(), ": not a socket"));
  }
  int domain = 0, type = 0, listening = 0;
  socklen_t len = sizeof(domain);
  if (getsockopt(fd.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX) {
    return absl::InvalidArgumentError(absl::StrCat("fd ", fd.get(), ": not a UNIX socket"));
  }
  len = sizeof(type);
  if (getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) {
    return absl::InvalidArgumentError(absl::StrCat("fd ", fd.get(), ": not a stream socket"));
  }
  len = sizeof(listening);
  if (getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("fd ", fd.get(), ": ", strerror(errno)));
  }
  // Inherited without it, most likely: not for whatever we start.
  if (fcntl(fd.get(), F_SETFD, FD_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("fd ", fd.get(), ": ", strerror(errno)));
  }
  Options adopted = options;
  adopted.socket_path.clear();
  if (listening) {
    const int flags = fcntl(fd.get(), F_GETFL);
    if (flags < 0 || fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
      return absl::InternalError(absl::StrCat("fd ", fd.get(), ": ", strerror(errno)));
    }
    VUNET_LOG(kInfo, "vhost-user: listening on inherited fd %d", fd.get());
    return std::unique_ptr<Server>(new Server(adopted, data_plane, std::move(fd), 0, 0));
  }
  // The frontend itself: served once, blocking with timeouts as accepted
  // connections are.
  adopted.one_off = true;
  const int flags = fcntl(fd.get(), F_GETFL);
  if (flags < 0 || fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return absl::InternalError(absl::StrCat("fd ", fd.get(), ": ", strerror(errno)));
  }
  std::unique_ptr<Server> server(new Server(adopted, data_plane, UniqueFd(), 0, 0));
  if (absl::Status s = server->Connect(std::move(fd)); !s.ok()) return s;
  return server;
}

Server::Server(const Options& options, DataPlane* data_plane, UniqueFd listen, dev_t dev, ino_t ino)
    : options_(options),
      data_plane_(data_plane),
      listen_(std::move(listen)),
      dev_(dev),
      ino_(ino) {}

Server::~Server() {
  device_.reset();
  connection_.reset();
  listen_.reset();
  // Only the file we bound: another backend may have taken the path since.
  struct stat st;
  if (!options_.socket_path.empty() && lstat(options_.socket_path.c_str(), &st) == 0 &&
      st.st_dev == dev_ && st.st_ino == ino_) {
    unlink(options_.socket_path.c_str());
  }
}

absl::Status Server::HandleReadable(int fd) {
  if (fd < 0) return absl::InvalidArgumentError("not a server fd: -1");
  if (fd == listen_.get()) return Accept();
  if (fd == connection_.get()) {
    HandleMessage();
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("not a server fd: ", fd));
}

absl::Status Server::Accept() {
  UniqueFd fd;
  for (;;) {
    fd.reset(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (fd.valid()) break;
    if (errno == EINTR) continue;
    // Nothing to accept after all, or a frontend that already left.
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) return absl::OkStatus();
    // Out of fds or memory: the frontend stays queued; report it.
    return absl::ResourceExhaustedError(absl::StrCat("vhost-user: accept: ", strerror(errno)));
  }
  if (connection_.valid() || done_) {
    VUNET_LOG_RATELIMITED(kWarning, "vhost-user: %s; turning a frontend away",
                          done_ ? "served the one frontend" : "already serving a frontend");
    return absl::OkStatus();  // fd closes here.
  }
  if (absl::Status s = Connect(std::move(fd)); !s.ok()) {
    VUNET_LOG(kWarning, "%s", s.message());  // The frontend is turned away.
  }
  return absl::OkStatus();
}

absl::Status Server::Connect(UniqueFd fd) {
  const auto usec =
      std::chrono::duration_cast<std::chrono::microseconds>(options_.receive_timeout).count();
  const timeval tv{.tv_sec = static_cast<time_t>(usec / 1'000'000),
                   .tv_usec = static_cast<suseconds_t>(usec % 1'000'000)};
  // Replies are small and the frontend reads them, but a frontend that stops
  // reading must not block us either.
  if (setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
      setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
    return absl::InternalError(
        absl::StrCat("vhost-user: cannot set socket timeouts: ", strerror(errno)));
  }
  connection_ = std::move(fd);
  device_ = std::make_unique<Device>(data_plane_, options_.device);
  ++connections_served_;
  VUNET_LOG(kInfo, "vhost-user: frontend connected");
  return absl::OkStatus();
}

void Server::HandleMessage() {
  absl::StatusOr<Message> m = ReadMessage(connection_.get());
  if (!m.ok()) {
    Disconnect(m.status());
    return;
  }
  absl::StatusOr<std::optional<Message>> reply = device_->Handle(*m);
  if (!reply.ok()) {
    Disconnect(reply.status());
    return;
  }
  if (reply->has_value()) {
    if (absl::Status s = WriteMessage(connection_.get(), **reply); !s.ok()) Disconnect(s);
  }
}

void Server::Disconnect(const absl::Status& why) {
  if (absl::IsUnavailable(why)) {
    VUNET_LOG(kInfo, "vhost-user: frontend disconnected");
  } else {
    VUNET_LOG_RATELIMITED(kWarning, "vhost-user: dropping frontend: %s", why.message());
  }
  // The device first: it stops the queues while their memory and fds exist.
  device_.reset();
  connection_.reset();
  if (options_.one_off) done_ = true;
}

absl::Status Server::Run(const std::atomic<bool>& stop) {
  while (!stop.load(std::memory_order_relaxed) && !done_) {
    pollfd fds[2] = {{.fd = listen_.get(), .events = POLLIN, .revents = 0},
                     {.fd = connection_.get(), .events = POLLIN, .revents = 0}};
    const int n = poll(fds, connection_.valid() ? 2 : 1, 100);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("vhost-user: poll: ", strerror(errno)));
    }
    // The connection first: a frontend's messages before a newcomer.
    if (connection_.valid() && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      HandleMessage();
    }
    if (fds[0].revents & POLLIN) {
      if (absl::Status s = Accept(); !s.ok()) {
        VUNET_LOG_RATELIMITED(kWarning, "%s", s.message());
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace vunet::vu
