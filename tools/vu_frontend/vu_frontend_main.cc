// vu_frontend: connects to a vhost-user backend as a virtio-net driver would,
// negotiates, prints what was agreed, and optionally sends and receives
// frames, printing counts and rates.
//
//   bazel run //tools/vu_frontend:vu_frontend_main -- --socket /tmp/vunet.sock
//       --send-frames 100000 --frame-size 1514 --receive-frames 100000
//
// Flags may be spelled with dashes or underscores. Sent frames are Ethernet
// broadcasts of EtherType 0x88b5 (local experimental) carrying a sequence
// number. With both --send-frames and --receive-frames, receiving is
// interleaved with sending so an echoing backend never runs out of receive
// buffers.

#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "tools/vu_frontend/frontend.h"

ABSL_FLAG(std::string, socket, "", "the backend's vhost-user UNIX socket (required)");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(5),
          "how long to retry connecting while the socket is missing or refuses");
ABSL_FLAG(uint32_t, queue_size, 256, "entries per ring");
ABSL_FLAG(int, memory_regions, 1, "guest memory regions (1 to 8)");
ABSL_FLAG(bool, mrg_rxbuf, true, "ask for VIRTIO_NET_F_MRG_RXBUF");
ABSL_FLAG(bool, event_idx, true, "ask for VIRTIO_RING_F_EVENT_IDX");
ABSL_FLAG(bool, indirect_desc, true, "ask for VIRTIO_RING_F_INDIRECT_DESC");
ABSL_FLAG(bool, protocol_features, true, "ask for VHOST_USER_F_PROTOCOL_FEATURES");
ABSL_FLAG(bool, reply_ack, true, "ask for VHOST_USER_PROTOCOL_F_REPLY_ACK");
ABSL_FLAG(uint64_t, extra_features, 0, "further virtio feature bits to ask for (a mask)");
ABSL_FLAG(uint32_t, rx_buffer_size, 1526, "bytes per receive buffer, virtio-net header included");
ABSL_FLAG(uint32_t, rx_descriptors, 1, "descriptors each receive buffer is split into");
ABSL_FLAG(bool, rx_indirect, false, "post receive buffers through indirect tables");
ABSL_FLAG(bool, tx_header_separate, false, "virtio-net header in its own transmit descriptor");
ABSL_FLAG(bool, tx_indirect, false, "send frames through indirect tables");
ABSL_FLAG(uint64_t, send_frames, 0, "frames to send");
ABSL_FLAG(uint32_t, frame_size, 1514, "bytes per sent frame (Ethernet header included)");
ABSL_FLAG(uint32_t, batch, 32, "frames per SendFrames call (one kick each at most)");
ABSL_FLAG(uint64_t, receive_frames, 0, "frames to receive");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(10),
          "how long to wait without progress before giving up");

namespace vunet::vu_frontend {
namespace {

// "--send-frames=3" -> "--send_frames=3": absl flag names use underscores.
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

double Rate(uint64_t count, absl::Duration elapsed) {
  const double seconds = absl::ToDoubleSeconds(elapsed);
  return seconds > 0 ? count / seconds : 0;
}

void PrintRate(const char* what, uint64_t frames, uint64_t bytes, absl::Duration elapsed) {
  std::printf("%s: %llu frames, %llu bytes in %.3f s: %.0f frames/s, %.3f Gbit/s\n", what,
              static_cast<unsigned long long>(frames), static_cast<unsigned long long>(bytes),
              absl::ToDoubleSeconds(elapsed), Rate(frames, elapsed),
              Rate(bytes, elapsed) * 8 / 1e9);
}

int Run() {
  const std::string socket_path = absl::GetFlag(FLAGS_socket);
  if (socket_path.empty()) {
    std::fprintf(stderr, "vu_frontend: --socket is required\n");
    return 2;
  }
  const uint64_t to_send = absl::GetFlag(FLAGS_send_frames);
  const uint64_t to_receive = absl::GetFlag(FLAGS_receive_frames);
  const uint32_t frame_size = absl::GetFlag(FLAGS_frame_size);
  const uint32_t batch = absl::GetFlag(FLAGS_batch);
  const absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (to_send > 0 && (frame_size < 14 || batch == 0)) {
    std::fprintf(stderr, "vu_frontend: --frame-size must be at least 14, --batch at least 1\n");
    return 2;
  }

  FrontendOptions options;
  options.queue_size = absl::GetFlag(FLAGS_queue_size);
  options.memory_regions = absl::GetFlag(FLAGS_memory_regions);
  options.features = Bit(virtio::kVirtioFVersion1) | absl::GetFlag(FLAGS_extra_features);
  if (absl::GetFlag(FLAGS_mrg_rxbuf)) options.features |= Bit(kVirtioNetFMrgRxbuf);
  if (absl::GetFlag(FLAGS_event_idx)) options.features |= Bit(virtio::kVirtioRingFEventIdx);
  if (absl::GetFlag(FLAGS_indirect_desc)) options.features |= Bit(virtio::kVirtioRingFIndirectDesc);
  if (absl::GetFlag(FLAGS_protocol_features)) {
    options.features |= Bit(vu::kVhostUserFProtocolFeatures);
  }
  options.protocol_features = absl::GetFlag(FLAGS_reply_ack) ? Bit(vu::kProtocolFReplyAck) : 0;
  options.rx_buffer_size = absl::GetFlag(FLAGS_rx_buffer_size);
  options.rx_descriptors = absl::GetFlag(FLAGS_rx_descriptors);
  options.rx_indirect = absl::GetFlag(FLAGS_rx_indirect);
  options.tx_header_separate = absl::GetFlag(FLAGS_tx_header_separate);
  options.tx_indirect = absl::GetFlag(FLAGS_tx_indirect);
  if (to_send > 0 && frame_size > options.max_frame_size) options.max_frame_size = frame_size;

  absl::StatusOr<std::unique_ptr<Frontend>> created = Frontend::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "vu_frontend: %s\n", created.status().ToString().c_str());
    return 1;
  }
  Frontend& frontend = **created;
  if (absl::Status s = frontend.Connect(socket_path, absl::GetFlag(FLAGS_connect_timeout));
      !s.ok()) {
    std::fprintf(stderr, "vu_frontend: %s\n", s.ToString().c_str());
    return 1;
  }
  if (absl::Status s = frontend.Negotiate(); !s.ok()) {
    std::fprintf(stderr, "vu_frontend: negotiation failed: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("offered features:    0x%016llx %s\n",
              static_cast<unsigned long long>(frontend.offered_features()),
              FeatureNames(frontend.offered_features()).c_str());
  std::printf("negotiated features: 0x%016llx %s\n",
              static_cast<unsigned long long>(frontend.features()),
              FeatureNames(frontend.features()).c_str());
  if (frontend.has_feature(vu::kVhostUserFProtocolFeatures)) {
    std::printf("offered protocol features:    0x%llx %s\n",
                static_cast<unsigned long long>(frontend.offered_protocol_features()),
                ProtocolFeatureNames(frontend.offered_protocol_features()).c_str());
    std::printf("negotiated protocol features: 0x%llx %s\n",
                static_cast<unsigned long long>(frontend.protocol_features()),
                ProtocolFeatureNames(frontend.protocol_features()).c_str());
  }
  std::printf("rings: %u entries each; %u-byte receive buffers\n", options.queue_size,
              options.rx_buffer_size);
  std::fflush(stdout);
  if (to_send == 0 && to_receive == 0) return 0;

  // One frame template per batch slot; the sequence number changes per frame.
  std::vector<std::vector<uint8_t>> frames(batch, std::vector<uint8_t>(frame_size, 0));
  std::vector<absl::Span<const uint8_t>> spans(batch);
  for (uint32_t i = 0; i < batch; ++i) {
    std::vector<uint8_t>& f = frames[i];
    std::memset(f.data(), 0xff, 6);  // Broadcast.
    const uint8_t src[6] = {0x52, 0x54, 0x00, 0x00, 0x00, 0x01};
    std::memcpy(f.data() + 6, src, 6);
    f[12] = 0x88;
    f[13] = 0xb5;
    for (size_t k = 14; k < f.size(); ++k) f[k] = static_cast<uint8_t>(k);
    spans[i] = f;
  }

  uint64_t sent = 0;
  uint64_t received = 0;
  uint64_t received_bytes = 0;
  const auto on_frame = [&](const ReceivedFrame& frame) {
    ++received;
    received_bytes += frame.data.size();
  };
  const absl::Time start = absl::Now();
  absl::Time last_progress = start;
  absl::Time send_done = start;
  int status = 0;
  while (sent < to_send) {
    const uint64_t n = std::min<uint64_t>(batch, to_send - sent);
    for (uint64_t i = 0; i < n && frames[i].size() >= 22; ++i) {
      const uint64_t seq = sent + i;
      std::memcpy(frames[i].data() + 14, &seq, sizeof(seq));
    }
    absl::StatusOr<size_t> done = frontend.SendFrames(absl::MakeConstSpan(spans).first(n));
    if (!done.ok()) {
      std::fprintf(stderr, "vu_frontend: send: %s\n", done.status().ToString().c_str());
      return 1;
    }
    sent += *done;
    if (to_receive > 0) {
      absl::StatusOr<size_t> got =
          frontend.ReceiveFrames(to_receive - received, absl::ZeroDuration(), on_frame);
      if (!got.ok()) {
        std::fprintf(stderr, "vu_frontend: receive: %s\n", got.status().ToString().c_str());
        return 1;
      }
      if (*got > 0) last_progress = absl::Now();
    }
    if (*done > 0) {
      last_progress = absl::Now();
      continue;
    }
    // The ring is full: wait for the backend to hand buffers back.
    absl::StatusOr<size_t> reclaimed =
        frontend.WaitTx(to_receive > 0 ? absl::Milliseconds(1) : timeout);
    if (!reclaimed.ok()) {
      std::fprintf(stderr, "vu_frontend: %s\n", reclaimed.status().ToString().c_str());
      return 1;
    }
    if (*reclaimed > 0) last_progress = absl::Now();
    if (absl::Now() - last_progress > timeout) {
      std::fprintf(stderr, "vu_frontend: no transmit progress for %s; the backend stopped?\n",
                   absl::FormatDuration(timeout).c_str());
      status = 1;
      break;
    }
  }
  // Wait for the backend to finish what is in flight (so the send rate
  // covers it) and for the frames still to come, receiving meanwhile: an
  // echoing backend holds transmitted frames until it has receive buffers.
  last_progress = absl::Now();
  bool send_reported = false;
  while (status == 0) {
    if (to_send > 0 && !send_reported && frontend.tx_in_flight() == 0) {
      send_done = absl::Now();
      send_reported = true;
    }
    const bool receiving = received < to_receive;
    if (frontend.tx_in_flight() == 0 && !receiving) break;
    absl::StatusOr<size_t> progress;
    if (receiving) {
      progress = frontend.ReceiveFrames(
          to_receive - received,
          frontend.tx_in_flight() > 0 ? absl::Milliseconds(1) : absl::Milliseconds(100), on_frame);
      absl::StatusOr<size_t> reclaimed = frontend.ReclaimTx();
      if (progress.ok() && reclaimed.ok()) *progress += *reclaimed;
      if (!reclaimed.ok()) progress = reclaimed.status();
    } else {
      progress = frontend.WaitTx(absl::Milliseconds(100));
    }
    if (!progress.ok()) {
      std::fprintf(stderr, "vu_frontend: %s\n", progress.status().ToString().c_str());
      return 1;
    }
    if (*progress > 0) {
      last_progress = absl::Now();
    } else if (absl::Now() - last_progress > timeout) {
      std::fprintf(
          stderr, "vu_frontend: no progress for %s (%u frames in flight, %llu of %llu received)\n",
          absl::FormatDuration(timeout).c_str(), frontend.tx_in_flight(),
          static_cast<unsigned long long>(received), static_cast<unsigned long long>(to_receive));
      status = 1;
    }
  }
  if (to_send > 0) {
    if (!send_reported) send_done = absl::Now();
    PrintRate("sent", sent, frontend.stats().tx_bytes, send_done - start);
    std::printf("transmit kicks: %llu; still in flight: %u\n",
                static_cast<unsigned long long>(frontend.stats().tx_kicks),
                frontend.tx_in_flight());
  }
  if (to_receive > 0) {
    PrintRate("received", received, received_bytes, absl::Now() - start);
    const FrontendStats& stats = frontend.stats();
    std::printf("receive buffers used: %llu; dropped: %llu; wake-ups: %llu; kicks: %llu\n",
                static_cast<unsigned long long>(stats.rx_buffers),
                static_cast<unsigned long long>(stats.rx_dropped),
                static_cast<unsigned long long>(stats.rx_calls),
                static_cast<unsigned long long>(stats.rx_kicks));
  }
  return status;
}

}  // namespace
}  // namespace vunet::vu_frontend

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  vunet::vu_frontend::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  return vunet::vu_frontend::Run();
}
