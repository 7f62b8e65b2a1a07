#include "net/packet/checksum.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace vunet::net {
namespace {

using checksum_internal::HaveAvx2;
using checksum_internal::SumAvx2;
using checksum_internal::SumFast;
using checksum_internal::SumReference;

std::vector<uint8_t> RandomBytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(ChecksumTest, Rfc1071Example) {
  // RFC 1071 section 3: these bytes sum to ddf2, so the checksum is 220d.
  const uint8_t bytes[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
  EXPECT_EQ(ntohs(SumReference(bytes, sizeof(bytes))), 0xddf2);
  EXPECT_EQ(ntohs(SumFast(bytes, sizeof(bytes))), 0xddf2);
  EXPECT_EQ(InternetChecksum(bytes, sizeof(bytes)), 0x220d);
}

TEST(ChecksumTest, Ipv4HeaderVerifiesToZero) {
  uint8_t header[] = {0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
                      0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7};
  const uint16_t check = InternetChecksum(header, sizeof(header));
  EXPECT_EQ(check, 0xb861);
  header[10] = static_cast<uint8_t>(check >> 8);
  header[11] = static_cast<uint8_t>(check);
  EXPECT_EQ(InternetChecksum(header, sizeof(header)), 0);
}

TEST(ChecksumTest, EmptyAndZeroes) {
  EXPECT_EQ(InternetChecksum(nullptr, 0), 0xffff);
  const uint8_t zeroes[3] = {};
  EXPECT_EQ(InternetChecksum(zeroes, sizeof(zeroes)), 0xffff);
  const uint8_t ones[4] = {0xff, 0xff, 0xff, 0xff};
  EXPECT_EQ(InternetChecksum(ones, sizeof(ones)), 0x0000);
}

TEST(ChecksumTest, OddLengthPadsWithZeroAtTheEnd) {
  const uint8_t odd[] = {0x12, 0x34, 0x56};
  EXPECT_EQ(InternetChecksum(odd, sizeof(odd)), static_cast<uint16_t>(~(0x1234 + 0x5600)));
}

// Fast and AVX2 against the reference: random lengths up to 70000 bytes at
// every alignment modulo 64.
TEST(ChecksumTest, ImplementationsAgreeOnRandomBuffers) {
  std::mt19937_64 rng(1);
  const std::vector<uint8_t> data = RandomBytes(rng, 70000 + 64);
  std::uniform_int_distribution<size_t> length(0, 70000);
  for (int i = 0; i < 2000; ++i) {
    const size_t align = static_cast<size_t>(i % 64);
    const size_t len = i < 200 ? static_cast<size_t>(i) : length(rng);
    const uint8_t* p = data.data() + align;
    const uint16_t want = SumReference(p, len);
    ASSERT_EQ(SumFast(p, len), want) << "len " << len << " align " << align;
    if (HaveAvx2()) {
      ASSERT_EQ(SumAvx2(p, len), want) << "len " << len << " align " << align;
    }
    ASSERT_EQ(checksum_internal::SumDispatch(p, len), want);
  }
}

// All-0xff data makes every addition carry: the carry handling is what is
// tested here.
TEST(ChecksumTest, ImplementationsAgreeOnCarryHeavyBuffers) {
  for (uint8_t fill : {0xff, 0xfe, 0x80, 0x01}) {
    const std::vector<uint8_t> data(70000, fill);
    for (size_t len : {0, 1, 2, 7, 8, 31, 32, 63, 64, 65, 127, 1500, 65535, 65536, 70000}) {
      const uint16_t want = SumReference(data.data(), len);
      EXPECT_EQ(SumFast(data.data(), len), want) << len;
      if (HaveAvx2()) {
        EXPECT_EQ(SumAvx2(data.data(), len), want) << len;
      }
    }
  }
}

TEST(ChecksumTest, Avx2IsUsedWhereAvailable) {
  if (!HaveAvx2()) GTEST_SKIP() << "no AVX2 on this CPU";
  const uint8_t b[100] = {1, 2, 3};
  EXPECT_EQ(SumAvx2(b, sizeof(b)), SumReference(b, sizeof(b)));
}

// Random splits of random buffers into iovecs of random (often odd, sometimes
// empty) lengths, and random start offsets into the iovecs.
TEST(ChecksumTest, IovecSplitsMatchContiguous) {
  std::mt19937_64 rng(2);
  for (int i = 0; i < 1000; ++i) {
    const size_t len = std::uniform_int_distribution<size_t>(0, i < 900 ? 2000 : 70000)(rng);
    const std::vector<uint8_t> data = RandomBytes(rng, len);
    std::vector<iovec> iov;
    size_t at = 0;
    while (at < len) {
      size_t piece = std::uniform_int_distribution<size_t>(0, 37)(rng);
      if (rng() % 8 == 0) piece = std::uniform_int_distribution<size_t>(0, 5000)(rng);
      piece = std::min(piece, len - at);
      iov.push_back({const_cast<uint8_t*>(data.data()) + at, piece});
      at += piece;
    }
    const size_t offset = len == 0 ? 0 : std::uniform_int_distribution<size_t>(0, len)(rng);
    const size_t n = len - offset == 0 ? 0 : rng() % (len - offset + 1);
    ASSERT_EQ(InternetChecksum(iov, offset, n),
              static_cast<uint16_t>(~ntohs(SumReference(data.data() + offset, n))))
        << "len " << len << " offset " << offset << " n " << n << " pieces " << iov.size();
  }
}

TEST(ChecksumTest, AccumulatorAcrossOddPieces) {
  const uint8_t bytes[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
  ChecksumAccumulator c;
  c.Add(bytes, 1);
  c.Add(bytes + 1, 3);
  c.Add(bytes + 4, 0);
  c.Add(bytes + 4, 3);
  c.Add(bytes + 7, 1);
  EXPECT_EQ(c.length(), 8u);
  EXPECT_EQ(c.Sum(), 0xddf2);
  EXPECT_EQ(c.Finish(), 0x220d);
}

TEST(ChecksumTest, ShortIovecReportsMissingBytes) {
  uint8_t bytes[4] = {1, 2, 3, 4};
  const iovec iov[] = {{bytes, 4}};
  ChecksumAccumulator c;
  EXPECT_FALSE(c.Add(iov, 2, 4));
  EXPECT_EQ(c.length(), 2u);
  ChecksumAccumulator d;
  EXPECT_TRUE(d.Add(iov, 4, 0));
}

TEST(ChecksumTest, BigEndianValueHelpers) {
  ChecksumAccumulator a;
  a.AddBe16(0x1234);
  a.AddBe32(0x56789abc);
  const uint8_t bytes[] = {0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc};
  EXPECT_EQ(a.Finish(), InternetChecksum(bytes, sizeof(bytes)));
}

// Pseudo-headers against the layouts written out byte by byte.
TEST(ChecksumTest, PseudoHeaderV4) {
  std::mt19937_64 rng(3);
  std::vector<uint8_t> segment = RandomBytes(rng, 301);
  in_addr src, dst;
  inet_pton(AF_INET, "10.0.2.15", &src);
  inet_pton(AF_INET, "93.184.216.34", &dst);
  std::vector<uint8_t> flat(12);
  std::memcpy(&flat[0], &src, 4);
  std::memcpy(&flat[4], &dst, 4);
  flat[8] = 0;
  flat[9] = IPPROTO_UDP;
  flat[10] = static_cast<uint8_t>(segment.size() >> 8);
  flat[11] = static_cast<uint8_t>(segment.size());
  flat.insert(flat.end(), segment.begin(), segment.end());
  const iovec iov[] = {{segment.data(), 100}, {segment.data() + 100, 201}};
  EXPECT_EQ(L4ChecksumV4(src, dst, IPPROTO_UDP, iov, 0, segment.size()),
            InternetChecksum(flat.data(), flat.size()));
}

TEST(ChecksumTest, PseudoHeaderV6AndVerification) {
  std::mt19937_64 rng(4);
  std::vector<uint8_t> segment = RandomBytes(rng, 77);
  segment[2] = segment[3] = 0;  // The checksum field of an ICMPv6 message.
  in6_addr src, dst;
  inet_pton(AF_INET6, "fe80::1", &src);
  inet_pton(AF_INET6, "ff02::1", &dst);
  std::vector<uint8_t> flat(40);
  std::memcpy(&flat[0], &src, 16);
  std::memcpy(&flat[16], &dst, 16);
  flat[34] = 0;
  flat[35] = static_cast<uint8_t>(segment.size());
  flat[39] = IPPROTO_ICMPV6;
  flat.insert(flat.end(), segment.begin(), segment.end());
  const iovec iov[] = {{segment.data(), segment.size()}};
  const uint16_t check = L4ChecksumV6(src, dst, IPPROTO_ICMPV6, iov, 0, segment.size());
  EXPECT_EQ(check, InternetChecksum(flat.data(), flat.size()));
  segment[2] = static_cast<uint8_t>(check >> 8);
  segment[3] = static_cast<uint8_t>(check);
  EXPECT_EQ(L4ChecksumV6(src, dst, IPPROTO_ICMPV6, iov, 0, segment.size()), 0);
}

TEST(ChecksumTest, L4ChecksumV6OfABufferMatchesIovecs) {
  std::mt19937_64 rng(5);
  const std::vector<uint8_t> segment = RandomBytes(rng, 101);
  in6_addr src, dst;
  inet_pton(AF_INET6, "2001:db8::1", &src);
  inet_pton(AF_INET6, "fe80::2", &dst);
  const iovec iov[] = {{const_cast<uint8_t*>(segment.data()), 33},
                       {const_cast<uint8_t*>(segment.data()) + 33, segment.size() - 33}};
  for (size_t len : {size_t{0}, size_t{1}, size_t{8}, size_t{50}, segment.size()}) {
    EXPECT_EQ(L4ChecksumV6(src, dst, IPPROTO_UDP, segment.data(), len),
              L4ChecksumV6(src, dst, IPPROTO_UDP, iov, 0, len))
        << len;
  }
}

}  // namespace
}  // namespace vunet::net
