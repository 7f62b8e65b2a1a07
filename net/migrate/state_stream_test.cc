#include "net/migrate/state_stream.h"

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace vunet::net {
namespace {

absl::Span<const uint8_t> AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string TwoRecords() {
  StateWriter w;
  size_t r = w.Begin(RecordType::kUdpFlow);
  w.U8(7);
  w.U16(0x1234);
  w.U32(0xdeadbeef);
  w.U64(0x0102030405060708);
  w.End(r);
  r = w.Begin(RecordType::kIcmpFlow, kRecordOptional);
  const uint8_t blob[] = {1, 2, 3};
  w.Blob(blob);
  w.End(r);
  return w.Finish();
}

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 B.4: 32 bytes of zeros, and "123456789".
  const std::vector<uint8_t> zeros(32, 0);
  EXPECT_EQ(Crc32c(zeros), 0x8a9136aau);
  const std::string digits = "123456789";
  EXPECT_EQ(Crc32c(AsBytes(digits)), 0xe3069283u);
  // Continuing equals one pass.
  EXPECT_EQ(Crc32c(AsBytes(digits).subspan(4), Crc32c(AsBytes(digits).first(4))), 0xe3069283u);
}

TEST(StateStreamTest, RoundTrip) {
  const std::string stream = TwoRecords();
  std::vector<std::string> seen;
  ASSERT_TRUE(ForEachRecord(AsBytes(stream), [&](const RecordHeader& h, StateReader& r) {
                if (h.type == static_cast<uint16_t>(RecordType::kUdpFlow)) {
                  EXPECT_EQ(h.flags, 0);
                  EXPECT_EQ(h.length, 15u);
                  EXPECT_EQ(r.U8(), 7);
                  EXPECT_EQ(r.U16(), 0x1234);
                  EXPECT_EQ(r.U32(), 0xdeadbeefu);
                  EXPECT_EQ(r.U64(), 0x0102030405060708u);
                } else {
                  EXPECT_EQ(h.flags, kRecordOptional);
                  absl::Span<const uint8_t> b = r.Blob(16);
                  EXPECT_EQ(b.size(), 3u);
                }
                seen.push_back(std::to_string(h.index) + ":" + std::to_string(h.type));
                return r.Done();
              }).ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"0:4", "1:5"}));
}

TEST(StateStreamTest, EmptyStreamHasOnlyHeaderAndEnd) {
  StateWriter w;
  const std::string stream = w.Finish();
  EXPECT_EQ(stream.size(), kStateHeaderLen + kRecordHeaderLen + 8);
  int calls = 0;
  EXPECT_TRUE(ForEachRecord(AsBytes(stream), [&](const RecordHeader&, StateReader&) {
                ++calls;
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(calls, 0);
}

TEST(StateStreamTest, EveryTruncationAndEveryBitFlipIsRefusedBeforeAnyRecord) {
  const std::string stream = TwoRecords();
  auto calls_for = [](const std::string& s, absl::Status* status) {
    int calls = 0;
    *status = ForEachRecord(AsBytes(s), [&](const RecordHeader&, StateReader& r) {
      ++calls;
      (void)r.Bytes(r.remaining());
      return r.Done();
    });
    return calls;
  };
  for (size_t len = 0; len < stream.size(); ++len) {
    absl::Status s;
    EXPECT_EQ(calls_for(stream.substr(0, len), &s), 0) << len;
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << len;
  }
  for (size_t bit = 0; bit < stream.size() * 8; ++bit) {
    std::string bad = stream;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
    absl::Status s;
    EXPECT_EQ(calls_for(bad, &s), 0) << "bit " << bit;
    EXPECT_FALSE(s.ok()) << "bit " << bit;
  }
  // Bytes after the end record.
  absl::Status s;
  EXPECT_EQ(calls_for(stream + "x", &s), 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
}

TEST(StateStreamTest, OtherVersionsAndFlagsAreRefused) {
  std::string stream = TwoRecords();
  stream[8] = 2;
  absl::Status s = ForEachRecord(
      AsBytes(stream), [](const RecordHeader&, StateReader&) { return absl::OkStatus(); });
  EXPECT_NE(s.message().find("version 2"), std::string::npos) << s;
}

TEST(StateStreamTest, ARecordsErrorStopsTheWalkWithItsIndex) {
  const std::string stream = TwoRecords();
  int calls = 0;
  absl::Status s = ForEachRecord(AsBytes(stream), [&](const RecordHeader&, StateReader&) {
    ++calls;
    return absl::InvalidArgumentError("bad flow");
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(s.message(), "record 0 (type 4): bad flow");
}

TEST(StateReaderTest, ReadsPastTheEndFailOnceAndReturnZeros) {
  const uint8_t payload[] = {1, 2, 3};
  StateReader r(payload);
  EXPECT_EQ(r.U16(), 0x0201);
  EXPECT_EQ(r.U32(), 0u);  // Only one byte left.
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.U8(), 0);  // Still failed, even though a byte is left.
  EXPECT_EQ(r.Done().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.Done().message().find("4 bytes wanted at offset 2"), std::string::npos);
}

TEST(StateReaderTest, UnreadBytesBlobLimitsAndBools) {
  const uint8_t payload[] = {5, 0, 0, 0, 9, 9, 9, 9, 9, 2};
  StateReader big(payload);
  EXPECT_TRUE(big.Blob(4).empty());
  EXPECT_NE(big.Done().message().find("at most 4"), std::string::npos);
  StateReader fits(payload);
  EXPECT_EQ(fits.Blob(5).size(), 5u);
  EXPECT_FALSE(fits.Bool());  // 2 is no flag.
  EXPECT_FALSE(fits.ok());
  const uint8_t two[] = {1, 0};
  StateReader unread(two);
  EXPECT_TRUE(unread.Bool());
  EXPECT_EQ(unread.Done().message(), "1 bytes left unread of 2");
}

}  // namespace
}  // namespace vunet::net
