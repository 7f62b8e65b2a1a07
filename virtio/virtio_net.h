// The virtio-net device's own definitions (virtio 1.x, section 5.1): feature
// bits and the header that precedes every frame on its queues. Both sides use
// them: the backend's data path and the test frontends.

#ifndef VUNET_VIRTIO_VIRTIO_NET_H_
#define VUNET_VIRTIO_VIRTIO_NET_H_

#include <cstddef>
#include <cstdint>

#include "virtio/virtqueue.h"

namespace vunet::virtio {

// Feature bits.
inline constexpr unsigned kVirtioNetFCsum = 0;
inline constexpr unsigned kVirtioNetFGuestCsum = 1;
inline constexpr unsigned kVirtioNetFMtu = 3;
inline constexpr unsigned kVirtioNetFMac = 5;
inline constexpr unsigned kVirtioNetFGuestTso4 = 7;
inline constexpr unsigned kVirtioNetFGuestTso6 = 8;
inline constexpr unsigned kVirtioNetFGuestEcn = 9;
inline constexpr unsigned kVirtioNetFGuestUfo = 10;
inline constexpr unsigned kVirtioNetFHostTso4 = 11;
inline constexpr unsigned kVirtioNetFHostTso6 = 12;
inline constexpr unsigned kVirtioNetFHostEcn = 13;
inline constexpr unsigned kVirtioNetFHostUfo = 14;
inline constexpr unsigned kVirtioNetFMrgRxbuf = 15;
inline constexpr unsigned kVirtioNetFStatus = 16;
inline constexpr unsigned kVirtioNetFMq = 22;
inline constexpr unsigned kVirtioNetFGuestUso4 = 54;
inline constexpr unsigned kVirtioNetFGuestUso6 = 55;
inline constexpr unsigned kVirtioNetFHostUso = 56;

// Queue indices of the first queue pair.
inline constexpr uint32_t kVirtioNetRxQueue = 0;
inline constexpr uint32_t kVirtioNetTxQueue = 1;

// struct virtio_net_hdr_v1. num_buffers exists with VIRTIO_F_VERSION_1 or
// VIRTIO_NET_F_MRG_RXBUF; without either the header is the first 10 bytes.
struct VirtioNetHdr {
  uint8_t flags = 0;
  uint8_t gso_type = 0;
  uint16_t hdr_len = 0;
  uint16_t gso_size = 0;
  uint16_t csum_start = 0;
  uint16_t csum_offset = 0;
  uint16_t num_buffers = 0;
};
static_assert(sizeof(VirtioNetHdr) == 12);

inline constexpr uint8_t kVirtioNetHdrFNeedsCsum = 1;
inline constexpr uint8_t kVirtioNetHdrFDataValid = 2;
// gso_type: the segmentation a frame asks for, and the ECN bit a TCP type
// may carry (the frame's first segment has CWR set, the others must not).
inline constexpr uint8_t kVirtioNetHdrGsoNone = 0;
inline constexpr uint8_t kVirtioNetHdrGsoTcpv4 = 1;
inline constexpr uint8_t kVirtioNetHdrGsoUdp = 3;  // UFO: IP fragmentation, never offered here.
inline constexpr uint8_t kVirtioNetHdrGsoTcpv6 = 4;
inline constexpr uint8_t kVirtioNetHdrGsoUdpL4 = 5;  // USO: UDP datagrams of gso_size.
inline constexpr uint8_t kVirtioNetHdrGsoEcn = 0x80;

// The header's size on the rings for the negotiated `features`.
constexpr size_t VirtioNetHdrSize(uint64_t features) {
  return (features & ((1ull << kVirtioFVersion1) | (1ull << kVirtioNetFMrgRxbuf)))
             ? sizeof(VirtioNetHdr)
             : sizeof(VirtioNetHdr) - sizeof(uint16_t);
}

}  // namespace vunet::virtio

#endif  // VUNET_VIRTIO_VIRTIO_NET_H_
