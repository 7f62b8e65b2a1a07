// The vunet backend's event loop: one thread, one level-triggered epoll set
// holding the vhost-user listen and connection sockets, the kick eventfds of
// running queues, a 1 s timerfd (periodic router advertisements,
// housekeeping), a signalfd for SIGTERM/SIGINT and a stop eventfd.
//
// A transmit kick runs vu::TxHandler over the tx queue into a net::Dispatcher
// that answers ARP, DHCP and NDP itself; the frames it hands on go to ICMP
// echo and the flow translators (TCP, UDP), and what none of them takes is
// counted and dropped. Replies go into the rx queue through net::VirtqueueReplySender.
// With a capture file (pcap_path), the frames both ways are written to it on
// the way: the dispatcher's sink and the reply sender are wrapped in
// PcapFrameSink and PcapReplySender (tools/vunet/capture.h).
//
//   absl::StatusOr<std::unique_ptr<Backend>> b = Backend::Create(options);
//   absl::Status s = (*b)->Run();  // Until SIGTERM/SIGINT, Stop(), or a
//                                  // one-off frontend's departure.
//
// Create listens on the socket (so that its errors come before a daemonizing
// fork) and blocks SIGTERM and SIGINT in the calling thread (Run reads them
// from a signalfd): call it before starting other threads. Run sets up the
// epoll set, signalfd and timerfd, in the process that will use them. Run is
// called once.

#ifndef VUNET_TOOLS_VUNET_BACKEND_H_
#define VUNET_TOOLS_VUNET_BACKEND_H_

#include <sys/uio.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/pcap.h"
#include "base/unique_fd.h"
#include "net/arp.h"
#include "net/config.h"
#include "net/dhcp.h"
#include "net/dhcpv6.h"
#include "net/dispatch.h"
#include "net/flow.h"
#include "net/frame.h"
#include "net/icmp.h"
#include "net/ndp.h"
#include "net/translator.h"
#include "tools/vunet/capture.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"
#include "vu/device.h"
#include "vu/server.h"

namespace vunet::tools {

// Makes one flow translator (TCP, UDP) with the backend's services.
using TranslatorFactory =
    std::function<absl::StatusOr<std::unique_ptr<net::Translator>>(const net::TranslatorEnv&)>;

struct BackendOptions {
  std::string socket_path;
  // An inherited socket (--fd) to serve instead of socket_path: a listening
  // or connected UNIX stream socket (vu::Server::Adopt); -1: none. The
  // backend owns it from Create on.
  int inherited_fd = -1;
  bool one_off = false;
  // A counters line every stats_interval (--stats); zero: only at exit.
  std::chrono::seconds stats_interval{0};
  // The services; a missing one is off.
  net::ArpConfig arp;
  std::optional<net::DhcpConfig> dhcp;
  std::optional<net::NdpConfig> ndp;
  std::optional<net::Dhcpv6Config> dhcpv6;
  // ICMP echo through ping sockets. Where the host refuses this process ping
  // sockets (net.ipv4.ping_group_range), it is off, logged, and echo
  // requests are dropped; a required one (icmp_required) fails Create.
  std::optional<net::IcmpEchoConfig> icmp;
  bool icmp_required = false;
  // Unsolicited router advertisements (with ndp): one when the guest's
  // queues start, then every ra_interval.
  bool send_ra = true;
  std::chrono::seconds ra_interval{60};
  // If set, every frame from the guest (as the transmit queue delivers it)
  // and to the guest (as it went into the receive queue) is written to this
  // file in libpcap format; Create creates or truncates it (mode 0600).
  std::string pcap_path;
  // The guest's addressing, as the translators see it (MACs, addresses,
  // gateway, MTU).
  net::GuestConfig guest;
  // The flow table all translators share.
  size_t max_flows = net::FlowTable::kDefaultCapacity;
  // The flow translators, made in Create and chained in this order after
  // ICMP echo: frames translator i does not take go to translator i + 1.
  // Translator i gets the epoll kinds [64 + 32 i, 64 + 32 (i + 1)).
  std::vector<TranslatorFactory> translators;
};

class Backend : public vu::DataPlane,
                private net::IcmpEcho::SocketObserver,
                private net::SocketWatcher {
 public:
  struct Stats {
    uint64_t kicks = 0;
    uint64_t tcp_dropped = 0;   // No TCP translator (--no-tcp), or it declined them.
    uint64_t udp_dropped = 0;   // Likewise for UDP.
    uint64_t icmp_dropped = 0;  // ICMP echo off.
    uint64_t other_dropped = 0;
    uint64_t ra_sent = 0;
    uint64_t broken = 0;
    uint64_t accept_backoffs = 0;
    uint64_t flow_timers = 0;  // Flow timers fired.
  };

  static absl::StatusOr<std::unique_ptr<Backend>> Create(const BackendOptions& options);
  ~Backend() override;

  // Serves until SIGTERM/SIGINT, Stop(), or (one_off) the frontend leaves.
  absl::Status Run();
  // Makes Run() return; callable from any thread.
  void Stop();

  const std::string& socket_path() const { return server_->socket_path(); }
  const Stats& stats() const { return stats_; }
  const net::Dispatcher::Stats& dispatch_stats() const { return dispatcher_->stats(); }
  // Null when ICMP echo is off.
  const net::IcmpEcho* icmp() const { return icmp_.get(); }
  // Null without a capture file.
  const PcapWriter* pcap() const { return pcap_.get(); }
  // The flow table and the translators (in chain order).
  const net::FlowTable* flows() const { return flows_.get(); }
  size_t translator_count() const { return translators_.size(); }
  net::Translator* translator(size_t i) const { return translators_[i].get(); }
  // The signal that ended Run(), or 0.
  int stop_signal() const { return stop_signal_; }

  // vu::DataPlane (called inside HandleReadable, on the loop thread).
  void OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) override;
  void OnQueueStop(uint32_t index) override;

 private:
  // Replies to the guest through the rx queue's VirtqueueReplySender while
  // the queue runs; kUnavailable otherwise.
  class RxSender : public net::ReplySender {
   public:
    absl::Status Send(absl::Span<const uint8_t> frame) override;
    std::optional<net::VirtqueueReplySender> sender;
  };
  // The receive queue as the translators write data into it.
  class Rx : public net::GuestRx {
   public:
    explicit Rx(Backend* backend) : backend_(backend) {}
    virtio::Virtqueue* queue() override { return backend_->vq_[kRxQueue]; }
    const vu::NetConfig& config() const override { return backend_->net_config_; }
    void OnFrameWritten(absl::Span<const iovec> iov, size_t offset, size_t len) override;
    void OnBroken() override { backend_->CheckBroken(); }

   private:
    Backend* backend_;
  };
  // Learns the guest's MAC address from the source of its frames, so that
  // frames we start (inbound connections) reach a guest whose MAC is not the
  // one we were told (QEMU's default, libvirt's). Then hands the frame on.
  class MacLearner : public vu::FrameSink {
   public:
    MacLearner(Backend* backend, vu::FrameSink* next) : backend_(backend), next_(next) {}
    void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) override;
    void OnBatchEnd() override { next_->OnBatchEnd(); }

   private:
    Backend* backend_;
    vu::FrameSink* next_;
  };
  // Where the dispatcher hands what it does not answer.
  class Next : public net::ParsedFrameSink {
   public:
    explicit Next(Backend* backend) : backend_(backend) {}
    void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
                 const net::ParsedFrame& parsed) override;

   private:
    Backend* backend_;
  };

  Backend(const BackendOptions& options, std::optional<net::DhcpServer> dhcp,
          std::optional<net::NdpResponder> ndp, std::optional<net::Dhcpv6Server> dhcpv6);
  // net::IcmpEcho::SocketObserver: ping sockets join and leave the epoll set.
  bool OnSocketOpened(int fd) override;
  void OnSocketClosing(int fd) override;
  void HandleIcmp(int fd);
  // net::SocketWatcher: the translators' sockets in the epoll set.
  absl::Status Watch(int fd, uint32_t events, uint64_t tag) override;
  absl::Status Modify(int fd, uint32_t events, uint64_t tag) override;
  void Unwatch(int fd) override;
  absl::Status CreateTranslators();
  // An epoll event for a translator's tag (kind >= 64).
  void HandleTranslatorEvent(uint64_t tag, uint32_t events);
  // Fires due flow timers and re-arms the flow timerfd.
  void HandleFlowTimers();
  void ArmFlowTimer();
  // Reports a queue that broke while we used it.
  void CheckBroken();
  absl::Status Init();
  absl::Status SetUpLoop();
  absl::Status Add(int fd, uint64_t tag);
  void Remove(int fd);
  void HandleServer(int fd);
  // Keeps the epoll set in step with the server's connection.
  void SyncConnection();
  void HandleKick(uint32_t index);
  void ProcessTx();
  void OnTick();
  void SendRouterAdvertisement();
  // The counters, one line, then each translator's.
  void LogCounters();

  const BackendOptions options_;
  const std::optional<net::DhcpServer> dhcp_;
  const std::optional<net::NdpResponder> ndp_;
  const std::optional<net::Dhcpv6Server> dhcpv6_;
  // Before everything that writes to it.
  std::unique_ptr<PcapWriter> pcap_;
  RxSender rx_sender_;
  // With pcap_: rx_sender_ wrapped, and replies_ points at it; otherwise
  // replies_ is &rx_sender_. Every frame to the guest goes through replies_.
  std::optional<PcapReplySender> pcap_replies_;
  net::ReplySender* replies_ = &rx_sender_;
  Next next_{this};
  Rx rx_{this};
  std::unique_ptr<net::FlowTable> flows_;
  // Before icmp_ and dispatcher_, which hand frames to them.
  std::vector<std::unique_ptr<net::Translator>> translators_;
  std::unique_ptr<net::IcmpEcho> icmp_;
  // After icmp_, which it hands frames to.
  std::optional<net::Dispatcher> dispatcher_;
  // Where the transmit handler delivers guest frames: the dispatcher, or
  // pcap_sink_ wrapping it.
  std::optional<PcapFrameSink> pcap_sink_;
  std::optional<MacLearner> mac_learner_;
  vu::FrameSink* tx_sink_ = nullptr;
  // options_.guest, with the guest's MAC as its frames give it; what the
  // translators see.
  net::GuestConfig guest_;
  vu::TxHandler tx_;
  vu::NetConfig net_config_;

  std::unique_ptr<vu::Server> server_;
  UniqueFd epoll_;
  UniqueFd signal_fd_;
  UniqueFd timer_fd_;
  UniqueFd stop_fd_;
  // Armed at the flow table's NextDeadline; the deadline it is armed for.
  UniqueFd flow_timer_fd_;
  std::optional<int64_t> flow_timer_armed_;
  // The connection in the epoll set: its fd and which connection it was.
  int registered_conn_ = -1;
  uint64_t registered_conn_serial_ = 0;
  bool listen_paused_ = false;
  std::chrono::steady_clock::time_point listen_resume_;

  static constexpr uint32_t kQueues = 2;
  static constexpr uint32_t kRxQueue = 0;
  std::array<virtio::Virtqueue*, kQueues> vq_{};
  std::array<int, kQueues> kick_{-1, -1};
  bool tx_pending_ = false;
  // The router advertisement due when the queues start, retried each tick
  // until the guest has posted room for it.
  bool ra_pending_ = false;
  bool stopping_ = false;
  int stop_signal_ = 0;
  int ticks_ = 0;
  Stats stats_;
};

}  // namespace vunet::tools

#endif  // VUNET_TOOLS_VUNET_BACKEND_H_
