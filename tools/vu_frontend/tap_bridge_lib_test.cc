// TapBridge against vu::Server with an echoing data plane, in a network
// namespace of the test's own: frames sent out of the tap (through a packet
// socket) cross the bridge, come back from the echo and are received on the
// tap again, byte for byte. Offloads: a FeatureProxy offers the
// segmentation offloads vu::Device lacks and the echo returns each frame
// with its virtio-net header, so segments the namespace's own TCP and UDP
// sockets send (a TCP connection set up with TCP_REPAIR, UDP with
// UDP_SEGMENT) show what the tap hands us and takes back. Needs root
// (unshare, /dev/net/tun, TCP_REPAIR); skips otherwise.

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "tools/vu_frontend/echo_data_plane.h"
#include "tools/vu_frontend/feature_proxy.h"
#include "tools/vu_frontend/frontend.h"
#include "tools/vu_frontend/loss.h"
#include "tools/vu_frontend/net_header.h"
#include "tools/vu_frontend/tap_bridge.h"
#include "vu/server.h"

namespace vunet::vu_frontend {
namespace {

constexpr uint16_t kEtherType = 0x88b5;  // Local experimental: nothing else sends it.
constexpr char kTap[] = "vutest0";

TEST(ParseMacTest, ParsesAndRefuses) {
  EXPECT_EQ(ParseMac("52:54:00:12:34:5f"),
            (std::array<uint8_t, 6>{0x52, 0x54, 0x00, 0x12, 0x34, 0x5f}));
  EXPECT_EQ(ParseMac("a:B:c:d:e:F"), (std::array<uint8_t, 6>{0xa, 0xb, 0xc, 0xd, 0xe, 0xf}));
  EXPECT_FALSE(ParseMac(""));
  EXPECT_FALSE(ParseMac("52:54:00:12:34"));
  EXPECT_FALSE(ParseMac("52:54:00:12:34:56:78"));
  EXPECT_FALSE(ParseMac("52:54:00:12:34:567"));
  EXPECT_FALSE(ParseMac("52:54:00:12:34:g6"));
  EXPECT_FALSE(ParseMac("52:54::12:34:56"));
}

// An Ethernet frame of `size` bytes with EtherType `ether_type` whose
// network header starts with `ip`.
std::vector<uint8_t> IpFrame(uint16_t ether_type, std::vector<uint8_t> ip, size_t size) {
  std::vector<uint8_t> frame(size);
  frame[12] = static_cast<uint8_t>(ether_type >> 8);
  frame[13] = static_cast<uint8_t>(ether_type);
  std::copy(ip.begin(), ip.end(), frame.begin() + 14);
  return frame;
}

TEST(FindChecksumFieldTest, TcpAndUdpOverIpv4AndIpv6) {
  // IPv4: version/IHL, TOS, length(2), id(2), flags/fragment(2), TTL, protocol.
  const auto v4 = [](uint8_t ihl, uint8_t protocol, uint8_t flags_hi, uint8_t fragment_lo,
                     size_t size) {
    return IpFrame(
        0x0800,
        {static_cast<uint8_t>(0x40 | ihl), 0, 0, 0, 0, 0, flags_hi, fragment_lo, 64, protocol},
        size);
  };
  std::optional<ChecksumField> f = FindChecksumField(v4(5, 6, 0x40, 0, 54));
  ASSERT_TRUE(f);
  EXPECT_EQ(f->start, 34);
  EXPECT_EQ(f->offset, 16);
  f = FindChecksumField(v4(6, 17, 0, 0, 46));  // 4 bytes of options.
  ASSERT_TRUE(f);
  EXPECT_EQ(f->start, 38);
  EXPECT_EQ(f->offset, 6);
  EXPECT_FALSE(FindChecksumField(v4(5, 6, 0x40, 0, 53)));  // TCP header cut short.
  EXPECT_FALSE(FindChecksumField(v4(4, 6, 0, 0, 60)));     // IHL below 5.
  EXPECT_FALSE(FindChecksumField(v4(5, 6, 0x20, 0, 60)));  // More fragments.
  EXPECT_FALSE(FindChecksumField(v4(5, 6, 0, 1, 60)));     // A later fragment.
  EXPECT_FALSE(FindChecksumField(v4(5, 1, 0, 0, 60)));     // ICMP.

  // IPv6: version, then the next header at byte 6.
  const auto v6 = [](uint8_t next_header, size_t size) {
    return IpFrame(0x86dd, {0x60, 0, 0, 0, 0, 0, next_header}, size);
  };
  f = FindChecksumField(v6(17, 62));
  ASSERT_TRUE(f);
  EXPECT_EQ(f->start, 54);
  EXPECT_EQ(f->offset, 6);
  f = FindChecksumField(v6(6, 74));
  ASSERT_TRUE(f);
  EXPECT_EQ(f->offset, 16);
  EXPECT_FALSE(FindChecksumField(v6(0, 100)));  // Hop-by-hop options first.
  EXPECT_FALSE(FindChecksumField(v6(17, 61)));

  EXPECT_FALSE(FindChecksumField(IpFrame(0x0806, {}, 60)));      // ARP.
  EXPECT_FALSE(FindChecksumField(IpFrame(0x0800, {0x60}, 60)));  // Not version 4.
  EXPECT_FALSE(FindChecksumField({}));
}

TEST(OpenTapTest, RefusesBadOptions) {
  TapOptions long_name;
  long_name.name = std::string(IFNAMSIZ, 'x');
  EXPECT_EQ(OpenTap(long_name).status().code(), absl::StatusCode::kInvalidArgument);
  for (uint32_t mtu : {67, 65536}) {
    TapOptions options;
    options.mtu = mtu;
    EXPECT_EQ(OpenTap(options).status().code(), absl::StatusCode::kInvalidArgument) << mtu;
  }
}

class TapBridgeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) != 0) {
      GTEST_SKIP() << "needs root and /dev/net/tun";
    }
    // This thread, and the threads it starts, move to a namespace of their own.
    ASSERT_EQ(unshare(CLONE_NEWNET), 0) << strerror(errno);

    std::strcpy(dir_, "/tmp/tap_bridge_test.XXXXXX");
    ASSERT_NE(mkdtemp(dir_), nullptr);
    plane_ = std::make_unique<EchoDataPlane>(
        EchoDataPlane::Options{.mergeable = !legacy_header_,
                               .net_header_size = legacy_header_ ? 10u : 12u,
                               .echo_header = echo_header_});
    vu::Server::Options server_options;
    server_options.socket_path = std::string(dir_) + "/vu.sock";
    absl::StatusOr<std::unique_ptr<vu::Server>> server =
        vu::Server::Listen(server_options, plane_.get());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_thread_ = std::thread([this] { EXPECT_TRUE(server_->Run(server_stop_).ok()); });

    FrontendOptions options;
    options.max_frame_size = 65535 + 14;
    options.rx_buffer_size = sizeof(VirtioNetHdr) + options.max_frame_size;
    options.queue_size = 64;  // Small, so that the transmit ring fills up.
    if (csum_) options.features |= Bit(kVirtioNetFCsum);
    options.features |= wanted_extra_;
    options.loss_to_backend = loss_to_backend_;
    options.loss_to_guest = loss_to_guest_;
    if (legacy_header_) {
      options.features &= ~(Bit(virtio::kVirtioFVersion1) | Bit(kVirtioNetFMrgRxbuf));
    }
    absl::StatusOr<std::unique_ptr<Frontend>> frontend = Frontend::Create(options);
    ASSERT_TRUE(frontend.ok()) << frontend.status();
    frontend_ = *std::move(frontend);
    if (offered_extra_ != 0) {
      absl::StatusOr<std::unique_ptr<FeatureProxy>> proxy =
          FeatureProxy::Start(server_options.socket_path, offered_extra_);
      ASSERT_TRUE(proxy.ok()) << proxy.status();
      proxy_ = *std::move(proxy);
      frontend_->Attach(proxy_->TakeFrontendSocket());
    } else {
      ASSERT_TRUE(frontend_->Connect(server_options.socket_path, absl::Seconds(5)).ok());
    }
    ASSERT_TRUE(frontend_->Negotiate().ok());
    ASSERT_TRUE(plane_->WaitRunning(5000));
    ASSERT_EQ(frontend_->has_feature(kVirtioNetFCsum),
              csum_ || (wanted_extra_ & Bit(kVirtioNetFCsum)) != 0);
    ASSERT_EQ(frontend_->net_header_size(), legacy_header_ ? 10u : 12u);

    TapOptions tap_options;
    tap_options.name = kTap;
    tap_options.mtu = 65520;
    tap_options.mac = std::array<uint8_t, 6>{0x52, 0x54, 0, 1, 2, 3};
    absl::StatusOr<Tap> tap = OpenTap(tap_options);
    ASSERT_TRUE(tap.ok()) << tap.status();
    EXPECT_EQ(tap->name, kTap);
    absl::StatusOr<std::unique_ptr<TapBridge>> bridge =
        TapBridge::Create(frontend_.get(), std::move(tap->fd));
    ASSERT_TRUE(bridge.ok()) << bridge.status();
    bridge_ = *std::move(bridge);
    stop_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    ASSERT_TRUE(stop_.valid());
    bridge_thread_ = std::thread([this] { bridge_status_ = bridge_->Run(stop_.get()); });

    packet_.reset(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(kEtherType)));
    ASSERT_TRUE(packet_.valid()) << strerror(errno);
    const int buffer = 32 << 20;
    setsockopt(packet_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof(buffer));
    sockaddr_ll address{};
    address.sll_family = AF_PACKET;
    address.sll_protocol = htons(kEtherType);
    address.sll_ifindex = static_cast<int>(if_nametoindex(kTap));
    ASSERT_NE(address.sll_ifindex, 0);
    ASSERT_EQ(bind(packet_.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0)
        << strerror(errno);
  }

  void TearDown() override {
    StopBridge();
    if (frontend_) frontend_->Disconnect();
    proxy_.reset();
    StopServer();
    if (dir_[0] != '\0') rmdir(dir_);
  }

  void StopBridge() {
    if (!bridge_thread_.joinable()) return;
    const uint64_t one = 1;
    EXPECT_EQ(write(stop_.get(), &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
    bridge_thread_.join();
  }

  void StopServer() {
    server_stop_ = true;
    if (server_thread_.joinable()) server_thread_.join();
    server_.reset();
    plane_.reset();
  }

  static std::vector<uint8_t> Frame(size_t size, uint32_t sequence) {
    std::vector<uint8_t> frame(size);
    std::memset(frame.data(), 0xff, 6);  // Broadcast.
    const uint8_t source[6] = {0x52, 0x54, 0, 1, 2, 3};
    std::memcpy(frame.data() + 6, source, 6);
    frame[12] = kEtherType >> 8;
    frame[13] = kEtherType & 0xff;
    std::memcpy(frame.data() + 14, &sequence, sizeof(sequence));
    for (size_t i = 18; i < size; ++i) frame[i] = static_cast<uint8_t>(i * 7 + sequence);
    return frame;
  }

  // Sends `frames` out of the tap, `window` at a time, and reads each back
  // as the kernel received it from the tap. Returns how many came back
  // byte for byte.
  size_t RoundTrip(const std::vector<std::vector<uint8_t>>& frames, size_t window) {
    std::vector<uint8_t> buffer(70000);
    size_t received = 0, matched = 0, sent = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (received < frames.size() && absl::Now() < deadline) {
      while (sent < frames.size() && sent < received + window) {
        const ssize_t n = send(packet_.get(), frames[sent].data(), frames[sent].size(), 0);
        EXPECT_EQ(n, static_cast<ssize_t>(frames[sent].size())) << strerror(errno);
        ++sent;
      }
      pollfd p{.fd = packet_.get(), .events = POLLIN, .revents = 0};
      if (poll(&p, 1, 200) <= 0) continue;
      sockaddr_ll from{};
      socklen_t from_len = sizeof(from);
      const ssize_t n = recvfrom(packet_.get(), buffer.data(), buffer.size(), MSG_DONTWAIT,
                                 reinterpret_cast<sockaddr*>(&from), &from_len);
      if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING) continue;  // Our own copy going out.
      uint32_t sequence;
      if (n < 18) continue;
      std::memcpy(&sequence, buffer.data() + 14, sizeof(sequence));
      ++received;
      if (sequence < frames.size() &&
          std::vector<uint8_t>(buffer.begin(), buffer.begin() + n) == frames[sequence]) {
        ++matched;
      }
    }
    return matched;
  }

  // Sends `frame` out of the tap through a packet socket that hands the
  // kernel a partial checksum (PACKET_VNET_HDR): the 16-bit sum of the frame
  // from `start` on goes to `start` + `offset`.
  void SendPartial(const std::vector<uint8_t>& frame, uint16_t start, uint16_t offset) {
    UniqueFd sender(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(sender.valid()) << strerror(errno);
    const int on = 1;
    ASSERT_EQ(setsockopt(sender.get(), SOL_PACKET, PACKET_VNET_HDR, &on, sizeof(on)), 0)
        << strerror(errno);
    sockaddr_ll address{};
    address.sll_family = AF_PACKET;
    address.sll_protocol = htons(kEtherType);
    address.sll_ifindex = static_cast<int>(if_nametoindex(kTap));
    ASSERT_EQ(bind(sender.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0)
        << strerror(errno);
    VirtioNetHdr header;
    header.flags = virtio::kVirtioNetHdrFNeedsCsum;
    header.csum_start = start;
    header.csum_offset = offset;
    iovec iov[2] = {{&header, 10}, {const_cast<uint8_t*>(frame.data()), frame.size()}};
    ASSERT_EQ(writev(sender.get(), iov, 2), static_cast<ssize_t>(10 + frame.size()))
        << strerror(errno);
  }

  // The next frame received on the tap (not our own going out), or empty
  // after `timeout`.
  std::vector<uint8_t> ReceiveOne(absl::Duration timeout = absl::Seconds(10)) {
    std::vector<uint8_t> buffer(70000);
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      pollfd p{.fd = packet_.get(), .events = POLLIN, .revents = 0};
      if (poll(&p, 1, 200) <= 0) continue;
      sockaddr_ll from{};
      socklen_t from_len = sizeof(from);
      const ssize_t n = recvfrom(packet_.get(), buffer.data(), buffer.size(), MSG_DONTWAIT,
                                 reinterpret_cast<sockaddr*>(&from), &from_len);
      if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING) continue;
      buffer.resize(static_cast<size_t>(n));
      return buffer;
    }
    return {};
  }

  // Set by subclasses before SetUp: ask for VIRTIO_NET_F_CSUM; negotiate
  // the 10-byte header (neither VERSION_1 nor MRG_RXBUF); features to ask
  // for besides; features a FeatureProxy offers besides the server's (none:
  // no proxy); echo each frame's header.
  bool csum_ = false;
  bool legacy_header_ = false;
  uint64_t wanted_extra_ = 0;
  uint64_t offered_extra_ = 0;
  bool echo_header_ = false;
  LossSpec loss_to_backend_;
  LossSpec loss_to_guest_;
  char dir_[40] = {};
  std::unique_ptr<EchoDataPlane> plane_;
  std::unique_ptr<vu::Server> server_;
  std::atomic<bool> server_stop_{false};
  std::thread server_thread_;
  std::unique_ptr<Frontend> frontend_;
  std::unique_ptr<FeatureProxy> proxy_;
  std::unique_ptr<TapBridge> bridge_;
  UniqueFd stop_;
  std::thread bridge_thread_;
  absl::Status bridge_status_;
  UniqueFd packet_;
};

TEST_F(TapBridgeTest, FramesOfEverySizeRoundTrip) {
  std::vector<std::vector<uint8_t>> frames;
  uint32_t sequence = 0;
  for (size_t size : {60, 61, 1514, 4096, 9014, 32768, 65534}) {
    frames.push_back(Frame(size, sequence++));
  }
  EXPECT_EQ(RoundTrip(frames, 1), frames.size());
  StopBridge();
  EXPECT_TRUE(bridge_status_.ok()) << bridge_status_;
  EXPECT_GE(bridge_->stats().to_backend_frames, frames.size());
  EXPECT_GE(bridge_->stats().to_tap_frames, frames.size());
  EXPECT_EQ(bridge_->stats().tap_write_errors, 0u);
}

TEST_F(TapBridgeTest, ManyFramesThroughASmallRing) {
  std::vector<std::vector<uint8_t>> frames;
  for (uint32_t i = 0; i < 3000; ++i) frames.push_back(Frame(i % 3 == 0 ? 9014 : 1514, i));
  // A window of 200 fits the kernel's queues but not the 64-entry ring.
  EXPECT_EQ(RoundTrip(frames, 200), frames.size());
  StopBridge();
  EXPECT_TRUE(bridge_status_.ok()) << bridge_status_;
  EXPECT_GE(bridge_->stats().to_backend_frames, frames.size());
}

// The one's complement sum of `bytes` (16-bit big-endian words), folded.
uint16_t OnesComplementSum(absl::Span<const uint8_t> bytes) {
  uint32_t sum = 0;
  for (size_t i = 0; i < bytes.size(); i += 2) {
    sum += static_cast<uint32_t>(bytes[i] << 8 | (i + 1 < bytes.size() ? bytes[i + 1] : 0));
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

// A frame whose checksum the sending stack leaves partial, at 24 (from 20).
std::vector<uint8_t> PartialFrame() {
  std::vector<uint8_t> frame(301);  // Odd, so the sum pads.
  std::memset(frame.data(), 0xff, 6);
  frame[12] = kEtherType >> 8;
  frame[13] = kEtherType & 0xff;
  for (size_t i = 14; i < frame.size(); ++i) frame[i] = static_cast<uint8_t>(i * 13);
  frame[24] = 0x12;  // A pseudo-header sum's place: the field's seed.
  frame[25] = 0x34;
  return frame;
}

TEST_F(TapBridgeTest, WithoutChecksumOffloadTheKernelCompletesChecksums) {
  EXPECT_FALSE(bridge_->checksum_offload());
  const std::vector<uint8_t> frame = PartialFrame();
  SendPartial(frame, 20, 4);
  const std::vector<uint8_t> echoed = ReceiveOne();
  ASSERT_EQ(echoed.size(), frame.size());
  // Finished before it reached us: the field now holds the complement of
  // the sum over the covered bytes with the seed in it, so those bytes as
  // they are plus the seed (the pseudo-header's part) sum to 0xffff.
  EXPECT_NE(std::vector<uint8_t>(echoed.begin() + 24, echoed.begin() + 26),
            std::vector<uint8_t>({0x12, 0x34}));
  uint32_t sum = OnesComplementSum(absl::MakeConstSpan(echoed).subspan(20)) + 0x1234u;
  sum = (sum & 0xffff) + (sum >> 16);
  EXPECT_EQ(sum, 0xffffu);
  StopBridge();
  EXPECT_GE(bridge_->stats().to_backend_frames, 1u);
  EXPECT_EQ(bridge_->stats().to_backend_partial, 0u);
  EXPECT_EQ(bridge_->stats().tap_read_dropped, 0u);
}

class TapBridgeCsumTest : public TapBridgeTest {
 protected:
  TapBridgeCsumTest() { csum_ = true; }
};

TEST_F(TapBridgeCsumTest, PartialChecksumsPassToTheBackend) {
  EXPECT_TRUE(bridge_->checksum_offload());
  const std::vector<uint8_t> frame = PartialFrame();
  SendPartial(frame, 20, 4);
  // The echo returns the frame as the backend got it: checksum field
  // untouched, left to the device.
  EXPECT_EQ(ReceiveOne(), frame);
  // Complete frames still go through.
  std::vector<std::vector<uint8_t>> frames;
  for (uint32_t i = 0; i < 200; ++i) frames.push_back(Frame(i % 2 ? 9014 : 60, i));
  EXPECT_EQ(RoundTrip(frames, 50), frames.size());
  StopBridge();
  EXPECT_TRUE(bridge_status_.ok()) << bridge_status_;
  EXPECT_EQ(bridge_->stats().to_backend_partial, 1u);
  EXPECT_EQ(bridge_->stats().tap_read_dropped, 0u);
}

class TapBridgeLegacyHeaderTest : public TapBridgeTest {
 protected:
  TapBridgeLegacyHeaderTest() {
    csum_ = true;
    legacy_header_ = true;
  }
};

TEST_F(TapBridgeLegacyHeaderTest, FramesRoundTripWithTenByteHeaders) {
  std::vector<std::vector<uint8_t>> frames;
  uint32_t sequence = 0;
  for (size_t size : {60, 61, 1514, 9014, 65534}) frames.push_back(Frame(size, sequence++));
  EXPECT_EQ(RoundTrip(frames, 1), frames.size());
  const std::vector<uint8_t> frame = PartialFrame();
  SendPartial(frame, 20, 4);
  EXPECT_EQ(ReceiveOne(), frame);
  StopBridge();
  EXPECT_TRUE(bridge_status_.ok()) << bridge_status_;
  EXPECT_EQ(bridge_->stats().to_backend_partial, 1u);
  EXPECT_EQ(bridge_->stats().tap_read_dropped, 0u);
  EXPECT_EQ(bridge_->stats().tap_write_errors, 0u);
}

// The namespace's own sockets, sending out of the tap to a peer that is
// never there (the echo returns their segments to the tap, where the stack
// drops them: not for it). The tap gets 10.9.0.1/24; the peer 10.9.0.2 a
// permanent neighbour entry, so nothing waits for ARP.
constexpr char kLocal[] = "10.9.0.1";
constexpr char kPeer[] = "10.9.0.2";
constexpr uint16_t kPeerPort = 9;
constexpr int kMss = 1448;

sockaddr_in Ipv4(const char* address, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, address, &a.sin_addr);
  return a;
}

class TapBridgeOffloadTest : public TapBridgeTest {
 protected:
  TapBridgeOffloadTest() {
    wanted_extra_ = kOffloadFeatures;
    offered_extra_ = kGsoFeatures;
    echo_header_ = true;
  }

  void SetUp() override {
    TapBridgeTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    UniqueFd control(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(control.valid());
    ifreq req{};
    std::strcpy(req.ifr_name, kTap);
    const sockaddr_in local = Ipv4(kLocal, 0);
    std::memcpy(&req.ifr_addr, &local, sizeof(local));
    ASSERT_EQ(ioctl(control.get(), SIOCSIFADDR, &req), 0) << strerror(errno);
    const sockaddr_in mask = Ipv4("255.255.255.0", 0);
    std::memcpy(&req.ifr_netmask, &mask, sizeof(mask));
    ASSERT_EQ(ioctl(control.get(), SIOCSIFNETMASK, &req), 0) << strerror(errno);
    arpreq arp{};
    const sockaddr_in peer = Ipv4(kPeer, 0);
    std::memcpy(&arp.arp_pa, &peer, sizeof(peer));
    arp.arp_ha.sa_family = ARPHRD_ETHER;
    const uint8_t peer_mac[6] = {0x52, 0x54, 0, 9, 9, 9};
    std::memcpy(arp.arp_ha.sa_data, peer_mac, sizeof(peer_mac));
    arp.arp_flags = ATF_PERM | ATF_COM;
    std::strcpy(arp.arp_dev, kTap);
    ASSERT_EQ(ioctl(control.get(), SIOCSARP, &arp), 0) << strerror(errno);

    ip_.reset(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_IP)));
    ASSERT_TRUE(ip_.valid()) << strerror(errno);
    const int on = 1;
    ASSERT_EQ(setsockopt(ip_.get(), SOL_PACKET, PACKET_VNET_HDR, &on, sizeof(on)), 0);
    const int buffer = 32 << 20;
    setsockopt(ip_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof(buffer));
    sockaddr_ll address{};
    address.sll_family = AF_PACKET;
    address.sll_protocol = htons(ETH_P_IP);
    address.sll_ifindex = static_cast<int>(if_nametoindex(kTap));
    ASSERT_EQ(bind(ip_.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0);
  }

  // A TCP connection to the peer, established without a handshake
  // (TCP_REPAIR: sequence numbers, MSS and windows set by hand), so the
  // stack sends what is written to it as to a real peer: one window
  // (ten segments, the initial congestion window) goes out.
  UniqueFd RepairedTcp() {
    UniqueFd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_TRUE(s.valid());
    int value = TCP_REPAIR_ON;
    EXPECT_EQ(setsockopt(s.get(), SOL_TCP, TCP_REPAIR, &value, sizeof(value)), 0)
        << strerror(errno);
    for (int queue : {TCP_SEND_QUEUE, TCP_RECV_QUEUE}) {
      EXPECT_EQ(setsockopt(s.get(), SOL_TCP, TCP_REPAIR_QUEUE, &queue, sizeof(queue)), 0);
      const uint32_t seq = queue == TCP_SEND_QUEUE ? 1000 : 5000;
      EXPECT_EQ(setsockopt(s.get(), SOL_TCP, TCP_QUEUE_SEQ, &seq, sizeof(seq)), 0);
    }
    // The MSS the connection starts with; the repaired option only clamps.
    const int mss = kMss;
    EXPECT_EQ(setsockopt(s.get(), SOL_TCP, TCP_MAXSEG, &mss, sizeof(mss)), 0) << strerror(errno);
    const sockaddr_in local = Ipv4(kLocal, 40000);
    const sockaddr_in peer = Ipv4(kPeer, kPeerPort);
    EXPECT_EQ(bind(s.get(), reinterpret_cast<const sockaddr*>(&local), sizeof(local)), 0);
    EXPECT_EQ(connect(s.get(), reinterpret_cast<const sockaddr*>(&peer), sizeof(peer)), 0)
        << strerror(errno);
    const tcp_repair_opt mss_option{.opt_code = TCPOPT_MAXSEG, .opt_val = kMss};
    EXPECT_EQ(setsockopt(s.get(), SOL_TCP, TCP_REPAIR_OPTIONS, &mss_option, sizeof(mss_option)), 0)
        << strerror(errno);
    const tcp_repair_window window{
        .snd_wl1 = 5000, .snd_wnd = 65535, .max_window = 65535, .rcv_wnd = 65535, .rcv_wup = 5000};
    EXPECT_EQ(setsockopt(s.get(), SOL_TCP, TCP_REPAIR_WINDOW, &window, sizeof(window)), 0)
        << strerror(errno);
    value = TCP_REPAIR_OFF_NO_WP;
    EXPECT_EQ(setsockopt(s.get(), SOL_TCP, TCP_REPAIR, &value, sizeof(value)), 0);
    return s;
  }

  struct Received {
    VirtioNetHdr header;
    std::vector<uint8_t> frame;
  };
  // IPv4 frames the tap received (not ours going out) to the peer's `port`
  // with the protocol given, with their virtio-net headers, until `bytes`
  // of transport payload came or 5 s passed.
  std::vector<Received> ReceiveTo(uint8_t protocol, uint16_t port, size_t bytes) {
    std::vector<Received> out;
    std::vector<uint8_t> buffer(70000);
    size_t payload = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (payload < bytes && absl::Now() < deadline) {
      pollfd p{.fd = ip_.get(), .events = POLLIN, .revents = 0};
      if (poll(&p, 1, 200) <= 0) continue;
      sockaddr_ll from{};
      socklen_t from_len = sizeof(from);
      const ssize_t n = recvfrom(ip_.get(), buffer.data(), buffer.size(), MSG_DONTWAIT,
                                 reinterpret_cast<sockaddr*>(&from), &from_len);
      if (n < 10 || from.sll_pkttype == PACKET_OUTGOING) continue;
      Received r;
      std::memcpy(static_cast<void*>(&r.header), buffer.data(), 10);
      r.frame.assign(buffer.begin() + 10, buffer.begin() + n);
      const FrameInfo info = ClassifyFrame(r.frame);
      if (info.protocol != protocol || info.l4_header_size == 0) continue;
      const uint16_t dest =
          static_cast<uint16_t>(r.frame[info.l4_offset + 2] << 8 | r.frame[info.l4_offset + 3]);
      if (dest != port) continue;
      payload += info.payload_size;
      out.push_back(std::move(r));
    }
    return out;
  }

  UniqueFd ip_;
};

TEST_F(TapBridgeOffloadTest, TapOffloadsAreWhatWasNegotiated) {
  EXPECT_EQ(frontend_->features() & kOffloadFeatures, kOffloadFeatures);
  const unsigned uso = kTunFUso4 | kTunFUso6;
  EXPECT_EQ(bridge_->tun_offloads() & ~uso, kTunFCsum | kTunFTso4 | kTunFTso6 | kTunFTsoEcn);
  // Both or neither: a kernel before 6.2 takes none.
  EXPECT_TRUE((bridge_->tun_offloads() & uso) == uso || (bridge_->tun_offloads() & uso) == 0);
}

TEST_F(TapBridgeOffloadTest, TcpSegmentsCrossAsOneFrameEachWay) {
  UniqueFd tcp = RepairedTcp();
  const std::vector<uint8_t> data(14480, 0x5a);
  ASSERT_EQ(send(tcp.get(), data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  const std::vector<Received> got = ReceiveTo(6, kPeerPort, data.size());
  ASSERT_FALSE(got.empty());
  size_t payload = 0;
  for (const Received& r : got) payload += ClassifyFrame(r.frame).payload_size;
  EXPECT_EQ(payload, data.size());
  // Fewer frames than segments: the stack's TSO went through the tap to the
  // backend and back to the tap as segmentation-offloaded frames.
  EXPECT_LT(got.size(), data.size() / kMss);
  EXPECT_EQ(got[0].header.gso_type, kGsoTcpv4);
  EXPECT_EQ(got[0].header.gso_size, kMss);
  StopBridge();
  EXPECT_TRUE(bridge_status_.ok()) << bridge_status_;
  EXPECT_GE(bridge_->stats().to_backend_gso, 1u);
  EXPECT_GE(bridge_->stats().to_tap_gso, 1u);
  EXPECT_EQ(bridge_->stats().to_tap_gso, bridge_->stats().to_backend_gso);
  EXPECT_EQ(bridge_->stats().backend_bad_headers, 0u);
  EXPECT_EQ(bridge_->stats().tap_write_errors, 0u);
  EXPECT_EQ(bridge_->stats().tap_read_dropped, 0u);
}

TEST_F(TapBridgeOffloadTest, UdpSegmentsCrossAsOneFrameEachWay) {
  if ((bridge_->tun_offloads() & kTunFUso4) == 0) GTEST_SKIP() << "this kernel's taps take no USO";
  UniqueFd udp(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const int segment = 1400;
  ASSERT_EQ(setsockopt(udp.get(), SOL_UDP, UDP_SEGMENT, &segment, sizeof(segment)), 0);
  const std::vector<uint8_t> data(30000, 0xa5);
  const sockaddr_in peer = Ipv4(kPeer, kPeerPort + 1);
  ASSERT_EQ(sendto(udp.get(), data.data(), data.size(), 0, reinterpret_cast<const sockaddr*>(&peer),
                   sizeof(peer)),
            static_cast<ssize_t>(data.size()))
      << strerror(errno);
  const std::vector<Received> got = ReceiveTo(17, kPeerPort + 1, data.size());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].header.gso_type, kGsoUdpL4);
  EXPECT_EQ(got[0].header.gso_size, segment);
  EXPECT_EQ(ClassifyFrame(got[0].frame).payload_size, data.size());
  StopBridge();
  EXPECT_EQ(bridge_->stats().to_backend_gso, 1u);
  EXPECT_EQ(bridge_->stats().to_tap_gso, 1u);
}

// The backend offers segmentation to the guest, but the bridge takes only
// the host side: what the backend sends back segmentation-offloaded is
// refused (counted), not handed to the tap.
class TapBridgeHostOffloadsOnlyTest : public TapBridgeOffloadTest {
 protected:
  TapBridgeHostOffloadsOnlyTest() {
    wanted_extra_ = Bit(kVirtioNetFCsum) | Bit(kVirtioNetFGuestCsum) | kHostGsoFeatures;
  }
};

TEST_F(TapBridgeHostOffloadsOnlyTest, SegmentsFromTheBackendAreRefused) {
  EXPECT_EQ(frontend_->features() & kGuestGsoFeatures, 0u);
  UniqueFd tcp = RepairedTcp();
  const std::vector<uint8_t> data(14480, 0x5a);
  ASSERT_EQ(send(tcp.get(), data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (bridge_->stats().backend_bad_headers == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  StopBridge();
  EXPECT_GE(bridge_->stats().to_backend_gso, 1u);
  EXPECT_EQ(bridge_->stats().backend_bad_headers, bridge_->stats().to_backend_gso);
  EXPECT_EQ(bridge_->stats().to_tap_gso, 0u);
}

// No segmentation offload negotiated (today's vunet): the tap runs with
// checksum offload only, and the kernel cuts the stack's segments to the
// MSS before they reach us.
class TapBridgeNoOffloadTest : public TapBridgeOffloadTest {
 protected:
  TapBridgeNoOffloadTest() {
    wanted_extra_ = Bit(kVirtioNetFCsum) | Bit(kVirtioNetFGuestCsum);
    offered_extra_ = 0;
  }
};

TEST_F(TapBridgeNoOffloadTest, TheKernelSegments) {
  EXPECT_EQ(frontend_->features() & kGsoFeatures, 0u);
  EXPECT_EQ(bridge_->tun_offloads(), kTunFCsum);
  UniqueFd tcp = RepairedTcp();
  const std::vector<uint8_t> data(14480, 0x5a);
  ASSERT_EQ(send(tcp.get(), data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  const std::vector<Received> got = ReceiveTo(6, kPeerPort, data.size());
  EXPECT_EQ(got.size(), data.size() / kMss);
  for (const Received& r : got) {
    EXPECT_EQ(r.header.gso_type, kGsoNone);
    EXPECT_LE(ClassifyFrame(r.frame).payload_size, static_cast<uint32_t>(kMss));
  }
  StopBridge();
  EXPECT_EQ(bridge_->stats().to_backend_gso, 0u);
  EXPECT_EQ(bridge_->stats().tap_read_dropped, 0u);
}

// Loss injected both ways, and a frame held back until its timeout: the
// bridge's loop lets it go when it is due, with no other traffic to wake it.
class TapBridgeLossTest : public TapBridgeTest {
 protected:
  TapBridgeLossTest() {
    // Our frames only (EtherType 0x88b5), not the namespace's IPv6 chatter.
    loss_to_backend_ = *ParseLossSpec("nth:3,reorder:5:2", kFrameNonIp);
    loss_to_guest_ = *ParseLossSpec("nth:7,reorder:9:5", kFrameNonIp);
  }
};

TEST_F(TapBridgeLossTest, DropsAndReordersEachWay) {
  for (uint32_t i = 1; i <= 10; ++i) {
    const std::vector<uint8_t> frame = Frame(100, i);
    ASSERT_EQ(send(packet_.get(), frame.data(), frame.size(), 0),
              static_cast<ssize_t>(frame.size()));
    absl::SleepFor(absl::Milliseconds(5));  // One at a time through the bridge.
  }
  std::vector<uint32_t> got;
  while (true) {
    const std::vector<uint8_t> frame = ReceiveOne(absl::Milliseconds(500));
    if (frame.empty()) break;
    uint32_t sequence;
    std::memcpy(&sequence, frame.data() + 14, sizeof(sequence));
    got.push_back(sequence);
  }
  // To the backend: 3 lost, 5 after 6 and 7. To the guest (numbered again
  // as they come: 1 2 4 6 7 5 8 9 10): the 7th (8) lost, the 9th (10) held
  // for five that never come, so its timeout lets it go.
  EXPECT_EQ(got, (std::vector<uint32_t>{1, 2, 4, 6, 7, 5, 9, 10}));
  StopBridge();
  EXPECT_TRUE(bridge_status_.ok()) << bridge_status_;
  const LossCounters& to_backend = frontend_->loss_counters(Direction::kToBackend);
  EXPECT_EQ(to_backend.dropped, 1u);
  EXPECT_EQ(to_backend.released_by_count, 1u);
  const LossCounters& to_guest = frontend_->loss_counters(Direction::kToGuest);
  EXPECT_EQ(to_guest.dropped, 1u);
  EXPECT_EQ(to_guest.released_by_timeout, 1u);
}

TEST_F(TapBridgeTest, BackendLeavingEndsRunUnavailable) {
  std::vector<std::vector<uint8_t>> frames = {Frame(100, 0)};
  EXPECT_EQ(RoundTrip(frames, 1), 1u);
  StopServer();  // Drops the connection.
  bridge_thread_.join();
  EXPECT_EQ(bridge_status_.code(), absl::StatusCode::kUnavailable) << bridge_status_;
}

}  // namespace
}  // namespace vunet::vu_frontend
