// tap_bridge: a Linux network stack as the guest of a vhost-user backend.
// Creates a tap device in the network namespace it runs in, connects to the
// backend's socket as a virtio-net driver would, and carries frames between
// the two until SIGTERM/SIGINT or the backend leaves (see tap_bridge.h).
//
//   ip netns add guest
//   ip netns exec guest tap_bridge --socket /tmp/vunet.sock --tap vunet0 &
//   ip netns exec guest udhcpc -i vunet0      # or: ip addr add ... dev vunet0
//
// The link is up with the MTU given once "tap_bridge: ... running" is
// printed (stderr), with the features negotiated and the tap's offloads.
// Counters are printed when it stops and on SIGUSR1. Exit status: 0 after a
// signal, 1 on an error, 3 when the backend closed the connection.
//
// --offloads=off asks for no segmentation offload (A/B comparisons);
// --loss-to-backend=SPEC and --loss-to-guest=SPEC drop or reorder frames
// (tools/vu_frontend/loss.h), among those --loss-only selects.

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "tools/vu_frontend/frontend.h"
#include "tools/vu_frontend/loss.h"
#include "tools/vu_frontend/net_header.h"
#include "tools/vu_frontend/tap_bridge.h"

ABSL_FLAG(std::string, socket, "", "the backend's vhost-user UNIX socket (required)");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(10),
          "how long to retry connecting while the socket is missing or refuses");
ABSL_FLAG(std::string, tap, "vunet0", "the tap interface's name");
ABSL_FLAG(uint32_t, mtu, 65520, "the tap's MTU (vunet's default guest MTU is 65520)");
ABSL_FLAG(std::string, mac, "", "the tap's MAC address (default: the kernel's random one)");
ABSL_FLAG(uint32_t, queue_size, 256, "entries per ring");
ABSL_FLAG(uint32_t, tx_publish_bytes, 32768,
          "publish transmitted frames to the backend whenever this many bytes were read from the "
          "tap, not only at the end of a batch, so that it starts on large frames early (0: "
          "once per batch)");
ABSL_FLAG(uint32_t, rx_buffers, 64,
          "receive buffers of a whole frame each posted at a time, at most the ring's size (0: as "
          "many as the ring holds); fewer keep the memory they cycle through in cache");
ABSL_FLAG(bool, guest_csum, true,
          "ask for VIRTIO_NET_F_GUEST_CSUM (the backend may leave checksums to us)");
ABSL_FLAG(bool, csum, true,
          "ask for VIRTIO_NET_F_CSUM; if the backend takes it, the tap runs with checksum "
          "offload and the namespace's stack leaves TCP/UDP checksums to the backend");
ABSL_FLAG(std::string, offloads, "on",
          "segmentation offloads: on asks for HOST_TSO4/6, HOST_ECN, HOST_USO, GUEST_TSO4/6, "
          "GUEST_ECN, GUEST_USO4/6 (whichever the backend offers is used, the tap's offloads "
          "set to match); off asks for none (checksum offload stays as --csum and --guest_csum "
          "say)");
ABSL_FLAG(std::string, loss_to_backend, "",
          "frames from the tap to drop or reorder on their way to the backend: rules such as "
          "nth:N, burst:N:K, every:N, reorder:N:D, random:P[:seed=S], after:N, comma-separated "
          "(see tools/vu_frontend/loss.h)");
ABSL_FLAG(std::string, loss_to_guest, "",
          "frames from the backend to drop or reorder on their way to the tap (as "
          "--loss-to-backend)");
ABSL_FLAG(std::string, loss_only, "tcp",
          "the frames loss rules count and apply to: tcp-data, tcp-ack, tcp, udp, other-ip, ip, "
          "non-ip, all (comma-separated); others pass untouched (DHCP, ARP, NDP by default)");
ABSL_FLAG(absl::Duration, reorder_timeout, absl::Milliseconds(20),
          "a frame held back by reorder:N:D goes after this long if its D frames did not come");
ABSL_FLAG(bool, reset_on_usr1, false,
          "on SIGUSR1, also reset the device as a guest driver does (for fault tests): both rings "
          "disabled and stopped (GET_VRING_BASE), --reset_pause, then laid out afresh and started");
ABSL_FLAG(absl::Duration, reset_pause, absl::Milliseconds(100),
          "how long the rings stay stopped in a --reset_on_usr1 reset");

namespace vunet::vu_frontend {
namespace {

// "--queue-size=3" -> "--queue_size=3": absl flag names use underscores.
void NormalizeFlagNames(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* arg = argv[i];
    if (std::strcmp(arg, "--") == 0) break;
    if (std::strncmp(arg, "--", 2) != 0) continue;
    for (char* p = arg + 2; *p != '\0' && *p != '='; ++p) {
      if (*p == '-') *p = '_';
    }
  }
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "tap_bridge: %s\n", message.c_str());
  return 1;
}

void PrintCounters(const TapBridge& bridge, const Frontend& frontend) {
  const TapBridgeStats& st = bridge.stats();
  std::fprintf(
      stderr,
      "tap_bridge: to backend %llu frames %llu bytes (%llu partial checksums, %llu GSO, %llu "
      "batches); to tap %llu frames %llu bytes (%llu GSO); "
      "tap write errors %llu, dropped from tap %llu, bad headers from backend %llu, transmit ring "
      "full %llu (%llu timed out), DATA_VALID as partial %llu, polls %llu\n",
      static_cast<unsigned long long>(st.to_backend_frames),
      static_cast<unsigned long long>(st.to_backend_bytes),
      static_cast<unsigned long long>(st.to_backend_partial),
      static_cast<unsigned long long>(st.to_backend_gso),
      static_cast<unsigned long long>(st.tx_batches),
      static_cast<unsigned long long>(st.to_tap_frames),
      static_cast<unsigned long long>(st.to_tap_bytes),
      static_cast<unsigned long long>(st.to_tap_gso),
      static_cast<unsigned long long>(st.tap_write_errors),
      static_cast<unsigned long long>(st.tap_read_dropped),
      static_cast<unsigned long long>(st.backend_bad_headers),
      static_cast<unsigned long long>(st.tx_ring_full),
      static_cast<unsigned long long>(st.tx_wait_timeouts),
      static_cast<unsigned long long>(st.data_valid_marked_partial),
      static_cast<unsigned long long>(st.polls));
  const FrontendOptions& options = frontend.options();
  if (!options.loss_to_backend.empty()) {
    std::fprintf(stderr, "tap_bridge: loss to backend %s: %s\n",
                 LossSpecString(options.loss_to_backend).c_str(),
                 LossCountersString(frontend.loss_counters(Direction::kToBackend)).c_str());
  }
  if (!options.loss_to_guest.empty()) {
    std::fprintf(stderr, "tap_bridge: loss to guest %s: %s\n",
                 LossSpecString(options.loss_to_guest).c_str(),
                 LossCountersString(frontend.loss_counters(Direction::kToGuest)).c_str());
  }
  std::fflush(stderr);
}

// A device reset as a guest's driver makes one: both rings disabled and
// stopped (GET_VRING_BASE), `pause`, then laid out afresh (receive buffers
// posted anew, frames in flight lost) and started again.
absl::Status ResetRings(Frontend* frontend, absl::Duration pause) {
  const bool enable = (frontend->features() & Bit(vu::kVhostUserFProtocolFeatures)) != 0;
  for (uint32_t i = 0; i < kNumQueues; ++i) {
    if (enable) {
      if (absl::Status s = frontend->EnableRing(i, false); !s.ok()) return s;
    }
    if (absl::StatusOr<uint32_t> base = frontend->GetVringBase(i); !base.ok()) {
      return base.status();
    }
  }
  absl::SleepFor(pause);
  for (uint32_t i = 0; i < kNumQueues; ++i) {
    if (absl::Status s = frontend->SetUpRing(i); !s.ok()) return s;
  }
  for (uint32_t i = 0; enable && i < kNumQueues; ++i) {
    if (absl::Status s = frontend->EnableRing(i, true); !s.ok()) return s;
  }
  return absl::OkStatus();
}

int Run() {
  const std::string socket_path = absl::GetFlag(FLAGS_socket);
  if (socket_path.empty()) return Fail("--socket is required");
  TapOptions tap_options;
  tap_options.name = absl::GetFlag(FLAGS_tap);
  tap_options.mtu = absl::GetFlag(FLAGS_mtu);
  if (const std::string mac = absl::GetFlag(FLAGS_mac); !mac.empty()) {
    tap_options.mac = ParseMac(mac);
    if (!tap_options.mac) return Fail("--mac: not a MAC address: " + mac);
  }

  // Signals become readable on a signalfd, the bridge's stop fd.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR1);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  UniqueFd stop(signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!stop.valid()) return Fail(std::string("signalfd: ") + strerror(errno));

  FrontendOptions options;
  options.queue_size = absl::GetFlag(FLAGS_queue_size);
  if (absl::GetFlag(FLAGS_guest_csum)) options.features |= Bit(kVirtioNetFGuestCsum);
  if (absl::GetFlag(FLAGS_csum)) options.features |= Bit(kVirtioNetFCsum);
  const std::string offloads = absl::GetFlag(FLAGS_offloads);
  if (offloads == "on") {
    options.features |= kGsoFeatures;
  } else if (offloads != "off") {
    return Fail("--offloads: on or off, not " + offloads);
  }
  absl::StatusOr<uint8_t> loss_filter = ParseLossFilter(absl::GetFlag(FLAGS_loss_only));
  if (!loss_filter.ok()) return Fail("--loss-only: " + std::string(loss_filter.status().message()));
  absl::StatusOr<LossSpec> loss_to_backend =
      ParseLossSpec(absl::GetFlag(FLAGS_loss_to_backend), *loss_filter);
  if (!loss_to_backend.ok()) {
    return Fail("--loss-to-backend: " + std::string(loss_to_backend.status().message()));
  }
  absl::StatusOr<LossSpec> loss_to_guest =
      ParseLossSpec(absl::GetFlag(FLAGS_loss_to_guest), *loss_filter);
  if (!loss_to_guest.ok()) {
    return Fail("--loss-to-guest: " + std::string(loss_to_guest.status().message()));
  }
  options.loss_to_backend = *loss_to_backend;
  options.loss_to_guest = *loss_to_guest;
  options.reorder_timeout = absl::GetFlag(FLAGS_reorder_timeout);
  // A frame of the largest MTU with its Ethernet header, in one buffer: no
  // reassembly copy on the receive side.
  options.max_frame_size = 65535 + 14;
  options.rx_buffer_size = sizeof(VirtioNetHdr) + options.max_frame_size;
  options.rx_buffers = absl::GetFlag(FLAGS_rx_buffers);
  options.tx_publish_bytes = absl::GetFlag(FLAGS_tx_publish_bytes);
  absl::StatusOr<std::unique_ptr<Frontend>> frontend = Frontend::Create(options);
  if (!frontend.ok()) return Fail(frontend.status().ToString());

  absl::StatusOr<Tap> tap = OpenTap(tap_options);
  if (!tap.ok()) return Fail(tap.status().ToString());
  const std::string tap_name = tap->name;

  if (absl::Status s = (*frontend)->Connect(socket_path, absl::GetFlag(FLAGS_connect_timeout));
      !s.ok()) {
    return Fail(s.ToString());
  }
  if (absl::Status s = (*frontend)->Negotiate(); !s.ok()) {
    return Fail("negotiation failed: " + s.ToString());
  }
  absl::StatusOr<std::unique_ptr<TapBridge>> bridge =
      TapBridge::Create(frontend->get(), std::move(tap->fd));
  if (!bridge.ok()) return Fail(bridge.status().ToString());
  const Frontend& f = **frontend;
  std::fprintf(stderr,
               "tap_bridge: %s (MTU %u) <-> %s running; features %s; tap offloads %s; loss to "
               "backend %s; loss to guest %s\n",
               tap_name.c_str(), tap_options.mtu, socket_path.c_str(),
               FeatureNames(f.features()).c_str(),
               TunOffloadNames((*bridge)->tun_offloads()).c_str(),
               LossSpecString(f.options().loss_to_backend).c_str(),
               LossSpecString(f.options().loss_to_guest).c_str());

  absl::Status status = (*bridge)->Run(stop.get());
  // Run returned for a signal: SIGUSR1 prints the counters (and with
  // --reset_on_usr1 resets the device), then the bridge goes on.
  for (int resets = 1; status.ok();) {
    signalfd_siginfo info;
    if (read(stop.get(), &info, sizeof(info)) != sizeof(info) || info.ssi_signo != SIGUSR1) break;
    PrintCounters(**bridge, f);
    if (absl::GetFlag(FLAGS_reset_on_usr1)) {
      status = ResetRings(frontend->get(), absl::GetFlag(FLAGS_reset_pause));
      if (!status.ok()) break;
      std::fprintf(stderr, "tap_bridge: device reset %d: rings stopped and started again\n",
                   resets++);
    }
    status = (*bridge)->Run(stop.get());
  }
  PrintCounters(**bridge, f);
  if (absl::IsUnavailable(status)) {
    std::fprintf(stderr, "tap_bridge: %s\n", std::string(status.message()).c_str());
    return 3;
  }
  if (!status.ok()) return Fail(status.ToString());
  return 0;
}

}  // namespace
}  // namespace vunet::vu_frontend

int main(int argc, char** argv) {
  vunet::vu_frontend::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  return vunet::vu_frontend::Run();
}
