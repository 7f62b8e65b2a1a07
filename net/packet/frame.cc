#include "net/packet/frame.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"
#include "base/iov.h"
#include "base/log.h"
#include "base/static_status.h"
#include "net/packet/checksum.h"

namespace vunet::net {
namespace {

// The one place frames are dropped: one rate limiter for all reasons, so a
// guest cycling through faults is limited as one source.
absl::Status Drop(const absl::Status& reason, size_t frame_len) {
  VUNET_LOG_RATELIMITED(kInfo, "dropped frame of %d bytes: %s", frame_len, reason.message());
  return reason;  // A copy shares the status's message: nothing allocated per frame.
}

// Drop() with a status made once per call site (a guest can send malformed
// frames as fast as good ones).
#define DROP(reason, frame_len) \
  Drop(VUNET_STATIC_STATUS(absl::InvalidArgumentError(reason)), frame_len)

MacAddr ToMac(const uint8_t (&b)[6]) {
  MacAddr m;
  std::memcpy(m.bytes, b, sizeof(m.bytes));
  return m;
}

bool IsIpv6ExtHeader(uint8_t nh) {
  return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
         nh == IPPROTO_FRAGMENT || nh == IPPROTO_AH;
}

absl::Status ParseL4(const FrameReader& r, ParsedFrame* out) {
  const size_t off = out->l4_offset;
  const size_t len = out->l4_len;
  const size_t n = r.size();
  out->payload_offset = off;
  out->payload_len = len;
  switch (out->ip.protocol) {
    case IPPROTO_TCP: {
      TcpHeader h;
      if (len < sizeof(h) || !r.Read(off, &h)) return DROP("truncated TCP header", n);
      const size_t hlen = static_cast<size_t>(h.data_off >> 4) * 4;
      if (hlen < kTcpMinHeaderLen) return DROP("TCP data offset below 5", n);
      if (hlen > len) return DROP("TCP header past the segment", n);
      uint8_t options[kTcpMaxHeaderLen - kTcpMinHeaderLen];
      const size_t olen = hlen - kTcpMinHeaderLen;
      if (!r.Read(off + kTcpMinHeaderLen, options, olen)) return DROP("truncated TCP options", n);
      out->l4 = L4Kind::kTcp;
      out->src_port = ntohs(h.src_port);
      out->dst_port = ntohs(h.dst_port);
      out->tcp.seq = ntohl(h.seq);
      out->tcp.ack = ntohl(h.ack);
      out->tcp.flags = h.flags;
      out->tcp.window = ntohs(h.window);
      out->tcp.header_len = hlen;
      if (!ParseTcpOptions(options, olen, &out->tcp.options)) {
        return DROP("TCP option length past the options", n);
      }
      out->payload_offset = off + hlen;
      out->payload_len = len - hlen;
      return absl::OkStatus();
    }
    case IPPROTO_UDP: {
      UdpHeader h;
      if (len < sizeof(h) || !r.Read(off, &h)) return DROP("truncated UDP header", n);
      const size_t ulen = ntohs(h.len);
      if (ulen < kUdpHeaderLen) return DROP("UDP length below 8", n);
      if (ulen > len) return DROP("UDP length past the IP payload", n);
      out->l4 = L4Kind::kUdp;
      out->src_port = ntohs(h.src_port);
      out->dst_port = ntohs(h.dst_port);
      out->payload_offset = off + kUdpHeaderLen;
      out->payload_len = ulen - kUdpHeaderLen;
      return absl::OkStatus();
    }
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6: {
      const bool v6 = out->ip.protocol == IPPROTO_ICMPV6;
      if (v6 != (out->l3 == L3Kind::kIpv6)) break;  // ICMP over IPv6 or the reverse: other.
      uint8_t h[8] = {};
      const size_t min = v6 ? 4 : 8;
      if (len < min || !r.Read(off, h, std::min(len, sizeof(h)))) {
        return (v6 ? DROP("truncated ICMPv6 header", n) : DROP("truncated ICMP header", n));
      }
      out->l4 = v6 ? L4Kind::kIcmpv6 : L4Kind::kIcmp;
      out->icmp.type = h[0];
      out->icmp.code = h[1];
      out->icmp.id = static_cast<uint16_t>(h[4] << 8 | h[5]);
      out->icmp.seq = static_cast<uint16_t>(h[6] << 8 | h[7]);
      out->payload_offset = off + 4;
      out->payload_len = len - 4;
      return absl::OkStatus();
    }
    default:
      break;
  }
  out->l4 = L4Kind::kOther;
  return absl::OkStatus();
}

absl::Status ParseIpv4(const FrameReader& r, ParsedFrame* out) {
  const size_t off = out->l3_offset;
  const size_t n = r.size();
  // The header with its options (skipped, but covered by the checksum), read
  // once: every field used comes from this one copy, so the checksum covers
  // what is used even if the guest rewrites the header meanwhile.
  uint8_t header[kIpv4MaxHeaderLen];
  if (!r.Read(off, header, kIpv4MinHeaderLen)) return DROP("truncated IPv4 header", n);
  Ipv4Header h;
  std::memcpy(&h, header, sizeof(h));
  if (h.version_ihl >> 4 != 4) return DROP("IPv4 version not 4", n);
  const size_t hlen = static_cast<size_t>(h.version_ihl & 0xf) * 4;
  if (hlen < kIpv4MinHeaderLen) return DROP("IPv4 header length below 20", n);
  const size_t total = ntohs(h.total_len);
  if (total < hlen) return DROP("IPv4 total length below the header length", n);
  if (total > n - off) return DROP("IPv4 total length past the frame", n);
  if (hlen > kIpv4MinHeaderLen &&
      !r.Read(off + kIpv4MinHeaderLen, header + kIpv4MinHeaderLen, hlen - kIpv4MinHeaderLen)) {
    return DROP("truncated IPv4 options", n);
  }
  if (InternetChecksum(header, hlen) != 0) return DROP("bad IPv4 header checksum", n);
  // MF, or a fragment offset: a fragment. (DF and the reserved bit are not.)
  if (ntohs(h.frag_off) & 0x3fff) return DROP("IPv4 fragment", n);
  out->l3 = L3Kind::kIpv4;
  out->l3_len = total;
  out->ip.src4 = h.src;
  out->ip.dst4 = h.dst;
  out->ip.protocol = h.protocol;
  out->ip.ttl = h.ttl;
  out->l4_offset = off + hlen;
  out->l4_len = total - hlen;
  return ParseL4(r, out);
}

absl::Status ParseIpv6(const FrameReader& r, ParsedFrame* out) {
  const size_t off = out->l3_offset;
  const size_t n = r.size();
  Ipv6Header h;
  if (!r.Read(off, &h)) return DROP("truncated IPv6 header", n);
  if (ntohl(h.version_class_flow) >> 28 != 6) return DROP("IPv6 version not 6", n);
  const size_t plen = ntohs(h.payload_len);
  if (plen > n - off - kIpv6HeaderLen) return DROP("IPv6 payload length past the frame", n);
  const size_t end = off + kIpv6HeaderLen + plen;
  out->l3 = L3Kind::kIpv6;
  out->l3_len = kIpv6HeaderLen + plen;
  out->ip.src6 = h.src;
  out->ip.dst6 = h.dst;
  out->ip.ttl = h.hop_limit;
  // Every step moves forward by at least 8 bytes and there are at most
  // kMaxIpv6ExtHeaders steps: the walk ends whatever the headers say.
  size_t cur = off + kIpv6HeaderLen;
  uint8_t nh = h.next_header;
  for (int count = 0; IsIpv6ExtHeader(nh); ++count) {
    if (nh == IPPROTO_FRAGMENT) return DROP("IPv6 fragment", n);
    if (count == kMaxIpv6ExtHeaders) return DROP("too many IPv6 extension headers", n);
    uint8_t ext[2];
    if (end - cur < sizeof(ext) || !r.Read(cur, ext, sizeof(ext))) {
      return DROP("truncated IPv6 extension header", n);
    }
    // AH counts 4-byte units less two (RFC 4302); the others 8-byte units
    // less one (RFC 8200).
    const size_t ext_len = nh == IPPROTO_AH ? (ext[1] + 2u) * 4 : (ext[1] + 1u) * 8;
    if (ext_len > end - cur) return DROP("IPv6 extension header past the payload", n);
    nh = ext[0];
    cur += ext_len;
  }
  out->ip.protocol = nh;
  out->l4_offset = cur;
  out->l4_len = end - cur;
  if (nh == IPPROTO_NONE) {
    out->payload_offset = cur;
    out->payload_len = 0;
    return absl::OkStatus();
  }
  return ParseL4(r, out);
}

absl::Status ParseArp(const FrameReader& r, ParsedFrame* out) {
  const size_t n = r.size();
  ArpPacket a;
  if (!r.Read(out->l3_offset, &a)) return DROP("truncated ARP packet", n);
  if (ntohs(a.htype) != 1 || ntohs(a.ptype) != kEtherTypeIpv4 || a.hlen != 6 || a.plen != 4) {
    return DROP("ARP not for Ethernet and IPv4", n);
  }
  out->l3 = L3Kind::kArp;
  out->l3_len = kArpLen;
  out->arp.op = ntohs(a.op);
  out->arp.sha = ToMac(a.sha);
  out->arp.tha = ToMac(a.tha);
  std::memcpy(&out->arp.spa, a.spa, 4);
  std::memcpy(&out->arp.tpa, a.tpa, 4);
  out->payload_offset = out->l3_offset + kArpLen;
  out->payload_len = 0;
  return absl::OkStatus();
}

void PutBe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}

}  // namespace

bool MacAddr::IsBroadcast() const { return *this == kBroadcastMac; }

FrameReader::FrameReader(absl::Span<const iovec> iov) : iov_(iov) {
  for (const iovec& v : iov) {
    if (v.iov_len > std::numeric_limits<size_t>::max() - size_) {
      size_ = std::numeric_limits<size_t>::max();
      break;
    }
    size_ += v.iov_len;
  }
}

bool FrameReader::Read(size_t offset, void* out, size_t n) const {
  if (offset > size_ || n > size_ - offset) return false;
  return IovToBuf(iov_.data(), iov_.size(), offset, out, n) == n;
}

bool ParseTcpOptions(const uint8_t* o, size_t len, TcpOptions* out) {
  *out = TcpOptions();
  size_t i = 0;
  while (i < len) {  // Every step advances i by at least one.
    const uint8_t kind = o[i];
    if (kind == 0) break;  // End of option list.
    if (kind == 1) {       // No-operation.
      ++i;
      continue;
    }
    if (len - i < 2) return false;
    const size_t olen = o[i + 1];
    if (olen < 2 || olen > len - i) return false;
    const uint8_t* v = o + i + 2;
    switch (kind) {
      case 2:
        if (olen == 4) {
          out->has_mss = true;
          out->mss = static_cast<uint16_t>(v[0] << 8 | v[1]);
        }
        break;
      case 3:
        if (olen == 3) {
          out->has_window_scale = true;
          out->window_scale = std::min<uint8_t>(v[0], 14);
        }
        break;
      case 4:
        if (olen == 2) out->sack_permitted = true;
        break;
      case 5:
        if (olen >= 10 && olen <= 34 && (olen - 2) % 8 == 0) {
          out->sack_count = static_cast<uint8_t>((olen - 2) / 8);
          for (uint8_t b = 0; b < out->sack_count; ++b) {
            const uint8_t* e = v + 8 * b;
            out->sack[b].left = static_cast<uint32_t>(e[0]) << 24 | e[1] << 16 | e[2] << 8 | e[3];
            out->sack[b].right = static_cast<uint32_t>(e[4]) << 24 | e[5] << 16 | e[6] << 8 | e[7];
          }
        }
        break;
      case 8:
        if (olen == 10) {
          out->has_timestamps = true;
          out->ts_val = static_cast<uint32_t>(v[0]) << 24 | v[1] << 16 | v[2] << 8 | v[3];
          out->ts_ecr = static_cast<uint32_t>(v[4]) << 24 | v[5] << 16 | v[6] << 8 | v[7];
        }
        break;
      default:
        break;  // Unknown options are skipped.
    }
    i += olen;
  }
  return true;
}

absl::Status ParseFrame(absl::Span<const iovec> frame, ParsedFrame* out) {
  *out = ParsedFrame();
  const FrameReader r(frame);
  const size_t n = r.size();
  out->frame_len = n;
  if (n == 0) return DROP("empty frame", n);
  if (n > kMaxFrameLen) return DROP("frame longer than the largest IP packet", n);
  EthHeader eth;
  if (!r.Read(0, &eth)) return DROP("truncated Ethernet header", n);
  out->dst_mac = ToMac(eth.dst);
  out->src_mac = ToMac(eth.src);
  out->ether_type = ntohs(eth.ether_type);
  out->l3_offset = kEthHeaderLen;
  out->payload_offset = kEthHeaderLen;
  out->payload_len = n - kEthHeaderLen;
  switch (out->ether_type) {
    case kEtherTypeVlan:
    case kEtherTypeQinQ:
      return DROP("VLAN-tagged frame", n);
    case kEtherTypeArp:
      return ParseArp(r, out);
    case kEtherTypeIpv4:
      return ParseIpv4(r, out);
    case kEtherTypeIpv6:
      return ParseIpv6(r, out);
    default:
      return absl::OkStatus();
  }
}

size_t FrameHeadersLen(const FrameSpec& spec) {
  size_t len = kEthHeaderLen + (spec.ipv6 ? kIpv6HeaderLen : kIpv4MinHeaderLen);
  if (spec.protocol == IPPROTO_TCP) len += kTcpMinHeaderLen + spec.tcp_options.size();
  if (spec.protocol == IPPROTO_UDP) len += kUdpHeaderLen;
  return len;
}

absl::StatusOr<size_t> BuildFrame(const FrameSpec& spec, absl::Span<const iovec> iov, size_t offset,
                                  size_t payload_len) {
  const bool tcp = spec.protocol == IPPROTO_TCP;
  const bool udp = spec.protocol == IPPROTO_UDP;
  const bool icmp = spec.protocol == (spec.ipv6 ? int{IPPROTO_ICMPV6} : int{IPPROTO_ICMP});
  if (tcp && (spec.tcp_options.size() % 4 != 0 ||
              spec.tcp_options.size() > kTcpMaxHeaderLen - kTcpMinHeaderLen)) {
    return absl::InvalidArgumentError("TCP options not a multiple of 4 bytes up to 40");
  }
  const size_t hlen = FrameHeadersLen(spec);
  const size_t l3_hlen = spec.ipv6 ? kIpv6HeaderLen : kIpv4MinHeaderLen;
  const size_t l4_hlen = hlen - kEthHeaderLen - l3_hlen;
  if (payload_len > 65535 - l4_hlen - (spec.ipv6 ? 0 : l3_hlen)) {
    return absl::InvalidArgumentError("payload too long for one IP packet");
  }
  if (icmp && payload_len < 4) return absl::InvalidArgumentError("ICMP message below 4 bytes");
  const size_t l4_len = l4_hlen + payload_len;
  const size_t frame_len = hlen + payload_len;
  const FrameReader room(iov);
  if (offset > room.size() || frame_len > room.size() - offset) {
    return absl::InvalidArgumentError("frame does not fit the buffers");
  }

  uint8_t h[kEthHeaderLen + kIpv6HeaderLen + kTcpMaxHeaderLen] = {};
  EthHeader eth;
  std::memcpy(eth.dst, spec.dst_mac.bytes, 6);
  std::memcpy(eth.src, spec.src_mac.bytes, 6);
  eth.ether_type = htons(spec.ipv6 ? kEtherTypeIpv6 : kEtherTypeIpv4);
  std::memcpy(h, &eth, sizeof(eth));

  uint8_t* l4 = h + kEthHeaderLen + l3_hlen;
  ChecksumAccumulator csum;
  if (spec.ipv6) {
    Ipv6Header ip6;
    ip6.version_class_flow = htonl(6u << 28 | (spec.flow_label & 0xfffff));
    ip6.payload_len = htons(static_cast<uint16_t>(l4_len));
    ip6.next_header = spec.protocol;
    ip6.hop_limit = spec.ttl;
    ip6.src = spec.src6;
    ip6.dst = spec.dst6;
    std::memcpy(h + kEthHeaderLen, &ip6, sizeof(ip6));
    csum = PseudoHeaderV6(spec.src6, spec.dst6, spec.protocol, static_cast<uint32_t>(l4_len));
  } else {
    Ipv4Header ip4;
    ip4.version_ihl = 0x45;
    ip4.tos = 0;
    ip4.total_len = htons(static_cast<uint16_t>(l3_hlen + l4_len));
    ip4.id = htons(spec.ipv4_id);
    ip4.frag_off = htons(spec.dont_fragment ? 0x4000 : 0);
    ip4.ttl = spec.ttl;
    ip4.protocol = spec.protocol;
    ip4.check = 0;
    ip4.src = spec.src4;
    ip4.dst = spec.dst4;
    ip4.check = htons(InternetChecksum(&ip4, sizeof(ip4)));
    std::memcpy(h + kEthHeaderLen, &ip4, sizeof(ip4));
    if (!icmp) {
      csum = PseudoHeaderV4(spec.src4, spec.dst4, spec.protocol, static_cast<uint16_t>(l4_len));
    }
  }

  size_t check_at = 0;  // Offset of the checksum field within the L4 header.
  if (tcp) {
    TcpHeader t;
    t.src_port = htons(spec.src_port);
    t.dst_port = htons(spec.dst_port);
    t.seq = htonl(spec.tcp_seq);
    t.ack = htonl(spec.tcp_ack);
    t.data_off = static_cast<uint8_t>(l4_hlen / 4 << 4);
    t.flags = spec.tcp_flags;
    t.window = htons(spec.tcp_window);
    t.check = 0;
    t.urgent = 0;
    std::memcpy(l4, &t, sizeof(t));
    if (!spec.tcp_options.empty()) {
      std::memcpy(l4 + sizeof(t), spec.tcp_options.data(), spec.tcp_options.size());
    }
    check_at = offsetof(TcpHeader, check);
  } else if (udp) {
    UdpHeader u;
    u.src_port = htons(spec.src_port);
    u.dst_port = htons(spec.dst_port);
    u.len = htons(static_cast<uint16_t>(l4_len));
    u.check = 0;
    std::memcpy(l4, &u, sizeof(u));
    check_at = offsetof(UdpHeader, check);
  }

  const size_t payload_at = offset + hlen;
  if (tcp || udp) {
    if (spec.l4_partial) {
      PutBe16(l4 + check_at, csum.Sum());
    } else if (spec.l4_checksum) {
      csum.Add(l4, l4_hlen);
      csum.Add(iov, payload_at, payload_len);
      uint16_t c = csum.Finish();
      if (udp && c == 0) c = 0xffff;  // Zero means "no checksum" in UDP.
      PutBe16(l4 + check_at, c);
    } else if (udp && spec.ipv6) {
      PutBe16(l4 + check_at, 0xffff);  // Not verified (data valid), but never zero.
    }
  } else if (icmp) {
    const uint8_t zero[2] = {};
    IovFromBuf(iov.data(), iov.size(), payload_at + 2, zero, sizeof(zero));
    // Always computed: ICMP messages are small, and a guest need not take
    // the data-valid flag for anything but TCP and UDP.
    csum.Add(iov, payload_at, payload_len);
    uint8_t c[2];
    PutBe16(c, csum.Finish());
    IovFromBuf(iov.data(), iov.size(), payload_at + 2, c, sizeof(c));
  }
  IovFromBuf(iov.data(), iov.size(), offset, h, hlen);
  return frame_len;
}

absl::StatusOr<size_t> BuildFrame(const FrameSpec& spec, absl::Span<uint8_t> out,
                                  size_t payload_len) {
  const iovec iov = {out.data(), out.size()};
  return BuildFrame(spec, absl::MakeConstSpan(&iov, 1), 0, payload_len);
}

#undef DROP

}  // namespace vunet::net
