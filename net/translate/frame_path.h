// The frame path of one queue pair, composed in one place: the gateway
// services (ARP, DHCP, NDP, DHCPv6), the dispatcher, and the translators
// (TCP, UDP, ICMP echo) routed by protocol. The backend and the translators
// fuzz target both build their path with it, so what the fuzzer runs is
// what the backend runs.
//
//   FramePathEnv env{.flows = flows, .rx = &rx_queue, .watcher = &watcher,
//                    .forward = &forwarding, .guest = &guest_config};
//   absl::StatusOr<std::unique_ptr<FramePath>> path = FramePath::Create(env, options);
//   (*path)->SetNetConfig(net_config);  // The features negotiated.
//   tx_handler.Process(net_config, tx_vq, (*path)->sink());
//   ... epoll event with a tag of kind >= env.first_kind: (*path)->OnSocketEvent(tag, events);
//   ... flows->Expire(now, [&](FlowId id) { (*path)->OnTimer(id, now); });
//   ... rx kick, or RxQueue::Flush asked for it: (*path)->OnRxAvailable();
//
// Epoll kinds: TCP gets [first_kind, first_kind + 32), UDP the next 32, ICMP
// echo the 32 after.

#ifndef VUNET_NET_TRANSLATE_FRAME_PATH_H_
#define VUNET_NET_TRANSLATE_FRAME_PATH_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "net/flow/flow.h"
#include "net/gateway/arp.h"
#include "net/gateway/dhcp.h"
#include "net/gateway/dhcpv6.h"
#include "net/gateway/dispatch.h"
#include "net/gateway/ndp.h"
#include "net/icmp/icmp.h"
#include "net/tcp/tcp.h"
#include "net/translate/translator.h"
#include "net/udp/udp.h"

namespace vunet::net {

struct FramePathOptions {
  // The gateway services; a missing one is off.
  ArpConfig arp;
  std::optional<DhcpConfig> dhcp;
  std::optional<NdpConfig> ndp;
  std::optional<Dhcpv6Config> dhcpv6;
  // The translators; a missing one is off (--no-tcp, --no-udp, --no-icmp):
  // its protocol's frames are dropped and counted.
  std::optional<TcpTranslatorOptions> tcp = TcpTranslatorOptions();
  std::optional<UdpTranslatorOptions> udp = UdpTranslatorOptions();
  std::optional<IcmpEchoOptions> icmp = IcmpEchoOptions();
  // Where the host refuses this process ping sockets
  // (net.ipv4.ping_group_range): fail Create (true), or run without ICMP
  // echo, logged (false).
  bool icmp_required = false;
};

// The services the path's translators get (see TranslatorEnv).
struct FramePathEnv {
  FlowTable* flows = nullptr;
  vu::RxQueue* rx = nullptr;
  SocketWatcher* watcher = nullptr;
  Forwarding* forward = nullptr;
  const GuestConfig* guest = nullptr;
  uint8_t first_kind = 64;  // 64..160: three translators' kinds follow.
  int64_t (*clock)() = nullptr;
};

class FramePath {
 public:
  // Builds the services and the translators. kInvalidArgument for a bad
  // service configuration or environment; a translator's own error (a port
  // that cannot be listened on) as it reports it.
  static absl::StatusOr<std::unique_ptr<FramePath>> Create(const FramePathEnv& env,
                                                           const FramePathOptions& options);
  ~FramePath();
  FramePath(const FramePath&) = delete;
  FramePath& operator=(const FramePath&) = delete;

  // Where the transmit handler delivers the guest's frames.
  vu::FrameSink* sink() { return &*dispatcher_; }
  const Dispatcher::Stats& dispatch_stats() const { return dispatcher_->stats(); }
  // The negotiated features, for the dispatcher's check of each frame's
  // virtio-net header (Dispatcher::SetNetConfig): set when they change.
  void SetNetConfig(const vu::NetConfig& config) { dispatcher_->SetNetConfig(config); }

  // An epoll event whose tag's kind (top byte) is at least env.first_kind:
  // handed to the translator that registered it. False if none did.
  bool OnSocketEvent(uint64_t tag, uint32_t events);
  // Flow `id`'s timer fired: handed to the translator of its protocol.
  void OnTimer(FlowId id, int64_t now_ns);
  // The guest may have posted receive buffers: every translator resumes.
  void OnRxAvailable();
  // The receive queue (re)started: every translator's OnRxStart, then
  // OnRxAvailable.
  void OnRxStart();
  // Closes every flow and socket.
  void Shutdown();
  // One line per translator, for the exit log.
  std::vector<std::string> StatsLines() const;

  // Live migration (net/migrate/state_stream.h). Source, with the guest's
  // queues stopped: the guest's identity (MAC, addresses) and every
  // translator's flows, as one stream. TCP connections need `repair` (null
  // without a helper: they are recorded to be reset instead).
  absl::StatusOr<std::string> SaveState(RepairControl* repair);
  // Destination: checks the stream whole, stages every record with its
  // owner, and applies them only once all passed. On an error nothing has
  // changed (what was staged is dropped), and the error names the record.
  absl::Status LoadState(absl::Span<const uint8_t> stream, RepairControl* repair);
  // Source: the frontend has the state (see Translator::OnMigratedOut).
  void OnMigratedOut(bool linger);
  // Source: the guest runs here again after a save.
  void OnMigrationAborted(RepairControl* repair);

  // The NDP responder (unsolicited router advertisements), or null.
  const NdpResponder* ndp() const { return ndp_ ? &*ndp_ : nullptr; }

  // The translators; null when off.
  TcpTranslator* tcp() const { return tcp_.get(); }
  UdpTranslator* udp() const { return udp_.get(); }
  IcmpEcho* icmp() const { return icmp_.get(); }

 private:
  FramePath() = default;
  Translator* ByKind(uint8_t kind) const;
  // The translators that are on.
  std::vector<Translator*> Translators() const;
  // The translator that owns records of `type`, or null.
  Translator* ByRecordType(uint16_t type) const;

  FramePathEnv env_;
  ArpConfig arp_;
  std::optional<DhcpServer> dhcp_;
  std::optional<NdpResponder> ndp_;
  std::optional<Dhcpv6Server> dhcpv6_;
  std::unique_ptr<TcpTranslator> tcp_;
  std::unique_ptr<UdpTranslator> udp_;
  std::unique_ptr<IcmpEcho> icmp_;
  std::optional<Dispatcher> dispatcher_;
};

}  // namespace vunet::net

#endif  // VUNET_NET_TRANSLATE_FRAME_PATH_H_
