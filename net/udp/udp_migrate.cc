// The UDP translator's part of a live migration (see udp.h).

#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "base/log.h"
#include "net/migrate/flow_fields.h"
#include "net/udp/udp.h"

namespace vunet::net {
namespace {

// Record kinds.
constexpr uint8_t kOutbound = 0;
constexpr uint8_t kInbound = 1;

std::optional<Endpoint> SocketName(int fd, bool peer) {
  sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  const int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
                     : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (r != 0) return std::nullopt;
  return Endpoint::FromSockaddr(ss, len);
}

}  // namespace

absl::Status UdpTranslator::SaveState(StateWriter& out, RepairControl*) {
  FlushTx();
  const int64_t now = Now();
  size_t saved = 0;
  env_.flows->ForEach([&](FlowId id) {
    const UdpFlow* flow = env_.flows->Data<UdpFlow>(id);
    if (flow == nullptr) return;
    const FlowKey* key = env_.flows->Key(id);
    std::optional<Endpoint> local, peer;
    if (!flow->inbound) {
      local = SocketName(flow->fd.get(), false);
      peer = SocketName(flow->fd.get(), true);
      if (!local.has_value() || !peer.has_value()) return;  // Never connected: nothing to keep.
    } else if (env_.flows->Key(id, FlowSide::kHost) == nullptr) {
      return;
    }
    const int64_t timeout =
        flow->dns && flow->answered ? options_.dns_timeout_ns : options_.idle_timeout_ns;
    const size_t r = out.Begin(RecordType::kUdpFlow);
    out.U8(flow->inbound ? kInbound : kOutbound);
    WriteKey(out, *key);
    WriteMac(out, flow->guest_mac);
    out.U8(flow->dns);
    out.U8(flow->answered);
    WriteTimeLeft(out, flow->last_active_ns + timeout, now);
    if (flow->inbound) {
      WriteKey(out, *env_.flows->Key(id, FlowSide::kHost));
    } else {
      WriteEndpoint(out, *local);
      WriteEndpoint(out, *peer);
    }
    out.End(r);
    ++saved;
  });
  VUNET_LOG(kInfo, "udp: %d flows saved for migration", saved);
  return absl::OkStatus();
}

absl::Status UdpTranslator::StageRecord(const RecordHeader& header, StateReader& in) {
  if (header.type != static_cast<uint16_t>(RecordType::kUdpFlow)) {
    return Translator::StageRecord(header, in);
  }
  const size_t limit = options_.max_flows != 0 ? options_.max_flows : env_.flows->capacity();
  if (staged_.size() >= limit) {
    return absl::ResourceExhaustedError(absl::StrFormat("more than %d UDP flows", limit));
  }
  StagedFlow f;
  const uint8_t kind = in.U8();
  f.inbound = kind == kInbound;
  f.key = ReadKey(in);
  f.guest_mac = ReadMac(in);
  f.dns = in.Bool();
  f.answered = in.Bool();
  const int64_t now = Now();
  const int64_t deadline = ReadTimeLeft(in, now, options_.idle_timeout_ns);
  f.idle_left_ns = deadline == 0 ? options_.idle_timeout_ns : deadline - now;
  if (f.inbound) {
    f.host_key = ReadKey(in);
  } else {
    f.local = ReadEndpoint(in);
    f.peer = ReadEndpoint(in);
  }
  if (in.ok()) {
    if (kind > kInbound) {
      in.Fail(absl::StrFormat("a UDP flow of kind %d", kind));
    } else if (f.key.proto != FlowProto::kUdp || f.key.local_port == 0 || f.key.remote_port == 0) {
      in.Fail("a UDP flow key that is not UDP, or has port 0");
    } else if (f.inbound && (f.host_key.proto != FlowProto::kUdp ||
                             f.host_key.family != f.key.family || f.host_key.remote_port == 0)) {
      in.Fail("an inbound UDP flow's host key does not fit it");
    } else if (!f.inbound &&
               (f.peer.addr.empty() || f.peer.port == 0 ||
                (!f.local.addr.empty() && f.local.addr.family() != f.peer.addr.family()))) {
      in.Fail("an outbound UDP flow's host endpoints are missing or of two IP versions");
    }
  }
  if (absl::Status s = in.Done(); !s.ok()) return s;
  staged_.push_back(f);
  return absl::OkStatus();
}

void UdpTranslator::ApplyStaged(RepairControl*) {
  size_t restored = 0;
  for (const StagedFlow& f : staged_) {
    if (f.inbound ? RestoreInbound(f) : RestoreOutbound(f)) ++restored;
  }
  VUNET_LOG(kInfo, "udp: %d of %d migrated flows restored", restored, staged_.size());
  staged_.clear();
}

bool UdpTranslator::RestoreOutbound(const StagedFlow& f) {
  // Where the flow goes is this host's decision: the same rules, but a
  // resolver or loopback of its own.
  const std::optional<Endpoint> to =
      env_.forward->Outbound(FlowProto::kUdp, Endpoint{f.key.remote(), f.key.remote_port});
  if (!to.has_value()) {
    VUNET_LOG(kInfo, "udp: migrated flow %s: destination refused here", f.key.ToString());
    return false;
  }
  absl::StatusOr<FlowId> inserted = env_.flows->Insert(f.key);
  if (!inserted.ok()) {
    VUNET_LOG_RATELIMITED(kInfo, "udp: migrated flow %s: %s", f.key.ToString(),
                          inserted.status().message());
    return false;
  }
  const FlowId id = *inserted;
  UdpFlow* flow = env_.flows->Emplace<UdpFlow>(id);
  ++flow_count_;
  const int family = to->addr.family();
  flow->fd.reset(socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!flow->fd.valid()) {
    ++stats_.socket_errors;
    Close(id);
    return false;
  }
  const int fd = flow->fd.get();
  SetUpSocket(fd, family, &flow->rx);
  sockaddr_storage addr;
  const socklen_t len = to->ToSockaddr(&addr);
  const auto* dst = reinterpret_cast<const sockaddr*>(&addr);
  // Where flows leave from (-o, --outbound-if4/6), and the same local port,
  // so that the host peer sees the same flow; another one where this host
  // has it taken (the source on the same host).
  const uint16_t port =
      f.local.port != 0 && f.local.addr.family() == family ? f.local.port : uint16_t{0};
  absl::Status bound = BindOutbound(fd, dst, options_.outbound, port);
  if (!bound.ok() && port != 0) {
    VUNET_LOG_RATELIMITED(kInfo, "udp: migrated flow %s: port %d not kept (%s): another used",
                          f.key.ToString(), port, bound.message());
    bound = BindOutbound(fd, dst, options_.outbound);
  }
  if (!bound.ok()) {
    ++stats_.socket_errors;
    VUNET_LOG_RATELIMITED(kWarning, "udp: migrated flow %s: %s", f.key.ToString(), bound.message());
    flow->fd.reset();  // Never watched.
    Close(id);
    return false;
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      !env_.watcher->Watch(fd, EPOLLIN, FlowTag(id)).ok()) {
    VUNET_LOG_RATELIMITED(kInfo, "udp: migrated flow %s: connect to %s: %s", f.key.ToString(),
                          to->ToString(), strerror(errno));
    flow->fd.reset();
    Close(id);
    return false;
  }
  flow->guest_mac = f.guest_mac;
  flow->dns = f.dns;
  flow->answered = f.answered;
  const int64_t timeout = f.dns && f.answered ? options_.dns_timeout_ns : options_.idle_timeout_ns;
  flow->last_active_ns = Now() + f.idle_left_ns - timeout;
  env_.flows->SetTimer(id, Now() + f.idle_left_ns);
  return true;
}

bool UdpTranslator::RestoreInbound(const StagedFlow& f) {
  // The forward's listener here: the same port and address.
  size_t index = listeners_.size();
  for (size_t i = 0; i < listeners_.size(); ++i) {
    const Listener& l = listeners_[i];
    if (!l.fd.valid() || l.port != f.host_key.local_port || l.family != f.host_key.family) continue;
    const InetAddr bound = l.family == AF_INET ? InetAddr::V4(l.bind4) : InetAddr::V6(l.bind6);
    if (bound == f.host_key.local()) index = i;
  }
  if (index == listeners_.size()) {
    VUNET_LOG(kInfo, "udp: migrated flow %s: no forward of port %d here", f.key.ToString(),
              f.host_key.local_port);
    return false;
  }
  absl::StatusOr<FlowId> inserted = env_.flows->Insert(f.key);
  if (!inserted.ok()) return false;
  const FlowId id = *inserted;
  if (!env_.flows->SetHostKey(id, f.host_key).ok()) {
    env_.flows->Remove(id);
    return false;
  }
  UdpFlow* flow = env_.flows->Emplace<UdpFlow>(id);
  ++flow_count_;
  flow->inbound = true;
  flow->listener = static_cast<uint32_t>(index);
  flow->guest_mac = f.guest_mac;
  flow->last_active_ns = Now() + f.idle_left_ns - options_.idle_timeout_ns;
  env_.flows->SetTimer(id, Now() + f.idle_left_ns);
  return true;
}

void UdpTranslator::OnMigratedOut(bool linger) {
  // Kept, the flows go on if the migration fails after all; closed, their
  // ports are free for a destination on this host.
  if (linger) return;
  env_.flows->ForEach([this](FlowId id) {
    if (env_.flows->Data<UdpFlow>(id) != nullptr) Close(id);
  });
}

}  // namespace vunet::net
