// A vhost-user frontend: the driver side of a virtio-net device, for
// integration tests and benchmarks of a backend over its real UNIX socket.
//
// The frontend owns memfd guest memory (virtio::testing::DriverMemory), lays
// out the two split rings of one queue pair in it (queue 0 receive, host to
// guest; queue 1 transmit, guest to host) with virtio::testing::DriverQueue,
// negotiates with the backend, posts receive buffers, injects Ethernet frames
// and reads frames back. Every buffer comes from fixed pools laid out at
// Create(); sending and receiving allocate nothing on the heap.
//
// Example:
//   auto frontend = Frontend::Create({.queue_size = 256}).value();
//   if (absl::Status s = frontend->Connect("/tmp/vunet.sock"); !s.ok()) ...
//   if (absl::Status s = frontend->Negotiate(); !s.ok()) ...
//   const uint8_t frame[60] = {...};
//   const absl::Span<const uint8_t> frames[] = {frame};
//   absl::StatusOr<size_t> sent = frontend->SendFrames(frames);
//   absl::StatusOr<size_t> received = frontend->ReceiveFrames(
//       16, absl::Seconds(1), [](const ReceivedFrame& f) { Use(f.data); });
//
// Negotiation follows QEMU's order: GET_FEATURES; GET_PROTOCOL_FEATURES and
// SET_PROTOCOL_FEATURES if the backend offers VHOST_USER_F_PROTOCOL_FEATURES
// and the caller wants it; SET_OWNER; SET_FEATURES (offered & wanted, less
// what a driver may not take: see Negotiate);
// SET_MEM_TABLE; then for each ring SET_VRING_NUM, SET_VRING_ADDR,
// SET_VRING_BASE, SET_VRING_CALL, SET_VRING_KICK and, with protocol features,
// SET_VRING_ENABLE 1. Receive buffers are posted before the rings start, as a
// guest driver fills its receive ring before it sets DRIVER_OK. With
// REPLY_ACK negotiated every request without a reply of its own asks for one,
// and a non-zero answer fails the call.
//
// The individual steps are public too, and so are raw messages, for tests
// that play a misbehaving frontend.
//
// Offloads: a frontend that asks for kOffloadFeatures negotiates whichever
// of them the backend offers. Frames go out with the virtio-net header the
// caller writes (SendFramesWithHeaders, SendFramesFrom: partial checksums,
// segmentation) and come back with the header the backend wrote
// (ReceivedFrame::header, from the first buffer of a merged frame); nothing
// is checked on the way, so tests can send what a hostile guest would, and
// check what a backend writes with CheckHeader (net_header.h).
//
// Loss: FrontendOptions::loss_to_backend and loss_to_guest (loss.h) drop or
// hold back frames of either direction, as a lossy link would: transmitted
// frames are dropped before they reach the ring (their slot is reused) or
// held in their slot and published later; received frames are dropped
// before the callback (their buffers go back) or copied aside and delivered
// later.
//
// Thread-compatible: one thread drives a Frontend. Not hardened against a
// hostile backend beyond bounds checks on what it writes into the used rings.

#ifndef VUNET_TOOLS_VU_FRONTEND_FRONTEND_H_
#define VUNET_TOOLS_VU_FRONTEND_FRONTEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "tools/vu_frontend/loss.h"
#include "tools/vu_frontend/net_header.h"
#include "virtio/testing/driver.h"
#include "virtio/virtio_net.h"
#include "virtio/virtqueue.h"
#include "vu/message.h"

namespace vunet::vu_frontend {

// virtio-net feature bits (virtio/virtio_net.h; the offload ones and Bit()
// come with net_header.h) and those of virtio/virtqueue.h and vu/message.h.
using virtio::kVirtioNetFMac;
using virtio::kVirtioNetFMq;
using virtio::kVirtioNetFMrgRxbuf;
using virtio::kVirtioNetFMtu;
using virtio::kVirtioNetFStatus;

inline constexpr uint32_t kRxQueue = 0;
inline constexpr uint32_t kTxQueue = 1;
inline constexpr uint32_t kNumQueues = 2;

// What a frontend asks for unless told otherwise.
inline constexpr uint64_t kDefaultFeatures =
    Bit(virtio::kVirtioFVersion1) | Bit(kVirtioNetFMrgRxbuf) | Bit(virtio::kVirtioRingFEventIdx) |
    Bit(virtio::kVirtioRingFIndirectDesc) | Bit(vu::kVhostUserFProtocolFeatures);
inline constexpr uint64_t kDefaultProtocolFeatures = Bit(vu::kProtocolFReplyAck);
// Checksum and segmentation offloads, both ways: CSUM, GUEST_CSUM,
// HOST_TSO4/6, HOST_ECN, HOST_USO, GUEST_TSO4/6, GUEST_ECN, GUEST_USO4/6.
inline constexpr uint64_t kOffloadFeatures =
    Bit(kVirtioNetFCsum) | Bit(kVirtioNetFGuestCsum) | kGsoFeatures;
// Without MRG_RXBUF, the receive buffer size (virtio-net header included) a
// driver needs before it takes segmentation offloads to the guest (virtio
// 1.x, 5.1.6.3.1).
inline constexpr uint32_t kBigPacketBufferSize = 65562;

// "VERSION_1|MRG_RXBUF|..." for the bits set, "0x..." for unnamed ones.
std::string FeatureNames(uint64_t features);
std::string ProtocolFeatureNames(uint64_t protocol_features);

struct FrontendOptions {
  // Guest memory; 0 sizes it from the pools and rings below. Split into
  // `memory_regions` regions (at most vu::kMaxMemTableRegions) that are
  // contiguous in guest-physical space, so buffers may cross a boundary.
  uint64_t memory_size = 0;
  int memory_regions = 1;

  // Entries in each ring (power of two, at most 32768).
  uint32_t queue_size = 256;

  // Virtio features wanted; the negotiated set is what the backend offers
  // and this asks for. Likewise the protocol features.
  uint64_t features = kDefaultFeatures;
  uint64_t protocol_features = kDefaultProtocolFeatures;

  // Receive buffers: each `rx_buffer_size` bytes (virtio-net header
  // included), posted as one chain of `rx_descriptors` device-writable
  // descriptors (or one indirect descriptor pointing at a table of them).
  // `rx_buffers` 0 posts as many as the ring holds.
  uint32_t rx_buffer_size = 1526;
  uint32_t rx_descriptors = 1;
  bool rx_indirect = false;
  uint32_t rx_buffers = 0;

  // Transmit: the largest frame SendFrames accepts (virtio-net header not
  // included). Each frame goes out as one chain: the header and frame in one
  // descriptor, or the header in its own descriptor; optionally through an
  // indirect table.
  uint32_t max_frame_size = 65550;
  bool tx_header_separate = false;
  bool tx_indirect = false;
  // 0: SendFrames and SendFramesFrom publish what they queued once, at the
  // end. Otherwise they also publish (kicking if the backend asks to be
  // kicked) as soon as this many frame bytes were queued since the last
  // publish, so that with large frames the backend starts on the first ones
  // while later ones are still being filled in.
  uint32_t tx_publish_bytes = 0;

  // How long to wait for a reply or ack before failing (SO_RCVTIMEO).
  absl::Duration reply_timeout = absl::Seconds(10);

  // Loss injected into each direction (loss.h; no rules: none). A frame
  // held back by a reorder rule goes once its frames went after it, or
  // `reorder_timeout` after it was held (by the next SendFramesFrom or
  // ReceiveFrames call from then on: see next_release()); at most
  // kMaxHeldFrames per direction are held, more go at once.
  LossSpec loss_to_backend = {};
  LossSpec loss_to_guest = {};
  absl::Duration reorder_timeout = absl::Milliseconds(20);
};

inline constexpr size_t kMaxHeldFrames = 16;

// A frame read from the receive queue.
struct ReceivedFrame {
  // The Ethernet frame, virtio-net header excluded. Points into guest memory
  // or into the frontend's reassembly buffer: valid only during the callback.
  absl::Span<const uint8_t> data;
  VirtioNetHdr header;   // num_buffers is 0 for a legacy 10-byte header.
  uint16_t buffers = 0;  // Receive buffers (used entries) the frame took.
};

// A received frame copied out (Frontend::ReceiveFrameWithHeader).
struct OwnedFrame {
  VirtioNetHdr header;
  std::vector<uint8_t> data;
  uint16_t buffers = 0;
};

// A frame to send with the virtio-net header the backend is to see (its
// first net_header_size() bytes; a driver leaves num_buffers 0).
struct TxFrame {
  VirtioNetHdr header = {};
  absl::Span<const uint8_t> data = {};
};

// A transmit slot in guest memory, handed to a SendFramesFrom callback to
// fill in place: the virtio-net header (net_header_size() bytes, zeroed)
// directly followed by room for one frame of up to max_frame_size bytes.
struct TxBuffer {
  absl::Span<uint8_t> header;
  absl::Span<uint8_t> frame;
  // Header and frame as one span, for a single read() of a tap with
  // IFF_VNET_HDR and the same header size.
  absl::Span<uint8_t> whole() const {
    return absl::MakeSpan(header.data(), header.size() + frame.size());
  }
};

struct FrontendStats {
  uint64_t tx_frames = 0;
  uint64_t tx_bytes = 0;  // Frame bytes, headers excluded.
  uint64_t tx_kicks = 0;  // Kicks of the transmit queue.
  uint64_t tx_reclaimed = 0;
  uint64_t rx_frames = 0;
  uint64_t rx_bytes = 0;
  uint64_t rx_buffers = 0;  // Used receive entries consumed.
  uint64_t rx_kicks = 0;    // Kicks of the receive queue after reposting.
  uint64_t rx_calls = 0;    // Wake-ups by the receive call eventfd.
  uint64_t rx_dropped = 0;  // Frames too large for max_frame_size or malformed.
};
// Frames dropped or held back by loss injection are not in these: see
// Frontend::loss_counters().

class Frontend {
 public:
  // Allocates guest memory, the rings' space and the buffer pools, and the
  // kick and call eventfds. kInvalidArgument for impossible options.
  static absl::StatusOr<std::unique_ptr<Frontend>> Create(const FrontendOptions& options = {});

  ~Frontend();
  Frontend(const Frontend&) = delete;
  Frontend& operator=(const Frontend&) = delete;

  // Connects to the backend listening at `socket_path`, retrying for up to
  // `retry_for` while the socket is missing or refuses (a backend starting).
  absl::Status Connect(const std::string& socket_path,
                       absl::Duration retry_for = absl::ZeroDuration());
  // Uses an already connected SOCK_STREAM UNIX socket (e.g. a socketpair).
  void Attach(UniqueFd socket);
  // Closes the connection. The backend sees a disconnect; the rings' state is
  // forgotten, and Negotiate() after a new Connect() starts afresh.
  void Disconnect();
  bool connected() const { return socket_.valid(); }
  int socket_fd() const { return socket_.get(); }

  // The whole handshake described above; afterwards both rings run. The
  // features set are what the backend offers and options.features asks for,
  // less those whose prerequisites are not in that set (WithPrerequisites)
  // and, without MRG_RXBUF and receive buffers of kBigPacketBufferSize, the
  // segmentation offloads to the guest.
  absl::Status Negotiate();

  // The handshake's steps, for tests that take them one by one or leave
  // some out. SetUpRing lays out ring `index` afresh (receive buffers posted
  // for queue 0) and sends NUM, ADDR, BASE, CALL and KICK; EnableRing sends
  // SET_VRING_ENABLE.
  absl::StatusOr<uint64_t> GetFeatures();
  absl::Status SetFeatures(uint64_t features);
  absl::StatusOr<uint64_t> GetProtocolFeatures();
  absl::Status SetProtocolFeatures(uint64_t protocol_features);
  absl::Status SetOwner();
  absl::Status SetMemTable();
  absl::Status SetUpRing(uint32_t index);
  absl::Status EnableRing(uint32_t index, bool enable);
  // Stops ring `index` (GET_VRING_BASE) and returns the backend's next avail
  // index. The ring is not used again until SetUpRing().
  absl::StatusOr<uint32_t> GetVringBase(uint32_t index);

  // Live migration's back-end state (VHOST_USER_PROTOCOL_F_DEVICE_STATE
  // negotiated, every ring stopped), as QEMU moves it: SaveDeviceState
  // hands the backend a pipe to write its state into, reads it to the end
  // and asks CHECK_DEVICE_STATE; LoadDeviceState hands it the read end,
  // writes `state` and closes, then asks. kDataLoss when the check fails,
  // kFailedPrecondition when SET_DEVICE_STATE_FD is refused.
  absl::StatusOr<std::string> SaveDeviceState();
  absl::Status LoadDeviceState(absl::string_view state);

  // Raw messages. SendRequest writes a request with `payload`, asking for a
  // reply when `need_reply`; ReadReply reads one message (a reply or ack).
  absl::Status SendMessage(const vu::Header& header, absl::Span<const uint8_t> payload,
                           absl::Span<const int> fds = {});
  absl::Status SendRequest(vu::Request request, absl::Span<const uint8_t> payload,
                           absl::Span<const int> fds = {}, bool need_reply = false);
  absl::StatusOr<vu::Message> ReadReply();

  // Queues each frame on the transmit ring (virtio-net header zeroed, with
  // num_buffers 0), publishes them at once and kicks once if the backend
  // wants a kick. Reclaims used transmit buffers when the pool runs dry.
  // Returns how many frames (a prefix of `frames`) went out: fewer than
  // given when the ring is full. kInvalidArgument if a frame exceeds
  // max_frame_size (nothing is sent), kFailedPrecondition if the transmit
  // ring is not running.
  absl::StatusOr<size_t> SendFrames(absl::Span<const absl::Span<const uint8_t>> frames);
  // The same with a virtio-net header for each frame, written as given.
  absl::StatusOr<size_t> SendFramesWithHeaders(absl::Span<const TxFrame> frames);

  // Zero-copy transmit: for up to `max` free transmit slots in turn, calls
  // `fill` with the slot's buffer in guest memory; `fill` writes a frame
  // (and, if it wants, the virtio-net header: offload flags go to the
  // backend as written) and returns the frame's length, header excluded, or
  // 0 to stop (that slot stays free). The frames filled are published at
  // the end (with tx_publish_bytes also on the way), kicking the backend if
  // it asks to be kicked. Reclaims used slots first, so recently used
  // (cache-warm) ones are filled again. Returns how many frames `fill` gave
  // (including those loss injection dropped or held back): fewer than
  // `max` when `fill` stopped or the ring is full; `fill` is not called
  // without a slot to fill. Held frames that are due go out first. If `fill` fails, or
  // returns more than frame.size() (kInvalidArgument), the frames filled
  // before are still published and that error is returned.
  // kFailedPrecondition if the transmit ring is not running.
  using TxFill = absl::FunctionRef<absl::StatusOr<size_t>(const TxBuffer& buffer)>;
  absl::StatusOr<size_t> SendFramesFrom(size_t max, TxFill fill);

  // Takes back transmit buffers the backend has used; returns how many.
  // kDataLoss if the backend returned a chain that was not outstanding.
  absl::StatusOr<size_t> ReclaimTx();
  // Transmit chains the backend has not returned yet.
  uint32_t tx_in_flight() const { return tx_in_flight_; }
  // Waits until a transmit chain comes back (via the transmit call eventfd)
  // or `timeout` passes; returns how many were reclaimed (0 on timeout).
  absl::StatusOr<size_t> WaitTx(absl::Duration timeout);

  // Delivers up to `max` received frames to `callback`, waiting up to
  // `timeout` on the receive call eventfd for the first one; returns how many
  // were delivered (0 when the timeout passed first). With MRG_RXBUF a frame
  // spanning several buffers is reassembled (num_buffers in the first
  // buffer's header says how many). Buffers go back to the ring after the
  // callback, published once per call. kDataLoss if the backend returned a
  // descriptor that was not outstanding or lengths beyond the buffers.
  absl::StatusOr<size_t> ReceiveFrames(size_t max, absl::Duration timeout,
                                       absl::FunctionRef<void(const ReceivedFrame&)> callback);
  // Frames held back (loss injection) are delivered once due, first.
  // One frame, copied out (for tests; allocates). kDeadlineExceeded if none
  // arrived within `timeout`.
  absl::StatusOr<std::vector<uint8_t>> ReceiveFrame(absl::Duration timeout);
  // The same with its virtio-net header.
  absl::StatusOr<OwnedFrame> ReceiveFrameWithHeader(absl::Duration timeout);

  // Loss injected so far into frames to the backend (kToBackend) or from it.
  const LossCounters& loss_counters(Direction direction) const {
    return direction == Direction::kToBackend ? loss_tx_.counters() : loss_rx_.counters();
  }
  // When the next frame held back by loss injection is due by its timeout
  // (InfiniteFuture if none): a caller that waits should wake up then and
  // send (SendFramesFrom) or receive (ReceiveFrames) to let it go.
  absl::Time next_release() const;

  uint64_t offered_features() const { return offered_features_; }
  uint64_t features() const { return features_; }
  uint64_t offered_protocol_features() const { return offered_protocol_features_; }
  uint64_t protocol_features() const { return protocol_features_; }
  bool has_feature(unsigned bit) const { return (features_ & Bit(bit)) != 0; }
  // The virtio-net header length on the rings: 12, or 10 for legacy.
  size_t net_header_size() const { return net_header_size_; }
  const FrontendStats& stats() const { return stats_; }
  const FrontendOptions& options() const { return options_; }

  // The driver-side objects, for tests that inspect or corrupt the rings.
  virtio::testing::DriverMemory* memory() const { return memory_.get(); }
  // Laid out by Create() and afresh by each SetUpRing(index); nullptr for
  // an index other than 0 and 1.
  virtio::testing::DriverQueue* queue(uint32_t index) const;
  int kick_fd(uint32_t index) const { return kick_[index].get(); }
  int call_fd(uint32_t index) const { return call_[index].get(); }

 private:
  explicit Frontend(const FrontendOptions& options) : options_(options) {}

  // Writes a request carrying `value` and waits for the ack if REPLY_ACK was
  // negotiated.
  template <typename T>
  absl::Status Send(vu::Request request, const T& value, absl::Span<const int> fds = {});
  // Reads the reply to `request`, a u64 or other payload of sizeof(T).
  template <typename T>
  absl::StatusOr<T> Reply(vu::Request request);
  absl::Status ReadAck(vu::Request request);
  bool reply_ack() const { return (protocol_features_ & Bit(vu::kProtocolFReplyAck)) != 0; }

  // Posts every free receive buffer; publishes and kicks if asked.
  void PostRxBuffers();
  // Adds a chain of `buffers` to queue `index`, through the indirect table
  // at `table_gpa` if that is not 0. Returns the head.
  std::optional<uint16_t> AddChain(uint32_t index,
                                   absl::Span<const virtio::testing::DriverQueue::Buffer> buffers,
                                   uint64_t table_gpa);
  // Publishes what was added to queue `index` since the last publish,
  // kicking unless the backend suppresses it.
  void PublishAndKick(uint32_t index);
  // Entries the backend has returned on queue `index` and we not consumed.
  absl::StatusOr<uint16_t> UsedPending(uint32_t index) const;
  // Waits for `fd` to become readable until `deadline`; true if it did.
  static absl::StatusOr<bool> WaitReadable(int fd, absl::Time deadline);
  absl::StatusOr<bool> DeliverOne(absl::FunctionRef<void(const ReceivedFrame&)> callback,
                                  absl::Time deadline);
  // Pops the next used entry of queue `index`, checking that its head is
  // outstanding (owner[head] >= 0) and hands back the owner (buffer or
  // slot, marked not outstanding) and the length the backend wrote.
  struct Used {
    uint32_t owner = 0;
    uint32_t len = 0;
  };
  absl::StatusOr<Used> PopUsed(uint32_t index, std::vector<int32_t>& owner);
  // Puts transmit slot `slot` holding a frame of `len` bytes on the ring
  // (the caller checked for descriptors).
  absl::Status QueueTxSlot(uint32_t slot, uint32_t len);
  // Puts held transmit frames that are due on the ring, while it has room.
  absl::Status ReleaseDueTx(absl::Time now);
  // Hands `frame` to `callback` unless loss injection drops or holds it;
  // true if it was delivered.
  bool Deliver(const ReceivedFrame& frame, absl::FunctionRef<void(const ReceivedFrame&)> callback);
  // Delivers a held receive frame that is due, if any; true if one was.
  bool DeliverDueHeld(absl::FunctionRef<void(const ReceivedFrame&)> callback);

  const FrontendOptions options_;
  std::unique_ptr<virtio::testing::DriverMemory> memory_;
  std::unique_ptr<virtio::testing::DriverQueue> queues_[kNumQueues];
  bool ring_running_[kNumQueues] = {false, false};
  uint16_t published_avail_[kNumQueues] = {0, 0};
  uint16_t used_seen_[kNumQueues] = {0, 0};  // Used entries consumed.
  uint64_t ring_gpa_[kNumQueues] = {0, 0};   // Where each ring's layout starts.
  UniqueFd socket_;
  UniqueFd kick_[kNumQueues];
  UniqueFd call_[kNumQueues];

  uint64_t offered_features_ = 0;
  uint64_t features_ = 0;
  uint64_t offered_protocol_features_ = 0;
  uint64_t protocol_features_ = 0;
  size_t net_header_size_ = sizeof(VirtioNetHdr);

  // Receive pool: rx_count_ buffers of options_.rx_buffer_size bytes.
  uint64_t rx_pool_gpa_ = 0;
  uint64_t rx_tables_gpa_ = 0;  // Per buffer, an indirect table of rx_descriptors.
  uint32_t rx_count_ = 0;
  std::vector<uint32_t> rx_free_;                            // Buffers not on the ring (a stack).
  std::vector<int32_t> rx_buffer_of_head_;                   // Per head: its buffer, or -1.
  std::vector<virtio::testing::DriverQueue::Buffer> chain_;  // Scratch for AddChain.
  std::vector<uint8_t> reassembly_;                          // max_frame_size bytes.

  // Transmit pool: tx_count_ slots of tx_slot_size_ bytes.
  uint64_t tx_pool_gpa_ = 0;
  uint64_t tx_tables_gpa_ = 0;  // Per slot, an indirect table of two.
  uint32_t tx_count_ = 0;
  uint32_t tx_slot_size_ = 0;
  std::vector<uint32_t> tx_free_;
  std::vector<int32_t> tx_slot_of_head_;
  uint32_t tx_in_flight_ = 0;

  FrontendStats stats_;

  // Loss injection. Held transmit frames stay in their slots; held receive
  // frames are copied to rx_held_pool_ (kMaxHeldFrames slots of
  // rx_held_slot_size_ bytes, allocated only for a spec that reorders).
  LossInjector loss_tx_;
  LossInjector loss_rx_;
  HeldFrames tx_held_;
  HeldFrames rx_held_;
  std::vector<uint8_t> rx_held_pool_;
  size_t rx_held_slot_size_ = 0;
  std::vector<uint32_t> rx_held_free_;
  struct HeldMeta {
    VirtioNetHdr header;
    uint16_t buffers = 0;
  };
  std::vector<HeldMeta> rx_held_meta_;
};

}  // namespace vunet::vu_frontend

#endif  // VUNET_TOOLS_VU_FRONTEND_FRONTEND_H_
