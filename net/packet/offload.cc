#include "net/packet/offload.h"

namespace vunet::net {
namespace {

using virtio::kVirtioNetHdrFNeedsCsum;
using virtio::kVirtioNetHdrGsoEcn;
using virtio::kVirtioNetHdrGsoNone;
using virtio::kVirtioNetHdrGsoTcpv4;
using virtio::kVirtioNetHdrGsoTcpv6;
using virtio::kVirtioNetHdrGsoUdpL4;

// Where the checksum field sits in a TCP and a UDP header.
constexpr size_t kTcpCheckOffset = 16;
constexpr size_t kUdpCheckOffset = 6;

}  // namespace

const char* OffloadProblemName(OffloadProblem problem) {
  switch (problem) {
    case OffloadProblem::kNone:
      return "none";
    case OffloadProblem::kChecksumNotNegotiated:
      return "NEEDS_CSUM without VIRTIO_NET_F_CSUM";
    case OffloadProblem::kChecksumOutOfRange:
      return "csum_start + csum_offset past the frame";
    case OffloadProblem::kGsoUnknownType:
      return "unknown gso_type";
    case OffloadProblem::kGsoNotNegotiated:
      return "gso_type not negotiated";
    case OffloadProblem::kGsoProtocolMismatch:
      return "gso_type not the frame's protocol";
    case OffloadProblem::kGsoWithoutChecksum:
      return "segmentation without NEEDS_CSUM";
    case OffloadProblem::kGsoChecksumField:
      return "segmentation with csum_start/csum_offset off the transport checksum";
    case OffloadProblem::kGsoZeroSize:
      return "gso_size 0";
    case OffloadProblem::kGsoSizePastPayload:
      return "gso_size larger than the payload";
    case OffloadProblem::kHdrLenPastFrame:
      return "hdr_len past the frame";
    case OffloadProblem::kGsoLengthMismatch:
      return "segmentation of a frame whose IP length is not its own";
  }
  return "?";
}

OffloadProblem CheckGuestOffload(const virtio::VirtioNetHdr& hdr, const ParsedFrame& frame,
                                 const GuestOffloads& negotiated) {
  const bool needs_csum = (hdr.flags & kVirtioNetHdrFNeedsCsum) != 0;
  if (needs_csum) {
    if (!negotiated.csum) return OffloadProblem::kChecksumNotNegotiated;
    if (size_t{hdr.csum_start} + hdr.csum_offset + 2 > frame.frame_len) {
      return OffloadProblem::kChecksumOutOfRange;
    }
  }
  if (hdr.gso_type == kVirtioNetHdrGsoNone) return OffloadProblem::kNone;

  const uint8_t type = hdr.gso_type & static_cast<uint8_t>(~kVirtioNetHdrGsoEcn);
  const bool ecn = (hdr.gso_type & kVirtioNetHdrGsoEcn) != 0;
  bool allowed;
  bool protocol_ok;
  size_t check_offset;
  switch (type) {
    case kVirtioNetHdrGsoTcpv4:
      allowed = negotiated.tso4;
      protocol_ok = frame.l3 == L3Kind::kIpv4 && frame.l4 == L4Kind::kTcp;
      check_offset = kTcpCheckOffset;
      break;
    case kVirtioNetHdrGsoTcpv6:
      allowed = negotiated.tso6;
      protocol_ok = frame.l3 == L3Kind::kIpv6 && frame.l4 == L4Kind::kTcp;
      check_offset = kTcpCheckOffset;
      break;
    case kVirtioNetHdrGsoUdpL4:
      if (ecn) return OffloadProblem::kGsoUnknownType;
      allowed = negotiated.uso;
      protocol_ok =
          (frame.l3 == L3Kind::kIpv4 || frame.l3 == L3Kind::kIpv6) && frame.l4 == L4Kind::kUdp;
      check_offset = kUdpCheckOffset;
      break;
    default:  // NONE with the ECN bit, UFO (never offered), the rest.
      return OffloadProblem::kGsoUnknownType;
  }
  if (!allowed || (ecn && !negotiated.ecn)) return OffloadProblem::kGsoNotNegotiated;
  if (!protocol_ok) return OffloadProblem::kGsoProtocolMismatch;
  if (!needs_csum) return OffloadProblem::kGsoWithoutChecksum;
  if (hdr.csum_start != frame.l4_offset || hdr.csum_offset != check_offset) {
    return OffloadProblem::kGsoChecksumField;
  }
  if (hdr.gso_size == 0) return OffloadProblem::kGsoZeroSize;
  if (hdr.gso_size > frame.payload_len) return OffloadProblem::kGsoSizePastPayload;
  if (hdr.hdr_len > frame.frame_len) return OffloadProblem::kHdrLenPastFrame;
  // The frame is the IP packet (no padding after it), and a UDP datagram to
  // segment is the whole IP payload.
  if (frame.l3_offset + frame.l3_len != frame.frame_len ||
      (type == kVirtioNetHdrGsoUdpL4 &&
       frame.payload_offset + frame.payload_len != frame.l4_offset + frame.l4_len)) {
    return OffloadProblem::kGsoLengthMismatch;
  }
  return OffloadProblem::kNone;
}

}  // namespace vunet::net
