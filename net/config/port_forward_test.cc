#include "net/config/port_forward.h"

#include <arpa/inet.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vunet::net {
namespace {

using ::testing::ElementsAre;

TEST(ParsePortForwards, OnePort) {
  absl::StatusOr<std::vector<PortForward>> f = ParsePortForwards("8080");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->size(), 1u);
  EXPECT_EQ((*f)[0].host_port, 8080);
  EXPECT_EQ((*f)[0].guest_port, 8080);
  EXPECT_EQ((*f)[0].count, 1u);
  EXPECT_EQ((*f)[0].family, AF_UNSPEC);
}

TEST(ParsePortForwards, RangesMappedAndListed) {
  absl::StatusOr<std::vector<PortForward>> f = ParsePortForwards("8000-8010:9000-9010,8443:443");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->size(), 2u);
  EXPECT_EQ((*f)[0].host_port, 8000);
  EXPECT_EQ((*f)[0].guest_port, 9000);
  EXPECT_EQ((*f)[0].count, 11u);
  EXPECT_EQ((*f)[1].host_port, 8443);
  EXPECT_EQ((*f)[1].guest_port, 443);
  EXPECT_EQ((*f)[1].count, 1u);
}

TEST(ParsePortForwards, AddressAndInterfaceBinding) {
  absl::StatusOr<std::vector<PortForward>> f = ParsePortForwards("127.0.0.1%lo/22");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->size(), 1u);
  EXPECT_EQ((*f)[0].family, AF_INET);
  EXPECT_EQ((*f)[0].bind4.s_addr, htonl(INADDR_LOOPBACK));
  EXPECT_EQ((*f)[0].ifname, "lo");

  f = ParsePortForwards("::1/8080:80");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)[0].family, AF_INET6);
  EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&(*f)[0].bind6));
  EXPECT_EQ((*f)[0].guest_port, 80);

  f = ParsePortForwards("%eth0/53");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)[0].family, AF_UNSPEC);
  EXPECT_EQ((*f)[0].ifname, "eth0");
}

TEST(ParsePortForwards, NoneIsEmpty) {
  absl::StatusOr<std::vector<PortForward>> f = ParsePortForwards("none");
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->empty());
}

TEST(ParsePortForwards, RefusesNonsense) {
  for (const char* spec : {"",           "0",
                           "65536",      "80-70",
                           "abc",        "1.2.3/80",
                           "80:",        ":80",
                           "80,,81",     "8000-8010:9000",
                           "/",          "%/80",
                           "80:90-91",   "/80",
                           "~",          "~0",
                           "~80-70",     "~x",
                           "80,~",       "all,~22",
                           "all,80",     "80,all",
                           "+80",        "-80",
                           " 80",        "80 ",
                           "0x50",       "1-65536",
                           "80-",        "-",
                           "80:0",       "8000-8010,8005",
                           "22,22",      "1-100,50-60",
                           "%eth0:1/80", "%0123456789abcdef/80",
                           "[::1/80",    "300.1.2.3/80",
                           "8080,~8080"}) {
    absl::StatusOr<std::vector<PortForward>> f = ParsePortForwards(spec, PortRange{32768, 60999});
    EXPECT_TRUE(absl::IsInvalidArgument(f.status())) << "'" << spec << "': " << f.status();
    if (!f.ok()) {
      EXPECT_EQ(std::string(f.status().message()).find('\n'), std::string::npos);
      EXPECT_NE(std::string(f.status().message()).find("forwarding spec"), std::string::npos);
    }
  }
  EXPECT_TRUE(absl::IsUnimplemented(ParsePortForwards("auto").status()));
  EXPECT_TRUE(absl::IsUnimplemented(ParsePortForwards("80,auto").status()));
}

// The runs a result lists, as "host-last:guest" strings.
std::vector<std::string> Runs(const std::vector<PortForward>& forwards) {
  std::vector<std::string> out;
  out.reserve(forwards.size());
  for (const PortForward& f : forwards) {
    out.push_back(std::to_string(f.host_port) + "-" + std::to_string(f.host_port + f.count - 1) +
                  ":" + std::to_string(f.guest_port) + (f.weak ? " weak" : ""));
  }
  return out;
}

TEST(ParsePortForwards, ExclusionsCutRanges) {
  const PortRange ephemeral{32768, 60999};
  absl::StatusOr<std::vector<PortForward>> f = ParsePortForwards("2000-5000,~3000-3010", ephemeral);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("2000-2999:2000", "3011-5000:3011"));
  // passt's manual: ports 20-24 and 26-30 of 192.0.2.1.
  f = ParsePortForwards("192.0.2.1/20-30,~25", ephemeral);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("20-24:20", "26-30:26"));
  EXPECT_EQ((*f)[1].family, AF_INET);
  // A remapped range keeps its offset around the hole (what libvirt passes
  // for <range start='3000' end='3010' to='4000'/> and an excluded 3005).
  f = ParsePortForwards("2222:22,3000-3010:4000-4010,~3005", ephemeral);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("2222-2222:22", "3000-3004:4000", "3006-3010:4006"));
  // Exclusions first, overlapping ones, and ones outside every range are fine.
  f = ParsePortForwards("~5001-5002,~5002,5000-5003,~9000", ephemeral);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("5000-5000:5000", "5003-5003:5003"));
  // Ranges come out in port order.
  f = ParsePortForwards("9000,80-81", ephemeral);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("80-81:80", "9000-9000:9000"));
}

TEST(ParsePortForwards, AllLeavesOutTheEphemeralPorts) {
  absl::StatusOr<std::vector<PortForward>> f = ParsePortForwards("all", PortRange{32768, 60999});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("1-32767:1 weak", "61000-65535:61000 weak"));
  f = ParsePortForwards("~22", PortRange{32768, 60999});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("1-21:1 weak", "23-32767:23 weak", "61000-65535:61000 weak"));
  // Bound to an address or an interface (libvirt's dev= without a range).
  f = ParsePortForwards("%lo/all", PortRange{1024, 65535});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("1-1023:1 weak"));
  EXPECT_EQ((*f)[0].ifname, "lo");
  f = ParsePortForwards("[::1]/~1-100", PortRange{1024, 65535});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("101-1023:101 weak"));
  EXPECT_EQ((*f)[0].family, AF_INET6);
  EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&(*f)[0].bind6));
  f = ParsePortForwards("[127.0.0.1]/all", PortRange{2, 65535});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(Runs(*f), ElementsAre("1-1:1 weak"));
  EXPECT_EQ((*f)[0].family, AF_INET);
  // Nothing left.
  EXPECT_TRUE(absl::IsInvalidArgument(ParsePortForwards("~1-65535", PortRange{}).status()));
}

TEST(EphemeralPorts, ReadsThisNamespacesRange) {
  const PortRange r = EphemeralPorts();
  EXPECT_GE(r.first, 1);
  EXPECT_LE(r.first, r.last);
}

TEST(ForwardsOverlap, SamePortsOnAddressesThatCanCoincide) {
  const PortRange e{32768, 60999};
  auto one = [&](const char* spec) { return ParsePortForwards(spec, e).value().front(); };
  EXPECT_TRUE(ForwardsOverlap(one("8080"), one("8000-8100")));
  EXPECT_FALSE(ForwardsOverlap(one("8080"), one("8081-8100")));
  EXPECT_TRUE(ForwardsOverlap(one("8080"), one("127.0.0.1/8080")));
  EXPECT_TRUE(ForwardsOverlap(one("0.0.0.0/8080"), one("127.0.0.1/8080")));
  EXPECT_FALSE(ForwardsOverlap(one("127.0.0.2/8080"), one("127.0.0.1/8080")));
  EXPECT_TRUE(ForwardsOverlap(one("::/8080"), one("::1/8080")));
  EXPECT_FALSE(ForwardsOverlap(one("::1/8080"), one("127.0.0.1/8080")));
  EXPECT_FALSE(ForwardsOverlap(one("%eth0/8080"), one("%eth1/8080")));
  EXPECT_TRUE(ForwardsOverlap(one("%eth0/8080"), one("8080")));
  EXPECT_TRUE(ForwardsOverlap(one("%lo/all"), one("22")));
}

}  // namespace
}  // namespace vunet::net
