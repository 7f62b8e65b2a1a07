#include "tools/vu_frontend/net_header.h"

#include <linux/if_tun.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_join.h"

namespace vunet::vu_frontend {
namespace {

using virtio::kVirtioNetHdrFDataValid;
using virtio::kVirtioNetHdrFNeedsCsum;

static_assert(kTunFCsum == TUN_F_CSUM && kTunFTso4 == TUN_F_TSO4 && kTunFTso6 == TUN_F_TSO6 &&
              kTunFTsoEcn == TUN_F_TSO_ECN);
#ifdef TUN_F_USO4
static_assert(kTunFUso4 == TUN_F_USO4 && kTunFUso6 == TUN_F_USO6);
#endif

constexpr size_t kEthernet = 14;
constexpr uint16_t kEtherTypeIpv4 = 0x0800;
constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
constexpr uint8_t kTcp = 6;
constexpr uint8_t kUdp = 17;

uint16_t Be16(absl::Span<const uint8_t> bytes, size_t at) {
  return static_cast<uint16_t>(bytes[at] << 8 | bytes[at + 1]);
}

bool Has(uint64_t features, unsigned bit) { return (features & Bit(bit)) != 0; }

}  // namespace

uint64_t WithPrerequisites(uint64_t features) {
  if (!Has(features, kVirtioNetFGuestCsum)) {
    features &= ~(Bit(kVirtioNetFGuestTso4) | Bit(kVirtioNetFGuestTso6) | Bit(kVirtioNetFGuestUfo) |
                  Bit(kVirtioNetFGuestUso4) | Bit(kVirtioNetFGuestUso6));
  }
  if (!Has(features, kVirtioNetFGuestTso4) && !Has(features, kVirtioNetFGuestTso6)) {
    features &= ~Bit(kVirtioNetFGuestEcn);
  }
  if (!Has(features, kVirtioNetFCsum)) {
    features &= ~(Bit(kVirtioNetFHostTso4) | Bit(kVirtioNetFHostTso6) | Bit(kVirtioNetFHostUfo) |
                  Bit(kVirtioNetFHostUso));
  }
  if (!Has(features, kVirtioNetFHostTso4) && !Has(features, kVirtioNetFHostTso6)) {
    features &= ~Bit(kVirtioNetFHostEcn);
  }
  return features;
}

FrameInfo ClassifyFrame(absl::Span<const uint8_t> frame) {
  FrameInfo info;
  if (frame.size() < kEthernet) return info;
  info.ether_type = Be16(frame, 12);
  size_t l4;
  size_t ip_end = frame.size();  // Where the IP packet ends, padding excluded.
  if (info.ether_type == kEtherTypeIpv4) {
    if (frame.size() < kEthernet + 20 || (frame[kEthernet] >> 4) != 4) return info;
    const size_t header = size_t{frame[kEthernet] & 0x0fu} * 4;
    if (header < 20 || kEthernet + header > frame.size()) return info;
    info.ip_version = 4;
    info.protocol = frame[kEthernet + 9];
    info.fragment = ((frame[kEthernet + 6] & 0x3f) | frame[kEthernet + 7]) != 0;
    if (info.fragment) return info;
    const size_t total = Be16(frame, kEthernet + 2);
    if (total >= header) ip_end = std::min(ip_end, kEthernet + total);
    l4 = kEthernet + header;
  } else if (info.ether_type == kEtherTypeIpv6) {
    if (frame.size() < kEthernet + 40 || (frame[kEthernet] >> 4) != 6) return info;
    info.ip_version = 6;
    info.protocol = frame[kEthernet + 6];
    const size_t payload = Be16(frame, kEthernet + 4);
    // 0 is a jumbogram's (RFC 2675); take the frame's length then.
    if (payload != 0) ip_end = std::min(ip_end, kEthernet + 40 + payload);
    l4 = kEthernet + 40;
  } else {
    return info;
  }
  size_t header = 0;
  if (info.protocol == kTcp && frame.size() >= l4 + 20) {
    header = (size_t{frame[l4 + 12]} >> 4) * 4;
    if (header < 20 || l4 + header > frame.size()) return info;
    info.tcp_flags = frame[l4 + 13];
  } else if (info.protocol == kUdp && frame.size() >= l4 + 8) {
    header = 8;
  } else {
    return info;
  }
  info.l4_offset = static_cast<uint16_t>(l4);
  info.l4_header_size = static_cast<uint16_t>(header);
  info.payload_size = ip_end > l4 + header ? static_cast<uint32_t>(ip_end - l4 - header) : 0;
  return info;
}

std::optional<VirtioNetHdr> OffloadHeader(absl::Span<const uint8_t> frame, uint16_t gso_size,
                                          bool ecn) {
  const FrameInfo info = ClassifyFrame(frame);
  if (!info.is_tcp() && !info.is_udp()) return std::nullopt;
  if (ecn && !info.is_tcp()) return std::nullopt;
  VirtioNetHdr header;
  header.flags = kVirtioNetHdrFNeedsCsum;
  header.csum_start = info.l4_offset;
  header.csum_offset = info.is_tcp() ? 16 : 6;
  if (gso_size != 0 && info.payload_size > gso_size) {
    if (info.is_tcp()) {
      header.gso_type = info.ip_version == 4 ? kGsoTcpv4 : kGsoTcpv6;
      if (ecn) header.gso_type |= kGsoEcn;
    } else {
      header.gso_type = kGsoUdpL4;
    }
    header.gso_size = gso_size;
    header.hdr_len = static_cast<uint16_t>(info.l4_offset + info.l4_header_size);
  }
  return header;
}

const char* HeaderProblemName(HeaderProblem problem) {
  switch (problem) {
    case HeaderProblem::kNone:
      return "none";
    case HeaderProblem::kUnknownFlags:
      return "unknown flags";
    case HeaderProblem::kDataValidToBackend:
      return "DATA_VALID from the driver";
    case HeaderProblem::kChecksumNotNegotiated:
      return "checksum flags without the checksum feature";
    case HeaderProblem::kChecksumOutOfRange:
      return "csum_start + csum_offset past the frame";
    case HeaderProblem::kGsoUnknownType:
      return "unknown gso_type";
    case HeaderProblem::kGsoNotNegotiated:
      return "gso_type not negotiated";
    case HeaderProblem::kEcnNotNegotiated:
      return "GSO ECN bit not negotiated or not TCP";
    case HeaderProblem::kGsoProtocolMismatch:
      return "gso_type does not match the frame's protocol";
    case HeaderProblem::kGsoZeroSize:
      return "gso_size 0";
    case HeaderProblem::kGsoWithoutChecksum:
      return "segmentation without a checksum state";
    case HeaderProblem::kHdrLenPastFrame:
      return "hdr_len past the frame";
  }
  return "?";
}

HeaderProblem CheckHeader(const VirtioNetHdr& header, absl::Span<const uint8_t> frame,
                          uint64_t features, Direction direction) {
  const bool to_guest = direction == Direction::kToGuest;
  const uint8_t flags = header.flags;
  if ((flags & ~(kVirtioNetHdrFNeedsCsum | kVirtioNetHdrFDataValid)) != 0) {
    return HeaderProblem::kUnknownFlags;
  }
  if (!to_guest && (flags & kVirtioNetHdrFDataValid) != 0) {
    return HeaderProblem::kDataValidToBackend;
  }
  if (flags != 0 && !Has(features, to_guest ? kVirtioNetFGuestCsum : kVirtioNetFCsum)) {
    return HeaderProblem::kChecksumNotNegotiated;
  }
  if ((flags & kVirtioNetHdrFNeedsCsum) != 0 &&
      size_t{header.csum_start} + header.csum_offset + 2 > frame.size()) {
    return HeaderProblem::kChecksumOutOfRange;
  }
  const uint8_t type = header.gso_type & ~kGsoEcn;
  const bool ecn = (header.gso_type & kGsoEcn) != 0;
  if (type == kGsoNone) return ecn ? HeaderProblem::kGsoUnknownType : HeaderProblem::kNone;

  const FrameInfo info = ClassifyFrame(frame);
  unsigned needed;
  bool protocol_ok;
  switch (type) {
    case kGsoTcpv4:
      needed = to_guest ? kVirtioNetFGuestTso4 : kVirtioNetFHostTso4;
      protocol_ok = info.is_tcp() && info.ip_version == 4;
      break;
    case kGsoTcpv6:
      needed = to_guest ? kVirtioNetFGuestTso6 : kVirtioNetFHostTso6;
      protocol_ok = info.is_tcp() && info.ip_version == 6;
      break;
    case kGsoUdpL4:
      needed = !to_guest              ? kVirtioNetFHostUso
               : info.ip_version == 6 ? kVirtioNetFGuestUso6
                                      : kVirtioNetFGuestUso4;
      protocol_ok = info.is_udp();
      break;
    case kGsoUdp:
      needed = to_guest ? kVirtioNetFGuestUfo : kVirtioNetFHostUfo;
      protocol_ok = info.is_udp();
      break;
    default:
      return HeaderProblem::kGsoUnknownType;
  }
  if (!Has(features, needed)) return HeaderProblem::kGsoNotNegotiated;
  if (ecn && (type == kGsoUdpL4 || type == kGsoUdp ||
              !Has(features, to_guest ? kVirtioNetFGuestEcn : kVirtioNetFHostEcn))) {
    return HeaderProblem::kEcnNotNegotiated;
  }
  if (!protocol_ok) return HeaderProblem::kGsoProtocolMismatch;
  if (header.gso_size == 0) return HeaderProblem::kGsoZeroSize;
  const uint8_t checksum_state =
      to_guest ? (kVirtioNetHdrFNeedsCsum | kVirtioNetHdrFDataValid) : kVirtioNetHdrFNeedsCsum;
  if ((flags & checksum_state) == 0) return HeaderProblem::kGsoWithoutChecksum;
  if (header.hdr_len > frame.size()) return HeaderProblem::kHdrLenPastFrame;
  return HeaderProblem::kNone;
}

unsigned TunOffloadFlags(uint64_t features) {
  if (!Has(features, kVirtioNetFCsum)) return 0;
  unsigned flags = kTunFCsum;
  if (Has(features, kVirtioNetFHostTso4)) flags |= kTunFTso4;
  if (Has(features, kVirtioNetFHostTso6)) flags |= kTunFTso6;
  if (Has(features, kVirtioNetFHostEcn) && (flags & (kTunFTso4 | kTunFTso6)) != 0) {
    flags |= kTunFTsoEcn;
  }
  if (Has(features, kVirtioNetFHostUso)) flags |= kTunFUso4 | kTunFUso6;
  return flags;
}

std::string TunOffloadNames(unsigned flags) {
  static constexpr std::pair<unsigned, const char*> kNames[] = {
      {kTunFCsum, "CSUM"},      {kTunFTso4, "TSO4"}, {kTunFTso6, "TSO6"},
      {kTunFTsoEcn, "TSO_ECN"}, {kTunFUso4, "USO4"}, {kTunFUso6, "USO6"},
  };
  std::vector<std::string> parts;
  for (const auto& [flag, name] : kNames) {
    if ((flags & flag) != 0) parts.push_back(name);
  }
  if (parts.empty()) return "none";
  return absl::StrJoin(parts, "|");
}

}  // namespace vunet::vu_frontend
