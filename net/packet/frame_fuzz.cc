// Fuzzes ParseFrame. Input: one byte choosing how the frame is cut into
// iovecs (0: one piece; n: pieces of n bytes, so headers straddle), then the
// frame. Whatever the bytes, parsing must end, read nothing outside the
// iovecs, and report offsets inside the frame.

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "net/packet/checksum.h"
#include "net/packet/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vunet::net;
  if (size == 0) return 0;
  const size_t piece = data[0];
  const uint8_t* frame = data + 1;
  const size_t len = size - 1;
  std::vector<iovec> iov;
  if (piece == 0) {
    iov.push_back({const_cast<uint8_t*>(frame), len});
  } else {
    for (size_t at = 0; at < len; at += piece) {
      iov.push_back({const_cast<uint8_t*>(frame) + at, len - at < piece ? len - at : piece});
    }
  }
  ParsedFrame p;
  if (!ParseFrame(iov, &p).ok()) return 0;
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
  return 0;
}
