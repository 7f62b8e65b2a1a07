// TapBridge against vu::Server with an echoing data plane, in a network
// namespace of the test's own: frames sent out of the tap (through a packet
// socket) cross the bridge, come back from the echo and are received on the
// tap again, byte for byte. Needs root (unshare, /dev/net/tun); skips
// otherwise.

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
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
#include "tools/vu_frontend/frontend.h"
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
    plane_ = std::make_unique<EchoDataPlane>(EchoDataPlane::Options{
        .mergeable = !legacy_header_, .net_header_size = legacy_header_ ? 10u : 12u});
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
    if (legacy_header_) {
      options.features &= ~(Bit(virtio::kVirtioFVersion1) | Bit(kVirtioNetFMrgRxbuf));
    }
    absl::StatusOr<std::unique_ptr<Frontend>> frontend = Frontend::Create(options);
    ASSERT_TRUE(frontend.ok()) << frontend.status();
    frontend_ = *std::move(frontend);
    ASSERT_TRUE(frontend_->Connect(server_options.socket_path, absl::Seconds(5)).ok());
    ASSERT_TRUE(frontend_->Negotiate().ok());
    ASSERT_TRUE(plane_->WaitRunning(5000));
    ASSERT_EQ(frontend_->has_feature(kVirtioNetFCsum), csum_);
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

  // The next frame received on the tap (not our own going out), or empty.
  std::vector<uint8_t> ReceiveOne() {
    std::vector<uint8_t> buffer(70000);
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
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
  // the 10-byte header (neither VERSION_1 nor MRG_RXBUF).
  bool csum_ = false;
  bool legacy_header_ = false;
  char dir_[40] = {};
  std::unique_ptr<EchoDataPlane> plane_;
  std::unique_ptr<vu::Server> server_;
  std::atomic<bool> server_stop_{false};
  std::thread server_thread_;
  std::unique_ptr<Frontend> frontend_;
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

TEST_F(TapBridgeTest, BackendLeavingEndsRunUnavailable) {
  std::vector<std::vector<uint8_t>> frames = {Frame(100, 0)};
  EXPECT_EQ(RoundTrip(frames, 1), 1u);
  StopServer();  // Drops the connection.
  bridge_thread_.join();
  EXPECT_EQ(bridge_status_.code(), absl::StatusCode::kUnavailable) << bridge_status_;
}

}  // namespace
}  // namespace vunet::vu_frontend
