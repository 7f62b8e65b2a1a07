#include "vu/common.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "base/iov.h"
#include "gtest/gtest.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"
#include "vu/device.h"

namespace vunet::vu {
namespace {

using virtio::GuestMemory;
using virtio::VirtqElement;
using virtio::Virtqueue;
using virtio::VirtqUsedElem;
using virtio::testing::DriverMemory;
using virtio::testing::DriverQueue;
using Buffer = DriverQueue::Buffer;

constexpr size_t kHdr = sizeof(VirtioNetHdr);

NetConfig Config(bool mergeable) {
  NetConfig c;
  c.mergeable_rx = mergeable;
  return c;
}

std::vector<uint8_t> Pattern(size_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed * 31 + i * 7 + (i >> 8));
  return v;
}

// A guest with one ring, and what it posted so it can read frames back.
class Guest {
 public:
  explicit Guest(uint32_t queue_size = 256, bool event_idx = false, uint64_t mem = 64 << 20) {
    driver_memory_ = DriverMemory::Create(mem).value();
    EXPECT_TRUE(driver_memory_->MapInto(&memory_).ok());
    driver_ = std::make_unique<DriverQueue>(driver_memory_.get(), queue_size, event_idx);
    EXPECT_TRUE(vq_.Start(&memory_, driver_->DeviceConfig(memory_).value()).ok());
  }

  // Posts one receive chain of writable buffers of the given sizes.
  bool PostRx(const std::vector<uint32_t>& sizes, bool indirect = false) {
    std::vector<Buffer> buffers;
    buffers.reserve(sizes.size());
    for (uint32_t s : sizes) buffers.push_back({driver_memory_->Alloc(s, 8).value(), s, true});
    std::optional<uint16_t> head =
        indirect ? driver_->AddIndirectChain(buffers) : driver_->AddChain(buffers);
    if (!head) return false;
    posted_[*head] = buffers;
    driver_->Publish();
    return true;
  }

  // Reads the bytes the device wrote into the used chain `e`.
  std::vector<uint8_t> ReadUsed(const VirtqUsedElem& e) {
    std::vector<uint8_t> out;
    size_t left = e.len;
    for (const Buffer& b : posted_.at(e.id)) {
      const size_t n = std::min<size_t>(left, b.len);
      const uint8_t* p = driver_memory_->Host(b.gpa);
      out.insert(out.end(), p, p + n);
      left -= n;
    }
    EXPECT_EQ(left, 0u) << "used length exceeds the chain";
    return out;
  }

  // Reads back the next frame (header stripped) the device delivered, or
  // nullopt if none is complete.
  std::optional<std::vector<uint8_t>> ReceiveFrame(bool mergeable) {
    std::optional<VirtqUsedElem> first = driver_->PopUsed();
    // Chains the device could not use come back empty, between frames.
    while (first && first->len == 0) {
      ++returned_unused_;
      first = driver_->PopUsed();
    }
    if (!first) return std::nullopt;
    std::vector<uint8_t> bytes = ReadUsed(*first);
    EXPECT_GE(bytes.size(), kHdr);
    if (bytes.size() < kHdr) return std::nullopt;
    VirtioNetHdr hdr;
    std::memcpy(&hdr, bytes.data(), kHdr);
    const uint16_t buffers = mergeable ? hdr.num_buffers : 1;
    EXPECT_GE(buffers, 1);
    for (uint16_t i = 1; i < buffers; ++i) {
      std::optional<VirtqUsedElem> next = driver_->PopUsed();
      EXPECT_TRUE(next.has_value());
      if (!next) break;
      std::vector<uint8_t> more = ReadUsed(*next);
      bytes.insert(bytes.end(), more.begin(), more.end());
    }
    return std::vector<uint8_t>(bytes.begin() + kHdr, bytes.end());
  }

  std::unique_ptr<DriverMemory> driver_memory_;
  GuestMemory memory_;
  std::unique_ptr<DriverQueue> driver_;
  Virtqueue vq_;
  std::map<uint16_t, std::vector<Buffer>> posted_;
  int returned_unused_ = 0;
};

// Writes `frame` behind a virtio-net header into collected elements the way
// a translator does, and returns the frame length including the header.
size_t WriteFrame(iovec* pool, size_t pool_used, const std::vector<uint8_t>& frame) {
  VirtioNetHdr hdr;
  IovFromBuf(pool, pool_used, 0, &hdr, kHdr);
  IovFromBuf(pool, pool_used, kHdr, frame.data(), frame.size());
  return kHdr + frame.size();
}

TEST(NetConfigTest, FollowsNegotiatedFeatures) {
  NetConfig legacy = NetConfig::FromFeatures(0);
  EXPECT_EQ(legacy.vnet_hdr_len, 10u);
  EXPECT_FALSE(legacy.mergeable_rx);
  NetConfig modern =
      NetConfig::FromFeatures((1ull << virtio::kVirtioFVersion1) | (1ull << kVirtioNetFMrgRxbuf) |
                              (1ull << kVirtioNetFGuestCsum));
  EXPECT_EQ(modern.vnet_hdr_len, 12u);
  EXPECT_TRUE(modern.mergeable_rx);
  EXPECT_TRUE(modern.guest_csum);
}

TEST(NetConfigTest, OffloadsNeedTheirPrerequisites) {
  using namespace virtio;  // NOLINT(build/namespaces): the feature bits.
  auto bit = [](unsigned b) { return uint64_t{1} << b; };
  const uint64_t gso =
      bit(kVirtioNetFHostTso4) | bit(kVirtioNetFHostTso6) | bit(kVirtioNetFHostEcn) |
      bit(kVirtioNetFHostUso) | bit(kVirtioNetFGuestTso4) | bit(kVirtioNetFGuestTso6) |
      bit(kVirtioNetFGuestEcn) | bit(kVirtioNetFGuestUso4) | bit(kVirtioNetFGuestUso6);
  const NetConfig all =
      NetConfig::FromFeatures(gso | bit(kVirtioNetFCsum) | bit(kVirtioNetFGuestCsum));
  EXPECT_TRUE(all.csum && all.guest_csum);
  EXPECT_TRUE(all.host_tso4 && all.host_tso6 && all.host_ecn && all.host_uso);
  EXPECT_TRUE(all.guest_tso4 && all.guest_tso6 && all.guest_ecn && all.guest_uso4 &&
              all.guest_uso6);
  // Without the checksum features, none of the segmentation ones.
  const NetConfig bare = NetConfig::FromFeatures(gso);
  EXPECT_FALSE(bare.host_tso4 || bare.host_tso6 || bare.host_ecn || bare.host_uso);
  EXPECT_FALSE(bare.guest_tso4 || bare.guest_tso6 || bare.guest_ecn || bare.guest_uso4 ||
               bare.guest_uso6);
  // ECN without any TSO means nothing.
  const NetConfig ecn_only =
      NetConfig::FromFeatures(bit(kVirtioNetFCsum) | bit(kVirtioNetFGuestCsum) |
                              bit(kVirtioNetFHostEcn) | bit(kVirtioNetFGuestEcn));
  EXPECT_FALSE(ecn_only.host_ecn || ecn_only.guest_ecn);
  // One direction without the other.
  const NetConfig host_only = NetConfig::FromFeatures(gso | bit(kVirtioNetFCsum));
  EXPECT_TRUE(host_only.host_tso4 && host_only.host_uso);
  EXPECT_FALSE(host_only.guest_tso4 || host_only.guest_uso6);
}

TEST(CollectTest, WithoutMergeableTakesOneElement) {
  Guest guest;
  guest.PostRx({1000});
  guest.PostRx({1000});
  VirtqElement elems[8];
  iovec pool[8];
  size_t used = 0, collected = 0;
  const size_t n =
      Collect(Config(false), &guest.vq_, elems, 8, pool, 8, &used, 1514 + kHdr, &collected);
  EXPECT_EQ(n, 1u);
  EXPECT_EQ(collected, 1000u);
  EXPECT_EQ(used, 1u);
  guest.vq_.Rewind(1);
  EXPECT_EQ(guest.vq_.in_use(), 0u);
}

TEST(CollectTest, MergeableSpansElementsAndEntries) {
  Guest guest;
  guest.PostRx({500, 500});  // One element, two entries.
  guest.PostRx({600});
  guest.PostRx({4096});
  VirtqElement elems[8];
  iovec pool[16];
  size_t used = 0, collected = 0;
  const size_t n = Collect(Config(true), &guest.vq_, elems, 8, pool, 16, &used, 3000, &collected);
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(used, 4u);
  EXPECT_EQ(collected, 500u + 500 + 600 + 4096);
  EXPECT_EQ(elems[0].in_sg, pool);
  EXPECT_EQ(elems[1].in_sg, pool + 2);
  EXPECT_EQ(elems[2].in_sg, pool + 3);
}

TEST(CollectTest, StopsAtEachCapacity) {
  Guest guest;
  for (int i = 0; i < 10; ++i) guest.PostRx({100, 100});
  VirtqElement elems[8];
  iovec pool[16];
  size_t used = 0, collected = 0;
  // max_elem.
  size_t n = Collect(Config(true), &guest.vq_, elems, 2, pool, 16, &used, 100000, &collected);
  EXPECT_EQ(n, 2u);
  EXPECT_EQ(used, 4u);
  // The pool: 5 entries left fit two more two-entry chains, not three.
  n = Collect(Config(true), &guest.vq_, elems + 2, 6, pool, 9, &used, 100000, &collected);
  EXPECT_EQ(n, 2u);
  EXPECT_EQ(used, 8u);
  EXPECT_LE(used, 9u);
  EXPECT_EQ(guest.vq_.in_use(), 4u);
  guest.vq_.Rewind(4);
}

TEST(CollectTest, SeveralCollectsShareOnePool) {
  Guest guest;
  for (int i = 0; i < 6; ++i) guest.PostRx({800});
  VirtqElement elems[8];
  iovec pool[8];
  size_t used = 0;
  std::vector<std::vector<uint8_t>> frames = {Pattern(1000, 1), Pattern(700, 2), Pattern(60, 3)};
  std::vector<size_t> first, count, lens;
  size_t elems_used = 0;
  for (const auto& f : frames) {
    size_t collected = 0;
    const size_t start = used;
    const size_t n = Collect(Config(true), &guest.vq_, elems + elems_used, 8 - elems_used, pool, 8,
                             &used, kHdr + f.size(), &collected);
    ASSERT_GE(collected, kHdr + f.size());
    lens.push_back(WriteFrame(pool + start, used - start, f));
    first.push_back(elems_used);
    count.push_back(n);
    elems_used += n;
  }
  uint32_t fill = 0;
  for (size_t i = 0; i < frames.size(); ++i) {
    FillFrame(Config(true), &guest.vq_, elems + first[i], count[i], lens[i], &fill);
  }
  guest.vq_.Rewind(static_cast<uint32_t>(elems_used - fill));
  guest.vq_.Flush(fill);
  EXPECT_EQ(guest.vq_.in_use(), 0u);
  for (const auto& f : frames) {
    std::optional<std::vector<uint8_t>> got = guest.ReceiveFrame(true);
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(*got, f);
  }
}

TEST(FlushTest, WritesNumBuffersAndRewindsTheUnused) {
  Guest guest;
  for (int i = 0; i < 4; ++i) guest.PostRx({1526});
  VirtqElement elems[4];
  iovec pool[4];
  size_t used = 0, collected = 0;
  const std::vector<uint8_t> frame = Pattern(2000, 9);
  // Collect more than needed (4 x 1526), use two.
  const size_t n = Collect(Config(true), &guest.vq_, elems, 4, pool, 4, &used, 6000, &collected);
  ASSERT_EQ(n, 4u);
  const size_t len = WriteFrame(pool, used, frame);
  EXPECT_EQ(Flush(Config(true), &guest.vq_, elems, n, len), 2u);
  EXPECT_EQ(guest.vq_.in_use(), 0u);
  EXPECT_EQ(guest.vq_.last_avail_idx(), 2);
  std::optional<std::vector<uint8_t>> got = guest.ReceiveFrame(true);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, frame);
}

TEST(FlushTest, PadsShortFramesToTheEthernetMinimum) {
  Guest guest;
  guest.PostRx({30, 30, 30});  // The padding crosses entries.
  VirtqElement elems[1];
  iovec pool[4];
  size_t used = 0, collected = 0;
  ASSERT_EQ(Collect(Config(false), &guest.vq_, elems, 1, pool, 4, &used, 0, &collected), 1u);
  IovMemset(pool, used, 0, 0xee, collected);  // Stale bytes the pad must clear.
  const std::vector<uint8_t> frame = Pattern(14, 4);
  const size_t len = WriteFrame(pool, used, frame);
  Flush(Config(false), &guest.vq_, elems, 1, len);
  std::optional<std::vector<uint8_t>> got = guest.ReceiveFrame(false);
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->size(), kEthMinFrame);
  EXPECT_TRUE(std::equal(frame.begin(), frame.end(), got->begin()));
  for (size_t i = frame.size(); i < kEthMinFrame; ++i) EXPECT_EQ((*got)[i], 0) << i;
}

TEST(FlushTest, NumBuffersIsOneWithoutMergeableBuffers) {
  // VERSION_1 without MRG_RXBUF: the 12-byte header, num_buffers set to 1.
  Guest guest;
  guest.PostRx({1526});
  VirtqElement elems[1];
  iovec pool[2];
  size_t used = 0, collected = 0;
  ASSERT_EQ(Collect(Config(false), &guest.vq_, elems, 1, pool, 2, &used, 0, &collected), 1u);
  IovMemset(pool, used, 0, 0xee, kHdr);  // Stale bytes where the header goes.
  Flush(Config(false), &guest.vq_, elems, 1, WriteFrame(pool, used, Pattern(100, 1)));
  std::optional<VirtqUsedElem> e = guest.driver_->PopUsed();
  ASSERT_TRUE(e.has_value());
  VirtioNetHdr hdr;
  guest.driver_memory_->Read(guest.posted_.at(e->id)[0].gpa, &hdr, sizeof(hdr));
  EXPECT_EQ(hdr.num_buffers, 1);
}

TEST(SendSingleTest, DeliversAFrameAndNotifies) {
  Guest guest;
  const int call = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  guest.vq_.set_call_fd(call);
  guest.PostRx({1526});
  const std::vector<uint8_t> frame = Pattern(342, 5);
  ASSERT_TRUE(SendSingle(Config(false), &guest.vq_, frame).ok());
  eventfd_t value;
  EXPECT_EQ(eventfd_read(call, &value), 0);
  std::optional<std::vector<uint8_t>> got = guest.ReceiveFrame(false);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, frame);
  close(call);
}

TEST(SendSingleTest, NoRoomDropsWithoutConsuming) {
  Guest guest;
  EXPECT_EQ(SendSingle(Config(false), &guest.vq_, Pattern(100, 1)).code(),
            absl::StatusCode::kUnavailable);
  guest.PostRx({64});  // Too small for the frame, and not mergeable.
  EXPECT_EQ(SendSingle(Config(false), &guest.vq_, Pattern(100, 1)).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(guest.vq_.in_use(), 0u);
  EXPECT_EQ(guest.vq_.last_avail_idx(), 0);
  EXPECT_FALSE(guest.driver_->PopUsed().has_value());
}

TEST(CollectTest, UnusableChainsAreReturnedEmpty) {
  Guest guest;
  // A receive chain with a readable buffer, then one too small for a header.
  const uint64_t readable = guest.driver_memory_->Alloc(64).value();
  const uint64_t writable = guest.driver_memory_->Alloc(64).value();
  guest.driver_->AddChain({{readable, 64, false}, {writable, 64, true}});
  guest.posted_[0] = {};
  guest.PostRx({4});
  guest.PostRx({1526});
  guest.driver_->Publish();
  VirtqElement elems[4];
  iovec pool[4];
  size_t used = 0, collected = 0;
  const size_t n = Collect(Config(true), &guest.vq_, elems, 4, pool, 4, &used, 200, &collected);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(collected, 1526u);
  for (int i = 0; i < 2; ++i) {
    std::optional<VirtqUsedElem> e = guest.driver_->PopUsed();
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->len, 0u);
  }
  guest.vq_.Rewind(1);
}

TEST(CollectTest, ChainTooFragmentedForThePoolIsReturned) {
  Guest guest;
  guest.PostRx(std::vector<uint32_t>(8, 100));
  guest.PostRx({1526});
  VirtqElement elems[4];
  iovec pool[4];
  size_t used = 0, collected = 0;
  const size_t n = Collect(Config(false), &guest.vq_, elems, 4, pool, 4, &used, 200, &collected);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(collected, 1526u);
  std::optional<VirtqUsedElem> e = guest.driver_->PopUsed();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->len, 0u);
  guest.vq_.Rewind(1);
}

// Random receive layouts and frames: the accounting never passes a capacity,
// nothing popped is lost, and the guest reads back exactly what was sent.
TEST(CollectPropertyTest, RandomLayoutsDeliverExactFrames) {
  std::mt19937 rng(12345);
  size_t total_sent = 0;
  for (int round = 0; round < 60; ++round) {
    const bool mergeable = round % 2 == 0;
    const bool indirect = round % 3 == 0;
    Guest guest(256, round % 4 == 1);
    const NetConfig config = Config(mergeable);
    // Post chains of 1 to 8 buffers, 1 byte to 64 KiB each (at least a header
    // per chain, which the specification requires of receive buffers).
    std::uniform_int_distribution<int> descs(1, 8);
    std::uniform_int_distribution<int> size_class(0, 3);
    int posted = 0;
    while (posted < 40) {
      std::vector<uint32_t> sizes;
      const int k = descs(rng);
      for (int i = 0; i < k; ++i) {
        const uint32_t max = std::vector<uint32_t>{16, 256, 4096, 65536}[size_class(rng)];
        sizes.push_back(std::uniform_int_distribution<uint32_t>(1, max)(rng));
      }
      sizes[0] = std::max<uint32_t>(sizes[0], kHdr);
      if (!guest.PostRx(sizes, indirect)) break;
      ++posted;
    }
    const size_t max_elem = std::uniform_int_distribution<size_t>(1, 16)(rng);
    const size_t max_iov = std::uniform_int_distribution<size_t>(1, 24)(rng);
    std::vector<VirtqElement> elems(max_elem);
    std::vector<iovec> pool(max_iov);
    std::vector<std::vector<uint8_t>> sent;
    // Send frames one collect each until the ring or a capacity runs out.
    for (int f = 0; f < 20; ++f) {
      const size_t len = std::uniform_int_distribution<size_t>(1, 70000)(rng);
      std::vector<uint8_t> frame = Pattern(len, round * 100 + f);
      size_t used = 0, collected = 0;
      const size_t n = Collect(config, &guest.vq_, elems.data(), max_elem, pool.data(), max_iov,
                               &used, kHdr + len, &collected);
      ASSERT_LE(used, max_iov);
      ASSERT_LE(n, max_elem);
      if (collected < kHdr + std::max(len, kEthMinFrame)) {
        ASSERT_TRUE(guest.vq_.Rewind(static_cast<uint32_t>(n)));
        ASSERT_EQ(guest.vq_.in_use(), 0u);
        break;
      }
      Flush(config, &guest.vq_, elems.data(), n, WriteFrame(pool.data(), used, frame));
      ASSERT_EQ(guest.vq_.in_use(), 0u);
      if (len < kEthMinFrame) frame.resize(kEthMinFrame, 0);
      sent.push_back(frame);
    }
    for (size_t i = 0; i < sent.size(); ++i) {
      std::optional<std::vector<uint8_t>> got = guest.ReceiveFrame(mergeable);
      ASSERT_TRUE(got.has_value()) << "round " << round << " frame " << i;
      ASSERT_EQ(*got, sent[i]) << "round " << round << " frame " << i;
    }
    total_sent += sent.size();
    // Anything left is a chain too fragmented for the pool, returned empty.
    while (std::optional<VirtqUsedElem> e = guest.driver_->PopUsed()) EXPECT_EQ(e->len, 0u);
    EXPECT_FALSE(guest.vq_.broken());
  }
  // The layouts must leave room for plenty of frames, or this tests nothing.
  std::printf("%zu frames delivered\n", total_sent);
  EXPECT_GT(total_sent, 150u);
}

// The transmit side.

class RecordingSink : public FrameSink {
 public:
  void OnFrame(const VirtioNetHdr& hdr, absl::Span<const iovec> frame) override {
    std::vector<uint8_t> bytes(IovSize(frame.data(), frame.size()));
    IovToBuf(frame.data(), frame.size(), 0, bytes.data(), bytes.size());
    frames.push_back(std::move(bytes));
    headers.push_back(hdr);
  }
  void OnBatchEnd() override { ++batches; }
  std::vector<std::vector<uint8_t>> frames;
  std::vector<VirtioNetHdr> headers;
  int batches = 0;
};

class TxTest : public ::testing::Test {
 protected:
  // Queues `frame` as a transmit chain: header in its own descriptor or
  // shared, and the frame cut into `pieces` descriptors.
  void Queue(const std::vector<uint8_t>& frame, bool separate_header, size_t pieces,
             bool indirect = false) {
    DriverMemory& mem = *guest_.driver_memory_;
    std::vector<uint8_t> bytes(kHdr, 0);
    bytes[0] = kVirtioNetHdrFNeedsCsum;
    bytes.insert(bytes.end(), frame.begin(), frame.end());
    std::vector<Buffer> buffers;
    size_t at = 0;
    if (separate_header) {
      const uint64_t h = mem.Alloc(kHdr).value();
      mem.Write(h, bytes.data(), kHdr);
      buffers.push_back({h, static_cast<uint32_t>(kHdr), false});
      at = kHdr;
    }
    const size_t rest = bytes.size() - at;
    for (size_t p = 0; p < pieces; ++p) {
      const size_t len = rest / pieces + (p + 1 == pieces ? rest % pieces : 0);
      const uint64_t g = mem.Alloc(std::max<size_t>(len, 1)).value();
      mem.Write(g, bytes.data() + at, len);
      buffers.push_back({g, static_cast<uint32_t>(len), false});
      at += len;
    }
    ASSERT_TRUE(indirect ? guest_.driver_->AddIndirectChain(buffers).has_value()
                         : guest_.driver_->AddChain(buffers).has_value());
    guest_.driver_->Publish();
  }

  Guest guest_{1024};
  RecordingSink sink_;
};

TEST_F(TxTest, StripsTheHeaderWhereverItSits) {
  const auto a = Pattern(1514, 1), b = Pattern(60, 2), c = Pattern(9000, 3);
  Queue(a, /*separate_header=*/true, 1);
  Queue(b, /*separate_header=*/false, 1);
  Queue(c, /*separate_header=*/false, 5, /*indirect=*/true);
  TxHandler tx;
  EXPECT_EQ(tx.Process(Config(false), &guest_.vq_, &sink_), 3u);
  ASSERT_EQ(sink_.frames.size(), 3u);
  EXPECT_EQ(sink_.frames[0], a);
  EXPECT_EQ(sink_.frames[1], b);
  EXPECT_EQ(sink_.frames[2], c);
  EXPECT_EQ(sink_.headers[0].flags, kVirtioNetHdrFNeedsCsum);
  for (int i = 0; i < 3; ++i) {
    std::optional<VirtqUsedElem> e = guest_.driver_->PopUsed();
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->len, 0u);
  }
  EXPECT_EQ(guest_.vq_.in_use(), 0u);
}

TEST_F(TxTest, ChainsOfManySmallDescriptorsAreNeverCut) {
  // 200 descriptors of ~8 bytes each: more than any fixed per-element cap.
  std::vector<std::vector<uint8_t>> frames;
  for (int i = 0; i < 4; ++i) {
    frames.push_back(Pattern(1600, 10 + i));
    Queue(frames.back(), true, 200);
  }
  // A pool of 300 entries holds one such chain at a time: each batch takes
  // what fits, the next batch the rest.
  TxHandler tx({.max_batch = 64, .pool_entries = 300});
  EXPECT_EQ(tx.Process(Config(false), &guest_.vq_, &sink_), 4u);
  ASSERT_EQ(sink_.frames.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(sink_.frames[i], frames[i]) << i;
  EXPECT_EQ(sink_.batches, 4);
  EXPECT_EQ(tx.stats().dropped, 0u);
}

TEST_F(TxTest, ChainThatCanNeverFitIsDroppedNotStuck) {
  Queue(Pattern(1000, 1), true, 40);
  Queue(Pattern(100, 2), false, 1);
  TxHandler tx({.max_batch = 8, .pool_entries = 16});
  EXPECT_EQ(tx.Process(Config(false), &guest_.vq_, &sink_), 1u);
  ASSERT_EQ(sink_.frames.size(), 1u);
  EXPECT_EQ(sink_.frames[0], Pattern(100, 2));
  EXPECT_EQ(tx.stats().dropped, 1u);
  EXPECT_TRUE(guest_.driver_->PopUsed().has_value());
  EXPECT_TRUE(guest_.driver_->PopUsed().has_value());
}

TEST_F(TxTest, NotifiesOncePerBatchWithEventIdx) {
  Guest guest(256, /*event_idx=*/true);
  const int call = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  guest.vq_.set_call_fd(call);
  for (int i = 0; i < 100; ++i) {
    const uint64_t g = guest.driver_memory_->Alloc(kHdr + 64).value();
    guest.driver_->AddChain({{g, static_cast<uint32_t>(kHdr + 64), false}});
  }
  guest.driver_->Publish();
  TxHandler tx({.max_batch = 32, .pool_entries = 64});
  EXPECT_EQ(tx.Process(Config(false), &guest.vq_, &sink_), 100u);
  EXPECT_EQ(tx.stats().batches, 4u);
  // The driver asked to hear only after the first used entry (used_event 0):
  // one interrupt, not four.
  EXPECT_EQ(tx.stats().notifies, 1u);
  eventfd_t value;
  EXPECT_EQ(eventfd_read(call, &value), 0);
  EXPECT_EQ(value, 1u);
  close(call);
}

// Random transmit layouts: frames of 1 byte to 64 KiB cut into 1 to 8
// descriptors (header shared or separate, indirect or not), pools of random
// size. Every frame that fits an empty pool arrives whole and in order; only
// chains larger than the pool are dropped; nothing is left outstanding.
TEST(TxPropertyTest, RandomLayoutsDeliverEveryFrameWhole) {
  std::mt19937 rng(777);
  for (int round = 0; round < 40; ++round) {
    Guest guest(256, round % 2 == 0, 128 << 20);
    const size_t pool = std::uniform_int_distribution<size_t>(2, 24)(rng);
    TxHandler tx(
        {.max_batch = std::uniform_int_distribution<size_t>(1, 64)(rng), .pool_entries = pool});
    std::vector<std::vector<uint8_t>> expected;
    size_t expected_drops = 0;
    for (int f = 0; f < 30; ++f) {
      const size_t len = std::uniform_int_distribution<size_t>(1, 65536)(rng);
      const std::vector<uint8_t> frame = Pattern(len, round * 1000 + f);
      std::vector<uint8_t> bytes(kHdr, 0);
      bytes.insert(bytes.end(), frame.begin(), frame.end());
      const size_t pieces = std::uniform_int_distribution<size_t>(1, 8)(rng);
      const bool separate = rng() % 2;
      std::vector<Buffer> buffers;
      size_t at = 0;
      if (separate) {
        const uint64_t h = guest.driver_memory_->Alloc(kHdr).value();
        guest.driver_memory_->Write(h, bytes.data(), kHdr);
        buffers.push_back({h, static_cast<uint32_t>(kHdr), false});
        at = kHdr;
      }
      for (size_t p = 0; p < pieces && at < bytes.size(); ++p) {
        const size_t left = bytes.size() - at;
        const size_t n =
            p + 1 == pieces ? left : std::uniform_int_distribution<size_t>(1, left)(rng);
        const uint64_t g = guest.driver_memory_->Alloc(n, 1).value();
        guest.driver_memory_->Write(g, bytes.data() + at, n);
        buffers.push_back({g, static_cast<uint32_t>(n), false});
        at += n;
      }
      const bool indirect = rng() % 3 == 0;
      std::optional<uint16_t> head =
          indirect ? guest.driver_->AddIndirectChain(buffers) : guest.driver_->AddChain(buffers);
      ASSERT_TRUE(head.has_value());
      if (buffers.size() > pool) {
        ++expected_drops;
      } else {
        expected.push_back(frame);
      }
    }
    guest.driver_->Publish();
    RecordingSink sink;
    tx.Process(Config(false), &guest.vq_, &sink, /*max_batches=*/1000);
    ASSERT_EQ(sink.frames.size(), expected.size()) << "round " << round;
    for (size_t i = 0; i < expected.size(); ++i) ASSERT_EQ(sink.frames[i], expected[i]) << i;
    EXPECT_EQ(tx.stats().dropped, expected_drops);
    EXPECT_EQ(guest.vq_.in_use(), 0u);
    int used = 0;
    while (guest.driver_->PopUsed()) ++used;
    EXPECT_EQ(used, 30);
  }
}

TEST_F(TxTest, ShortChainsAreDroppedAndBrokenRingsStop) {
  const uint64_t g = guest_.driver_memory_->Alloc(8).value();
  guest_.driver_->AddChain({{g, 8, false}});  // Shorter than a header.
  guest_.driver_->Publish();
  TxHandler tx;
  EXPECT_EQ(tx.Process(Config(false), &guest_.vq_, &sink_), 0u);
  EXPECT_EQ(tx.stats().dropped, 1u);
  EXPECT_TRUE(guest_.driver_->PopUsed().has_value());

  guest_.driver_->SetAvailIdx(guest_.driver_->avail_idx() + 2000);
  EXPECT_EQ(tx.Process(Config(false), &guest_.vq_, &sink_), 0u);
  EXPECT_TRUE(guest_.vq_.broken());
}

}  // namespace
}  // namespace vunet::vu
