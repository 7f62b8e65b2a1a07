#include "tests/guest/guest_frames.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_format.h"

namespace vunet::guest_test {
namespace {

constexpr uint16_t kEtherTypeVlan = 0x8100;
constexpr size_t kIpv4MinHeader = 20;
constexpr size_t kIpv6Header = 40;
constexpr size_t kUdpHeader = 8;
constexpr size_t kTcpMinHeader = 20;
constexpr size_t kIcmpHeader = 8;
constexpr uint8_t kIcmpEchoRequest = 8;
constexpr uint8_t kIcmpEchoReply = 0;
constexpr uint16_t kArpRequest = 1;
constexpr uint16_t kArpReply = 2;

uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
void PutBe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}

template <size_t N>
std::array<uint8_t, N> Take(const uint8_t* p) {
  std::array<uint8_t, N> a;
  std::memcpy(a.data(), p, N);
  return a;
}

// The transport header at `l4` (`avail` bytes present, `claimed` by the IP
// header).
void ParseTransport(const uint8_t* l4, size_t avail, size_t claimed, FrameInfo* info) {
  const size_t len = std::min(avail, claimed);
  switch (info->ip_proto) {
    case kIpProtoUdp:
      if (len >= kUdpHeader) {
        info->udp = true;
        info->udp_src_port = Be16(l4);
        info->udp_dst_port = Be16(l4 + 2);
      }
      break;
    case kIpProtoTcp:
      if (len >= kTcpMinHeader) {
        info->tcp = true;
        info->tcp_dst_port = Be16(l4 + 2);
      }
      break;
    case kIpProtoIcmp:
    case kIpProtoIcmpv6:
      if (len >= 4) {
        info->icmp = true;
        info->icmp_type = l4[0];
      }
      break;
    default:
      break;
  }
}

void ParseIpv4(const uint8_t* p, size_t avail, FrameInfo* info) {
  if (avail < kIpv4MinHeader || (p[0] >> 4) != 4) return;
  const size_t header = (p[0] & 0x0f) * 4u;
  const size_t total = Be16(p + 2);
  if (header < kIpv4MinHeader || header > avail || total < header) return;
  info->ip = true;
  info->ip_proto = p[9];
  info->ipv4_src = Take<4>(p + 12);
  info->ipv4_dst = Take<4>(p + 16);
  const uint16_t fragment_offset = Be16(p + 6) & 0x1fff;
  if (fragment_offset != 0) {
    info->fragment = true;
    return;
  }
  ParseTransport(p + header, avail - header, total - header, info);
}

bool IsIpv6ExtensionHeader(uint8_t next) {
  return next == 0 /* hop-by-hop */ || next == 43 /* routing */ || next == 60 /* destination */;
}

void ParseIpv6(const uint8_t* p, size_t avail, FrameInfo* info) {
  if (avail < kIpv6Header || (p[0] >> 4) != 6) return;
  size_t claimed = Be16(p + 4);  // Payload length.
  uint8_t next = p[6];
  size_t offset = kIpv6Header;
  avail -= kIpv6Header;
  info->ip = true;
  // A few extension headers (MLD reports carry a hop-by-hop one); no more.
  for (int i = 0; i < 8 && IsIpv6ExtensionHeader(next); ++i) {
    if (avail < 8 || claimed < 8) {
      info->ip_proto = next;
      return;
    }
    const size_t len = (p[offset + 1] + 1u) * 8u;
    if (len > avail || len > claimed) {
      info->ip_proto = next;
      return;
    }
    next = p[offset];
    offset += len;
    avail -= len;
    claimed -= len;
  }
  info->ip_proto = next;
  if (next == 44) {  // Fragment header: the transport header may not be here.
    info->fragment = true;
    return;
  }
  ParseTransport(p + offset, avail, claimed, info);
}

}  // namespace

std::optional<Mac> ParseMac(const std::string& text) {
  unsigned b[6];
  char extra;
  if (std::sscanf(text.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4],
                  &b[5], &extra) != 6) {
    return std::nullopt;
  }
  Mac mac;
  for (int i = 0; i < 6; ++i) mac[i] = static_cast<uint8_t>(b[i]);
  return mac;
}

std::optional<Ipv4Addr> ParseIpv4(const std::string& text) {
  in_addr addr;
  if (inet_pton(AF_INET, text.c_str(), &addr) != 1) return std::nullopt;
  Ipv4Addr ip;
  std::memcpy(ip.data(), &addr, 4);
  return ip;
}

std::string MacToString(const Mac& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

std::string Ipv4ToString(const Ipv4Addr& ip) {
  return absl::StrFormat("%d.%d.%d.%d", ip[0], ip[1], ip[2], ip[3]);
}

FrameInfo ParseFrame(absl::Span<const uint8_t> bytes, size_t frame_length) {
  FrameInfo info;
  info.length = std::max(frame_length, bytes.size());
  if (bytes.size() < kEthHeaderLen) return info;
  const uint8_t* p = bytes.data();
  size_t avail = bytes.size();
  info.ethernet = true;
  info.dst = Take<6>(p);
  info.src = Take<6>(p + 6);
  info.ether_type = Be16(p + 12);
  p += kEthHeaderLen;
  avail -= kEthHeaderLen;
  if (info.ether_type == kEtherTypeVlan) {
    if (avail < 4) return info;
    info.ether_type = Be16(p + 2);
    p += 4;
    avail -= 4;
  }
  switch (info.ether_type) {
    case kEtherTypeArp:
      // Ethernet (1) / IPv4 (0x0800), 6-byte and 4-byte addresses only.
      if (avail >= 28 && Be16(p) == 1 && Be16(p + 2) == kEtherTypeIpv4 && p[4] == 6 && p[5] == 4) {
        info.arp = true;
        info.arp_op = Be16(p + 6);
        info.arp_sender_mac = Take<6>(p + 8);
        info.arp_sender_ip = Take<4>(p + 14);
        info.arp_target_ip = Take<4>(p + 24);
      }
      break;
    case kEtherTypeIpv4:
      ParseIpv4(p, avail, &info);
      break;
    case kEtherTypeIpv6:
      ParseIpv6(p, avail, &info);
      break;
    default:
      break;
  }
  return info;
}

std::string FrameInfo::ToString() const {
  if (!ethernet) return absl::StrFormat("runt of %d bytes", length);
  std::string s = absl::StrFormat("len %d %s -> %s type 0x%04x", length, MacToString(src),
                                  MacToString(dst), ether_type);
  if (arp) {
    if (arp_op == kArpRequest) {
      absl::StrAppendFormat(&s, " arp request who-has %s tell %s", Ipv4ToString(arp_target_ip),
                            Ipv4ToString(arp_sender_ip));
    } else if (arp_op == kArpReply) {
      absl::StrAppendFormat(&s, " arp reply %s is-at %s", Ipv4ToString(arp_sender_ip),
                            MacToString(arp_sender_mac));
    } else {
      absl::StrAppendFormat(&s, " arp op %d", arp_op);
    }
    return s;
  }
  if (!ip) {
    if (ether_type == kEtherTypeIpv4 || ether_type == kEtherTypeIpv6) s += " malformed ip";
    return s;
  }
  if (ether_type == kEtherTypeIpv4) {
    absl::StrAppendFormat(&s, " ipv4 %s -> %s proto %d", Ipv4ToString(ipv4_src),
                          Ipv4ToString(ipv4_dst), ip_proto);
  } else {
    absl::StrAppendFormat(&s, " ipv6 next %d", ip_proto);
  }
  if (fragment) s += " fragment";
  if (udp) absl::StrAppendFormat(&s, " udp sport %d dport %d", udp_src_port, udp_dst_port);
  if (tcp) absl::StrAppendFormat(&s, " tcp dport %d", tcp_dst_port);
  if (icmp) {
    absl::StrAppendFormat(&s, " %s type %d", ip_proto == kIpProtoIcmpv6 ? "icmpv6" : "icmp",
                          icmp_type);
  }
  return s;
}

size_t BuildArpReply(const FrameInfo& info, const Mac& mac, const Ipv4Addr& ip,
                     absl::Span<uint8_t> out) {
  if (!info.arp || info.arp_op != kArpRequest || info.arp_target_ip != ip ||
      info.arp_sender_ip == ip || out.size() < kArpFrameLen) {
    return 0;
  }
  uint8_t* p = out.data();
  std::memcpy(p, info.arp_sender_mac.data(), 6);
  std::memcpy(p + 6, mac.data(), 6);
  PutBe16(p + 12, kEtherTypeArp);
  uint8_t* a = p + kEthHeaderLen;
  PutBe16(a, 1);
  PutBe16(a + 2, kEtherTypeIpv4);
  a[4] = 6;
  a[5] = 4;
  PutBe16(a + 6, kArpReply);
  std::memcpy(a + 8, mac.data(), 6);
  std::memcpy(a + 14, ip.data(), 4);
  std::memcpy(a + 18, info.arp_sender_mac.data(), 6);
  std::memcpy(a + 24, info.arp_sender_ip.data(), 4);
  return kArpFrameLen;
}

size_t BuildEchoReply(const FrameInfo& info, absl::Span<const uint8_t> frame, const Mac& mac,
                      const Ipv4Addr& ip, absl::Span<uint8_t> out) {
  // Untagged frames only: the offsets below assume no 802.1Q tag.
  if (!info.icmp || info.ether_type != kEtherTypeIpv4 || info.fragment ||
      info.icmp_type != kIcmpEchoRequest || info.ipv4_dst != ip || frame.size() < kEthHeaderLen ||
      frame.size() != info.length || Be16(frame.data() + 12) != kEtherTypeIpv4) {
    return 0;
  }
  const uint8_t* in_ip = frame.data() + kEthHeaderLen;
  const size_t header = (in_ip[0] & 0x0f) * 4u;
  const size_t total = Be16(in_ip + 2);
  // The IP datagram must lie within the frame (trailing padding is dropped).
  if (total > frame.size() - kEthHeaderLen || total < header + kIcmpHeader ||
      kEthHeaderLen + total > out.size()) {
    return 0;
  }
  uint8_t* p = out.data();
  std::memcpy(p, info.src.data(), 6);
  std::memcpy(p + 6, mac.data(), 6);
  PutBe16(p + 12, kEtherTypeIpv4);
  uint8_t* out_ip = p + kEthHeaderLen;
  std::memcpy(out_ip, in_ip, total);
  out_ip[8] = 64;  // TTL.
  std::memcpy(out_ip + 12, ip.data(), 4);
  std::memcpy(out_ip + 16, info.ipv4_src.data(), 4);
  PutBe16(out_ip + 10, 0);
  PutBe16(out_ip + 10, InternetChecksum({out_ip, header}));
  uint8_t* icmp = out_ip + header;
  icmp[0] = kIcmpEchoReply;
  icmp[1] = 0;
  PutBe16(icmp + 2, 0);
  PutBe16(icmp + 2, InternetChecksum({icmp, total - header}));
  return kEthHeaderLen + total;
}

}  // namespace vunet::guest_test
