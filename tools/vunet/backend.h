// The vunet backend's event loop: one thread, one level-triggered epoll set
// holding the vhost-user listen and connection sockets, the kick eventfds of
// running queues, a 1 s timerfd (periodic router advertisements), a timerfd
// armed at the flow table's next deadline, a signalfd for SIGTERM/SIGINT, a
// stop eventfd, and the translators' sockets.
//
// A transmit kick runs vu::TxHandler over the tx queue into the frame path
// (net/translate/frame_path.h): the dispatcher answers ARP, DHCP, NDP and
// DHCPv6 itself and routes TCP, UDP and ICMP echo to their translators.
// Every frame to the guest goes through one vu::RxQueue, which the loop
// flushes once at the end of each iteration: one used-index update and at
// most one notification per iteration for everything written in it. With a
// capture file (pcap_path), frames both ways are written to it on the way:
// the transmit sink is wrapped in a PcapFrameSink and the RxQueue's observer
// records what it commits (tools/vunet/capture.h).
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

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/pcap.h"
#include "base/unique_fd.h"
#include "net/config/config.h"
#include "net/flow/flow.h"
#include "net/forward/forward.h"
#include "net/migrate/repair_control.h"
#include "net/repair/repair_channel.h"
#include "net/translate/frame_path.h"
#include "net/translate/translator.h"
#include "tools/vunet/capture.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"
#include "vu/device.h"
#include "vu/rx_queue.h"
#include "vu/server.h"

namespace vunet::tools {

struct BackendOptions {
  std::string socket_path;
  // An inherited socket (--fd) to serve instead of socket_path: a listening
  // or connected UNIX stream socket (vu::Server::Adopt); -1: none. The
  // backend owns it from Create on.
  int inherited_fd = -1;
  bool one_off = false;
  // A counters line every stats_interval (--stats); zero: only at exit.
  std::chrono::seconds stats_interval{0};
  // The frame path: the gateway services and the translators.
  net::FramePathOptions path;
  // Unsolicited router advertisements (with path.ndp): one when the guest's
  // queues start, then every ra_interval.
  bool send_ra = true;
  std::chrono::seconds ra_interval{60};
  // If set, every frame from the guest (as the transmit queue delivers it)
  // and to the guest (as it is committed to the receive queue) is written to
  // this file in libpcap format; Create creates or truncates it (mode 0600).
  std::string pcap_path;
  // The guest's link, as the translators see it: the gateway's MAC, the
  // guest's configured MAC, the MTU.
  net::GuestConfig guest;
  // Where guest flows go and how host peers appear (net/forward).
  net::ForwardRules forward;
  // The flow table all translators share.
  size_t max_flows = net::FlowTable::kDefaultCapacity;
  vu::RxQueue::Options rx;

  // Live migration (VHOST_USER_PROTOCOL_F_DEVICE_STATE). The TCP_REPAIR
  // helper's socket (passt-repair's protocol; created by Create, before any
  // sandbox); empty: none, and TCP connections are reset when the guest
  // moves. How long the helper may take to answer.
  std::string repair_path;
  std::chrono::milliseconds repair_timeout{5000};
  // passt's --migrate-no-linger: the source closes (silently) the sockets
  // it handed over as soon as the frontend has the state, rather than keep
  // them until the frontend leaves, in case the migration fails.
  bool migrate_linger = true;
  // passt's --migrate-exit: once the guest has moved and its frontend left,
  // Run returns.
  bool migrate_exit = false;
  // The segmentation offloads offered (of vu::Device::kOffloadFeatures):
  // all of them by default, since the frame path takes each (64 KiB TCP
  // segments both ways, UDP_L4 from the guest; net/tcp/tcp_vu.h,
  // net/udp/udp.h).
  uint64_t offloads = vu::Device::kOffloadFeatures;
};

class Backend : public vu::DataPlane, private vu::RxQueue::Observer, private net::SocketWatcher {
 public:
  struct Stats {
    uint64_t kicks = 0;
    uint64_t ra_sent = 0;
    uint64_t broken = 0;
    uint64_t accept_backoffs = 0;
    uint64_t flow_timers = 0;  // Flow timers fired.
    uint64_t iterations = 0;   // Loop iterations.
    // Iterations that ended with frames for the guest, and the receive
    // queue's used-index updates: at most one per such iteration, two when
    // a flush let writers that waited for room write again.
    uint64_t rx_iterations = 0;
    uint64_t rx_flushes = 0;
    // Migration: states saved and loaded (and loads refused), the last
    // one's size and how long it took to make or to load.
    uint64_t states_saved = 0;
    uint64_t states_loaded = 0;
    uint64_t loads_failed = 0;
    uint64_t state_bytes = 0;
    int64_t state_ns = 0;
  };

  static absl::StatusOr<std::unique_ptr<Backend>> Create(const BackendOptions& options);
  ~Backend() override;

  // Serves until SIGTERM/SIGINT, Stop(), or (one_off) the frontend leaves.
  absl::Status Run();
  // Makes Run() return; callable from any thread.
  void Stop();

  const std::string& socket_path() const { return server_->socket_path(); }
  const Stats& stats() const { return stats_; }
  const net::Dispatcher::Stats& dispatch_stats() const { return path_->dispatch_stats(); }
  const vu::RxQueue::Stats& rx_stats() const { return rx_.stats(); }
  // Null without a capture file.
  const PcapWriter* pcap() const { return pcap_.get(); }
  const net::FlowTable* flows() const { return flows_.get(); }
  net::FramePath* path() const { return path_.get(); }
  const net::Forwarding& forward() const { return *forward_; }
  // The signal that ended Run(), or 0.
  int stop_signal() const { return stop_signal_; }

  // vu::DataPlane (called inside HandleReadable, on the loop thread).
  void OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) override;
  void OnQueueStop(uint32_t index) override;
  // Saving: the state is made at once (every flow frozen where it stands)
  // and written into `fd` as the frontend reads; loading: read as the
  // frontend writes, checked and applied when it ends. CheckStateTransfer
  // finishes either, waiting at most kTransferTimeout.
  absl::Status BeginStateTransfer(StateDirection direction, UniqueFd fd) override;
  absl::Status CheckStateTransfer() override;

 private:
  explicit Backend(const BackendOptions& options);
  // vu::RxQueue::Observer: frames are not ours to see (the capture is);
  // a queue that broke is reported after the handler that met it returns.
  void OnFrameToGuest(absl::Span<const iovec>, size_t, size_t) override {}
  void OnBroken() override { broken_seen_ = true; }
  // net::SocketWatcher: the translators' sockets in the epoll set.
  absl::Status Watch(int fd, uint32_t events, uint64_t tag) override;
  absl::Status Modify(int fd, uint32_t events, uint64_t tag) override;
  void Unwatch(int fd) override;
  // Fires due flow timers and re-arms the flow timerfd.
  void HandleFlowTimers();
  void ArmFlowTimer();
  // Reports a queue that broke while we used it.
  void CheckBroken();
  // The end of a loop iteration: everything written for the guest is
  // published (and, if a writer was told to wait for a flush, it writes
  // again and that is published too).
  void FlushRx();
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
  void LogCounters() const;
  // The state transfer's fd is ready: moves what it can without blocking.
  // With `wait`, until the transfer ends or the deadline passes.
  void ContinueTransfer(bool wait);
  void EndTransfer(absl::Status status);
  // The repair helper's sockets in the epoll set.
  void HandleRepair(bool listen);
  // The frontend left: a guest that moved away leaves nothing behind.
  void OnFrontendGone();

  const BackendOptions options_;
  // Before everything that writes to it.
  std::unique_ptr<PcapWriter> pcap_;
  std::optional<PcapRxObserver> pcap_rx_;
  std::optional<PcapFrameSink> pcap_sink_;
  // The guest's receive queue: the one writer of its used ring.
  vu::RxQueue rx_;
  std::unique_ptr<net::Forwarding> forward_;
  std::unique_ptr<net::FlowTable> flows_;
  // After the flow table, the RxQueue and the epoll set it uses.
  std::unique_ptr<net::FramePath> path_;
  // Where the transmit handler delivers guest frames: the frame path, or
  // pcap_sink_ wrapping it.
  vu::FrameSink* tx_sink_ = nullptr;
  vu::TxHandler tx_;
  vu::NetConfig net_config_;
  uint64_t logged_features_ = 0;  // The features the log last named.

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

  // Migration.
  class RepairAdapter;
  std::optional<net::RepairChannel> repair_;
  std::unique_ptr<net::RepairControl> repair_control_;
  enum class Transfer { kNone, kSaving, kLoading, kDone };
  Transfer transfer_ = Transfer::kNone;
  StateDirection transfer_direction_ = StateDirection::kSave;
  UniqueFd transfer_fd_;
  std::string transfer_buf_;
  size_t transfer_pos_ = 0;
  absl::Status transfer_status_;
  int64_t transfer_started_ns_ = 0;
  // Flows were saved for a destination and wait frozen; after the frontend
  // confirmed, the guest has moved.
  bool saved_ = false;
  bool migrated_out_ = false;
  bool drop_helper_when_restored_ = false;

  static constexpr uint32_t kQueues = 2;
  std::array<virtio::Virtqueue*, kQueues> vq_{};
  std::array<int, kQueues> kick_{-1, -1};
  bool tx_pending_ = false;
  bool broken_seen_ = false;
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
