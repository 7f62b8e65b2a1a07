// guest_server: the vhost-user backend of the guest tests (tests/guest). It
// serves one frontend (QEMU with a real Linux guest) on --socket with a data
// plane built on //vu:common: a thread woken by the kick eventfds (epoll) runs
// TxHandler::Process on the transmit queue, and its FrameSink prints what each
// frame is (Ethernet type; ARP; IPv4 with UDP port or ICMP type; IPv6 with
// ICMPv6 type) and answers, as a gateway at --gateway_ip/--gateway_mac would,
// ARP requests for that address and ICMP echo requests to it, sending each
// answer with vu::SendSingle.
//
//   guest_server --socket=/tmp/vu.sock --timeout=240
//
// It prints the negotiated features and "queue N started|stopped" as the
// frontend drives the device, "READY" once both rings run, one "frame N:"
// line per frame (up to --max_frame_lines), and "counters:" lines at exit. It
// exits when the frontend disconnects, on SIGTERM/SIGINT, or after --timeout
// seconds; with status 0 if both rings ran and no ring broke.

#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "base/eventfd.h"
#include "base/iov.h"
#include "base/log.h"
#include "base/unique_fd.h"
#include "tests/guest/guest_frames.h"
#include "tools/vu_frontend/frontend.h"
#include "virtio/virtio_net.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"
#include "vu/device.h"
#include "vu/server.h"

ABSL_FLAG(std::string, socket, "", "where to listen (required)");
ABSL_FLAG(int, timeout, 300, "give up after this many seconds");
ABSL_FLAG(std::string, gateway_ip, "10.0.2.2", "the address whose ARP requests we answer");
ABSL_FLAG(std::string, gateway_mac, "02:00:0a:00:02:02", "the MAC address we answer with");
ABSL_FLAG(bool, answer_ping, true, "answer ICMP echo requests to --gateway_ip");
ABSL_FLAG(int, max_frame_lines, 500, "print a line for at most this many frames");
ABSL_FLAG(bool, verbose, false, "debug logging");

namespace vunet::guest_test {
namespace {

constexpr uint32_t kRx = virtio::kVirtioNetRxQueue;
constexpr uint32_t kTx = virtio::kVirtioNetTxQueue;
constexpr uint32_t kWakeTag = 2;

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

void Print(const std::string& line) {
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

// The data plane: one thread, woken by the kick eventfds and a wake eventfd
// through epoll. All queue state is under mu_, which the thread holds while it
// processes, so once OnQueueStop has taken mu_ the queue is no longer touched.
class GuestDataPlane : public vu::DataPlane, public vu::FrameSink {
 public:
  struct Options {
    Mac mac{};
    Ipv4Addr ip{};
    bool answer_ping = true;
    int max_frame_lines = 500;
  };

  explicit GuestDataPlane(const Options& options)
      : options_(options),
        epoll_(epoll_create1(EPOLL_CLOEXEC)),
        wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = kWakeTag;
    if (!epoll_.valid() || !wake_.valid() ||
        epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev) != 0) {
      Print("guest_server: cannot set up epoll");
      std::exit(1);
    }
    thread_ = std::thread([this] { Loop(); });
  }

  ~GuestDataPlane() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    Wake();
    thread_.join();
  }

  // Where the negotiated features come from; set before the server runs.
  void set_server(vu::Server* server) { server_ = server; }

  void OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) override {
    bool ready_now = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (index >= 2) return;
      const uint64_t features = (server_ != nullptr && server_->device() != nullptr)
                                    ? server_->device()->acked_features()
                                    : 0;
      if (features != features_ || !features_printed_) {
        features_ = features;
        features_printed_ = true;
        config_ = vu::NetConfig::FromFeatures(features);
        Print(absl::StrFormat(
            "features: 0x%x %s; protocol features 0x%x; vnet header %d bytes, mergeable %s",
            features, vu_frontend::FeatureNames(features),
            server_ != nullptr && server_->device() != nullptr
                ? server_->device()->acked_protocol_features()
                : 0,
            config_.vnet_hdr_len, config_.mergeable_rx ? "yes" : "no"));
      }
      vq_[index] = vq;
      kick_[index] = kick_fd;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u32 = index;
      if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, kick_fd, &ev) != 0) {
        Print(absl::StrFormat("queue %d: epoll_ctl: %s", index, std::strerror(errno)));
      }
      ++starts_[index];
      Print(absl::StrFormat("queue %d started (size %d)", index, vq->size()));
      if (vq_[kRx] != nullptr && vq_[kTx] != nullptr && !ready_) {
        ready_ = true;
        ready_now = true;
      }
    }
    if (ready_now) Print("READY: both rings started");
    Wake();
  }

  void OnQueueStop(uint32_t index) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (index >= 2) return;
    if (kick_[index] >= 0) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, kick_[index], nullptr);
    if (vq_[index] != nullptr && vq_[index]->broken()) {
      Print(absl::StrFormat("queue %d broken: %s", index, vq_[index]->broken_reason()));
      broken_ = true;
    }
    vq_[index] = nullptr;
    kick_[index] = -1;
    Print(absl::StrFormat("queue %d stopped", index));
  }

  // vu::FrameSink: called by TxHandler::Process on the data plane thread,
  // with mu_ held.
  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) override {
    const size_t length = IovSize(frame.data(), frame.size());
    const size_t copied = IovToBuf(frame.data(), frame.size(), 0, buf_, sizeof(buf_));
    const FrameInfo info = ParseFrame({buf_, copied}, length);
    ++frames_;
    if (info.arp) {
      ++arp_;
    } else if (info.ether_type == kEtherTypeIpv4) {
      ++ipv4_;
    } else if (info.ether_type == kEtherTypeIpv6) {
      ++ipv6_;
    } else {
      ++other_;
    }
    if (info.udp) ++udp_;
    if (info.icmp && info.ether_type == kEtherTypeIpv6) ++icmpv6_;
    if (frames_ <= static_cast<uint64_t>(options_.max_frame_lines)) {
      std::string line = absl::StrFormat("frame %d: %s", frames_, info.ToString());
      if (hdr.flags != 0 || hdr.gso_type != vu::kVirtioNetHdrGsoNone) {
        absl::StrAppendFormat(&line, " (vnet flags 0x%x gso %d csum %d+%d)", hdr.flags,
                              hdr.gso_type, hdr.csum_start, hdr.csum_offset);
      }
      Print(line);
    }

    size_t reply_len = BuildArpReply(info, options_.mac, options_.ip, reply_);
    uint64_t* sent = &arp_replies_;
    if (reply_len == 0 && options_.answer_ping) {
      reply_len = BuildEchoReply(info, {buf_, copied}, options_.mac, options_.ip, reply_);
      sent = &echo_replies_;
    }
    if (reply_len == 0) return;
    if (vq_[kRx] == nullptr) {
      ++reply_failures_;
      Print("reply dropped: the receive queue is not running");
      return;
    }
    const absl::Status s = vu::SendSingle(config_, vq_[kRx], {reply_, reply_len});
    if (!s.ok()) {
      ++reply_failures_;
      Print(absl::StrFormat("reply dropped: %s", s.ToString()));
      return;
    }
    ++*sent;
    Print(absl::StrFormat("sent %s reply (%d bytes)", sent == &arp_replies_ ? "arp" : "icmp echo",
                          reply_len));
  }

  bool ready() const {
    std::lock_guard<std::mutex> lock(mu_);
    return ready_;
  }
  bool broken() const {
    std::lock_guard<std::mutex> lock(mu_);
    return broken_;
  }

  void PrintCounters() const {
    std::lock_guard<std::mutex> lock(mu_);
    const vu::TxHandler::Stats& tx = tx_.stats();
    Print(absl::StrFormat(
        "counters: frames %d (arp %d, ipv4 %d, ipv6 %d, other %d; udp %d, icmpv6 %d); "
        "replies sent: arp %d, icmp echo %d; replies dropped %d",
        frames_, arp_, ipv4_, ipv6_, other_, udp_, icmpv6_, arp_replies_, echo_replies_,
        reply_failures_));
    Print(absl::StrFormat(
        "counters: tx handler frames %d bytes %d batches %d dropped %d notifies %d; "
        "queue starts rx %d tx %d; kicks %d",
        tx.frames, tx.bytes, tx.batches, tx.dropped, tx.notifies, starts_[kRx], starts_[kTx],
        kicks_));
  }

 private:
  void Wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_.get(), &one, sizeof(one));
  }

  void Loop() {
    epoll_event events[8];
    while (true) {
      const int n = epoll_wait(epoll_.get(), events, 8, -1);
      if (n < 0 && errno != EINTR) {
        Print(absl::StrFormat("epoll_wait: %s", std::strerror(errno)));
        return;
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      for (int i = 0; i < n; ++i) {
        const uint32_t tag = events[i].data.u32;
        if (tag == kWakeTag) {
          DrainEventfd(wake_.get());
        } else if (tag < 2 && kick_[tag] >= 0) {
          // An event collected before a stop may name an fd that is gone;
          // DrainEventfd never blocks, whatever the flags of the device's fd.
          if (DrainEventfd(kick_[tag]) > 0) ++kicks_;
        }
      }
      ProcessTx();
    }
  }

  // Runs the transmit queue dry (bounded), with mu_ held.
  void ProcessTx() {
    virtio::Virtqueue* tx = vq_[kTx];
    if (tx == nullptr || tx_stopped_for_broken_ == tx) return;
    for (int round = 0; round < 8; ++round) {
      tx_.Process(config_, tx, this);
      if (tx->broken()) {
        Print(absl::StrFormat("transmit queue broken: %s", tx->broken_reason()));
        broken_ = true;
        tx_stopped_for_broken_ = tx;
        return;
      }
      // Kicks stay enabled (we never turn them off); look again in case the
      // guest added chains while we were busy.
      tx->SetNotification(true);
      if (tx->IsEmpty()) return;
    }
    Wake();  // More to do: come back after looking at the other events.
  }

  const Options options_;
  vu::Server* server_ = nullptr;
  UniqueFd epoll_;
  UniqueFd wake_;
  mutable std::mutex mu_;
  bool stop_ = false;
  bool ready_ = false;
  bool broken_ = false;
  bool features_printed_ = false;
  uint64_t features_ = 0;
  vu::NetConfig config_;
  virtio::Virtqueue* vq_[2] = {nullptr, nullptr};
  const virtio::Virtqueue* tx_stopped_for_broken_ = nullptr;
  int kick_[2] = {-1, -1};
  vu::TxHandler tx_;
  uint8_t buf_[9216];
  uint8_t reply_[9216];
  uint64_t frames_ = 0, arp_ = 0, ipv4_ = 0, ipv6_ = 0, other_ = 0, udp_ = 0, icmpv6_ = 0;
  uint64_t arp_replies_ = 0, echo_replies_ = 0, reply_failures_ = 0, kicks_ = 0;
  uint64_t starts_[2] = {0, 0};
  std::thread thread_;
};

int Run() {
  const std::string path = absl::GetFlag(FLAGS_socket);
  if (path.empty()) {
    std::fprintf(stderr, "guest_server: --socket is required\n");
    return 2;
  }
  const std::optional<Mac> mac = ParseMac(absl::GetFlag(FLAGS_gateway_mac));
  const std::optional<Ipv4Addr> ip = ParseIpv4(absl::GetFlag(FLAGS_gateway_ip));
  if (!mac.has_value() || !ip.has_value()) {
    std::fprintf(stderr, "guest_server: bad --gateway_mac or --gateway_ip\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_verbose)) log::SetLevel(log::Level::kDebug);

  GuestDataPlane plane({.mac = *mac,
                        .ip = *ip,
                        .answer_ping = absl::GetFlag(FLAGS_answer_ping),
                        .max_frame_lines = absl::GetFlag(FLAGS_max_frame_lines)});
  vu::Server::Options options;
  options.socket_path = path;
  options.one_off = true;
  absl::StatusOr<std::unique_ptr<vu::Server>> server = vu::Server::Listen(options, &plane);
  if (!server.ok()) {
    std::fprintf(stderr, "guest_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  plane.set_server(server->get());
  Print(absl::StrFormat("listening on %s; gateway %s at %s", path, Ipv4ToString(*ip),
                        MacToString(*mac)));

  // The timeout: a thread that sets the stop flag Run() polls.
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  std::atomic<bool> timed_out{false};
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(absl::GetFlag(FLAGS_timeout)),
                     [&] { return finished; })) {
      timed_out = true;
      g_stop = true;
    }
  });

  const absl::Status s = (*server)->Run(g_stop);
  {
    std::lock_guard<std::mutex> lock(mu);
    finished = true;
  }
  cv.notify_all();
  watchdog.join();
  const uint64_t served = (*server)->connections_served();
  server->reset();  // Stops the queues (if still connected) before the counters are read.

  plane.PrintCounters();
  if (!s.ok()) Print(absl::StrFormat("server: %s", s.ToString()));
  if (timed_out.load()) Print("timed out");
  if (g_stop.load() && !timed_out.load()) Print("stopped by a signal");
  Print(absl::StrFormat("exit: frontends served %d, ready %s, broken %s", served,
                        plane.ready() ? "yes" : "no", plane.broken() ? "yes" : "no"));
  return plane.ready() && !plane.broken() && s.ok() ? 0 : 1;
}

}  // namespace
}  // namespace vunet::guest_test

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = vunet::guest_test::OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  absl::ParseCommandLine(argc, argv);
  return vunet::guest_test::Run();
}
