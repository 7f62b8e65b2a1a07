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

}  // namespace
}  // namespace vunet::net
