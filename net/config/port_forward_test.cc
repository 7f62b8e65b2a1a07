#include "net/config/port_forward.h"

#include <arpa/inet.h>

#include "gtest/gtest.h"

namespace vunet::net {
namespace {

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
  for (const char* spec : {"", "0", "65536", "80-70", "abc", "1.2.3/80", "80:", ":80", "80,,81",
                           "8000-8010:9000", "/", "%/80", "80:90-91"}) {
    absl::StatusOr<std::vector<PortForward>> f = ParsePortForwards(spec);
    EXPECT_TRUE(absl::IsInvalidArgument(f.status())) << "'" << spec << "': " << f.status();
  }
  EXPECT_TRUE(absl::IsUnimplemented(ParsePortForwards("auto").status()));
  EXPECT_TRUE(absl::IsUnimplemented(ParsePortForwards("~22").status()));
}

}  // namespace
}  // namespace vunet::net
