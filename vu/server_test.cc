#include "vu/server.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"
#include "vu/device.h"
#include "vu/message.h"

namespace vunet::vu {
namespace {

using virtio::testing::DriverMemory;
using virtio::testing::DriverQueue;

constexpr uint64_t kMiB = 1 << 20;

// Records queue starts and stops; safe to call from a server thread.
class FakeDataPlane : public DataPlane {
 public:
  void OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_TRUE(vq->started());
    EXPECT_NE(fcntl(kick_fd, F_GETFD), -1);
    queues_[index] = vq;
    events_ += (events_.empty() ? "" : ", ") + std::string("start ") + std::to_string(index);
  }
  void OnQueueStop(uint32_t index) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_EQ(queues_.count(index), 1u);
    queues_.erase(index);
    events_ += (events_.empty() ? "" : ", ") + std::string("stop ") + std::to_string(index);
  }
  std::string TakeEvents() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(events_, "");
  }
  size_t running() {
    std::lock_guard<std::mutex> lock(mu_);
    return queues_.size();
  }
  virtio::Virtqueue* queue(uint32_t index) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = queues_.find(index);
    return it == queues_.end() ? nullptr : it->second;
  }

 private:
  std::mutex mu_;
  std::map<uint32_t, virtio::Virtqueue*> queues_;
  std::string events_;
};

// A fresh directory per test: tests may run in parallel processes that share
// /tmp and, in a sandbox, even pids. (TEST_TMPDIR is often too long a path
// for a UNIX socket's 108 bytes.)
std::string TempDir() {
  char dir[] = "/tmp/vunet_server_test_XXXXXX";
  EXPECT_NE(mkdtemp(dir), nullptr) << strerror(errno);
  return dir;
}

sockaddr_un AddressOf(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

UniqueFd Connect(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const sockaddr_un addr = AddressOf(path);
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0)
      << strerror(errno);
  return fd;
}

size_t CountOpenFds() {
  size_t n = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // The directory's own fd.
}

// Mappings of memfds: guest memory and dirty logs. (Not every mapping: a
// sanitizer's allocator maps memory of its own as it goes.)
size_t CountMemfdMappings() {
  std::ifstream maps("/proc/self/maps");
  size_t n = 0;
  std::string line;
  while (std::getline(maps, line)) n += line.find("/memfd:") != std::string::npos;
  return n;
}

UniqueFd EventFd() { return UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

// A hand-written minimal frontend.
class Frontend {
 public:
  explicit Frontend(const std::string& path) : fd_(Connect(path)) {}
  explicit Frontend(UniqueFd fd) : fd_(std::move(fd)) {}

  template <typename T>
  void Send(Request r, const T& payload, const std::vector<int>& fds = {}, uint32_t flags = 0) {
    const Header h{
        .request = static_cast<uint32_t>(r), .flags = kVersion | flags, .size = sizeof(T)};
    ASSERT_TRUE(WriteMessage(
                    fd_.get(), h,
                    absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&payload), sizeof(T)), fds)
                    .ok());
  }
  void SendEmpty(Request r, uint32_t flags = 0) {
    const Header h{.request = static_cast<uint32_t>(r), .flags = kVersion | flags, .size = 0};
    ASSERT_TRUE(WriteMessage(fd_.get(), h, {}).ok());
  }
  void SendRaw(const void* data, size_t len) {
    ASSERT_EQ(send(fd_.get(), data, len, MSG_NOSIGNAL), static_cast<ssize_t>(len));
  }
  // The u64 of the next reply, which must be to `r`.
  uint64_t ReadU64(Request r) {
    absl::StatusOr<Message> m = ReadMessage(fd_.get());
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return UINT64_MAX;
    EXPECT_EQ(m->request(), r);
    EXPECT_EQ(m->header.flags, kVersion | kFlagReply);
    return m->PayloadAs<uint64_t>().value_or(UINT64_MAX);
  }
  absl::StatusOr<Message> Read() { return ReadMessage(fd_.get()); }
  int fd() const { return fd_.get(); }
  void Close() { fd_.reset(); }

 private:
  UniqueFd fd_;
};

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir();
    path_ = dir_ + "/vu.sock";
  }
  void TearDown() override {
    server_.reset();
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }

  void StartServer(Server::Options options = {}) {
    options.socket_path = path_;
    absl::StatusOr<std::unique_ptr<Server>> server = Server::Listen(options, &data_plane_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  // Lets the server accept a frontend that connected.
  void Accept() { ASSERT_TRUE(server_->HandleReadable(server_->listen_fd()).ok()); }
  // Lets the server process one message (or notice the frontend left).
  void Pump() {
    ASSERT_GE(server_->connection_fd(), 0);
    ASSERT_TRUE(server_->HandleReadable(server_->connection_fd()).ok());
  }
  // Pumps until the frontend is gone.
  void Drain() {
    for (int i = 0; i < 100 && server_->connection_fd() >= 0; ++i) Pump();
    ASSERT_EQ(server_->connection_fd(), -1);
  }

  uint64_t Uva(const DriverMemory& memory, uint64_t gpa) {
    for (const MemoryRegion& r : memory.regions()) {
      if (gpa - r.guest_phys_addr < r.size) return r.user_addr + (gpa - r.guest_phys_addr);
    }
    return 0;
  }

  // A whole negotiation: features, memory table, both rings, enable.
  void Negotiate(Frontend& f, DriverMemory& memory, DriverQueue& rx, DriverQueue& tx,
                 std::vector<UniqueFd>* eventfds) {
    f.SendEmpty(Request::kGetFeatures);
    Pump();
    const uint64_t features = f.ReadU64(Request::kGetFeatures);
    ASSERT_EQ(features, Device::kOfferedFeatures);
    f.SendEmpty(Request::kGetProtocolFeatures);
    Pump();
    const uint64_t protocol = f.ReadU64(Request::kGetProtocolFeatures);
    f.Send(Request::kSetProtocolFeatures, protocol);
    Pump();
    f.SendEmpty(Request::kSetOwner);
    Pump();
    f.Send(Request::kSetFeatures, features, {}, kFlagNeedReply);
    Pump();
    ASSERT_EQ(f.ReadU64(Request::kSetFeatures), 0u);

    MemoryTable table{};
    table.nregions = static_cast<uint32_t>(memory.regions().size());
    std::vector<int> fds;
    for (size_t i = 0; i < memory.regions().size(); ++i) {
      table.regions[i] = memory.regions()[i];
      fds.push_back(memory.fd());
    }
    const Header h{.request = static_cast<uint32_t>(Request::kSetMemTable),
                   .flags = kVersion | kFlagNeedReply,
                   .size = static_cast<uint32_t>(8 + 32 * table.nregions)};
    ASSERT_TRUE(WriteMessage(f.fd(), h,
                             absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&table), h.size),
                             fds)
                    .ok());
    Pump();
    ASSERT_EQ(f.ReadU64(Request::kSetMemTable), 0u);

    DriverQueue* queues[] = {&rx, &tx};
    for (uint32_t i = 0; i < 2; ++i) {
      DriverQueue& q = *queues[i];
      f.Send(Request::kSetVringNum, VringState{i, q.size()}, {}, kFlagNeedReply);
      Pump();
      ASSERT_EQ(f.ReadU64(Request::kSetVringNum), 0u);
      f.Send(Request::kSetVringBase, VringState{i, 0});
      Pump();
      f.Send(Request::kSetVringAddr,
             VringAddr{.index = i,
                       .desc_user_addr = Uva(memory, q.desc_gpa()),
                       .used_user_addr = Uva(memory, q.used_gpa()),
                       .avail_user_addr = Uva(memory, q.avail_gpa())},
             {}, kFlagNeedReply);
      Pump();
      ASSERT_EQ(f.ReadU64(Request::kSetVringAddr), 0u);
      eventfds->push_back(EventFd());
      f.Send(Request::kSetVringCall, uint64_t{i}, {eventfds->back().get()});
      Pump();
      eventfds->push_back(EventFd());
      f.Send(Request::kSetVringKick, uint64_t{i}, {eventfds->back().get()});
      Pump();
    }
    EXPECT_EQ(data_plane_.TakeEvents(), "");  // Not enabled yet.
    for (uint32_t i = 0; i < 2; ++i) {
      f.Send(Request::kSetVringEnable, VringState{i, 1}, {}, kFlagNeedReply);
      Pump();
      ASSERT_EQ(f.ReadU64(Request::kSetVringEnable), 0u);
    }
    EXPECT_EQ(data_plane_.TakeEvents(), "start 0, start 1");
  }

  std::string dir_;
  std::string path_;
  FakeDataPlane data_plane_;
  std::unique_ptr<Server> server_;
};

TEST_F(ServerTest, NegotiatesAFullSessionOverARealSocket) {
  StartServer();
  EXPECT_EQ(server_->connection_fd(), -1);
  auto memory = DriverMemory::Create(16 * kMiB, 2).value();
  DriverQueue rx(memory.get(), 256, true);
  DriverQueue tx(memory.get(), 256, true);
  std::vector<UniqueFd> eventfds;
  Frontend f(path_);
  Accept();
  ASSERT_GE(server_->connection_fd(), 0);
  ASSERT_NE(server_->device(), nullptr);
  Negotiate(f, *memory, rx, tx, &eventfds);

  // The data plane works the transmit queue the device handed over, and
  // signals the call eventfd the frontend sent.
  const uint64_t buf = memory->Alloc(64).value();
  tx.AddChain({{buf, 64, false}});
  tx.Publish();
  virtio::Virtqueue* vq = data_plane_.queue(1);
  ASSERT_NE(vq, nullptr);
  iovec out[2];
  virtio::VirtqElement elem;
  ASSERT_TRUE(vq->Pop(&elem, nullptr, 0, out, 2).value());
  vq->Push(elem, 0);
  ASSERT_TRUE(vq->Notify());
  eventfd_t calls = 0;
  EXPECT_EQ(eventfd_read(eventfds[2].get(), &calls), 0);  // tx's call fd.
  EXPECT_EQ(calls, 1u);

  f.Send(Request::kGetVringBase, VringState{1, 0});
  Pump();
  absl::StatusOr<Message> base = f.Read();
  ASSERT_TRUE(base.ok());
  EXPECT_EQ(base->PayloadAs<VringState>()->num, 1u);
  EXPECT_EQ(data_plane_.TakeEvents(), "stop 1");

  f.Close();
  Drain();
  EXPECT_EQ(data_plane_.TakeEvents(), "stop 0");
  EXPECT_EQ(server_->device(), nullptr);
}

TEST_F(ServerTest, AcceptsTheNextFrontendAfterADisconnect) {
  StartServer();
  auto memory = DriverMemory::Create(16 * kMiB).value();
  for (int round = 0; round < 3; ++round) {
    DriverQueue rx(memory.get(), 128);
    DriverQueue tx(memory.get(), 128);
    std::vector<UniqueFd> eventfds;
    Frontend f(path_);
    Accept();
    Negotiate(f, *memory, rx, tx, &eventfds);
    f.Close();
    Drain();
    EXPECT_EQ(data_plane_.TakeEvents(), "stop 0, stop 1") << round;
    EXPECT_EQ(data_plane_.running(), 0u);
  }
  EXPECT_EQ(server_->connections_served(), 3u);
}

TEST_F(ServerTest, TurnsAwayASecondFrontend) {
  StartServer();
  Frontend first(path_);
  Accept();
  const int connection = server_->connection_fd();
  Frontend second(path_);
  Accept();
  EXPECT_EQ(server_->connection_fd(), connection);
  char byte;
  EXPECT_EQ(recv(second.fd(), &byte, 1, 0), 0);  // Closed at once.
  // The first is still served.
  first.SendEmpty(Request::kGetFeatures);
  Pump();
  EXPECT_EQ(first.ReadU64(Request::kGetFeatures), Device::kOfferedFeatures);
}

TEST_F(ServerTest, RemovesAStaleSocket) {
  {
    UniqueFd stale(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const sockaddr_un addr = AddressOf(path_);
    ASSERT_EQ(bind(stale.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(listen(stale.get(), 1), 0);
  }  // Closed: the file stays, nobody listens.
  struct stat st;
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  StartServer();
  Frontend f(path_);
  Accept();
  EXPECT_GE(server_->connection_fd(), 0);
}

TEST_F(ServerTest, RefusesASocketSomeoneListensOn) {
  StartServer();
  Server::Options options;
  options.socket_path = path_;
  absl::StatusOr<std::unique_ptr<Server>> second = Server::Listen(options, &data_plane_);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  EXPECT_NE(second.status().message().find("listening"), std::string::npos);
  // The first server still owns its socket.
  Frontend f(path_);
  Accept();
  EXPECT_GE(server_->connection_fd(), 0);
}

TEST_F(ServerTest, RefusesAPathThatIsNotASocket) {
  { std::ofstream(path_) << "precious"; }
  Server::Options options;
  options.socket_path = path_;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Listen(options, &data_plane_);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition) << server.status();
  std::ifstream in(path_);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

TEST_F(ServerTest, RefusesAPathTooLong) {
  Server::Options options;
  options.socket_path = "/tmp/" + std::string(200, 'x');
  EXPECT_EQ(Server::Listen(options, &data_plane_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ServerTest, RemovesItsSocketFileOnDestruction) {
  StartServer();
  struct stat st;
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  server_.reset();
  EXPECT_NE(lstat(path_.c_str(), &st), 0);
}

TEST_F(ServerTest, IgnoresFdsThatAreNotItsOwn) {
  StartServer();
  EXPECT_EQ(server_->HandleReadable(-1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server_->HandleReadable(0).code(), absl::StatusCode::kInvalidArgument);
  // Readable with nothing to accept: no harm.
  EXPECT_TRUE(server_->HandleReadable(server_->listen_fd()).ok());
}

TEST_F(ServerTest, DropsAFrontendThatStallsMidMessage) {
  Server::Options options;
  options.receive_timeout = std::chrono::milliseconds(100);
  StartServer(options);
  Frontend f(path_);
  Accept();
  const Header h{
      .request = static_cast<uint32_t>(Request::kSetFeatures), .flags = kVersion, .size = 8};
  f.SendRaw(&h, sizeof(h));  // The payload never comes.
  const auto start = std::chrono::steady_clock::now();
  Pump();
  EXPECT_EQ(server_->connection_fd(), -1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

// The receive timeout bounds a whole message, not each read: a frontend that
// trickles a byte at a time, each within the timeout, is still dropped.
TEST_F(ServerTest, DropsAFrontendThatTricklesAMessage) {
  Server::Options options;
  options.receive_timeout = std::chrono::milliseconds(300);
  StartServer(options);
  Frontend f(path_);
  Accept();
  const Header h{
      .request = static_cast<uint32_t>(Request::kSetFeatures), .flags = kVersion, .size = 8};
  uint8_t bytes[sizeof(h) + 8] = {};
  std::memcpy(bytes, &h, sizeof(h));
  f.SendRaw(bytes, 1);
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    for (size_t i = 1; i < sizeof(bytes) && !stop; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (send(f.fd(), bytes + i, 1, MSG_NOSIGNAL) != 1) break;
    }
  });
  const auto start = std::chrono::steady_clock::now();
  Pump();
  const auto took = std::chrono::steady_clock::now() - start;
  stop = true;
  trickle.join();
  EXPECT_EQ(server_->connection_fd(), -1);
  EXPECT_LT(took, std::chrono::milliseconds(1500));  // All 20 bytes would take 1.9 s.
}

TEST_F(ServerTest, OneOffServesOneFrontend) {
  Server::Options options;
  options.one_off = true;
  StartServer(options);
  Frontend f(path_);
  Accept();
  f.Close();
  Drain();
  EXPECT_TRUE(server_->done());
  Frontend late(path_);
  Accept();
  EXPECT_EQ(server_->connection_fd(), -1);
  std::atomic<bool> stop{false};
  EXPECT_TRUE(server_->Run(stop).ok());  // Returns at once: done.
}

// --fd with a listening socket: served as Listen's, and no socket file is
// removed (none is ours).
TEST_F(ServerTest, AdoptsAListeningSocket) {
  UniqueFd listening(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path_.c_str(), path_.size());
  ASSERT_EQ(bind(listening.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listening.get(), 4), 0);
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Adopt({}, std::move(listening), &data_plane_);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = std::move(*server);
  EXPECT_GE(server_->listen_fd(), 0);
  EXPECT_TRUE(server_->socket_path().empty());
  EXPECT_NE(fcntl(server_->listen_fd(), F_GETFL) & O_NONBLOCK, 0);
  auto memory = DriverMemory::Create(16 * kMiB).value();
  DriverQueue rx(memory.get(), 128);
  DriverQueue tx(memory.get(), 128);
  std::vector<UniqueFd> eventfds;
  Frontend f(path_);
  Accept();
  Negotiate(f, *memory, rx, tx, &eventfds);
  f.Close();
  Drain();
  EXPECT_FALSE(server_->done());
  server_.reset();
  struct stat st;
  EXPECT_EQ(lstat(path_.c_str(), &st), 0);  // Not ours to remove.
}

// --fd with a connected socket: that frontend, at once, then done.
TEST_F(ServerTest, AdoptsAConnectedSocketAsTheOneFrontend) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Adopt({}, UniqueFd(sv[0]), &data_plane_);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = std::move(*server);
  EXPECT_EQ(server_->listen_fd(), -1);
  ASSERT_GE(server_->connection_fd(), 0);
  EXPECT_EQ(fcntl(server_->connection_fd(), F_GETFL) & O_NONBLOCK, 0);
  auto memory = DriverMemory::Create(16 * kMiB).value();
  DriverQueue rx(memory.get(), 128);
  DriverQueue tx(memory.get(), 128);
  std::vector<UniqueFd> eventfds;
  Frontend f{UniqueFd(sv[1])};
  Negotiate(f, *memory, rx, tx, &eventfds);
  f.Close();
  Drain();
  EXPECT_TRUE(server_->done());
  std::atomic<bool> stop{false};
  EXPECT_TRUE(server_->Run(stop).ok());  // Returns at once: done.
}

TEST_F(ServerTest, AdoptRefusesWhatIsNotAUnixStreamSocket) {
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  close(pipefd[1]);
  EXPECT_EQ(Server::Adopt({}, UniqueFd(pipefd[0]), &data_plane_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Server::Adopt({}, UniqueFd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)), &data_plane_)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Server::Adopt({}, UniqueFd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)), &data_plane_)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Server::Adopt({}, UniqueFd(), &data_plane_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ServerTest, RunServesFrontendsUntilStopped) {
  StartServer();
  std::atomic<bool> stop{false};
  absl::Status result;
  std::thread loop([&] { result = server_->Run(stop); });
  for (int round = 0; round < 2; ++round) {
    Frontend f(path_);
    f.SendEmpty(Request::kGetFeatures);
    EXPECT_EQ(f.ReadU64(Request::kGetFeatures), Device::kOfferedFeatures);
    f.SendEmpty(Request::kGetQueueNum);
    EXPECT_EQ(f.ReadU64(Request::kGetQueueNum), 1u);
  }
  stop = true;
  loop.join();
  EXPECT_TRUE(result.ok()) << result;
  EXPECT_EQ(server_->connections_served(), 2u);
}

// 1000 hostile frontends, each misbehaving in its own way, must leave no fd
// and no mapping behind.
TEST_F(ServerTest, AbusiveFrontendsLeakNothing) {
  auto memory = DriverMemory::Create(4 * kMiB).value();
  std::mt19937 rng(42);
  const size_t fds_before = CountOpenFds();
  const size_t maps_before = CountMemfdMappings();
  StartServer();
  const size_t fds_with_server = CountOpenFds();
  const MemoryRegion good = memory->regions()[0];

  auto mem_table = [&](Frontend& f, const std::vector<MemoryRegion>& regions,
                       const std::vector<int>& fds) {
    MemoryTable table{};
    table.nregions = static_cast<uint32_t>(regions.size());
    for (size_t i = 0; i < regions.size(); ++i) table.regions[i] = regions[i];
    const Header h{.request = static_cast<uint32_t>(Request::kSetMemTable),
                   .flags = kVersion | kFlagNeedReply,
                   .size = static_cast<uint32_t>(8 + 32 * regions.size())};
    (void)WriteMessage(f.fd(), h,
                       absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&table), h.size), fds);
  };

  constexpr int kKinds = 12;
  for (int i = 0; i < 1000; ++i) {
    Frontend f(path_);
    Accept();
    ASSERT_GE(server_->connection_fd(), 0) << i;
    switch (i % kKinds) {
      case 0: {  // Garbage bytes.
        std::vector<uint8_t> junk(1 + rng() % 300);
        for (uint8_t& b : junk) b = static_cast<uint8_t>(rng());
        f.SendRaw(junk.data(), junk.size());
        break;
      }
      case 1: {  // A truncated header.
        const Header h{.request = 1, .flags = kVersion, .size = 0};
        f.SendRaw(&h, 1 + rng() % 11);
        break;
      }
      case 2: {  // A truncated payload, with fds.
        const Header h{.request = static_cast<uint32_t>(Request::kSetVringAddr),
                       .flags = kVersion,
                       .size = 40};
        UniqueFd e = EventFd();
        const int fd = e.get();
        ASSERT_TRUE(WriteMessage(f.fd(), h,
                                 absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&good), 20),
                                 {fd})
                        .ok());
        break;
      }
      case 3: {  // Fds with requests that take none.
        UniqueFd a = EventFd();
        UniqueFd b(dup(memory->fd()));
        f.SendEmpty(Request::kGetFeatures);
        f.Send(Request::kSetVringNum, VringState{0, 256}, {a.get(), b.get()});
        f.Send(Request::kSetFeatures, uint64_t{1} << 32, {a.get()});
        break;
      }
      case 4: {  // Memory tables with bad regions.
        MemoryRegion overlap = good;
        overlap.guest_phys_addr += 4096;
        overlap.user_addr += good.size;
        MemoryRegion past_end = good;
        past_end.size = 64 * kMiB;
        MemoryRegion zero = good;
        zero.size = 0;
        mem_table(f, {good, overlap}, {memory->fd(), memory->fd()});
        mem_table(f, {past_end}, {memory->fd()});
        mem_table(f, {zero}, {memory->fd()});
        UniqueFd e = EventFd();
        mem_table(f, {good}, {e.get()});  // Not mappable.
        break;
      }
      case 5: {  // A memory table with fewer fds than regions, then more.
        MemoryRegion second = good;
        second.guest_phys_addr += good.size;
        second.user_addr += good.size;
        mem_table(f, {good, second}, {memory->fd()});
        break;
      }
      case 6: {  // Too many fds: the control data is truncated.
        std::vector<UniqueFd> many;
        std::vector<int> raw;
        for (size_t k = 0; k < kMaxReceivedFds + 3; ++k) {
          many.push_back(EventFd());
          raw.push_back(many.back().get());
        }
        ASSERT_TRUE(WriteMessage(f.fd(), Header{.request = 1, .flags = kVersion}, {}, raw).ok());
        break;
      }
      case 7: {  // An oversized size.
        const Header h{.request = static_cast<uint32_t>(Request::kSetMemTable),
                       .flags = kVersion,
                       .size = 0x7fffffff};
        f.SendRaw(&h, sizeof(h));
        break;
      }
      case 8: {  // Rings running, then a disconnect mid-message.
        mem_table(f, {good}, {memory->fd()});
        Pump();
        DriverQueue q(memory.get(), 64);
        f.Send(Request::kSetVringNum, VringState{0, 64});
        f.Send(Request::kSetVringAddr, VringAddr{.index = 0,
                                                 .desc_user_addr = Uva(*memory, q.desc_gpa()),
                                                 .used_user_addr = Uva(*memory, q.used_gpa()),
                                                 .avail_user_addr = Uva(*memory, q.avail_gpa())});
        UniqueFd kick = EventFd();
        UniqueFd call = EventFd();
        f.Send(Request::kSetVringCall, uint64_t{0}, {call.get()});
        f.Send(Request::kSetVringKick, uint64_t{0}, {kick.get()});
        for (int k = 0; k < 4; ++k) Pump();
        EXPECT_EQ(data_plane_.TakeEvents(), "start 0") << i;
        EXPECT_GT(CountMemfdMappings(), maps_before);  // The server's view of guest memory.
        const Header h{
            .request = static_cast<uint32_t>(Request::kSetVringCall), .flags = kVersion, .size = 8};
        ASSERT_TRUE(WriteMessage(f.fd(), h, {}, {call.get()}).ok());  // No payload follows.
        break;
      }
      case 9: {  // Wrong version, queue indices that do not exist.
        UniqueFd e = EventFd();
        f.Send(Request::kSetVringKick, uint64_t{200}, {e.get()}, kFlagNeedReply);
        f.Send(Request::kGetVringBase, VringState{9, 0});
        f.SendEmpty(Request::kGetFeatures, /*flags=*/2);
        break;
      }
      case 10: {  // A log that cannot be mapped, an unknown request with fds.
        UniqueFd e = EventFd();
        f.Send(Request::kSetLogBase, Log{.mmap_size = 4096}, {e.get()});
        f.Send(static_cast<Request>(99), uint64_t{0}, {e.get(), memory->fd()}, kFlagNeedReply);
        f.Send(Request::kAddMemReg, SingleMemoryRegion{.region = good}, {e.get()});
        break;
      }
      case 11: {  // Valid requests, then leaving without reading replies.
        f.SendEmpty(Request::kGetFeatures);
        f.SendEmpty(Request::kGetProtocolFeatures);
        f.Send(Request::kAddMemReg, SingleMemoryRegion{.region = good}, {memory->fd()});
        break;
      }
    }
    f.Close();
    Drain();
    // Only the frontend that had a ring running leaves one to stop.
    EXPECT_EQ(data_plane_.TakeEvents(), i % kKinds == 8 ? "stop 0" : "") << i;
  }
  EXPECT_EQ(data_plane_.running(), 0u);
  EXPECT_EQ(CountOpenFds(), fds_with_server);
  server_.reset();
  EXPECT_EQ(CountOpenFds(), fds_before);
  EXPECT_EQ(CountMemfdMappings(), maps_before);
}

}  // namespace
}  // namespace vunet::vu
