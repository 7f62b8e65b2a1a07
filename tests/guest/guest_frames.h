// Just enough frame handling for the guest tests' server: a bounds-checked
// description of what a guest transmits (Ethernet type; ARP; IPv4 with its
// UDP port or ICMP type; IPv6 with its ICMPv6 type), and hand-built answers
// to the two things a gateway must answer for a guest to reach it: ARP
// requests for the gateway's address and ICMP echo requests to it.
//
// This is test scaffolding, not the net layer (//net): it parses a flat copy
// of a frame's first bytes, and every field it reads is checked against both
// the bytes present and the lengths the headers claim.
//
//   uint8_t buf[kMaxCopy];
//   size_t len = IovToBuf(frame.data(), frame.size(), 0, buf, sizeof(buf));
//   FrameInfo info = ParseFrame({buf, len}, IovSize(frame.data(), frame.size()));
//   uint8_t reply[64];
//   if (size_t n = BuildArpReply(info, gateway, reply); n > 0) SendSingle(..., {reply, n});

#ifndef VUNET_TESTS_GUEST_GUEST_FRAMES_H_
#define VUNET_TESTS_GUEST_GUEST_FRAMES_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/types/span.h"
#include "net/packet/checksum.h"

namespace vunet::guest_test {

inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeArp = 0x0806;
inline constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
inline constexpr size_t kEthHeaderLen = 14;
inline constexpr size_t kArpFrameLen = kEthHeaderLen + 28;
inline constexpr uint8_t kIpProtoIcmp = 1;
inline constexpr uint8_t kIpProtoTcp = 6;
inline constexpr uint8_t kIpProtoUdp = 17;
inline constexpr uint8_t kIpProtoIcmpv6 = 58;

using Mac = std::array<uint8_t, 6>;
using Ipv4Addr = std::array<uint8_t, 4>;

// Parses "aa:bb:cc:dd:ee:ff" and "a.b.c.d".
std::optional<Mac> ParseMac(const std::string& text);
std::optional<Ipv4Addr> ParseIpv4(const std::string& text);
std::string MacToString(const Mac& mac);
std::string Ipv4ToString(const Ipv4Addr& ip);

// What a frame is, as far as the headers present tell. Fields of a layer are
// set only if that layer's header was complete.
struct FrameInfo {
  size_t length = 0;      // The whole frame, even if only a prefix was parsed.
  bool ethernet = false;  // At least an Ethernet header.
  Mac dst{};
  Mac src{};
  uint16_t ether_type = 0;  // After one 802.1Q tag, if any.

  // ARP for IPv4 over Ethernet.
  bool arp = false;
  uint16_t arp_op = 0;  // 1 request, 2 reply.
  Mac arp_sender_mac{};
  Ipv4Addr arp_sender_ip{};
  Ipv4Addr arp_target_ip{};

  // IPv4 or IPv6: the transport protocol (after IPv6 extension headers).
  bool ip = false;
  uint8_t ip_proto = 0;
  Ipv4Addr ipv4_src{};
  Ipv4Addr ipv4_dst{};
  bool fragment = false;  // A non-first fragment: no transport header.
  bool udp = false;
  uint16_t udp_src_port = 0;
  uint16_t udp_dst_port = 0;
  bool tcp = false;
  uint16_t tcp_dst_port = 0;
  bool icmp = false;  // ICMP for IPv4, ICMPv6 for IPv6.
  uint8_t icmp_type = 0;

  // One line: "ipv4 udp 10.0.2.15 -> 10.0.2.2 dport 5001", "arp request who-has ...".
  std::string ToString() const;
};

// Parses the first bytes of a frame. `bytes` is what was copied (possibly a
// prefix); `frame_length` the frame's full length (at least bytes.size()).
FrameInfo ParseFrame(absl::Span<const uint8_t> bytes, size_t frame_length);

// The internet checksum (RFC 1071) of `bytes`, folded and complemented.
inline uint16_t InternetChecksum(absl::Span<const uint8_t> bytes) {
  return net::InternetChecksum(bytes.data(), bytes.size());
}

// If `info` is an ARP request for `ip` (and not from `ip` itself), writes the
// reply from (`mac`, `ip`) into `out` and returns its length (42, unpadded);
// otherwise returns 0. `out` must hold kArpFrameLen bytes.
size_t BuildArpReply(const FrameInfo& info, const Mac& mac, const Ipv4Addr& ip,
                     absl::Span<uint8_t> out);

// If `frame` (complete, `info` its parse) is an unfragmented ICMP echo request
// to `ip`, writes the echo reply from (`mac`, `ip`) into `out` and returns its
// length; otherwise (or if `out` is too small) returns 0.
size_t BuildEchoReply(const FrameInfo& info, absl::Span<const uint8_t> frame, const Mac& mac,
                      const Ipv4Addr& ip, absl::Span<uint8_t> out);

}  // namespace vunet::guest_test

#endif  // VUNET_TESTS_GUEST_GUEST_FRAMES_H_
