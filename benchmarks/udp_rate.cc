// udp_rate: a UDP datagram-rate sender and receiver for benchmarks/run,
// batched (sendmmsg/recvmmsg) so that the tool is not what limits the rate.
//
//   udp_rate --mode=recv --bind=127.0.0.1:5300 --timeout=30s
//   udp_rate --mode=send --to=10.0.2.2:5300 --size=64 --seconds=5
//
// recv prints one line when the sender has gone quiet (--idle) or --timeout
// passed:
//   received N datagrams B bytes in S s: R datagrams/s
// counting from the first datagram to the last; exits 0 if any arrived.
// send prints
//   sent N datagrams in S s: R datagrams/s, E errors
// IPv4 only.

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"

ABSL_FLAG(std::string, mode, "", "recv or send");
ABSL_FLAG(std::string, bind, "127.0.0.1:5300", "recv: the address and port to receive on");
ABSL_FLAG(std::string, to, "", "send: the address and port to send to");
ABSL_FLAG(uint32_t, size, 64, "send: UDP payload bytes per datagram");
ABSL_FLAG(absl::Duration, seconds, absl::Seconds(5), "send: how long to send");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "recv: the longest it runs");
ABSL_FLAG(absl::Duration, idle, absl::Seconds(1), "recv: quiet time after which it reports");

namespace vunet::benchmarks {
namespace {

constexpr int kBatch = 64;
constexpr size_t kMaxPayload = 65507;
constexpr int kSocketBuffer = 8 << 20;

std::optional<sockaddr_in> ParseAddress(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  uint32_t port;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &port) || port == 0 || port > 65535 ||
      inet_pton(AF_INET, parts[0].c_str(), &a.sin_addr) != 1) {
    return std::nullopt;
  }
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

int Fail(const char* what) {
  std::fprintf(stderr, "udp_rate: %s: %s\n", what, strerror(errno));
  return 1;
}

void SetBuffer(int fd, int option, int force_option) {
  // FORCE passes rmem_max/wmem_max where we may (root); otherwise the plain
  // option's ceiling applies.
  if (setsockopt(fd, SOL_SOCKET, force_option, &kSocketBuffer, sizeof(kSocketBuffer)) != 0) {
    setsockopt(fd, SOL_SOCKET, option, &kSocketBuffer, sizeof(kSocketBuffer));
  }
}

int Receive() {
  std::optional<sockaddr_in> address = ParseAddress(absl::GetFlag(FLAGS_bind));
  if (!address) {
    std::fprintf(stderr, "udp_rate: --bind: want IPv4:PORT\n");
    return 2;
  }
  UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Fail("socket");
  SetBuffer(fd.get(), SO_RCVBUF, SO_RCVBUFFORCE);
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof(*address)) != 0) {
    return Fail("bind");
  }
  static uint8_t buffers[kBatch][2048];
  mmsghdr messages[kBatch];
  iovec iovs[kBatch];
  for (int i = 0; i < kBatch; ++i) {
    iovs[i] = {buffers[i], sizeof(buffers[i])};
    messages[i] = {};
    messages[i].msg_hdr.msg_iov = &iovs[i];
    messages[i].msg_hdr.msg_iovlen = 1;
  }
  const absl::Time deadline = absl::Now() + absl::GetFlag(FLAGS_timeout);
  const absl::Duration idle = absl::GetFlag(FLAGS_idle);
  uint64_t datagrams = 0, bytes = 0;
  absl::Time first, last;
  while (true) {
    const absl::Time now = absl::Now();
    if (now >= deadline || (datagrams > 0 && now - last >= idle)) break;
    pollfd p{.fd = fd.get(), .events = POLLIN, .revents = 0};
    if (poll(&p, 1, 100) <= 0) continue;
    while (true) {
      const int n = recvmmsg(fd.get(), messages, kBatch, MSG_DONTWAIT, nullptr);
      if (n <= 0) break;
      if (datagrams == 0) first = absl::Now();
      datagrams += n;
      for (int i = 0; i < n; ++i) bytes += messages[i].msg_len;
      if (n < kBatch) break;
    }
    if (datagrams > 0) last = absl::Now();
  }
  const double seconds = datagrams > 1 ? absl::ToDoubleSeconds(last - first) : 0;
  std::printf("received %llu datagrams %llu bytes in %.3f s: %.0f datagrams/s\n",
              static_cast<unsigned long long>(datagrams), static_cast<unsigned long long>(bytes),
              seconds, seconds > 0 ? datagrams / seconds : 0.0);
  return datagrams > 0 ? 0 : 1;
}

int Send() {
  std::optional<sockaddr_in> address = ParseAddress(absl::GetFlag(FLAGS_to));
  if (!address) {
    std::fprintf(stderr, "udp_rate: --to: want IPv4:PORT\n");
    return 2;
  }
  const uint32_t size = absl::GetFlag(FLAGS_size);
  if (size == 0 || size > kMaxPayload) {
    std::fprintf(stderr, "udp_rate: --size: 1 to %zu\n", kMaxPayload);
    return 2;
  }
  UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Fail("socket");
  SetBuffer(fd.get(), SO_SNDBUF, SO_SNDBUFFORCE);
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof(*address)) != 0) {
    return Fail("connect");
  }
  std::vector<uint8_t> payload(size, 0x5a);
  mmsghdr messages[kBatch];
  iovec iov{payload.data(), payload.size()};
  for (mmsghdr& m : messages) {
    m = {};
    m.msg_hdr.msg_iov = &iov;
    m.msg_hdr.msg_iovlen = 1;
  }
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::GetFlag(FLAGS_seconds);
  uint64_t sent = 0, errors = 0;
  absl::Time now = start;
  while (now < end) {
    const int n = sendmmsg(fd.get(), messages, kBatch, 0);
    if (n > 0) {
      sent += n;
    } else if (errno != EINTR) {
      // ECONNREFUSED (an ICMP error came back) or ENOBUFS: count, go on.
      ++errors;
    }
    now = absl::Now();
  }
  const double seconds = absl::ToDoubleSeconds(now - start);
  std::printf("sent %llu datagrams in %.3f s: %.0f datagrams/s, %llu errors\n",
              static_cast<unsigned long long>(sent), seconds, sent / seconds,
              static_cast<unsigned long long>(errors));
  return sent > 0 ? 0 : 1;
}

}  // namespace
}  // namespace vunet::benchmarks

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "recv") return vunet::benchmarks::Receive();
  if (mode == "send") return vunet::benchmarks::Send();
  std::fprintf(stderr, "udp_rate: --mode=recv or --mode=send\n");
  return 2;
}
