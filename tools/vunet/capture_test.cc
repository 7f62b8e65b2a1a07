#include "tools/vunet/capture.h"

#include <sys/uio.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "base/pcap.h"
#include "gtest/gtest.h"
#include "vu/testing/guest_rx.h"

namespace vunet::tools {
namespace {

// The frames of a capture file, in order.
std::vector<std::vector<uint8_t>> Frames(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::vector<uint8_t>> frames;
  size_t pos = sizeof(PcapFileHeader);
  while (pos + sizeof(PcapRecordHeader) <= data.size()) {
    PcapRecordHeader h;
    std::memcpy(&h, data.data() + pos, sizeof(h));
    pos += sizeof(h);
    if (h.incl_len > data.size() - pos) break;
    frames.emplace_back(data.begin() + pos, data.begin() + pos + h.incl_len);
    pos += h.incl_len;
  }
  return frames;
}

class RecordingSink : public vu::FrameSink {
 public:
  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) override {
    std::vector<uint8_t> bytes;
    for (const iovec& v : frame) {
      const auto* p = static_cast<const uint8_t*>(v.iov_base);
      bytes.insert(bytes.end(), p, p + v.iov_len);
    }
    frames.push_back(bytes);
    flags.push_back(hdr.flags);
  }
  void OnBatchEnd() override { ++batches; }

  std::vector<std::vector<uint8_t>> frames;
  std::vector<uint8_t> flags;
  int batches = 0;
};

class CaptureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    path_ = std::string(tmp != nullptr ? tmp : "/tmp") + "/capture_test." +
            std::to_string(getpid()) + ".pcap";
    auto w = PcapWriter::Open(path_);
    ASSERT_TRUE(w.ok()) << w.status();
    pcap_ = std::move(*w);
  }
  void TearDown() override { unlink(path_.c_str()); }

  std::string path_;
  std::unique_ptr<PcapWriter> pcap_;
};

TEST_F(CaptureTest, FrameSinkRecordsThenForwardsUnchanged) {
  RecordingSink next;
  PcapFrameSink sink(pcap_.get(), &next);
  std::vector<uint8_t> frame(98);
  for (size_t i = 0; i < frame.size(); ++i) frame[i] = static_cast<uint8_t>(i);
  const iovec iov[] = {{frame.data(), 14}, {frame.data() + 14, frame.size() - 14}};
  vu::VirtioNetHdr hdr{};
  hdr.flags = vu::kVirtioNetHdrFNeedsCsum;
  sink.OnFrame(hdr, iov);
  sink.OnBatchEnd();

  ASSERT_EQ(next.frames.size(), 1u);
  EXPECT_EQ(next.frames[0], frame);
  EXPECT_EQ(next.flags[0], vu::kVirtioNetHdrFNeedsCsum);
  EXPECT_EQ(next.batches, 1);
  EXPECT_EQ(Frames(path_), std::vector<std::vector<uint8_t>>{frame});
}

TEST_F(CaptureTest, RxObserverRecordsWhatIsCommittedToTheGuest) {
  vu::testing::GuestRxRing guest({.mergeable = true});
  PcapRxObserver observer(pcap_.get(), nullptr);
  guest.rx().set_observer(&observer);
  guest.Post(1, 200);
  const std::vector<uint8_t> a(42, 0xaa), b(160, 0xbb), c(60, 0xcc);
  EXPECT_TRUE(guest.rx().Send(a).ok());
  // No room for b: it is not committed, and not recorded.
  EXPECT_TRUE(absl::IsUnavailable(guest.rx().Send(b)));
  // A frame spanning buffers is recorded whole.
  guest.Post(3, 64);
  EXPECT_TRUE(guest.rx().Send(std::vector<uint8_t>(150, 0xdd)).ok());
  guest.Post(1, 200);
  EXPECT_TRUE(guest.rx().Send(c).ok());
  EXPECT_EQ(guest.Take().size(), 3u);
  EXPECT_EQ(Frames(path_),
            (std::vector<std::vector<uint8_t>>{a, std::vector<uint8_t>(150, 0xdd), c}));
  EXPECT_EQ(pcap_->stats().frames, 3u);
}

}  // namespace
}  // namespace vunet::tools
