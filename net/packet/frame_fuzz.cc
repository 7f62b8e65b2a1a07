// Fuzzes ParseFrame and, on what it accepts, CheckGuestOffload. Input
// (net/packet/fuzz_input.h): a byte choosing how the frame is cut into iovecs
// (0: one piece; n: pieces of n bytes, so headers straddle), a byte of
// negotiated offloads, the virtio-net header as the guest wrote it, then the
// frame. Whatever the bytes, parsing must end, read nothing outside the
// iovecs and report offsets inside the frame, and a header the check passes
// must ask only for what the frame can be.

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/packet/fuzz_input.h"
#include "net/packet/offload.h"

namespace {

using namespace vunet::net;  // NOLINT(build/namespaces): a fuzz target's own file.

void CheckParsed(const ParsedFrame& p, size_t len, absl::Span<const iovec> iov) {
  if (p.frame_len != len || p.frame_len > kMaxFrameLen) __builtin_trap();
  if (p.payload_offset > len || p.payload_len > len - p.payload_offset) __builtin_trap();
  if (p.l3 == L3Kind::kIpv4 || p.l3 == L3Kind::kIpv6) {
    if (p.l3_offset + p.l3_len > len) __builtin_trap();
    if (p.l4_offset < p.l3_offset || p.l4_offset + p.l4_len != p.l3_offset + p.l3_len) {
      __builtin_trap();
    }
    if (p.payload_offset < p.l4_offset ||
        p.payload_offset + p.payload_len > p.l4_offset + p.l4_len) {
      __builtin_trap();
    }
    if (p.l4 == L4Kind::kTcp) {
      if (p.tcp.header_len < kTcpMinHeaderLen || p.tcp.header_len > p.l4_len) __builtin_trap();
      (void)L4ChecksumV4(p.ip.src4, p.ip.dst4, p.ip.protocol, iov, p.l4_offset, p.l4_len);
    }
  }
  if (p.l3 == L3Kind::kArp && p.l3_offset + kArpLen > len) __builtin_trap();
}

// What a header that passed promises (net/packet/offload.h).
void CheckPassed(const vunet::virtio::VirtioNetHdr& hdr, const ParsedFrame& p,
                 const GuestOffloads& negotiated) {
  const bool partial = hdr.flags & vunet::virtio::kVirtioNetHdrFNeedsCsum;
  if (partial && (!negotiated.csum || size_t{hdr.csum_start} + hdr.csum_offset + 2 > p.frame_len)) {
    __builtin_trap();
  }
  if (!IsGso(hdr)) return;
  const uint8_t type = hdr.gso_type & 0x7f;
  const bool tcp =
      type == vunet::virtio::kVirtioNetHdrGsoTcpv4 || type == vunet::virtio::kVirtioNetHdrGsoTcpv6;
  if (tcp ? p.l4 != L4Kind::kTcp : p.l4 != L4Kind::kUdp) __builtin_trap();
  if ((hdr.gso_type & 0x80) && (!tcp || !negotiated.ecn)) __builtin_trap();
  if (!partial || hdr.csum_start != p.l4_offset) __builtin_trap();
  if (hdr.gso_size == 0 || hdr.gso_size > p.payload_len || hdr.hdr_len > p.frame_len) {
    __builtin_trap();
  }
  if (p.l3_offset + p.l3_len != p.frame_len) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::optional<FuzzFrame> in = ParseFuzzFrame(data, size);
  if (!in.has_value()) return 0;
  const std::vector<iovec> iov = in->Cut();
  ParsedFrame p;
  if (!ParseFrame(iov, &p).ok()) return 0;
  CheckParsed(p, in->frame.size(), iov);
  if (CheckGuestOffload(in->hdr, p, in->offloads) == OffloadProblem::kNone) {
    CheckPassed(in->hdr, p, in->offloads);
  }
  return 0;
}
