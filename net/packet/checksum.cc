#include "net/packet/checksum.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace vunet::net {
namespace checksum_internal {
namespace {

// Folds a ones' complement sum of native-order words to 16 bits. Since
// 2^16 - 1 divides 2^32 - 1 and 2^64 - 1, adding the halves of a wider sum
// keeps its value modulo 2^16 - 1, which is all the checksum depends on.
uint16_t Fold(uint64_t s) {
  s = (s & 0xffffffff) + (s >> 32);
  s = (s & 0xffffffff) + (s >> 32);
  s = (s & 0xffff) + (s >> 16);
  s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(s);
}

uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

uint64_t AddOnes64(uint64_t a, uint64_t b) {
  const uint64_t s = a + b;
  return s + (s < a ? 1 : 0);
}

// The ones' complement sum of 64-bit native words (the tail zero-padded), as a
// 64-bit ones' complement value: each word is added with the carry out of the
// previous addition, and the last carry comes back in at bit 0 (2^64 is 1
// modulo 2^64 - 1).
#if defined(__x86_64__)
// One add-with-carry chain of eight words per 64 bytes. Inline assembly,
// because gcc keeps _addcarry_u64's output in memory and so puts a
// store-to-load delay on every link of the chain. The two closing adcs fold
// the carry back in: the first can itself carry out only when the sum is all
// ones, and then the second adds that carry to zero.
uint64_t Sum64(const uint8_t* p, size_t len) {
  uint64_t s = 0;
  while (len >= 64) {
    asm("addq 0(%[p]), %[s]\n\t"
        "adcq 8(%[p]), %[s]\n\t"
        "adcq 16(%[p]), %[s]\n\t"
        "adcq 24(%[p]), %[s]\n\t"
        "adcq 32(%[p]), %[s]\n\t"
        "adcq 40(%[p]), %[s]\n\t"
        "adcq 48(%[p]), %[s]\n\t"
        "adcq 56(%[p]), %[s]\n\t"
        "adcq $0, %[s]\n\t"
        "adcq $0, %[s]"
        : [s] "+r"(s)
        : [p] "r"(p), "m"(*reinterpret_cast<const uint8_t(*)[64]>(p))
        : "cc");
    p += 64;
    len -= 64;
  }
  while (len >= 8) {
    s = AddOnes64(s, Load64(p));
    p += 8;
    len -= 8;
  }
  if (len > 0) {
    uint64_t tail = 0;  // Zero padding at the higher addresses.
    std::memcpy(&tail, p, len);
    s = AddOnes64(s, tail);
  }
  return s;
}
#else
// Portable: 128-bit accumulators keep the carries in their high halves.
uint64_t Sum64(const uint8_t* p, size_t len) {
  unsigned __int128 a0 = 0, a1 = 0;
  while (len >= 16) {
    a0 += Load64(p);
    a1 += Load64(p + 8);
    p += 16;
    len -= 16;
  }
  if (len >= 8) {
    a0 += Load64(p);
    p += 8;
    len -= 8;
  }
  if (len > 0) {
    uint64_t tail = 0;  // Zero padding at the higher addresses, in any byte order.
    std::memcpy(&tail, p, len);
    a0 += tail;
  }
  // At most len/8 additions each: neither the sum nor the carry count overflows.
  const unsigned __int128 t = a0 + a1;
  return AddOnes64(static_cast<uint64_t>(t), static_cast<uint64_t>(t >> 64));
}
#endif

}  // namespace

uint16_t SumReference(const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t sum = 0;
  size_t i = 0;
  for (; i + 1 < len; i += 2) sum += static_cast<uint64_t>(p[i] << 8 | p[i + 1]);
  if (i < len) sum += static_cast<uint64_t>(p[i]) << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return htons(static_cast<uint16_t>(sum));
}

uint16_t SumFast(const void* data, size_t len) {
  return Fold(Sum64(static_cast<const uint8_t*>(data), len));
}

#if defined(__x86_64__)

bool HaveAvx2() {
  static const bool have = __builtin_cpu_supports("avx2");
  return have;
}

namespace {

// 32-bit native words zero-extended into 64-bit lanes: a lane gains less than
// 2^32 per 64 bytes, so blocks of at most 2^30 bytes keep the four lanes of
// the four accumulators summable in 64 bits. (A 32-bit word is two 16-bit
// words at the same parity, so its sum folds to the same checksum.)
__attribute__((target("avx2"))) uint64_t Sum64Avx2Block(const uint8_t* p, size_t len) {
  const __m256i low32 = _mm256_set1_epi64x(0xffffffff);
  __m256i a0 = _mm256_setzero_si256();
  __m256i a1 = _mm256_setzero_si256();
  __m256i a2 = _mm256_setzero_si256();
  __m256i a3 = _mm256_setzero_si256();
  while (len >= 64) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    a0 = _mm256_add_epi64(a0, _mm256_and_si256(x, low32));
    a1 = _mm256_add_epi64(a1, _mm256_srli_epi64(x, 32));
    a2 = _mm256_add_epi64(a2, _mm256_and_si256(y, low32));
    a3 = _mm256_add_epi64(a3, _mm256_srli_epi64(y, 32));
    p += 64;
    len -= 64;
  }
  const __m256i t = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), t);
  const uint64_t vector_sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  // The tail starts at a multiple of 64 bytes, so at the same parity.
  return AddOnes64(vector_sum, Sum64(p, len));
}

}  // namespace

uint16_t SumAvx2(const void* data, size_t len) {
  constexpr size_t kBlock = size_t{1} << 30;
  const auto* p = static_cast<const uint8_t*>(data);
  // Below two vector iterations the set-up and the lane reduction cost more
  // than they save.
  if (len < 128) return Fold(Sum64(p, len));
  uint64_t s = 0;
  while (len > kBlock) {
    s = AddOnes64(s, Sum64Avx2Block(p, kBlock));
    p += kBlock;
    len -= kBlock;
  }
  return Fold(AddOnes64(s, Sum64Avx2Block(p, len)));
}

#else

bool HaveAvx2() { return false; }
uint16_t SumAvx2(const void* data, size_t len) { return SumFast(data, len); }

#endif

uint16_t SumDispatch(const void* data, size_t len) {
  using SumFn = uint16_t (*)(const void*, size_t);
  static const SumFn fn = HaveAvx2() ? &SumAvx2 : &SumFast;
  return fn(data, len);
}

}  // namespace checksum_internal

void ChecksumAccumulator::Add(const void* data, size_t len) {
  uint16_t s = checksum_internal::SumDispatch(data, len);
  // A piece that starts at an odd offset of the sequence has its bytes in the
  // other halves of the words: its sum counts byte-swapped (RFC 1071 2(B)).
  if (length_ & 1) s = static_cast<uint16_t>(s << 8 | s >> 8);
  sum_ += s;  // At most 0xffff per call: 2^48 calls before this could wrap.
  length_ += len;
}

bool ChecksumAccumulator::Add(absl::Span<const iovec> iov, size_t offset, size_t len) {
  size_t done = 0;
  for (const iovec& v : iov) {
    if (done == len) break;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    const size_t chunk = std::min(v.iov_len - offset, len - done);
    Add(static_cast<const uint8_t*>(v.iov_base) + offset, chunk);
    done += chunk;
    offset = 0;
  }
  return done == len;
}

void ChecksumAccumulator::AddBe16(uint16_t value) {
  const uint8_t b[2] = {static_cast<uint8_t>(value >> 8), static_cast<uint8_t>(value)};
  Add(b, sizeof(b));
}

void ChecksumAccumulator::AddBe32(uint32_t value) {
  const uint8_t b[4] = {static_cast<uint8_t>(value >> 24), static_cast<uint8_t>(value >> 16),
                        static_cast<uint8_t>(value >> 8), static_cast<uint8_t>(value)};
  Add(b, sizeof(b));
}

uint16_t ChecksumAccumulator::Sum() const {
  uint64_t s = sum_;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return ntohs(static_cast<uint16_t>(s));
}

uint16_t InternetChecksum(const void* data, size_t len) {
  ChecksumAccumulator c;
  c.Add(data, len);
  return c.Finish();
}

uint16_t InternetChecksum(absl::Span<const iovec> iov, size_t offset, size_t len) {
  ChecksumAccumulator c;
  c.Add(iov, offset, len);
  return c.Finish();
}

ChecksumAccumulator PseudoHeaderV4(const in_addr& src, const in_addr& dst, uint8_t protocol,
                                   uint16_t l4_len) {
  ChecksumAccumulator c;
  c.Add(&src, sizeof(src));
  c.Add(&dst, sizeof(dst));
  c.AddBe16(protocol);  // A zero byte, then the protocol.
  c.AddBe16(l4_len);
  return c;
}

ChecksumAccumulator PseudoHeaderV6(const in6_addr& src, const in6_addr& dst, uint8_t next_header,
                                   uint32_t l4_len) {
  ChecksumAccumulator c;
  c.Add(&src, sizeof(src));
  c.Add(&dst, sizeof(dst));
  c.AddBe32(l4_len);
  c.AddBe32(next_header);  // Three zero bytes, then the next header.
  return c;
}

uint16_t L4ChecksumV4(const in_addr& src, const in_addr& dst, uint8_t protocol,
                      absl::Span<const iovec> iov, size_t offset, size_t len) {
  ChecksumAccumulator c = PseudoHeaderV4(src, dst, protocol, static_cast<uint16_t>(len));
  c.Add(iov, offset, len);
  return c.Finish();
}

uint16_t L4ChecksumV6(const in6_addr& src, const in6_addr& dst, uint8_t next_header,
                      absl::Span<const iovec> iov, size_t offset, size_t len) {
  ChecksumAccumulator c = PseudoHeaderV6(src, dst, next_header, static_cast<uint32_t>(len));
  c.Add(iov, offset, len);
  return c.Finish();
}

uint16_t L4ChecksumV6(const in6_addr& src, const in6_addr& dst, uint8_t next_header,
                      const void* data, size_t len) {
  ChecksumAccumulator c = PseudoHeaderV6(src, dst, next_header, static_cast<uint32_t>(len));
  c.Add(data, len);
  return c.Finish();
}

}  // namespace vunet::net
