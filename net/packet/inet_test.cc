#include "net/packet/inet.h"

#include <arpa/inet.h>

#include "gtest/gtest.h"

namespace vunet::net {
namespace {

InetAddr A(const char* text) { return InetAddr::Parse(text).value(); }

TEST(InetAddr, FamiliesAndEquality) {
  EXPECT_TRUE(InetAddr().empty());
  EXPECT_TRUE(A("10.0.2.2").is_v4());
  EXPECT_TRUE(A("fe80::1").is_v6());
  // An IPv4 address and its v4-mapped IPv6 form are different addresses.
  EXPECT_NE(A("10.0.2.2"), A("::ffff:10.0.2.2"));
  EXPECT_EQ(A("10.0.2.2"), InetAddr::V4(A("10.0.2.2").v4()));
  EXPECT_EQ(A("10.0.2.2").ToString(), "10.0.2.2");
  EXPECT_EQ(A("fd00::2").ToString(), "fd00::2");
  EXPECT_FALSE(InetAddr::Parse("10.0.2").has_value());
  EXPECT_FALSE(InetAddr::Parse("").has_value());
}

TEST(InetAddr, Classes) {
  EXPECT_TRUE(A("0.0.0.0").IsUnspecified());
  EXPECT_TRUE(A("::").IsUnspecified());
  EXPECT_TRUE(A("127.3.4.5").IsLoopback());
  EXPECT_TRUE(A("::1").IsLoopback());
  EXPECT_FALSE(A("::ffff:127.0.0.1").IsLoopback());
  EXPECT_TRUE(A("239.1.1.1").IsMulticast());
  EXPECT_FALSE(A("240.1.1.1").IsMulticast());
  EXPECT_TRUE(A("ff02::1").IsMulticast());
  EXPECT_TRUE(A("169.254.1.1").IsLinkLocal());
  EXPECT_TRUE(A("fe80::5").IsLinkLocal());
  EXPECT_TRUE(A("::ffff:1.2.3.4").IsV4Mapped());
  EXPECT_FALSE(A("1.2.3.4").IsV4Mapped());
}

TEST(Endpoint, SockaddrRoundTrips) {
  for (const char* text : {"192.0.2.1", "2001:db8::7"}) {
    const Endpoint e{A(text), 4242};
    sockaddr_storage ss;
    const socklen_t len = e.ToSockaddr(&ss);
    ASSERT_GT(len, 0u);
    EXPECT_EQ(Endpoint::FromSockaddr(ss, len), e);
  }
  EXPECT_EQ((Endpoint{A("::1"), 53}).ToString(), "[::1]:53");
  EXPECT_EQ((Endpoint{A("127.0.0.53"), 53}).ToString(), "127.0.0.53:53");
  sockaddr_storage ss;
  EXPECT_EQ(Endpoint{}.ToSockaddr(&ss), 0u);
}

TEST(Endpoint, V4MappedSocketAddressesBecomeIpv4) {
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(80);
  inet_pton(AF_INET6, "::ffff:10.1.2.3", &sin6.sin6_addr);
  sockaddr_storage ss{};
  std::memcpy(&ss, &sin6, sizeof(sin6));
  const std::optional<Endpoint> e = Endpoint::FromSockaddr(ss, sizeof(sin6));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->addr, A("10.1.2.3"));
  EXPECT_EQ(e->port, 80);
  // Too short, or another family.
  EXPECT_FALSE(Endpoint::FromSockaddr(ss, sizeof(sockaddr_in)).has_value());
  ss.ss_family = AF_UNIX;
  EXPECT_FALSE(Endpoint::FromSockaddr(ss, sizeof(ss)).has_value());
}

}  // namespace
}  // namespace vunet::net
