// Fuzzes the Dispatcher with every handler (ARP, DHCP, NDP) on arbitrary
// frames. Input as frame_fuzz: one byte choosing how the frame is cut into
// iovecs (bit 7 also sets NEEDS_CSUM, so NDP skips its checksum check and
// the fuzzer reaches option parsing), then the frame. Every reply must be a
// frame ParseFrame accepts, within the reply buffer.

#include <arpa/inet.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "net/gateway/dispatch.h"

namespace {

using namespace vunet::net;

const MacAddr kGatewayMac = {{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}};

in_addr V4(const char* s) {
  in_addr a{};
  inet_pton(AF_INET, s, &a);
  return a;
}

in6_addr V6(const char* s) {
  in6_addr a{};
  inet_pton(AF_INET6, s, &a);
  return a;
}

class CheckingSender : public ReplySender {
 public:
  absl::Status Send(absl::Span<const uint8_t> frame) override {
    if (frame.size() > kDhcpMaxReplyLen && frame.size() > kNdpMaxReplyLen &&
        frame.size() > kDhcpv6MaxReplyLen) {
      __builtin_trap();
    }
    const iovec iov = {const_cast<uint8_t*>(frame.data()), frame.size()};
    ParsedFrame p;
    if (!ParseFrame(absl::MakeConstSpan(&iov, 1), &p).ok()) __builtin_trap();
    return absl::OkStatus();
  }
};

struct World {
  World() {
    arp.gateway_mac = kGatewayMac;
    arp.guest_addr = V4("10.0.2.15");
    DhcpConfig d;
    d.gateway_mac = kGatewayMac;
    d.gateway_addr = V4("10.0.2.2");
    d.guest_addr = V4("10.0.2.15");
    d.dns = {V4("10.0.2.3")};
    d.search_domains = {"example.org"};
    d.mtu = 1500;
    dhcp = new DhcpServer(DhcpServer::Create(d).value());
    NdpConfig n;
    n.gateway_mac = kGatewayMac;
    n.gateway_ll = V6("fe80::1");
    n.prefix = V6("fd00::");
    n.dns = {V6("fd00::3")};
    n.search_domains = {"example.org"};
    n.mtu = 1500;
    ndp = new NdpResponder(NdpResponder::Create(n).value());
    Dhcpv6Config d6;
    d6.gateway_mac = kGatewayMac;
    d6.gateway_ll = V6("fe80::1");
    d6.guest_addr = V6("fd00::15");
    d6.dns = {V6("fd00::3")};
    d6.search_domains = {"example.org"};
    dhcpv6 = new Dhcpv6Server(Dhcpv6Server::Create(d6).value());
    dispatcher = new Dispatcher({.arp = &arp, .dhcp = dhcp, .ndp = ndp, .dhcpv6 = dhcpv6}, &sender);
  }
  ArpConfig arp;
  DhcpServer* dhcp;
  NdpResponder* ndp;
  Dhcpv6Server* dhcpv6;
  CheckingSender sender;
  Dispatcher* dispatcher;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* world = new World();
  if (size == 0) return 0;
  const size_t piece = data[0] & 0x7f;
  vunet::vu::VirtioNetHdr hdr;
  if (data[0] & 0x80) hdr.flags = vunet::vu::kVirtioNetHdrFNeedsCsum;
  const uint8_t* frame = data + 1;
  const size_t len = size - 1;
  std::vector<iovec> iov;
  if (piece == 0) {
    iov.push_back({const_cast<uint8_t*>(frame), len});
  } else {
    for (size_t at = 0; at < len; at += piece) {
      iov.push_back({const_cast<uint8_t*>(frame) + at, len - at < piece ? len - at : piece});
    }
  }
  world->dispatcher->OnFrame(hdr, iov);
  return 0;
}
