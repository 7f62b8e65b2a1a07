#include "tools/vunet/backend.h"

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/eventfd.h"
#include "base/log.h"
#include "base/static_status.h"
#include "virtio/virtio_net.h"

namespace vunet::tools {
namespace {

// Epoll tags: the kind in the top byte, an index or fd below, the layout of
// net::FlowRef (whose kind byte the flow translators will use from
// kFirstFlowKind up, so both kinds of tag share one epoll set).
enum Kind : uint8_t { kListen = 1, kConnection, kKick, kTimer, kSignal, kStop, kIcmp, kFlowTimer };
constexpr uint8_t kFirstFlowKind = 64;

uint64_t Tag(Kind kind, uint32_t value = 0) { return (uint64_t{kind} << 56) | value; }

constexpr uint32_t kRx = virtio::kVirtioNetRxQueue;
constexpr uint32_t kTx = virtio::kVirtioNetTxQueue;

// Ping sockets idle this long (the IcmpEcho's timeout) are closed by Sweep,
// which runs every kIcmpSweepTicks seconds.
constexpr int kIcmpSweepTicks = 5;

// How long to stop accepting after accept() ran out of fds.
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);

// The signals that stop vunet cleanly.
void StopSignals(sigset_t* mask) {
  sigemptyset(mask);
  for (int signal : {SIGTERM, SIGINT, SIGHUP, SIGQUIT}) sigaddset(mask, signal);
}

absl::Status Errno(const char* what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

bool Readable(int fd) {
  pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

}  // namespace

void Backend::Rx::OnFrameWritten(absl::Span<const iovec> iov, size_t offset, size_t len) {
  PcapWriter* pcap = backend_->pcap_.get();
  if (pcap == nullptr) return;
  // The frame's part of the iovecs: [offset, offset + len).
  constexpr size_t kMaxPieces = 64;
  iovec pieces[kMaxPieces];
  size_t n = 0;
  size_t skip = offset;
  size_t left = len;
  for (const iovec& v : iov) {
    if (left == 0 || n == kMaxPieces) break;
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    const size_t take = std::min(v.iov_len - skip, left);
    pieces[n++] = {static_cast<uint8_t*>(v.iov_base) + skip, take};
    left -= take;
    skip = 0;
  }
  pcap->Write(pieces, n, len - left);
}

void Backend::MacLearner::OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) {
  net::MacAddr src;
  if (net::FrameReader(frame).Read(6, src.bytes, sizeof(src.bytes)) && !src.IsMulticast() &&
      !(src == net::MacAddr{}) && !(src == backend_->guest_.guest_mac)) {
    VUNET_LOG_RATELIMITED(kInfo, "the guest's MAC address is %02x:%02x:%02x:%02x:%02x:%02x",
                          src.bytes[0], src.bytes[1], src.bytes[2], src.bytes[3], src.bytes[4],
                          src.bytes[5]);
    backend_->guest_.guest_mac = src;
  }
  next_->OnFrame(hdr, frame);
}

absl::Status Backend::RxSender::Send(absl::Span<const uint8_t> frame) {
  if (!sender.has_value()) {  // Made once: no allocation per frame.
    return VUNET_STATIC_STATUS(absl::UnavailableError("the receive queue is not running"));
  }
  return sender->Send(frame);
}

void Backend::Next::OnFrame(const vu::VirtioNetHdr& /*hdr*/, absl::Span<const iovec> /*frame*/,
                            const net::ParsedFrame& parsed) {
  Stats& s = backend_->stats_;
  switch (parsed.l4) {
    case net::L4Kind::kTcp:
      // No TCP translator (--no-tcp), or one that declined the frame.
      ++s.tcp_dropped;
      VUNET_LOG_RATELIMITED(kDebug, "guest TCP frame dropped (not translated): port %d",
                            parsed.dst_port);
      return;
    case net::L4Kind::kUdp:
      ++s.udp_dropped;
      VUNET_LOG_RATELIMITED(kDebug, "guest UDP frame dropped (not translated): port %d",
                            parsed.dst_port);
      return;
    case net::L4Kind::kIcmp:
    case net::L4Kind::kIcmpv6:
      // Only without ICMP echo (IcmpEcho takes every ICMP frame), or NDP
      // messages the responder does not answer.
      ++s.icmp_dropped;
      return;
    default:
      ++s.other_dropped;
      VUNET_LOG_RATELIMITED(kDebug, "guest frame dropped: ethertype 0x%04x", parsed.ether_type);
      return;
  }
}

Backend::Backend(const BackendOptions& options, std::optional<net::DhcpServer> dhcp,
                 std::optional<net::NdpResponder> ndp, std::optional<net::Dhcpv6Server> dhcpv6)
    : options_(options),
      dhcp_(std::move(dhcp)),
      ndp_(std::move(ndp)),
      dhcpv6_(std::move(dhcpv6)),
      guest_(options.guest) {}

absl::StatusOr<std::unique_ptr<Backend>> Backend::Create(const BackendOptions& options) {
  std::optional<net::DhcpServer> dhcp;
  if (options.dhcp.has_value()) {
    absl::StatusOr<net::DhcpServer> d = net::DhcpServer::Create(*options.dhcp);
    if (!d.ok()) return absl::InvalidArgumentError(absl::StrCat("DHCP: ", d.status().message()));
    dhcp.emplace(std::move(*d));
  }
  std::optional<net::NdpResponder> ndp;
  if (options.ndp.has_value()) {
    absl::StatusOr<net::NdpResponder> n = net::NdpResponder::Create(*options.ndp);
    if (!n.ok()) return absl::InvalidArgumentError(absl::StrCat("NDP: ", n.status().message()));
    ndp.emplace(std::move(*n));
  }
  std::optional<net::Dhcpv6Server> dhcpv6;
  if (options.dhcpv6.has_value()) {
    absl::StatusOr<net::Dhcpv6Server> d = net::Dhcpv6Server::Create(*options.dhcpv6);
    if (!d.ok()) return absl::InvalidArgumentError(absl::StrCat("DHCPv6: ", d.status().message()));
    dhcpv6.emplace(std::move(*d));
  }
  std::unique_ptr<Backend> b(
      new Backend(options, std::move(dhcp), std::move(ndp), std::move(dhcpv6)));
  if (absl::Status s = b->Init(); !s.ok()) return s;
  return b;
}

absl::Status Backend::Init() {
  // SIGTERM, SIGINT, SIGHUP and SIGQUIT are read from a signalfd in Run()
  // (each a clean shutdown that removes the socket); blocked from now on, so
  // that one arriving before then waits for it.
  sigset_t mask;
  StopSignals(&mask);
  if (pthread_sigmask(SIG_BLOCK, &mask, nullptr) != 0) return Errno("pthread_sigmask");

  stop_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd_.valid()) return Errno("eventfd");

  if (!options_.pcap_path.empty()) {
    absl::StatusOr<std::unique_ptr<PcapWriter>> pcap = PcapWriter::Open(options_.pcap_path);
    if (!pcap.ok()) {
      return absl::Status(pcap.status().code(), absl::StrCat("--pcap: ", pcap.status().message()));
    }
    pcap_ = std::move(*pcap);
    pcap_replies_.emplace(pcap_.get(), &rx_sender_);
    replies_ = &*pcap_replies_;
    VUNET_LOG(kInfo, "capturing frames both ways to %s", options_.pcap_path);
  }

  // The epoll set exists from here, so that translators can watch sockets
  // they open in Create (listeners). It survives a daemonizing fork.
  epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_.valid()) return Errno("epoll_create1");
  if (absl::Status s = CreateTranslators(); !s.ok()) return s;
  net::ParsedFrameSink* after_icmp = &next_;
  if (!translators_.empty()) after_icmp = translators_.front().get();

  if (options_.icmp.has_value()) {
    absl::StatusOr<std::unique_ptr<net::IcmpEcho>> icmp =
        net::IcmpEcho::Create(*options_.icmp, replies_, after_icmp, this);
    if (icmp.ok()) {
      icmp_ = std::move(*icmp);
      VUNET_LOG(kInfo, "ICMP echo: on (IPv4%s, through ping sockets)",
                icmp_->ipv6_enabled() ? " and IPv6" : "");
    } else if (options_.icmp_required || absl::IsInvalidArgument(icmp.status())) {
      return absl::Status(icmp.status().code(), absl::StrCat("ICMP: ", icmp.status().message()));
    } else {
      VUNET_LOG(kWarning, "ICMP echo: off: %s", icmp.status().message());
    }
  }
  net::ParsedFrameSink* after_dispatch = &next_;
  if (!translators_.empty()) after_dispatch = translators_.front().get();
  if (icmp_ != nullptr) after_dispatch = icmp_.get();
  dispatcher_.emplace(
      net::Dispatcher::Handlers{.arp = &options_.arp,
                                .dhcp = dhcp_.has_value() ? &*dhcp_ : nullptr,
                                .ndp = ndp_.has_value() ? &*ndp_ : nullptr,
                                .dhcpv6 = dhcpv6_.has_value() ? &*dhcpv6_ : nullptr},
      replies_, after_dispatch);
  mac_learner_.emplace(this, &*dispatcher_);
  tx_sink_ = &*mac_learner_;
  if (pcap_ != nullptr) {
    pcap_sink_.emplace(pcap_.get(), &*mac_learner_);
    tx_sink_ = &*pcap_sink_;
  }

  vu::Server::Options server_options;
  server_options.socket_path = options_.socket_path;
  server_options.one_off = options_.one_off;
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
  if (!signal_fd_.valid()) return Errno("signalfd");
  timer_fd_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!timer_fd_.valid()) return Errno("timerfd_create");
  itimerspec tick{};
  tick.it_interval.tv_sec = 1;
  tick.it_value.tv_sec = 1;
  if (timerfd_settime(timer_fd_.get(), 0, &tick, nullptr) != 0) return Errno("timerfd_settime");

  // None when serving an inherited connected socket: its connection is all.
  if (server_->listen_fd() >= 0) {
    if (absl::Status s = Add(server_->listen_fd(), Tag(kListen)); !s.ok()) return s;
  }
  SyncConnection();
  if (absl::Status s = Add(signal_fd_.get(), Tag(kSignal)); !s.ok()) return s;
  if (absl::Status s = Add(timer_fd_.get(), Tag(kTimer)); !s.ok()) return s;
  if (absl::Status s = Add(stop_fd_.get(), Tag(kStop)); !s.ok()) return s;
  flow_timer_fd_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!flow_timer_fd_.valid()) return Errno("timerfd_create");
  if (absl::Status s = Add(flow_timer_fd_.get(), Tag(kFlowTimer)); !s.ok()) return s;
  return absl::OkStatus();
}

Backend::~Backend() {
  // The server's destructor stops the queues (OnQueueStop) and removes the
  // socket file; do it while the rest is still here.
  server_.reset();
  icmp_.reset();  // Tells us of its sockets closing while epoll_ is open.
  dispatcher_.reset();
  translators_.clear();  // Before the flow table their flows live in.
  flows_.reset();
}

absl::Status Backend::CreateTranslators() {
  if (options_.translators.empty()) return absl::OkStatus();
  if (options_.translators.size() > (256 - kFirstFlowKind) / net::kKindsPerTranslator) {
    return absl::InvalidArgumentError("too many translators for the epoll kinds");
  }
  absl::StatusOr<std::unique_ptr<net::FlowTable>> flows =
      net::FlowTable::Create({.capacity = options_.max_flows});
  if (!flows.ok()) return flows.status();
  flows_ = std::move(*flows);
  // Made last first, so that each knows the one it hands frames on to.
  const size_t n = options_.translators.size();
  translators_.resize(n);
  for (size_t i = n; i-- > 0;) {
    net::TranslatorEnv env;
    env.flows = flows_.get();
    env.rx = &rx_;
    env.watcher = this;
    env.replies = replies_;
    env.next = i + 1 < n ? static_cast<net::ParsedFrameSink*>(translators_[i + 1].get()) : &next_;
    env.guest = &guest_;
    env.first_kind = static_cast<uint8_t>(kFirstFlowKind + i * net::kKindsPerTranslator);
    env.clock = net::MonotonicNowNs;
    absl::StatusOr<std::unique_ptr<net::Translator>> t = options_.translators[i](env);
    if (!t.ok()) return t.status();
    translators_[i] = std::move(*t);
  }
  return absl::OkStatus();
}

absl::Status Backend::Watch(int fd, uint32_t events, uint64_t tag) {
  if (!epoll_.valid()) return absl::FailedPreconditionError("the event loop is not running");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return Errno("epoll_ctl add");
  return absl::OkStatus();
}

absl::Status Backend::Modify(int fd, uint32_t events, uint64_t tag) {
  if (!epoll_.valid()) return absl::FailedPreconditionError("the event loop is not running");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) return Errno("epoll_ctl mod");
  return absl::OkStatus();
}

void Backend::Unwatch(int fd) {
  if (epoll_.valid()) Remove(fd);
}

void Backend::HandleTranslatorEvent(uint64_t tag, uint32_t events) {
  const size_t i = ((tag >> 56) - kFirstFlowKind) / net::kKindsPerTranslator;
  if (i >= translators_.size()) return;
  translators_[i]->OnSocketEvent(tag, events);
  CheckBroken();
}

void Backend::HandleFlowTimers() {
  uint64_t expirations;
  [[maybe_unused]] ssize_t r = read(flow_timer_fd_.get(), &expirations, sizeof(expirations));
  flow_timer_armed_.reset();  // Fired (or about to be re-armed below).
  if (flows_ == nullptr) return;
  const int64_t now = net::MonotonicNowNs();
  stats_.flow_timers += flows_->Expire(now, [&](net::FlowId id) {
    const net::FlowKey* key = flows_->Key(id);
    if (key == nullptr) return;
    for (const std::unique_ptr<net::Translator>& t : translators_) {
      if (t->proto() == key->proto) {
        t->OnTimer(id, now);
        return;
      }
    }
  });
  CheckBroken();
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
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return Errno("epoll_ctl");
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

absl::Status Backend::Run() {
  if (absl::Status s = SetUpLoop(); !s.ok()) return s;
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  while (!stopping_ && !server_->done()) {
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
      return Errno("epoll_wait");
    }
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
        case kIcmp:
          HandleIcmp(static_cast<int>(value));
          break;
        case kFlowTimer:
          HandleFlowTimers();
          break;
        default:
          if ((tag >> 56) >= kFirstFlowKind) HandleTranslatorEvent(tag, events[i].events);
          break;
      }
    }
    if (tx_pending_ && !stopping_) ProcessTx();
    ArmFlowTimer();
  }
  for (const std::unique_ptr<net::Translator>& t : translators_) t->Shutdown();
  if (server_->done()) VUNET_LOG(kInfo, "the frontend left (--one-off): exiting");
  LogCounters();
  return absl::OkStatus();
}

void Backend::LogCounters() {
  VUNET_LOG(kInfo,
            "counters: %d frames from the guest (%d replies, %d malformed), dropped: tcp %d, "
            "udp %d, icmp %d, other %d; %d router advertisements; icmp echo: %d requests, "
            "%d replies",
            dispatcher_->stats().frames, dispatcher_->stats().replies,
            dispatcher_->stats().malformed, stats_.tcp_dropped, stats_.udp_dropped,
            stats_.icmp_dropped, stats_.other_dropped, stats_.ra_sent,
            icmp_ != nullptr ? icmp_->stats().requests : 0,
            icmp_ != nullptr ? icmp_->stats().replies : 0);
  for (const std::unique_ptr<net::Translator>& t : translators_) {
    VUNET_LOG(kInfo, "%s", t->StatsLine());
  }
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
  if (registered_conn_ >= 0) Remove(registered_conn_);
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
  vu::Device* device = server_ != nullptr ? server_->device() : nullptr;
  net_config_ = vu::NetConfig::FromFeatures(device != nullptr ? device->acked_features() : 0);
  vq_[index] = vq;
  kick_[index] = kick_fd;
  if (absl::Status s = Add(kick_fd, Tag(kKick, index)); !s.ok()) {
    VUNET_LOG_RATELIMITED(kError, "queue %d: %s", index, s.ToString());
  }
  if (index == kRx) rx_sender_.sender.emplace(&net_config_, vq);
  VUNET_LOG_RATELIMITED(kInfo, "queue %d (%s) started, size %d", index, index == kRx ? "rx" : "tx",
                        vq->size());
  if (index == kTx) tx_pending_ = true;  // Whatever the guest queued before.
  if (vq_[kRx] != nullptr && vq_[kTx] != nullptr) {
    ra_pending_ = true;
    SendRouterAdvertisement();
  }
  if (index == kRx) {
    for (const std::unique_ptr<net::Translator>& t : translators_) t->OnRxAvailable();
  }
}

void Backend::OnQueueStop(uint32_t index) {
  if (index >= kQueues || vq_[index] == nullptr) return;
  Remove(kick_[index]);
  vq_[index] = nullptr;
  kick_[index] = -1;
  if (index == kRx) rx_sender_.sender.reset();
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
    for (const std::unique_ptr<net::Translator>& t : translators_) t->OnRxAvailable();
    CheckBroken();
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

bool Backend::OnSocketOpened(int fd) {
  if (absl::Status s = Add(fd, Tag(kIcmp, static_cast<uint32_t>(fd))); !s.ok()) {
    VUNET_LOG_RATELIMITED(kWarning, "ping socket: %s", s.ToString());
    return false;
  }
  return true;
}

void Backend::OnSocketClosing(int fd) {
  if (epoll_.valid()) Remove(fd);
}

void Backend::HandleIcmp(int fd) {
  if (icmp_ == nullptr) return;
  // A socket closed (and its number reused) since the event was collected
  // reads nothing: OnReadable does not block.
  icmp_->OnReadable(fd);
  CheckBroken();
}

void Backend::OnTick() {
  ++ticks_;
  if (ra_pending_ || (options_.send_ra && options_.ra_interval.count() > 0 &&
                      ticks_ % options_.ra_interval.count() == 0)) {
    SendRouterAdvertisement();
  }
  if (icmp_ != nullptr && ticks_ % kIcmpSweepTicks == 0) icmp_->Sweep(net::IcmpEcho::NowNs());
  if (options_.stats_interval.count() > 0 && ticks_ % options_.stats_interval.count() == 0) {
    LogCounters();
  }
}

void Backend::SendRouterAdvertisement() {
  if (!options_.send_ra || !ndp_.has_value() || !rx_sender_.sender.has_value()) return;
  uint8_t frame[net::kNdpMaxReplyLen];
  absl::StatusOr<size_t> n = ndp_->UnsolicitedAdvertisement(frame);
  if (!n.ok() || *n == 0) return;
  if (absl::Status s = replies_->Send({frame, *n}); !s.ok()) {
    VUNET_LOG_RATELIMITED(kDebug, "router advertisement not sent: %s", s.message());
    CheckBroken();
    return;
  }
  ++stats_.ra_sent;
  ra_pending_ = false;
  CheckBroken();
}

}  // namespace vunet::tools
