// Fuzzes the Dispatcher with every handler (ARP, DHCP, NDP, DHCPv6) on
// arbitrary frames and virtio-net headers. Input as frame_fuzz's
// (net/packet/fuzz_input.h): how the frame is cut into iovecs, the offloads
// negotiated, the header, the frame (NEEDS_CSUM lets NDP skip its checksum
// check, so the fuzzer reaches option parsing). Every reply goes into a real
// receive ring (vu/testing/guest_rx.h) and must be a frame ParseFrame
// accepts, within the reply buffer; a frame the offload check refuses
// reaches no handler or translator; one routed carries a header that
// passed it.

#include <arpa/inet.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "net/gateway/dispatch.h"
#include "net/packet/fuzz_input.h"
#include "net/packet/offload.h"
#include "vu/testing/guest_rx.h"

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

// Sees every reply as the receive queue commits it.
class CheckingObserver : public vunet::vu::RxQueue::Observer {
 public:
  void OnFrameToGuest(absl::Span<const iovec> iov, size_t offset, size_t len) override {
    if (len > kDhcpMaxReplyLen && len > kNdpMaxReplyLen && len > kDhcpv6MaxReplyLen) {
      __builtin_trap();
    }
    std::vector<uint8_t> bytes(len);
    size_t done = 0;
    for (const iovec& v : iov) {
      if (offset >= v.iov_len) {
        offset -= v.iov_len;
        continue;
      }
      const size_t n = std::min(v.iov_len - offset, len - done);
      std::memcpy(bytes.data() + done, static_cast<uint8_t*>(v.iov_base) + offset, n);
      done += n;
      offset = 0;
      if (done == len) break;
    }
    const iovec whole = {bytes.data(), bytes.size()};
    ParsedFrame p;
    if (done != len || !ParseFrame(absl::MakeConstSpan(&whole, 1), &p).ok()) __builtin_trap();
  }
  void OnBroken() override { __builtin_trap(); }
};

// Checks what the dispatcher routes: the header passed the offload check.
class CheckingSink : public ParsedFrameSink {
 public:
  void OnFrame(const vunet::vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
               const ParsedFrame& parsed) override {
    if (CheckGuestOffload(hdr, parsed, offloads) != OffloadProblem::kNone) __builtin_trap();
    size_t len = 0;
    for (const iovec& v : frame) len += v.iov_len;
    if (len != parsed.frame_len) __builtin_trap();
  }
  GuestOffloads offloads;
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
    guest.rx().set_observer(&observer);
    dispatcher =
        new Dispatcher({.arp = &arp, .dhcp = dhcp, .ndp = ndp, .dhcpv6 = dhcpv6}, &guest.rx());
    dispatcher->Route(L4Kind::kTcp, &sink);
    dispatcher->Route(L4Kind::kUdp, &sink);
  }
  ArpConfig arp;
  DhcpServer* dhcp;
  NdpResponder* ndp;
  Dhcpv6Server* dhcpv6;
  vunet::vu::testing::GuestRxRing guest{{.queue_size = 64, .memory = 8 << 20}};
  CheckingObserver observer;
  CheckingSink sink;
  Dispatcher* dispatcher;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* world = new World();
  const std::optional<FuzzFrame> in = ParseFuzzFrame(data, size);
  if (!in.has_value()) return 0;
  vunet::vu::NetConfig config;
  config.csum = in->offloads.csum;
  config.host_tso4 = in->offloads.tso4;
  config.host_tso6 = in->offloads.tso6;
  config.host_ecn = in->offloads.ecn;
  config.host_uso = in->offloads.uso;
  world->dispatcher->SetNetConfig(config);
  world->sink.offloads = in->offloads;
  const std::vector<iovec> iov = in->Cut();
  world->guest.Post(4, 2048);
  world->dispatcher->OnFrame(in->hdr, iov);
  world->dispatcher->OnBatchEnd();
  world->guest.Take();  // Flushes, and frees the buffers for the next input.
  return 0;
}
