#include "net/forward/outbound.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <sys/socket.h>

#include <string>

#include "base/unique_fd.h"
#include "gtest/gtest.h"

namespace vunet::net {
namespace {

sockaddr_in To4(const char* addr, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, addr, &a.sin_addr);
  return a;
}

std::string Source4(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  char text[INET_ADDRSTRLEN] = "";
  inet_ntop(AF_INET, &a.sin_addr, text, sizeof(text));
  return text;
}

std::string Device(int fd) {
  char name[IFNAMSIZ] = "";
  socklen_t len = sizeof(name);
  getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, name, &len);
  return name;
}

TEST(BindOutbound, BindsSourceAndInterfaceOfItsVersion) {
  OutboundBinding b;
  in_addr a4;
  inet_pton(AF_INET, "127.0.0.1", &a4);
  b.addr4 = a4;
  b.ifname4 = "lo";
  b.ifname6 = "nosuch0";  // IPv6 only: not used below.
  UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const sockaddr_in to = To4("192.0.2.1", 53);
  ASSERT_TRUE(BindOutbound(fd.get(), reinterpret_cast<const sockaddr*>(&to), b).ok());
  EXPECT_EQ(Source4(fd.get()), "127.0.0.1");
  EXPECT_EQ(Device(fd.get()), "lo");
}

TEST(BindOutbound, LeavesLoopbackDestinationsAndEmptyBindingsAlone) {
  OutboundBinding b;
  b.ifname4 = "nosuch0";
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const sockaddr_in host = To4("127.0.0.1", 80);
  EXPECT_TRUE(BindOutbound(fd.get(), reinterpret_cast<const sockaddr*>(&host), b).ok());
  EXPECT_EQ(Device(fd.get()), "");
  const sockaddr_in other = To4("192.0.2.1", 80);
  EXPECT_TRUE(BindOutbound(fd.get(), reinterpret_cast<const sockaddr*>(&other), {}).ok());
  EXPECT_EQ(Source4(fd.get()), "0.0.0.0");
}

TEST(BindOutbound, ErrorsNameWhatFailed) {
  OutboundBinding b;
  b.ifname4 = "nosuch0";
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const sockaddr_in to = To4("192.0.2.1", 80);
  absl::Status s = BindOutbound(fd.get(), reinterpret_cast<const sockaddr*>(&to), b);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("nosuch0"), std::string::npos) << s;
  b = {};
  in_addr a4;
  inet_pton(AF_INET, "192.0.2.77", &a4);  // TEST-NET-1: not the host's.
  b.addr4 = a4;
  s = BindOutbound(fd.get(), reinterpret_cast<const sockaddr*>(&to), b);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("192.0.2.77"), std::string::npos) << s;
}

uint16_t Port4(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

// A migrated flow keeps its port: bound whatever the destination, at the
// binding's address where one applies; a taken port is the bind's error.
TEST(BindOutbound, APortIsBoundForAnyDestination) {
  UniqueFd taken(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const sockaddr_in any = To4("0.0.0.0", 0);
  ASSERT_EQ(bind(taken.get(), reinterpret_cast<const sockaddr*>(&any), sizeof(any)), 0);
  const uint16_t port = Port4(taken.get());
  taken.reset();  // Free again, for the first socket below.

  UniqueFd first(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const sockaddr_in host = To4("127.0.0.1", 53);
  ASSERT_TRUE(BindOutbound(first.get(), reinterpret_cast<const sockaddr*>(&host), {}, port).ok());
  EXPECT_EQ(Port4(first.get()), port);
  EXPECT_EQ(Source4(first.get()), "0.0.0.0");

  UniqueFd second(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const absl::Status s =
      BindOutbound(second.get(), reinterpret_cast<const sockaddr*>(&host), {}, port);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("port " + std::to_string(port)), std::string::npos) << s;
  // Again without the port: as a new flow.
  EXPECT_TRUE(BindOutbound(second.get(), reinterpret_cast<const sockaddr*>(&host), {}).ok());

  OutboundBinding b;
  in_addr a4;
  inet_pton(AF_INET, "127.0.0.1", &a4);
  b.addr4 = a4;
  UniqueFd third(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const sockaddr_in other = To4("192.0.2.1", 53);
  ASSERT_TRUE(BindOutbound(third.get(), reinterpret_cast<const sockaddr*>(&other), b, 0).ok());
  EXPECT_EQ(Source4(third.get()), "127.0.0.1");
  EXPECT_EQ(Port4(third.get()), 0);  // Picked at connect().
}

}  // namespace
}  // namespace vunet::net
