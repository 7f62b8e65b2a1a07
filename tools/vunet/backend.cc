#include "tools/vunet/backend.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/errno_status.h"
#include "base/eventfd.h"
#include "base/log.h"
#include "base/static_status.h"
#include "net/migrate/state_stream.h"
#include "virtio/virtio_net.h"

namespace vunet::tools {
namespace {

// The offloads in effect, for the log: "CSUM|GUEST_CSUM|HOST_TSO4|..." or
// "none".
std::string OffloadNames(const vu::NetConfig& c) {
  const std::pair<bool, const char*> names[] = {
      {c.csum, "CSUM"},
      {c.guest_csum, "GUEST_CSUM"},
      {c.host_tso4, "HOST_TSO4"},
      {c.host_tso6, "HOST_TSO6"},
      {c.host_ecn, "HOST_ECN"},
      {c.host_uso, "HOST_USO"},
      {c.guest_tso4, "GUEST_TSO4"},
      {c.guest_tso6, "GUEST_TSO6"},
      {c.guest_ecn, "GUEST_ECN"},
      {c.guest_uso4, "GUEST_USO4"},
      {c.guest_uso6, "GUEST_USO6"},
  };
  std::string out;
  for (const auto& [on, name] : names) {
    if (!on) continue;
    if (!out.empty()) out += "|";
    out += name;
  }
  return out.empty() ? "none" : out;
}

// Epoll tags: the kind in the top byte, an index or fd below, the layout of
// net::FlowRef (whose kind byte the flow translators will use from
// kFirstFlowKind up, so both kinds of tag share one epoll set).
enum Kind : uint8_t {
  kListen = 1,
  kConnection,
  kKick,
  kTimer,
  kSignal,
  kStop,
  kFlowTimer,
  kTransfer,
  kRepairListen,
  kRepairHelper,
};
constexpr uint8_t kFirstFlowKind = 64;

uint64_t Tag(Kind kind, uint32_t value = 0) { return (uint64_t{kind} << 56) | value; }

constexpr uint32_t kRx = virtio::kVirtioNetRxQueue;
constexpr uint32_t kTx = virtio::kVirtioNetTxQueue;

// How long to stop accepting after accept() ran out of fds.
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);

// The signals that stop vunet cleanly.
void StopSignals(sigset_t* mask) {
  sigemptyset(mask);
  for (int signal : {SIGTERM, SIGINT, SIGHUP, SIGQUIT}) sigaddset(mask, signal);
}

// How long CHECK_DEVICE_STATE waits for a transfer the frontend left
// unfinished (its end not closed, or not read).
constexpr int kTransferTimeoutMs = 10'000;

bool Readable(int fd) {
  pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

}  // namespace

// The repair helper as the translators see it.
class Backend::RepairAdapter : public net::RepairControl {
 public:
  RepairAdapter(net::RepairChannel* channel, std::chrono::milliseconds timeout)
      : channel_(channel), timeout_(absl::Milliseconds(timeout.count())) {}
  bool available() const override { return channel_->connected(); }
  absl::Status SetRepair(absl::Span<const int> fds, net::RepairMode mode) override {
    return channel_->Set(fds, mode, timeout_);
  }

 private:
  net::RepairChannel* channel_;
  absl::Duration timeout_;
};

Backend::Backend(const BackendOptions& options) : options_(options), rx_(options.rx) {}

absl::StatusOr<std::unique_ptr<Backend>> Backend::Create(const BackendOptions& options) {
  std::unique_ptr<Backend> b(new Backend(options));
  if (absl::Status s = b->Init(); !s.ok()) return s;
  return b;
}

absl::Status Backend::Init() {
  // SIGTERM, SIGINT, SIGHUP and SIGQUIT are read from a signalfd in Run()
  // (each a clean shutdown that removes the socket); blocked from now on, so
  // that one arriving before then waits for it.
  sigset_t mask;
  StopSignals(&mask);
  if (pthread_sigmask(SIG_BLOCK, &mask, nullptr) != 0) return ErrnoStatus("pthread_sigmask");

  stop_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd_.valid()) return ErrnoStatus("eventfd");

  rx_.set_observer(this);
  if (!options_.pcap_path.empty()) {
    absl::StatusOr<std::unique_ptr<PcapWriter>> pcap = PcapWriter::Open(options_.pcap_path);
    if (!pcap.ok()) {
      return absl::Status(pcap.status().code(), absl::StrCat("--pcap: ", pcap.status().message()));
    }
    pcap_ = std::move(*pcap);
    pcap_rx_.emplace(pcap_.get(), static_cast<vu::RxQueue::Observer*>(this));
    rx_.set_observer(&*pcap_rx_);
    VUNET_LOG(kInfo, "capturing frames both ways to %s", options_.pcap_path);
  }

  // The epoll set exists from here, so that translators can watch sockets
  // they open in Create (listeners). It survives a daemonizing fork.
  epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_.valid()) return ErrnoStatus("epoll_create1");
  absl::StatusOr<std::unique_ptr<net::FlowTable>> flows =
      net::FlowTable::Create({.capacity = options_.max_flows});
  if (!flows.ok()) return flows.status();
  flows_ = std::move(*flows);
  forward_ = std::make_unique<net::Forwarding>(options_.forward, options_.guest.guest_mac);
  absl::StatusOr<std::unique_ptr<net::FramePath>> path =
      net::FramePath::Create({.flows = flows_.get(),
                              .rx = &rx_,
                              .watcher = this,
                              .forward = forward_.get(),
                              .guest = &options_.guest,
                              .first_kind = kFirstFlowKind,
                              .clock = net::MonotonicNowNs},
                             options_.path);
  if (!path.ok()) return path.status();
  path_ = std::move(*path);
  tx_sink_ = path_->sink();
  if (pcap_ != nullptr) {
    pcap_sink_.emplace(pcap_.get(), path_->sink());
    tx_sink_ = &*pcap_sink_;
  }

  if (!options_.repair_path.empty()) {
    absl::StatusOr<net::RepairChannel> repair = net::RepairChannel::Listen(options_.repair_path);
    if (!repair.ok()) {
      return absl::Status(repair.status().code(),
                          absl::StrCat("--repair-path: ", repair.status().message()));
    }
    repair_.emplace(std::move(*repair));
    repair_control_ = std::make_unique<RepairAdapter>(&*repair_, options_.repair_timeout);
    VUNET_LOG(kInfo, "migration: waiting for a TCP_REPAIR helper on %s", options_.repair_path);
  }

  vu::Server::Options server_options;
  server_options.socket_path = options_.socket_path;
  server_options.one_off = options_.one_off;
  server_options.device.offloads = options_.offloads;
  server_options.device.device_state = true;
  absl::StatusOr<std::unique_ptr<vu::Server>> server =
      options_.inherited_fd >= 0
          ? vu::Server::Adopt(server_options, UniqueFd(options_.inherited_fd), this)
          : vu::Server::Listen(server_options, this);
  if (!server.ok()) return server.status();
  server_ = std::move(*server);
  return absl::OkStatus();
}

absl::Status Backend::SetUpLoop() {
  // Made here rather than in Create: the caller may fork (daemonize) in
  // between, and a signalfd in an epoll set keeps waking the process that
  // added it, not a child that inherited both.
  sigset_t mask;
  StopSignals(&mask);
  signal_fd_.reset(signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd_.valid()) return ErrnoStatus("signalfd");
  timer_fd_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!timer_fd_.valid()) return ErrnoStatus("timerfd_create");
  itimerspec tick{};
  tick.it_interval.tv_sec = 1;
  tick.it_value.tv_sec = 1;
  if (timerfd_settime(timer_fd_.get(), 0, &tick, nullptr) != 0)
    return ErrnoStatus("timerfd_settime");

  // None when serving an inherited connected socket: its connection is all.
  if (server_->listen_fd() >= 0) {
    if (absl::Status s = Add(server_->listen_fd(), Tag(kListen)); !s.ok()) return s;
  }
  SyncConnection();
  if (absl::Status s = Add(signal_fd_.get(), Tag(kSignal)); !s.ok()) return s;
  if (absl::Status s = Add(timer_fd_.get(), Tag(kTimer)); !s.ok()) return s;
  if (absl::Status s = Add(stop_fd_.get(), Tag(kStop)); !s.ok()) return s;
  flow_timer_fd_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!flow_timer_fd_.valid()) return ErrnoStatus("timerfd_create");
  if (absl::Status s = Add(flow_timer_fd_.get(), Tag(kFlowTimer)); !s.ok()) return s;
  if (repair_.has_value()) {
    if (absl::Status s = Add(repair_->listen_fd(), Tag(kRepairListen)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

Backend::~Backend() {
  // The server's destructor stops the queues (OnQueueStop) and removes the
  // socket file; do it while the rest is still here.
  server_.reset();
  path_.reset();  // Its flows live in the table, its sockets in the epoll set.
  flows_.reset();
}

absl::Status Backend::Watch(int fd, uint32_t events, uint64_t tag) {
  if (!epoll_.valid()) return absl::FailedPreconditionError("the event loop is not running");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return ErrnoStatus("epoll_ctl add");
  return absl::OkStatus();
}

absl::Status Backend::Modify(int fd, uint32_t events, uint64_t tag) {
  if (!epoll_.valid()) return absl::FailedPreconditionError("the event loop is not running");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) return ErrnoStatus("epoll_ctl mod");
  return absl::OkStatus();
}

void Backend::Unwatch(int fd) {
  if (epoll_.valid()) Remove(fd);
}

void Backend::HandleFlowTimers() {
  uint64_t expirations;
  [[maybe_unused]] ssize_t r = read(flow_timer_fd_.get(), &expirations, sizeof(expirations));
  flow_timer_armed_.reset();  // Fired (or about to be re-armed below).
  const int64_t now = net::MonotonicNowNs();
  stats_.flow_timers += flows_->Expire(now, [&](net::FlowId id) { path_->OnTimer(id, now); });
}

void Backend::ArmFlowTimer() {
  if (flows_ == nullptr || !flow_timer_fd_.valid()) return;
  const std::optional<int64_t> next = flows_->NextDeadline();
  if (next == flow_timer_armed_) return;
  itimerspec when{};
  if (next.has_value()) {
    // A deadline already passed still needs a non-zero value to arm.
    const int64_t at = std::max<int64_t>(*next, 1);
    when.it_value.tv_sec = at / 1'000'000'000;
    when.it_value.tv_nsec = at % 1'000'000'000;
  }
  if (timerfd_settime(flow_timer_fd_.get(), TFD_TIMER_ABSTIME, &when, nullptr) != 0) {
    VUNET_LOG_RATELIMITED(kError, "flow timer: timerfd_settime: %s", strerror(errno));
    return;
  }
  flow_timer_armed_ = next;
}

absl::Status Backend::Add(int fd, uint64_t tag) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = tag;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return ErrnoStatus("epoll_ctl");
  return absl::OkStatus();
}

void Backend::Remove(int fd) {
  // A closed fd has left the set already (EBADF, ENOENT): nothing to do.
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

void Backend::Stop() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(stop_fd_.get(), &one, sizeof(one));
}

void Backend::FlushRx() {
  const size_t frames = rx_.pending_frames();
  const uint64_t flushes = rx_.stats().flushes;
  if (rx_.Flush()) {
    // A writer was told to wait for this flush (its buffers were held by
    // frames not yet published): it writes again now.
    path_->OnRxAvailable();
    rx_.Flush();
  }
  if (frames > 0) ++stats_.rx_iterations;
  stats_.rx_flushes += rx_.stats().flushes - flushes;
  CheckBroken();
}

absl::Status Backend::Run() {
  if (absl::Status s = SetUpLoop(); !s.ok()) return s;
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  while (!stopping_ && !server_->done() &&
         !(migrated_out_ && options_.migrate_exit && server_->connection_fd() < 0)) {
    int timeout = -1;
    if (tx_pending_) timeout = 0;
    if (listen_paused_) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= listen_resume_) {
        listen_paused_ = false;
        if (absl::Status s = Add(server_->listen_fd(), Tag(kListen)); !s.ok()) return s;
      } else if (timeout != 0) {
        timeout = static_cast<int>(
            std::chrono::ceil<std::chrono::milliseconds>(listen_resume_ - now).count());
      }
    }
    const int n = epoll_wait(epoll_.get(), events, kMaxEvents, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("epoll_wait");
    }
    ++stats_.iterations;
    for (int i = 0; i < n && !stopping_; ++i) {
      const uint64_t tag = events[i].data.u64;
      const uint32_t value = static_cast<uint32_t>(tag);
      switch (static_cast<Kind>(tag >> 56)) {
        case kListen:
          if (!listen_paused_) HandleServer(server_->listen_fd());
          break;
        case kConnection:
          // An event collected before the connection changed may be stale.
          // The tag carries the serial's low 32 bits; compare those.
          if (value == static_cast<uint32_t>(registered_conn_serial_) &&
              server_->connection_fd() >= 0 && Readable(server_->connection_fd())) {
            HandleServer(server_->connection_fd());
          }
          break;
        case kKick:
          HandleKick(value);
          break;
        case kTimer: {
          uint64_t expirations;
          if (read(timer_fd_.get(), &expirations, sizeof(expirations)) == sizeof(expirations)) {
            OnTick();
          }
          break;
        }
        case kSignal: {
          signalfd_siginfo info;
          if (read(signal_fd_.get(), &info, sizeof(info)) == sizeof(info)) {
            stop_signal_ = static_cast<int>(info.ssi_signo);
            VUNET_LOG(kInfo, "%s: shutting down", strsignal(stop_signal_));
            stopping_ = true;
          }
          break;
        }
        case kStop:
          DrainEventfd(stop_fd_.get());
          stopping_ = true;
          break;
        case kFlowTimer:
          HandleFlowTimers();
          break;
        case kTransfer:
          ContinueTransfer(false);
          break;
        case kRepairListen:
        case kRepairHelper:
          HandleRepair(static_cast<Kind>(tag >> 56) == kRepairListen);
          break;
        default:
          (void)path_->OnSocketEvent(tag, events[i].events);
          break;
      }
      CheckBroken();
    }
    if (tx_pending_ && !stopping_) ProcessTx();
    FlushRx();
    ArmFlowTimer();
    if (drop_helper_when_restored_ &&
        (path_->tcp() == nullptr || path_->tcp()->restores_pending() == 0)) {
      // A load's connections are all restored: the helper is done here (a
      // helper started for this migration, passt-repair's way, exits when
      // we hang up).
      repair_->DropHelper();
      drop_helper_when_restored_ = false;
    }
  }
  path_->Shutdown();
  if (server_->done()) VUNET_LOG(kInfo, "the frontend left (--one-off): exiting");
  if (migrated_out_ && options_.migrate_exit) {
    VUNET_LOG(kInfo, "the guest moved and its frontend left (--migrate-exit): exiting");
  }
  LogCounters();
  return absl::OkStatus();
}

void Backend::LogCounters() const {
  const net::Dispatcher::Stats& d = path_->dispatch_stats();
  VUNET_LOG(kInfo,
            "counters: %d frames from the guest (%d segmentation-offloaded; %d replies, %d "
            "malformed, %d with offload requests refused), dropped: tcp %d, udp %d, icmp %d, "
            "other %d; %d router advertisements",
            d.frames, d.gso_routed, d.replies, d.malformed, d.offload_refused, d.tcp_dropped,
            d.udp_dropped, d.icmp_dropped, d.other_dropped, stats_.ra_sent);
  const vu::RxQueue::Stats& r = rx_.stats();
  VUNET_LOG(kInfo,
            "rx: %d frames (%d copied in, %d segmentation-offloaded) in %d flushes over %d loop "
            "iterations with frames (%d iterations in all), %d notifications; %d refused for "
            "room, %d never fitting, %d buffers returned empty",
            r.frames, r.sends, r.gso_frames, stats_.rx_flushes, stats_.rx_iterations,
            stats_.iterations, r.notifies, r.no_room, r.never_fits, r.returned_empty);
  for (const std::string& line : path_->StatsLines()) VUNET_LOG(kInfo, "%s", line);
  if (pcap_ != nullptr) {
    const PcapWriter::Stats& p = pcap_->stats();
    VUNET_LOG(kInfo,
              "pcap: %d frames captured to %s (%d truncated at %d bytes, %d lost to errors, "
              "%d past the size limit)",
              p.frames, pcap_->path(), p.truncated, kPcapSnapLen, p.errors, p.over_limit);
  }
}

void Backend::HandleServer(int fd) {
  const absl::Status s = server_->HandleReadable(fd);
  if (!s.ok()) {
    if (fd == server_->listen_fd() && absl::IsResourceExhausted(s)) {
      // Out of fds (EMFILE, ENFILE...): the listening socket stays readable,
      // so stop watching it for a moment rather than spin.
      VUNET_LOG_RATELIMITED(kWarning, "%s; retrying in %d ms", s.message(),
                            static_cast<int>(kAcceptBackoff.count()));
      ++stats_.accept_backoffs;
      Remove(fd);
      listen_paused_ = true;
      listen_resume_ = std::chrono::steady_clock::now() + kAcceptBackoff;
    } else {
      VUNET_LOG_RATELIMITED(kWarning, "vhost-user: %s", s.ToString());
    }
  }
  SyncConnection();
}

void Backend::SyncConnection() {
  const int fd = server_->connection_fd();
  const uint64_t serial = server_->connections_served();
  if (fd == registered_conn_ && (fd < 0 || serial == registered_conn_serial_)) return;
  if (registered_conn_ >= 0) {
    Remove(registered_conn_);
    OnFrontendGone();
  }
  registered_conn_ = -1;
  if (fd >= 0) {
    if (absl::Status s = Add(fd, Tag(kConnection, static_cast<uint32_t>(serial))); !s.ok()) {
      VUNET_LOG(kError, "vhost-user connection: %s", s.ToString());
      return;
    }
    registered_conn_ = fd;
    registered_conn_serial_ = serial;
  }
}

void Backend::OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) {
  if (index >= kQueues) {
    VUNET_LOG_RATELIMITED(kWarning, "queue %d started: only one queue pair is served", index);
    return;
  }
  if (saved_) {
    // The guest runs here again: the migration failed (or was cancelled).
    VUNET_LOG(kInfo, "migration: the guest runs here again; its flows resume");
    saved_ = migrated_out_ = false;
    path_->OnMigrationAborted(repair_control_.get());
  }
  vu::Device* device = server_ != nullptr ? server_->device() : nullptr;
  const uint64_t features = device != nullptr ? device->acked_features() : 0;
  net_config_ = vu::NetConfig::FromFeatures(features);
  path_->SetNetConfig(net_config_);
  if (features != logged_features_) {
    logged_features_ = features;
    VUNET_LOG(kInfo, "guest features 0x%x; offloads: %s", features, OffloadNames(net_config_));
  }
  vq_[index] = vq;
  kick_[index] = kick_fd;
  if (absl::Status s = Add(kick_fd, Tag(kKick, index)); !s.ok()) {
    VUNET_LOG_RATELIMITED(kError, "queue %d: %s", index, s.ToString());
  }
  if (index == kRx) rx_.Start(vq, net_config_);
  VUNET_LOG_RATELIMITED(kInfo, "queue %d (%s) started, size %d", index, index == kRx ? "rx" : "tx",
                        vq->size());
  if (index == kTx) tx_pending_ = true;  // Whatever the guest queued before.
  if (vq_[kRx] != nullptr && vq_[kTx] != nullptr) {
    ra_pending_ = true;
    SendRouterAdvertisement();
  }
  if (index == kRx) path_->OnRxStart();
}

void Backend::OnQueueStop(uint32_t index) {
  if (index >= kQueues || vq_[index] == nullptr) return;
  Remove(kick_[index]);
  vq_[index] = nullptr;
  kick_[index] = -1;
  if (index == kRx) rx_.Stop();
  if (index == kTx) tx_pending_ = false;
  ra_pending_ = false;
  VUNET_LOG_RATELIMITED(kInfo, "queue %d (%s) stopped", index, index == kRx ? "rx" : "tx");
}

void Backend::HandleKick(uint32_t index) {
  // A kick collected before its queue stopped names nothing now.
  if (index >= kQueues || vq_[index] == nullptr || kick_[index] < 0) return;
  // The kick eventfds belong to the device: DrainEventfd never blocks.
  if (DrainEventfd(kick_[index]) == 0) return;
  ++stats_.kicks;
  // The rx queue's kick means the guest posted buffers: data waiting in the
  // translators' sockets can go now.
  if (index == kTx) {
    ProcessTx();
  } else {
    path_->OnRxAvailable();
  }
}

void Backend::ProcessTx() {
  tx_pending_ = false;
  virtio::Virtqueue* tx = vq_[kTx];
  if (tx == nullptr) return;
  tx_.Process(net_config_, tx, tx_sink_);
  CheckBroken();
  // Process stops after a bounded number of batches; if the guest has queued
  // more, come back after the other events.
  tx = vq_[kTx];
  if (tx != nullptr && !tx->IsEmpty()) tx_pending_ = true;
}

void Backend::CheckBroken() {
  broken_seen_ = false;
  vu::Device* device = server_->device();
  if (device == nullptr) return;
  for (uint32_t i = 0; i < kQueues; ++i) {
    if (vq_[i] != nullptr && vq_[i]->broken()) {
      ++stats_.broken;
      VUNET_LOG_RATELIMITED(kError, "queue %d (%s) broken: %s", i, i == kRx ? "rx" : "tx",
                            vq_[i]->broken_reason());
      device->ReportBroken(i);  // Calls OnQueueStop(i).
    }
  }
}

void Backend::OnTick() {
  ++ticks_;
  if (ra_pending_ || (options_.send_ra && options_.ra_interval.count() > 0 &&
                      ticks_ % options_.ra_interval.count() == 0)) {
    SendRouterAdvertisement();
  }
  if (options_.stats_interval.count() > 0 && ticks_ % options_.stats_interval.count() == 0) {
    LogCounters();
  }
}

void Backend::SendRouterAdvertisement() {
  const net::NdpResponder* ndp = path_->ndp();
  if (!options_.send_ra || ndp == nullptr || !rx_.running()) return;
  uint8_t frame[net::kNdpMaxReplyLen];
  absl::StatusOr<size_t> n = ndp->UnsolicitedAdvertisement(frame);
  if (!n.ok() || *n == 0) return;
  if (absl::Status s = rx_.Send({frame, *n}); !s.ok()) {
    VUNET_LOG_RATELIMITED(kDebug, "router advertisement not sent: %s", s.message());
    return;
  }
  ++stats_.ra_sent;
  ra_pending_ = false;
}

// ---------------------------------------------------------------------------
// Migration.

absl::Status Backend::BeginStateTransfer(StateDirection direction, UniqueFd fd) {
  if (transfer_fd_.valid()) EndTransfer(absl::AbortedError("a new transfer began"));
  const int flags = fcntl(fd.get(), F_GETFL);
  if (flags < 0 || fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoStatus("the transfer fd");
  }
  transfer_direction_ = direction;
  transfer_buf_.clear();
  transfer_pos_ = 0;
  transfer_status_ = absl::OkStatus();
  transfer_started_ns_ = net::MonotonicNowNs();
  if (direction == StateDirection::kSave) {
    absl::StatusOr<std::string> state = path_->SaveState(repair_control_.get());
    if (!state.ok()) return state.status();
    transfer_buf_ = std::move(*state);
    saved_ = true;
    ++stats_.states_saved;
    stats_.state_bytes = transfer_buf_.size();
    stats_.state_ns = net::MonotonicNowNs() - transfer_started_ns_;
    VUNET_LOG(kInfo, "migration: saved %d flows, %d bytes in %.1f ms", flows_->size(),
              transfer_buf_.size(), stats_.state_ns / 1e6);
  }
  transfer_ = direction == StateDirection::kSave ? Transfer::kSaving : Transfer::kLoading;
  transfer_fd_ = std::move(fd);
  epoll_event ev{};
  ev.events = direction == StateDirection::kSave ? EPOLLOUT : EPOLLIN;
  ev.data.u64 = Tag(kTransfer);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, transfer_fd_.get(), &ev) != 0) {
    // Done in CheckStateTransfer, blocking then.
    VUNET_LOG(kWarning, "migration: the transfer fd is not watched: %s", strerror(errno));
  }
  ContinueTransfer(false);
  return absl::OkStatus();
}

void Backend::ContinueTransfer(bool wait) {
  const int64_t deadline = net::MonotonicNowNs() + int64_t{kTransferTimeoutMs} * 1'000'000;
  while (transfer_ == Transfer::kSaving || transfer_ == Transfer::kLoading) {
    if (transfer_ == Transfer::kSaving) {
      if (transfer_pos_ == transfer_buf_.size()) {
        EndTransfer(absl::OkStatus());  // Closing the fd ends the stream.
        return;
      }
      const ssize_t n = write(transfer_fd_.get(), transfer_buf_.data() + transfer_pos_,
                              transfer_buf_.size() - transfer_pos_);
      if (n > 0) {
        transfer_pos_ += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN) {
        EndTransfer(ErrnoStatus("writing the state"));
        return;
      }
    } else {
      char buf[65536];
      const ssize_t n = read(transfer_fd_.get(), buf, sizeof(buf));
      if (n > 0) {
        if (transfer_buf_.size() + static_cast<size_t>(n) > net::kMaxStateBytes) {
          EndTransfer(absl::ResourceExhaustedError("the state is larger than any vunet makes"));
          return;
        }
        transfer_buf_.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) {
        // The whole stream: checked, then applied, or nothing is.
        const absl::Status s = path_->LoadState(
            {reinterpret_cast<const uint8_t*>(transfer_buf_.data()), transfer_buf_.size()},
            repair_control_.get());
        stats_.state_bytes = transfer_buf_.size();
        stats_.state_ns = net::MonotonicNowNs() - transfer_started_ns_;
        if (s.ok()) {
          ++stats_.states_loaded;
          // The helper is done here too, unless a connection still waits
          // for its source on this host to let go.
          drop_helper_when_restored_ = repair_.has_value();
          VUNET_LOG(kInfo, "migration: loaded %d flows, %d bytes in %.1f ms", flows_->size(),
                    transfer_buf_.size(), stats_.state_ns / 1e6);
        } else {
          ++stats_.loads_failed;
        }
        EndTransfer(s);
        return;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN) {
        EndTransfer(ErrnoStatus("reading the state"));
        return;
      }
    }
    // Would block.
    if (!wait) return;
    const int64_t left_ms = (deadline - net::MonotonicNowNs()) / 1'000'000;
    if (left_ms <= 0) {
      EndTransfer(absl::DeadlineExceededError(
          transfer_ == Transfer::kSaving ? "the frontend stopped reading the state"
                                         : "the frontend neither finished nor closed the state"));
      return;
    }
    pollfd p{.fd = transfer_fd_.get(),
             .events = static_cast<short>(transfer_ == Transfer::kSaving ? POLLOUT : POLLIN),
             .revents = 0};
    (void)poll(&p, 1, static_cast<int>(left_ms));
  }
}

void Backend::EndTransfer(absl::Status status) {
  if (transfer_fd_.valid()) {
    Remove(transfer_fd_.get());
    transfer_fd_.reset();
  }
  if (!status.ok()) {
    VUNET_LOG(kWarning, "migration: state %s failed: %s",
              transfer_direction_ == StateDirection::kSave ? "save" : "load", status.message());
  }
  transfer_status_ = std::move(status);
  transfer_ = Transfer::kDone;
  transfer_buf_.clear();
  transfer_buf_.shrink_to_fit();
}

absl::Status Backend::CheckStateTransfer() {
  if (transfer_ == Transfer::kNone) return absl::FailedPreconditionError("no transfer began");
  ContinueTransfer(true);
  transfer_ = Transfer::kNone;
  absl::Status status = transfer_status_;
  if (transfer_direction_ == StateDirection::kSave && saved_) {
    if (status.ok()) {
      // The frontend has every flow: they are the destination's now.
      migrated_out_ = true;
      path_->OnMigratedOut(options_.migrate_linger);
      VUNET_LOG(kInfo, "migration: the state went out%s",
                options_.migrate_linger ? "; its sockets are kept, silent, until the frontend "
                                          "leaves or the guest runs here again"
                                        : "");
    } else {
      saved_ = false;
      path_->OnMigrationAborted(repair_control_.get());
    }
  }
  return status;
}

void Backend::OnFrontendGone() {
  if (!saved_) return;
  // A guest that moved: what it left frozen here goes, without a word to
  // the host peers (they talk to the destination now).
  VUNET_LOG(kInfo, "migration: the frontend left after the state went out: its flows end here");
  path_->OnMigratedOut(/*linger=*/false);
  saved_ = false;
  // Its work is done: a helper started for this migration (passt-repair's
  // way) exits when we hang up.
  if (repair_.has_value()) repair_->DropHelper();
}

void Backend::HandleRepair(bool listen) {
  if (!repair_.has_value()) return;
  if (!listen) {
    // A helper has nothing to say between requests: a hang-up, or garbage,
    // drops it (closing its fd takes it out of the epoll set).
    repair_->OnHelperReadable();
    return;
  }
  if (repair_->OnListenReadable()) {
    VUNET_LOG(kInfo, "migration: a TCP_REPAIR helper connected");
    if (absl::Status s = Add(repair_->helper_fd(), Tag(kRepairHelper)); !s.ok()) {
      VUNET_LOG(kWarning, "migration: the repair helper is not watched: %s", s.message());
    }
  }
}

}  // namespace vunet::tools
