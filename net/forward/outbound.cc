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

}  // namespace

absl::Status BindOutbound(int fd, const sockaddr* destination, const OutboundBinding& binding) {
  if (binding.empty()) return absl::OkStatus();
  const bool v4 = destination->sa_family == AF_INET;
  if (v4) {
    const auto* to = reinterpret_cast<const sockaddr_in*>(destination);
    if ((ntohl(to->sin_addr.s_addr) >> 24) == 127) return absl::OkStatus();
  } else if (destination->sa_family == AF_INET6) {
    const auto* to = reinterpret_cast<const sockaddr_in6*>(destination);
    if (IN6_IS_ADDR_LOOPBACK(&to->sin6_addr)) return absl::OkStatus();
  } else {
    return absl::InvalidArgumentError("outbound: not an IPv4 or IPv6 destination");
  }
  const std::string& ifname = v4 ? binding.ifname4 : binding.ifname6;
  if (!ifname.empty() && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(),
                                    static_cast<socklen_t>(ifname.size())) != 0) {
    return Errno("interface", ifname);
  }
  if (v4 && binding.addr4.has_value()) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr = *binding.addr4;
    const int one = 1;
    (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0) {
      char text[INET_ADDRSTRLEN] = "?";
      inet_ntop(AF_INET, &a.sin_addr, text, sizeof(text));
      return Errno("address", text);
    }
  } else if (!v4 && binding.addr6.has_value()) {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = *binding.addr6;
    const int one = 1;
    (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0) {
      char text[INET6_ADDRSTRLEN] = "?";
      inet_ntop(AF_INET6, &a.sin6_addr, text, sizeof(text));
      return Errno("address", text);
    }
  }
  return absl::OkStatus();
}

}  // namespace vunet::net
