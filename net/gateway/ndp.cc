#include "net/gateway/ndp.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "base/log.h"
#include "net/gateway/dns_name.h"
#include "net/packet/checksum.h"

namespace vunet::net {
namespace {

constexpr uint8_t kRouterSolicitation = 133;
constexpr uint8_t kRouterAdvertisement = 134;
constexpr uint8_t kNeighborSolicitation = 135;
constexpr uint8_t kNeighborAdvertisement = 136;

constexpr uint8_t kOptSourceLinkAddr = 1;
constexpr uint8_t kOptTargetLinkAddr = 2;
constexpr uint8_t kOptPrefixInfo = 3;
constexpr uint8_t kOptMtu = 5;
constexpr uint8_t kOptRdnss = 25;
constexpr uint8_t kOptDnssl = 31;

constexpr uint8_t kNaRouter = 0x80;
constexpr uint8_t kNaSolicited = 0x40;
constexpr uint8_t kNaOverride = 0x20;

size_t DropSolicitation(const char* reason) {
  VUNET_LOG_RATELIMITED(kInfo, "dropped NDP solicitation: %s", reason);
  return 0;
}

void PutBe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void PutBe32(uint8_t* p, uint32_t v) {
  PutBe16(p, static_cast<uint16_t>(v >> 16));
  PutBe16(p + 2, static_cast<uint16_t>(v));
}

// 33:33 and the address's last four bytes (RFC 2464 7).
MacAddr MulticastMac(const in6_addr& a) {
  MacAddr m{{0x33, 0x33}};
  std::memcpy(m.bytes + 2, a.s6_addr + 12, 4);
  return m;
}

in6_addr AllNodes() {
  in6_addr a{};
  a.s6_addr[0] = 0xff;
  a.s6_addr[1] = 0x02;
  a.s6_addr[15] = 1;
  return a;
}

// Walks NDP options (RFC 4861 4.6): false if one has length zero or runs
// past the message. Sets *has_source_lla if a source link-layer address
// option is present.
bool CheckOptions(const uint8_t* o, size_t len, bool* has_source_lla) {
  *has_source_lla = false;
  size_t i = 0;
  while (i < len) {  // Every step advances at least 8 bytes.
    if (len - i < 2) return false;
    const size_t olen = size_t{o[i + 1]} * 8;
    if (olen == 0 || olen > len - i) return false;
    if (o[i] == kOptSourceLinkAddr) *has_source_lla = true;
    i += olen;
  }
  return true;
}

FrameSpec ReplySpec(const MacAddr& src_mac, const in6_addr& src, const MacAddr& dst_mac,
                    const in6_addr& dst) {
  FrameSpec s;
  s.ipv6 = true;
  s.src_mac = src_mac;
  s.dst_mac = dst_mac;
  s.src6 = src;
  s.dst6 = dst;
  s.ttl = 255;  // NDP messages are accepted only with hop limit 255.
  s.protocol = IPPROTO_ICMPV6;
  return s;
}

}  // namespace

absl::StatusOr<NdpResponder> NdpResponder::Create(const NdpConfig& config) {
  if (!IN6_IS_ADDR_LINKLOCAL(&config.gateway_ll)) {
    return absl::InvalidArgumentError("NDP: gateway_ll is not link-local");
  }
  if (config.prefix_len < 0 || config.prefix_len > 128) {
    return absl::InvalidArgumentError("NDP: prefix length over 128");
  }
  if (config.mtu != 0 && (config.mtu < 1280 || config.mtu > 65535)) {
    return absl::InvalidArgumentError("NDP: MTU outside 1280..65535");
  }
  NdpResponder r;
  r.gateway_mac_ = config.gateway_mac;
  r.gateway_ll_ = config.gateway_ll;
  r.gateway_ = config.gateway;

  std::vector<uint8_t> m(16, 0);
  m[0] = kRouterAdvertisement;
  m[4] = 64;  // Current hop limit suggested to the guest.
  PutBe16(&m[6], config.router_lifetime);
  auto add = [&m](std::initializer_list<uint8_t> head, size_t body_len) {
    const size_t at = m.size();
    m.insert(m.end(), head);
    m.resize(at + body_len, 0);
    return at;
  };
  size_t at = add({kOptSourceLinkAddr, 1}, 8);
  std::memcpy(&m[at + 2], config.gateway_mac.bytes, 6);
  if (config.mtu != 0) {
    at = add({kOptMtu, 1}, 8);
    PutBe32(&m[at + 4], config.mtu);
  }
  if (config.prefix_len != 0) {
    at = add({kOptPrefixInfo, 4, static_cast<uint8_t>(config.prefix_len), 0xc0}, 32);  // L, A.
    PutBe32(&m[at + 4], config.valid_lifetime);
    PutBe32(&m[at + 8], config.preferred_lifetime);
    std::memcpy(&m[at + 16], &config.prefix, 16);
  }
  if (!config.dns.empty()) {
    if (config.dns.size() > 127) return absl::InvalidArgumentError("NDP: too many DNS servers");
    const size_t len = 8 + 16 * config.dns.size();
    at = add({kOptRdnss, static_cast<uint8_t>(len / 8)}, len);
    PutBe32(&m[at + 4], config.dns_lifetime);
    std::memcpy(&m[at + 8], config.dns.data(), 16 * config.dns.size());
  }
  if (!config.search_domains.empty()) {
    std::vector<uint8_t> names;
    for (const std::string& d : config.search_domains) {
      if (!AppendDnsName(d, &names)) {
        return absl::InvalidArgumentError("NDP: search domain is not a DNS name");
      }
    }
    const size_t len = (8 + names.size() + 7) / 8 * 8;  // Zero-padded to 8 bytes.
    if (len / 8 > 255) return absl::InvalidArgumentError("NDP: search list too long");
    at = add({kOptDnssl, static_cast<uint8_t>(len / 8)}, len);
    PutBe32(&m[at + 4], config.dns_lifetime);
    std::memcpy(&m[at + 8], names.data(), names.size());
  }
  if (m.size() > sizeof(r.ra_)) {
    return absl::InvalidArgumentError("NDP: advertisement over the minimum MTU");
  }
  std::memcpy(r.ra_, m.data(), m.size());
  r.ra_len_ = m.size();
  return r;
}

absl::StatusOr<size_t> NdpResponder::WriteAdvertisement(const in6_addr& dst, const MacAddr& dst_mac,
                                                        absl::Span<uint8_t> out) const {
  const FrameSpec spec = ReplySpec(gateway_mac_, gateway_ll_, dst_mac, dst);
  const size_t hlen = FrameHeadersLen(spec);
  std::memcpy(out.data() + hlen, ra_, ra_len_);
  return BuildFrame(spec, out, ra_len_);
}

absl::StatusOr<size_t> NdpResponder::UnsolicitedAdvertisement(absl::Span<uint8_t> out) const {
  if (out.size() < kNdpMaxReplyLen) return absl::InvalidArgumentError("NDP buffer too short");
  const in6_addr all = AllNodes();
  return WriteAdvertisement(all, MulticastMac(all), out);
}

absl::StatusOr<size_t> NdpResponder::Reply(absl::Span<const iovec> frame, const ParsedFrame& parsed,
                                           absl::Span<uint8_t> out, bool partial_checksum) const {
  if (out.size() < kNdpMaxReplyLen) return absl::InvalidArgumentError("NDP buffer too short");
  if (parsed.l4 != L4Kind::kIcmpv6) return 0;
  const uint8_t type = parsed.icmp.type;
  if (type != kRouterSolicitation && type != kNeighborSolicitation) return 0;
  if (parsed.ip.ttl != 255) return DropSolicitation("hop limit not 255");
  if (parsed.icmp.code != 0) return DropSolicitation("code not 0");
  const size_t len = parsed.l4_len;
  const size_t fixed = type == kRouterSolicitation ? 8 : 24;
  if (len < fixed) return DropSolicitation("too short");
  if (len > kNdpMaxMessage) return DropSolicitation("too long");
  // One copy, read once: what is checksummed is what is parsed.
  uint8_t msg[kNdpMaxMessage];
  if (!FrameReader(frame).Read(parsed.l4_offset, msg, len)) {
    return DropSolicitation("message past the frame");
  }
  if (!partial_checksum &&
      L4ChecksumV6(parsed.ip.src6, parsed.ip.dst6, IPPROTO_ICMPV6, msg, len) != 0) {
    return DropSolicitation("bad checksum");
  }
  bool has_source_lla;
  if (!CheckOptions(msg + fixed, len - fixed, &has_source_lla)) {
    return DropSolicitation("bad option length");
  }
  const bool from_unspecified = IN6_IS_ADDR_UNSPECIFIED(&parsed.ip.src6);
  if (from_unspecified && has_source_lla) {
    return DropSolicitation("source link-layer address from ::");
  }

  if (type == kRouterSolicitation) {
    if (from_unspecified) return UnsolicitedAdvertisement(out);
    return WriteAdvertisement(parsed.ip.src6, parsed.src_mac, out);
  }

  in6_addr target;
  std::memcpy(&target, msg + 8, sizeof(target));
  if (IN6_IS_ADDR_MULTICAST(&target)) return DropSolicitation("multicast target");
  const bool ours = IN6_ARE_ADDR_EQUAL(&target, &gateway_ll_) ||
                    (!IN6_IS_ADDR_UNSPECIFIED(&gateway_) && IN6_ARE_ADDR_EQUAL(&target, &gateway_));
  if (IN6_IS_ADDR_UNSPECIFIED(&target) || (from_unspecified && !ours)) return 0;

  // RFC 4861 7.2.4: to the solicitor, or to all nodes for a DAD probe
  // (which then is not "solicited").
  const in6_addr dst = from_unspecified ? AllNodes() : parsed.ip.src6;
  const MacAddr dst_mac = from_unspecified ? MulticastMac(dst) : parsed.src_mac;
  const FrameSpec spec = ReplySpec(gateway_mac_, target, dst_mac, dst);
  const size_t hlen = FrameHeadersLen(spec);
  uint8_t* na = out.data() + hlen;
  std::memset(na, 0, 32);
  na[0] = kNeighborAdvertisement;
  na[4] = static_cast<uint8_t>(kNaRouter | kNaOverride | (from_unspecified ? 0 : kNaSolicited));
  std::memcpy(na + 8, &target, sizeof(target));
  na[24] = kOptTargetLinkAddr;
  na[25] = 1;
  std::memcpy(na + 26, gateway_mac_.bytes, 6);
  return BuildFrame(spec, out, 32);
}

}  // namespace vunet::net
