#include "net/migrate/flow_fields.h"

#include <string>

#include "gtest/gtest.h"

namespace vunet::net {
namespace {

// The payload of one record holding what `write` wrote.
template <typename F>
std::string Payload(F write) {
  StateWriter w;
  const size_t start = w.size();
  write(w);
  std::string all = w.Finish();
  return all.substr(start, all.size() - start - kRecordHeaderLen - 8);
}

absl::Span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

TEST(FlowFieldsTest, KeysEndpointsAndMacsRoundTrip) {
  const FlowKey v4 = FlowKey::Of(FlowProto::kTcp, *InetAddr::Parse("10.0.2.15"), 40000,
                                 *InetAddr::Parse("93.184.216.34"), 80);
  const FlowKey v6 = FlowKey::Of(FlowProto::kIcmp, *InetAddr::Parse("fd00::15"), 7,
                                 *InetAddr::Parse("2001:db8::1"), 0);
  const Endpoint e{*InetAddr::Parse("::1"), 53};
  const MacAddr mac{{0x52, 0x54, 0, 0x12, 0x34, 0x56}};
  const std::string p = Payload([&](StateWriter& w) {
    WriteKey(w, v4);
    WriteKey(w, v6);
    WriteEndpoint(w, e);
    WriteEndpoint(w, Endpoint{});
    WriteMac(w, mac);
  });
  StateReader r(Bytes(p));
  EXPECT_EQ(ReadKey(r), v4);
  EXPECT_EQ(ReadKey(r), v6);
  EXPECT_EQ(ReadEndpoint(r), e);
  EXPECT_TRUE(ReadEndpoint(r).addr.empty());
  EXPECT_EQ(ReadMac(r), mac);
  EXPECT_TRUE(r.Done().ok()) << r.Done();
}

TEST(FlowFieldsTest, HostileKeysFail) {
  // Protocol 2 (IGMP).
  std::string p = Payload([](StateWriter& w) {
    WriteKey(w, FlowKey::Of(FlowProto::kUdp, *InetAddr::Parse("10.0.2.15"), 1,
                            *InetAddr::Parse("10.0.2.2"), 53));
  });
  p[0] = 2;
  StateReader proto(Bytes(p));
  ReadKey(proto);
  EXPECT_FALSE(proto.ok());
  // Two IP versions in one key.
  p = Payload([](StateWriter& w) {
    w.U8(6);
    WriteAddr(w, *InetAddr::Parse("10.0.2.15"));
    WriteAddr(w, *InetAddr::Parse("::1"));
    w.U16(1);
    w.U16(2);
  });
  StateReader mixed(Bytes(p));
  ReadKey(mixed);
  EXPECT_FALSE(mixed.ok());
  // An address of version 5.
  const uint8_t five[] = {5, 1, 2, 3, 4};
  StateReader bad(five);
  ReadAddr(bad);
  EXPECT_NE(bad.Done().message().find("IP version 5"), std::string::npos);
  // A multicast MAC.
  const uint8_t multicast[] = {1, 0, 0x5e, 0, 0, 1};
  StateReader m(multicast);
  ReadMac(m);
  EXPECT_FALSE(m.ok());
}

TEST(FlowFieldsTest, TimersTravelAsTimeLeftAndAreCapped) {
  const std::string p = Payload([](StateWriter& w) {
    WriteTimeLeft(w, 1500, 1000);  // 500 left.
    WriteTimeLeft(w, 0, 1000);     // None.
    WriteTimeLeft(w, 900, 1000);   // Passed: due at once.
    WriteTimeLeft(w, 1'000'000, 0);
  });
  StateReader r(Bytes(p));
  EXPECT_EQ(ReadTimeLeft(r, 50'000, 1000), 50'500);
  EXPECT_EQ(ReadTimeLeft(r, 50'000, 1000), 0);
  EXPECT_EQ(ReadTimeLeft(r, 50'000, 1000), 50'000);
  EXPECT_EQ(ReadTimeLeft(r, 50'000, 1000), 51'000);  // Capped.
  EXPECT_TRUE(r.Done().ok());
  const uint8_t negative[] = {0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};  // -2.
  StateReader n(negative);
  ReadTimeLeft(n, 0, 1000);
  EXPECT_FALSE(n.ok());
}

}  // namespace
}  // namespace vunet::net
