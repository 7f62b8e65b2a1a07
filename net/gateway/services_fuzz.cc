// Fuzzes the option parsers of the gateway services (DHCPv4, DHCPv6, NDP)
// directly: the harness builds well-formed Ethernet, IP and UDP/ICMPv6
// headers (lengths and checksums right) around the fuzzer's bytes, so every
// input reaches the service's own parsing, which dispatch_fuzz reaches only
// when a mutation keeps the headers intact.
//
// Input: one selector byte, then the message.
//   bits 0-1: 0 DHCPv4 (the message from BOOTP's op on), 1 DHCPv6 (from
//             msg-type on), 2 NDP router solicitation, 3 NDP neighbour
//             solicitation (ICMPv6 type and code set by the harness; the
//             message from the reserved field on);
//   bit 2:    IPv6 source :: instead of the guest's link-local address;
//   bit 3:    IPv6 destination the gateway's link-local address instead of
//             the service's multicast group;
//   bits 4-7: the frame is cut into iovecs of this many bytes (0: one).
// Every reply must fit the reply buffer, parse, and be of the kind the
// service sends (DHCP to port 68, DHCPv6 to port 546, RA or NA).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "net/gateway/dhcp.h"
#include "net/gateway/dhcpv6.h"
#include "net/gateway/ndp.h"
#include "net/packet/frame.h"

namespace {

using namespace vunet::net;

const MacAddr kGatewayMac = {{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}};
const MacAddr kGuestMac = {{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};
const MacAddr kBroadcast = {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}};
// Enough for any message the services take (DHCPv6 and NDP refuse more).
constexpr size_t kMaxMessage = 2048;

in_addr V4(const char* s) {
  in_addr a{};
  inet_pton(AF_INET, s, &a);
  return a;
}

in6_addr V6(const char* s) {
  in6_addr a{};
  inet_pton(AF_INET6, s, &a);
  return a;
}

struct Services {
  Services() {
    DhcpConfig d;
    d.gateway_mac = kGatewayMac;
    d.gateway_addr = V4("10.0.2.2");
    d.guest_addr = V4("10.0.2.15");
    d.dns = {V4("10.0.2.3")};
    d.search_domains = {"example.org"};
    d.mtu = 1500;
    dhcp = new DhcpServer(DhcpServer::Create(d).value());
    NdpConfig n;
    n.gateway_mac = kGatewayMac;
    n.gateway_ll = V6("fe80::1");
    n.prefix = V6("fd00::");
    n.dns = {V6("fd00::3")};
    n.search_domains = {"example.org"};
    n.mtu = 1500;
    ndp = new NdpResponder(NdpResponder::Create(n).value());
    Dhcpv6Config d6;
    d6.gateway_mac = kGatewayMac;
    d6.gateway_ll = V6("fe80::1");
    d6.guest_addr = V6("fd00::15");
    d6.dns = {V6("fd00::3")};
    d6.search_domains = {"example.org"};
    dhcpv6 = new Dhcpv6Server(Dhcpv6Server::Create(d6).value());
  }
  const DhcpServer* dhcp;
  const NdpResponder* ndp;
  const Dhcpv6Server* dhcpv6;
};

const Services& TheServices() {
  static const Services* s = new Services();
  return *s;
}

// A reply must fit, parse, and be what the service sends.
void CheckReply(absl::StatusOr<size_t> n, const uint8_t* out, size_t max, L4Kind l4,
                uint16_t dst_port, uint8_t icmp_type_a, uint8_t icmp_type_b) {
  if (!n.ok() || *n > max) __builtin_trap();
  if (*n == 0) return;
  const iovec iov = {const_cast<uint8_t*>(out), *n};
  ParsedFrame p;
  if (!ParseFrame(absl::MakeConstSpan(&iov, 1), &p).ok()) __builtin_trap();
  if (p.l4 != l4) __builtin_trap();
  if (l4 == L4Kind::kUdp && p.dst_port != dst_port) __builtin_trap();
  if (l4 == L4Kind::kIcmpv6 && p.icmp.type != icmp_type_a && p.icmp.type != icmp_type_b) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const Services& s = TheServices();
  const uint8_t selector = data[0];
  const std::vector<uint8_t> body(data + 1, data + 1 + std::min(size - 1, kMaxMessage));
  const int service = selector & 3;

  FrameSpec spec;
  spec.src_mac = kGuestMac;
  std::vector<uint8_t> payload;
  if (service == 0) {
    spec.dst_mac = kBroadcast;
    spec.src4 = V4("0.0.0.0");
    spec.dst4 = V4("255.255.255.255");
    spec.src_port = 68;
    spec.dst_port = 67;
    payload = body;
  } else {
    spec.ipv6 = true;
    spec.dst_mac = kGatewayMac;
    spec.src6 = (selector & 4) != 0 ? in6addr_any : V6("fe80::5054:ff:fe12:3456");
    if (service == 1) {
      spec.dst6 = (selector & 8) != 0 ? V6("fe80::1") : V6("ff02::1:2");
      spec.src_port = 546;
      spec.dst_port = 547;
      payload = body;
    } else {
      spec.protocol = IPPROTO_ICMPV6;
      spec.ttl = 255;
      const bool rs = service == 2;
      spec.dst6 = (selector & 8) != 0 ? V6("fe80::1") : rs ? V6("ff02::2") : V6("ff02::1:ff00:1");
      payload = {static_cast<uint8_t>(rs ? 133 : 135), 0, 0, 0};  // Type, code, checksum.
      payload.insert(payload.end(), body.begin(), body.end());
    }
  }

  std::vector<uint8_t> frame(FrameHeadersLen(spec) + payload.size());
  std::copy(payload.begin(), payload.end(), frame.begin() + FrameHeadersLen(spec));
  if (!BuildFrame(spec, absl::MakeSpan(frame), payload.size()).ok()) return 0;

  // Cut into iovecs: the services read through cursors that cross them.
  const size_t piece = selector >> 4;
  std::vector<iovec> iov;
  for (size_t at = 0; at < frame.size(); at += piece == 0 ? frame.size() : piece) {
    iov.push_back(
        {frame.data() + at, std::min(piece == 0 ? frame.size() : piece, frame.size() - at)});
  }
  ParsedFrame parsed;
  if (!ParseFrame(iov, &parsed).ok()) return 0;  // E.g. an IPv4 message too long.

  static uint8_t out[4096];
  switch (service) {
    case 0:
      CheckReply(s.dhcp->Reply(iov, parsed, absl::MakeSpan(out, kDhcpMaxReplyLen)), out,
                 kDhcpMaxReplyLen, L4Kind::kUdp, 68, 0, 0);
      break;
    case 1:
      CheckReply(s.dhcpv6->Reply(iov, parsed, absl::MakeSpan(out, kDhcpv6MaxReplyLen)), out,
                 kDhcpv6MaxReplyLen, L4Kind::kUdp, 546, 0, 0);
      break;
    default:
      CheckReply(s.ndp->Reply(iov, parsed, absl::MakeSpan(out, kNdpMaxReplyLen)), out,
                 kNdpMaxReplyLen, L4Kind::kIcmpv6, 0, 134, 136);
      break;
  }
  return 0;
}
