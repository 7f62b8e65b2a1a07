#include "net/repair/tcp_socket_image.h"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/repair/testing/repair_testing.h"

namespace vunet::net {
namespace {

using ::vunet::net::testing::ConnectOverLoopback;
using ::vunet::net::testing::FirstMismatch;
using ::vunet::net::testing::FreezeReceiver;
using ::vunet::net::testing::LoopbackCapture;
using ::vunet::net::testing::LoopbackPair;
using ::vunet::net::testing::RepairModeOf;
using ::vunet::net::testing::SetRepairMode;
using ::vunet::net::testing::StreamBytes;
using ::vunet::net::testing::UnfreezeReceiver;

constexpr uint32_t kOursStream = 1;  // What the migrated side sends.
constexpr uint32_t kPeerStream = 2;  // What its peer sends.
constexpr size_t kMiB = size_t{1} << 20;

int SendQueueBytes(int fd) {
  int bytes = -1;
  ioctl(fd, SIOCOUTQ, &bytes);
  return bytes;
}

uint8_t TcpState(int fd) {
  tcp_info info{};
  socklen_t len = sizeof(info);
  getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len);
  return info.tcpi_state;
}

// Waits until `done` or `timeout`; true if done.
template <typename Done>
bool WaitUntil(Done done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

// One direction of a connection: `stream` bytes written by `from` and read
// (and checked) by `to`, up to `target`.
struct Flow {
  int from = -1;
  int to = -1;
  uint32_t stream = 0;
  uint64_t written = 0;
  uint64_t read = 0;
  uint64_t target = 0;
  bool eof = false;  // `to` read the end of the stream.
};

// Writes what the socket takes now.
void WriteSome(Flow& f) {
  while (f.written < f.target) {
    const size_t chunk = std::min<uint64_t>(f.target - f.written, 256 * 1024);
    const std::vector<uint8_t> bytes = StreamBytes(f.stream, f.written, chunk);
    const ssize_t n = send(f.from, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) {
      ASSERT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK) << strerror(errno);
      return;
    }
    f.written += static_cast<uint64_t>(n);
  }
}

// Reads what is there and checks it against the stream.
void ReadSome(Flow& f, size_t at_most = SIZE_MAX) {
  std::vector<uint8_t> buffer(256 * 1024);
  while (at_most > 0) {
    const ssize_t n = recv(f.to, buffer.data(), std::min(buffer.size(), at_most), MSG_DONTWAIT);
    if (n == 0) {
      f.eof = true;
      return;
    }
    if (n < 0) {
      ASSERT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK) << strerror(errno);
      return;
    }
    ASSERT_EQ(FirstMismatch(f.stream, f.read, buffer.data(), static_cast<size_t>(n)), -1)
        << "at offset " << f.read << " of stream " << f.stream;
    f.read += static_cast<uint64_t>(n);
    at_most -= static_cast<size_t>(n);
  }
}

// Moves both flows until each has been read up to its target (and, with
// `until_eof`, past it to the end of the stream).
void Exchange(Flow& a, Flow& b, bool until_eof = false) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  auto done = [&](const Flow& f) { return f.read == f.target && (!until_eof || f.eof); };
  while (!done(a) || !done(b)) {
    ASSERT_LT(absl::Now(), deadline)
        << "stalled: " << a.read << "/" << a.target << " and " << b.read << "/" << b.target;
    for (Flow* f : {&a, &b}) {
      WriteSome(*f);
      ReadSome(*f);
      ASSERT_LE(f->read, f->target);
    }
    pollfd fds[2] = {{a.to, POLLIN, 0}, {b.to, POLLIN, 0}};
    poll(fds, 2, 5);
  }
}

// Puts `image` into a new socket as the destination does, with repair mode
// set directly; FinishTcpRestore left to the caller.
absl::StatusOr<UniqueFd> Restore(const TcpSocketImage& image) {
  absl::StatusOr<UniqueFd> fd = NewTcpSocketForRestore(image);
  if (!fd.ok()) return fd.status();
  if (absl::Status s = SetRepairMode(fd->get(), TCP_REPAIR_ON); !s.ok()) return s;
  if (absl::Status s = RestoreTcpSocket(fd->get(), image); !s.ok()) return s;
  if (absl::Status s = SetRepairMode(fd->get(), TCP_REPAIR_OFF); !s.ok()) return s;
  return fd;
}

// Sends image.unsent through FinishTcpRestore while `peer_flow` reads, until
// all of it is taken; returns how many calls that took.
int FinishWhileReading(int fd, const TcpSocketImage& image, Flow& peer_flow) {
  size_t done = 0;
  int calls = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (;;) {
    absl::StatusOr<size_t> finished = FinishTcpRestore(fd, image, done);
    ++calls;
    EXPECT_TRUE(finished.ok()) << finished.status();
    if (!finished.ok()) return calls;
    done = *finished;
    if (done == image.unsent.size()) return calls;
    EXPECT_LT(absl::Now(), deadline) << done << " of " << image.unsent.size();
    if (absl::Now() > deadline) return calls;
    ReadSome(peer_flow);
    pollfd p{fd, POLLOUT, 0};
    poll(&p, 1, 5);
  }
}

class TcpSocketImageTest : public ::testing::TestWithParam<int> {
 protected:
  int family() const { return GetParam(); }
};

// The whole migration with data everywhere it can be: the peer's bytes
// unread in our receive queue, ours unread in the peer's, ours sent and not
// acknowledged (the peer drops segments meanwhile), ours not yet sent.
TEST_P(TcpSocketImageTest, MigratesWithDataQueuedBothWays) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback(
      {.family = family(), .ours_rcvbuf = 8 * int{kMiB}, .ours_sndbuf = 16 * int{kMiB}});
  ASSERT_TRUE(pair.ok()) << pair.status();
  const int ours = pair->ours.get(), peer = pair->peer.get();

  Flow to_ours{.from = peer, .to = ours, .stream = kPeerStream, .target = kMiB};
  Flow to_peer{.from = ours, .to = peer, .stream = kOursStream, .target = 64 * 1024};
  WriteSome(to_ours);
  WriteSome(to_peer);
  ASSERT_EQ(to_ours.written, to_ours.target);
  ASSERT_EQ(to_peer.written, to_peer.target);
  ASSERT_TRUE(WaitUntil([&] { return SendQueueBytes(peer) == 0 && SendQueueBytes(ours) == 0; }));
  // From here the peer drops what reaches it: ours stays unacknowledged.
  ASSERT_TRUE(FreezeReceiver(peer).ok());
  to_peer.target += 3 * kMiB;
  WriteSome(to_peer);
  ASSERT_EQ(to_peer.written, to_peer.target);
  absl::SleepFor(absl::Milliseconds(20));

  ASSERT_TRUE(SetRepairMode(ours, TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(ours);
  ASSERT_TRUE(image.ok()) << image.status();
  printf("%s\n", image->ToString().c_str());
  EXPECT_EQ(image->family, family());
  EXPECT_EQ(image->received, StreamBytes(kPeerStream, 0, kMiB));
  EXPECT_GT(image->unacked.size(), 0u);
  EXPECT_GT(image->unsent.size(), 0u);
  const size_t queued = image->unacked.size() + image->unsent.size();
  ASSERT_LE(queued, to_peer.written);
  std::vector<uint8_t> send_queue = image->unacked;
  send_queue.insert(send_queue.end(), image->unsent.begin(), image->unsent.end());
  EXPECT_EQ(send_queue, StreamBytes(kOursStream, to_peer.written - queued, queued));
  EXPECT_FALSE(image->fin_sent);
  EXPECT_FALSE(image->peer_fin);
  EXPECT_TRUE(image->window_scaling);
  EXPECT_TRUE(image->sack_permitted);
  EXPECT_TRUE(image->timestamps);
  EXPECT_GT(image->mss, 0u);
  // Dumping reads without consuming: a second dump sees the same.
  absl::StatusOr<TcpSocketImage> again = DumpTcpSocket(ours);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->received, image->received);
  EXPECT_EQ(again->recv_seq, image->recv_seq);

  absl::StatusOr<LoopbackCapture> capture = LoopbackCapture::Open();
  ASSERT_TRUE(capture.ok()) << capture.status();
  pair->ours.reset();  // Closed in repair mode.
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(capture->SawFinOrRstFrom(image->local.port));
  ASSERT_TRUE(UnfreezeReceiver(peer).ok());
  int error = -1;
  socklen_t len = sizeof(error);
  ASSERT_EQ(getsockopt(peer, SOL_SOCKET, SO_ERROR, &error, &len), 0);
  EXPECT_EQ(error, 0);

  absl::StatusOr<UniqueFd> restored = Restore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  to_ours.to = restored->get();
  to_peer.from = restored->get();
  FinishWhileReading(restored->get(), *image, to_peer);
  // Everything queued before arrives once, in order; then more both ways.
  Exchange(to_ours, to_peer);
  to_ours.target += 512 * 1024;
  to_peer.target += 512 * 1024;
  Exchange(to_ours, to_peer);
  ASSERT_EQ(shutdown(restored->get(), SHUT_WR), 0);
  Exchange(to_ours, to_peer, /*until_eof=*/false);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!to_peer.eof && absl::Now() < deadline) {
    ReadSome(to_peer);
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_TRUE(to_peer.eof);
  EXPECT_EQ(to_peer.read, to_peer.target);
}

// Both windows closed: neither side reads until both receive queues are
// full and both senders probe a zero window; the receiving side is frozen
// (as the source is) while it is dumped, and the restored socket is read at
// once. The peer's probes must find the window open again, and ours must
// see the peer's, quickly: not after a probe timer backed off for minutes.
TEST_P(TcpSocketImageTest, MigratesWithBothWindowsClosed) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = family(),
                                                           .ours_rcvbuf = 256 * 1024,
                                                           .ours_sndbuf = 512 * 1024,
                                                           .peer_rcvbuf = 256 * 1024});
  ASSERT_TRUE(pair.ok()) << pair.status();
  const int ours = pair->ours.get(), peer = pair->peer.get();

  Flow to_ours{.from = peer, .to = ours, .stream = kPeerStream, .target = 64 * kMiB};
  Flow to_peer{.from = ours, .to = peer, .stream = kOursStream, .target = 64 * kMiB};
  // Until neither side's send buffer takes more.
  for (int i = 0; i < 50; ++i) {
    WriteSome(to_ours);
    WriteSome(to_peer);
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_LT(to_ours.written, to_ours.target);
  ASSERT_LT(to_peer.written, to_peer.target);
  ASSERT_TRUE(FreezeReceiver(ours).ok());
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(SetRepairMode(ours, TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(ours);
  ASSERT_TRUE(image.ok()) << image.status();
  printf("%s\n", image->ToString().c_str());
  // Closed in repair mode, restored at once: the peer probes our closed
  // window, and a probe that found no socket would be answered with a reset.
  pair->ours.reset();

  absl::StatusOr<UniqueFd> restored = Restore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  to_ours.to = restored->get();
  to_peer.from = restored->get();
  {
    tcp_info info{};
    socklen_t len = sizeof(info);
    getsockopt(restored->get(), IPPROTO_TCP, TCP_INFO, &info, &len);
    printf("restored: snd_mss %u rcv_mss %u advmss %u\n", info.tcpi_snd_mss, info.tcpi_rcv_mss,
           info.tcpi_advmss);
    // The segments are the connection's size, not the 536-byte default's.
    EXPECT_GT(info.tcpi_snd_mss, 16000u);
  }
  const absl::Time start = absl::Now();
  FinishWhileReading(restored->get(), *image, to_peer);
  to_ours.target = to_ours.written + kMiB;
  to_peer.target = to_peer.written + kMiB;
  Exchange(to_ours, to_peer);
  const absl::Duration took = absl::Now() - start;
  printf("both queues drained and 1 MiB more each way in %s\n", absl::FormatDuration(took).c_str());
  EXPECT_LT(took, absl::Seconds(2));
}

// Much in flight: a peer that offered a large window, then stopped
// acknowledging. The restored socket takes all of it back into its send queue
// in repair mode, however small its send buffer starts.
TEST_P(TcpSocketImageTest, MigratesWithMuchDataUnacknowledged) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback(
      {.family = family(), .ours_sndbuf = 8 * int{kMiB}, .peer_rcvbuf = 8 * int{kMiB}});
  ASSERT_TRUE(pair.ok()) << pair.status();
  // Grow the congestion window first: a few MiB read by the peer.
  Flow to_peer{.from = pair->ours.get(), .to = pair->peer.get(), .stream = 20, .target = 4 * kMiB};
  Flow none{.from = pair->peer.get(), .to = pair->ours.get(), .stream = 21};
  Exchange(none, to_peer);
  ASSERT_TRUE(FreezeReceiver(pair->peer.get()).ok());
  to_peer.target += 2 * kMiB;
  WriteSome(to_peer);
  absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(pair->ours.get());
  ASSERT_TRUE(image.ok()) << image.status();
  printf("%s\n", image->ToString().c_str());
  EXPECT_GT(image->unacked.size(), 256u * 1024);
  // The restored socket's send buffer must grow to hold them, up to twice
  // net.core.wmem_max.
  std::ifstream wmem_max_file("/proc/sys/net/core/wmem_max");
  size_t wmem_max = 0;
  wmem_max_file >> wmem_max;
  if (2 * wmem_max < 3 * image->unacked.size()) {
    GTEST_SKIP() << "net.core.wmem_max " << wmem_max << " is too small to restore "
                 << image->unacked.size() << " unacknowledged bytes";
  }
  pair->ours.reset();
  ASSERT_TRUE(UnfreezeReceiver(pair->peer.get()).ok());

  absl::StatusOr<UniqueFd> restored = Restore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  FinishWhileReading(restored->get(), *image, to_peer);
  to_peer.from = restored->get();
  none.to = restored->get();
  Exchange(none, to_peer);
}

// Closing a socket in repair mode sends nothing: the peer sees neither a FIN
// nor a reset, on the wire or at its socket.
TEST_P(TcpSocketImageTest, CloseInRepairModeSendsNothing) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = family()});
  ASSERT_TRUE(pair.ok()) << pair.status();
  Flow to_ours{.from = pair->peer.get(), .to = pair->ours.get(), .stream = 2, .target = 1000};
  WriteSome(to_ours);
  ASSERT_TRUE(WaitUntil([&] { return SendQueueBytes(pair->peer.get()) == 0; }));
  absl::StatusOr<LoopbackCapture> capture = LoopbackCapture::Open();
  ASSERT_TRUE(capture.ok()) << capture.status();
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  ASSERT_EQ(getsockname(pair->ours.get(), reinterpret_cast<sockaddr*>(&ss), &len), 0);
  const uint16_t port = ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);  // Same offset in v6.

  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  pair->ours.reset();  // With 1000 bytes unread, a normal close would reset.
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(capture->SawFinOrRstFrom(port));
  char byte;
  EXPECT_EQ(recv(pair->peer.get(), &byte, 1, MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, EAGAIN);
  int error = -1;
  len = sizeof(error);
  ASSERT_EQ(getsockopt(pair->peer.get(), SOL_SOCKET, SO_ERROR, &error, &len), 0);
  EXPECT_EQ(error, 0);
  EXPECT_EQ(TcpState(pair->peer.get()), TCP_ESTABLISHED);

  // The capture does see a FIN when one is sent: the peer's, closing normally.
  len = sizeof(ss);
  ASSERT_EQ(getsockname(pair->peer.get(), reinterpret_cast<sockaddr*>(&ss), &len), 0);
  const uint16_t peer_port = ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  pair->peer.reset();
  ASSERT_TRUE(WaitUntil([&] { return capture->SawFinOrRstFrom(peer_port); }));
}

// The fact a same-host migration is ordered by: while a socket holds the
// connection, connect() in repair mode with the same addresses and ports
// fails with EADDRNOTAVAIL (bind succeeds: repair mode forces reuse), in
// repair mode or not; once that socket is closed, the restore succeeds.
TEST_P(TcpSocketImageTest, RestoreWhileTheSourceSocketLivesFailsWithEaddrnotavailThenWorks) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = family()});
  ASSERT_TRUE(pair.ok()) << pair.status();
  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(pair->ours.get());
  ASSERT_TRUE(image.ok()) << image.status();

  for (const int source_mode : {TCP_REPAIR_ON, TCP_REPAIR_OFF}) {
    SCOPED_TRACE(absl::StrFormat("source socket in repair mode %d", source_mode));
    ASSERT_TRUE(SetRepairMode(pair->ours.get(), source_mode).ok());
    absl::StatusOr<UniqueFd> fd = NewTcpSocketForRestore(*image);
    ASSERT_TRUE(fd.ok()) << fd.status();
    ASSERT_TRUE(SetRepairMode(fd->get(), TCP_REPAIR_ON).ok());
    const absl::Status s = RestoreTcpSocket(fd->get(), *image);
    EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
    EXPECT_NE(s.message().find("EADDRNOTAVAIL"), std::string::npos) << s;
  }
  // A socket that found the addresses taken is kept, bound, for a retry.
  absl::StatusOr<UniqueFd> restored = NewTcpSocketForRestore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  ASSERT_TRUE(SetRepairMode(restored->get(), TCP_REPAIR_ON).ok());
  ASSERT_EQ(RestoreTcpSocket(restored->get(), *image).code(), absl::StatusCode::kAlreadyExists);
  // The source leaves (in repair mode, silently): now the same socket works.
  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  pair->ours.reset();
  const absl::Status s = RestoreTcpSocket(restored->get(), *image);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(SetRepairMode(restored->get(), TCP_REPAIR_OFF).ok());
  Flow to_ours{.from = pair->peer.get(), .to = restored->get(), .stream = 5, .target = 10000};
  Flow to_peer{.from = restored->get(), .to = pair->peer.get(), .stream = 6, .target = 10000};
  Exchange(to_ours, to_peer);
}

// As vunet's source freezes a socket before dumping it (net/tcp/tcp_migrate.cc):
// nothing taken in (a filter) and nothing new sent (a zero send window); the
// image keeps the window as it was. A slow peer that has shut down its side
// reads on meanwhile, its window updates lost; the restored socket must still
// learn of its window and send everything.
TEST_P(TcpSocketImageTest, FrozenSourceSlowPeerThatShutDown) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback(
      {.family = family(), .ours_sndbuf = 8 * int{kMiB}, .peer_rcvbuf = 256 * 1024});
  ASSERT_TRUE(pair.ok()) << pair.status();
  ASSERT_EQ(shutdown(pair->peer.get(), SHUT_WR), 0);
  Flow to_peer{.from = pair->ours.get(), .to = pair->peer.get(), .stream = 8, .target = 64 * kMiB};
  for (int i = 0; i < 30; ++i) {
    WriteSome(to_peer);
    ReadSome(to_peer, 16 * 1024);
    absl::SleepFor(absl::Milliseconds(10));
  }
  char c;
  ASSERT_EQ(recv(pair->ours.get(), &c, 1, MSG_DONTWAIT), 0) << "the peer's FIN";
  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  ASSERT_TRUE(FreezeReceiver(pair->ours.get()).ok());
  tcp_repair_window window{};
  socklen_t len = sizeof(window);
  ASSERT_EQ(getsockopt(pair->ours.get(), IPPROTO_TCP, TCP_REPAIR_WINDOW, &window, &len), 0);
  tcp_repair_window halted = window;
  halted.snd_wnd = 0;
  ASSERT_EQ(setsockopt(pair->ours.get(), IPPROTO_TCP, TCP_REPAIR_WINDOW, &halted, sizeof(halted)),
            0);
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(pair->ours.get());
  ASSERT_TRUE(image.ok()) << image.status();
  image->window = window;
  printf("%s\n", image->ToString().c_str());
  for (int i = 0; i < 20; ++i) {  // The peer reads on while the source lingers.
    ReadSome(to_peer, 16 * 1024);
    absl::SleepFor(absl::Milliseconds(10));
  }
  pair->ours.reset();
  absl::StatusOr<UniqueFd> restored = Restore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  to_peer.from = restored->get();
  to_peer.target = to_peer.written;
  size_t done = 0;
  const absl::Time start = absl::Now();
  while (to_peer.read < to_peer.target) {
    ASSERT_LT(absl::Now(), start + absl::Seconds(20))
        << to_peer.read << " of " << to_peer.target << ", " << done << " of "
        << image->unsent.size() << " unsent taken";
    if (done < image->unsent.size()) {
      absl::StatusOr<size_t> next = FinishTcpRestore(restored->get(), *image, done);
      ASSERT_TRUE(next.ok()) << next.status();
      done = *next;
    }
    ReadSome(to_peer, 64 * 1024);
    absl::SleepFor(absl::Milliseconds(5));
  }
  printf("all read %s after the restore\n", absl::FormatDuration(absl::Now() - start).c_str());
}

// Several MiB not yet sent, a peer reading slowly: the restored socket cannot
// take them at once, and FinishTcpRestore says how far it got until it has.
TEST_P(TcpSocketImageTest, LargeUnsentQueueFinishesInSeveralCalls) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback(
      {.family = family(), .ours_sndbuf = 32 * int{kMiB}, .peer_rcvbuf = 64 * 1024});
  ASSERT_TRUE(pair.ok()) << pair.status();
  // 6 MiB: what a send buffer holds even where SO_SNDBUFFORCE is not allowed
  // (a user namespace) and net.core.wmem_max (4 MiB by default) caps it.
  Flow to_peer{.from = pair->ours.get(), .to = pair->peer.get(), .stream = 7, .target = 6 * kMiB};
  WriteSome(to_peer);
  ASSERT_EQ(to_peer.written, to_peer.target);
  // The peer's window closes: everything sent is acknowledged, the rest waits.
  int last = -1;
  ASSERT_TRUE(WaitUntil([&] {
    const int now = SendQueueBytes(pair->ours.get());
    const bool settled = now == last;
    last = now;
    absl::SleepFor(absl::Milliseconds(20));
    return settled;
  }));

  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(pair->ours.get());
  ASSERT_TRUE(image.ok()) << image.status();
  printf("%s\n", image->ToString().c_str());
  EXPECT_GT(image->unsent.size(), 5 * kMiB);
  pair->ours.reset();

  absl::StatusOr<UniqueFd> restored = Restore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  absl::StatusOr<size_t> first = FinishTcpRestore(restored->get(), *image, 0);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_LT(*first, image->unsent.size());
  size_t done = *first;
  int calls = 1;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (done < image->unsent.size()) {
    ASSERT_LT(absl::Now(), deadline) << done << " of " << image->unsent.size();
    ReadSome(to_peer, 128 * 1024);  // Slowly.
    absl::SleepFor(absl::Milliseconds(1));
    absl::StatusOr<size_t> next = FinishTcpRestore(restored->get(), *image, done);
    ASSERT_TRUE(next.ok()) << next.status();
    ASSERT_GE(*next, done);
    done = *next;
    ++calls;
  }
  printf("%zu unsent bytes taken in %d calls (the first took %zu)\n", image->unsent.size(), calls,
         *first);
  to_peer.from = restored->get();
  Flow none{.from = pair->peer.get(), .to = restored->get(), .stream = 8};
  Exchange(none, to_peer);
}

// The peer had shut down its side (CLOSE_WAIT): the restored socket gives the
// data, then end of stream, and can still send.
TEST_P(TcpSocketImageTest, MigratesAfterThePeerShutDown) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = family()});
  ASSERT_TRUE(pair.ok()) << pair.status();
  Flow to_ours{.from = pair->peer.get(), .to = pair->ours.get(), .stream = 9, .target = 5000};
  WriteSome(to_ours);
  ASSERT_EQ(shutdown(pair->peer.get(), SHUT_WR), 0);
  ASSERT_TRUE(WaitUntil([&] { return TcpState(pair->ours.get()) == TCP_CLOSE_WAIT; }));

  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(pair->ours.get());
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->peer_fin);
  EXPECT_FALSE(image->fin_sent);
  EXPECT_EQ(image->received, StreamBytes(9, 0, 5000));
  pair->ours.reset();

  absl::StatusOr<UniqueFd> restored = Restore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  ASSERT_TRUE(FinishTcpRestore(restored->get(), *image, 0).ok());
  to_ours.to = restored->get();
  Flow to_peer{.from = restored->get(), .to = pair->peer.get(), .stream = 10, .target = 3000};
  Exchange(to_ours, to_peer);
  ReadSome(to_ours);
  EXPECT_TRUE(to_ours.eof);
  ASSERT_EQ(shutdown(restored->get(), SHUT_WR), 0);
  ASSERT_TRUE(WaitUntil([&] {
    ReadSome(to_peer);
    return to_peer.eof;
  }));
}

// We had shut down our side with data still in flight (FIN_WAIT1): the data
// and the FIN go again, and the peer can still send.
TEST_P(TcpSocketImageTest, MigratesAfterWeShutDownWithDataInFlight) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = family()});
  ASSERT_TRUE(pair.ok()) << pair.status();
  ASSERT_TRUE(FreezeReceiver(pair->peer.get()).ok());
  Flow to_peer{.from = pair->ours.get(), .to = pair->peer.get(), .stream = 11, .target = 20000};
  WriteSome(to_peer);
  ASSERT_EQ(to_peer.written, to_peer.target);
  ASSERT_EQ(shutdown(pair->ours.get(), SHUT_WR), 0);
  EXPECT_EQ(TcpState(pair->ours.get()), TCP_FIN_WAIT1);

  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(pair->ours.get());
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->fin_sent);
  EXPECT_FALSE(image->peer_fin);
  EXPECT_EQ(image->unacked.size() + image->unsent.size(), 20000u);
  pair->ours.reset();
  ASSERT_TRUE(UnfreezeReceiver(pair->peer.get()).ok());

  absl::StatusOr<UniqueFd> restored = Restore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  FinishWhileReading(restored->get(), *image, to_peer);
  to_peer.from = restored->get();
  Flow to_ours{.from = pair->peer.get(), .to = restored->get(), .stream = 12, .target = 7000};
  Exchange(to_ours, to_peer, /*until_eof=*/false);
  ASSERT_TRUE(WaitUntil([&] {
    ReadSome(to_peer);
    return to_peer.eof;
  }));
  EXPECT_EQ(to_peer.read, 20000u);
}

// We had shut down and the peer acknowledged it (FIN_WAIT2): nothing is left
// to send but the peer's data still comes in.
TEST_P(TcpSocketImageTest, MigratesAfterOurFinWasAcknowledged) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = family()});
  ASSERT_TRUE(pair.ok()) << pair.status();
  ASSERT_EQ(shutdown(pair->ours.get(), SHUT_WR), 0);
  ASSERT_TRUE(WaitUntil([&] { return TcpState(pair->ours.get()) == TCP_FIN_WAIT2; }));

  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(pair->ours.get());
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->fin_sent);
  EXPECT_TRUE(image->unacked.empty() && image->unsent.empty());
  pair->ours.reset();

  absl::StatusOr<UniqueFd> restored = Restore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  absl::StatusOr<size_t> done = FinishTcpRestore(restored->get(), *image, 0);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(*done, 0u);
  ASSERT_TRUE(WaitUntil([&] { return TcpState(restored->get()) == TCP_FIN_WAIT2; }));
  Flow to_ours{.from = pair->peer.get(), .to = restored->get(), .stream = 13, .target = 9000};
  Flow none{.from = restored->get(), .to = pair->peer.get(), .stream = 14};
  Exchange(to_ours, none);
  int error = -1;
  socklen_t len = sizeof(error);
  ASSERT_EQ(getsockopt(pair->peer.get(), SOL_SOCKET, SO_ERROR, &error, &len), 0);
  EXPECT_EQ(error, 0);
}

// An IPv6 socket talking to an IPv4 peer (v4-mapped) comes back as one.
TEST(TcpSocketImageDualStackTest, MigratesAnIpv6SocketWithAnIpv4Peer) {
  VUNET_SKIP_WITHOUT_REPAIR();
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sin);
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&sin), len), 0);
  ASSERT_EQ(listen(listener.get(), 1), 0);
  ASSERT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&sin), &len), 0);
  UniqueFd ours(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 mapped{};
  mapped.sin6_family = AF_INET6;
  mapped.sin6_port = sin.sin_port;
  mapped.sin6_addr.s6_addr[10] = mapped.sin6_addr.s6_addr[11] = 0xff;
  std::memcpy(&mapped.sin6_addr.s6_addr[12], &sin.sin_addr, 4);
  ASSERT_EQ(connect(ours.get(), reinterpret_cast<sockaddr*>(&mapped), sizeof(mapped)), 0);
  UniqueFd peer(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  ASSERT_TRUE(peer.valid());

  ASSERT_TRUE(SetRepairMode(ours.get(), TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(ours.get());
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->family, AF_INET6);
  EXPECT_TRUE(image->local.addr.is_v4());
  EXPECT_TRUE(image->remote.addr.is_v4());
  ours.reset();
  absl::StatusOr<UniqueFd> restored = Restore(*image);
  ASSERT_TRUE(restored.ok()) << restored.status();
  Flow to_ours{.from = peer.get(), .to = restored->get(), .stream = 15, .target = 4000};
  Flow to_peer{.from = restored->get(), .to = peer.get(), .stream = 16, .target = 4000};
  Exchange(to_ours, to_peer);
}

TEST(TcpSocketImageRefusalTest, DumpRefusesSocketsItCannotMigrate) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = AF_INET});
  ASSERT_TRUE(pair.ok()) << pair.status();
  EXPECT_EQ(DumpTcpSocket(pair->ours.get()).status().code(),
            absl::StatusCode::kFailedPrecondition);  // Not in repair mode.

  UniqueFd udp(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(DumpTcpSocket(udp.get()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(DumpTcpSocket(-1).ok());

  UniqueFd unconnected(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(SetRepairMode(unconnected.get(), TCP_REPAIR_ON).ok());
  const absl::Status closed = DumpTcpSocket(unconnected.get()).status();
  EXPECT_EQ(closed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(closed.message().find("CLOSE"), std::string::npos) << closed;
}

TEST(TcpSocketImageRefusalTest, DumpRefusesQueuesAboveTheLimit) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = AF_INET});
  ASSERT_TRUE(pair.ok()) << pair.status();
  Flow to_ours{.from = pair->peer.get(), .to = pair->ours.get(), .stream = 17, .target = 50000};
  WriteSome(to_ours);
  ASSERT_TRUE(WaitUntil([&] { return SendQueueBytes(pair->peer.get()) == 0; }));
  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  absl::Status s = DumpTcpSocket(pair->ours.get(), 49999).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("receive queue of 50000 bytes"), std::string::npos) << s;
  absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(pair->ours.get(), 50000);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->received.size(), 50000u);

  pair = ConnectOverLoopback({.family = AF_INET});
  ASSERT_TRUE(pair.ok()) << pair.status();
  ASSERT_TRUE(FreezeReceiver(pair->peer.get()).ok());
  Flow to_peer{.from = pair->ours.get(), .to = pair->peer.get(), .stream = 18, .target = 300000};
  WriteSome(to_peer);
  ASSERT_EQ(to_peer.written, to_peer.target);
  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  s = DumpTcpSocket(pair->ours.get(), 299999).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("send queue of 300000 bytes"), std::string::npos) << s;
}

TEST(TcpSocketImageRefusalTest, RestoreRefusesImagesThatCannotBeRight) {
  VUNET_SKIP_WITHOUT_REPAIR();
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = AF_INET});
  ASSERT_TRUE(pair.ok()) << pair.status();
  ASSERT_TRUE(SetRepairMode(pair->ours.get(), TCP_REPAIR_ON).ok());
  absl::StatusOr<TcpSocketImage> good = DumpTcpSocket(pair->ours.get());
  ASSERT_TRUE(good.ok()) << good.status();

  auto refused = [](const TcpSocketImage& image) {
    absl::StatusOr<UniqueFd> fd = NewTcpSocketForRestore(image);
    if (!fd.ok()) return fd.status().code();
    EXPECT_TRUE(SetRepairMode(fd->get(), TCP_REPAIR_ON).ok());
    return RestoreTcpSocket(fd->get(), image).code();
  };
  TcpSocketImage bad = *good;
  bad.family = AF_INET6;
  bad.remote.addr = *InetAddr::Parse("::1");  // One IPv4 endpoint, one IPv6.
  EXPECT_EQ(refused(bad), absl::StatusCode::kInvalidArgument);
  bad = *good;
  bad.family = AF_UNIX;
  EXPECT_EQ(refused(bad), absl::StatusCode::kInvalidArgument);
  bad = *good;
  bad.window_scaling = true;
  bad.recv_window_scale = 15;
  EXPECT_EQ(refused(bad), absl::StatusCode::kInvalidArgument);
  bad = *good;
  bad.mss = 0;
  EXPECT_EQ(refused(bad), absl::StatusCode::kInvalidArgument);
  bad = *good;
  bad.local.port = 0;
  EXPECT_EQ(refused(bad), absl::StatusCode::kInvalidArgument);
  bad = *good;
  bad.received.resize(TcpSocketImage::kMaxQueueBytes + 1);
  EXPECT_EQ(refused(bad), absl::StatusCode::kInvalidArgument);

  // An address this host does not have: bind says so.
  bad = *good;
  bad.local.addr = *InetAddr::Parse("192.0.2.1");
  {
    absl::StatusOr<UniqueFd> fd = NewTcpSocketForRestore(bad);
    ASSERT_TRUE(fd.ok());
    ASSERT_TRUE(SetRepairMode(fd->get(), TCP_REPAIR_ON).ok());
    const absl::Status s = RestoreTcpSocket(fd->get(), bad);
    EXPECT_NE(s.message().find("bind to 192.0.2.1:"), std::string::npos) << s;
    EXPECT_NE(s.message().find("Cannot assign requested address"), std::string::npos) << s;
  }

  // A socket not in repair mode.
  absl::StatusOr<UniqueFd> fd = NewTcpSocketForRestore(*good);
  ASSERT_TRUE(fd.ok());
  EXPECT_EQ(RestoreTcpSocket(fd->get(), *good).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FinishTcpRestore(fd->get(), *good, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TcpSocketImageEqualityTest, ComparesEveryField) {
  TcpSocketImage a;
  a.family = AF_INET;
  a.unsent = {1, 2, 3};
  TcpSocketImage b = a;
  EXPECT_EQ(a, b);
  b.window.rcv_wup = 1;
  EXPECT_NE(a, b);
  b = a;
  b.unsent.push_back(4);
  EXPECT_NE(a, b);
  b = a;
  b.peer_fin = true;
  EXPECT_NE(a, b);
}

// The cost the issue asks about: 1000 idle connections dumped and restored,
// timed, and each still carrying data both ways afterwards.
TEST(TcpSocketImageScaleTest, DumpsAndRestoresAThousandConnections) {
  VUNET_SKIP_WITHOUT_REPAIR();
  constexpr int kConnections = 1000;
  std::vector<LoopbackPair> pairs;
  pairs.reserve(kConnections);
  for (int i = 0; i < kConnections; ++i) {
    absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = AF_INET});
    ASSERT_TRUE(pair.ok()) << pair.status();
    pairs.push_back(*std::move(pair));
  }
  std::vector<TcpSocketImage> images(kConnections);
  const absl::Time dump_start = absl::Now();
  for (int i = 0; i < kConnections; ++i) {
    ASSERT_TRUE(SetRepairMode(pairs[i].ours.get(), TCP_REPAIR_ON).ok());
    absl::StatusOr<TcpSocketImage> image = DumpTcpSocket(pairs[i].ours.get());
    ASSERT_TRUE(image.ok()) << image.status();
    images[i] = *std::move(image);
    pairs[i].ours.reset();
  }
  const absl::Duration dump_time = absl::Now() - dump_start;
  const absl::Time restore_start = absl::Now();
  for (int i = 0; i < kConnections; ++i) {
    absl::StatusOr<UniqueFd> restored = Restore(images[i]);
    ASSERT_TRUE(restored.ok()) << restored.status();
    ASSERT_TRUE(FinishTcpRestore(restored->get(), images[i], 0).ok());
    pairs[i].ours = *std::move(restored);
  }
  const absl::Duration restore_time = absl::Now() - restore_start;
  printf(
      "%d idle connections: repair on + dump + close %s (%s each), new socket + repair on + "
      "restore + repair off %s (%s each); %zu bytes of fixed state each\n",
      kConnections, absl::FormatDuration(dump_time).c_str(),
      absl::FormatDuration(dump_time / kConnections).c_str(),
      absl::FormatDuration(restore_time).c_str(),
      absl::FormatDuration(restore_time / kConnections).c_str(), sizeof(TcpSocketImage));
  for (LoopbackPair& pair : pairs) {
    Flow to_ours{.from = pair.peer.get(), .to = pair.ours.get(), .stream = 18, .target = 100};
    Flow to_peer{.from = pair.ours.get(), .to = pair.peer.get(), .stream = 19, .target = 100};
    Exchange(to_ours, to_peer);
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, TcpSocketImageTest, ::testing::Values(AF_INET, AF_INET6),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return info.param == AF_INET ? "IPv4" : "IPv6";
                         });

}  // namespace
}  // namespace vunet::net
