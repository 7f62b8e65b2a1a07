#include "net/icmp.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_format.h"
#include "base/log.h"
#include "net/checksum.h"

namespace vunet::net {
namespace {

constexpr uint8_t kIcmpEchoReply = 0;
constexpr uint8_t kIcmpEchoRequest = 8;
constexpr uint8_t kIcmpv6EchoRequest = 128;
constexpr uint8_t kIcmpv6EchoReply = 129;
constexpr size_t kEchoHeaderLen = 8;  // Type, code, checksum, identifier, sequence.

// The largest ICMP message of each IP version (without jumbograms).
constexpr size_t kMaxMessage4 = 65535 - kIpv4MinHeaderLen;
constexpr size_t kMaxMessage6 = 65535;

int PingProtocol(int family) { return family == AF_INET ? int{IPPROTO_ICMP} : int{IPPROTO_ICMPV6}; }

int OpenPingSocket(int family) {
  return socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, PingProtocol(family));
}

std::string PingGroupRange() {
  std::ifstream in("/proc/sys/net/ipv4/ping_group_range");
  std::string lo, hi;
  if (!(in >> lo >> hi)) return "unreadable";
  return lo + " " + hi;
}

uint8_t Byte0(const in_addr& a) { return reinterpret_cast<const uint8_t*>(&a.s_addr)[0]; }

}  // namespace

int64_t IcmpEcho::NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

absl::Status IcmpEcho::ProbePingSockets(int family) {
  UniqueFd fd(OpenPingSocket(family));
  if (fd.valid()) return absl::OkStatus();
  const int err = errno;
  const char* name = family == AF_INET ? "IPv4" : "IPv6";
  if (err == EACCES || err == EPERM) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s ping sockets not permitted for group %d: net.ipv4.ping_group_range is \"%s\"; "
        "as root, sysctl -w net.ipv4.ping_group_range=\"0 2147483647\" permits them",
        name, static_cast<int>(getgid()), PingGroupRange()));
  }
  if (err == EAFNOSUPPORT || err == EPROTONOSUPPORT) {
    return absl::UnavailableError(absl::StrFormat("%s ping sockets: %s", name, strerror(err)));
  }
  return absl::ErrnoToStatus(err, absl::StrFormat("%s ping socket", name));
}

absl::StatusOr<std::unique_ptr<IcmpEcho>> IcmpEcho::Create(const IcmpEchoConfig& config,
                                                           ReplySender* replies,
                                                           ParsedFrameSink* next,
                                                           SocketObserver* observer) {
  if (config.max_sockets < 1 || config.max_sockets > kMaxIcmpSockets) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_sockets %d not in 1..%d", config.max_sockets, kMaxIcmpSockets));
  }
  if (config.new_sockets_per_second < 1) {
    return absl::InvalidArgumentError("new_sockets_per_second must be at least 1");
  }
  if (config.idle_timeout_ns <= 0) {
    return absl::InvalidArgumentError("idle_timeout_ns must be positive");
  }
  IcmpEchoConfig c = config;
  if (c.clock == nullptr) c.clock = &IcmpEcho::NowNs;
  if (c.ipv4) {
    if (absl::Status s = ProbePingSockets(AF_INET); !s.ok()) return s;
  }
  if (c.ipv6) {
    absl::Status s = ProbePingSockets(AF_INET6);
    if (absl::IsUnavailable(s)) {
      VUNET_LOG(kWarning, "ICMPv6 echo off: %s", s.ToString());
      c.ipv6 = false;
    } else if (!s.ok()) {
      return s;
    }
  }
  return std::unique_ptr<IcmpEcho>(new IcmpEcho(c, replies, next, observer));
}

IcmpEcho::IcmpEcho(const IcmpEchoConfig& config, ReplySender* replies, ParsedFrameSink* next,
                   SocketObserver* observer)
    : config_(config),
      replies_(replies),
      next_(next),
      observer_(observer),
      table_(config.max_sockets) {}

IcmpEcho::~IcmpEcho() {
  for (Entry& e : table_) Close(&e);
}

void IcmpEcho::OnBatchEnd() {
  if (next_ != nullptr) next_->OnBatchEnd();
}

IcmpEcho::Entry* IcmpEcho::Find(bool v6, const in_addr& dst4, const in6_addr& dst6, uint16_t id) {
  for (Entry& e : table_) {
    if (!e.fd.valid() || e.v6 != v6 || e.guest_id != id) continue;
    if (v6 ? IN6_ARE_ADDR_EQUAL(&e.dst6, &dst6) : e.dst4.s_addr == dst4.s_addr) return &e;
  }
  return nullptr;
}

IcmpEcho::Entry* IcmpEcho::Slot() {
  Entry* oldest = nullptr;
  for (Entry& e : table_) {
    if (!e.fd.valid()) return &e;
    if (oldest == nullptr || e.use_order < oldest->use_order) oldest = &e;
  }
  ++stats_.evicted;
  Close(oldest);
  return oldest;
}

void IcmpEcho::Close(Entry* e) {
  if (!e->fd.valid()) return;
  if (observer_ != nullptr) observer_->OnSocketClosing(e->fd.get());
  e->fd.reset();
}

void IcmpEcho::Touch(Entry* e) {
  e->last_used_ns = Now();
  e->use_order = ++use_counter_;
}

void IcmpEcho::OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
                       const ParsedFrame& parsed) {
  if (parsed.l4 != L4Kind::kIcmp && parsed.l4 != L4Kind::kIcmpv6) {
    if (next_ != nullptr) {
      ++stats_.passed_on;
      next_->OnFrame(hdr, frame, parsed);
    } else {
      ++stats_.ignored;
    }
    return;
  }
  const bool v6 = parsed.l4 == L4Kind::kIcmpv6;
  if (parsed.icmp.type != (v6 ? kIcmpv6EchoRequest : kIcmpEchoRequest) ||
      !(v6 ? config_.ipv6 : config_.ipv4)) {
    ++stats_.ignored;
    return;
  }
  const size_t len = parsed.l4_len;
  if (parsed.icmp.code != 0 || len < kEchoHeaderLen || len > (v6 ? kMaxMessage6 : kMaxMessage4)) {
    ++stats_.malformed;
    VUNET_LOG_RATELIMITED(kInfo, "ICMP echo request dropped: code %d, %d bytes", parsed.icmp.code,
                          len);
    return;
  }
  // One copy, read once: what is checked is what is sent.
  if (!FrameReader(frame).Read(parsed.l4_offset, request_, len)) {
    ++stats_.malformed;
    return;
  }
  if ((hdr.flags & vu::kVirtioNetHdrFNeedsCsum) == 0) {
    // ICMP over IPv4 has no pseudo-header.
    const uint16_t sum =
        v6 ? L4ChecksumV6(parsed.ip.src6, parsed.ip.dst6, IPPROTO_ICMPV6, request_, len)
           : InternetChecksum(request_, len);
    if (sum != 0) {
      ++stats_.malformed;
      VUNET_LOG_RATELIMITED(kInfo, "ICMP echo request dropped: bad checksum");
      return;
    }
  }

  // Where it goes on the host.
  sockaddr_storage to{};
  socklen_t to_len;
  if (v6) {
    const in6_addr& d = parsed.ip.dst6;
    sockaddr_in6* sin6 = reinterpret_cast<sockaddr_in6*>(&to);
    sin6->sin6_family = AF_INET6;
    to_len = sizeof(*sin6);
    if ((!IN6_IS_ADDR_UNSPECIFIED(&config_.gateway6) &&
         IN6_ARE_ADDR_EQUAL(&d, &config_.gateway6)) ||
        (!IN6_IS_ADDR_UNSPECIFIED(&config_.gateway_ll6) &&
         IN6_ARE_ADDR_EQUAL(&d, &config_.gateway_ll6))) {
      sin6->sin6_addr = in6addr_loopback;
    } else if (IN6_IS_ADDR_UNSPECIFIED(&d) || IN6_IS_ADDR_LOOPBACK(&d) ||
               IN6_IS_ADDR_MULTICAST(&d) || IN6_IS_ADDR_LINKLOCAL(&d) || IN6_IS_ADDR_V4MAPPED(&d)) {
      ++stats_.bad_destination;
      return;
    } else {
      sin6->sin6_addr = d;
    }
  } else {
    const in_addr& d = parsed.ip.dst4;
    sockaddr_in* sin = reinterpret_cast<sockaddr_in*>(&to);
    sin->sin_family = AF_INET;
    to_len = sizeof(*sin);
    if (config_.gateway4.s_addr != 0 && d.s_addr == config_.gateway4.s_addr) {
      sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (d.s_addr == 0 || Byte0(d) == 127 || Byte0(d) >= 224) {
      ++stats_.bad_destination;
      return;
    } else {
      sin->sin_addr = d;
    }
  }

  const uint16_t id = parsed.icmp.id;
  Entry* e = Find(v6, parsed.ip.dst4, parsed.ip.dst6, id);
  if (e == nullptr) {
    if (!TakeSocketToken()) {
      ++stats_.rate_limited;
      VUNET_LOG_RATELIMITED(kInfo, "ICMP echo: new ping sockets over %d/s, request dropped",
                            config_.new_sockets_per_second);
      return;
    }
    const int fd = OpenPingSocket(v6 ? AF_INET6 : AF_INET);
    if (fd < 0) {
      ++stats_.socket_errors;
      VUNET_LOG_RATELIMITED(kWarning, "ping socket: %s", strerror(errno));
      return;
    }
    if (absl::Status s = BindOutbound(fd, reinterpret_cast<const sockaddr*>(&to), config_.outbound);
        !s.ok()) {
      close(fd);
      ++stats_.socket_errors;
      VUNET_LOG_RATELIMITED(kWarning, "ping socket: %s", s.message());
      return;
    }
    e = Slot();
    e->fd.reset(fd);
    e->v6 = v6;
    e->guest_id = id;
    e->dst4 = v6 ? in_addr{} : parsed.ip.dst4;
    e->dst6 = v6 ? parsed.ip.dst6 : in6_addr{};
    if (observer_ != nullptr && !observer_->OnSocketOpened(fd)) {
      e->fd.reset();
      ++stats_.socket_errors;
      return;
    }
  }
  e->guest4 = parsed.ip.src4;
  e->guest6 = parsed.ip.src6;
  e->guest_mac = parsed.src_mac;
  Touch(e);

  // The kernel fills in the checksum and its own identifier.
  request_[2] = request_[3] = 0;
  if (sendto(e->fd.get(), request_, len, MSG_DONTWAIT | MSG_NOSIGNAL,
             reinterpret_cast<const sockaddr*>(&to), to_len) < 0) {
    ++stats_.send_errors;
    VUNET_LOG_RATELIMITED(kInfo, "ICMP echo request not sent: %s", strerror(errno));
    return;
  }
  ++stats_.requests;
}

size_t IcmpEcho::OnReadable(int fd) {
  Entry* e = nullptr;
  for (Entry& x : table_) {
    if (x.fd.valid() && x.fd.get() == fd) {
      e = &x;
      break;
    }
  }
  if (e == nullptr) return 0;

  FrameSpec spec;
  spec.src_mac = config_.gateway_mac;
  spec.dst_mac = e->guest_mac;
  spec.ipv6 = e->v6;
  spec.src4 = e->dst4;
  spec.dst4 = e->guest4;
  spec.src6 = e->dst6;
  spec.dst6 = e->guest6;
  spec.protocol = e->v6 ? uint8_t{IPPROTO_ICMPV6} : uint8_t{IPPROTO_ICMP};
  spec.dont_fragment = false;
  const size_t hlen = FrameHeadersLen(spec);
  const size_t max = e->v6 ? kMaxMessage6 : kMaxMessage4;
  static_assert(sizeof(reply_) >= kEthHeaderLen + kIpv6HeaderLen + kMaxMessage6);

  size_t sent = 0;
  for (int i = 0; i < kReadBatch; ++i) {
    iovec iov = {reply_ + hlen, max};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      // An ICMP error for an earlier request (unreachable, ...), reported
      // once; the guest's ping times out as it would on a real network.
      ++stats_.recv_errors;
      continue;
    }
    const size_t len = static_cast<size_t>(n);
    if (len < kEchoHeaderLen || len > max || (msg.msg_flags & MSG_TRUNC) != 0 ||
        reply_[hlen] != (e->v6 ? kIcmpv6EchoReply : kIcmpEchoReply)) {
      ++stats_.reply_dropped;
      continue;
    }
    reply_[hlen + 4] = static_cast<uint8_t>(e->guest_id >> 8);
    reply_[hlen + 5] = static_cast<uint8_t>(e->guest_id);
    const absl::StatusOr<size_t> frame_len = BuildFrame(spec, absl::MakeSpan(reply_), len);
    if (!frame_len.ok()) {
      ++stats_.reply_dropped;
      VUNET_LOG_RATELIMITED(kError, "ICMP echo reply not built: %s", frame_len.status().ToString());
      continue;
    }
    if (!replies_->Send(absl::MakeConstSpan(reply_, *frame_len)).ok()) {
      ++stats_.reply_dropped;
      continue;
    }
    ++stats_.replies;
    ++sent;
  }
  if (e->fd.valid()) Touch(e);
  return sent;
}

size_t IcmpEcho::Sweep(int64_t now_ns) {
  size_t closed = 0;
  for (Entry& e : table_) {
    if (e.fd.valid() && now_ns - e.last_used_ns >= config_.idle_timeout_ns) {
      Close(&e);
      ++stats_.expired;
      ++closed;
    }
  }
  return closed;
}

std::vector<int> IcmpEcho::SocketFds() const {
  std::vector<int> fds;
  for (const Entry& e : table_) {
    if (e.fd.valid()) fds.push_back(e.fd.get());
  }
  return fds;
}

size_t IcmpEcho::socket_count() const {
  size_t n = 0;
  for (const Entry& e : table_) n += e.fd.valid() ? 1 : 0;
  return n;
}

bool IcmpEcho::TakeSocketToken() {
  const double rate = config_.new_sockets_per_second;
  const int64_t now = Now();
  if (!tokens_started_) {
    socket_tokens_ = rate;  // Start with a full burst.
    tokens_started_ = true;
  } else if (now > tokens_at_ns_) {
    socket_tokens_ = std::min(rate, socket_tokens_ + rate * (now - tokens_at_ns_) / 1e9);
  }
  tokens_at_ns_ = now;
  if (socket_tokens_ < 1) return false;
  socket_tokens_ -= 1;
  return true;
}

}  // namespace vunet::net
