#include "net/translate/frame_path.h"

#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "net/migrate/flow_fields.h"
#include "net/migrate/state_stream.h"

namespace vunet::net {

absl::StatusOr<std::unique_ptr<FramePath>> FramePath::Create(const FramePathEnv& env,
                                                             const FramePathOptions& options) {
  if (env.flows == nullptr || env.rx == nullptr || env.watcher == nullptr ||
      env.forward == nullptr || env.guest == nullptr) {
    return absl::InvalidArgumentError("frame path: flows, rx, watcher, forward, guest needed");
  }
  if (env.first_kind < 64 || env.first_kind > 256 - 3 * kKindsPerTranslator) {
    return absl::InvalidArgumentError("frame path: first_kind out of range");
  }
  std::unique_ptr<FramePath> p(new FramePath());
  p->env_ = env;
  p->arp_ = options.arp;
  if (options.dhcp.has_value()) {
    absl::StatusOr<DhcpServer> d = DhcpServer::Create(*options.dhcp);
    if (!d.ok()) return absl::InvalidArgumentError(absl::StrCat("DHCP: ", d.status().message()));
    p->dhcp_.emplace(std::move(*d));
  }
  if (options.ndp.has_value()) {
    absl::StatusOr<NdpResponder> n = NdpResponder::Create(*options.ndp);
    if (!n.ok()) return absl::InvalidArgumentError(absl::StrCat("NDP: ", n.status().message()));
    p->ndp_.emplace(std::move(*n));
  }
  if (options.dhcpv6.has_value()) {
    absl::StatusOr<Dhcpv6Server> d = Dhcpv6Server::Create(*options.dhcpv6);
    if (!d.ok()) return absl::InvalidArgumentError(absl::StrCat("DHCPv6: ", d.status().message()));
    p->dhcpv6_.emplace(std::move(*d));
  }
  TranslatorEnv tenv{.flows = env.flows,
                     .rx = env.rx,
                     .watcher = env.watcher,
                     .forward = env.forward,
                     .guest = env.guest,
                     .first_kind = env.first_kind,
                     .clock = env.clock};
  if (options.tcp.has_value()) {
    absl::StatusOr<std::unique_ptr<TcpTranslator>> t = TcpTranslator::Create(tenv, *options.tcp);
    if (!t.ok()) return t.status();
    p->tcp_ = std::move(*t);
  }
  tenv.first_kind = static_cast<uint8_t>(env.first_kind + kKindsPerTranslator);
  if (options.udp.has_value()) {
    absl::StatusOr<std::unique_ptr<UdpTranslator>> u = UdpTranslator::Create(tenv, *options.udp);
    if (!u.ok()) return u.status();
    p->udp_ = std::move(*u);
  }
  tenv.first_kind = static_cast<uint8_t>(env.first_kind + 2 * kKindsPerTranslator);
  if (options.icmp.has_value()) {
    absl::StatusOr<std::unique_ptr<IcmpEcho>> i = IcmpEcho::Create(tenv, *options.icmp);
    if (i.ok()) {
      p->icmp_ = std::move(*i);
      VUNET_LOG(kInfo, "ICMP echo: on (IPv4%s, through ping sockets)",
                p->icmp_->ipv6_enabled() ? " and IPv6" : "");
    } else if (options.icmp_required || absl::IsInvalidArgument(i.status())) {
      return absl::Status(i.status().code(), absl::StrCat("ICMP: ", i.status().message()));
    } else {
      VUNET_LOG(kWarning, "ICMP echo: off: %s", i.status().message());
    }
  }
  p->dispatcher_.emplace(Dispatcher::Handlers{.arp = &p->arp_,
                                              .dhcp = p->dhcp_ ? &*p->dhcp_ : nullptr,
                                              .ndp = p->ndp_ ? &*p->ndp_ : nullptr,
                                              .dhcpv6 = p->dhcpv6_ ? &*p->dhcpv6_ : nullptr},
                         env.rx, &env.forward->guest());
  p->dispatcher_->Route(L4Kind::kTcp, p->tcp_.get());
  p->dispatcher_->Route(L4Kind::kUdp, p->udp_.get());
  p->dispatcher_->Route(L4Kind::kIcmp, p->icmp_.get());
  return p;
}

FramePath::~FramePath() { Shutdown(); }

Translator* FramePath::ByKind(uint8_t kind) const {
  if (kind < env_.first_kind) return nullptr;
  switch ((kind - env_.first_kind) / kKindsPerTranslator) {
    case 0:
      return tcp_.get();
    case 1:
      return udp_.get();
    case 2:
      return icmp_.get();
    default:
      return nullptr;
  }
}

bool FramePath::OnSocketEvent(uint64_t tag, uint32_t events) {
  Translator* t = ByKind(static_cast<uint8_t>(tag >> 56));
  if (t == nullptr) return false;
  t->OnSocketEvent(tag, events);
  return true;
}

void FramePath::OnTimer(FlowId id, int64_t now_ns) {
  const FlowKey* key = env_.flows->Key(id);
  if (key == nullptr) return;
  Translator* t = nullptr;
  switch (key->proto) {
    case FlowProto::kTcp:
      t = tcp_.get();
      break;
    case FlowProto::kUdp:
      t = udp_.get();
      break;
    case FlowProto::kIcmp:
      t = icmp_.get();
      break;
  }
  if (t != nullptr) t->OnTimer(id, now_ns);
}

void FramePath::OnRxAvailable() {
  for (Translator* t : {static_cast<Translator*>(tcp_.get()), static_cast<Translator*>(udp_.get()),
                        static_cast<Translator*>(icmp_.get())}) {
    if (t != nullptr) t->OnRxAvailable();
  }
}

void FramePath::OnRxStart() {
  for (Translator* t : {static_cast<Translator*>(tcp_.get()), static_cast<Translator*>(udp_.get()),
                        static_cast<Translator*>(icmp_.get())}) {
    if (t != nullptr) t->OnRxStart();
  }
  OnRxAvailable();
}

void FramePath::Shutdown() {
  if (tcp_) tcp_->Shutdown();
  if (udp_) udp_->Shutdown();
  if (icmp_) icmp_->Shutdown();
}

std::vector<Translator*> FramePath::Translators() const {
  std::vector<Translator*> all;
  for (Translator* t : {static_cast<Translator*>(tcp_.get()), static_cast<Translator*>(udp_.get()),
                        static_cast<Translator*>(icmp_.get())}) {
    if (t != nullptr) all.push_back(t);
  }
  return all;
}

Translator* FramePath::ByRecordType(uint16_t type) const {
  switch (static_cast<RecordType>(type)) {
    case RecordType::kTcpFlow:
    case RecordType::kTcpReset:
      return tcp_.get();
    case RecordType::kUdpFlow:
      return udp_.get();
    case RecordType::kIcmpFlow:
      return icmp_.get();
    default:
      return nullptr;
  }
}

absl::StatusOr<std::string> FramePath::SaveState(RepairControl* repair) {
  StateWriter out;
  const GuestIdentity& guest = env_.forward->guest();
  const size_t r = out.Begin(RecordType::kIdentity);
  WriteMac(out, guest.mac());
  WriteAddr(out, guest.address(AF_INET));
  WriteAddr(out, guest.address(AF_INET6));
  WriteAddr(out, guest.link_local6());
  out.End(r);
  for (Translator* t : Translators()) {
    if (absl::Status s = t->SaveState(out, repair); !s.ok()) {
      // Whatever it froze resumes: the source goes on serving the guest.
      for (Translator* u : Translators()) u->OnMigrationAborted(repair);
      return s;
    }
  }
  return out.Finish();
}

absl::Status FramePath::LoadState(absl::Span<const uint8_t> stream, RepairControl* repair) {
  struct Identity {
    MacAddr mac;
    InetAddr addr4, addr6, link_local6;
  };
  std::optional<Identity> identity;
  size_t skipped = 0;
  absl::Status s = ForEachRecord(stream, [&](const RecordHeader& h, StateReader& in) {
    if (h.type == static_cast<uint16_t>(RecordType::kIdentity)) {
      if (identity.has_value()) return absl::InvalidArgumentError("a second identity");
      Identity id{.mac = ReadMac(in),
                  .addr4 = ReadAddr(in),
                  .addr6 = ReadAddr(in),
                  .link_local6 = ReadAddr(in)};
      if (in.ok() &&
          ((!id.addr4.empty() && !id.addr4.is_v4()) || (!id.addr6.empty() && !id.addr6.is_v6()) ||
           (!id.link_local6.empty() && !id.link_local6.IsLinkLocal()))) {
        in.Fail("the guest's addresses are of the wrong kinds");
      }
      if (absl::Status d = in.Done(); !d.ok()) return d;
      identity = id;
      return absl::OkStatus();
    }
    Translator* owner = ByRecordType(h.type);
    if (owner != nullptr) return owner->StageRecord(h, in);
    if (h.type >= static_cast<uint16_t>(RecordType::kTcpFlow) &&
        h.type <= static_cast<uint16_t>(RecordType::kIcmpFlow)) {
      // A flow of a protocol turned off here: it ends with the move.
      ++skipped;
      return absl::OkStatus();
    }
    if (h.flags & kRecordOptional) return absl::OkStatus();
    return absl::InvalidArgumentError("a record of a type this vunet does not know");
  });
  if (s.ok() && !identity.has_value()) s = absl::DataLossError("the stream has no identity record");
  if (!s.ok()) {
    for (Translator* t : Translators()) t->DiscardStaged();
    return s;
  }
  env_.forward->guest().Restore(identity->mac, identity->addr4, identity->addr6,
                                identity->link_local6);
  for (Translator* t : Translators()) t->ApplyStaged(repair);
  if (skipped > 0) {
    VUNET_LOG(kWarning, "migration: %d flows of protocols turned off here were dropped", skipped);
  }
  return absl::OkStatus();
}

void FramePath::OnMigratedOut(bool linger) {
  for (Translator* t : Translators()) t->OnMigratedOut(linger);
}

void FramePath::OnMigrationAborted(RepairControl* repair) {
  for (Translator* t : Translators()) t->OnMigrationAborted(repair);
}

std::vector<std::string> FramePath::StatsLines() const {
  std::vector<std::string> lines;
  if (tcp_) lines.push_back(tcp_->StatsLine());
  if (udp_) lines.push_back(udp_->StatsLine());
  if (icmp_) lines.push_back(icmp_->StatsLine());
  return lines;
}

}  // namespace vunet::net
