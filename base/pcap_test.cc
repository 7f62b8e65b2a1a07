#include "base/pcap.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace vunet {
namespace {

struct Record {
  PcapRecordHeader header;
  std::vector<uint8_t> bytes;
};

struct Capture {
  PcapFileHeader header;
  std::vector<Record> records;
  bool well_formed = false;  // Ends exactly at a record boundary.
};

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

Capture Parse(const std::string& path) {
  const std::vector<uint8_t> data = ReadFile(path);
  Capture c{};
  if (data.size() < sizeof(c.header)) return c;
  std::memcpy(&c.header, data.data(), sizeof(c.header));
  size_t pos = sizeof(c.header);
  while (pos + sizeof(PcapRecordHeader) <= data.size()) {
    Record r{};
    std::memcpy(&r.header, data.data() + pos, sizeof(r.header));
    pos += sizeof(r.header);
    if (r.header.incl_len > data.size() - pos) return c;
    r.bytes.assign(data.begin() + pos, data.begin() + pos + r.header.incl_len);
    pos += r.header.incl_len;
    c.records.push_back(std::move(r));
  }
  c.well_formed = pos == data.size();
  return c;
}

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + i / 251);
  return v;
}

class PcapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    dir_ = std::string(tmp != nullptr ? tmp : "/tmp") + "/pcap_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir_.data()), nullptr);
    path_ = dir_ + "/capture.pcap";
  }
  void TearDown() override {
    for (const char* name : {"/capture.pcap", "/link", "/fifo", "/target"}) {
      unlink((dir_ + name).c_str());
    }
    rmdir(dir_.c_str());
  }

  std::string dir_;
  std::string path_;
};

TEST_F(PcapTest, WritesTheGlobalHeaderToANewFileMode0600) {
  const mode_t old_umask = umask(0);
  auto w = PcapWriter::Open(path_);
  umask(old_umask);
  ASSERT_TRUE(w.ok()) << w.status();
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  const Capture c = Parse(path_);
  EXPECT_TRUE(c.well_formed);
  EXPECT_EQ(c.header.magic, kPcapMagicNanos);
  EXPECT_EQ(c.header.version_major, 2);
  EXPECT_EQ(c.header.version_minor, 4);
  EXPECT_EQ(c.header.thiszone, 0);
  EXPECT_EQ(c.header.sigfigs, 0u);
  EXPECT_EQ(c.header.snaplen, 65535u);
  EXPECT_EQ(c.header.linktype, 1u);
  EXPECT_TRUE(c.records.empty());
  EXPECT_EQ(ReadFile(path_).size(), 24u);
}

TEST_F(PcapTest, RoundTripsFramesContiguousGatheredAndTruncated) {
  auto w = PcapWriter::Open(path_);
  ASSERT_TRUE(w.ok()) << w.status();
  timespec before{};
  clock_gettime(CLOCK_REALTIME, &before);

  const std::vector<uint8_t> a = Pattern(60, 1);
  (*w)->Write(a);

  // Three entries, one of them empty.
  const std::vector<uint8_t> b = Pattern(1514, 2);
  iovec b_iov[] = {{const_cast<uint8_t*>(b.data()), 14},
                   {nullptr, 0},
                   {const_cast<uint8_t*>(b.data()) + 14, b.size() - 14}};
  (*w)->Write(b_iov, 3, b.size());

  // Above the snaplen, in two entries straddling it.
  const std::vector<uint8_t> c = Pattern(70000, 3);
  iovec c_iov[] = {{const_cast<uint8_t*>(c.data()), 40000},
                   {const_cast<uint8_t*>(c.data()) + 40000, c.size() - 40000}};
  (*w)->Write(c_iov, 2, c.size());

  // orig_len shorter than the iovecs: only orig_len bytes are taken.
  iovec d_iov[] = {{const_cast<uint8_t*>(b.data()), 100}, {const_cast<uint8_t*>(b.data()), 100}};
  (*w)->Write(d_iov, 2, 150);

  // Iovecs shorter than orig_len: what they hold, orig_len as told.
  (*w)->Write(d_iov, 1, 300);

  timespec after{};
  clock_gettime(CLOCK_REALTIME, &after);

  const Capture cap = Parse(path_);
  ASSERT_TRUE(cap.well_formed);
  ASSERT_EQ(cap.records.size(), 5u);
  EXPECT_EQ(cap.records[0].bytes, a);
  EXPECT_EQ(cap.records[0].header.orig_len, 60u);
  EXPECT_EQ(cap.records[1].bytes, b);
  EXPECT_EQ(cap.records[1].header.incl_len, 1514u);
  EXPECT_EQ(cap.records[1].header.orig_len, 1514u);
  EXPECT_EQ(cap.records[2].header.incl_len, 65535u);
  EXPECT_EQ(cap.records[2].header.orig_len, 70000u);
  EXPECT_EQ(cap.records[2].bytes, std::vector<uint8_t>(c.begin(), c.begin() + 65535));
  std::vector<uint8_t> d(b.begin(), b.begin() + 100);
  d.insert(d.end(), b.begin(), b.begin() + 50);
  EXPECT_EQ(cap.records[3].bytes, d);
  EXPECT_EQ(cap.records[3].header.orig_len, 150u);
  EXPECT_EQ(cap.records[4].bytes, std::vector<uint8_t>(b.begin(), b.begin() + 100));
  EXPECT_EQ(cap.records[4].header.orig_len, 300u);

  for (const Record& r : cap.records) {
    EXPECT_LT(r.header.ts_frac, 1'000'000'000u);
    const int64_t ns = int64_t{r.header.ts_sec} * 1'000'000'000 + r.header.ts_frac;
    EXPECT_GE(ns, int64_t{before.tv_sec} * 1'000'000'000 + before.tv_nsec);
    EXPECT_LE(ns, int64_t{after.tv_sec} * 1'000'000'000 + after.tv_nsec);
  }
  const PcapWriter::Stats& s = (*w)->stats();
  EXPECT_EQ(s.frames, 5u);
  EXPECT_EQ(s.bytes, 60u + 1514 + 65535 + 150 + 100);
  EXPECT_EQ(s.truncated, 1u);
  EXPECT_EQ(s.errors, 0u);
}

TEST_F(PcapTest, GathersAFrameInMoreEntriesThanOneCallTakes) {
  auto w = PcapWriter::Open(path_);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<uint8_t> f = Pattern(1000, 4);
  std::vector<iovec> iov;
  for (size_t off = 0; off < f.size(); off += 5) {
    iov.push_back({const_cast<uint8_t*>(f.data()) + off, 5});
  }
  ASSERT_EQ(iov.size(), 200u);
  (*w)->Write(iov.data(), iov.size(), f.size());
  (*w)->Write(iov.data(), iov.size(), 333);  // Ends inside an entry.
  const Capture cap = Parse(path_);
  ASSERT_TRUE(cap.well_formed);
  ASSERT_EQ(cap.records.size(), 2u);
  EXPECT_EQ(cap.records[0].bytes, f);
  EXPECT_EQ(cap.records[1].bytes, std::vector<uint8_t>(f.begin(), f.begin() + 333));
}

TEST_F(PcapTest, TruncatesAnExistingFile) {
  {
    std::ofstream out(path_, std::ios::binary);
    out << std::string(5000, 'x');
  }
  auto w = PcapWriter::Open(path_);
  ASSERT_TRUE(w.ok()) << w.status();
  (*w)->Write(Pattern(64, 5));
  const Capture cap = Parse(path_);
  EXPECT_TRUE(cap.well_formed);
  EXPECT_EQ(cap.records.size(), 1u);
}

TEST_F(PcapTest, RefusesASymlinkAndAFifo) {
  const std::string target = dir_ + "/target";
  const std::string link = dir_ + "/link";
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
  auto w = PcapWriter::Open(link);
  EXPECT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("symbolic link"), std::string::npos) << w.status();
  EXPECT_NE(access(target.c_str(), F_OK), 0) << "followed the symlink";

  // Neither blocks (no reader) nor writes into it.
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_FALSE(PcapWriter::Open(fifo).ok());
  const int reader = open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  auto f = PcapWriter::Open(fifo);
  EXPECT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("not a regular file"), std::string::npos) << f.status();
  close(reader);

  EXPECT_FALSE(PcapWriter::Open(dir_ + "/no/such/dir/x.pcap").ok());
}

TEST_F(PcapTest, CountsWriteErrorsAndCutsOffAPartialRecord) {
  auto w = PcapWriter::Open(path_);
  ASSERT_TRUE(w.ok()) << w.status();
  (*w)->Write(Pattern(100, 6));  // File: 24 + 16 + 100 = 140 bytes.

  // A file size limit 50 bytes into the next record: that write is partial,
  // then fails with EFBIG (SIGXFSZ ignored).
  struct sigaction ignore {
  }, old_action{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGXFSZ, &ignore, &old_action), 0);
  rlimit old_limit{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  rlimit limit = old_limit;
  limit.rlim_cur = 190;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  (*w)->Write(Pattern(100, 7));
  (*w)->Write(Pattern(10, 8));  // Fits: 140 + 26 <= 190.
  (*w)->Write(Pattern(100, 9));
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  ASSERT_EQ(sigaction(SIGXFSZ, &old_action, nullptr), 0);
  (*w)->Write(Pattern(100, 10));

  const PcapWriter::Stats& s = (*w)->stats();
  EXPECT_EQ(s.frames, 3u);
  EXPECT_EQ(s.errors, 2u);
  const Capture cap = Parse(path_);
  ASSERT_TRUE(cap.well_formed);
  ASSERT_EQ(cap.records.size(), 3u);
  EXPECT_EQ(cap.records[0].bytes, Pattern(100, 6));
  EXPECT_EQ(cap.records[1].bytes, Pattern(10, 8));
  EXPECT_EQ(cap.records[2].bytes, Pattern(100, 10));
}

TEST(PcapLimitTest, StopsRecordingAtItsSizeLimit) {
  const std::string path = ::testing::TempDir() + "/limit.pcap";
  // Room for the global header and two 100-byte frames with their headers.
  auto w = PcapWriter::Open(path, sizeof(PcapFileHeader) + 2 * (sizeof(PcapRecordHeader) + 100));
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<uint8_t> frame(100, 0x42);
  for (int i = 0; i < 5; ++i) (*w)->Write(frame);
  EXPECT_EQ((*w)->stats().frames, 2u);
  EXPECT_EQ((*w)->stats().over_limit, 3u);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size),
            sizeof(PcapFileHeader) + 2 * (sizeof(PcapRecordHeader) + 100));
}

}  // namespace
}  // namespace vunet
