#include "net/packet/inet.h"

#include <arpa/inet.h>

#include "absl/strings/str_cat.h"

namespace vunet::net {
namespace {

uint8_t V4Byte0(const in6_addr& a) { return a.s6_addr[12]; }

}  // namespace

InetAddr InetAddr::V4(in_addr addr) {
  InetAddr a;
  a.family_ = AF_INET;
  a.addr_.s6_addr[10] = 0xff;
  a.addr_.s6_addr[11] = 0xff;
  std::memcpy(&a.addr_.s6_addr[12], &addr.s_addr, 4);
  return a;
}

InetAddr InetAddr::V6(const in6_addr& addr) {
  InetAddr a;
  a.family_ = AF_INET6;
  a.addr_ = addr;
  return a;
}

std::optional<InetAddr> InetAddr::Parse(std::string_view text) {
  const std::string s(text);
  in_addr a4;
  if (inet_pton(AF_INET, s.c_str(), &a4) == 1) return V4(a4);
  in6_addr a6;
  if (inet_pton(AF_INET6, s.c_str(), &a6) == 1) return V6(a6);
  return std::nullopt;
}

in_addr InetAddr::v4() const {
  in_addr a{};
  if (is_v4()) std::memcpy(&a.s_addr, &addr_.s6_addr[12], 4);
  return a;
}

bool InetAddr::IsUnspecified() const {
  if (is_v4()) return v4().s_addr == 0;
  return is_v6() && IN6_IS_ADDR_UNSPECIFIED(&addr_);
}

bool InetAddr::IsLoopback() const {
  if (is_v4()) return V4Byte0(addr_) == 127;
  return is_v6() && IN6_IS_ADDR_LOOPBACK(&addr_);
}

bool InetAddr::IsMulticast() const {
  if (is_v4()) return (V4Byte0(addr_) & 0xf0) == 0xe0;
  return is_v6() && IN6_IS_ADDR_MULTICAST(&addr_);
}

bool InetAddr::IsLinkLocal() const {
  if (is_v4()) return addr_.s6_addr[12] == 169 && addr_.s6_addr[13] == 254;
  return is_v6() && IN6_IS_ADDR_LINKLOCAL(&addr_);
}

bool InetAddr::IsV4Mapped() const { return is_v6() && IN6_IS_ADDR_V4MAPPED(&addr_); }

std::string InetAddr::ToString() const {
  char buf[INET6_ADDRSTRLEN] = "";
  if (is_v4()) {
    const in_addr a = v4();
    inet_ntop(AF_INET, &a, buf, sizeof(buf));
  } else if (is_v6()) {
    inet_ntop(AF_INET6, &addr_, buf, sizeof(buf));
  }
  return buf;
}

socklen_t Endpoint::ToSockaddr(sockaddr_storage* out) const {
  std::memset(out, 0, sizeof(*out));
  if (addr.is_v4()) {
    sockaddr_in* sin = reinterpret_cast<sockaddr_in*>(out);
    sin->sin_family = AF_INET;
    sin->sin_addr = addr.v4();
    sin->sin_port = htons(port);
    return sizeof(*sin);
  }
  if (addr.is_v6()) {
    sockaddr_in6* sin6 = reinterpret_cast<sockaddr_in6*>(out);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = addr.v6();
    sin6->sin6_port = htons(port);
    return sizeof(*sin6);
  }
  return 0;
}

std::optional<Endpoint> Endpoint::FromSockaddr(const sockaddr_storage& ss, socklen_t len) {
  if (ss.ss_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    const sockaddr_in* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    return Endpoint{InetAddr::V4(sin->sin_addr), ntohs(sin->sin_port)};
  }
  if (ss.ss_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    const sockaddr_in6* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
      in_addr a;
      std::memcpy(&a.s_addr, &sin6->sin6_addr.s6_addr[12], 4);
      return Endpoint{InetAddr::V4(a), ntohs(sin6->sin6_port)};
    }
    return Endpoint{InetAddr::V6(sin6->sin6_addr), ntohs(sin6->sin6_port)};
  }
  return std::nullopt;
}

std::string Endpoint::ToString() const {
  if (addr.is_v6()) return absl::StrCat("[", addr.ToString(), "]:", port);
  return absl::StrCat(addr.ToString(), ":", port);
}

}  // namespace vunet::net
