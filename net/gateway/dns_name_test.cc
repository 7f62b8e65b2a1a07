#include "net/gateway/dns_name.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace vunet::net {
namespace {

std::vector<uint8_t> Encode(const std::string& name) {
  std::vector<uint8_t> out = {0xaa};
  if (!AppendDnsName(name, &out)) return {};
  return std::vector<uint8_t>(out.begin() + 1, out.end());
}

TEST(DnsNameTest, EncodesLabels) {
  EXPECT_EQ(Encode("example.org"),
            (std::vector<uint8_t>{7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'o', 'r', 'g', 0}));
  EXPECT_EQ(Encode("a."), (std::vector<uint8_t>{1, 'a', 0}));
  EXPECT_EQ(Encode(std::string(63, 'x')).size(), 65u);
}

TEST(DnsNameTest, RefusesInvalidNames) {
  for (const std::string& bad : {std::string(""), std::string("."), std::string("a..b"),
                                 std::string(".a"), std::string("a.b.."), std::string(64, 'x'),
                                 std::string(63, 'a') + "." + std::string(63, 'b') + "." +
                                     std::string(63, 'c') + "." + std::string(63, 'd')}) {
    std::vector<uint8_t> out = {1, 2};
    EXPECT_FALSE(AppendDnsName(bad, &out)) << bad;
    EXPECT_EQ(out, (std::vector<uint8_t>{1, 2}));
  }
}

}  // namespace
}  // namespace vunet::net
