#include "vu/device.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "virtio/dirty_log.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"
#include "vu/message.h"

namespace vunet::vu {
namespace {

using virtio::testing::DriverMemory;
using virtio::testing::DriverQueue;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kAllFeatures = Device::kOfferedFeatures;
constexpr uint64_t kAllProtocolFeatures = Device::kOfferedProtocolFeatures;

// Records what the device hands over, and pops with the queue it got.
class FakeDataPlane : public DataPlane {
 public:
  void OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) override {
    EXPECT_EQ(queues.count(index), 0u) << "queue " << index << " started twice";
    EXPECT_TRUE(vq->started());
    EXPECT_GE(kick_fd, 0);
    queues[index] = vq;
    kick_fds[index] = kick_fd;
    events.push_back("start " + std::to_string(index));
  }
  void OnQueueStop(uint32_t index) override {
    EXPECT_EQ(queues.count(index), 1u) << "queue " << index << " stopped but not running";
    // What the queue uses must still be there when we are told to stop.
    EXPECT_TRUE(queues[index]->started());
    EXPECT_NE(fcntl(kick_fds[index], F_GETFD), -1);
    queues.erase(index);
    kick_fds.erase(index);
    events.push_back("stop " + std::to_string(index));
  }
  absl::Status BeginStateTransfer(StateDirection direction, UniqueFd fd) override {
    events.push_back(direction == StateDirection::kSave ? "save" : "load");
    transfer_fd = std::move(fd);
    return begin_result;
  }
  absl::Status CheckStateTransfer() override {
    events.push_back("check");
    return check_result;
  }
  std::string Events() {
    std::string all;
    for (const std::string& e : events) all += (all.empty() ? "" : ", ") + e;
    events.clear();
    return all;
  }

  std::map<uint32_t, virtio::Virtqueue*> queues;
  std::map<uint32_t, int> kick_fds;
  std::vector<std::string> events;
  UniqueFd transfer_fd;
  absl::Status begin_result;
  absl::Status check_result;
};

UniqueFd EventFd() { return UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }
bool IsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

class DeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = DriverMemory::Create(16 * kMiB, 2).value();
    device_ = std::make_unique<Device>(&data_plane_);
  }

  // Sends a request; returns its reply (nullopt if none). Fails the test if
  // the device drops the connection.
  template <typename T>
  std::optional<Message> Send(Request r, const T& payload, std::vector<UniqueFd> fds = {},
                              uint32_t flags = kFlagNeedReply) {
    Message m;
    m.header = {.request = static_cast<uint32_t>(r), .flags = kVersion | flags, .size = 0};
    m.SetPayload(payload);
    for (UniqueFd& fd : fds) m.fds.push_back(std::move(fd));
    absl::StatusOr<std::optional<Message>> reply = device_->Handle(m);
    EXPECT_TRUE(reply.ok()) << reply.status();
    if (!reply.ok()) return std::nullopt;
    return std::move(*reply);
  }
  std::optional<Message> SendEmpty(Request r, uint32_t flags = kFlagNeedReply) {
    Message m;
    m.header = {.request = static_cast<uint32_t>(r), .flags = kVersion | flags, .size = 0};
    absl::StatusOr<std::optional<Message>> reply = device_->Handle(m);
    EXPECT_TRUE(reply.ok()) << reply.status();
    if (!reply.ok()) return std::nullopt;
    return std::move(*reply);
  }
  // The u64 a reply carries; UINT64_MAX if there was none.
  static uint64_t U64(const std::optional<Message>& reply) {
    if (!reply.has_value()) return UINT64_MAX;
    EXPECT_EQ(reply->header.flags, kVersion | kFlagReply);
    EXPECT_EQ(reply->header.size, 8u);
    return reply->PayloadAs<uint64_t>().value();
  }
  // Sends and expects an acknowledgement: true for success.
  template <typename T>
  bool Ack(Request r, const T& payload, std::vector<UniqueFd> fds = {}) {
    const uint64_t v = U64(Send(r, payload, std::move(fds)));
    EXPECT_TRUE(v == 0 || v == 1) << RequestName(static_cast<uint32_t>(r)) << " got " << v;
    return v == 0;
  }

  void Negotiate(uint64_t features = kAllFeatures,
                 uint64_t protocol_features = kAllProtocolFeatures) {
    ASSERT_EQ(U64(SendEmpty(Request::kGetFeatures)), kAllFeatures);
    ASSERT_EQ(U64(SendEmpty(Request::kGetProtocolFeatures)), device_->offered_protocol_features());
    ASSERT_FALSE(Send(Request::kSetProtocolFeatures, protocol_features, {}, 0).has_value());
    const bool acks = protocol_features & (1ull << kProtocolFReplyAck);
    ASSERT_EQ(SendEmpty(Request::kSetOwner).has_value(), acks);
    Send(Request::kSetFeatures, features, {}, 0);
    ASSERT_TRUE(device_->last_status().ok()) << device_->last_status();
  }

  UniqueFd MemFd() const { return UniqueFd(fcntl(memory_->fd(), F_DUPFD_CLOEXEC, 0)); }

  // The memory table of memory_, as a frontend sends it.
  Message MemTableMessage(const std::vector<MemoryRegion>& regions) {
    MemoryTable table{};
    table.nregions = static_cast<uint32_t>(regions.size());
    for (size_t i = 0; i < regions.size(); ++i) table.regions[i] = regions[i];
    Message m;
    m.header = {.request = static_cast<uint32_t>(Request::kSetMemTable),
                .flags = kVersion | kFlagNeedReply,
                .size = static_cast<uint32_t>(8 + 32 * regions.size())};
    std::memcpy(m.payload, &table, m.header.size);
    for (size_t i = 0; i < regions.size(); ++i) m.fds.push_back(MemFd());
    return m;
  }
  bool SendMemTable(const std::vector<MemoryRegion>& regions) {
    Message m = MemTableMessage(regions);
    absl::StatusOr<std::optional<Message>> reply = device_->Handle(m);
    EXPECT_TRUE(reply.ok());
    return reply.ok() && U64(*reply) == 0;
  }
  bool SendMemTable() { return SendMemTable(memory_->regions()); }

  uint64_t Uva(uint64_t gpa) const {
    for (const MemoryRegion& r : memory_->regions()) {
      if (gpa - r.guest_phys_addr < r.size) return r.user_addr + (gpa - r.guest_phys_addr);
    }
    ADD_FAILURE() << "gpa " << gpa << " not in memory";
    return 0;
  }
  VringAddr Addr(uint32_t index, const DriverQueue& q, uint32_t flags = 0) const {
    return {.index = index,
            .flags = flags,
            .desc_user_addr = Uva(q.desc_gpa()),
            .used_user_addr = Uva(q.used_gpa()),
            .avail_user_addr = Uva(q.avail_gpa()),
            .log_guest_addr = q.used_gpa()};
  }

  // Everything a ring needs but enabling; the kick comes last, as QEMU sends it.
  void SetUpRing(uint32_t index, const DriverQueue& q, uint32_t addr_flags = 0) {
    ASSERT_TRUE(Ack(Request::kSetVringNum, VringState{index, q.size()}));
    ASSERT_TRUE(Ack(Request::kSetVringBase, VringState{index, 0}));
    ASSERT_TRUE(Ack(Request::kSetVringAddr, Addr(index, q, addr_flags)));
    std::vector<UniqueFd> call;
    call.push_back(EventFd());
    ASSERT_TRUE(Ack(Request::kSetVringCall, uint64_t{index}, std::move(call)));
    std::vector<UniqueFd> kick;
    kick.push_back(EventFd());
    ASSERT_TRUE(Ack(Request::kSetVringKick, uint64_t{index}, std::move(kick)));
  }

  // A device with both rings running.
  void StartBoth() {
    Negotiate();
    ASSERT_TRUE(SendMemTable());
    rx_ = std::make_unique<DriverQueue>(memory_.get(), 256, true);
    tx_ = std::make_unique<DriverQueue>(memory_.get(), 256, true);
    SetUpRing(0, *rx_);
    SetUpRing(1, *tx_);
    ASSERT_TRUE(Ack(Request::kSetVringEnable, VringState{0, 1}));
    ASSERT_TRUE(Ack(Request::kSetVringEnable, VringState{1, 1}));
    ASSERT_EQ(data_plane_.Events(), "start 0, start 1");
  }

  FakeDataPlane data_plane_;
  std::unique_ptr<DriverMemory> memory_;
  std::unique_ptr<Device> device_;
  std::unique_ptr<DriverQueue> rx_;
  std::unique_ptr<DriverQueue> tx_;
};

TEST_F(DeviceTest, OffersFeaturesAndProtocolFeatures) {
  EXPECT_EQ(U64(SendEmpty(Request::kGetFeatures)), kAllFeatures);
  EXPECT_EQ(kAllFeatures, (1ull << 32) | (1ull << 30) | (1ull << 29) | (1ull << 28) | (1ull << 26) |
                              (1ull << 15) | (1ull << 1) | (1ull << 0));
  EXPECT_EQ(U64(SendEmpty(Request::kGetProtocolFeatures)),
            (1ull << 3) | (1ull << 15) | (1ull << 1) | (1ull << 16) | (1ull << 2));
  EXPECT_EQ(U64(SendEmpty(Request::kGetQueueNum)), 1u);
  EXPECT_EQ(U64(SendEmpty(Request::kGetMaxMemSlots)), virtio::GuestMemory::kMaxRegions);
}

TEST_F(DeviceTest, UnsupportedRequestWithItsOwnReplyDropsTheConnection) {
  Negotiate();
  // GET_CONFIG's reply is a config space we do not have: the frontend would
  // wait for it forever, so the device asks for the connection to go.
  Message m;
  m.header = {.request = static_cast<uint32_t>(Request::kGetConfig),
              .flags = kVersion | kFlagNeedReply,
              .size = 0};
  m.SetPayload(DeviceConfigSpace{.offset = 0, .size = 8});
  EXPECT_EQ(device_->Handle(m).status().code(), absl::StatusCode::kUnimplemented);
  // An unsupported request without a reply of its own is only refused.
  EXPECT_EQ(U64(Send(Request::kNetSetMtu, uint64_t{1500})), 1u);
}

TEST_F(DeviceTest, RefusesFeaturesNeverOffered) {
  Negotiate();
  EXPECT_FALSE(Ack(Request::kSetFeatures, kAllFeatures | (1ull << 5)));
  EXPECT_EQ(device_->acked_features(), kAllFeatures);
  EXPECT_FALSE(Ack(Request::kSetProtocolFeatures, uint64_t{1} << kProtocolFMq));
  EXPECT_TRUE(Ack(Request::kSetFeatures, uint64_t{1} << 32));
  EXPECT_EQ(device_->acked_features(), uint64_t{1} << 32);
}

TEST_F(DeviceTest, OffloadsAreOfferedOnlyWhenTheDataPlaneTakesThem) {
  // The default device offers no segmentation offload, and refuses one.
  Negotiate();
  EXPECT_EQ(U64(SendEmpty(Request::kGetFeatures)) & Device::kOffloadFeatures, 0u);
  EXPECT_FALSE(Ack(Request::kSetFeatures, kAllFeatures | (1ull << virtio::kVirtioNetFHostTso4)));
  // One built with them offers them (and nothing else it was asked for).
  FakeDataPlane other;
  Device device(&other, {.offloads = Device::kOffloadFeatures | (1ull << 5)});
  EXPECT_EQ(device.offered_features(), kAllFeatures | Device::kOffloadFeatures);
  EXPECT_EQ(Device::kOffloadFeatures, (1ull << 56) | (1ull << 55) | (1ull << 54) | (1ull << 13) |
                                          (1ull << 12) | (1ull << 11) | (1ull << 9) | (1ull << 8) |
                                          (1ull << 7));
  Message m;
  m.header = {
      .request = static_cast<uint32_t>(Request::kGetFeatures), .flags = kVersion, .size = 0};
  absl::StatusOr<std::optional<Message>> reply = device.Handle(m);
  ASSERT_TRUE(reply.ok() && reply->has_value());
  EXPECT_EQ((*reply)->PayloadAs<uint64_t>().value(), kAllFeatures | Device::kOffloadFeatures);
  // A driver may take any part of them.
  Message set;
  set.header = {
      .request = static_cast<uint32_t>(Request::kSetFeatures), .flags = kVersion, .size = 0};
  set.SetPayload(kAllFeatures | (1ull << virtio::kVirtioNetFHostTso6));
  ASSERT_TRUE(device.Handle(set).ok());
  EXPECT_TRUE(device.last_status().ok()) << device.last_status();
  EXPECT_EQ(device.acked_features(), kAllFeatures | (1ull << virtio::kVirtioNetFHostTso6));
}

TEST_F(DeviceTest, AcknowledgesOnlyWhenNegotiatedAndAsked) {
  // Before REPLY_ACK: no acknowledgement even when asked.
  EXPECT_FALSE(SendEmpty(Request::kSetOwner).has_value());
  // The request that negotiates REPLY_ACK is acknowledged itself.
  EXPECT_EQ(U64(Send(Request::kSetProtocolFeatures, kAllProtocolFeatures)), 0u);
  // After: when asked.
  EXPECT_EQ(U64(SendEmpty(Request::kSetOwner)), 0u);
  EXPECT_FALSE(SendEmpty(Request::kSetOwner, 0).has_value());
  // And failure is 1.
  EXPECT_EQ(U64(Send(Request::kSetVringNum, VringState{0, 3})), 1u);
  EXPECT_FALSE(Send(Request::kSetVringNum, VringState{0, 3}, {}, 0).has_value());
  EXPECT_FALSE(device_->last_status().ok());
}

TEST_F(DeviceTest, RingRunsOnKickWithoutProtocolFeatures) {
  Send(Request::kSetFeatures, uint64_t{1} << 32, {}, 0);
  Message table = MemTableMessage(memory_->regions());
  ASSERT_TRUE(device_->Handle(table).ok());
  ASSERT_TRUE(device_->last_status().ok()) << device_->last_status();
  DriverQueue q(memory_.get(), 64);
  Send(Request::kSetVringNum, VringState{1, 64}, {}, 0);
  Send(Request::kSetVringAddr, Addr(1, q), {}, 0);
  ASSERT_TRUE(device_->last_status().ok()) << device_->last_status();
  EXPECT_EQ(data_plane_.Events(), "");
  std::vector<UniqueFd> kick;
  kick.push_back(EventFd());
  Send(Request::kSetVringKick, uint64_t{1}, std::move(kick), 0);
  EXPECT_EQ(data_plane_.Events(), "start 1");
  EXPECT_TRUE(device_->running(1));
  EXPECT_FALSE(device_->running(0));
}

TEST_F(DeviceTest, FullSessionHandsWorkingQueuesToTheDataPlane) {
  StartBoth();
  // The data plane pops what the driver made available, through the vq the
  // device handed over.
  const uint64_t buf = memory_->Alloc(1500).value();
  const uint16_t head = *tx_->AddChain({{buf, 1500, false}});
  tx_->Publish();
  virtio::Virtqueue* vq = data_plane_.queues.at(1);
  EXPECT_NE(vq->call_fd(), -1);
  iovec out[4];
  virtio::VirtqElement elem;
  absl::StatusOr<bool> popped = vq->Pop(&elem, nullptr, 0, out, 4);
  ASSERT_TRUE(popped.ok() && *popped) << popped.status();
  EXPECT_EQ(elem.index, head);
  vq->Push(elem, 0);
  EXPECT_TRUE(tx_->PopUsed().has_value());
  EXPECT_TRUE(vq->Notify());

  // GET_VRING_BASE stops the ring and reports where it stopped.
  std::optional<Message> base = Send(Request::kGetVringBase, VringState{1, 0}, {}, 0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->header.size, sizeof(VringState));
  EXPECT_EQ(base->PayloadAs<VringState>()->index, 1u);
  EXPECT_EQ(base->PayloadAs<VringState>()->num, 1u);
  EXPECT_EQ(data_plane_.Events(), "stop 1");
  EXPECT_FALSE(device_->running(1));

  // Restart where it stopped.
  ASSERT_TRUE(Ack(Request::kSetVringBase, VringState{1, 1}));
  std::vector<UniqueFd> kick;
  kick.push_back(EventFd());
  ASSERT_TRUE(Ack(Request::kSetVringKick, uint64_t{1}, std::move(kick)));
  EXPECT_EQ(data_plane_.Events(), "start 1");
  EXPECT_EQ(data_plane_.queues.at(1)->last_avail_idx(), 1u);
}

TEST_F(DeviceTest, WithProtocolFeaturesRingsWaitForEnable) {
  Negotiate();
  ASSERT_TRUE(SendMemTable());
  DriverQueue q(memory_.get(), 256);
  SetUpRing(0, q);
  EXPECT_EQ(data_plane_.Events(), "");
  ASSERT_TRUE(Ack(Request::kSetVringEnable, VringState{0, 1}));
  EXPECT_EQ(data_plane_.Events(), "start 0");
  ASSERT_TRUE(Ack(Request::kSetVringEnable, VringState{0, 0}));
  EXPECT_EQ(data_plane_.Events(), "stop 0");
  EXPECT_FALSE(Ack(Request::kSetVringEnable, VringState{0, 2}));
  ASSERT_TRUE(Ack(Request::kSetVringEnable, VringState{0, 1}));
  EXPECT_EQ(data_plane_.Events(), "start 0");
}

TEST_F(DeviceTest, RingsBeforeMemoryAreRefused) {
  Negotiate();
  DriverQueue q(memory_.get(), 256);
  ASSERT_TRUE(Ack(Request::kSetVringNum, VringState{0, 256}));
  EXPECT_FALSE(Ack(Request::kSetVringAddr, Addr(0, q)));
  EXPECT_NE(device_->last_status().message().find("before any memory table"), std::string::npos);
  // A kick before memory is accepted but nothing runs.
  std::vector<UniqueFd> kick;
  kick.push_back(EventFd());
  EXPECT_TRUE(Ack(Request::kSetVringKick, uint64_t{0}, std::move(kick)));
  EXPECT_TRUE(Ack(Request::kSetVringEnable, VringState{0, 1}));
  EXPECT_EQ(data_plane_.Events(), "");
  // Then memory and addresses: it runs.
  ASSERT_TRUE(SendMemTable());
  EXPECT_TRUE(Ack(Request::kSetVringAddr, Addr(0, q)));
  EXPECT_EQ(data_plane_.Events(), "start 0");
}

TEST_F(DeviceTest, AddressesBeforeSizeAreRefused) {
  Negotiate();
  ASSERT_TRUE(SendMemTable());
  DriverQueue q(memory_.get(), 256);
  EXPECT_FALSE(Ack(Request::kSetVringAddr, Addr(0, q)));
}

TEST_F(DeviceTest, RingAddressesOutsideMemoryAreRefused) {
  Negotiate();
  ASSERT_TRUE(SendMemTable());
  ASSERT_TRUE(Ack(Request::kSetVringNum, VringState{0, 256}));
  const MemoryRegion& last = memory_->regions().back();
  const uint64_t end = last.user_addr + last.size;
  const uint64_t ok = memory_->regions()[0].user_addr;
  struct Case {
    uint64_t desc, avail, used;
  };
  const Case cases[] = {
      {end, ok + 4096, ok + 8192},                 // Descriptor table past the end.
      {end - 16 * 128, ok + 4096, ok + 8192},      // ...straddling the end.
      {ok, end - 64, ok + 8192},                   // Avail ring straddling the end.
      {ok, ok + 4096, end - 1024},                 // Used ring straddling the end.
      {ok - 4096, ok + 4096, ok + 8192},           // Before the start.
      {0xfffffffffffff000, ok + 4096, ok + 8192},  // Would wrap.
      {ok + 1, ok + 4096, ok + 8192},              // Misaligned.
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(Ack(Request::kSetVringAddr, VringAddr{.index = 0,
                                                       .desc_user_addr = c.desc,
                                                       .used_user_addr = c.used,
                                                       .avail_user_addr = c.avail}))
        << std::hex << c.desc << " " << c.avail << " " << c.used;
  }
  // A ring crossing from one region into the next is refused too: each part
  // must be contiguous in our mapping.
  const uint64_t boundary = memory_->regions()[1].user_addr;
  EXPECT_FALSE(Ack(Request::kSetVringAddr, VringAddr{.index = 0,
                                                     .desc_user_addr = boundary - 2048,
                                                     .used_user_addr = ok + 8192,
                                                     .avail_user_addr = ok + 4096}));
}

TEST_F(DeviceTest, BadQueueSizesAreRefused) {
  Negotiate();
  for (uint32_t num : {0u, 3u, 100u, 65536u, 32768u * 2, 0xffffffffu}) {
    EXPECT_FALSE(Ack(Request::kSetVringNum, VringState{0, num})) << num;
  }
  for (uint32_t num : {1u, 2u, 256u, 32768u}) {
    EXPECT_TRUE(Ack(Request::kSetVringNum, VringState{0, num})) << num;
  }
  EXPECT_FALSE(Ack(Request::kSetVringBase, VringState{0, 0x10000}));
}

TEST_F(DeviceTest, QueuesThatDoNotExistAreRefused) {
  Negotiate();
  EXPECT_FALSE(Ack(Request::kSetVringNum, VringState{2, 256}));
  EXPECT_FALSE(Ack(Request::kSetVringEnable, VringState{0xffffffff, 1}));
  std::vector<UniqueFd> kick;
  kick.push_back(EventFd());
  const int kick_fd = kick.back().get();
  EXPECT_FALSE(Ack(Request::kSetVringKick, uint64_t{7}, std::move(kick)));
  EXPECT_FALSE(IsOpen(kick_fd));
  // GET_VRING_BASE must be answered; for a queue that does not exist there is
  // no answer, so the connection goes.
  Message m;
  m.header = {.request = static_cast<uint32_t>(Request::kGetVringBase), .flags = kVersion};
  m.SetPayload(VringState{5, 0});
  EXPECT_FALSE(device_->Handle(m).ok());
}

TEST_F(DeviceTest, SizeDisagreeingWithTheRequestFails) {
  Negotiate();
  Message m;
  m.header = {.request = static_cast<uint32_t>(Request::kSetFeatures),
              .flags = kVersion | kFlagNeedReply,
              .size = 4};
  EXPECT_EQ(U64(device_->Handle(m).value()), 1u);
  m.header.size = 16;
  EXPECT_EQ(U64(device_->Handle(m).value()), 1u);
  // A getter with a payload cannot be answered sensibly.
  m.header = {
      .request = static_cast<uint32_t>(Request::kGetFeatures), .flags = kVersion, .size = 8};
  EXPECT_FALSE(device_->Handle(m).ok());
}

TEST_F(DeviceTest, MissingAndSurplusFds) {
  Negotiate();
  EXPECT_FALSE(Ack(Request::kSetVringKick, uint64_t{0}));                   // No fd, no no-fd bit.
  EXPECT_FALSE(Ack(Request::kSetVringKick, uint64_t{0} | kVringNoFdMask));  // Polling.
  std::vector<UniqueFd> fds;
  fds.push_back(EventFd());
  fds.push_back(EventFd());
  fds.push_back(EventFd());
  const int kept = fds[0].get();
  const int surplus = fds[2].get();
  EXPECT_TRUE(Ack(Request::kSetVringCall, uint64_t{0}, std::move(fds)));
  EXPECT_TRUE(IsOpen(kept));  // Held as queue 0's call fd.
  EXPECT_FALSE(IsOpen(surplus));
  // Replacing the call fd closes the old one.
  std::vector<UniqueFd> none;
  EXPECT_TRUE(Ack(Request::kSetVringCall, uint64_t{0} | kVringNoFdMask, std::move(none)));
  EXPECT_FALSE(IsOpen(kept));
  // A memory table with fewer fds than regions.
  Message table = MemTableMessage(memory_->regions());
  table.fds.pop_back();
  EXPECT_EQ(U64(device_->Handle(table).value()), 1u);
  EXPECT_EQ(device_->memory().region_count(), 0u);
}

TEST_F(DeviceTest, BadMemoryRegionsAreRefusedAndTheOldTableKept) {
  Negotiate();
  ASSERT_TRUE(SendMemTable());
  const std::vector<MemoryRegion> good = memory_->regions();
  const MemoryRegion r0 = good[0];
  const MemoryRegion r1 = good[1];
  std::vector<std::vector<MemoryRegion>> bad = {
      {r0,
       {.guest_phys_addr = r0.guest_phys_addr + 4096,
        .size = r1.size,
        .user_addr = r1.user_addr,
        .mmap_offset = r1.mmap_offset}},  // gpa overlap.
      {r0,
       {.guest_phys_addr = r1.guest_phys_addr,
        .size = r1.size,
        .user_addr = r0.user_addr,
        .mmap_offset = r1.mmap_offset}},                                            // uva overlap.
      {{.guest_phys_addr = 0, .size = 0, .user_addr = r0.user_addr}},               // Zero size.
      {{.guest_phys_addr = UINT64_MAX - 4095, .size = 8192, .user_addr = 0x1000}},  // Overflow.
      {{.guest_phys_addr = 0, .size = 4096, .user_addr = UINT64_MAX - 10}},         // Overflow.
      {{.guest_phys_addr = 0,
        .size = 4096,
        .user_addr = 0x1000,
        .mmap_offset = UINT64_MAX - 100}},                               // Overflow.
      {{.guest_phys_addr = 0, .size = 64 * kMiB, .user_addr = 0x1000}},  // Past the fd's end.
      {{.guest_phys_addr = 0,
        .size = 4096,
        .user_addr = 0x1000,
        .mmap_offset = 16 * kMiB}},  // Likewise.
  };
  for (const auto& regions : bad) {
    EXPECT_FALSE(SendMemTable(regions))
        << regions.size() << " regions, first size " << regions[0].size;
    EXPECT_EQ(device_->memory().regions(), good);
  }
  // An fd that cannot be mapped at all.
  Message m = MemTableMessage({r0});
  m.fds[0] = EventFd();
  EXPECT_EQ(U64(device_->Handle(m).value()), 1u);
  EXPECT_EQ(device_->memory().regions(), good);
}

TEST_F(DeviceTest, NewMemoryTableStopsRingsFirstAndRestartsThem) {
  StartBoth();
  // The same memory again (QEMU resends the table on hotplug): both rings
  // stop before the old mapping goes, and start again in the new one.
  ASSERT_TRUE(SendMemTable());
  EXPECT_EQ(data_plane_.Events(), "stop 0, stop 1, start 0, start 1");
  // A table without the rings' memory: they stop and stay stopped.
  const MemoryRegion r1 = memory_->regions()[1];
  ASSERT_TRUE(SendMemTable({r1}));
  EXPECT_EQ(data_plane_.Events(), "stop 0, stop 1");
}

TEST_F(DeviceTest, MemorySlotsAddAndRemove) {
  Negotiate();
  const MemoryRegion r0 = memory_->regions()[0];
  const MemoryRegion r1 = memory_->regions()[1];
  // One fd per request, each in a vector of its own (a moved-from one is
  // not reused).
  auto one_fd = [](UniqueFd f) {
    std::vector<UniqueFd> v;
    v.push_back(std::move(f));
    return v;
  };
  ASSERT_TRUE(Ack(Request::kAddMemReg, SingleMemoryRegion{.region = r0}, one_fd(MemFd())));
  ASSERT_TRUE(Ack(Request::kAddMemReg, SingleMemoryRegion{.region = r1}, one_fd(MemFd())));
  EXPECT_EQ(device_->memory().region_count(), 2u);
  EXPECT_FALSE(Ack(Request::kAddMemReg, SingleMemoryRegion{.region = r1}, one_fd(MemFd())));

  rx_ = std::make_unique<DriverQueue>(memory_.get(), 256);  // In the first region.
  SetUpRing(0, *rx_);
  ASSERT_TRUE(Ack(Request::kSetVringEnable, VringState{0, 1}));
  EXPECT_EQ(data_plane_.Events(), "start 0");
  // Removing the other region restarts the ring; removing its own stops it.
  std::vector<UniqueFd> fd = one_fd(MemFd());  // QEMU sends an fd with REM_MEM_REG; it is closed.
  const int rem_fd = fd.back().get();
  ASSERT_TRUE(Ack(Request::kRemMemReg, SingleMemoryRegion{.region = r1}, std::move(fd)));
  EXPECT_FALSE(IsOpen(rem_fd));
  EXPECT_EQ(data_plane_.Events(), "stop 0, start 0");
  ASSERT_TRUE(Ack(Request::kRemMemReg, SingleMemoryRegion{.region = r0}));
  EXPECT_EQ(data_plane_.Events(), "stop 0");
  EXPECT_FALSE(Ack(Request::kRemMemReg, SingleMemoryRegion{.region = r0}));
}

TEST_F(DeviceTest, ReplacingTheCallFdRestartsTheRing) {
  StartBoth();
  const int old_call = data_plane_.queues.at(0)->call_fd();
  std::vector<UniqueFd> call;
  call.push_back(EventFd());
  const int new_call = call.back().get();
  ASSERT_TRUE(Ack(Request::kSetVringCall, uint64_t{0}, std::move(call)));
  EXPECT_EQ(data_plane_.Events(), "stop 0, start 0");
  EXPECT_EQ(data_plane_.queues.at(0)->call_fd(), new_call);
  EXPECT_FALSE(IsOpen(old_call));
}

TEST_F(DeviceTest, NotificationFdsMustBeEventFdsAndAreMadeNonBlocking) {
  Negotiate();
  // A pipe nobody drains would block the first write that fills it.
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  UniqueFd write_end(pipe_fds[1]);
  UniqueFd read_end(pipe_fds[0]);
  for (Request r : {Request::kSetVringCall, Request::kSetVringErr, Request::kSetVringKick}) {
    std::vector<UniqueFd> fds;
    fds.push_back(UniqueFd(dup(write_end.get())));
    EXPECT_FALSE(Ack(r, uint64_t{0}, std::move(fds))) << RequestName(static_cast<uint32_t>(r));
  }
  // A blocking eventfd becomes non-blocking, so a full counter cannot stall us.
  std::vector<UniqueFd> call;
  call.push_back(UniqueFd(eventfd(0, EFD_CLOEXEC)));
  const int fd = call.back().get();
  ASSERT_TRUE(Ack(Request::kSetVringCall, uint64_t{0}, std::move(call)));
  EXPECT_TRUE(fcntl(fd, F_GETFL) & O_NONBLOCK);
}

TEST_F(DeviceTest, UsedRingLogAddressThatWrapsIsRefused) {
  Negotiate();
  ASSERT_TRUE(SendMemTable());
  rx_ = std::make_unique<DriverQueue>(memory_.get(), 256);
  ASSERT_TRUE(Ack(Request::kSetVringNum, VringState{.index = 0, .num = 256}));
  VringAddr a = Addr(0, *rx_, kVringFLog);
  a.log_guest_addr = UINT64_MAX - 100;
  EXPECT_FALSE(Ack(Request::kSetVringAddr, a));
  a.log_guest_addr = 0x1000;
  EXPECT_TRUE(Ack(Request::kSetVringAddr, a));
}

TEST_F(DeviceTest, ResetOwnerStopsEverythingAndForgetsIt) {
  StartBoth();
  EXPECT_FALSE(SendEmpty(Request::kResetOwner, 0).has_value());
  EXPECT_EQ(data_plane_.Events(), "stop 0, stop 1");
  EXPECT_EQ(device_->memory().region_count(), 0u);
  EXPECT_EQ(device_->acked_features(), 0u);
  // A kick alone does not bring a ring back.
  std::vector<UniqueFd> kick;
  kick.push_back(EventFd());
  EXPECT_TRUE(Ack(Request::kSetVringKick, uint64_t{0}, std::move(kick)));
  EXPECT_EQ(data_plane_.Events(), "");
}

TEST_F(DeviceTest, DestroyingTheDeviceStopsItsQueues) {
  StartBoth();
  device_.reset();
  EXPECT_EQ(data_plane_.Events(), "stop 0, stop 1");
}

TEST_F(DeviceTest, StatusAndBrokenQueues) {
  StartBoth();
  EXPECT_TRUE(Ack(Request::kSetStatus, uint64_t{0xf}));
  EXPECT_EQ(U64(SendEmpty(Request::kGetStatus)), 0xfu);
  EXPECT_FALSE(Ack(Request::kSetStatus, uint64_t{0x100}));

  UniqueFd err = EventFd();
  std::vector<UniqueFd> fds;
  fds.push_back(UniqueFd(dup(err.get())));
  ASSERT_TRUE(Ack(Request::kSetVringErr, uint64_t{1}, std::move(fds)));
  // A hostile driver breaks the transmit queue.
  tx_->SetAvailIdx(1000);
  virtio::Virtqueue* vq = data_plane_.queues.at(1);
  EXPECT_TRUE(vq->IsEmpty());
  EXPECT_TRUE(vq->broken());
  device_->ReportBroken(1);
  EXPECT_EQ(data_plane_.Events(), "stop 1");
  EXPECT_EQ(U64(SendEmpty(Request::kGetStatus)), 0xfu | kStatusDeviceNeedsReset);
  eventfd_t value = 0;
  EXPECT_EQ(eventfd_read(err.get(), &value), 0);
  EXPECT_EQ(value, 1u);
  // It stays stopped whatever else changes, until the frontend restarts it.
  ASSERT_TRUE(Ack(Request::kSetVringEnable, VringState{1, 1}));
  EXPECT_EQ(data_plane_.Events(), "");
  device_->ReportBroken(99);  // Ignored.
  // The driver's reset clears the flag; the frontend restarts the ring.
  EXPECT_TRUE(Ack(Request::kSetStatus, uint64_t{0}));
  EXPECT_EQ(U64(SendEmpty(Request::kGetStatus)), 0u);
  Send(Request::kGetVringBase, VringState{1, 0}, {}, 0);
  tx_->SetAvailIdx(0);
  std::vector<UniqueFd> kick;
  kick.push_back(EventFd());
  ASSERT_TRUE(Ack(Request::kSetVringKick, uint64_t{1}, std::move(kick)));
  EXPECT_EQ(data_plane_.Events(), "start 1");
}

TEST_F(DeviceTest, DirtyLogCoversUsedRingAndBufferWrites) {
  Negotiate();
  ASSERT_TRUE(SendMemTable());
  const uint64_t log_bytes = memory_->size() / virtio::DirtyLog::kPageSize / 8;
  const int log_fd = memfd_create("log", MFD_CLOEXEC);
  ASSERT_GE(log_fd, 0);
  ASSERT_EQ(ftruncate(log_fd, log_bytes), 0);
  std::vector<UniqueFd> fds;
  fds.push_back(UniqueFd(log_fd));
  // SET_LOG_BASE has a reply of its own, asked for or not.
  EXPECT_EQ(U64(Send(Request::kSetLogBase, Log{.mmap_size = log_bytes, .mmap_offset = 0},
                     std::move(fds), 0)),
            0u);
  rx_ = std::make_unique<DriverQueue>(memory_.get(), 256, true);
  SetUpRing(0, *rx_, kVringFLog);
  ASSERT_TRUE(Ack(Request::kSetVringEnable, VringState{0, 1}));
  EXPECT_EQ(data_plane_.Events(), "start 0");
  // LOG_ALL was negotiated: the running queue logs.
  virtio::DirtyLog* log = device_->dirty_log();
  ASSERT_NE(log, nullptr);
  virtio::Virtqueue* vq = data_plane_.queues.at(0);
  EXPECT_EQ(vq->dirty_log(), log);

  const uint64_t buf = memory_->Alloc(64 * 1024, 4096).value();
  rx_->AddChain({{buf, 64 * 1024, true}});
  rx_->Publish();
  iovec in[4];
  virtio::VirtqElement elem;
  ASSERT_TRUE(vq->Pop(&elem, in, 4, nullptr, 0).value());
  vq->LogWrite(elem, 5000);
  vq->Push(elem, 5000);
  const uint64_t page = virtio::DirtyLog::kPageSize;
  EXPECT_TRUE(log->IsDirty(buf / page));
  EXPECT_TRUE(log->IsDirty(buf / page + 1));
  EXPECT_FALSE(log->IsDirty(buf / page + 2));
  EXPECT_TRUE(log->IsDirty(rx_->used_gpa() / page));

  // Logging off (features without LOG_ALL): the ring restarts without a log.
  Send(Request::kSetFeatures, kAllFeatures & ~(1ull << kVhostFLogAll), {}, 0);
  EXPECT_EQ(data_plane_.Events(), "stop 0, start 0");
  EXPECT_EQ(device_->dirty_log(), nullptr);
  EXPECT_EQ(data_plane_.queues.at(0)->dirty_log(), nullptr);
}

TEST_F(DeviceTest, BadLogsAreRefused) {
  Negotiate();
  const int small = memfd_create("log", MFD_CLOEXEC);
  ASSERT_EQ(ftruncate(small, 4096), 0);
  std::vector<UniqueFd> fds;
  fds.push_back(UniqueFd(small));
  EXPECT_EQ(U64(Send(Request::kSetLogBase, Log{.mmap_size = 8192}, std::move(fds), 0)), 1u);
  std::vector<UniqueFd> not_memory;
  not_memory.push_back(EventFd());
  EXPECT_EQ(U64(Send(Request::kSetLogBase, Log{.mmap_size = 4096}, std::move(not_memory), 0)), 1u);
  // Without its fd the request fails, but is still answered.
  EXPECT_EQ(U64(Send(Request::kSetLogBase, Log{.mmap_size = 4096}, {}, 0)), 1u);
  EXPECT_EQ(device_->dirty_log(), nullptr);
}

TEST_F(DeviceTest, LogFdIsTakenAndReplaced) {
  Negotiate();
  Message m;
  m.header = {.request = static_cast<uint32_t>(Request::kSetLogFd),
              .flags = kVersion | kFlagNeedReply};
  m.fds.push_back(EventFd());
  const int first = m.fds[0].get();
  EXPECT_EQ(U64(device_->Handle(m).value()), 0u);
  EXPECT_TRUE(IsOpen(first));
  m.fds.clear();
  EXPECT_EQ(U64(device_->Handle(m).value()), 1u);  // Missing fd.
  m.fds.push_back(EventFd());
  EXPECT_EQ(U64(device_->Handle(m).value()), 0u);
  EXPECT_FALSE(IsOpen(first));
}

TEST_F(DeviceTest, UnknownRequestsFailIfAskedAndAreIgnoredOtherwise) {
  Negotiate();
  Message m;
  m.header = {.request = 4711, .flags = kVersion | kFlagNeedReply, .size = 3};
  m.fds.push_back(EventFd());
  const int fd = m.fds[0].get();
  EXPECT_EQ(U64(device_->Handle(m).value()), 1u);
  m.header.flags = kVersion;
  EXPECT_FALSE(device_->Handle(m).value().has_value());
  m = Message();
  m.header = {.request = static_cast<uint32_t>(Request::kNetSetMtu), .flags = kVersion, .size = 8};
  EXPECT_FALSE(device_->Handle(m).value().has_value());
  EXPECT_EQ(device_->last_status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_FALSE(IsOpen(fd));
}

TEST_F(DeviceTest, SendRarpIsKeptForTheDataPlane) {
  Negotiate();
  const uint64_t mac = 0x665544332211;
  EXPECT_TRUE(Ack(Request::kSendRarp, mac));
  std::optional<std::array<uint8_t, 6>> got = device_->TakeRarpRequest();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ((*got)[0], 0x11);
  EXPECT_EQ((*got)[5], 0x66);
  EXPECT_FALSE(device_->TakeRarpRequest().has_value());
}

TEST_F(DeviceTest, FeatureChangesRestartRunningRings) {
  StartBoth();
  Send(Request::kSetFeatures, kAllFeatures, {}, 0);  // Same: nothing happens.
  EXPECT_EQ(data_plane_.Events(), "");
  Send(Request::kSetFeatures, kAllFeatures & ~(1ull << virtio::kVirtioRingFIndirectDesc), {}, 0);
  EXPECT_EQ(data_plane_.Events(), "stop 0, stop 1, start 0, start 1");
}

// A device whose data plane transfers state, negotiated like QEMU 10 does.
class DeviceStateTest : public DeviceTest {
 protected:
  void SetUp() override {
    memory_ = DriverMemory::Create(16 * kMiB, 2).value();
    device_ = std::make_unique<Device>(&data_plane_, Device::Options{.device_state = true});
  }
  static constexpr uint64_t kWithState = kAllProtocolFeatures | Device::kDeviceStateProtocolFeature;

  void NegotiateState() {
    ASSERT_EQ(U64(SendEmpty(Request::kGetProtocolFeatures)), kWithState);
    ASSERT_FALSE(Send(Request::kSetProtocolFeatures, kWithState, {}, 0).has_value());
    Send(Request::kSetFeatures, kAllFeatures, {}, 0);
    ASSERT_TRUE(device_->last_status().ok());
  }
  // SET_DEVICE_STATE_FD's reply; *other_end gets the pipe's other end.
  uint64_t SetStateFd(uint32_t direction, uint32_t phase = 0, UniqueFd* other_end = nullptr) {
    int p[2];
    EXPECT_EQ(pipe2(p, O_CLOEXEC), 0);
    // Save: the back-end writes and the frontend reads; load: the reverse.
    UniqueFd backend_end(direction == 0 ? p[1] : p[0]);
    UniqueFd frontend_end(direction == 0 ? p[0] : p[1]);
    std::vector<UniqueFd> fds;
    fds.push_back(std::move(backend_end));
    const uint64_t reply = U64(
        Send(Request::kSetDeviceStateFd, DeviceStateTransfer{direction, phase}, std::move(fds)));
    if (other_end != nullptr) *other_end = std::move(frontend_end);
    return reply;
  }
};

TEST_F(DeviceStateTest, OfferedOnlyWhenTheDataPlaneTransfersState) {
  EXPECT_EQ(U64(SendEmpty(Request::kGetProtocolFeatures)), kWithState);
  EXPECT_EQ(kWithState & ~kAllProtocolFeatures, 1ull << 19);
  // The plain device does not offer it, and refuses it when set.
  Device plain(&data_plane_);
  EXPECT_EQ(plain.offered_protocol_features(), kAllProtocolFeatures);
  Message m;
  m.header = {.request = static_cast<uint32_t>(Request::kSetProtocolFeatures),
              .flags = kVersion,
              .size = 0};
  m.SetPayload(kWithState);
  ASSERT_TRUE(plain.Handle(m).ok());
  EXPECT_FALSE(plain.last_status().ok());
}

TEST_F(DeviceStateTest, SaveAndCheckReachTheDataPlane) {
  NegotiateState();
  UniqueFd frontend_end;
  // Bit 8: no fd of ours; low byte 0: success.
  EXPECT_EQ(SetStateFd(0, 0, &frontend_end), 0x100u);
  EXPECT_EQ(data_plane_.Events(), "save");
  ASSERT_TRUE(data_plane_.transfer_fd.valid());
  // The data plane holds the write end: what it writes, the frontend reads.
  ASSERT_EQ(write(data_plane_.transfer_fd.get(), "state", 5), 5);
  data_plane_.transfer_fd.reset();
  char buf[8];
  EXPECT_EQ(read(frontend_end.get(), buf, sizeof(buf)), 5);
  EXPECT_EQ(U64(SendEmpty(Request::kCheckDeviceState)), 0u);
  EXPECT_EQ(data_plane_.Events(), "check");
}

TEST_F(DeviceStateTest, LoadFailureIsReportedByCheck) {
  NegotiateState();
  EXPECT_EQ(SetStateFd(1), 0x100u);
  data_plane_.check_result = absl::DataLossError("truncated");
  EXPECT_EQ(U64(SendEmpty(Request::kCheckDeviceState)), 1u);
  EXPECT_EQ(data_plane_.Events(), "load, check");
  // A second check has no transfer to look at.
  EXPECT_EQ(U64(SendEmpty(Request::kCheckDeviceState)), 1u);
  EXPECT_EQ(data_plane_.Events(), "");
}

TEST_F(DeviceStateTest, BadRequestsFailWithoutReachingTheDataPlane) {
  // Not negotiated.
  EXPECT_EQ(SetStateFd(0), 0x101u);
  NegotiateState();
  EXPECT_EQ(SetStateFd(2), 0x101u);     // No such direction.
  EXPECT_EQ(SetStateFd(0, 1), 0x101u);  // No such phase.
  EXPECT_EQ(U64(SendEmpty(Request::kCheckDeviceState)), 1u);
  EXPECT_EQ(data_plane_.Events(), "");
  // The data plane refuses: reported, and no check passes afterwards.
  data_plane_.begin_result = absl::FailedPreconditionError("busy");
  EXPECT_EQ(SetStateFd(0), 0x101u);
  EXPECT_EQ(data_plane_.Events(), "save");
  EXPECT_EQ(U64(SendEmpty(Request::kCheckDeviceState)), 1u);
}

TEST_F(DeviceStateTest, RefusedWhileQueuesRun) {
  Negotiate(kAllFeatures, kWithState);
  ASSERT_TRUE(SendMemTable());
  rx_ = std::make_unique<DriverQueue>(memory_.get(), 256, true);
  SetUpRing(0, *rx_);
  ASSERT_TRUE(Ack(Request::kSetVringEnable, VringState{0, 1}));
  ASSERT_EQ(data_plane_.Events(), "start 0");
  EXPECT_EQ(SetStateFd(0), 0x101u);
  EXPECT_EQ(data_plane_.Events(), "");
  // Stopped (as QEMU does before saving): accepted.
  Send(Request::kGetVringBase, VringState{0, 0});
  EXPECT_EQ(data_plane_.Events(), "stop 0");
  EXPECT_EQ(SetStateFd(0), 0x100u);
}

TEST_F(DeviceStateTest, MissingFdOrShortPayloadDropsTheConnection) {
  NegotiateState();
  Message m;
  m.header = {
      .request = static_cast<uint32_t>(Request::kSetDeviceStateFd), .flags = kVersion, .size = 0};
  m.SetPayload(DeviceStateTransfer{0, 0});
  // Its own reply cannot say which fd: the connection goes.
  EXPECT_FALSE(device_->Handle(m).ok());
  m.fds.push_back(EventFd());
  m.header.size = 4;
  EXPECT_FALSE(device_->Handle(m).ok());
  EXPECT_EQ(data_plane_.Events(), "");
}

}  // namespace
}  // namespace vunet::vu
