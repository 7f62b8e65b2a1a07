// The virtio-net header's offload fields as a driver sees them (virtio 1.x,
// section 5.1.6): the feature bits they depend on and what each direction
// may carry under the negotiated ones, where a frame's transport header is,
// the header a driver sends a frame with, and the tap flags (TUNSETOFFLOAD)
// that let a Linux stack behind a tap use exactly the negotiated offloads.
//
// The frontend side trusts nothing a backend writes: CheckHeader says what is
// wrong with a header read back, against the frame it came with, without
// allocating, so a data path can count and drop.
//
// Example:
//   std::optional<VirtioNetHdr> h = OffloadHeader(frame, /*gso_size=*/1448);
//   ... frontend->SendFramesWithHeaders({{.header = *h, .data = frame}}) ...
//   HeaderProblem p = CheckHeader(received.header, received.data,
//                                 frontend->features(), Direction::kToGuest);
//   if (p != HeaderProblem::kNone) ADD_FAILURE() << HeaderProblemName(p);

#ifndef VUNET_TOOLS_VU_FRONTEND_NET_HEADER_H_
#define VUNET_TOOLS_VU_FRONTEND_NET_HEADER_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/types/span.h"
#include "virtio/virtio_net.h"

namespace vunet::vu_frontend {

constexpr uint64_t Bit(unsigned bit) { return uint64_t{1} << bit; }

using virtio::VirtioNetHdr;

// virtio-net feature bits (virtio 1.x, 5.1.3) of virtio/virtio_net.h.
using virtio::kVirtioNetFCsum;
using virtio::kVirtioNetFGuestCsum;
using virtio::kVirtioNetFGuestEcn;
using virtio::kVirtioNetFGuestTso4;
using virtio::kVirtioNetFGuestTso6;
using virtio::kVirtioNetFGuestUfo;
using virtio::kVirtioNetFGuestUso4;
using virtio::kVirtioNetFGuestUso6;
using virtio::kVirtioNetFHostEcn;
using virtio::kVirtioNetFHostTso4;
using virtio::kVirtioNetFHostTso6;
using virtio::kVirtioNetFHostUfo;
using virtio::kVirtioNetFHostUso;

// gso_type values, and the ECN bit that may be or'ed into a TCP one.
inline constexpr uint8_t kGsoNone = virtio::kVirtioNetHdrGsoNone;
inline constexpr uint8_t kGsoTcpv4 = virtio::kVirtioNetHdrGsoTcpv4;
inline constexpr uint8_t kGsoUdp = virtio::kVirtioNetHdrGsoUdp;  // UFO: never negotiated here.
inline constexpr uint8_t kGsoTcpv6 = virtio::kVirtioNetHdrGsoTcpv6;
inline constexpr uint8_t kGsoUdpL4 = virtio::kVirtioNetHdrGsoUdpL4;
inline constexpr uint8_t kGsoEcn = virtio::kVirtioNetHdrGsoEcn;

// Segmentation offloads of frames to the guest (the device may send them)
// and from it (the device takes them).
inline constexpr uint64_t kGuestGsoFeatures = Bit(kVirtioNetFGuestTso4) |
                                              Bit(kVirtioNetFGuestTso6) | Bit(kVirtioNetFGuestEcn) |
                                              Bit(kVirtioNetFGuestUso4) | Bit(kVirtioNetFGuestUso6);
inline constexpr uint64_t kHostGsoFeatures = Bit(kVirtioNetFHostTso4) | Bit(kVirtioNetFHostTso6) |
                                             Bit(kVirtioNetFHostEcn) | Bit(kVirtioNetFHostUso);
inline constexpr uint64_t kGsoFeatures = kGuestGsoFeatures | kHostGsoFeatures;

// `features` without those whose prerequisites (virtio 1.x, 5.1.3.1) are
// missing: GUEST_TSO4/6 and GUEST_USO4/6 need GUEST_CSUM, GUEST_ECN needs
// GUEST_TSO4 or 6; HOST_TSO4/6 and HOST_USO need CSUM, HOST_ECN needs
// HOST_TSO4 or 6 (likewise GUEST_UFO and HOST_UFO). A driver must not
// accept a feature without what it depends on.
uint64_t WithPrerequisites(uint64_t features);

// What a frame is, from its headers (copied out, never pointed into).
// Ethernet II without VLAN tags; IPv4 (not fragmented) or IPv6 without
// extension headers for the transport fields.
struct FrameInfo {
  uint16_t ether_type = 0;  // 0 if the frame is shorter than 14 bytes.
  uint8_t ip_version = 0;   // 4 or 6; 0 if not IP or the IP header is bad.
  uint8_t protocol = 0;     // IPv4's protocol, IPv6's first next header.
  bool fragment = false;    // IPv4 MF or fragment offset.
  // Where the TCP or UDP header starts and how long it is (TCP: data offset
  // times 4; UDP: 8); both 0 unless the whole header is in the frame.
  uint16_t l4_offset = 0;
  uint16_t l4_header_size = 0;
  uint8_t tcp_flags = 0;
  // Transport payload bytes, by the IP length (Ethernet padding excluded),
  // bounded by the frame.
  uint32_t payload_size = 0;

  bool is_tcp() const { return l4_header_size != 0 && protocol == 6; }
  bool is_udp() const { return l4_header_size != 0 && protocol == 17; }
};
FrameInfo ClassifyFrame(absl::Span<const uint8_t> frame);

// The header a driver sends `frame` with: a partial checksum (NEEDS_CSUM,
// csum_start at the TCP or UDP header, csum_offset at its checksum field)
// and, if `gso_size` is not 0 and the payload is larger, segmentation:
// gso_type TCPV4, TCPV6 or UDP_L4 by the frame's protocol (with the ECN bit
// when `ecn`), gso_size, and hdr_len the headers' length. The frame itself
// is not changed: the checksum field should already hold the pseudo-header
// sum, as a stack that leaves the checksum partial writes it. `ecn` is for
// TCP only (ignored when the frame is not segmented). nullopt for a frame
// that is not TCP or UDP over IPv4 or IPv6 (see FrameInfo), or `ecn` on UDP.
std::optional<VirtioNetHdr> OffloadHeader(absl::Span<const uint8_t> frame, uint16_t gso_size,
                                          bool ecn = false);

enum class Direction : uint8_t {
  kToBackend,  // Transmitted: the driver wrote the header (HOST_* and CSUM).
  kToGuest,    // Received: the device wrote it (GUEST_* and GUEST_CSUM).
};

// What is wrong with a header for the frame it precedes, in the first
// failing order of the list.
enum class HeaderProblem : uint8_t {
  kNone,
  kUnknownFlags,           // Flags other than NEEDS_CSUM and DATA_VALID.
  kDataValidToBackend,     // DATA_VALID is the device's to set.
  kChecksumNotNegotiated,  // NEEDS_CSUM or DATA_VALID without (GUEST_)CSUM.
  kChecksumOutOfRange,     // csum_start + csum_offset + 2 past the frame.
  kGsoUnknownType,         // Not NONE, TCPV4, TCPV6 or UDP_L4; ECN on NONE.
  kGsoNotNegotiated,       // The type's feature is not negotiated.
  kEcnNotNegotiated,       // The ECN bit without (HOST|GUEST)_ECN, or on UDP.
  kGsoProtocolMismatch,    // TCPV4 on a frame that is not IPv4 TCP, etc.
  kGsoZeroSize,            // gso_size 0.
  kGsoWithoutChecksum,     // Segmentation without a checksum state.
  kHdrLenPastFrame,        // hdr_len beyond the frame.
};
const char* HeaderProblemName(HeaderProblem problem);

// Checks `header` for `frame` travelling in `direction` under the negotiated
// `features`. For segmentation: the type's feature (TCPV4: HOST_TSO4 or
// GUEST_TSO4; TCPV6: ..._TSO6; UDP_L4: HOST_USO, or GUEST_USO4 or
// GUEST_USO6 by the frame's IP version), the frame's protocol, a non-zero
// gso_size, NEEDS_CSUM (or, to the guest, DATA_VALID), hdr_len within the
// frame. gso_size, hdr_len and num_buffers are not looked at without it.
HeaderProblem CheckHeader(const VirtioNetHdr& header, absl::Span<const uint8_t> frame,
                          uint64_t features, Direction direction);

// TUNSETOFFLOAD flags (linux/if_tun.h; USO4/6 since Linux 6.2, which
// Debian 12's headers predate).
inline constexpr unsigned kTunFCsum = 0x01;
inline constexpr unsigned kTunFTso4 = 0x02;
inline constexpr unsigned kTunFTso6 = 0x04;
inline constexpr unsigned kTunFTsoEcn = 0x08;
inline constexpr unsigned kTunFUso4 = 0x20;
inline constexpr unsigned kTunFUso6 = 0x40;

// The offloads a tap in front of a driver with negotiated `features` may
// use. The flags tell the kernel what it may hand to the tap's reader, which
// are the frames the driver transmits: TUN_F_CSUM with CSUM, TUN_F_TSO4/6
// with HOST_TSO4/6, TUN_F_TSO_ECN with HOST_ECN, TUN_F_USO4|USO6 with
// HOST_USO (the kernel takes the two only together); none without CSUM.
// What the device sends (GUEST_*) needs no flag: a tap accepts segmentation
// and partial checksums written to it with a virtio-net header.
unsigned TunOffloadFlags(uint64_t features);
// "CSUM|TSO4|..." or "none".
std::string TunOffloadNames(unsigned flags);

}  // namespace vunet::vu_frontend

#endif  // VUNET_TOOLS_VU_FRONTEND_NET_HEADER_H_
