#include "net/icmp/icmp.h"

#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_format.h"
#include "base/log.h"
#include "base/unique_fd.h"
#include "net/migrate/flow_fields.h"
#include "net/packet/checksum.h"

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

}  // namespace

// A flow's state, in its data slot.
struct IcmpEcho::Echo {
  UniqueFd fd;
  uint16_t guest_id = 0;  // The identifier the guest chose (the kernel's differs).
  MacAddr guest_mac;      // Of its latest request.
  int64_t last_used_ns = 0;
  FlowId lru_prev;  // Towards the oldest.
  FlowId lru_next;  // Towards the newest.
};

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

absl::StatusOr<std::unique_ptr<IcmpEcho>> IcmpEcho::Create(const TranslatorEnv& env,
                                                           const IcmpEchoOptions& options) {
  if (env.flows == nullptr || env.rx == nullptr || env.watcher == nullptr ||
      env.forward == nullptr || env.guest == nullptr) {
    return absl::InvalidArgumentError("ICMP echo: flows, rx, watcher, forward, guest needed");
  }
  if (env.first_kind < 64 || env.first_kind > 256 - kKindsPerTranslator) {
    return absl::InvalidArgumentError("ICMP echo: first_kind out of range");
  }
  if (options.max_sockets < 1 || options.max_sockets > kMaxIcmpSockets) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_sockets %d not in 1..%d", options.max_sockets, kMaxIcmpSockets));
  }
  if (options.new_sockets_per_second < 1) {
    return absl::InvalidArgumentError("new_sockets_per_second must be at least 1");
  }
  if (options.idle_timeout_ns <= 0) {
    return absl::InvalidArgumentError("idle_timeout_ns must be positive");
  }
  std::unique_ptr<IcmpEcho> e(new IcmpEcho(env, options));
  if (e->env_.clock == nullptr) e->env_.clock = MonotonicNowNs;
  e->ipv4_ = env.forward->rules().ipv4;
  e->ipv6_ = env.forward->rules().ipv6;
  if (e->ipv4_) {
    if (absl::Status s = ProbePingSockets(AF_INET); !s.ok()) return s;
  }
  if (e->ipv6_) {
    absl::Status s = ProbePingSockets(AF_INET6);
    if (absl::IsUnavailable(s)) {
      VUNET_LOG(kWarning, "ICMPv6 echo off: %s", s.ToString());
      e->ipv6_ = false;
    } else if (!s.ok()) {
      return s;
    }
  }
  return e;
}

IcmpEcho::IcmpEcho(const TranslatorEnv& env, const IcmpEchoOptions& options)
    : env_(env),
      options_(options),
      request_(new uint8_t[65535]),
      reply_(new uint8_t[kMaxFrameLen]) {
  static_assert(kMaxFrameLen >= kEthHeaderLen + kIpv6HeaderLen + kMaxMessage6);
}

IcmpEcho::~IcmpEcho() { Shutdown(); }

void IcmpEcho::OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
                       const ParsedFrame& parsed) {
  if (shut_down_ || (parsed.l4 != L4Kind::kIcmp && parsed.l4 != L4Kind::kIcmpv6)) return;
  const bool v6 = parsed.l4 == L4Kind::kIcmpv6;
  if (parsed.icmp.type != (v6 ? kIcmpv6EchoRequest : kIcmpEchoRequest) || !(v6 ? ipv6_ : ipv4_)) {
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
  if (!FrameReader(frame).Read(parsed.l4_offset, request_.get(), len)) {
    ++stats_.malformed;
    return;
  }
  if ((hdr.flags & vu::kVirtioNetHdrFNeedsCsum) == 0) {
    // ICMP over IPv4 has no pseudo-header.
    const uint16_t sum =
        v6 ? L4ChecksumV6(parsed.ip.src6, parsed.ip.dst6, IPPROTO_ICMPV6, request_.get(), len)
           : InternetChecksum(request_.get(), len);
    if (sum != 0) {
      ++stats_.malformed;
      VUNET_LOG_RATELIMITED(kInfo, "ICMP echo request dropped: bad checksum");
      return;
    }
  }

  const std::optional<FlowKey> key = FlowKey::FromFrame(parsed);
  if (!key.has_value()) {
    ++stats_.malformed;
    return;
  }
  FlowId id = env_.flows->Find(*key);
  Echo* e = id.valid() ? env_.flows->Data<Echo>(id) : nullptr;
  if (e == nullptr) {
    Refusal why;
    const std::optional<Endpoint> to =
        env_.forward->Outbound(FlowProto::kIcmp, Endpoint{key->remote(), 0}, &why);
    if (!to.has_value()) {
      ++stats_.bad_destination;
      VUNET_LOG_RATELIMITED(kDebug, "ICMP echo: %s refused: %s", key->ToString(), RefusalName(why));
      return;
    }
    id = Open(*key, *to);
    if (!id.valid()) return;
    e = env_.flows->Data<Echo>(id);
    e->guest_id = parsed.icmp.id;
  }
  e->guest_mac = parsed.src_mac;
  Touch(id, e);

  // The kernel fills in the checksum and its own identifier.
  request_[2] = request_[3] = 0;
  if (send(e->fd.get(), request_.get(), len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
    ++stats_.send_errors;
    VUNET_LOG_RATELIMITED(kInfo, "ICMP echo request not sent: %s", strerror(errno));
    return;
  }
  ++stats_.requests;
}

FlowId IcmpEcho::Open(const FlowKey& key, const Endpoint& to, bool rate_limited) {
  if (rate_limited && !TakeSocketToken()) {
    ++stats_.rate_limited;
    VUNET_LOG_RATELIMITED(kInfo, "ICMP echo: new ping sockets over %d/s, request dropped",
                          options_.new_sockets_per_second);
    return {};
  }
  const int family = to.addr.family();
  UniqueFd fd(OpenPingSocket(family));
  if (!fd.valid()) {
    ++stats_.socket_errors;
    VUNET_LOG_RATELIMITED(kWarning, "ping socket: %s", strerror(errno));
    return {};
  }
  sockaddr_storage addr;
  const socklen_t addr_len = to.ToSockaddr(&addr);
  // Where requests to other hosts leave from (-o, --outbound-if4/6).
  if (absl::Status s =
          BindOutbound(fd.get(), reinterpret_cast<const sockaddr*>(&addr), options_.outbound);
      !s.ok()) {
    ++stats_.socket_errors;
    VUNET_LOG_RATELIMITED(kWarning, "ping socket: %s", s.message());
    return {};
  }
  // Full: the least recently used flow makes room (only once the new socket
  // exists, so a failure to open one evicts nothing).
  if (count_ >= options_.max_sockets && lru_head_.valid()) {
    ++stats_.evicted;
    Close(lru_head_, env_.flows->Data<Echo>(lru_head_));
  }
  // Connected: replies come from the destination alone, and the socket
  // reports that destination's errors.
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), addr_len) != 0) {
    ++stats_.send_errors;
    VUNET_LOG_RATELIMITED(kInfo, "ICMP echo to %s: %s", to.addr.ToString(), strerror(errno));
    return {};
  }
  const absl::StatusOr<FlowId> added = env_.flows->Insert(key);
  if (!added.ok()) {
    ++stats_.table_full;  // The table logged it.
    return {};
  }
  const FlowId id = *added;
  Echo* e = env_.flows->Emplace<Echo>(id);
  const uint64_t tag = FlowRef(id, static_cast<uint8_t>(env_.first_kind + kSocketKind)).u64();
  if (!env_.watcher->Watch(fd.get(), EPOLLIN, tag).ok()) {
    ++stats_.socket_errors;
    env_.flows->Remove(id);
    return {};
  }
  e->fd = std::move(fd);
  ++count_;
  e->last_used_ns = Now();
  env_.flows->SetTimer(id, e->last_used_ns + options_.idle_timeout_ns);
  return id;
}

void IcmpEcho::OnSocketEvent(uint64_t tag, uint32_t events) {
  (void)events;
  const FlowRef ref = FlowRef::FromU64(tag);
  if (ref.kind() != env_.first_kind + kSocketKind) return;
  const FlowId id = env_.flows->FindByRef(ref);
  Echo* e = id.valid() ? env_.flows->Data<Echo>(id) : nullptr;
  if (e == nullptr) return;  // Closed since.
  ReadReplies(id, e);
}

void IcmpEcho::ReadReplies(FlowId id, Echo* e) {
  const FlowKey& key = *env_.flows->Key(id);
  const bool v6 = !key.is_v4();
  FrameSpec spec;
  spec.src_mac = env_.guest->gateway_mac;
  spec.dst_mac = e->guest_mac;
  spec.ipv6 = v6;
  if (v6) {
    spec.src6 = key.remote_addr;
    spec.dst6 = key.local_addr;
  } else {
    spec.src4 = key.remote4();
    spec.dst4 = key.local4();
  }
  spec.protocol = v6 ? uint8_t{IPPROTO_ICMPV6} : uint8_t{IPPROTO_ICMP};
  spec.dont_fragment = false;
  const size_t hlen = FrameHeadersLen(spec);
  const size_t max = v6 ? kMaxMessage6 : kMaxMessage4;
  uint8_t* reply = reply_.get();
  bool any = false;
  for (int i = 0; i < kReadBatch; ++i) {
    iovec iov = {reply + hlen, max};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = recvmsg(e->fd.get(), &msg, MSG_DONTWAIT | MSG_TRUNC);
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
        reply[hlen] != (v6 ? kIcmpv6EchoReply : kIcmpEchoReply)) {
      ++stats_.reply_dropped;
      continue;
    }
    reply[hlen + 4] = static_cast<uint8_t>(e->guest_id >> 8);
    reply[hlen + 5] = static_cast<uint8_t>(e->guest_id);
    const absl::StatusOr<size_t> frame_len =
        BuildFrame(spec, absl::MakeSpan(reply, kMaxFrameLen), len);
    if (!frame_len.ok()) {
      ++stats_.reply_dropped;
      VUNET_LOG_RATELIMITED(kError, "ICMP echo reply not built: %s", frame_len.status().ToString());
      continue;
    }
    any = true;
    if (!env_.rx->Send(absl::MakeConstSpan(reply, *frame_len)).ok()) {
      ++stats_.reply_dropped;
      continue;
    }
    ++stats_.replies;
  }
  if (any) Touch(id, e);
}

void IcmpEcho::Touch(FlowId id, Echo* e) {
  e->last_used_ns = Now();
  if (lru_tail_ == id) return;
  Unlink(e);
  e->lru_prev = lru_tail_;
  e->lru_next = FlowId{};
  if (lru_tail_.valid()) {
    env_.flows->Data<Echo>(lru_tail_)->lru_next = id;
  } else {
    lru_head_ = id;
  }
  lru_tail_ = id;
}

void IcmpEcho::Unlink(Echo* e) {
  if (e->lru_prev.valid()) {
    env_.flows->Data<Echo>(e->lru_prev)->lru_next = e->lru_next;
  } else if (lru_head_.valid() && env_.flows->Data<Echo>(lru_head_) == e) {
    lru_head_ = e->lru_next;
  }
  if (e->lru_next.valid()) {
    env_.flows->Data<Echo>(e->lru_next)->lru_prev = e->lru_prev;
  } else if (lru_tail_.valid() && env_.flows->Data<Echo>(lru_tail_) == e) {
    lru_tail_ = e->lru_prev;
  }
  e->lru_prev = e->lru_next = FlowId{};
}

void IcmpEcho::OnTimer(FlowId id, int64_t now_ns) {
  Echo* e = env_.flows->Data<Echo>(id);
  if (e == nullptr) return;
  if (now_ns - e->last_used_ns >= options_.idle_timeout_ns) {
    ++stats_.expired;
    Close(id, e);
    return;
  }
  env_.flows->SetTimer(id, e->last_used_ns + options_.idle_timeout_ns);
}

void IcmpEcho::Close(FlowId id, Echo* e) {
  Unlink(e);
  if (e->fd.valid()) {
    env_.watcher->Unwatch(e->fd.get());
    e->fd.reset();
  }
  env_.flows->Remove(id);
  --count_;
}

void IcmpEcho::Shutdown() {
  shut_down_ = true;
  if (env_.flows == nullptr) return;
  env_.flows->ForEach([&](FlowId id) {
    if (env_.flows->Key(id)->proto != FlowProto::kIcmp) return;
    if (Echo* e = env_.flows->Data<Echo>(id)) Close(id, e);
  });
}

absl::Status IcmpEcho::SaveState(StateWriter& out, RepairControl*) {
  const int64_t now = Now();
  env_.flows->ForEach([&](FlowId id) {
    const Echo* e = env_.flows->Data<Echo>(id);
    if (e == nullptr) return;
    const size_t r = out.Begin(RecordType::kIcmpFlow);
    WriteKey(out, *env_.flows->Key(id));
    WriteMac(out, e->guest_mac);
    WriteTimeLeft(out, e->last_used_ns + options_.idle_timeout_ns, now);
    out.End(r);
  });
  return absl::OkStatus();
}

absl::Status IcmpEcho::StageRecord(const RecordHeader& header, StateReader& in) {
  if (header.type != static_cast<uint16_t>(RecordType::kIcmpFlow)) {
    return Translator::StageRecord(header, in);
  }
  if (staged_.size() >= options_.max_sockets) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("more than %d ICMP echo flows", options_.max_sockets));
  }
  const int64_t now = Now();
  Staged f{.key = ReadKey(in), .guest_mac = ReadMac(in), .idle_left_ns = 0};
  const int64_t deadline = ReadTimeLeft(in, now, options_.idle_timeout_ns);
  f.idle_left_ns = deadline == 0 ? options_.idle_timeout_ns : deadline - now;
  if (in.ok() && (f.key.proto != FlowProto::kIcmp || f.key.remote_port != 0)) {
    in.Fail("an ICMP echo flow key that is not one");
  }
  if (absl::Status s = in.Done(); !s.ok()) return s;
  staged_.push_back(f);
  return absl::OkStatus();
}

void IcmpEcho::ApplyStaged(RepairControl*) {
  size_t restored = 0;
  for (const Staged& f : staged_) {
    if ((f.key.is_v4() && !ipv4_) || (!f.key.is_v4() && !ipv6_)) continue;
    const std::optional<Endpoint> to =
        env_.forward->Outbound(FlowProto::kIcmp, Endpoint{f.key.remote(), 0});
    if (!to.has_value() || env_.flows->Find(f.key).valid()) continue;
    const FlowId id = Open(f.key, *to, /*rate_limited=*/false);
    if (!id.valid()) continue;
    Echo* e = env_.flows->Data<Echo>(id);
    e->guest_id = f.key.local_port;
    e->guest_mac = f.guest_mac;
    Touch(id, e);
    e->last_used_ns = Now() + f.idle_left_ns - options_.idle_timeout_ns;
    env_.flows->SetTimer(id, Now() + f.idle_left_ns);
    ++restored;
  }
  VUNET_LOG(kInfo, "ICMP echo: %d of %d migrated flows restored", restored, staged_.size());
  staged_.clear();
}

void IcmpEcho::OnMigratedOut(bool linger) {
  if (linger || env_.flows == nullptr) return;
  env_.flows->ForEach([&](FlowId id) {
    if (Echo* e = env_.flows->Data<Echo>(id)) Close(id, e);
  });
}

std::string IcmpEcho::StatsLine() const {
  const Stats& s = stats_;
  return absl::StrFormat(
      "icmp: %d requests, %d replies; dropped: %d malformed, %d destination, %d rate-limited, "
      "%d table full, %d replies; %d ignored; %d socket, %d send, %d receive errors; flows %d "
      "evicted, %d expired",
      s.requests, s.replies, s.malformed, s.bad_destination, s.rate_limited, s.table_full,
      s.reply_dropped, s.ignored, s.socket_errors, s.send_errors, s.recv_errors, s.evicted,
      s.expired);
}

bool IcmpEcho::TakeSocketToken() {
  const double rate = options_.new_sockets_per_second;
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
