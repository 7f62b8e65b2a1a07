#include "vu/message.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"

namespace vunet::vu {
namespace {

// A connected pair: `front` plays the frontend, `back` the backend.
struct Pair {
  Pair() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    front.reset(fds[0]);
    back.reset(fds[1]);
  }
  UniqueFd front;
  UniqueFd back;
};

bool IsOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

UniqueFd MakeEventFd() { return UniqueFd(eventfd(0, EFD_CLOEXEC)); }

Header RequestHeader(Request r, uint32_t size, uint32_t flags = 0) {
  return {.request = static_cast<uint32_t>(r), .flags = kVersion | flags, .size = size};
}

void WriteRaw(int fd, const void* data, size_t len) {
  ASSERT_EQ(write(fd, data, len), static_cast<ssize_t>(len));
}

// Builds a message as ReadMessage would return it, for ValidateRequest.
template <typename T>
Message MakeMessage(Request r, const T& payload, size_t fd_count = 0) {
  Message m;
  m.header = RequestHeader(r, 0);
  m.SetPayload(payload);
  for (size_t i = 0; i < fd_count; ++i) m.fds.push_back(MakeEventFd());
  return m;
}
Message MakeEmpty(Request r, size_t fd_count = 0) {
  Message m;
  m.header = RequestHeader(r, 0);
  for (size_t i = 0; i < fd_count; ++i) m.fds.push_back(MakeEventFd());
  return m;
}

TEST(RequestNameTest, NamesKnownAndUnknownRequests) {
  EXPECT_EQ(RequestName(1), "GET_FEATURES");
  EXPECT_EQ(RequestName(static_cast<uint32_t>(Request::kSetVringKick)), "SET_VRING_KICK");
  EXPECT_EQ(RequestName(43), "CHECK_DEVICE_STATE");
  EXPECT_EQ(RequestName(4711), "UNKNOWN(4711)");
  EXPECT_EQ(RequestName(UINT32_MAX), "UNKNOWN(4294967295)");
}

TEST(MessageTest, RoundTripsAHeaderOnlyRequest) {
  Pair p;
  ASSERT_TRUE(WriteMessage(p.front.get(), RequestHeader(Request::kGetFeatures, 0), {}).ok());
  absl::StatusOr<Message> m = ReadMessage(p.back.get());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->request(), Request::kGetFeatures);
  EXPECT_EQ(m->header.size, 0u);
  EXPECT_TRUE(m->fds.empty());
  EXPECT_FALSE(m->need_reply());
}

TEST(MessageTest, RoundTripsAPayloadAndReply) {
  Pair p;
  const VringAddr addr{.index = 1,
                       .flags = kVringFLog,
                       .desc_user_addr = 0x1000,
                       .used_user_addr = 0x3000,
                       .avail_user_addr = 0x2000,
                       .log_guest_addr = 0x4000};
  ASSERT_TRUE(
      WriteMessage(p.front.get(),
                   RequestHeader(Request::kSetVringAddr, sizeof(addr), kFlagNeedReply),
                   absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&addr), sizeof(addr)))
          .ok());
  absl::StatusOr<Message> m = ReadMessage(p.back.get());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(m->need_reply());
  EXPECT_TRUE(ValidateRequest(&*m, 2).ok());
  absl::StatusOr<VringAddr> got = m->PayloadAs<VringAddr>();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->used_user_addr, 0x3000u);
  EXPECT_EQ(got->log_guest_addr, 0x4000u);

  ASSERT_TRUE(WriteReply(p.back.get(), m->header, uint64_t{0}).ok());
  absl::StatusOr<Message> reply = ReadMessage(p.front.get());
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->header.flags, kVersion | kFlagReply);
  EXPECT_EQ(reply->request(), Request::kSetVringAddr);
  EXPECT_EQ(reply->PayloadAs<uint64_t>().value(), 0u);
}

TEST(MessageTest, PassesFdsAlong) {
  Pair p;
  UniqueFd a = MakeEventFd();
  UniqueFd b = MakeEventFd();
  MemoryTable table{};
  table.nregions = 2;
  table.regions[0] = {.guest_phys_addr = 0, .size = 4096, .user_addr = 0x10000};
  table.regions[1] = {.guest_phys_addr = 4096, .size = 4096, .user_addr = 0x20000};
  const int fds[] = {a.get(), b.get()};
  ASSERT_TRUE(
      WriteMessage(p.front.get(), RequestHeader(Request::kSetMemTable, 8 + 2 * 32),
                   absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&table), 8 + 2 * 32), fds)
          .ok());
  absl::StatusOr<Message> m = ReadMessage(p.back.get());
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->fds.size(), 2u);
  EXPECT_TRUE(ValidateRequest(&*m, 2).ok());
  // The fds are new descriptors for the same eventfds, close-on-exec.
  EXPECT_NE(m->fds[0].get(), a.get());
  EXPECT_EQ(fcntl(m->fds[0].get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  ASSERT_EQ(eventfd_write(a.get(), 7), 0);
  eventfd_t value = 0;
  ASSERT_EQ(eventfd_read(m->fds[0].get(), &value), 0);
  EXPECT_EQ(value, 7u);
}

TEST(MessageTest, RoundTripsAWholeMessage) {
  Pair p;
  Message out;
  out.header = RequestHeader(Request::kSetVringCall, 0);
  out.SetPayload(uint64_t{1});
  out.fds.push_back(MakeEventFd());
  ASSERT_TRUE(WriteMessage(p.front.get(), out).ok());
  absl::StatusOr<Message> in = ReadMessage(p.back.get());
  ASSERT_TRUE(in.ok());
  EXPECT_EQ(in->header.size, 8u);
  EXPECT_EQ(in->fds.size(), 1u);
}

TEST(MessageTest, OrderlyCloseIsUnavailable) {
  Pair p;
  p.front.reset();
  EXPECT_EQ(ReadMessage(p.back.get()).status().code(), absl::StatusCode::kUnavailable);
}

TEST(MessageTest, ShortHeaderIsDataLoss) {
  Pair p;
  const Header h = RequestHeader(Request::kGetFeatures, 0);
  WriteRaw(p.front.get(), &h, 7);
  p.front.reset();
  EXPECT_EQ(ReadMessage(p.back.get()).status().code(), absl::StatusCode::kDataLoss);
}

TEST(MessageTest, HeaderInPiecesIsReassembled) {
  Pair p;
  const Header h = RequestHeader(Request::kSetFeatures, 8);
  const uint64_t features = 1ull << 32;
  WriteRaw(p.front.get(), &h, 5);
  WriteRaw(p.front.get(), reinterpret_cast<const char*>(&h) + 5, sizeof(h) - 5);
  WriteRaw(p.front.get(), &features, 3);
  WriteRaw(p.front.get(), reinterpret_cast<const char*>(&features) + 3, 5);
  absl::StatusOr<Message> m = ReadMessage(p.back.get());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->PayloadAs<uint64_t>().value(), features);
}

TEST(MessageTest, ShortPayloadThenEofIsDataLoss) {
  Pair p;
  const Header h = RequestHeader(Request::kSetVringAddr, sizeof(VringAddr));
  WriteRaw(p.front.get(), &h, sizeof(h));
  const uint8_t some[10] = {};
  WriteRaw(p.front.get(), some, sizeof(some));
  p.front.reset();
  absl::StatusOr<Message> m = ReadMessage(p.back.get());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(m.status().message().find("10 of 40"), std::string::npos) << m.status();
}

TEST(MessageTest, HalfAMessageTimesOutWithAReceiveTimeout) {
  Pair p;
  const timeval tv{.tv_sec = 0, .tv_usec = 50'000};
  ASSERT_EQ(setsockopt(p.back.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
  const Header h = RequestHeader(Request::kSetFeatures, 8);
  WriteRaw(p.front.get(), &h, sizeof(h));
  EXPECT_EQ(ReadMessage(p.back.get()).status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(MessageTest, OversizedPayloadIsRefusedUnread) {
  Pair p;
  const Header h = RequestHeader(Request::kSetMemTable, kMaxPayloadSize + 1);
  WriteRaw(p.front.get(), &h, sizeof(h));
  absl::StatusOr<Message> m = ReadMessage(p.back.get());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(m.status().message().find("SET_MEM_TABLE"), std::string::npos) << m.status();
}

TEST(MessageTest, LargestPayloadIsRead) {
  Pair p;
  std::vector<uint8_t> payload(kMaxPayloadSize, 0xab);
  ASSERT_TRUE(
      WriteMessage(p.front.get(), RequestHeader(Request::kSetConfig, kMaxPayloadSize), payload)
          .ok());
  absl::StatusOr<Message> m = ReadMessage(p.back.get());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->payload[kMaxPayloadSize - 1], 0xab);
}

TEST(MessageTest, WrongVersionIsDataLoss) {
  Pair p;
  Header h = RequestHeader(Request::kGetFeatures, 0);
  h.flags = 2;
  WriteRaw(p.front.get(), &h, sizeof(h));
  EXPECT_EQ(ReadMessage(p.back.get()).status().code(), absl::StatusCode::kDataLoss);
  h.flags = 0;
  WriteRaw(p.front.get(), &h, sizeof(h));
  EXPECT_EQ(ReadMessage(p.back.get()).status().code(), absl::StatusCode::kDataLoss);
}

TEST(MessageTest, SurplusFdsAreClosed) {
  Pair p;
  std::vector<UniqueFd> sent;
  std::vector<int> raw;
  for (int i = 0; i < 3; ++i) {
    sent.push_back(MakeEventFd());
    raw.push_back(sent.back().get());
  }
  const uint64_t call = 0;  // Queue 0, with an fd.
  ASSERT_TRUE(WriteMessage(p.front.get(), RequestHeader(Request::kSetVringCall, 8),
                           absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&call), 8), raw)
                  .ok());
  absl::StatusOr<Message> m = ReadMessage(p.back.get());
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->fds.size(), 3u);
  const int surplus1 = m->fds[1].get();
  const int surplus2 = m->fds[2].get();
  const int kept = m->fds[0].get();
  ASSERT_TRUE(IsOpen(surplus1));
  ASSERT_TRUE(ValidateRequest(&*m, 2).ok());
  ASSERT_EQ(m->fds.size(), 1u);
  EXPECT_TRUE(IsOpen(kept));
  EXPECT_FALSE(IsOpen(surplus1));
  EXPECT_FALSE(IsOpen(surplus2));
}

TEST(MessageTest, FdsOnARequestThatTakesNoneAreClosed) {
  Message m = MakeEmpty(Request::kGetFeatures, 2);
  const int fd = m.fds[0].get();
  ASSERT_TRUE(ValidateRequest(&m, 2).ok());
  EXPECT_TRUE(m.fds.empty());
  EXPECT_FALSE(IsOpen(fd));
}

TEST(MessageTest, TooManyFdsTruncateControlDataAndFail) {
  Pair p;
  std::vector<UniqueFd> sent;
  std::vector<int> raw;
  for (size_t i = 0; i < kMaxReceivedFds + 4; ++i) {
    sent.push_back(MakeEventFd());
    raw.push_back(sent.back().get());
  }
  // Count our fds before, so we can see that whatever arrived was closed.
  const int probe = dup(0);
  close(probe);
  ASSERT_TRUE(WriteMessage(p.front.get(), RequestHeader(Request::kGetFeatures, 0), {}, raw).ok());
  absl::StatusOr<Message> m = ReadMessage(p.back.get());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << m.status();
  // The lowest free descriptor is the same as before: nothing stayed open.
  const int after = dup(0);
  EXPECT_EQ(after, probe);
  close(after);
}

TEST(MessageTest, FdsBeyondTheLimitAcrossPiecesFail) {
  Pair p;
  std::vector<UniqueFd> sent;
  std::vector<int> raw;
  for (size_t i = 0; i < kMaxReceivedFds / 2 + 1; ++i) {
    sent.push_back(MakeEventFd());
    raw.push_back(sent.back().get());
  }
  // The header in two pieces, each with more than half the limit of fds:
  // each recvmsg fits, the sum does not.
  const Header h = RequestHeader(Request::kGetFeatures, 0);
  ASSERT_TRUE(WriteMessage(p.front.get(), h, {}, raw).ok());
  // One header split over two sends, each carrying the fds.
  Pair q;
  {
    iovec iov{const_cast<Header*>(&h), 6};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxReceivedFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * raw.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * raw.size());
    std::memcpy(CMSG_DATA(c), raw.data(), sizeof(int) * raw.size());
    ASSERT_EQ(sendmsg(q.front.get(), &msg, 0), 6);
    iov.iov_base = reinterpret_cast<char*>(const_cast<Header*>(&h)) + 6;
    ASSERT_EQ(sendmsg(q.front.get(), &msg, 0), 6);
  }
  absl::StatusOr<Message> m = ReadMessage(q.back.get());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << m.status();
  // The whole-header sends on p each carry a legal number of fds.
  absl::StatusOr<Message> ok = ReadMessage(p.back.get());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->fds.size(), raw.size());
}

TEST(MessageTest, MissingFdsFailValidation) {
  Message kick = MakeMessage(Request::kSetVringKick, uint64_t{0});
  EXPECT_EQ(ValidateRequest(&kick, 2).code(), absl::StatusCode::kInvalidArgument);
  Message log = MakeMessage(Request::kSetLogBase, Log{.mmap_size = 4096});
  EXPECT_FALSE(ValidateRequest(&log, 2).ok());
  Message log_fd = MakeEmpty(Request::kSetLogFd);
  EXPECT_FALSE(ValidateRequest(&log_fd, 2).ok());
  Message add = MakeMessage(Request::kAddMemReg, SingleMemoryRegion{});
  EXPECT_FALSE(ValidateRequest(&add, 2).ok());
  MemoryTable table{};
  table.nregions = 2;
  Message mem;
  mem.header = RequestHeader(Request::kSetMemTable, 8 + 64);
  std::memcpy(mem.payload, &table, 8 + 64);
  mem.fds.push_back(MakeEventFd());
  EXPECT_FALSE(ValidateRequest(&mem, 2).ok());
  mem.fds.push_back(MakeEventFd());
  EXPECT_TRUE(ValidateRequest(&mem, 2).ok());
}

TEST(MessageTest, NoFdFlagMeansNoFd) {
  Message kick = MakeMessage(Request::kSetVringKick, kVringNoFdMask | 1);
  EXPECT_TRUE(ValidateRequest(&kick, 2).ok());
  Message call = MakeMessage(Request::kSetVringCall, kVringNoFdMask, 1);
  const int fd = call.fds[0].get();
  EXPECT_TRUE(ValidateRequest(&call, 2).ok());
  EXPECT_TRUE(call.fds.empty());
  EXPECT_FALSE(IsOpen(fd));
  Message odd_bits = MakeMessage(Request::kSetVringErr, uint64_t{1} << 9, 1);
  EXPECT_FALSE(ValidateRequest(&odd_bits, 2).ok());
}

TEST(MessageTest, RemMemRegTakesAnOptionalFd) {
  Message none = MakeMessage(Request::kRemMemReg, SingleMemoryRegion{});
  EXPECT_TRUE(ValidateRequest(&none, 2).ok());
  Message one = MakeMessage(Request::kRemMemReg, SingleMemoryRegion{}, 1);
  EXPECT_TRUE(ValidateRequest(&one, 2).ok());
  EXPECT_EQ(one.fds.size(), 1u);  // The device closes it once done.
  Message two = MakeMessage(Request::kRemMemReg, SingleMemoryRegion{}, 2);
  EXPECT_TRUE(ValidateRequest(&two, 2).ok());
  EXPECT_EQ(two.fds.size(), 1u);
}

TEST(MessageTest, PayloadSizeMustMatchTheRequest) {
  struct Case {
    Request request;
    uint32_t good;
    size_t fds;
  };
  const Case cases[] = {
      {Request::kGetFeatures, 0, 0},    {Request::kSetFeatures, 8, 0},
      {Request::kSetOwner, 0, 0},       {Request::kSetProtocolFeatures, 8, 0},
      {Request::kSetVringNum, 8, 0},    {Request::kSetVringBase, 8, 0},
      {Request::kGetVringBase, 8, 0},   {Request::kSetVringAddr, 40, 0},
      {Request::kSetVringKick, 8, 1},   {Request::kSetVringCall, 8, 1},
      {Request::kSetVringErr, 8, 1},    {Request::kSetVringEnable, 8, 0},
      {Request::kAddMemReg, 40, 1},     {Request::kRemMemReg, 40, 0},
      {Request::kSetLogBase, 16, 1},    {Request::kSetLogFd, 0, 1},
      {Request::kSetStatus, 8, 0},      {Request::kGetStatus, 0, 0},
      {Request::kGetMaxMemSlots, 0, 0}, {Request::kSendRarp, 8, 0},
      {Request::kGetQueueNum, 0, 0},    {Request::kSetInflightFd, 24, 1},
  };
  for (const Case& c : cases) {
    for (uint32_t size : {c.good, c.good + 1, c.good + 8, c.good == 0 ? 1u : c.good - 1}) {
      Message m = MakeEmpty(c.request, c.fds);
      m.header.size = size;
      const absl::Status s = ValidateRequest(&m, 2);
      const bool in_range =
          size == c.good || (c.request == Request::kSetInflightFd && size >= 20 && size <= 24);
      EXPECT_EQ(s.ok(), in_range) << RequestName(m.header.request) << " size " << size << ": " << s;
    }
  }
}

TEST(MessageTest, MemTableSizeMustMatchItsRegionCount) {
  for (uint32_t nregions : {0u, 1u, 8u, 9u, 1000u}) {
    Message m;
    m.header = RequestHeader(Request::kSetMemTable, 8 + 32 * std::min(nregions, 8u));
    std::memcpy(m.payload, &nregions, 4);
    for (uint32_t i = 0; i < std::min(nregions, 8u); ++i) m.fds.push_back(MakeEventFd());
    EXPECT_EQ(ValidateRequest(&m, 2).ok(), nregions >= 1 && nregions <= 8) << nregions;
  }
  // A count that disagrees with the size.
  Message m;
  const uint32_t two = 2;
  m.header = RequestHeader(Request::kSetMemTable, 8 + 32 * 3);
  std::memcpy(m.payload, &two, 4);
  for (int i = 0; i < 3; ++i) m.fds.push_back(MakeEventFd());
  EXPECT_FALSE(ValidateRequest(&m, 2).ok());
}

TEST(MessageTest, QueueIndexMustExist) {
  Message num = MakeMessage(Request::kSetVringNum, VringState{.index = 2, .num = 256});
  EXPECT_FALSE(ValidateRequest(&num, 2).ok());
  num = MakeMessage(Request::kSetVringNum, VringState{.index = 1, .num = 256});
  EXPECT_TRUE(ValidateRequest(&num, 2).ok());
  Message addr = MakeMessage(Request::kSetVringAddr, VringAddr{.index = 0xffffffff});
  EXPECT_FALSE(ValidateRequest(&addr, 2).ok());
  Message kick = MakeMessage(Request::kSetVringKick, uint64_t{5}, 1);
  EXPECT_FALSE(ValidateRequest(&kick, 2).ok());
  Message enable = MakeMessage(Request::kSetVringEnable, VringState{.index = 7, .num = 1});
  EXPECT_TRUE(ValidateRequest(&enable, 8).ok());
  Message base = MakeMessage(Request::kGetVringBase, VringState{.index = 3});
  EXPECT_FALSE(ValidateRequest(&base, 2).ok());
}

TEST(MessageTest, UnknownRequestsPass) {
  Message m = MakeEmpty(static_cast<Request>(999), 1);
  m.header.size = 17;
  EXPECT_TRUE(ValidateRequest(&m, 2).ok());
}

TEST(MessageTest, HasOwnReplyNamesTheGetters) {
  EXPECT_TRUE(HasOwnReply(static_cast<uint32_t>(Request::kGetFeatures)));
  EXPECT_TRUE(HasOwnReply(static_cast<uint32_t>(Request::kGetVringBase)));
  EXPECT_TRUE(HasOwnReply(static_cast<uint32_t>(Request::kSetLogBase)));
  EXPECT_FALSE(HasOwnReply(static_cast<uint32_t>(Request::kSetMemTable)));
  EXPECT_FALSE(HasOwnReply(12345));
}

TEST(MessageTest, WritingToAClosedPeerIsUnavailableWithoutSigpipe) {
  Pair p;
  p.back.reset();
  EXPECT_EQ(WriteMessage(p.front.get(), RequestHeader(Request::kGetFeatures, 0), {}).code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace vunet::vu
