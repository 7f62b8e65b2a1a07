#include "net/repair/testing/repair_testing.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace vunet::net::testing {
namespace {

std::string ErrnoText(const char* what) { return absl::StrCat(what, ": ", strerror(errno)); }

std::string EnterNetnsAndProbe() {
  if (unshare(CLONE_NEWNET) != 0) {
    return ErrnoText("unshare(CLONE_NEWNET) (needs root or a user namespace)");
  }
  UniqueFd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (!s.valid() || ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) return ErrnoText("SIOCGIFFLAGS lo");
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) return ErrnoText("bringing lo up");
  absl::StatusOr<LoopbackPair> pair = ConnectOverLoopback({.family = AF_INET});
  if (!pair.ok()) return std::string(pair.status().message());
  if (absl::Status repair = SetRepairMode(pair->ours.get(), TCP_REPAIR_ON); !repair.ok()) {
    return absl::StrCat(repair.message(), " (needs CAP_NET_ADMIN)");
  }
  return "";
}

absl::Status ForceBuffer(int fd, int force_option, int option, int bytes) {
  if (bytes == 0) return absl::OkStatus();
  // SO_*BUFFORCE needs CAP_NET_ADMIN; without it the kernel's cap applies.
  if (setsockopt(fd, SOL_SOCKET, force_option, &bytes, sizeof(bytes)) == 0) {
    return absl::OkStatus();
  }
  if (setsockopt(fd, SOL_SOCKET, option, &bytes, sizeof(bytes)) == 0) return absl::OkStatus();
  return ErrnoStatus("setsockopt(SO_*BUF)");
}

absl::Status SetNonBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return ErrnoStatus("O_NONBLOCK");
  return absl::OkStatus();
}

}  // namespace

const std::string& RepairUnavailableReason() {
  static const std::string* const reason = new std::string(EnterNetnsAndProbe());
  return *reason;
}

absl::Status SetRepairMode(int fd, int mode) {
  if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &mode, sizeof(mode)) != 0) {
    return ErrnoStatus(absl::StrCat("setsockopt(TCP_REPAIR, ", mode, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> RepairModeOf(int fd) {
  int mode = -2;
  socklen_t len = sizeof(mode);
  if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &mode, &len) != 0) {
    return ErrnoStatus("getsockopt(TCP_REPAIR)");
  }
  return mode;
}

absl::StatusOr<LoopbackPair> ConnectOverLoopback(const LoopbackPairOptions& options) {
  sockaddr_storage ss{};
  socklen_t len;
  if (options.family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof(*sin);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = in6addr_loopback;
    len = sizeof(*sin6);
  }
  UniqueFd listener(socket(options.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return ErrnoStatus("socket");
  // Accepted sockets inherit the listener's buffers, and the window scale
  // is chosen from them at the handshake.
  if (absl::Status s = ForceBuffer(listener.get(), SO_RCVBUFFORCE, SO_RCVBUF, options.peer_rcvbuf);
      !s.ok()) {
    return s;
  }
  if (bind(listener.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return ErrnoStatus("bind");
  if (listen(listener.get(), 1) != 0) return ErrnoStatus("listen");
  if (getsockname(listener.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return ErrnoStatus("getsockname");
  }
  LoopbackPair pair;
  pair.ours.reset(socket(options.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!pair.ours.valid()) return ErrnoStatus("socket");
  if (absl::Status s = ForceBuffer(pair.ours.get(), SO_RCVBUFFORCE, SO_RCVBUF, options.ours_rcvbuf);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ForceBuffer(pair.ours.get(), SO_SNDBUFFORCE, SO_SNDBUF, options.ours_sndbuf);
      !s.ok()) {
    return s;
  }
  if (connect(pair.ours.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return ErrnoStatus("connect");
  }
  pair.peer.reset(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!pair.peer.valid()) return ErrnoStatus("accept");
  if (absl::Status s = SetNonBlocking(pair.ours.get()); !s.ok()) return s;
  return pair;
}

absl::Status FreezeReceiver(int fd) {
  sock_filter drop_all = BPF_STMT(BPF_RET | BPF_K, 0);
  sock_fprog program{.len = 1, .filter = &drop_all};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof(program)) != 0) {
    return ErrnoStatus("SO_ATTACH_FILTER");
  }
  return absl::OkStatus();
}

absl::Status UnfreezeReceiver(int fd) {
  int unused = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof(unused)) != 0) {
    return ErrnoStatus("SO_DETACH_FILTER");
  }
  return absl::OkStatus();
}

SocketSet UnconnectedTcpSockets(int count) {
  SocketSet set;
  set.sockets.reserve(count);
  set.fds.reserve(count);
  for (int i = 0; i < count; ++i) {
    set.sockets.emplace_back(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    set.fds.push_back(set.sockets.back().get());
  }
  return set;
}

size_t OpenFdCount() {
  size_t count = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (const dirent* e = readdir(d)) count += e->d_name[0] != '.';
    closedir(d);
  }
  return count;
}

uint8_t StreamByte(uint32_t stream, uint64_t offset) {
  uint64_t x = (offset + 1) * 0x9e3779b97f4a7c15ULL ^ (uint64_t{stream} << 32);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  return static_cast<uint8_t>(x >> 56);
}

std::vector<uint8_t> StreamBytes(uint32_t stream, uint64_t offset, size_t count) {
  std::vector<uint8_t> bytes(count);
  for (size_t i = 0; i < count; ++i) bytes[i] = StreamByte(stream, offset + i);
  return bytes;
}

int64_t FirstMismatch(uint32_t stream, uint64_t offset, const uint8_t* bytes, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    if (bytes[i] != StreamByte(stream, offset + i)) return static_cast<int64_t>(i);
  }
  return -1;
}

absl::StatusOr<LoopbackCapture> LoopbackCapture::Open() {
  UniqueFd fd(socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL)));
  if (!fd.valid()) return ErrnoStatus("socket(AF_PACKET)");
  sockaddr_ll ll{};
  ll.sll_family = AF_PACKET;
  ll.sll_protocol = htons(ETH_P_ALL);
  ll.sll_ifindex = static_cast<int>(if_nametoindex("lo"));
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&ll), sizeof(ll)) != 0) {
    return ErrnoStatus("bind(AF_PACKET, lo)");
  }
  return LoopbackCapture(std::move(fd));
}

bool LoopbackCapture::SawFinOrRstFrom(uint16_t port) {
  bool saw = false;
  uint8_t frame[256];
  for (;;) {
    const ssize_t n = recv(fd_.get(), frame, sizeof(frame), MSG_TRUNC);
    if (n < 0) return saw;
    const size_t got = std::min(static_cast<size_t>(n), sizeof(frame));
    if (got < ETH_HLEN) continue;
    const uint16_t ethertype = static_cast<uint16_t>(frame[12] << 8 | frame[13]);
    size_t l4 = 0;
    if (ethertype == ETH_P_IP && got >= ETH_HLEN + 20 && frame[ETH_HLEN + 9] == IPPROTO_TCP) {
      l4 = ETH_HLEN + (frame[ETH_HLEN] & 0xf) * 4;
    } else if (ethertype == ETH_P_IPV6 && got >= ETH_HLEN + 40 &&
               frame[ETH_HLEN + 6] == IPPROTO_TCP) {
      l4 = ETH_HLEN + 40;
    }
    if (l4 == 0 || got < l4 + 14) continue;
    const uint16_t source = static_cast<uint16_t>(frame[l4] << 8 | frame[l4 + 1]);
    const uint8_t flags = frame[l4 + 13];
    if (source == port && (flags & (TH_FIN | TH_RST)) != 0) saw = true;
  }
}

}  // namespace vunet::net::testing
