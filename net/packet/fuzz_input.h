// The input format of the frame and dispatch fuzz targets (//net/packet:
// frame_fuzz, //net/gateway:dispatch_fuzz), and the seeds' (written by
// frame_fuzz_seeds.py and tools/fuzz/pcap_seeds.py):
//
//   byte 0       how the frame is cut into iovecs: 0 one piece, n pieces of
//                n bytes (so that headers straddle entries);
//   byte 1       the offloads the guest negotiated: bit 0 CSUM, 1 HOST_TSO4,
//                2 HOST_TSO6, 3 HOST_ECN, 4 HOST_USO (the rest ignored);
//   bytes 2-11   the virtio-net header as the guest wrote it on the ring:
//                flags, gso_type, then hdr_len, gso_size, csum_start and
//                csum_offset as little-endian u16 (num_buffers is not sent);
//   the rest     the frame.
// Test-only.

#ifndef VUNET_NET_PACKET_FUZZ_INPUT_H_
#define VUNET_NET_PACKET_FUZZ_INPUT_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/types/span.h"
#include "net/packet/offload.h"
#include "virtio/virtio_net.h"

namespace vunet::net {

inline constexpr size_t kFuzzPrefixLen = 12;

struct FuzzFrame {
  size_t piece = 0;
  GuestOffloads offloads;
  virtio::VirtioNetHdr hdr;
  absl::Span<const uint8_t> frame;

  // The frame as iovecs, cut as byte 0 says.
  std::vector<iovec> Cut() const {
    std::vector<iovec> iov;
    uint8_t* base = const_cast<uint8_t*>(frame.data());
    const size_t len = frame.size();
    if (piece == 0) {
      iov.push_back({base, len});
      return iov;
    }
    for (size_t at = 0; at < len; at += piece) {
      iov.push_back({base + at, len - at < piece ? len - at : piece});
    }
    return iov;
  }
};

// nullopt for an input shorter than the prefix.
inline std::optional<FuzzFrame> ParseFuzzFrame(const uint8_t* data, size_t size) {
  if (size < kFuzzPrefixLen) return std::nullopt;
  auto u16 = [data](size_t at) { return static_cast<uint16_t>(data[at] | data[at + 1] << 8); };
  FuzzFrame f;
  f.piece = data[0];
  const uint8_t o = data[1];
  f.offloads = GuestOffloads{.csum = (o & 1) != 0,
                             .tso4 = (o & 2) != 0,
                             .tso6 = (o & 4) != 0,
                             .ecn = (o & 8) != 0,
                             .uso = (o & 16) != 0};
  f.hdr.flags = data[2];
  f.hdr.gso_type = data[3];
  f.hdr.hdr_len = u16(4);
  f.hdr.gso_size = u16(6);
  f.hdr.csum_start = u16(8);
  f.hdr.csum_offset = u16(10);
  f.frame = absl::MakeConstSpan(data + kFuzzPrefixLen, size - kFuzzPrefixLen);
  return f;
}

}  // namespace vunet::net

#endif  // VUNET_NET_PACKET_FUZZ_INPUT_H_
