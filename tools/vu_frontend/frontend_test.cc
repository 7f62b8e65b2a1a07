#include "tools/vu_frontend/frontend.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "tools/vu_frontend/echo_data_plane.h"
#include "virtio/guest_memory.h"
#include "virtio/virtqueue.h"
#include "vu/message.h"
#include "vu/server.h"

namespace vunet::vu_frontend {
namespace {

using virtio::GuestMemory;
using virtio::VirtqElement;
using virtio::Virtqueue;

// A scripted backend on the other end of a socketpair: answers what the
// frontend asks, records every request, and maps the memory and rings so the
// test can play the device with the real Virtqueue.
class FakeBackend {
 public:
  struct Script {
    uint64_t features = kDefaultFeatures;
    uint64_t protocol_features = Bit(vu::kProtocolFReplyAck);
    // A request whose ack carries this non-zero value.
    vu::Request nack = vu::Request::kNone;
    uint32_t vring_base = 0;
  };

  explicit FakeBackend(UniqueFd socket, Script script)
      : socket_(std::move(socket)), script_(script) {
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeBackend() { Join(); }

  // Waits for the frontend to disconnect.
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  std::vector<vu::Header> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  std::vector<vu::Request> request_types() {
    std::vector<vu::Request> out;
    for (const vu::Header& h : requests()) out.push_back(static_cast<vu::Request>(h.request));
    return out;
  }
  uint64_t acked_features() {
    std::lock_guard<std::mutex> lock(mu_);
    return acked_features_;
  }
  uint64_t acked_protocol_features() {
    std::lock_guard<std::mutex> lock(mu_);
    return acked_protocol_features_;
  }
  std::vector<virtio::GuestMemoryRegion> regions() {
    std::lock_guard<std::mutex> lock(mu_);
    return memory_.regions();
  }
  vu::VringAddr addr(uint32_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return addr_[i];
  }
  int kick_fd(uint32_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return kick_[i].get();
  }
  int call_fd(uint32_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return call_[i].get();
  }
  uint32_t enabled(uint32_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return enabled_[i];
  }

  // Starts the device side of ring `i` from what the frontend sent.
  absl::Status StartQueue(uint32_t i, Virtqueue* vq) {
    std::lock_guard<std::mutex> lock(mu_);
    Virtqueue::Config config{
        .size = num_[i],
        .event_idx = (acked_features_ & Bit(virtio::kVirtioRingFEventIdx)) != 0,
        .indirect_desc = true};
    absl::StatusOr<void*> desc =
        memory_.TranslateUva(addr_[i].desc_user_addr, virtio::VirtqDescTableBytes(num_[i]));
    absl::StatusOr<void*> avail =
        memory_.TranslateUva(addr_[i].avail_user_addr, virtio::VirtqAvailRingBytes(num_[i]));
    absl::StatusOr<void*> used =
        memory_.TranslateUva(addr_[i].used_user_addr, virtio::VirtqUsedRingBytes(num_[i]));
    if (!desc.ok()) return desc.status();
    if (!avail.ok()) return avail.status();
    if (!used.ok()) return used.status();
    config.desc = *desc;
    config.avail = *avail;
    config.used = *used;
    if (absl::Status s = vq->Start(&memory_, config); !s.ok()) return s;
    vq->set_call_fd(call_[i].get());
    return absl::OkStatus();
  }

 private:
  void Serve() {
    while (true) {
      absl::StatusOr<vu::Message> m = vu::ReadMessage(socket_.get());
      if (!m.ok()) return;
      uint64_t ack = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back(m->header);
        switch (m->request()) {
          case vu::Request::kGetFeatures:
            vu::WriteReply(socket_.get(), m->header, script_.features).IgnoreError();
            continue;
          case vu::Request::kGetProtocolFeatures:
            vu::WriteReply(socket_.get(), m->header, script_.protocol_features).IgnoreError();
            continue;
          case vu::Request::kGetVringBase:
            vu::WriteReply(
                socket_.get(), m->header,
                vu::VringState{m->PayloadAs<vu::VringState>()->index, script_.vring_base})
                .IgnoreError();
            continue;
          case vu::Request::kSetFeatures:
            acked_features_ = *m->PayloadAs<uint64_t>();
            break;
          case vu::Request::kSetProtocolFeatures:
            acked_protocol_features_ = *m->PayloadAs<uint64_t>();
            break;
          case vu::Request::kSetMemTable: {
            vu::MemoryTable table{};
            std::memcpy(&table, m->payload, std::min<size_t>(m->header.size, sizeof(table)));
            memory_.Clear();
            for (uint32_t r = 0; r < table.nregions && r < m->fds.size(); ++r) {
              if (!memory_.AddRegion(table.regions[r], m->fds[r].get()).ok()) ack = 1;
            }
            break;
          }
          case vu::Request::kSetVringNum: {
            const vu::VringState s = *m->PayloadAs<vu::VringState>();
            if (s.index < 2) num_[s.index] = s.num;
            break;
          }
          case vu::Request::kSetVringAddr: {
            const vu::VringAddr a = *m->PayloadAs<vu::VringAddr>();
            if (a.index < 2) addr_[a.index] = a;
            break;
          }
          case vu::Request::kSetVringKick:
          case vu::Request::kSetVringCall: {
            const uint64_t index = *m->PayloadAs<uint64_t>() & vu::kVringIndexMask;
            if (index < 2 && !m->fds.empty()) {
              (m->request() == vu::Request::kSetVringKick ? kick_ : call_)[index] =
                  std::move(m->fds[0]);
            }
            break;
          }
          case vu::Request::kSetVringEnable: {
            const vu::VringState s = *m->PayloadAs<vu::VringState>();
            if (s.index < 2) enabled_[s.index] = s.num;
            break;
          }
          default:
            break;
        }
        if (m->request() == script_.nack) ack = 1;
      }
      if (m->need_reply()) vu::WriteReply(socket_.get(), m->header, ack).IgnoreError();
    }
  }

  UniqueFd socket_;
  const Script script_;
  std::mutex mu_;
  std::vector<vu::Header> requests_;
  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_features_ = 0;
  GuestMemory memory_;
  uint32_t num_[2] = {0, 0};
  vu::VringAddr addr_[2];
  UniqueFd kick_[2];
  UniqueFd call_[2];
  uint32_t enabled_[2] = {0, 0};
  std::thread thread_;
};

std::vector<uint8_t> Pattern(size_t size, uint8_t seed) {
  std::vector<uint8_t> v(size);
  for (size_t i = 0; i < size; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
  return v;
}

bool Readable(int fd) {
  pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
  return poll(&p, 1, 0) == 1;
}

class FrontendTest : public ::testing::Test {
 protected:
  // Creates a frontend and a fake backend joined by a socketpair, and
  // negotiates; the device side of both rings is then started in vq_.
  void Start(const FrontendOptions& options = {}, FakeBackend::Script script = {}) {
    absl::StatusOr<std::unique_ptr<Frontend>> frontend = Frontend::Create(options);
    ASSERT_TRUE(frontend.ok()) << frontend.status();
    frontend_ = *std::move(frontend);
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    frontend_->Attach(UniqueFd(fds[0]));
    backend_ = std::make_unique<FakeBackend>(UniqueFd(fds[1]), script);
    ASSERT_TRUE(frontend_->Negotiate().ok());
    // Without REPLY_ACK the last requests may still be in flight: a round
    // trip with a reply of its own orders them.
    if (!(frontend_->protocol_features() & Bit(vu::kProtocolFReplyAck))) {
      ASSERT_TRUE(frontend_->GetFeatures().ok());
    }
    for (uint32_t i = 0; i < kNumQueues; ++i) {
      ASSERT_TRUE(backend_->StartQueue(i, &vq_[i]).ok());
    }
  }

  void TearDown() override {
    for (Virtqueue& vq : vq_) vq.Stop();
    if (frontend_) frontend_->Disconnect();
    backend_.reset();
  }

  // The device pops one chain from ring `i`, failing the test if none.
  VirtqElement Pop(uint32_t i) {
    VirtqElement elem;
    absl::StatusOr<bool> popped = vq_[i].Pop(&elem, in_, kPool, out_, kPool);
    EXPECT_TRUE(popped.ok() && *popped) << popped.status();
    return elem;
  }

  // The device writes `frame` with a virtio-net header (`header`, its
  // num_buffers set here) into as many receive buffers as it takes (one
  // unless MRG_RXBUF), flushes and notifies.
  void DeviceReceive(absl::Span<const uint8_t> frame, size_t max_buffers = 64,
                     const VirtioNetHdr& header = {}) {
    std::vector<uint8_t> bytes(sizeof(VirtioNetHdr));
    std::memcpy(bytes.data(), &header, sizeof(header));
    bytes.insert(bytes.end(), frame.begin(), frame.end());
    std::vector<VirtqElement> elems;
    std::vector<uint32_t> lens;
    size_t offset = 0;
    size_t iov_used = 0;
    while (offset < bytes.size() && elems.size() < max_buffers) {
      VirtqElement elem;
      absl::StatusOr<bool> popped = vq_[0].Pop(&elem, in_ + iov_used, kPool - iov_used, nullptr, 0);
      ASSERT_TRUE(popped.ok() && *popped) << popped.status();
      iov_used += elem.in_num;
      uint32_t len = 0;
      for (uint32_t k = 0; k < elem.in_num && offset < bytes.size(); ++k) {
        const size_t n = std::min(elem.in_sg[k].iov_len, bytes.size() - offset);
        std::memcpy(elem.in_sg[k].iov_base, bytes.data() + offset, n);
        offset += n;
        len += n;
      }
      elems.push_back(elem);
      lens.push_back(len);
    }
    ASSERT_EQ(offset, bytes.size()) << "frame does not fit";
    const uint16_t num_buffers = static_cast<uint16_t>(elems.size());
    std::memcpy(static_cast<uint8_t*>(elems[0].in_sg[0].iov_base) + 10, &num_buffers, 2);
    for (size_t k = 0; k < elems.size(); ++k) vq_[0].Fill(elems[k], lens[k], k);
    vq_[0].Flush(elems.size());
    vq_[0].Notify();
  }

  static constexpr size_t kPool = 512;
  std::unique_ptr<Frontend> frontend_;
  std::unique_ptr<FakeBackend> backend_;
  Virtqueue vq_[kNumQueues];
  iovec in_[kPool];
  iovec out_[kPool];
};

TEST_F(FrontendTest, NegotiatesInOrderWithReplyAck) {
  Start();
  const uint64_t wanted = kDefaultFeatures;
  EXPECT_EQ(frontend_->features(), wanted);
  EXPECT_EQ(backend_->acked_features(), wanted);
  EXPECT_EQ(frontend_->protocol_features(), Bit(vu::kProtocolFReplyAck));
  EXPECT_EQ(backend_->acked_protocol_features(), Bit(vu::kProtocolFReplyAck));
  using R = vu::Request;
  const std::vector<R> expected = {
      R::kGetFeatures,    R::kGetProtocolFeatures, R::kSetProtocolFeatures, R::kSetOwner,
      R::kSetFeatures,    R::kSetMemTable,         R::kSetVringNum,         R::kSetVringAddr,
      R::kSetVringBase,   R::kSetVringCall,        R::kSetVringKick,        R::kSetVringNum,
      R::kSetVringAddr,   R::kSetVringBase,        R::kSetVringCall,        R::kSetVringKick,
      R::kSetVringEnable, R::kSetVringEnable};
  EXPECT_EQ(backend_->request_types(), expected);
  // Every request after SET_PROTOCOL_FEATURES without a reply of its own asks for an ack.
  const std::vector<vu::Header> headers = backend_->requests();
  for (size_t i = 3; i < headers.size(); ++i) {
    EXPECT_TRUE(headers[i].flags & vu::kFlagNeedReply) << vu::RequestName(headers[i].request);
  }
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_FALSE(headers[i].flags & vu::kFlagNeedReply) << vu::RequestName(headers[i].request);
    EXPECT_EQ(headers[i].flags & vu::kVersionMask, vu::kVersion);
  }
  EXPECT_EQ(backend_->regions(), frontend_->memory()->regions());
  EXPECT_EQ(backend_->enabled(0), 1u);
  EXPECT_EQ(backend_->enabled(1), 1u);
  for (uint32_t i = 0; i < kNumQueues; ++i) {
    const vu::VringAddr a = backend_->addr(i);
    EXPECT_EQ(a.desc_user_addr, reinterpret_cast<uint64_t>(
                                    frontend_->memory()->Host(frontend_->queue(i)->desc_gpa())));
    EXPECT_EQ(a.used_user_addr, reinterpret_cast<uint64_t>(
                                    frontend_->memory()->Host(frontend_->queue(i)->used_gpa())));
    EXPECT_EQ(a.avail_user_addr, reinterpret_cast<uint64_t>(
                                     frontend_->memory()->Host(frontend_->queue(i)->avail_gpa())));
    EXPECT_GE(backend_->kick_fd(i), 0);
    EXPECT_GE(backend_->call_fd(i), 0);
  }
}

TEST_F(FrontendTest, WithoutProtocolFeaturesSkipsThemAndEnable) {
  Start({}, {.features = Bit(virtio::kVirtioFVersion1) | Bit(kVirtioNetFMrgRxbuf),
             .protocol_features = 0});
  EXPECT_EQ(frontend_->features(), Bit(virtio::kVirtioFVersion1) | Bit(kVirtioNetFMrgRxbuf));
  EXPECT_EQ(frontend_->protocol_features(), 0u);
  for (const vu::Header& h : backend_->requests()) {
    EXPECT_NE(h.request, static_cast<uint32_t>(vu::Request::kGetProtocolFeatures));
    EXPECT_NE(h.request, static_cast<uint32_t>(vu::Request::kSetVringEnable));
    EXPECT_FALSE(h.flags & vu::kFlagNeedReply);
  }
}

TEST_F(FrontendTest, AsksOnlyForWhatTheCallerWants) {
  Start({.features = Bit(virtio::kVirtioFVersion1) | Bit(vu::kVhostUserFProtocolFeatures),
         .protocol_features = 0});
  EXPECT_EQ(backend_->acked_features(),
            Bit(virtio::kVirtioFVersion1) | Bit(vu::kVhostUserFProtocolFeatures));
  EXPECT_EQ(backend_->acked_protocol_features(), 0u);
  EXPECT_EQ(frontend_->offered_features(), kDefaultFeatures);
  EXPECT_EQ(frontend_->offered_protocol_features(), Bit(vu::kProtocolFReplyAck));
}

TEST_F(FrontendTest, NackFailsNegotiation) {
  absl::StatusOr<std::unique_ptr<Frontend>> frontend = Frontend::Create();
  ASSERT_TRUE(frontend.ok());
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  (*frontend)->Attach(UniqueFd(fds[0]));
  FakeBackend backend(UniqueFd(fds[1]), {.nack = vu::Request::kSetMemTable});
  const absl::Status s = (*frontend)->Negotiate();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("SET_MEM_TABLE"), std::string::npos) << s;
  (*frontend)->Disconnect();
}

TEST_F(FrontendTest, ReplyTimeoutFailsInsteadOfHanging) {
  absl::StatusOr<std::unique_ptr<Frontend>> frontend =
      Frontend::Create({.reply_timeout = absl::Milliseconds(100)});
  ASSERT_TRUE(frontend.ok());
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  UniqueFd silent(fds[1]);
  (*frontend)->Attach(UniqueFd(fds[0]));
  EXPECT_FALSE((*frontend)->GetFeatures().ok());
}

TEST_F(FrontendTest, PostsReceiveBuffersBeforeRingsStart) {
  Start({.queue_size = 64, .rx_buffer_size = 4096, .rx_descriptors = 4});
  EXPECT_EQ(frontend_->queue(kRxQueue)->avail_idx(), 16);  // 64 descriptors, 4 per buffer.
  for (int n = 0; n < 16; ++n) {
    VirtqElement elem = Pop(kRxQueue);
    ASSERT_EQ(elem.in_num, 4u);
    ASSERT_EQ(elem.out_num, 0u);
    size_t total = 0;
    for (uint32_t k = 0; k < elem.in_num; ++k) total += elem.in_sg[k].iov_len;
    EXPECT_EQ(total, 4096u);
    // The pieces are one contiguous buffer.
    for (uint32_t k = 1; k < elem.in_num; ++k) {
      EXPECT_EQ(static_cast<uint8_t*>(elem.in_sg[k - 1].iov_base) + elem.in_sg[k - 1].iov_len,
                elem.in_sg[k].iov_base);
    }
  }
  EXPECT_TRUE(vq_[kRxQueue].IsEmpty());
}

TEST_F(FrontendTest, PostsIndirectReceiveBuffers) {
  Start({.queue_size = 32, .rx_buffer_size = 1526, .rx_descriptors = 3, .rx_indirect = true});
  EXPECT_EQ(frontend_->queue(kRxQueue)->avail_idx(), 32);
  EXPECT_EQ(frontend_->queue(kRxQueue)->desc(0)->flags & virtio::kVirtqDescFIndirect,
            virtio::kVirtqDescFIndirect);
  VirtqElement elem = Pop(kRxQueue);
  EXPECT_EQ(elem.in_num, 3u);
  EXPECT_EQ(elem.in_sg[0].iov_len + elem.in_sg[1].iov_len + elem.in_sg[2].iov_len, 1526u);
}

TEST_F(FrontendTest, SendsFramesInOneBatchWithOneKick) {
  Start();
  const std::vector<uint8_t> a = Pattern(60, 1), b = Pattern(1514, 2), c = Pattern(9000, 3);
  const absl::Span<const uint8_t> frames[] = {a, b, c};
  absl::StatusOr<size_t> sent = frontend_->SendFrames(frames);
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(*sent, 3u);
  EXPECT_EQ(frontend_->stats().tx_kicks, 1u);
  EXPECT_TRUE(Readable(backend_->kick_fd(kTxQueue)));
  EXPECT_EQ(frontend_->tx_in_flight(), 3u);
  for (const absl::Span<const uint8_t> frame : frames) {
    VirtqElement elem = Pop(kTxQueue);
    ASSERT_EQ(elem.out_num, 1u);
    ASSERT_EQ(elem.out_sg[0].iov_len, 12 + frame.size());
    const uint8_t* p = static_cast<const uint8_t*>(elem.out_sg[0].iov_base);
    EXPECT_EQ(std::vector<uint8_t>(p, p + 12), std::vector<uint8_t>(12, 0));
    EXPECT_EQ(std::vector<uint8_t>(p + 12, p + 12 + frame.size()),
              std::vector<uint8_t>(frame.begin(), frame.end()));
    vq_[kTxQueue].Push(elem, 0);
  }
  absl::StatusOr<size_t> reclaimed = frontend_->ReclaimTx();
  ASSERT_TRUE(reclaimed.ok());
  EXPECT_EQ(*reclaimed, 3u);
  EXPECT_EQ(frontend_->tx_in_flight(), 0u);
}

TEST_F(FrontendTest, SendsHeaderInItsOwnDescriptorAndIndirect) {
  for (const bool indirect : {false, true}) {
    TearDown();
    Start({.tx_header_separate = true, .tx_indirect = indirect});
    const std::vector<uint8_t> frame = Pattern(100, 9);
    const absl::Span<const uint8_t> frames[] = {frame};
    ASSERT_EQ(*frontend_->SendFrames(frames), 1u);
    // The first chain's head is descriptor 0.
    EXPECT_EQ((frontend_->queue(kTxQueue)->desc(0)->flags & virtio::kVirtqDescFIndirect) != 0,
              indirect);
    VirtqElement elem = Pop(kTxQueue);
    ASSERT_EQ(elem.out_num, 2u);
    EXPECT_EQ(elem.out_sg[0].iov_len, 12u);
    ASSERT_EQ(elem.out_sg[1].iov_len, frame.size());
    EXPECT_EQ(std::memcmp(elem.out_sg[1].iov_base, frame.data(), frame.size()), 0);
  }
}

TEST_F(FrontendTest, FullRingSendsPrefixThenReclaims) {
  Start({.queue_size = 8});
  const std::vector<uint8_t> frame = Pattern(64, 0);
  std::vector<absl::Span<const uint8_t>> frames(12, frame);
  EXPECT_EQ(*frontend_->SendFrames(frames), 8u);
  EXPECT_EQ(*frontend_->SendFrames(frames), 0u);
  // The device consumes three; their slots come back on the next send.
  for (int i = 0; i < 3; ++i) vq_[kTxQueue].Push(Pop(kTxQueue), 0);
  vq_[kTxQueue].Notify();
  absl::StatusOr<size_t> waited = frontend_->WaitTx(absl::Seconds(5));
  ASSERT_TRUE(waited.ok());
  EXPECT_EQ(*waited, 3u);
  EXPECT_EQ(*frontend_->SendFrames(frames), 3u);
}

TEST_F(FrontendTest, RefusesOversizedAndEmptyFrames) {
  Start({.max_frame_size = 1000});
  const std::vector<uint8_t> big(1001), ok(1000);
  const absl::Span<const uint8_t> frames[] = {ok, big};
  EXPECT_EQ(frontend_->SendFrames(frames).status().code(), absl::StatusCode::kInvalidArgument);
  const absl::Span<const uint8_t> empty[] = {absl::Span<const uint8_t>()};
  EXPECT_EQ(frontend_->SendFrames(empty).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(frontend_->tx_in_flight(), 0u);
}

// SendFramesFrom: frames written straight into the transmit slots.

// A fill callback that writes `frames` in turn and counts its calls; 0 once
// they are all out.
struct FillFrames {
  absl::StatusOr<size_t> operator()(const TxBuffer& buffer) {
    ++calls;
    if (next == frames.size()) return 0;
    const std::vector<uint8_t>& frame = frames[next++];
    std::memcpy(buffer.frame.data(), frame.data(), frame.size());
    return frame.size();
  }
  std::vector<std::vector<uint8_t>> frames;
  size_t next = 0;
  int calls = 0;
};

TEST_F(FrontendTest, SendFramesFromFillsGuestMemoryInPlace) {
  Start();
  const std::vector<uint8_t> a = Pattern(60, 1), b = Pattern(1514, 2), c = Pattern(9000, 3);
  const std::vector<uint8_t>* frames[] = {&a, &b, &c};
  VirtioNetHdr offload;
  offload.flags = virtio::kVirtioNetHdrFNeedsCsum;
  offload.csum_start = 34;
  offload.csum_offset = 16;
  size_t next = 0;
  std::vector<const uint8_t*> slots;  // In the frontend's mapping.
  absl::StatusOr<size_t> sent =
      frontend_->SendFramesFrom(10, [&](const TxBuffer& buffer) -> absl::StatusOr<size_t> {
        EXPECT_EQ(buffer.header.size(), 12u);
        EXPECT_EQ(buffer.header, absl::MakeConstSpan(std::vector<uint8_t>(12, 0)));
        EXPECT_EQ(buffer.frame.data(), buffer.header.data() + 12);
        EXPECT_EQ(buffer.frame.size(), frontend_->options().max_frame_size);
        EXPECT_EQ(buffer.whole().data(), buffer.header.data());
        EXPECT_EQ(buffer.whole().size(), 12 + buffer.frame.size());
        if (next == 3) return 0;
        slots.push_back(buffer.header.data());
        const std::vector<uint8_t>& frame = *frames[next];
        std::memcpy(buffer.frame.data(), frame.data(), frame.size());
        // The second frame carries offload flags, as a tap would write them.
        if (next == 1) std::memcpy(buffer.header.data(), &offload, 10);
        ++next;
        return frame.size();
      });
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(*sent, 3u);
  EXPECT_EQ(frontend_->stats().tx_kicks, 1u);
  EXPECT_EQ(frontend_->stats().tx_frames, 3u);
  EXPECT_EQ(frontend_->stats().tx_bytes, 60u + 1514 + 9000);
  EXPECT_EQ(frontend_->tx_in_flight(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    VirtqElement elem = Pop(kTxQueue);
    ASSERT_EQ(elem.out_num, 1u);
    const std::vector<uint8_t>& frame = *frames[i];
    ASSERT_EQ(elem.out_sg[0].iov_len, 12 + frame.size());
    const uint8_t* p = static_cast<const uint8_t*>(elem.out_sg[0].iov_base);
    VirtioNetHdr header;
    std::memcpy(&header, p, 12);
    EXPECT_EQ(header.flags, i == 1 ? virtio::kVirtioNetHdrFNeedsCsum : 0);
    EXPECT_EQ(header.csum_start, i == 1 ? 34 : 0);
    EXPECT_EQ(header.csum_offset, i == 1 ? 16 : 0);
    EXPECT_EQ(header.num_buffers, 0);
    EXPECT_EQ(std::memcmp(p + 12, frame.data(), frame.size()), 0);
    vq_[kTxQueue].Push(elem, 0);
  }
  // The slots just returned are filled again first (still in cache), with
  // their headers zeroed afresh.
  const uint8_t* reused = nullptr;
  sent = frontend_->SendFramesFrom(1, [&](const TxBuffer& buffer) -> absl::StatusOr<size_t> {
    reused = buffer.header.data();
    EXPECT_EQ(buffer.header, absl::MakeConstSpan(std::vector<uint8_t>(12, 0)));
    return 60;
  });
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(*sent, 1u);
  EXPECT_NE(std::find(slots.begin(), slots.end(), reused), slots.end());
  EXPECT_EQ(frontend_->stats().tx_reclaimed, 3u);
  EXPECT_EQ(frontend_->tx_in_flight(), 1u);
}

TEST_F(FrontendTest, SendFramesFromStopsWhenFillReturnsZero) {
  Start();
  FillFrames fill{.frames = {Pattern(100, 1), Pattern(200, 2)}};
  absl::StatusOr<size_t> sent = frontend_->SendFramesFrom(10, std::ref(fill));
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(*sent, 2u);
  EXPECT_EQ(fill.calls, 3);
  EXPECT_EQ(frontend_->tx_in_flight(), 2u);
  EXPECT_EQ(frontend_->stats().tx_kicks, 1u);
  // Nothing to send: no kick, and the slot offered is still free.
  sent = frontend_->SendFramesFrom(10, std::ref(fill));
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(*sent, 0u);
  EXPECT_EQ(fill.calls, 4);
  EXPECT_EQ(frontend_->stats().tx_kicks, 1u);
  EXPECT_EQ(frontend_->tx_in_flight(), 2u);
  // `max` bounds the calls.
  fill.frames.assign(5, Pattern(64, 3));
  fill.next = 0;
  sent = frontend_->SendFramesFrom(3, std::ref(fill));
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(*sent, 3u);
  EXPECT_EQ(fill.calls, 7);
}

TEST_F(FrontendTest, SendFramesFromCallsFillOnlyWithASlot) {
  for (const bool separate : {false, true}) {
    SCOPED_TRACE(separate ? "header separate" : "one descriptor");
    TearDown();
    // Separate headers take two descriptors per frame: half as many slots.
    Start({.queue_size = 8, .tx_header_separate = separate});
    const size_t slots = separate ? 4 : 8;
    FillFrames fill{.frames = std::vector<std::vector<uint8_t>>(20, Pattern(64, 0))};
    EXPECT_EQ(*frontend_->SendFramesFrom(12, std::ref(fill)), slots);
    EXPECT_EQ(fill.calls, static_cast<int>(slots));
    // The ring is full: the callback is not called (a tap read would lose
    // the frame).
    EXPECT_EQ(*frontend_->SendFramesFrom(12, std::ref(fill)), 0u);
    EXPECT_EQ(fill.calls, static_cast<int>(slots));
    // The device consumes three; the next call takes them back first.
    for (int i = 0; i < 3; ++i) vq_[kTxQueue].Push(Pop(kTxQueue), 0);
    EXPECT_EQ(*frontend_->SendFramesFrom(12, std::ref(fill)), 3u);
    EXPECT_EQ(fill.calls, static_cast<int>(slots) + 3);
  }
}

TEST_F(FrontendTest, SendFramesFromPublishesWhatWasFilledBeforeAnError) {
  Start();
  int calls = 0;
  absl::StatusOr<size_t> sent =
      frontend_->SendFramesFrom(10, [&](const TxBuffer& buffer) -> absl::StatusOr<size_t> {
        if (++calls == 3) return absl::UnavailableError("the tap went away");
        std::memset(buffer.frame.data(), calls, 64);
        return 64;
      });
  EXPECT_EQ(sent.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(frontend_->tx_in_flight(), 2u);
  EXPECT_EQ(frontend_->stats().tx_kicks, 1u);
  for (int i = 1; i <= 2; ++i) {
    VirtqElement elem = Pop(kTxQueue);
    ASSERT_EQ(elem.out_sg[0].iov_len, 12u + 64);
    EXPECT_EQ(static_cast<const uint8_t*>(elem.out_sg[0].iov_base)[12], i);
  }
  // A length beyond the buffer is the caller's bug: refused, not sent.
  sent = frontend_->SendFramesFrom(
      10, [](const TxBuffer& buffer) -> absl::StatusOr<size_t> { return buffer.frame.size() + 1; });
  EXPECT_EQ(sent.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(frontend_->tx_in_flight(), 2u);
}

TEST_F(FrontendTest, SendFramesFromWithLegacyHeader) {
  // Neither VERSION_1 nor MRG_RXBUF: the 10-byte header.
  Start(
      {.features = kDefaultFeatures & ~Bit(virtio::kVirtioFVersion1) & ~Bit(kVirtioNetFMrgRxbuf)});
  ASSERT_EQ(frontend_->net_header_size(), 10u);
  FillFrames fill{.frames = {Pattern(100, 5)}};
  ASSERT_EQ(*frontend_->SendFramesFrom(1,
                                       [&](const TxBuffer& buffer) {
                                         EXPECT_EQ(buffer.header.size(), 10u);
                                         EXPECT_EQ(buffer.frame.data(), buffer.header.data() + 10);
                                         return fill(buffer);
                                       }),
            1u);
  VirtqElement elem = Pop(kTxQueue);
  ASSERT_EQ(elem.out_sg[0].iov_len, 10u + 100);
  EXPECT_EQ(std::memcmp(static_cast<const uint8_t*>(elem.out_sg[0].iov_base) + 10,
                        fill.frames[0].data(), 100),
            0);
}

TEST_F(FrontendTest, SendFramesFromPublishesOnTheWayWithTxPublishBytes) {
  Start({.tx_publish_bytes = 1000});
  const virtio::testing::DriverQueue& q = *frontend_->queue(kTxQueue);
  const auto published = [&] {
    return *reinterpret_cast<const uint16_t*>(frontend_->memory()->Host(q.avail_gpa()) + 2);
  };
  std::vector<uint16_t> seen;
  absl::StatusOr<size_t> sent =
      frontend_->SendFramesFrom(5, [&](const TxBuffer&) -> absl::StatusOr<size_t> {
        seen.push_back(published());
        return 600;
      });
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_EQ(*sent, 5u);
  // Published after the second and fourth frames (1200 bytes each time),
  // then at the end.
  EXPECT_EQ(seen, (std::vector<uint16_t>{0, 0, 2, 2, 4}));
  EXPECT_EQ(published(), 5);
  // The backend has not caught up (avail_event 0): one kick, for the first.
  EXPECT_EQ(frontend_->stats().tx_kicks, 1u);
}

TEST_F(FrontendTest, SendFramesFromNeedsARunningRing) {
  Start();
  ASSERT_TRUE(frontend_->GetVringBase(kTxQueue).ok());
  FillFrames fill{.frames = {Pattern(100, 5)}};
  EXPECT_EQ(frontend_->SendFramesFrom(1, std::ref(fill)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(fill.calls, 0);
}

TEST_F(FrontendTest, ReceivesFrameAndRepostsBuffer) {
  Start({.queue_size = 16, .features = kDefaultFeatures & ~Bit(kVirtioNetFMrgRxbuf)});
  const std::vector<uint8_t> frame = Pattern(1514, 5);
  DeviceReceive(frame);
  absl::StatusOr<std::vector<uint8_t>> got = frontend_->ReceiveFrame(absl::Seconds(5));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, frame);
  EXPECT_EQ(frontend_->stats().rx_frames, 1u);
  // The buffer went back: the ring holds all 16 again.
  EXPECT_EQ(frontend_->queue(kRxQueue)->avail_idx(), 17);
}

TEST_F(FrontendTest, ReassemblesMergeableBuffers) {
  Start({.queue_size = 64, .rx_buffer_size = 1526});
  ASSERT_TRUE(frontend_->has_feature(kVirtioNetFMrgRxbuf));
  const std::vector<uint8_t> small = Pattern(100, 1), big = Pattern(4000, 2);
  DeviceReceive(small);
  DeviceReceive(big);  // 4012 bytes with the header: three buffers.
  std::vector<std::vector<uint8_t>> got;
  std::vector<uint16_t> buffers;
  absl::StatusOr<size_t> n =
      frontend_->ReceiveFrames(10, absl::Seconds(5), [&](const ReceivedFrame& f) {
        got.emplace_back(f.data.begin(), f.data.end());
        buffers.push_back(f.buffers);
      });
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(got[0], small);
  EXPECT_EQ(got[1], big);
  EXPECT_EQ(buffers, (std::vector<uint16_t>{1, 3}));
  EXPECT_EQ(frontend_->stats().rx_buffers, 4u);
}

// A TCP/IPv4 frame of `payload` bytes (IP length set), for offload headers.
std::vector<uint8_t> TcpFrame(size_t payload, uint8_t seed = 0) {
  std::vector<uint8_t> frame = Pattern(14 + 20 + 20 + payload, seed);
  frame[12] = 0x08;
  frame[13] = 0x00;
  frame[14] = 0x45;
  const size_t total = 20 + 20 + payload;
  frame[16] = static_cast<uint8_t>(total >> 8);
  frame[17] = static_cast<uint8_t>(total);
  frame[20] = 0x40;  // Don't fragment.
  frame[21] = 0;
  frame[23] = 6;
  frame[34 + 12] = 0x50;  // Data offset 5.
  return frame;
}

TEST_F(FrontendTest, NegotiatesTheOffloadsTheBackendOffers) {
  // All of them, both ways.
  Start({.features = kDefaultFeatures | kOffloadFeatures},
        {.features = kDefaultFeatures | kOffloadFeatures});
  EXPECT_EQ(frontend_->features(), kDefaultFeatures | kOffloadFeatures);
  EXPECT_EQ(backend_->acked_features(), kDefaultFeatures | kOffloadFeatures);
  EXPECT_EQ(FeatureNames(kOffloadFeatures),
            "CSUM|GUEST_CSUM|GUEST_TSO4|GUEST_TSO6|GUEST_ECN|HOST_TSO4|HOST_TSO6|HOST_ECN|"
            "GUEST_USO4|GUEST_USO6|HOST_USO");
  TearDown();
  // Only what is offered, less what lacks its prerequisites: no GUEST_CSUM,
  // so none of the guest side's segmentation.
  const uint64_t offered = kDefaultFeatures | Bit(kVirtioNetFCsum) | Bit(kVirtioNetFHostTso4) |
                           Bit(kVirtioNetFHostEcn) | Bit(kVirtioNetFGuestTso4) |
                           Bit(kVirtioNetFGuestUso4);
  Start({.features = kDefaultFeatures | kOffloadFeatures}, {.features = offered});
  EXPECT_EQ(frontend_->features(), kDefaultFeatures | Bit(kVirtioNetFCsum) |
                                       Bit(kVirtioNetFHostTso4) | Bit(kVirtioNetFHostEcn));
  EXPECT_EQ(backend_->acked_features(), frontend_->features());
  TearDown();
  // Today's backend: none offered, none taken.
  Start({.features = kDefaultFeatures | kOffloadFeatures}, {.features = kDefaultFeatures});
  EXPECT_EQ(frontend_->features(), kDefaultFeatures);
  TearDown();
  // Not asked for: not taken.
  Start({}, {.features = kDefaultFeatures | kOffloadFeatures});
  EXPECT_EQ(frontend_->features(), kDefaultFeatures);
}

TEST_F(FrontendTest, GuestSegmentationWithoutMergeableBuffersNeedsBigBuffers) {
  const uint64_t wanted = (kDefaultFeatures & ~Bit(kVirtioNetFMrgRxbuf)) | kOffloadFeatures;
  Start({.queue_size = 16, .features = wanted, .rx_buffer_size = 1526},
        {.features = kDefaultFeatures | kOffloadFeatures});
  EXPECT_EQ(frontend_->features() & kGuestGsoFeatures, 0u);
  EXPECT_EQ(frontend_->features() & kHostGsoFeatures, kHostGsoFeatures);
  TearDown();
  Start({.queue_size = 16, .features = wanted, .rx_buffer_size = kBigPacketBufferSize},
        {.features = kDefaultFeatures | kOffloadFeatures});
  EXPECT_EQ(frontend_->features() & kGsoFeatures, kGsoFeatures);
}

TEST_F(FrontendTest, SendsFramesWithTheHeadersGiven) {
  for (const bool separate : {false, true}) {
    SCOPED_TRACE(separate ? "header separate" : "one descriptor");
    TearDown();
    Start({.features = kDefaultFeatures | kOffloadFeatures, .tx_header_separate = separate},
          {.features = kDefaultFeatures | kOffloadFeatures});
    const std::vector<uint8_t> big = TcpFrame(64000, 1), small = TcpFrame(100, 2);
    const std::optional<VirtioNetHdr> gso = OffloadHeader(big, 1448, /*ecn=*/true);
    ASSERT_TRUE(gso);
    const TxFrame frames[] = {{.header = *gso, .data = big}, {.data = small}};
    absl::StatusOr<size_t> sent = frontend_->SendFramesWithHeaders(frames);
    ASSERT_TRUE(sent.ok()) << sent.status();
    EXPECT_EQ(*sent, 2u);
    for (const TxFrame& frame : frames) {
      const VirtqElement elem = Pop(kTxQueue);
      std::vector<uint8_t> bytes;
      for (uint32_t k = 0; k < elem.out_num; ++k) {
        const auto* base = static_cast<const uint8_t*>(elem.out_sg[k].iov_base);
        bytes.insert(bytes.end(), base, base + elem.out_sg[k].iov_len);
      }
      ASSERT_EQ(bytes.size(), 12 + frame.data.size());
      VirtioNetHdr header;
      std::memcpy(&header, bytes.data(), 12);
      EXPECT_EQ(header.flags, frame.header.flags);
      EXPECT_EQ(header.gso_type, frame.header.gso_type);
      EXPECT_EQ(header.hdr_len, frame.header.hdr_len);
      EXPECT_EQ(header.gso_size, frame.header.gso_size);
      EXPECT_EQ(header.csum_start, frame.header.csum_start);
      EXPECT_EQ(header.csum_offset, frame.header.csum_offset);
      EXPECT_EQ(header.num_buffers, 0);
      EXPECT_EQ(std::vector<uint8_t>(bytes.begin() + 12, bytes.end()),
                std::vector<uint8_t>(frame.data.begin(), frame.data.end()));
      EXPECT_EQ(CheckHeader(header, frame.data, frontend_->features(), Direction::kToBackend),
                HeaderProblem::kNone);
    }
  }
  const std::vector<uint8_t> too_big(frontend_->options().max_frame_size + 1);
  const TxFrame bad[] = {{.data = too_big}};
  EXPECT_EQ(frontend_->SendFramesWithHeaders(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(FrontendTest, HandsTheBackendsHeaderToTheCallerAcrossMergedBuffers) {
  Start({.features = kDefaultFeatures | kOffloadFeatures, .rx_buffer_size = 1526},
        {.features = kDefaultFeatures | kOffloadFeatures});
  const std::vector<uint8_t> frame = TcpFrame(30000, 5);
  VirtioNetHdr header = *OffloadHeader(frame, 1448);
  DeviceReceive(frame, 64, header);
  absl::StatusOr<OwnedFrame> got = frontend_->ReceiveFrameWithHeader(absl::Seconds(2));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->data, frame);
  EXPECT_EQ(got->buffers, 20);  // 12 + 30054 bytes in 1526-byte buffers.
  EXPECT_EQ(got->header.num_buffers, 20);
  EXPECT_EQ(got->header.flags, virtio::kVirtioNetHdrFNeedsCsum);
  EXPECT_EQ(got->header.gso_type, kGsoTcpv4);
  EXPECT_EQ(got->header.gso_size, 1448);
  EXPECT_EQ(got->header.hdr_len, 54);
  EXPECT_EQ(got->header.csum_start, 34);
  EXPECT_EQ(got->header.csum_offset, 16);
  EXPECT_EQ(CheckHeader(got->header, got->data, frontend_->features(), Direction::kToGuest),
            HeaderProblem::kNone);
  // The same header on a frontend that did not negotiate GUEST_TSO4: the
  // caller can tell.
  EXPECT_EQ(CheckHeader(got->header, got->data, kDefaultFeatures | Bit(kVirtioNetFGuestCsum),
                        Direction::kToGuest),
            HeaderProblem::kGsoNotNegotiated);
}

TEST_F(FrontendTest, NumBuffersBeyondThePostedBuffersIsDataLoss) {
  Start({.queue_size = 16});
  VirtqElement elem;
  absl::StatusOr<bool> popped = vq_[kRxQueue].Pop(&elem, in_, kPool, nullptr, 0);
  ASSERT_TRUE(popped.ok() && *popped);
  VirtioNetHdr header;
  header.num_buffers = 60000;
  std::memcpy(elem.in_sg[0].iov_base, &header, sizeof(header));
  vq_[kRxQueue].Fill(elem, 100, 0);
  vq_[kRxQueue].Flush(1);
  vq_[kRxQueue].Notify();
  EXPECT_EQ(frontend_->ReceiveFrame(absl::Seconds(2)).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(FrontendTest, ReceiveTimesOutWithNothing) {
  Start();
  const absl::Time start = absl::Now();
  absl::StatusOr<size_t> n =
      frontend_->ReceiveFrames(1, absl::Milliseconds(50), [](const ReceivedFrame&) { FAIL(); });
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
  EXPECT_EQ(frontend_->ReceiveFrame(absl::ZeroDuration()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST_F(FrontendTest, WaitsForFrameFromAnotherThread) {
  Start();
  const std::vector<uint8_t> frame = Pattern(300, 4);
  std::thread device([&] {
    absl::SleepFor(absl::Milliseconds(30));
    DeviceReceive(frame);
  });
  absl::StatusOr<std::vector<uint8_t>> got = frontend_->ReceiveFrame(absl::Seconds(10));
  device.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, frame);
  EXPECT_GE(frontend_->stats().rx_calls, 1u);
}

TEST_F(FrontendTest, BogusUsedEntryIsDataLoss) {
  Start({.queue_size = 16});
  // The device returns a descriptor no transmit chain holds.
  VirtqElement fake;
  fake.index = 3;
  vq_[kTxQueue].Push(fake, 0);
  EXPECT_EQ(frontend_->ReclaimTx().status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(FrontendTest, EventIdxSuppressesKicks) {
  Start();
  ASSERT_TRUE(frontend_->has_feature(virtio::kVirtioRingFEventIdx));
  const std::vector<uint8_t> frame = Pattern(64, 0);
  const absl::Span<const uint8_t> frames[] = {frame};
  ASSERT_EQ(*frontend_->SendFrames(frames), 1u);
  EXPECT_EQ(frontend_->stats().tx_kicks, 1u);
  // The device has not caught up (avail_event still 0): no kick for more.
  ASSERT_EQ(*frontend_->SendFrames(frames), 1u);
  EXPECT_EQ(frontend_->stats().tx_kicks, 1u);
  // It pops both and asks for a kick on the next.
  vq_[kTxQueue].Push(Pop(kTxQueue), 0);
  vq_[kTxQueue].Push(Pop(kTxQueue), 0);
  vq_[kTxQueue].SetNotification(true);
  ASSERT_EQ(*frontend_->SendFrames(frames), 1u);
  EXPECT_EQ(frontend_->stats().tx_kicks, 2u);
}

TEST_F(FrontendTest, NoNotifyFlagSuppressesKicksWithoutEventIdx) {
  Start({.features = kDefaultFeatures & ~Bit(virtio::kVirtioRingFEventIdx)});
  vq_[kTxQueue].SetNotification(false);
  const std::vector<uint8_t> frame = Pattern(64, 0);
  const absl::Span<const uint8_t> frames[] = {frame};
  ASSERT_EQ(*frontend_->SendFrames(frames), 1u);
  EXPECT_EQ(frontend_->stats().tx_kicks, 0u);
  vq_[kTxQueue].SetNotification(true);
  ASSERT_EQ(*frontend_->SendFrames(frames), 1u);
  EXPECT_EQ(frontend_->stats().tx_kicks, 1u);
}

TEST_F(FrontendTest, GetVringBaseStopsRing) {
  Start({}, {.vring_base = 42});
  absl::StatusOr<uint32_t> base = frontend_->GetVringBase(kTxQueue);
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(*base, 42u);
  const std::vector<uint8_t> frame = Pattern(64, 0);
  const absl::Span<const uint8_t> frames[] = {frame};
  EXPECT_EQ(frontend_->SendFrames(frames).status().code(), absl::StatusCode::kFailedPrecondition);
  // Setting it up again lays the ring out afresh.
  ASSERT_TRUE(frontend_->SetUpRing(kTxQueue).ok());
  EXPECT_EQ(*frontend_->SendFrames(frames), 1u);
}

TEST_F(FrontendTest, RawMessagesReachTheBackend) {
  Start();
  const vu::Header header{.request = 999, .flags = vu::kVersion, .size = 4};
  const uint8_t payload[4] = {1, 2, 3, 4};
  ASSERT_TRUE(frontend_->SendMessage(header, payload).ok());
  ASSERT_TRUE(frontend_->GetFeatures().ok());  // A round trip orders the two.
  const std::vector<vu::Header> headers = backend_->requests();
  ASSERT_GE(headers.size(), 2u);
  EXPECT_EQ(headers[headers.size() - 2].request, 999u);
}

TEST_F(FrontendTest, SeveralMemoryRegions) {
  Start({.memory_regions = 4});
  EXPECT_EQ(backend_->regions().size(), 4u);
  const std::vector<uint8_t> frame = Pattern(2000, 8);
  const absl::Span<const uint8_t> frames[] = {frame};
  ASSERT_EQ(*frontend_->SendFrames(frames), 1u);
  VirtqElement elem = Pop(kTxQueue);
  size_t total = 0;
  for (uint32_t k = 0; k < elem.out_num; ++k) total += elem.out_sg[k].iov_len;
  EXPECT_EQ(total, 12 + frame.size());
}

TEST(FrontendCreateTest, RefusesImpossibleOptions) {
  EXPECT_FALSE(Frontend::Create({.queue_size = 100}).ok());
  EXPECT_FALSE(Frontend::Create({.queue_size = 0}).ok());
  EXPECT_FALSE(Frontend::Create({.memory_regions = 9}).ok());
  EXPECT_FALSE(Frontend::Create({.rx_buffer_size = 8}).ok());
  EXPECT_FALSE(Frontend::Create({.queue_size = 4, .rx_descriptors = 8}).ok());
  EXPECT_FALSE(Frontend::Create({.memory_size = 4096}).ok());
  EXPECT_TRUE(Frontend::Create({.queue_size = 4, .rx_descriptors = 8, .rx_indirect = true}).ok());
}

TEST(FrontendConnectTest, ConnectsToListeningSocketAndReportsMissingOne) {
  absl::StatusOr<std::unique_ptr<Frontend>> frontend = Frontend::Create();
  ASSERT_TRUE(frontend.ok());
  // TEST_TMPDIR can be longer than a socket path may be.
  char dir[] = "/tmp/vu_frontend_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/connect.sock";
  EXPECT_EQ((*frontend)->Connect(path).code(), absl::StatusCode::kUnavailable);
  UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  // Bind later than the first attempt: Connect retries until it appears.
  std::thread binder([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(listen(listener.get(), 1), 0);
  });
  const absl::Status s = (*frontend)->Connect(path, absl::Seconds(10));
  binder.join();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE((*frontend)->connected());
  (*frontend)->Disconnect();
  EXPECT_FALSE((*frontend)->connected());
  unlink(path.c_str());
  rmdir(dir);
}

TEST(FeatureNamesTest, NamesBits) {
  EXPECT_EQ(FeatureNames(Bit(virtio::kVirtioFVersion1) | Bit(kVirtioNetFMrgRxbuf)),
            "MRG_RXBUF|VERSION_1");
  EXPECT_EQ(FeatureNames(Bit(60)), "0x1000000000000000");
  EXPECT_EQ(FeatureNames(0), "none");
  EXPECT_EQ(ProtocolFeatureNames(Bit(vu::kProtocolFReplyAck) | Bit(vu::kProtocolFMq)),
            "MQ|REPLY_ACK");
}

// The frontend against the real vu::Server over a real socket, with a data
// plane that echoes every transmitted frame into the receive ring.
class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::strcpy(dir_, "/tmp/vu_frontend_test.XXXXXX");
    ASSERT_NE(mkdtemp(dir_), nullptr);
    path_ = std::string(dir_) + "/vu.sock";
  }

  void StartServer(const EchoDataPlane::Options& plane_options = {}) {
    plane_ = std::make_unique<EchoDataPlane>(plane_options);
    vu::Server::Options options;
    options.socket_path = path_;
    absl::StatusOr<std::unique_ptr<vu::Server>> server = vu::Server::Listen(options, plane_.get());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    thread_ = std::thread([this] { EXPECT_TRUE(server_->Run(stop_).ok()); });
  }

  // Connects and negotiates a frontend; both rings run in the data plane
  // when this returns.
  std::unique_ptr<Frontend> Connect(const FrontendOptions& options = {}) {
    absl::StatusOr<std::unique_ptr<Frontend>> frontend = Frontend::Create(options);
    EXPECT_TRUE(frontend.ok()) << frontend.status();
    if (!frontend.ok()) return nullptr;
    absl::Status s = (*frontend)->Connect(path_, absl::Seconds(5));
    EXPECT_TRUE(s.ok()) << s;
    s = (*frontend)->Negotiate();
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_TRUE(plane_->WaitRunning(5000));
    return *std::move(frontend);
  }

  // Starts a server whose echo matches `options`' features and connects.
  void Start(const FrontendOptions& options = {}) {
    StartServer({.mergeable = (options.features & Bit(kVirtioNetFMrgRxbuf)) != 0});
    frontend_ = Connect(options);
    ASSERT_NE(frontend_, nullptr);
  }

  void TearDown() override {
    if (frontend_) frontend_->Disconnect();
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    server_.reset();
    plane_.reset();
    rmdir(dir_);
  }

  // Sends `frames` and reads them all back, sending no more than the ring
  // and the receive buffers take at a time. Returns what came back.
  std::vector<std::vector<uint8_t>> RoundTrip(Frontend& frontend,
                                              const std::vector<std::vector<uint8_t>>& frames,
                                              std::vector<uint16_t>* buffers = nullptr) {
    std::vector<absl::Span<const uint8_t>> spans(frames.begin(), frames.end());
    std::vector<std::vector<uint8_t>> got;
    size_t sent = 0;
    const auto on_frame = [&](const ReceivedFrame& f) {
      got.emplace_back(f.data.begin(), f.data.end());
      if (buffers != nullptr) buffers->push_back(f.buffers);
    };
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (got.size() < frames.size() && absl::Now() < deadline) {
      if (sent < frames.size()) {
        const size_t batch = std::min<size_t>(32, frames.size() - sent);
        absl::StatusOr<size_t> n =
            frontend.SendFrames(absl::MakeConstSpan(spans).subspan(sent, batch));
        EXPECT_TRUE(n.ok()) << n.status();
        if (!n.ok()) break;
        sent += *n;
      }
      absl::StatusOr<size_t> n =
          frontend.ReceiveFrames(frames.size() - got.size(), absl::Milliseconds(100), on_frame);
      EXPECT_TRUE(n.ok()) << n.status();
      if (!n.ok()) break;
    }
    EXPECT_EQ(sent, frames.size());
    return got;
  }

  static std::vector<std::vector<uint8_t>> Frames(size_t count, size_t min_size, size_t max_size) {
    std::vector<std::vector<uint8_t>> frames;
    for (size_t i = 0; i < count; ++i) {
      const size_t size = min_size + (i * 7919) % (max_size - min_size + 1);
      frames.push_back(Pattern(size, static_cast<uint8_t>(i)));
    }
    return frames;
  }

  char dir_[32] = {};
  std::string path_;
  std::atomic<bool> stop_{false};
  std::unique_ptr<EchoDataPlane> plane_;
  std::unique_ptr<vu::Server> server_;
  std::thread thread_;
  std::unique_ptr<Frontend> frontend_;
};

TEST_F(ServerTest, NegotiatesWithTheRealDevice) {
  Start();
  EXPECT_EQ(frontend_->features(), kDefaultFeatures);
  EXPECT_EQ(frontend_->protocol_features(), Bit(vu::kProtocolFReplyAck));
  EXPECT_EQ(plane_->queue_starts(0), 1u);
  EXPECT_EQ(plane_->queue_starts(1), 1u);
}

TEST_F(ServerTest, EchoesFramesByteExactWithMergeableBuffers) {
  Start();
  ASSERT_TRUE(frontend_->has_feature(kVirtioNetFMrgRxbuf));
  ASSERT_TRUE(frontend_->has_feature(virtio::kVirtioRingFEventIdx));
  const std::vector<std::vector<uint8_t>> frames = Frames(300, 60, 1514);
  EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
  EXPECT_EQ(plane_->frames_echoed(), 300u);
  EXPECT_EQ(plane_->frames_dropped(), 0u);
}

TEST_F(ServerTest, EchoesWithoutMergeableBuffers) {
  Start({.features = kDefaultFeatures & ~Bit(kVirtioNetFMrgRxbuf)});
  ASSERT_FALSE(frontend_->has_feature(kVirtioNetFMrgRxbuf));
  const std::vector<std::vector<uint8_t>> frames = Frames(300, 60, 1514);
  EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
}

TEST_F(ServerTest, EchoesWithoutEventIdxOrProtocolFeatures) {
  // No PROTOCOL_FEATURES: no REPLY_ACK and no SET_VRING_ENABLE; rings start on their kick fd.
  Start({.features = Bit(virtio::kVirtioFVersion1) | Bit(kVirtioNetFMrgRxbuf)});
  EXPECT_EQ(frontend_->protocol_features(), 0u);
  const std::vector<std::vector<uint8_t>> frames = Frames(300, 60, 1514);
  EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
}

TEST_F(ServerTest, EchoesFramesFilledInPlace) {
  Start();
  const std::vector<std::vector<uint8_t>> frames = Frames(300, 60, 9000);
  FillFrames fill{.frames = frames};
  std::vector<std::vector<uint8_t>> got;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (got.size() < frames.size() && absl::Now() < deadline) {
    absl::StatusOr<size_t> n = frontend_->SendFramesFrom(32, std::ref(fill));
    ASSERT_TRUE(n.ok()) << n.status();
    n = frontend_->ReceiveFrames(
        frames.size() - got.size(), absl::Milliseconds(100),
        [&](const ReceivedFrame& f) { got.emplace_back(f.data.begin(), f.data.end()); });
    ASSERT_TRUE(n.ok()) << n.status();
  }
  EXPECT_EQ(got, frames);
  EXPECT_EQ(plane_->frames_echoed(), 300u);
}

TEST_F(ServerTest, LargeFramesSpanSeveralMergeableBuffers) {
  Start({.queue_size = 256, .rx_buffer_size = 1526});
  const std::vector<std::vector<uint8_t>> frames = {Pattern(1515, 1), Pattern(9000, 2),
                                                    Pattern(65000, 3), Pattern(60, 4)};
  std::vector<uint16_t> buffers;
  EXPECT_EQ(RoundTrip(*frontend_, frames, &buffers), frames);
  // 12 + 1515 bytes need two 1526-byte buffers; 9012 need six; 65012 need 43.
  EXPECT_EQ(buffers, (std::vector<uint16_t>{2, 6, 43, 1}));
}

TEST_F(ServerTest, ChainShapes) {
  struct Shape {
    uint32_t rx_buffer_size;
    uint32_t rx_descriptors;
    bool rx_indirect;
    bool tx_header_separate;
    bool tx_indirect;
  };
  for (const Shape& shape :
       {Shape{4096, 1, false, true, false}, Shape{4096, 4, false, false, true},
        Shape{1526, 3, true, true, true}, Shape{2048, 2, true, false, false}}) {
    SCOPED_TRACE(::testing::Message() << shape.rx_buffer_size << "x" << shape.rx_descriptors);
    TearDown();
    stop_ = false;
    SetUp();
    Start({.rx_buffer_size = shape.rx_buffer_size,
           .rx_descriptors = shape.rx_descriptors,
           .rx_indirect = shape.rx_indirect,
           .tx_header_separate = shape.tx_header_separate,
           .tx_indirect = shape.tx_indirect});
    const std::vector<std::vector<uint8_t>> frames = Frames(100, 60, 9000);
    EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
  }
}

TEST_F(ServerTest, FramesCrossMemoryRegions) {
  Start({.memory_regions = 4});
  const std::vector<std::vector<uint8_t>> frames = Frames(500, 60, 9000);
  EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
}

TEST_F(ServerTest, ManyFramesThroughSmallRings) {
  Start({.queue_size = 32});
  const std::vector<std::vector<uint8_t>> frames = Frames(5000, 60, 1514);
  EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
  EXPECT_GT(frontend_->stats().tx_kicks, 0u);
  EXPECT_EQ(frontend_->stats().rx_frames, 5000u);
}

TEST_F(ServerTest, GetVringBaseStopsAndSetUpRestarts) {
  Start();
  const std::vector<std::vector<uint8_t>> frames = Frames(10, 60, 200);
  EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
  absl::StatusOr<uint32_t> base = frontend_->GetVringBase(kTxQueue);
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(*base, 10u);
  EXPECT_FALSE(plane_->running(kTxQueue));
  ASSERT_TRUE(frontend_->SetUpRing(kTxQueue).ok());
  ASSERT_TRUE(frontend_->EnableRing(kTxQueue, true).ok());
  EXPECT_TRUE(plane_->WaitRunning(5000));
  EXPECT_EQ(plane_->queue_starts(kTxQueue), 2u);
  EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
}

TEST_F(ServerTest, ServesTheNextFrontendAfterADisconnect) {
  Start();
  const std::vector<std::vector<uint8_t>> frames = Frames(20, 60, 1514);
  EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
  frontend_->Disconnect();
  // The same frontend, afresh.
  ASSERT_TRUE(frontend_->Connect(path_, absl::Seconds(5)).ok());
  ASSERT_TRUE(frontend_->Negotiate().ok());
  EXPECT_TRUE(plane_->WaitRunning(5000));
  EXPECT_EQ(RoundTrip(*frontend_, frames), frames);
  EXPECT_EQ(plane_->queue_starts(0), 2u);
}

TEST_F(ServerTest, HostileFrontendIsDroppedAndNextOneServed) {
  Start();
  // A header promising more payload than any request may carry.
  const vu::Header header{.request = static_cast<uint32_t>(vu::Request::kSetMemTable),
                          .flags = vu::kVersion,
                          .size = 0xffffffff};
  ASSERT_TRUE(frontend_->SendMessage(header, {}).ok());
  EXPECT_FALSE(frontend_->ReadReply().ok());  // The server hung up.
  frontend_->Disconnect();
  std::unique_ptr<Frontend> next = Connect();
  ASSERT_NE(next, nullptr);
  const std::vector<std::vector<uint8_t>> frames = Frames(20, 60, 1514);
  EXPECT_EQ(RoundTrip(*next, frames), frames);
  next->Disconnect();
}

// Frames numbered in bytes 14 to 17 (EtherType 0x88b5: not IP).
std::vector<uint8_t> NumberedFrame(uint32_t number, size_t size = 200) {
  std::vector<uint8_t> frame = Pattern(size, static_cast<uint8_t>(number));
  frame[12] = 0x88;
  frame[13] = 0xb5;
  std::memcpy(frame.data() + 14, &number, sizeof(number));
  return frame;
}

uint32_t NumberOf(absl::Span<const uint8_t> frame) {
  uint32_t number = 0;
  if (frame.size() >= 18) std::memcpy(&number, frame.data() + 14, sizeof(number));
  return number;
}

class LossTest : public ServerTest {
 protected:
  LossSpec Spec(const std::string& text, uint8_t filter = kFilterAll) {
    absl::StatusOr<LossSpec> spec = ParseLossSpec(text, filter);
    EXPECT_TRUE(spec.ok()) << spec.status();
    return spec.value_or(LossSpec());
  }

  // Sends frames 1..count, a few at a time, and returns the numbers of those
  // that came back, in order, once nothing more arrives for 300 ms.
  std::vector<uint32_t> Exchange(uint32_t count, size_t batch = 4) {
    std::vector<uint32_t> got;
    const auto on_frame = [&](const ReceivedFrame& f) { got.push_back(NumberOf(f.data)); };
    uint32_t next = 1;
    absl::Time idle_since = absl::Now();
    while (absl::Now() - idle_since < absl::Milliseconds(300)) {
      std::vector<std::vector<uint8_t>> frames;
      while (next <= count && frames.size() < batch) frames.push_back(NumberedFrame(next++));
      std::vector<absl::Span<const uint8_t>> spans(frames.begin(), frames.end());
      // Also lets held frames that are due go (an empty batch too).
      absl::StatusOr<size_t> sent = frontend_->SendFrames(spans);
      EXPECT_TRUE(sent.ok()) << sent.status();
      if (!sent.ok()) break;
      EXPECT_EQ(*sent, frames.size());
      absl::StatusOr<size_t> n = frontend_->ReceiveFrames(1000, absl::Milliseconds(20), on_frame);
      EXPECT_TRUE(n.ok()) << n.status();
      if (!n.ok()) break;
      if (*n > 0 || !frames.empty()) idle_since = absl::Now();
    }
    return got;
  }

  // 1..count without `missing`.
  static std::vector<uint32_t> AllBut(uint32_t count, std::vector<uint32_t> missing) {
    std::vector<uint32_t> out;
    for (uint32_t i = 1; i <= count; ++i) {
      if (std::find(missing.begin(), missing.end(), i) == missing.end()) out.push_back(i);
    }
    return out;
  }
};

TEST_F(LossTest, DeterministicLossEachWay) {
  for (const bool to_backend : {true, false}) {
    SCOPED_TRACE(to_backend ? "to the backend" : "to the guest");
    TearDown();
    stop_ = false;
    SetUp();
    FrontendOptions options;
    (to_backend ? options.loss_to_backend : options.loss_to_guest) =
        Spec("nth:3,burst:10:3,every:25");
    Start(options);
    EXPECT_EQ(Exchange(60), AllBut(60, {3, 10, 11, 12, 25, 50}));
    const LossCounters& c =
        frontend_->loss_counters(to_backend ? Direction::kToBackend : Direction::kToGuest);
    EXPECT_EQ(c.frames, 60u);
    EXPECT_EQ(c.dropped, 6u);
    EXPECT_EQ(c.dropped_nth, 1u);
    EXPECT_EQ(c.dropped_burst, 3u);
    EXPECT_EQ(c.dropped_every, 2u);
    EXPECT_EQ(
        frontend_->loss_counters(to_backend ? Direction::kToGuest : Direction::kToBackend).frames,
        0u);
    // What the echo saw: everything, or all but what was lost on the way.
    EXPECT_EQ(plane_->frames_echoed(), to_backend ? 54u : 60u);
    EXPECT_EQ(frontend_->stats().rx_frames, 54u);
  }
}

TEST_F(LossTest, ReorderEachWay) {
  for (const bool to_backend : {true, false}) {
    SCOPED_TRACE(to_backend ? "to the backend" : "to the guest");
    TearDown();
    stop_ = false;
    SetUp();
    FrontendOptions options;
    options.reorder_timeout = absl::Milliseconds(50);
    // Frame 5 waits for three more; frame 18 for five, of which only two come.
    (to_backend ? options.loss_to_backend : options.loss_to_guest) =
        Spec("reorder:5:3,reorder:18:5");
    Start(options);
    const std::vector<uint32_t> got = Exchange(20, 1);
    EXPECT_EQ(got, (std::vector<uint32_t>{1,  2,  3,  4,  6,  7,  8,  5,  9,  10,
                                          11, 12, 13, 14, 15, 16, 17, 19, 20, 18}));
    const LossCounters& c =
        frontend_->loss_counters(to_backend ? Direction::kToBackend : Direction::kToGuest);
    EXPECT_EQ(c.held, 2u);
    EXPECT_EQ(c.released_by_count, 1u);
    EXPECT_EQ(c.released_by_timeout, 1u);
    EXPECT_EQ(c.dropped, 0u);
    EXPECT_EQ(frontend_->next_release(), absl::InfiniteFuture());
  }
}

TEST_F(LossTest, SeededRandomLossDropsWhatTheInjectorPicks) {
  FrontendOptions options;
  options.loss_to_backend = Spec("random:0.1:seed=3");
  options.loss_to_guest = Spec("random:0.1:seed=4");
  Start(options);
  const std::vector<uint32_t> got = Exchange(500, 16);
  // The same draws, replayed: which frames each direction lost.
  LossInjector to_backend(options.loss_to_backend), to_guest(options.loss_to_guest);
  std::vector<uint32_t> expected;
  for (uint32_t i = 1; i <= 500; ++i) {
    if (to_backend.Next(kFrameNonIp).action == LossInjector::Action::kDrop) continue;
    if (to_guest.Next(kFrameNonIp).action == LossInjector::Action::kDrop) continue;
    expected.push_back(i);
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(frontend_->loss_counters(Direction::kToBackend).dropped, to_backend.counters().dropped);
  EXPECT_GT(to_backend.counters().dropped, 25u);
  EXPECT_LT(to_backend.counters().dropped, 80u);
}

TEST_F(LossTest, TheFilterSparesOtherFrames) {
  FrontendOptions options;
  options.loss_to_backend = Spec("every:1", kFilterTcp);
  Start(options);
  EXPECT_EQ(Exchange(30), AllBut(30, {}));
  EXPECT_EQ(frontend_->loss_counters(Direction::kToBackend).frames, 0u);
  // TCP frames are lost, every one.
  const std::vector<uint8_t> tcp = TcpFrame(100);
  const absl::Span<const uint8_t> frames[] = {tcp, tcp};
  EXPECT_EQ(*frontend_->SendFrames(frames), 2u);
  EXPECT_EQ(Exchange(0), (std::vector<uint32_t>{}));
  EXPECT_EQ(frontend_->loss_counters(Direction::kToBackend).dropped, 2u);
}

TEST_F(ServerTest, RefusedRequestFailsWithReplyAck) {
  Start();
  // A ring size that is not a power of two: refused, and REPLY_ACK says so.
  const vu::VringState state{kTxQueue, 100};
  ASSERT_TRUE(frontend_
                  ->SendRequest(
                      vu::Request::kSetVringNum,
                      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&state), sizeof(state)),
                      {}, /*need_reply=*/true)
                  .ok());
  absl::StatusOr<vu::Message> ack = frontend_->ReadReply();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_NE(*ack->PayloadAs<uint64_t>(), 0u);
}

}  // namespace
}  // namespace vunet::vu_frontend
