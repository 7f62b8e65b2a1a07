// Puts a Linux network stack behind a vhost-user backend: a tap device whose
// frames are carried over a vu_frontend::Frontend, so that the kernel of the
// namespace the tap lives in plays the guest. Frames the kernel sends on the
// tap are read straight into the transmit queue's buffers in guest memory
// (Frontend::SendFramesFrom, in batches); frames the backend puts in the
// receive queue are written to the tap.
//
//   TapOptions tap_options{.name = "vunet0", .mtu = 65520};
//   absl::StatusOr<Tap> tap = OpenTap(tap_options);
//   ... frontend->Connect(socket), frontend->Negotiate() ...
//   absl::StatusOr<std::unique_ptr<TapBridge>> bridge =
//       TapBridge::Create(frontend.get(), std::move(tap->fd));
//   absl::Status s = (*bridge)->Run(stop_fd);  // Until stop_fd is readable.
//
// The tap's virtio-net header has the negotiated size (10 or 12 bytes), so
// a read lands header and frame in a transmit buffer as the backend expects
// them. The tap's offloads (TUNSETOFFLOAD) are exactly those the negotiated
// features allow for what the kernel sends us, which goes to the backend's
// transmit queue (TunOffloadFlags in net_header.h): with VIRTIO_NET_F_CSUM
// checksum offload (TUN_F_CSUM: the kernel leaves TCP/UDP checksums partial
// and says so in the header, NEEDS_CSUM, as a guest's driver would), with
// HOST_TSO4/6, HOST_ECN and HOST_USO segmentation offload (TUN_F_TSO4/6,
// TSO_ECN, USO4|USO6: the kernel hands us TCP and UDP segments of up to
// 64 KiB with gso_type and gso_size set, at any MTU). Without them the
// kernel computes every checksum and segments to the MTU itself.
// The other way, the backend's header goes to the tap as it is: with
// VIRTIO_NET_F_GUEST_CSUM a frame marked NEEDS_CSUM is finished by the
// kernel; with GUEST_TSO4/6, GUEST_ECN and GUEST_USO4/6 a segmentation-
// offloaded frame reaches the namespace's stack as one (a tap takes those
// whatever its own offload flags); one marked DATA_VALID (checksum field
// left as is), which a tap would not honour, goes as a partial checksum
// that the receiving stack trusts as a guest's driver would (see
// WriteToTap). Headers are checked both ways against the negotiated
// features (CheckHeader); a frame whose header is wrong for them is
// dropped and counted, never handed on.
//
// Loss injection (FrontendOptions::loss_to_backend and loss_to_guest)
// happens in the frontend: frames read from the tap are dropped or held in
// their transmit slots, frames from the backend before they reach the tap.
//
// The data path allocates nothing. Single-threaded: Run drives the
// frontend, which must not be used elsewhere meanwhile.

#ifndef VUNET_TOOLS_VU_FRONTEND_TAP_BRIDGE_H_
#define VUNET_TOOLS_VU_FRONTEND_TAP_BRIDGE_H_

#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "tools/vu_frontend/frontend.h"
#include "tools/vu_frontend/net_header.h"

namespace vunet::vu_frontend {

struct TapOptions {
  // The interface's name; the kernel picks one (tapN) if empty.
  std::string name = "vunet0";
  // Set on the interface; 68 to 65535.
  uint32_t mtu = 65520;
  // The interface's MAC address; the kernel's random one if unset.
  std::optional<std::array<uint8_t, 6>> mac;
  // Bring the link up.
  bool up = true;
};

struct Tap {
  // Non-blocking, 12-byte virtio-net headers, no offloads (TapBridge::Create
  // sets what the frontend negotiated).
  UniqueFd fd;
  std::string name;  // As the kernel named it.
};

// Creates the tap device in the calling thread's network namespace
// (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, offloads off) and configures it. The
// device lives as long as the fd. Needs CAP_NET_ADMIN.
absl::StatusOr<Tap> OpenTap(const TapOptions& options);

// Parses "52:54:00:12:34:56".
std::optional<std::array<uint8_t, 6>> ParseMac(absl::string_view text);

// Where a frame's TCP or UDP checksum field is: `start`, the transport
// header's offset in the frame, and `offset`, the field's in that header
// (virtio-net's csum_start and csum_offset). IPv4 without fragments and IPv6
// without extension headers; nullopt for anything else or a frame too short
// to hold the transport header.
struct ChecksumField {
  uint16_t start = 0;
  uint16_t offset = 0;
};
std::optional<ChecksumField> FindChecksumField(absl::Span<const uint8_t> frame);

struct TapBridgeStats {
  uint64_t to_backend_frames = 0;  // Read from the tap and queued on the transmit ring.
  uint64_t to_backend_bytes = 0;
  uint64_t to_backend_partial = 0;  // Of which with a partial checksum (NEEDS_CSUM).
  uint64_t to_tap_frames = 0;       // Received from the backend and written to the tap.
  uint64_t to_tap_bytes = 0;
  uint64_t to_backend_gso = 0;    // Of which segmentation-offloaded.
  uint64_t to_tap_gso = 0;        // Frames to the tap that were segmentation-offloaded.
  uint64_t tap_write_errors = 0;  // Frames the tap refused (counted, dropped).
  // Frames from the tap we could not send (too big, or a header the
  // negotiated features do not allow).
  uint64_t tap_read_dropped = 0;
  // Frames from the backend whose header the negotiated features do not
  // allow (CheckHeader): dropped.
  uint64_t backend_bad_headers = 0;
  uint64_t tx_batches = 0;        // SendFramesFrom calls that queued frames.
  uint64_t tx_ring_full = 0;      // Times the transmit ring was full and we waited.
  uint64_t tx_wait_timeouts = 0;  // Waits for ring space that ended without a notification.
  uint64_t data_valid_marked_partial = 0;  // DATA_VALID frames passed on as NEEDS_CSUM.
  uint64_t polls = 0;                      // Loop iterations.
};

class TapBridge {
 public:
  // Frames read from the tap per SendFramesFrom call (one publish, at most
  // one kick), at most.
  static constexpr size_t kBatch = 64;

  // `frontend` has negotiated and both rings run; it must outlive the
  // bridge. `tap` comes from OpenTap (non-blocking, IFF_VNET_HDR); Create
  // sets its header size and offloads to match the frontend's features (a
  // kernel older than 6.2, which lacks TUN_F_USO4/6, runs without them and
  // a warning). kInvalidArgument if the rings are not running.
  static absl::StatusOr<std::unique_ptr<TapBridge>> Create(Frontend* frontend, UniqueFd tap);

  TapBridge(const TapBridge&) = delete;
  TapBridge& operator=(const TapBridge&) = delete;

  // Shuttles frames until `stop_fd` (an eventfd or signalfd; -1 for none)
  // becomes readable: OkStatus. kUnavailable when the backend closes the
  // connection; another error if the frontend reports one (a backend
  // breaking the ring protocol) or a syscall fails.
  absl::Status Run(int stop_fd);

  const TapBridgeStats& stats() const { return stats_; }
  int tap_fd() const { return tap_.get(); }
  // Whether the tap leaves checksums partial (VIRTIO_NET_F_CSUM negotiated).
  bool checksum_offload() const { return (tun_offloads_ & kTunFCsum) != 0; }
  // The TUNSETOFFLOAD flags the tap runs with.
  unsigned tun_offloads() const { return tun_offloads_; }

 private:
  TapBridge(Frontend* frontend, UniqueFd tap, unsigned tun_offloads);

  // Reads the tap into the transmit ring until the tap is empty or a few
  // batches went out (false), or the ring is full (true: wait for the
  // backend to return buffers).
  absl::StatusOr<bool> PumpTap();
  // SendFramesFrom's fill: reads one frame from the tap into `buffer`,
  // dropping any we cannot send; 0 and *drained when the tap is empty.
  absl::StatusOr<size_t> ReadFromTap(const TxBuffer& buffer, bool* drained);
  // Writes everything the backend has put in the receive ring to the tap.
  absl::Status PumpRx();
  void WriteToTap(const ReceivedFrame& frame);

  Frontend* const frontend_;
  const UniqueFd tap_;
  const size_t header_size_;  // The virtio-net header on the rings and the tap.
  const uint64_t features_;   // Negotiated.
  const unsigned tun_offloads_;
  TapBridgeStats stats_;
};

}  // namespace vunet::vu_frontend

#endif  // VUNET_TOOLS_VU_FRONTEND_TAP_BRIDGE_H_
