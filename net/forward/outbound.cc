#include "net/forward/outbound.h"

#include <arpa/inet.h>
#include <errno.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace vunet::net {
namespace {

absl::Status Errno(const char* what, const std::string& name) {
  return absl::ErrnoToStatus(errno, absl::StrCat("outbound ", what, " ", name));
}

// Binds `fd` to `addr` (its port already set); port 0 is left for connect()
// to pick.
absl::Status BindSource(int fd, const sockaddr* addr, socklen_t len, bool no_port) {
  if (no_port) {
    const int one = 1;
    (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
  }
  if (bind(fd, addr, len) == 0) return absl::OkStatus();
  char text[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (addr->sa_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(addr);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
    port = ntohs(a->sin_port);
  } else {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(addr);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
    port = ntohs(a->sin6_port);
  }
  return Errno("address", port == 0 ? std::string(text) : absl::StrCat(text, " port ", port));
}

}  // namespace

absl::Status BindOutbound(int fd, const sockaddr* destination, const OutboundBinding& binding,
                          uint16_t port) {
  if (binding.empty() && port == 0) return absl::OkStatus();
  const bool v4 = destination->sa_family == AF_INET;
  bool host = false;  // To the host's loopback: no binding applies.
  if (v4) {
    const auto* to = reinterpret_cast<const sockaddr_in*>(destination);
    host = (ntohl(to->sin_addr.s_addr) >> 24) == 127;
  } else if (destination->sa_family == AF_INET6) {
    const auto* to = reinterpret_cast<const sockaddr_in6*>(destination);
    host = IN6_IS_ADDR_LOOPBACK(&to->sin6_addr);
  } else {
    return absl::InvalidArgumentError("outbound: not an IPv4 or IPv6 destination");
  }
  if (host && port == 0) return absl::OkStatus();
  const std::string& ifname = v4 ? binding.ifname4 : binding.ifname6;
  if (!host && !ifname.empty() &&
      setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(),
                 static_cast<socklen_t>(ifname.size())) != 0) {
    return Errno("interface", ifname);
  }
  if (v4) {
    const bool source = !host && binding.addr4.has_value();
    if (!source && port == 0) return absl::OkStatus();
    sockaddr_in a{};
    a.sin_family = AF_INET;
    if (source) a.sin_addr = *binding.addr4;
    a.sin_port = htons(port);
    return BindSource(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a), port == 0);
  }
  const bool source = !host && binding.addr6.has_value();
  if (!source && port == 0) return absl::OkStatus();
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = source ? *binding.addr6 : in6addr_any;
  a.sin6_port = htons(port);
  return BindSource(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a), port == 0);
}

}  // namespace vunet::net
