#include "net/udp/udp.h"

#include <arpa/inet.h>
#include <linux/errqueue.h>
#include <net/if.h>
#include <netinet/icmp6.h>
#include <netinet/ip_icmp.h>
#include <netinet/udp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/iov.h"
#include "base/log.h"
#include "net/packet/checksum.h"

namespace vunet::net {
namespace {

constexpr uint16_t kDnsPort = 53;
// iovec entries for the datagrams of one refused UDP_SEGMENT message.
constexpr size_t kMaxSplitIov = 1024;

// The UDP_SEGMENT size a message carries (Queue's control message), or 0.
uint16_t SegmentSize(const msghdr& m) {
  if (m.msg_controllen == 0) return 0;
  const cmsghdr* c = CMSG_FIRSTHDR(&m);
  if (c == nullptr || c->cmsg_level != SOL_UDP || c->cmsg_type != UDP_SEGMENT) return 0;
  uint16_t gso;
  std::memcpy(&gso, CMSG_DATA(c), sizeof(gso));
  return gso;
}
// Payload bytes of the guest's datagram an ICMP error quotes.
constexpr size_t kQuotedPayload = 64;
constexpr int kErrorsPerEvent = 16;

// Destination unreachable for the guest's IP version, from what the host
// got (ICMP or ICMPv6 per `origin`). False for other messages, which are
// not passed on (time exceeded, packet too big: the host's own concern).
bool MapUnreachable(uint8_t origin, uint8_t type, uint8_t code, bool guest_v6, uint8_t* out_type,
                    uint8_t* out_code) {
  // The reason, in ICMPv4 codes (RFC 792/1812) as the common language.
  uint8_t reason;
  if (origin == SO_EE_ORIGIN_ICMP) {
    if (type != ICMP_DEST_UNREACH || code == ICMP_FRAG_NEEDED) return false;
    reason = code;
  } else if (origin == SO_EE_ORIGIN_ICMP6) {
    if (type != ICMP6_DST_UNREACH) return false;
    switch (code) {
      case ICMP6_DST_UNREACH_NOPORT:
        reason = ICMP_PORT_UNREACH;
        break;
      case ICMP6_DST_UNREACH_ADMIN:
        reason = ICMP_PKT_FILTERED;
        break;
      case ICMP6_DST_UNREACH_ADDR:
        reason = ICMP_HOST_UNREACH;
        break;
      default:
        reason = ICMP_NET_UNREACH;
        break;
    }
  } else {
    return false;
  }
  if (!guest_v6) {
    *out_type = ICMP_DEST_UNREACH;
    *out_code = reason;
    return true;
  }
  *out_type = ICMP6_DST_UNREACH;
  switch (reason) {
    case ICMP_PORT_UNREACH:
      *out_code = ICMP6_DST_UNREACH_NOPORT;
      break;
    case ICMP_NET_ANO:
    case ICMP_HOST_ANO:
    case ICMP_PKT_FILTERED:
      *out_code = ICMP6_DST_UNREACH_ADMIN;
      break;
    case ICMP_HOST_UNREACH:
      *out_code = ICMP6_DST_UNREACH_ADDR;
      break;
    default:
      *out_code = ICMP6_DST_UNREACH_NOROUTE;
      break;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<UdpTranslator>> UdpTranslator::Create(
    const TranslatorEnv& env, const UdpTranslatorOptions& options) {
  if (env.flows == nullptr || env.rx == nullptr || env.watcher == nullptr ||
      env.forward == nullptr || env.guest == nullptr) {
    return absl::InvalidArgumentError("udp: the translator environment is incomplete");
  }
  if (env.first_kind < 64 || env.first_kind > 255 - kKindsPerTranslator + 1) {
    return absl::InvalidArgumentError(absl::StrFormat("udp: first_kind %d", env.first_kind));
  }
  if (options.idle_timeout_ns <= 0 || options.dns_timeout_ns <= 0) {
    return absl::InvalidArgumentError("udp: timeouts must be positive");
  }
  if (options.tx_batch < 1 || options.tx_batch > 4096 || options.tx_iov < 64 ||
      options.tx_iov > 65536) {
    return absl::InvalidArgumentError("udp: tx_batch must be 1..4096 and tx_iov 64..65536");
  }
  if (options.rx_batch < 1 || options.rx_batch > UdpVuReceiver::kMaxBatch) {
    return absl::InvalidArgumentError(
        absl::StrFormat("udp: rx_batch must be 1..%d", UdpVuReceiver::kMaxBatch));
  }
  std::unique_ptr<UdpTranslator> t(new UdpTranslator(env, options));
  if (options.batch_peek) {
    t->peek4_ = ProbeUdpPeekOffset(AF_INET);
    t->peek6_ = ProbeUdpPeekOffset(AF_INET6);
    if (!t->peek4_) VUNET_LOG(kInfo, "udp: SO_PEEK_OFF unusable: one datagram per peek");
  }
  if (absl::Status s = t->OpenListeners(); !s.ok()) {
    t->Shutdown();
    return s;
  }
  return t;
}

UdpTranslator::UdpTranslator(const TranslatorEnv& env, const UdpTranslatorOptions& options)
    : env_(env),
      options_(options),
      clock_(env.clock != nullptr ? env.clock : &MonotonicNowNs),
      tx_msgs_(options.tx_batch),
      tx_names_(options.tx_batch),
      tx_fds_(options.tx_batch),
      tx_iov_(options.tx_iov),
      tx_group_(options.tx_batch),
      tx_cmsg_(options.tx_batch),
      split_msgs_(kMaxSplitSegments),
      split_iov_(kMaxSplitIov),
      tx_done_(options.tx_batch),
      receiver_(UdpVuReceiver::Options{.batch = options.rx_batch}) {
  blocked_.reserve(1024);
}

UdpTranslator::~UdpTranslator() = default;

uint64_t UdpTranslator::FlowTag(FlowId id) const {
  return FlowRef(id, static_cast<uint8_t>(env_.first_kind + kFlowSocketKind)).u64();
}

uint64_t UdpTranslator::ListenerTag(size_t index) const {
  return (uint64_t{static_cast<uint8_t>(env_.first_kind + kListenerKind)} << 56) | index;
}

absl::Status UdpTranslator::OpenListeners() {
  const ForwardRules& rules = env_.forward->rules();
  // "all" and exclusion-only specs are weak: ports that cannot be bound are
  // skipped, as long as some can.
  uint64_t weak_ports = 0, weak_bound = 0;
  for (const PortForward& f : options_.forwards) {
    if (f.count < 1 || f.count > 65536 || f.host_port + uint64_t{f.count} - 1 > 65535 ||
        f.guest_port + uint64_t{f.count} - 1 > 65535) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "udp: forward %d:%d (%d ports) out of range", f.host_port, f.guest_port, f.count));
    }
    for (uint32_t i = 0; i < f.count; ++i) {
      const uint16_t host_port = static_cast<uint16_t>(f.host_port + i);
      const uint16_t guest_port = static_cast<uint16_t>(f.guest_port + i);
      bool bound = false;
      if ((f.family == AF_UNSPEC || f.family == AF_INET) && rules.ipv4) {
        bool skipped = false;
        if (absl::Status s = OpenListener(f, AF_INET, host_port, guest_port, &skipped); !s.ok()) {
          return s;
        }
        bound = bound || !skipped;
      }
      if ((f.family == AF_UNSPEC || f.family == AF_INET6) && rules.ipv6) {
        bool skipped = false;
        absl::Status s = OpenListener(f, AF_INET6, host_port, guest_port, &skipped);
        if (!s.ok()) {
          // A host without IPv6 still forwards IPv4 for an unqualified spec.
          if (f.family != AF_UNSPEC || !absl::IsUnavailable(s)) return s;
          VUNET_LOG(kInfo, "udp: port %d not forwarded over IPv6: %s", host_port, s.message());
        } else {
          bound = bound || !skipped;
        }
      }
      if (f.weak) {
        ++weak_ports;
        if (bound) ++weak_bound;
      }
    }
  }
  if (weak_ports > 0 && weak_bound == 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "-u: none of the %d ports to forward could be bound (in use, or privileged)", weak_ports));
  }
  if (weak_bound < weak_ports) {
    VUNET_LOG(kInfo, "-u: %d of %d ports forwarded; the others are in use or privileged",
              weak_bound, weak_ports);
  }
  return absl::OkStatus();
}

absl::Status UdpTranslator::OpenListener(const PortForward& f, int family, uint16_t host_port,
                                         uint16_t guest_port, bool* skipped) {
  const char* version = family == AF_INET ? "IPv4" : "IPv6";
  UniqueFd fd(socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    const int err = errno;
    if (err == EAFNOSUPPORT) {
      return absl::UnavailableError(absl::StrCat(version, " not supported by the host"));
    }
    return absl::ErrnoToStatus(err,
                               absl::StrFormat("udp: %s socket for port %d", version, host_port));
  }
  const int one = 1;
  if (family == AF_INET6) setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (f.freebind) {
    if (family == AF_INET) setsockopt(fd.get(), IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
    if (family == AF_INET6) setsockopt(fd.get(), IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one));
  }
  if (!f.ifname.empty() && setsockopt(fd.get(), SOL_SOCKET, SO_BINDTODEVICE, f.ifname.c_str(),
                                      static_cast<socklen_t>(f.ifname.size())) != 0) {
    return absl::ErrnoToStatus(
        errno, absl::StrFormat("udp: port %d: binding to interface %s", host_port, f.ifname));
  }
  Listener l;
  l.family = family;
  l.port = host_port;
  l.guest_port = guest_port;
  Endpoint bind_to;
  if (family == AF_INET) {
    l.bind4 = f.family == AF_INET ? f.bind4 : in_addr{};
    bind_to = {InetAddr::V4(l.bind4), host_port};
  } else {
    l.bind6 = f.family == AF_INET6 ? f.bind6 : in6addr_any;
    bind_to = {InetAddr::V6(l.bind6), host_port};
  }
  sockaddr_storage addr;
  const socklen_t len = bind_to.ToSockaddr(&addr);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    const int err = errno;
    if (family == AF_INET6 && f.family == AF_UNSPEC && err == EADDRNOTAVAIL) {
      return absl::UnavailableError("no IPv6 address to bind");
    }
    if (f.weak && (err == EADDRINUSE || err == EACCES)) {
      VUNET_LOG(kDebug, "udp: %s not forwarded: %s", bind_to.ToString(), strerror(err));
      *skipped = true;
      return absl::OkStatus();
    }
    return absl::ErrnoToStatus(err,
                               absl::StrFormat("udp: cannot bind %s (-u)", bind_to.ToString()));
  }
  SetUpSocket(fd.get(), family, &l.rx);
  const size_t index = listeners_.size();
  if (absl::Status s = env_.watcher->Watch(fd.get(), EPOLLIN, ListenerTag(index)); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("udp: port ", host_port, ": ", s.message()));
  }
  l.fd = std::move(fd);
  listeners_.push_back(std::move(l));
  if (f.weak) {
    VUNET_LOG(kDebug, "udp: forwarding %s to guest port %d", bind_to.ToString(), guest_port);
  } else {
    VUNET_LOG(kInfo, "udp: forwarding %s to guest port %d", bind_to.ToString(), guest_port);
  }
  return absl::OkStatus();
}

void UdpTranslator::SetUpSocket(int fd, int family, UdpRxSocketState* rx) {
  const int one = 1;
  if (family == AF_INET) {
    setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof(one));
  } else {
    setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof(one));
  }
  if (options_.socket_buffer > 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &options_.socket_buffer, sizeof(int));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &options_.socket_buffer, sizeof(int));
  }
  rx->batched = (family == AF_INET ? peek4_ : peek6_) && EnablePeekOffset(fd);
  // Coalesced datagrams from the first one on, when the guest takes them
  // (UdpVuReceiver turns it on later for a guest that negotiates USO then).
  const vu::NetConfig& config = env_.rx->config();
  if (config.guest_uso4 || config.guest_uso6) {
    if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0) {
      rx->gro = true;
    } else {
      rx->gro_refused = true;
    }
  }
}

// ---------------------------------------------------------------------------
// Guest to host.

void UdpTranslator::OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
                            const ParsedFrame& parsed) {
  if (parsed.l4 != L4Kind::kUdp) return;  // The dispatcher routes only UDP here.
  if (shut_down_) return;
  const ForwardRules& rules = env_.forward->rules();
  const bool v6 = parsed.l3 == L3Kind::kIpv6;
  if (v6 ? !rules.ipv6 : !rules.ipv4) {
    ++stats_.ignored;
    return;
  }
  // The dispatcher let only a UDP_L4 segmentation request with 0 < gso_size
  // <= the payload through (CheckGuestOffload); whoever else calls gets the
  // same checked here.
  const bool segmented = hdr.gso_type != vu::kVirtioNetHdrGsoNone;
  if ((segmented && (hdr.gso_type != virtio::kVirtioNetHdrGsoUdpL4 || hdr.gso_size == 0)) ||
      parsed.src_port == 0 || parsed.dst_port == 0) {
    ++stats_.malformed;
    VUNET_LOG_RATELIMITED(kInfo, "udp: guest datagram dropped: gso type %d, ports %d -> %d",
                          hdr.gso_type, parsed.src_port, parsed.dst_port);
    return;
  }
  const uint16_t gso_size =
      segmented && parsed.payload_len > hdr.gso_size ? hdr.gso_size : uint16_t{0};
  // A source replies could not go back to.
  const InetAddr src = v6 ? InetAddr::V6(parsed.ip.src6) : InetAddr::V4(parsed.ip.src4);
  if (src.IsUnspecified() || src.IsMulticast() || src.IsLoopback() ||
      (src.is_v4() && (ntohl(src.v4().s_addr) >> 24) >= 224)) {
    ++stats_.bad_destination;
    return;
  }
  const std::optional<FlowKey> key = FlowKey::FromFrame(parsed);
  if (!key.has_value()) {
    ++stats_.malformed;
    return;
  }

  FlowId id = env_.flows->Find(*key);
  UdpFlow* flow = id.valid() ? env_.flows->Data<UdpFlow>(id) : nullptr;
  if (flow == nullptr) {
    id = OpenOutbound(*key, parsed, frame);
    if (!id.valid()) return;
    flow = env_.flows->Data<UdpFlow>(id);
  }
  flow->guest_mac = parsed.src_mac;
  flow->last_active_ns = Now();
  Queue(*flow, id, frame, parsed.payload_offset, parsed.payload_len, gso_size);
}

FlowId UdpTranslator::OpenOutbound(const FlowKey& key, const ParsedFrame& parsed,
                                   absl::Span<const iovec> frame) {
  // Where it goes on the host.
  Refusal why;
  const std::optional<Endpoint> to =
      env_.forward->Outbound(FlowProto::kUdp, Endpoint{key.remote(), key.remote_port}, &why);
  if (!to.has_value()) {
    ++stats_.bad_destination;
    VUNET_LOG_RATELIMITED(kDebug, "udp: %s: destination not translated: %s", key.ToString(),
                          RefusalName(why));
    return {};
  }
  // DNS flows (answered, they end soon): to port 53, or mapped to a resolver.
  const bool dns = key.remote_port == kDnsPort || to->port == kDnsPort;
  if (options_.max_flows != 0 && flow_count_ >= options_.max_flows) {
    ++stats_.table_full;
    VUNET_LOG_RATELIMITED(kWarning, "udp: %d flows, the most allowed: datagram dropped",
                          flow_count_);
    return {};
  }
  absl::StatusOr<FlowId> inserted = env_.flows->Insert(key);
  if (!inserted.ok()) {
    ++stats_.table_full;  // The table logged it.
    return {};
  }
  const FlowId id = *inserted;
  UdpFlow* flow = env_.flows->Emplace<UdpFlow>(id);
  ++flow_count_;
  const int family = to->addr.family();
  flow->fd.reset(socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!flow->fd.valid()) {
    ++stats_.socket_errors;
    VUNET_LOG_RATELIMITED(kWarning, "udp: socket for %s: %s", key.ToString(), strerror(errno));
    Close(id);
    return {};
  }
  const int fd = flow->fd.get();
  SetUpSocket(fd, family, &flow->rx);
  sockaddr_storage addr;
  const socklen_t len = to->ToSockaddr(&addr);
  if (absl::Status s = BindOutbound(fd, reinterpret_cast<sockaddr*>(&addr), options_.outbound);
      !s.ok()) {
    ++stats_.socket_errors;
    VUNET_LOG_RATELIMITED(kWarning, "udp: %s: %s", key.ToString(), s.message());
    flow->fd.reset();  // Never watched.
    Close(id);
    return {};
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    const int err = errno;
    ++stats_.unreachable;
    VUNET_LOG_RATELIMITED(kDebug, "udp: %s: connect to %s: %s", key.ToString(), to->ToString(),
                          strerror(err));
    flow->fd.reset();  // Never watched.
    const bool host = err == EHOSTUNREACH || err == EADDRNOTAVAIL;
    if (host || err == ENETUNREACH || err == EACCES || err == EPERM) {
      // Tell the guest as a router would, quoting its datagram.
      uint8_t quote[kQuotedPayload];
      const size_t n = std::min(parsed.payload_len, sizeof(quote));
      if (!FrameReader(frame).Read(parsed.payload_offset, quote, n)) {
        Close(id);
        return {};
      }
      const uint8_t code = host                 ? ICMP_HOST_UNREACH
                           : err == ENETUNREACH ? ICMP_NET_UNREACH
                                                : ICMP_PKT_FILTERED;
      SendUnreachable(key, parsed.src_mac, SO_EE_ORIGIN_ICMP, ICMP_DEST_UNREACH, code, quote, n);
    }
    Close(id);
    return {};
  }
  if (absl::Status s = env_.watcher->Watch(fd, EPOLLIN, FlowTag(id)); !s.ok()) {
    ++stats_.socket_errors;
    VUNET_LOG_RATELIMITED(kWarning, "udp: %s: %s", key.ToString(), s.ToString());
    flow->fd.reset();  // Never watched: nothing to unwatch.
    Close(id);
    return {};
  }
  flow->dns = dns;
  flow->last_active_ns = Now();
  env_.flows->SetTimer(id, flow->last_active_ns + options_.idle_timeout_ns);
  ++stats_.flows_opened;
  return id;
}

void UdpTranslator::Queue(const UdpFlow& flow, FlowId id, absl::Span<const iovec> frame,
                          size_t offset, size_t len, uint16_t gso_size) {
  (void)id;
  int fd;
  const FlowKey* host_key = nullptr;
  if (flow.inbound) {
    if (flow.listener >= listeners_.size() || !listeners_[flow.listener].fd.valid()) return;
    fd = listeners_[flow.listener].fd.get();
    host_key = env_.flows->Key(id, FlowSide::kHost);
    if (host_key == nullptr) return;
  } else {
    fd = flow.fd.get();
  }
  if (tx_pending_ == tx_msgs_.size()) FlushTx();
  size_t n = 0;
  if (IovSlice(frame.data(), frame.size(), offset, len, tx_iov_.data() + tx_iov_used_, &n,
               tx_iov_.size() - tx_iov_used_) < len) {
    if (tx_iov_used_ == 0) {
      ++stats_.tx_errors;
      VUNET_LOG_RATELIMITED(kWarning, "udp: datagram in more than %d pieces: dropped",
                            tx_iov_.size());
      return;
    }
    FlushTx();
    n = 0;
    if (IovSlice(frame.data(), frame.size(), offset, len, tx_iov_.data(), &n, tx_iov_.size()) <
        len) {
      ++stats_.tx_errors;
      return;
    }
  }
  mmsghdr& m = tx_msgs_[tx_pending_];
  m = {};
  m.msg_hdr.msg_iov = tx_iov_.data() + tx_iov_used_;
  m.msg_hdr.msg_iovlen = n;
  if (host_key != nullptr) {
    m.msg_hdr.msg_name = &tx_names_[tx_pending_];
    m.msg_hdr.msg_namelen =
        Endpoint{host_key->remote(), host_key->remote_port}.ToSockaddr(&tx_names_[tx_pending_]);
  }
  if (gso_size != 0) {
    SegmentCmsg& c = tx_cmsg_[tx_pending_];
    std::memset(&c, 0, sizeof(c));
    m.msg_hdr.msg_control = c.bytes;
    m.msg_hdr.msg_controllen = sizeof(c.bytes);
    cmsghdr* cm = CMSG_FIRSTHDR(&m.msg_hdr);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    std::memcpy(CMSG_DATA(cm), &gso_size, sizeof(gso_size));
  }
  if (tx_pending_ > 0 && tx_fds_[0] != fd) tx_one_fd_ = false;
  tx_fds_[tx_pending_] = fd;
  ++tx_pending_;
  tx_iov_used_ += n;
}

void UdpTranslator::OnBatchEnd() { FlushTx(); }

void UdpTranslator::FlushTx() {
  const size_t n = tx_pending_;
  if (n == 0) return;
  if (tx_one_fd_) {
    SendGroup(tx_fds_[0], tx_msgs_.data(), n);
  } else {
    // One sendmmsg per socket, each socket's datagrams in their order.
    std::fill(tx_done_.begin(), tx_done_.begin() + n, 0);
    for (size_t i = 0; i < n; ++i) {
      if (tx_done_[i]) continue;
      const int fd = tx_fds_[i];
      size_t g = 0;
      for (size_t j = i; j < n; ++j) {
        if (!tx_done_[j] && tx_fds_[j] == fd) {
          tx_group_[g++] = tx_msgs_[j];
          tx_done_[j] = 1;
        }
      }
      SendGroup(fd, tx_group_.data(), g);
    }
  }
  tx_pending_ = 0;
  tx_iov_used_ = 0;
  tx_one_fd_ = true;
}

void UdpTranslator::SendGroup(int fd, mmsghdr* msgs, size_t count) {
  size_t sent = 0;
  bool retried = false;
  while (sent < count) {
    const int r =
        sendmmsg(fd, msgs + sent, static_cast<unsigned>(count - sent), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r > 0) {
      for (size_t k = sent; k < sent + static_cast<size_t>(r); ++k) {
        stats_.tx_bytes += msgs[k].msg_len;
        const uint16_t gso = SegmentSize(msgs[k].msg_hdr);
        if (gso == 0) {
          ++stats_.tx_datagrams;
        } else {
          ++stats_.tx_segmented;
          stats_.tx_datagrams += (msgs[k].msg_len + gso - 1) / gso;
        }
      }
      sent += static_cast<size_t>(r);
      retried = false;
      continue;
    }
    const int err = r < 0 ? errno : EIO;
    if (err == EINTR) continue;
    if (SegmentSize(msgs[sent].msg_hdr) != 0 && (err == EINVAL || err == EIO || err == EMSGSIZE ||
                                                 err == ENOPROTOOPT || err == EOPNOTSUPP)) {
      // UDP_SEGMENT refused (see the header): the datagrams one by one.
      ++stats_.tx_split;
      VUNET_LOG_RATELIMITED(kDebug, "udp: UDP_SEGMENT refused (%s): datagrams sent one by one",
                            strerror(err));
      if (!SendSplit(fd, msgs[sent])) ++stats_.tx_errors;
      ++sent;
      retried = false;
      continue;
    }
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
      stats_.tx_buffer_full += count - sent;
      VUNET_LOG_RATELIMITED(kDebug, "udp: host socket buffer full: %d datagrams dropped",
                            count - sent);
      return;
    }
    if (!retried && (err == ECONNREFUSED || err == EHOSTUNREACH || err == ENETUNREACH ||
                     err == EHOSTDOWN || err == ENONET || err == EPROTO)) {
      // An ICMP error an earlier datagram earned, reported (and cleared) by
      // this send: this one was not sent. The error queue tells the guest.
      retried = true;
      continue;
    }
    ++stats_.tx_errors;
    VUNET_LOG_RATELIMITED(kDebug, "udp: send: %s", strerror(err));
    ++sent;
    retried = false;
  }
}

bool UdpTranslator::SendSplit(int fd, const mmsghdr& m) {
  const uint16_t gso = SegmentSize(m.msg_hdr);
  const size_t total = IovSize(m.msg_hdr.msg_iov, m.msg_hdr.msg_iovlen);
  if (gso == 0 || (total + gso - 1) / gso > kMaxSplitSegments) return false;
  size_t count = 0;
  size_t iov_used = 0;
  for (size_t off = 0; off < total; off += gso) {
    const size_t len = std::min<size_t>(gso, total - off);
    size_t n = 0;
    if (IovSlice(m.msg_hdr.msg_iov, m.msg_hdr.msg_iovlen, off, len, split_iov_.data() + iov_used,
                 &n, split_iov_.size() - iov_used) < len) {
      return false;  // Too fragmented for our entries.
    }
    mmsghdr& s = split_msgs_[count++];
    s = {};
    s.msg_hdr.msg_name = m.msg_hdr.msg_name;
    s.msg_hdr.msg_namelen = m.msg_hdr.msg_namelen;
    s.msg_hdr.msg_iov = split_iov_.data() + iov_used;
    s.msg_hdr.msg_iovlen = n;
    iov_used += n;
  }
  for (size_t sent = 0; sent < count;) {
    const int r = sendmmsg(fd, split_msgs_.data() + sent, static_cast<unsigned>(count - sent),
                           MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      stats_.tx_buffer_full += count - sent;
      return true;  // Counted as what it is.
    }
    for (size_t k = sent; k < sent + static_cast<size_t>(r); ++k) {
      stats_.tx_bytes += split_msgs_[k].msg_len;
    }
    stats_.tx_datagrams += static_cast<size_t>(r);
    sent += static_cast<size_t>(r);
  }
  return true;
}

// ---------------------------------------------------------------------------
// Host to guest.

void UdpTranslator::FillSpec(const FlowKey& key, const MacAddr& guest_mac, FrameSpec* spec) {
  spec->src_mac = env_.guest->gateway_mac;
  spec->dst_mac = guest_mac;
  spec->ipv6 = !key.is_v4();
  if (key.is_v4()) {
    spec->src4 = key.remote4();
    spec->dst4 = key.local4();
  } else {
    spec->src6 = key.remote_addr;
    spec->dst6 = key.local_addr;
  }
  spec->src_port = key.remote_port;
  spec->dst_port = key.local_port;
  spec->protocol = IPPROTO_UDP;
  spec->ipv4_id = ipv4_id_++;
}

void UdpTranslator::OnSocketEvent(uint64_t tag, uint32_t events) {
  if (shut_down_) return;
  const uint8_t kind = static_cast<uint8_t>((tag >> 56) - env_.first_kind);
  if (kind == kFlowSocketKind) {
    const FlowId id = env_.flows->FindByRef(FlowRef::FromU64(tag));
    if (!id.valid()) return;  // Closed since.
    UdpFlow* flow = env_.flows->Data<UdpFlow>(id);
    if (flow == nullptr || flow->inbound || !flow->fd.valid()) return;
    if (events & EPOLLERR) DrainErrors(flow->fd.get(), id, 0);
    if (events & EPOLLIN) ReceiveFlow(id, flow);
  } else if (kind == kListenerKind) {
    const size_t index = static_cast<uint32_t>(tag);
    if (index >= listeners_.size() || !listeners_[index].fd.valid()) return;
    if (events & EPOLLERR) DrainErrors(listeners_[index].fd.get(), FlowId{}, index);
    if (events & EPOLLIN) ReceiveListener(index);
  }
}

void UdpTranslator::ReceiveFlow(FlowId id, UdpFlow* flow) {
  const FlowKey* key = env_.flows->Key(id);
  if (key == nullptr) return;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const UdpVuReceiver::Result r =
        receiver_.Receive(env_.rx, flow->fd.get(), &flow->rx, /*want_peer=*/false,
                          [&](const sockaddr_storage&, socklen_t, size_t, FrameSpec* spec) {
                            FillSpec(*key, flow->guest_mac, spec);
                            return true;
                          });
    if (r.frames > 0) {
      stats_.rx_datagrams += r.frames;
      flow->last_active_ns = Now();
      if (flow->dns && !flow->answered) {
        flow->answered = true;
        env_.flows->SetTimer(id, flow->last_active_ns + options_.dns_timeout_ns);
      }
    }
    if (r.outcome == UdpVuReceiver::Outcome::kNoRoom) {
      Block(flow->fd.get(), FlowTag(id), &flow->blocked);
    } else if (r.outcome == UdpVuReceiver::Outcome::kError) {
      // An ICMP error pending on the socket: pass it on, then read on.
      DrainErrors(flow->fd.get(), id, 0);
      continue;
    }
    break;
  }
  stats_.rx_bytes = receiver_.stats().bytes;
}

void UdpTranslator::ReceiveListener(size_t index) {
  Listener& l = listeners_[index];
  for (int attempt = 0; attempt < 2; ++attempt) {
    const UdpVuReceiver::Result r = receiver_.Receive(
        env_.rx, l.fd.get(), &l.rx, /*want_peer=*/true,
        [&](const sockaddr_storage& peer, socklen_t peer_len, size_t, FrameSpec* spec) {
          return PrepareInbound(index, peer, peer_len, spec);
        });
    stats_.rx_datagrams += r.frames;
    if (r.outcome == UdpVuReceiver::Outcome::kNoRoom) {
      Block(l.fd.get(), ListenerTag(index), &l.blocked);
    } else if (r.outcome == UdpVuReceiver::Outcome::kError) {
      DrainErrors(l.fd.get(), FlowId{}, index);
      continue;
    }
    break;
  }
  stats_.rx_bytes = receiver_.stats().bytes;
}

bool UdpTranslator::PrepareInbound(size_t index, const sockaddr_storage& peer, socklen_t peer_len,
                                   FrameSpec* spec) {
  const Listener& l = listeners_[index];
  FlowKey host_key;
  if (l.family == AF_INET) {
    if (peer.ss_family != AF_INET || peer_len < sizeof(sockaddr_in)) return false;
    const sockaddr_in& p = reinterpret_cast<const sockaddr_in&>(peer);
    host_key = FlowKey::V4(FlowProto::kUdp, l.bind4, l.port, p.sin_addr, ntohs(p.sin_port));
  } else {
    if (peer.ss_family != AF_INET6 || peer_len < sizeof(sockaddr_in6)) return false;
    const sockaddr_in6& p = reinterpret_cast<const sockaddr_in6&>(peer);
    host_key = FlowKey::V6(FlowProto::kUdp, l.bind6, l.port, p.sin6_addr, ntohs(p.sin6_port));
  }
  if (host_key.remote_port == 0) return false;
  FlowId id = env_.flows->Find(host_key, FlowSide::kHost);
  UdpFlow* flow = id.valid() ? env_.flows->Data<UdpFlow>(id) : nullptr;
  if (flow == nullptr) {
    id = OpenInbound(index, host_key);
    if (!id.valid()) return false;
    flow = env_.flows->Data<UdpFlow>(id);
  }
  flow->last_active_ns = Now();
  FillSpec(*env_.flows->Key(id), flow->guest_mac, spec);
  return true;
}

FlowId UdpTranslator::OpenInbound(size_t index, const FlowKey& host_key) {
  const Listener& l = listeners_[index];
  const InetAddr& guest = env_.forward->guest().address(l.family);
  if (guest.empty()) return {};
  // The host itself appears as the gateway.
  const InetAddr seen = env_.forward->InboundSource(host_key.remote(), l.family);
  if (seen.empty()) return {};
  const FlowKey key = FlowKey::Of(FlowProto::kUdp, guest, l.guest_port, seen, host_key.remote_port);
  if (options_.max_flows != 0 && flow_count_ >= options_.max_flows) {
    ++stats_.table_full;
    VUNET_LOG_RATELIMITED(kWarning, "udp: %d flows, the most allowed: datagram dropped",
                          flow_count_);
    return {};
  }
  absl::StatusOr<FlowId> inserted = env_.flows->Insert(key);
  if (!inserted.ok()) {
    if (absl::IsAlreadyExists(inserted.status())) {
      ++stats_.collisions;
      VUNET_LOG_RATELIMITED(kInfo, "udp: forwarded datagram dropped: %s is in use", key.ToString());
    } else {
      ++stats_.table_full;
    }
    return {};
  }
  const FlowId id = *inserted;
  if (!env_.flows->SetHostKey(id, host_key).ok()) {
    env_.flows->Remove(id);
    ++stats_.collisions;
    return {};
  }
  UdpFlow* flow = env_.flows->Emplace<UdpFlow>(id);
  ++flow_count_;
  flow->inbound = true;
  flow->listener = static_cast<uint32_t>(index);
  flow->guest_mac = env_.forward->guest().mac();
  flow->last_active_ns = Now();
  env_.flows->SetTimer(id, flow->last_active_ns + options_.idle_timeout_ns);
  ++stats_.flows_inbound;
  return id;
}

void UdpTranslator::Block(int fd, uint64_t tag, bool* blocked) {
  if (*blocked) return;
  // Level-triggered input would wake us for data we cannot place; errors
  // are still reported.
  if (absl::Status s = env_.watcher->Modify(fd, 0, tag); !s.ok()) {
    // Still watched for input: the loop comes back to it, busier.
    VUNET_LOG_RATELIMITED(kWarning, "udp: cannot pause a socket: %s", s.ToString());
    return;
  }
  *blocked = true;
  if (blocked_.size() == blocked_.capacity()) {
    // Drop what closed since (their tags are stale) before growing.
    std::erase_if(blocked_, [this](uint64_t t) {
      if (static_cast<uint8_t>((t >> 56) - env_.first_kind) != kFlowSocketKind) return false;
      return !env_.flows->FindByRef(FlowRef::FromU64(t)).valid();
    });
  }
  blocked_.push_back(tag);
}

void UdpTranslator::OnRxAvailable() {
  if (blocked_.empty() || shut_down_) return;
  for (const uint64_t tag : blocked_) {
    const uint8_t kind = static_cast<uint8_t>((tag >> 56) - env_.first_kind);
    if (kind == kFlowSocketKind) {
      const FlowId id = env_.flows->FindByRef(FlowRef::FromU64(tag));
      UdpFlow* flow = id.valid() ? env_.flows->Data<UdpFlow>(id) : nullptr;
      if (flow == nullptr || !flow->blocked) continue;
      flow->blocked = false;
      if (!env_.watcher->Modify(flow->fd.get(), EPOLLIN, tag).ok()) Close(id);
    } else {
      const size_t index = static_cast<uint32_t>(tag);
      if (index >= listeners_.size() || !listeners_[index].blocked) continue;
      listeners_[index].blocked = false;
      (void)env_.watcher->Modify(listeners_[index].fd.get(), EPOLLIN, tag);
    }
  }
  blocked_.clear();
}

// ---------------------------------------------------------------------------
// ICMP errors.

void UdpTranslator::DrainErrors(int fd, FlowId flow_id, size_t listener) {
  for (int i = 0; i < kErrorsPerEvent; ++i) {
    uint8_t quote[kQuotedPayload];
    alignas(cmsghdr) uint8_t control[256];
    sockaddr_storage name{};
    iovec iov = {quote, sizeof(quote)};
    msghdr msg{};
    msg.msg_name = &name;
    msg.msg_namelen = sizeof(name);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (n < 0) break;
    const sock_extended_err* ee = nullptr;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR) ||
          (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
        if (c->cmsg_len >= CMSG_LEN(sizeof(sock_extended_err))) {
          ee = reinterpret_cast<const sock_extended_err*>(CMSG_DATA(c));
        }
      }
    }
    if (ee == nullptr) {
      ++stats_.icmp_ignored;
      continue;
    }
    // Which flow: the socket's own, or, on a forwarding socket, the one to
    // the datagram's destination (the address the error queue names).
    FlowId id = flow_id;
    if (!id.valid() && listener < listeners_.size()) {
      const Listener& l = listeners_[listener];
      FlowKey host_key;
      if (l.family == AF_INET && name.ss_family == AF_INET) {
        const sockaddr_in& p = reinterpret_cast<const sockaddr_in&>(name);
        host_key = FlowKey::V4(FlowProto::kUdp, l.bind4, l.port, p.sin_addr, ntohs(p.sin_port));
      } else if (l.family == AF_INET6 && name.ss_family == AF_INET6) {
        const sockaddr_in6& p = reinterpret_cast<const sockaddr_in6&>(name);
        host_key = FlowKey::V6(FlowProto::kUdp, l.bind6, l.port, p.sin6_addr, ntohs(p.sin6_port));
      } else {
        ++stats_.icmp_ignored;
        continue;
      }
      id = env_.flows->Find(host_key, FlowSide::kHost);
    }
    const UdpFlow* flow = id.valid() ? env_.flows->Data<UdpFlow>(id) : nullptr;
    const FlowKey* key = id.valid() ? env_.flows->Key(id) : nullptr;
    if (flow == nullptr || key == nullptr) {
      ++stats_.icmp_ignored;
      continue;
    }
    SendUnreachable(*key, flow->guest_mac, ee->ee_origin, ee->ee_type, ee->ee_code, quote,
                    static_cast<size_t>(n));
  }
}

void UdpTranslator::SendUnreachable(const FlowKey& key, const MacAddr& guest_mac, uint8_t origin,
                                    uint8_t type, uint8_t code, const uint8_t* quote,
                                    size_t quote_len) {
  const bool v6 = !key.is_v4();
  uint8_t out_type, out_code;
  if (!MapUnreachable(origin, type, code, v6, &out_type, &out_code)) {
    ++stats_.icmp_ignored;
    return;
  }
  quote_len = std::min(quote_len, kQuotedPayload);
  FrameSpec spec;
  spec.src_mac = env_.guest->gateway_mac;
  spec.dst_mac = guest_mac;
  spec.ipv6 = v6;
  spec.protocol = v6 ? uint8_t{IPPROTO_ICMPV6} : uint8_t{IPPROTO_ICMP};
  spec.dont_fragment = false;
  // From the destination the guest addressed, to the guest.
  if (v6) {
    spec.src6 = key.remote_addr;
    spec.dst6 = key.local_addr;
  } else {
    spec.src4 = key.remote4();
    spec.dst4 = key.local4();
  }
  const size_t hlen = FrameHeadersLen(spec);
  uint8_t* msg = reply_ + hlen;
  constexpr size_t kIcmpHeader = 8;  // Type, code, checksum, 4 unused.
  std::memset(msg, 0, kIcmpHeader);
  msg[0] = out_type;
  msg[1] = out_code;
  // The guest's datagram as it sent it: its IP and UDP headers, then what the
  // host's error quoted of the payload.
  uint8_t* q = msg + kIcmpHeader;
  const size_t udp_len = kUdpHeaderLen + quote_len;
  size_t ip_len;
  if (v6) {
    Ipv6Header ip{};
    ip.version_class_flow = htonl(6u << 28);
    ip.payload_len = htons(static_cast<uint16_t>(udp_len));
    ip.next_header = IPPROTO_UDP;
    ip.hop_limit = 64;
    ip.src = key.local_addr;
    ip.dst = key.remote_addr;
    std::memcpy(q, &ip, sizeof(ip));
    ip_len = sizeof(ip);
  } else {
    Ipv4Header ip{};
    ip.version_ihl = 0x45;
    ip.total_len = htons(static_cast<uint16_t>(sizeof(ip) + udp_len));
    ip.frag_off = htons(0x4000);
    ip.ttl = 64;
    ip.protocol = IPPROTO_UDP;
    ip.src = key.local4();
    ip.dst = key.remote4();
    ip.check = htons(InternetChecksum(&ip, sizeof(ip)));
    std::memcpy(q, &ip, sizeof(ip));
    ip_len = sizeof(ip);
  }
  UdpHeader udp{};
  udp.src_port = htons(key.local_port);
  udp.dst_port = htons(key.remote_port);
  udp.len = htons(static_cast<uint16_t>(udp_len));
  std::memcpy(q + ip_len, &udp, sizeof(udp));
  if (quote_len > 0) std::memcpy(q + ip_len + sizeof(udp), quote, quote_len);
  const size_t msg_len = kIcmpHeader + ip_len + udp_len;
  static_assert(sizeof(reply_) >= kEthHeaderLen + kIpv6HeaderLen + 8 + kIpv6HeaderLen +
                                      kUdpHeaderLen + kQuotedPayload);
  const absl::StatusOr<size_t> frame_len = BuildFrame(spec, absl::MakeSpan(reply_), msg_len);
  if (!frame_len.ok() || !env_.rx->Send(absl::MakeConstSpan(reply_, *frame_len)).ok()) {
    ++stats_.icmp_ignored;
    return;
  }
  ++stats_.icmp_sent;
}

// ---------------------------------------------------------------------------
// Lifetime.

void UdpTranslator::OnTimer(FlowId id, int64_t now_ns) {
  UdpFlow* flow = env_.flows->Data<UdpFlow>(id);
  if (flow == nullptr) return;
  const int64_t timeout =
      flow->dns && flow->answered ? options_.dns_timeout_ns : options_.idle_timeout_ns;
  const int64_t deadline = flow->last_active_ns + timeout;
  if (deadline > now_ns) {
    env_.flows->SetTimer(id, deadline);
    return;
  }
  ++stats_.flows_expired;
  Close(id);
}

void UdpTranslator::Close(FlowId id) {
  UdpFlow* flow = env_.flows->Data<UdpFlow>(id);
  if (flow == nullptr) return;
  if (flow->fd.valid()) env_.watcher->Unwatch(flow->fd.get());
  if (env_.flows->Remove(id) && flow_count_ > 0) --flow_count_;
}

void UdpTranslator::Shutdown() {
  if (shut_down_) return;
  FlushTx();
  env_.flows->ForEach([this](FlowId id) {
    if (env_.flows->Data<UdpFlow>(id) != nullptr) Close(id);
  });
  for (Listener& l : listeners_) {
    if (l.fd.valid()) {
      env_.watcher->Unwatch(l.fd.get());
      l.fd.reset();
    }
  }
  blocked_.clear();
  shut_down_ = true;
}

std::string UdpTranslator::StatsLine() const {
  const UdpVuReceiver::Stats& rx = receiver_.stats();
  return absl::StrFormat(
      "udp: %d flows out, %d in, %d expired, %d open; guest->host %d datagrams (%d bytes; "
      "%d frames segmented with UDP_SEGMENT, %d of them split), "
      "dropped %d buffer full, %d errors, %d no flow room, %d no socket (fds), %d bad address, "
      "%d malformed; "
      "host->guest %d frames (%d bytes; %d of coalesced datagrams with UDP_L4, %d coalesced "
      "split), dropped %d too big, %d refused; %d wake-ups "
      "without receive buffers; %d ICMP errors to the guest",
      stats_.flows_opened, stats_.flows_inbound, stats_.flows_expired, flow_count_,
      stats_.tx_datagrams, stats_.tx_bytes, stats_.tx_segmented, stats_.tx_split,
      stats_.tx_buffer_full, stats_.tx_errors, stats_.table_full, stats_.socket_errors,
      stats_.bad_destination, stats_.malformed, rx.frames, rx.bytes, rx.uso_frames, rx.split,
      rx.too_big, rx.refused, rx.no_room, stats_.icmp_sent);
}

}  // namespace vunet::net
