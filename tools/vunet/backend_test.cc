#include "tools/vunet/backend.h"

#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/eventfd.h"
#include "base/pcap.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/flow/flow.h"
#include "net/packet/frame.h"
#include "net/translate/translator.h"
#include "net/udp/udp.h"
#include "tools/vu_frontend/frontend.h"

namespace vunet::tools {
namespace {

constexpr net::MacAddr kGatewayMac = {{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}};
constexpr net::MacAddr kGuestMac = {{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};

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

BackendOptions TestOptions(const std::string& path, bool one_off) {
  BackendOptions o;
  o.socket_path = path;
  o.one_off = one_off;
  // No translators unless a test asks for them: their protocols are dropped.
  o.path.tcp.reset();
  o.path.udp.reset();
  o.path.icmp.reset();
  o.path.arp = {.gateway_mac = kGatewayMac, .guest_addr = V4("10.0.2.15")};
  net::DhcpConfig dhcp;
  dhcp.gateway_mac = kGatewayMac;
  dhcp.gateway_addr = V4("10.0.2.2");
  dhcp.guest_addr = V4("10.0.2.15");
  o.path.dhcp = dhcp;
  net::NdpConfig ndp;
  ndp.gateway_mac = kGatewayMac;
  ndp.gateway_ll = V6("fe80::1");
  ndp.prefix = V6("fd00::");
  o.path.ndp = ndp;
  o.guest.guest_mac = kGuestMac;
  o.guest.gateway_mac = kGatewayMac;
  o.guest.addr4 = V4("10.0.2.15");
  o.guest.gateway4 = V4("10.0.2.2");
  o.guest.prefix_len4 = 24;
  o.forward = net::RulesFromConfig(o.guest, {});
  return o;
}

// A backend running on its own thread, and a frontend connected to it.
class BackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Short (a socket path is at most 107 bytes) and unique across
    // concurrent runs, which may share a pid in their own pid namespaces.
    char dir[] = "/tmp/vunet_backend_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/vunet.sock";
  }
  void TearDown() override {
    if (backend_ != nullptr) {
      backend_->Stop();
      Join();
    }
    backend_.reset();
    EXPECT_NE(access(path_.c_str(), F_OK), 0) << "the socket is left behind";
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }

  void Start(bool one_off = false, const std::string& pcap = "",
             std::optional<net::UdpTranslatorOptions> udp = std::nullopt) {
    BackendOptions options = TestOptions(path_, one_off);
    options.pcap_path = pcap;
    options.path.udp = std::move(udp);
    absl::StatusOr<std::unique_ptr<Backend>> b = Backend::Create(options);
    ASSERT_TRUE(b.ok()) << b.status();
    backend_ = std::move(*b);
    thread_ = std::thread([this] { run_status_ = backend_->Run(); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  std::unique_ptr<vu_frontend::Frontend> Connect() {
    absl::StatusOr<std::unique_ptr<vu_frontend::Frontend>> f = vu_frontend::Frontend::Create();
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) return nullptr;
    absl::Status s = (*f)->Connect(path_, absl::Seconds(5));
    EXPECT_TRUE(s.ok()) << s;
    s = (*f)->Negotiate();
    EXPECT_TRUE(s.ok()) << s;
    return std::move(*f);
  }

  // Frames until one of `ether_type` arrives (others are skipped); empty on
  // timeout.
  static std::vector<uint8_t> ReceiveOfType(vu_frontend::Frontend* f, uint16_t ether_type) {
    for (int i = 0; i < 10; ++i) {
      absl::StatusOr<std::vector<uint8_t>> frame = f->ReceiveFrame(absl::Seconds(5));
      if (!frame.ok()) return {};
      if (frame->size() >= 14 && ((*frame)[12] << 8 | (*frame)[13]) == ether_type) return *frame;
    }
    return {};
  }

  std::string dir_;
  std::string path_;
  std::unique_ptr<Backend> backend_;
  std::thread thread_;
  absl::Status run_status_;
};

std::vector<uint8_t> ArpRequest(const char* target) {
  std::vector<uint8_t> f(42, 0);
  std::memset(f.data(), 0xff, 6);
  std::memcpy(f.data() + 6, kGuestMac.bytes, 6);
  f[12] = 0x08;
  f[13] = 0x06;
  const uint8_t arp[] = {0, 1, 8, 0, 6, 4, 0, 1};
  std::memcpy(f.data() + 14, arp, sizeof(arp));
  std::memcpy(f.data() + 22, kGuestMac.bytes, 6);
  const in_addr spa = V4("10.0.2.15"), tpa = V4(target);
  std::memcpy(f.data() + 28, &spa, 4);
  std::memcpy(f.data() + 38, &tpa, 4);
  return f;
}

std::vector<uint8_t> Ipv4Frame(uint8_t protocol) {
  net::FrameSpec spec;
  spec.src_mac = kGuestMac;
  spec.dst_mac = kGatewayMac;
  spec.src4 = V4("10.0.2.15");
  spec.dst4 = V4("192.0.2.1");
  spec.protocol = protocol;
  spec.src_port = 40000;
  spec.dst_port = 80;
  spec.tcp_flags = net::kTcpSyn;
  const size_t headers = net::FrameHeadersLen(spec);
  std::vector<uint8_t> f(headers + 4, 'x');
  iovec iov{f.data(), f.size()};
  absl::StatusOr<size_t> n = net::BuildFrame(spec, {&iov, 1}, 0, 4);
  EXPECT_TRUE(n.ok()) << n.status();
  return f;
}

TEST_F(BackendTest, AnswersArpAdvertisesRouterAndDropsTcpUdp) {
  Start();
  std::unique_ptr<vu_frontend::Frontend> f = Connect();
  ASSERT_NE(f, nullptr);

  // Both queues running: an unsolicited router advertisement arrives.
  std::vector<uint8_t> ra = ReceiveOfType(f.get(), net::kEtherTypeIpv6);
  ASSERT_GE(ra.size(), 14u + 40 + 4);
  EXPECT_EQ(ra[14 + 6], IPPROTO_ICMPV6);
  EXPECT_EQ(ra[14 + 40], 134);  // Router advertisement.
  EXPECT_EQ(std::memcmp(ra.data() + 6, kGatewayMac.bytes, 6), 0);

  const std::vector<uint8_t> arp = ArpRequest("10.0.2.2");
  const std::vector<uint8_t> tcp = Ipv4Frame(IPPROTO_TCP);
  const std::vector<uint8_t> udp = Ipv4Frame(IPPROTO_UDP);
  const absl::Span<const uint8_t> frames[] = {arp, tcp, udp};
  absl::StatusOr<size_t> sent = f->SendFrames(frames);
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(*sent, 3u);

  std::vector<uint8_t> reply = ReceiveOfType(f.get(), net::kEtherTypeArp);
  ASSERT_GE(reply.size(), 42u);
  EXPECT_EQ(reply[21], 2);  // ARP reply.
  EXPECT_EQ(std::memcmp(reply.data() + 22, kGatewayMac.bytes, 6), 0);
  EXPECT_EQ(std::memcmp(reply.data(), kGuestMac.bytes, 6), 0);
  absl::StatusOr<size_t> back = f->WaitTx(absl::Seconds(5));
  EXPECT_TRUE(back.ok()) << back.status();

  backend_->Stop();
  Join();
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  EXPECT_EQ(backend_->dispatch_stats().tcp_dropped, 1u);
  EXPECT_EQ(backend_->dispatch_stats().udp_dropped, 1u);
  EXPECT_EQ(backend_->stats().broken, 0u);
  EXPECT_GE(backend_->stats().ra_sent, 1u);
  EXPECT_EQ(backend_->dispatch_stats().frames, 3u);
  EXPECT_GE(backend_->dispatch_stats().replies, 1u);
}

std::vector<uint8_t> UdpTo(const char* dst, uint16_t port, const std::string& payload) {
  net::FrameSpec spec;
  spec.src_mac = kGuestMac;
  spec.dst_mac = kGatewayMac;
  spec.src4 = V4("10.0.2.15");
  spec.dst4 = V4(dst);
  spec.protocol = IPPROTO_UDP;
  spec.src_port = 40000;
  spec.dst_port = port;
  const size_t headers = net::FrameHeadersLen(spec);
  std::vector<uint8_t> f(headers + payload.size());
  std::memcpy(f.data() + headers, payload.data(), payload.size());
  iovec iov{f.data(), f.size()};
  EXPECT_TRUE(net::BuildFrame(spec, {&iov, 1}, 0, payload.size()).ok());
  return f;
}

// The real frame path in the real loop: a guest datagram to the gateway
// reaches a host socket on the loopback (frames routed), its answer comes
// back to the guest (socket events, the receive queue), and the idle flow
// ends on its timer (flow timers routed); ARP and the datagram go through
// the one receive queue, at most one notification per loop iteration.
TEST_F(BackendTest, RoutesFramesSocketEventsTimersAndRxThroughTheFramePath) {
  UniqueFd host(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(host.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ASSERT_EQ(getsockname(host.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  timeval tv{5, 0};
  setsockopt(host.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

  net::UdpTranslatorOptions udp;
  udp.idle_timeout_ns = 200'000'000;
  Start(false, "", udp);
  std::unique_ptr<vu_frontend::Frontend> f = Connect();
  ASSERT_NE(f, nullptr);
  const std::vector<uint8_t> datagram = UdpTo("10.0.2.2", ntohs(a.sin_port), "ping");
  const std::vector<uint8_t> arp = ArpRequest("10.0.2.2");
  const absl::Span<const uint8_t> frames[] = {datagram, arp};
  ASSERT_TRUE(f->SendFrames(frames).ok());

  char buf[64];
  sockaddr_in from{};
  socklen_t from_len = sizeof(from);
  const ssize_t n =
      recvfrom(host.get(), buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &from_len);
  ASSERT_EQ(n, 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
  ASSERT_EQ(sendto(host.get(), "pong", 4, 0, reinterpret_cast<sockaddr*>(&from), from_len), 4);
  const std::vector<uint8_t> answer = ReceiveOfType(f.get(), net::kEtherTypeIpv4);
  ASSERT_GE(answer.size(), 14u + 20 + 8 + 4);
  EXPECT_EQ(std::string(answer.begin() + 42, answer.begin() + 46), "pong");

  for (int i = 0; i < 300 && backend_->flows()->size() != 0; ++i) usleep(10'000);
  backend_->Stop();
  Join();
  EXPECT_EQ(backend_->flows()->size(), 0u);  // The idle timer ended the flow.
  EXPECT_GE(backend_->stats().flow_timers, 1u);
  EXPECT_EQ(backend_->dispatch_stats().routed, 1u);
  EXPECT_EQ(backend_->path()->udp()->stats().tx_datagrams, 1u);
  EXPECT_EQ(backend_->path()->udp()->stats().rx_datagrams, 1u);
  // The router advertisement, the ARP reply and the datagram: each flush
  // published frames of one loop iteration, and never notified more often.
  EXPECT_GE(backend_->rx_stats().frames, 3u);
  EXPECT_LE(backend_->stats().rx_flushes, backend_->stats().rx_iterations * 2);
  EXPECT_LE(backend_->rx_stats().notifies, backend_->stats().rx_flushes);
}

// The frames of a capture file, in order; empty if the file is not one.
std::vector<std::vector<uint8_t>> CapturedFrames(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::vector<uint8_t>> frames;
  PcapFileHeader fh;
  if (data.size() < sizeof(fh)) return frames;
  std::memcpy(&fh, data.data(), sizeof(fh));
  if (fh.magic != kPcapMagicNanos || fh.linktype != kPcapLinkTypeEthernet) return frames;
  size_t pos = sizeof(fh);
  while (pos + sizeof(PcapRecordHeader) <= data.size()) {
    PcapRecordHeader h;
    std::memcpy(&h, data.data() + pos, sizeof(h));
    pos += sizeof(h);
    if (h.incl_len > data.size() - pos || h.incl_len != h.orig_len) return {};
    frames.emplace_back(data.begin() + pos, data.begin() + pos + h.incl_len);
    pos += h.incl_len;
  }
  return frames;
}

TEST_F(BackendTest, CapturesFramesBothWays) {
  const std::string pcap = dir_ + "/capture.pcap";
  Start(/*one_off=*/false, pcap);
  std::unique_ptr<vu_frontend::Frontend> f = Connect();
  ASSERT_NE(f, nullptr);
  const std::vector<uint8_t> ra = ReceiveOfType(f.get(), net::kEtherTypeIpv6);
  ASSERT_FALSE(ra.empty());

  const std::vector<uint8_t> arp = ArpRequest("10.0.2.2");
  const std::vector<uint8_t> tcp = Ipv4Frame(IPPROTO_TCP);
  const absl::Span<const uint8_t> frames[] = {arp, tcp};
  absl::StatusOr<size_t> sent = f->SendFrames(frames);
  ASSERT_TRUE(sent.ok()) << sent.status();
  const std::vector<uint8_t> reply = ReceiveOfType(f.get(), net::kEtherTypeArp);
  ASSERT_GE(reply.size(), 42u);
  absl::StatusOr<size_t> back = f->WaitTx(absl::Seconds(5));
  EXPECT_TRUE(back.ok()) << back.status();
  backend_->Stop();
  Join();

  // In the order they crossed: our advertisement, the guest's ARP request,
  // our reply (unpadded: the padding is the receive path's), the TCP frame.
  const std::vector<std::vector<uint8_t>> captured = CapturedFrames(pcap);
  ASSERT_EQ(captured.size(), 4u);
  EXPECT_EQ(captured[0], ra);
  EXPECT_EQ(captured[1], arp);
  EXPECT_EQ(captured[2], std::vector<uint8_t>(reply.begin(), reply.begin() + 42));
  EXPECT_EQ(captured[3], tcp);
  ASSERT_NE(backend_->pcap(), nullptr);
  EXPECT_EQ(backend_->pcap()->stats().frames, 4u);
  EXPECT_EQ(backend_->pcap()->stats().errors, 0u);
  struct stat st;
  ASSERT_EQ(stat(pcap.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 077, 0u);
  unlink(pcap.c_str());
}

TEST_F(BackendTest, NoCaptureWithoutPcapAndABadPathFailsCreate) {
  EXPECT_EQ(Backend::Create(TestOptions(path_, false)).value()->pcap(), nullptr);
  BackendOptions options = TestOptions(path_, false);
  options.pcap_path = dir_ + "/no/such/dir.pcap";
  absl::StatusOr<std::unique_ptr<Backend>> b = Backend::Create(options);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("--pcap"), std::string::npos) << b.status();
}

TEST_F(BackendTest, ServesOneFrontendAfterAnother) {
  Start();
  for (int i = 0; i < 3; ++i) {
    std::unique_ptr<vu_frontend::Frontend> f = Connect();
    ASSERT_NE(f, nullptr);
    const std::vector<uint8_t> arp = ArpRequest("10.0.2.2");
    const absl::Span<const uint8_t> frames[] = {arp};
    ASSERT_TRUE(f->SendFrames(frames).ok());
    EXPECT_FALSE(ReceiveOfType(f.get(), net::kEtherTypeArp).empty()) << "connection " << i;
    f->Disconnect();
  }
}

TEST_F(BackendTest, OneOffReturnsWhenTheFrontendLeaves) {
  Start(/*one_off=*/true);
  std::unique_ptr<vu_frontend::Frontend> f = Connect();
  ASSERT_NE(f, nullptr);
  f->Disconnect();
  Join();
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  EXPECT_EQ(backend_->stop_signal(), 0);
}

TEST_F(BackendTest, SigtermStopsTheLoop) {
  Start();
  std::unique_ptr<vu_frontend::Frontend> f = Connect();
  ASSERT_NE(f, nullptr);
  // Blocked in this thread and the loop's (Create did it), so it waits for
  // the signalfd.
  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  Join();
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  EXPECT_EQ(backend_->stop_signal(), SIGTERM);
}

TEST_F(BackendTest, BacksOffWhenAcceptRunsOutOfFds) {
  Start();
  std::unique_ptr<vu_frontend::Frontend> served = Connect();
  ASSERT_NE(served, nullptr);
  // A second frontend, whose socket exists before fds run out.
  UniqueFd client(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(client.valid());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);

  // No fd left: the lowest free number becomes the limit.
  const int lowest_free = dup(0);
  ASSERT_GE(lowest_free, 0);
  close(lowest_free);
  rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(lowest_free);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  const int rc = connect(client.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int connect_errno = errno;
  usleep(350'000);  // accept fails with EMFILE meanwhile.
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  ASSERT_EQ(rc, 0) << strerror(connect_errno);

  // Accepting again: the second frontend is turned away (closed at once)...
  pollfd p{.fd = client.get(), .events = POLLIN, .revents = 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1);
  char byte;
  EXPECT_EQ(read(client.get(), &byte, 1), 0);
  // ...and the first is still served.
  const std::vector<uint8_t> arp = ArpRequest("10.0.2.2");
  const absl::Span<const uint8_t> frames[] = {arp};
  ASSERT_TRUE(served->SendFrames(frames).ok());
  EXPECT_FALSE(ReceiveOfType(served.get(), net::kEtherTypeArp).empty());

  backend_->Stop();
  Join();
  // A pause of 100 ms per failure, not a spin.
  EXPECT_GE(backend_->stats().accept_backoffs, 1u);
  EXPECT_LE(backend_->stats().accept_backoffs, 5u);
}

// --fd: a listening socket made by whoever started vunet is served; the
// socket file is theirs, and stays.
TEST_F(BackendTest, ServesAnInheritedListeningSocket) {
  UniqueFd listening(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(listening.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listening.get(), 4), 0);
  BackendOptions options = TestOptions("", /*one_off=*/true);
  options.inherited_fd = listening.release();
  absl::StatusOr<std::unique_ptr<Backend>> b = Backend::Create(options);
  ASSERT_TRUE(b.ok()) << b.status();
  backend_ = std::move(*b);
  thread_ = std::thread([this] { run_status_ = backend_->Run(); });
  std::unique_ptr<vu_frontend::Frontend> f = Connect();
  ASSERT_NE(f, nullptr);
  const std::vector<uint8_t> arp = ArpRequest("10.0.2.2");
  const absl::Span<const uint8_t> frames[] = {arp};
  ASSERT_TRUE(f->SendFrames(frames).ok());
  EXPECT_FALSE(ReceiveOfType(f.get(), net::kEtherTypeArp).empty());
  f->Disconnect();
  Join();  // One-off: the frontend left.
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  backend_.reset();
  EXPECT_EQ(access(path_.c_str(), F_OK), 0);
  unlink(path_.c_str());
}

TEST_F(BackendTest, RefusesALiveSocket) {
  Start();
  absl::StatusOr<std::unique_ptr<Backend>> second = Backend::Create(TestOptions(path_, false));
  EXPECT_FALSE(second.ok());
}

// Live migration between two backends in this process, each with its own
// frontend playing QEMU: the source's state saved through its pipe, the
// destination's loaded through another, as QEMU 10 moves a vhost-user net
// device's back-end state.
class BackendMigrationTest : public BackendTest {
 protected:
  void SetUp() override {
    BackendTest::SetUp();
    host_.reset(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(host_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    socklen_t len = sizeof(a);
    ASSERT_EQ(getsockname(host_.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    host_port_ = ntohs(a.sin_port);
    timeval tv{5, 0};
    setsockopt(host_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  void TearDown() override {
    if (dest_ != nullptr) {
      dest_->Stop();
      if (dest_thread_.joinable()) dest_thread_.join();
      dest_.reset();
    }
    BackendTest::TearDown();
  }

  BackendOptions Options(const std::string& path, bool linger) {
    BackendOptions o = TestOptions(path, false);
    o.path.udp = net::UdpTranslatorOptions();
    o.migrate_linger = linger;
    return o;
  }
  void StartSource(bool linger) {
    absl::StatusOr<std::unique_ptr<Backend>> b = Backend::Create(Options(path_, linger));
    ASSERT_TRUE(b.ok()) << b.status();
    backend_ = std::move(*b);
    thread_ = std::thread([this] { run_status_ = backend_->Run(); });
  }
  void StartDestination() {
    absl::StatusOr<std::unique_ptr<Backend>> b =
        Backend::Create(Options(dir_ + "/dest.sock", true));
    ASSERT_TRUE(b.ok()) << b.status();
    dest_ = std::move(*b);
    dest_thread_ = std::thread([this] { dest_status_ = dest_->Run(); });
  }

  // A frontend that negotiates the device state feature and, unless
  // `rings`, leaves the rings for later (a destination before the load).
  std::unique_ptr<vu_frontend::Frontend> Frontend(const std::string& path, bool rings) {
    vu_frontend::FrontendOptions o;
    o.protocol_features |= uint64_t{1} << vu::kProtocolFDeviceState;
    std::unique_ptr<vu_frontend::Frontend> f = vu_frontend::Frontend::Create(o).value();
    EXPECT_TRUE(f->Connect(path, absl::Seconds(5)).ok());
    if (rings) {
      EXPECT_TRUE(f->Negotiate().ok());
    } else {
      const uint64_t offered = f->GetFeatures().value();
      EXPECT_TRUE(
          f->SetProtocolFeatures(f->GetProtocolFeatures().value() & o.protocol_features).ok());
      EXPECT_TRUE(f->SetOwner().ok());
      EXPECT_TRUE(f->SetFeatures(offered & o.features).ok());
    }
    return f;
  }
  static void StartRings(vu_frontend::Frontend* f) {
    ASSERT_TRUE(f->SetMemTable().ok());
    for (uint32_t i = 0; i < 2; ++i) {
      ASSERT_TRUE(f->SetUpRing(i).ok());
      ASSERT_TRUE(f->EnableRing(i, true).ok());
    }
  }
  static void StopRings(vu_frontend::Frontend* f) {
    ASSERT_TRUE(f->GetVringBase(0).ok());
    ASSERT_TRUE(f->GetVringBase(1).ok());
  }

  // The guest sends `payload` to the host socket; returns the host side's
  // source port (the flow's socket).
  uint16_t GuestSends(vu_frontend::Frontend* f, const std::string& payload) {
    const std::vector<uint8_t> d = UdpTo("10.0.2.2", host_port_, payload);
    const absl::Span<const uint8_t> frames[] = {d};
    EXPECT_TRUE(f->SendFrames(frames).ok());
    char buf[64];
    sockaddr_in from{};
    socklen_t len = sizeof(from);
    const ssize_t n =
        recvfrom(host_.get(), buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len);
    EXPECT_EQ(std::string(buf, std::max<ssize_t>(n, 0)), payload);
    return ntohs(from.sin_port);
  }
  // The host answers to `port`; true if the guest behind `f` gets it.
  bool GuestGets(vu_frontend::Frontend* f, uint16_t port, const std::string& payload) {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = htons(port);
    EXPECT_EQ(sendto(host_.get(), payload.data(), payload.size(), 0,
                     reinterpret_cast<sockaddr*>(&to), sizeof(to)),
              static_cast<ssize_t>(payload.size()));
    for (int i = 0; i < 10; ++i) {
      absl::StatusOr<std::vector<uint8_t>> frame = f->ReceiveFrame(absl::Seconds(2));
      if (!frame.ok()) return false;
      // (Short frames are padded to 60 bytes.)
      if (frame->size() >= 42 + payload.size() &&
          std::string(frame->begin() + 42, frame->begin() + 42 + payload.size()) == payload) {
        return true;
      }
    }
    return false;
  }

  UniqueFd host_;
  uint16_t host_port_ = 0;
  std::unique_ptr<Backend> dest_;
  std::thread dest_thread_;
  absl::Status dest_status_;
};

TEST_F(BackendMigrationTest, AUdpFlowMovesWithItsPort) {
  StartSource(/*linger=*/false);
  std::unique_ptr<vu_frontend::Frontend> fa = Frontend(path_, true);
  const uint16_t port = GuestSends(fa.get(), "one");
  ASSERT_NE(port, 0);
  StopRings(fa.get());
  absl::StatusOr<std::string> state = fa->SaveDeviceState();
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(backend_->stats().states_saved, 1u);
  EXPECT_EQ(backend_->flows()->size(), 0u) << "not lingering: the source let its flow go";

  StartDestination();
  std::unique_ptr<vu_frontend::Frontend> fb = Frontend(dir_ + "/dest.sock", false);
  ASSERT_TRUE(fb->LoadDeviceState(*state).ok());
  StartRings(fb.get());
  EXPECT_EQ(dest_->stats().states_loaded, 1u);
  EXPECT_EQ(dest_->stats().state_bytes, state->size());
  // The host's answer to the old port reaches the guest at the destination,
  // and the guest's next datagram leaves from that port.
  EXPECT_TRUE(GuestGets(fb.get(), port, "two"));
  EXPECT_EQ(GuestSends(fb.get(), "three"), port);
}

TEST_F(BackendMigrationTest, ACorruptStateFailsTheCheckAndLoadsNothing) {
  StartSource(true);
  std::unique_ptr<vu_frontend::Frontend> fa = Frontend(path_, true);
  GuestSends(fa.get(), "one");
  StopRings(fa.get());
  std::string state = fa->SaveDeviceState().value();
  StartDestination();
  for (const bool truncate : {true, false}) {
    std::string bad = state;
    if (truncate) {
      bad.resize(bad.size() - 5);
    } else {
      bad[bad.size() / 2] ^= 0x10;
    }
    std::unique_ptr<vu_frontend::Frontend> fb = Frontend(dir_ + "/dest.sock", false);
    const absl::Status s = fb->LoadDeviceState(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_EQ(dest_->flows()->size(), 0u);
    fb->Disconnect();
  }
  EXPECT_EQ(dest_->stats().loads_failed, 2u);
  EXPECT_EQ(dest_->stats().states_loaded, 0u);
}

// The migration failed after the save: the source's guest runs again (its
// rings restart) and its flow, kept meanwhile, goes on.
TEST_F(BackendMigrationTest, TheSourceResumesWhenItsGuestRunsAgain) {
  StartSource(/*linger=*/true);
  std::unique_ptr<vu_frontend::Frontend> fa = Frontend(path_, true);
  const uint16_t port = GuestSends(fa.get(), "one");
  StopRings(fa.get());
  ASSERT_TRUE(fa->SaveDeviceState().ok());
  EXPECT_EQ(backend_->flows()->size(), 1u) << "lingering";
  StartRings(fa.get());
  EXPECT_TRUE(GuestGets(fa.get(), port, "back"));
  EXPECT_EQ(GuestSends(fa.get(), "again"), port);
}

// A frontend that asks out of turn: a check with no transfer, a transfer
// while the rings run.
TEST_F(BackendMigrationTest, TransfersOutOfTurnAreRefused) {
  StartSource(true);
  std::unique_ptr<vu_frontend::Frontend> fa = Frontend(path_, true);
  EXPECT_EQ(fa->SaveDeviceState().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(fa->SendRequest(vu::Request::kCheckDeviceState, {}).ok());
  absl::StatusOr<vu::Message> r = fa->ReadReply();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->PayloadAs<uint64_t>().value(), 1u);
  EXPECT_EQ(backend_->stats().states_saved, 0u);
  GuestSends(fa.get(), "still served");
}

}  // namespace
}  // namespace vunet::tools
