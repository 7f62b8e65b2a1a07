// Test helpers for frames as byte vectors: splitting into iovecs, parsing
// addresses, building and patching frames. Test-only.

#ifndef VUNET_NET_TEST_FRAMES_H_
#define VUNET_NET_TEST_FRAMES_H_

#include <arpa/inet.h>
#include <sys/uio.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"

namespace vunet::net::testing {

inline in_addr Ip4(const char* s) {
  in_addr a{};
  inet_pton(AF_INET, s, &a);
  return a;
}

inline in6_addr Ip6(const char* s) {
  in6_addr a{};
  inet_pton(AF_INET6, s, &a);
  return a;
}

inline MacAddr Mac(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint8_t e, uint8_t f) {
  return MacAddr{{a, b, c, d, e, f}};
}

// iovecs over `bytes` in pieces of `piece` bytes (the last shorter); one
// piece for 0.
inline std::vector<iovec> Split(std::vector<uint8_t>& bytes, size_t piece = 0) {
  std::vector<iovec> iov;
  if (piece == 0) piece = bytes.size() > 0 ? bytes.size() : 1;
  for (size_t at = 0; at < bytes.size(); at += piece) {
    iov.push_back({bytes.data() + at, std::min(piece, bytes.size() - at)});
  }
  return iov;
}

inline absl::Status Parse(std::vector<uint8_t>& bytes, ParsedFrame* out, size_t piece = 0) {
  const std::vector<iovec> iov = Split(bytes, piece);
  return ParseFrame(iov, out);
}

// A frame built by BuildFrame around `payload`.
inline std::vector<uint8_t> Build(const FrameSpec& spec, const std::vector<uint8_t>& payload) {
  const size_t hlen = FrameHeadersLen(spec);
  std::vector<uint8_t> f(hlen + payload.size());
  if (!payload.empty()) std::memcpy(f.data() + hlen, payload.data(), payload.size());
  (void)BuildFrame(spec, absl::MakeSpan(f), payload.size());
  return f;
}

inline void PutBe16(std::vector<uint8_t>& f, size_t at, uint16_t v) {
  f[at] = static_cast<uint8_t>(v >> 8);
  f[at + 1] = static_cast<uint8_t>(v);
}

inline uint16_t GetBe16(const std::vector<uint8_t>& f, size_t at) {
  return static_cast<uint16_t>(f[at] << 8 | f[at + 1]);
}

// Recomputes the IPv4 header checksum of a frame (IPv4 at offset 14).
inline void FixIpv4Checksum(std::vector<uint8_t>& f) {
  const size_t hlen = static_cast<size_t>(f[14] & 0xf) * 4;
  PutBe16(f, 24, 0);
  PutBe16(f, 24, InternetChecksum(f.data() + 14, std::min(hlen, f.size() - 14)));
}

inline std::vector<uint8_t> Bytes(std::initializer_list<int> list) {
  std::vector<uint8_t> v;
  for (int b : list) v.push_back(static_cast<uint8_t>(b));
  return v;
}

inline void Append(std::vector<uint8_t>& to, const std::vector<uint8_t>& more) {
  to.insert(to.end(), more.begin(), more.end());
}

}  // namespace vunet::net::testing

#endif  // VUNET_NET_TEST_FRAMES_H_
