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

TEST(DnsNameTest, HostNames) {
  // The longest name: 253 characters, 255 octets in wire format.
  const std::string longest = std::string(63, 'a') + "." + std::string(63, 'b') + "." +
                              std::string(63, 'c') + "." + std::string(61, 'd');
  ASSERT_EQ(longest.size(), 253u);
  EXPECT_EQ(Encode(longest).size(), 255u);
  for (const std::string& good :
       {std::string("vm1"), std::string("vm-1.example.org"), std::string("VM_1.example.org."),
        std::string("1.2.3.4"), longest}) {
    EXPECT_TRUE(IsHostName(good)) << good;
  }
  for (const std::string& bad :
       {std::string(""), std::string("."), std::string("-vm"), std::string("vm-"),
        std::string("vm-.org"), std::string("a..b"), std::string("vm 1"), std::string("vm;reboot"),
        std::string("vm\n"), std::string("v\x01m"), std::string("$(id)"), std::string("vm/1"),
        std::string(64, 'x'), longest + "e", std::string("caf\xc3\xa9")}) {
    EXPECT_FALSE(IsHostName(bad)) << bad;
  }
}

}  // namespace
}  // namespace vunet::net
