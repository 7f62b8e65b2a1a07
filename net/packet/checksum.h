// The Internet checksum (RFC 1071): the 16-bit ones' complement of the ones'
// complement sum of a byte sequence taken as big-endian 16-bit words, with a
// zero byte appended to an odd-length sequence.
//
// Results are host-order numbers (what ntohs() of the wire field gives), so a
// writer stores them big-endian like any other field. A frame in guest memory
// spans several buffers whose lengths may be odd; ChecksumAccumulator keeps
// track of where in the sequence each piece starts, so a piece starting at an
// odd offset counts with its bytes in the right halves of the words.
//
//   ChecksumAccumulator c = PseudoHeaderV4(src, dst, IPPROTO_UDP, udp_len);
//   c.Add(&udp_header, sizeof(udp_header));  // Checksum field zero.
//   c.Add(payload_iov, 0, payload_len);
//   udp_header.check = htons(c.Finish());
//
// Summing is dispatched once, at first use, to an AVX2 version where the CPU
// has it and to a 64-bit-wide portable version otherwise. None allocates.

#ifndef VUNET_NET_CHECKSUM_H_
#define VUNET_NET_CHECKSUM_H_

#include <netinet/in.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"

namespace vunet::net {

// A running ones' complement sum over a sequence given in pieces.
class ChecksumAccumulator {
 public:
  ChecksumAccumulator() = default;

  // Appends `len` bytes.
  void Add(const void* data, size_t len);

  // Appends `len` bytes of the iovecs starting `offset` bytes in. Returns
  // false (having added what exists) if the iovecs hold fewer.
  bool Add(absl::Span<const iovec> iov, size_t offset, size_t len);

  // Appends a 16- or 32-bit value as its big-endian bytes.
  void AddBe16(uint16_t value);
  void AddBe32(uint32_t value);

  // Bytes appended so far.
  uint64_t length() const { return length_; }

  // The folded sum, not complemented (host order).
  uint16_t Sum() const;

  // The checksum: ~Sum(). Over a sequence that includes a correct checksum
  // field this is 0.
  uint16_t Finish() const { return static_cast<uint16_t>(~Sum()); }

 private:
  uint64_t sum_ = 0;  // Native-order words; never near overflow (see .cc).
  uint64_t length_ = 0;
};

// The checksum of one contiguous buffer.
uint16_t InternetChecksum(const void* data, size_t len);

// The checksum of `len` bytes of the iovecs from `offset` (short iovecs count
// as what exists).
uint16_t InternetChecksum(absl::Span<const iovec> iov, size_t offset, size_t len);

// Accumulators primed with the pseudo-header of an upper-layer checksum:
// RFC 793/768 for IPv4 (source, destination, zero, protocol, upper-layer
// length) and RFC 8200 8.1 for IPv6 (source, destination, 32-bit upper-layer
// length, three zero bytes, next header). Used for TCP, UDP and ICMPv6; ICMP
// over IPv4 has no pseudo-header. Addresses are in network order as in
// in_addr/in6_addr.
ChecksumAccumulator PseudoHeaderV4(const in_addr& src, const in_addr& dst, uint8_t protocol,
                                   uint16_t l4_len);
ChecksumAccumulator PseudoHeaderV6(const in6_addr& src, const in6_addr& dst, uint8_t next_header,
                                   uint32_t l4_len);

// The upper-layer checksum of the segment at iov[offset, offset + len) behind
// its pseudo-header. With the segment's checksum field zero this is the value
// to write; with the field as received it is 0 when the field is correct. (A
// UDP writer turns a computed 0 into 0xffff: RFC 768.)
uint16_t L4ChecksumV4(const in_addr& src, const in_addr& dst, uint8_t protocol,
                      absl::Span<const iovec> iov, size_t offset, size_t len);
uint16_t L4ChecksumV6(const in6_addr& src, const in6_addr& dst, uint8_t next_header,
                      absl::Span<const iovec> iov, size_t offset, size_t len);
// The same over a segment in one contiguous buffer (a local copy).
uint16_t L4ChecksumV6(const in6_addr& src, const in6_addr& dst, uint8_t next_header,
                      const void* data, size_t len);

namespace checksum_internal {

// The sum of a buffer as native-order 16-bit words (zero-padded at the end),
// folded to 16 bits and not complemented: stored to memory as is, its bytes are
// the big-endian sum. Every implementation gives the same result for the same
// bytes; exposed for tests and the benchmark.
uint16_t SumReference(const void* data, size_t len);  // Byte at a time, the RFC's definition.
uint16_t SumFast(const void* data, size_t len);       // 64-bit words with carries.
uint16_t SumAvx2(const void* data, size_t len);       // Only if HaveAvx2().
bool HaveAvx2();
// The implementation the public functions use.
uint16_t SumDispatch(const void* data, size_t len);

}  // namespace checksum_internal

}  // namespace vunet::net

#endif  // VUNET_NET_CHECKSUM_H_
