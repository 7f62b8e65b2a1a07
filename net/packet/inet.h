// One address type for IPv4 and IPv6 (InetAddr), an address with a port
// (Endpoint), and their conversions to and from socket addresses.
//
// An InetAddr keeps 16 bytes whatever its family: an IPv4 address is stored
// v4-mapped (::ffff:a.b.c.d) and family() says which it is, so equality and
// hashing look at bytes and family alone. A socket address holding a
// v4-mapped IPv6 address (what a dual-stack socket reports for an IPv4 peer)
// becomes an IPv4 InetAddr.
//
//   InetAddr a = InetAddr::V4(parsed.ip.dst4);
//   if (a.IsLoopback()) ...
//   sockaddr_storage ss;
//   socklen_t len = Endpoint{a, 80}.ToSockaddr(&ss);
//   std::optional<Endpoint> peer = Endpoint::FromSockaddr(ss, len);

#ifndef VUNET_NET_PACKET_INET_H_
#define VUNET_NET_PACKET_INET_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace vunet::net {

class InetAddr {
 public:
  // No address (family AF_UNSPEC).
  constexpr InetAddr() = default;
  static InetAddr V4(in_addr addr);
  static InetAddr V6(const in6_addr& addr);
  // "10.0.2.2" or "fe80::1"; nullopt for anything else.
  static std::optional<InetAddr> Parse(std::string_view text);

  int family() const { return family_; }
  bool is_v4() const { return family_ == AF_INET; }
  bool is_v6() const { return family_ == AF_INET6; }
  bool empty() const { return family_ == AF_UNSPEC; }
  // The IPv4 address (0.0.0.0 unless is_v4()).
  in_addr v4() const;
  // The 16 bytes: an IPv6 address, or an IPv4 one v4-mapped.
  const in6_addr& v6() const { return addr_; }

  // Classes of addresses, for the family of this one.
  bool IsUnspecified() const;  // 0.0.0.0, ::.
  bool IsLoopback() const;     // 127.0.0.0/8, ::1.
  bool IsMulticast() const;    // 224.0.0.0/4, ff00::/8.
  bool IsLinkLocal() const;    // 169.254.0.0/16, fe80::/10.
  bool IsV4Mapped() const;     // An IPv6 address of the form ::ffff:a.b.c.d.

  std::string ToString() const;  // "" for none.

  friend bool operator==(const InetAddr& a, const InetAddr& b) {
    return a.family_ == b.family_ && std::memcmp(&a.addr_, &b.addr_, sizeof(a.addr_)) == 0;
  }
  friend bool operator!=(const InetAddr& a, const InetAddr& b) { return !(a == b); }

 private:
  in6_addr addr_{};
  uint8_t family_ = AF_UNSPEC;
};

struct Endpoint {
  InetAddr addr;
  uint16_t port = 0;  // Host order.

  // Writes the socket address (sockaddr_in or sockaddr_in6) and returns its
  // length; 0 (nothing written) for an endpoint without an address.
  socklen_t ToSockaddr(sockaddr_storage* out) const;
  // The endpoint of a socket address of `len` bytes; an IPv4 one for a
  // v4-mapped IPv6 address. nullopt for other families or short lengths.
  static std::optional<Endpoint> FromSockaddr(const sockaddr_storage& ss, socklen_t len);
  // "127.0.0.53:53", "[::1]:53".
  std::string ToString() const;

  friend bool operator==(const Endpoint& a, const Endpoint& b) {
    return a.port == b.port && a.addr == b.addr;
  }
  friend bool operator!=(const Endpoint& a, const Endpoint& b) { return !(a == b); }
};

}  // namespace vunet::net

#endif  // VUNET_NET_PACKET_INET_H_
