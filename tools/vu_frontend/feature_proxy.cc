#include "tools/vu_frontend/feature_proxy.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "vu/message.h"

namespace vunet::vu_frontend {

absl::StatusOr<std::unique_ptr<FeatureProxy>> FeatureProxy::Start(const std::string& backend_socket,
                                                                  uint64_t extra_features) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (backend_socket.empty() || backend_socket.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("bad socket path: ", backend_socket));
  }
  std::memcpy(addr.sun_path, backend_socket.data(), backend_socket.size());
  UniqueFd backend(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!backend.valid() ||
      connect(backend.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("connect ", backend_socket, ": ", strerror(errno)));
  }
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", strerror(errno)));
  }
  UniqueFd ours(pair[0]), frontend_end(pair[1]);
  UniqueFd stop(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop.valid()) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  auto proxy = std::unique_ptr<FeatureProxy>(
      new FeatureProxy(std::move(ours), std::move(frontend_end), std::move(backend),
                       std::move(stop), extra_features));
  proxy->thread_ = std::thread([p = proxy.get()] { p->Relay(); });
  return proxy;
}

FeatureProxy::~FeatureProxy() {
  const uint64_t one = 1;
  (void)!write(stop_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void FeatureProxy::Relay() {
  while (true) {
    pollfd fds[3] = {{.fd = stop_.get(), .events = POLLIN, .revents = 0},
                     {.fd = ours_.get(), .events = POLLIN, .revents = 0},
                     {.fd = backend_.get(), .events = POLLIN, .revents = 0}};
    if (poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents != 0) break;
    for (int side = 1; side <= 2; ++side) {
      if (fds[side].revents == 0) continue;
      const bool from_frontend = side == 1;
      absl::StatusOr<vu::Message> m = vu::ReadMessage(fds[side].fd);
      if (!m.ok()) {
        ours_.reset();
        backend_.reset();
        return;
      }
      const bool reply = (m->header.flags & vu::kFlagReply) != 0;
      if (from_frontend && m->request() == vu::Request::kSetFeatures) {
        if (absl::StatusOr<uint64_t> features = m->PayloadAs<uint64_t>(); features.ok()) {
          m->SetPayload(*features & ~extra_);
        }
      } else if (!from_frontend && reply && m->request() == vu::Request::kGetFeatures) {
        if (absl::StatusOr<uint64_t> features = m->PayloadAs<uint64_t>(); features.ok()) {
          m->SetPayload(*features | extra_);
        }
      }
      if (!vu::WriteMessage(from_frontend ? backend_.get() : ours_.get(), *m).ok()) {
        ours_.reset();
        backend_.reset();
        return;
      }
    }
  }
  ours_.reset();
  backend_.reset();
}

}  // namespace vunet::vu_frontend
