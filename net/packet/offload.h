// What a guest's virtio-net header may ask of the frame it precedes: the one
// check of a transmitted frame's checksum and segmentation offload fields
// against the frame itself and the features the guest negotiated (virtio
// 1.x, 5.1.6.2). The dispatcher runs it on every parsed frame and refuses
// the frame on any problem, so a translator may rely on what it passes.
//
// A frame passes when:
//   - NEEDS_CSUM only with VIRTIO_NET_F_CSUM, csum_start + csum_offset + 2
//     within the frame (the flags a device does not know, DATA_VALID among
//     them on this side, are ignored as the specification says);
//   - gso_type is NONE, or TCPV4 / TCPV6 (with or without the ECN bit) or
//     UDP_L4, with its feature negotiated (HOST_TSO4, HOST_TSO6, HOST_USO;
//     HOST_ECN for the ECN bit, which only a TCP type may carry), and then:
//     the frame is TCP over IPv4 (TCPV4), over IPv6 (TCPV6), UDP over
//     either (UDP_L4); NEEDS_CSUM is set and points at that transport
//     header's checksum field; 0 < gso_size <= the transport payload;
//     hdr_len within the frame (it is only a hint: a smaller one is fine);
//     and the frame ends where its IP packet ends (no bytes after it, so a
//     segmentation of it covers the whole frame), the UDP length field
//     spanning the whole IP payload for UDP_L4.
// Without segmentation, gso_size and hdr_len are not looked at, and bytes
// after the IP packet are Ethernet padding.
//
//   OffloadProblem p = CheckGuestOffload(hdr, parsed, GuestOffloads{.csum = true, .tso4 = true});
//   if (p != OffloadProblem::kNone) { /* count, log OffloadProblemName(p), drop */ }

#ifndef VUNET_NET_PACKET_OFFLOAD_H_
#define VUNET_NET_PACKET_OFFLOAD_H_

#include <cstddef>
#include <cstdint>

#include "net/packet/frame.h"
#include "virtio/virtio_net.h"

namespace vunet::net {

// The offloads a guest negotiated for the frames it sends.
struct GuestOffloads {
  bool csum = false;  // VIRTIO_NET_F_CSUM.
  bool tso4 = false;  // VIRTIO_NET_F_HOST_TSO4.
  bool tso6 = false;  // VIRTIO_NET_F_HOST_TSO6.
  bool ecn = false;   // VIRTIO_NET_F_HOST_ECN.
  bool uso = false;   // VIRTIO_NET_F_HOST_USO.
};

// What is wrong with a header, in the order checked.
enum class OffloadProblem : uint8_t {
  kNone,
  kChecksumNotNegotiated,  // NEEDS_CSUM without VIRTIO_NET_F_CSUM.
  kChecksumOutOfRange,     // csum_start + csum_offset + 2 past the frame.
  kGsoUnknownType,         // Not NONE, TCPV4, TCPV6 or UDP_L4; ECN on another.
  kGsoNotNegotiated,       // The type's feature, or HOST_ECN for the bit.
  kGsoProtocolMismatch,    // The frame is not of the type's protocol.
  kGsoWithoutChecksum,     // Segmentation without NEEDS_CSUM.
  kGsoChecksumField,       // NEEDS_CSUM not at the transport checksum.
  kGsoZeroSize,            // gso_size 0.
  kGsoSizePastPayload,     // gso_size larger than the transport payload.
  kHdrLenPastFrame,        // hdr_len beyond the frame.
  kGsoLengthMismatch,      // The IP (or UDP) length is not the frame's.
};
inline constexpr size_t kOffloadProblemCount = 12;

// A few words, for logs.
const char* OffloadProblemName(OffloadProblem problem);

// Checks `hdr` against `frame` (as ParseFrame accepted it) and what the
// guest negotiated. Reads nothing but the two; allocates nothing.
OffloadProblem CheckGuestOffload(const virtio::VirtioNetHdr& hdr, const ParsedFrame& frame,
                                 const GuestOffloads& negotiated);

// True if `hdr` asks for segmentation (gso_type other than NONE).
inline bool IsGso(const virtio::VirtioNetHdr& hdr) {
  return hdr.gso_type != virtio::kVirtioNetHdrGsoNone;
}

}  // namespace vunet::net

#endif  // VUNET_NET_PACKET_OFFLOAD_H_
