// vu_recorder: a vhost-user proxy that records what a real frontend (QEMU,
// DPDK's virtio-user) sends, as a seed for //vu:device_fuzz and
// //vu:message_fuzz.
//
//   vu_recorder --listen /tmp/rec.sock --backend /tmp/vunet.sock --out seed
//
// It listens on --listen, and for the one frontend that connects there it
// connects to --backend and relays both ways, messages and their fds, until
// either side closes. Every message the frontend sends is also written to
// --out as one record of vu/fuzz_stream.h (its fds as fresh eventfds, or
// dups of the fuzzer's 1 MiB memfd where the frontend sent regular files),
// with the guest's memory geometry fitted to that memfd: each region of a
// memory table (SET_MEM_TABLE, ADD_MEM_REG) keeps its guest-physical and
// user addresses but shrinks to at most 1 MiB at file offset 0, and ring
// addresses (SET_VRING_ADDR) that then fall outside it move to fixed places
// in the largest region. Everything else is recorded as it came: the
// requests, their order, flags, sizes and values.

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "gflags/gflags.h"
#include "vu/message.h"

DEFINE_string(listen, "", "the socket the frontend connects to");
DEFINE_string(backend, "", "the backend's socket");
DEFINE_string(out, "", "the seed file to write");

namespace {

using vunet::UniqueFd;
namespace vu = vunet::vu;

constexpr size_t kHeaderLen = 12;
static_assert(sizeof(vu::Header) == kHeaderLen);
constexpr uint32_t kSetMemTable = 5;
constexpr uint32_t kSetVringAddr = 9;
constexpr uint32_t kAddMemReg = 37;
constexpr uint64_t kMemfdSize = 1 << 20;  // vu/fuzz_stream.h's.
constexpr size_t kRegionLen = 32;         // gpa, size, user address, mmap offset.

// One region as recorded: [user, user + size) after shrinking.
struct Region {
  uint64_t user = 0;
  uint64_t size = 0;
};

uint64_t Get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
void Put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }

class Recorder {
 public:
  explicit Recorder(FILE* out) : out_(out) {}

  // One whole message from the frontend and the fds that came with it.
  void Add(const uint8_t* message, size_t len, const int* fds, size_t nfds) {
    std::vector<uint8_t> m(message, message + std::min<size_t>(len, 0xffff));  // A record's most.
    uint32_t request;
    std::memcpy(&request, m.data(), 4);
    Fit(request, &m);
    struct stat st;
    const bool mem = nfds > 0 && fstat(fds[0], &st) == 0 && S_ISREG(st.st_mode);
    Write(m, std::min<size_t>(nfds, 15), mem);  // fuzz_stream.h: up to 15, all of one kind.
    ++messages_;
  }

  size_t messages() const { return messages_; }

 private:
  void Fit(uint32_t request, std::vector<uint8_t>* m) {
    uint8_t* payload = m->data() + kHeaderLen;
    const size_t len = m->size() - kHeaderLen;
    if (request == kSetMemTable && len >= 8) {
      uint32_t count;
      std::memcpy(&count, payload, 4);
      regions_.clear();
      for (uint32_t i = 0; i < count && 8 + (i + 1) * kRegionLen <= len; ++i) {
        FitRegion(payload + 8 + i * kRegionLen);
      }
    } else if (request == kAddMemReg && len >= 8 + kRegionLen) {
      FitRegion(payload + 8);
    } else if (request == kSetVringAddr && len >= 40 && !regions_.empty()) {
      uint32_t index;
      std::memcpy(&index, payload, 4);
      const Region& r =
          *std::max_element(regions_.begin(), regions_.end(),
                            [](const Region& a, const Region& b) { return a.size < b.size; });
      // desc, used, avail: 64 KiB a queue after the first, used 32 KiB in,
      // avail 16 KiB in (room for 1024 entries of each).
      const uint64_t base = r.user + 0x10000 * (1 + index % 14);
      const uint64_t place[3] = {base, base + 0x8000, base + 0x4000};
      for (int k = 0; k < 3; ++k) {
        const uint64_t a = Get64(payload + 8 + 8 * k);
        if (!Inside(a)) Put64(payload + 8 + 8 * k, place[k]);
      }
    }
  }

  void FitRegion(uint8_t* region) {
    const uint64_t size = std::min(Get64(region + 8), kMemfdSize);
    Put64(region + 8, size);
    Put64(region + 24, 0);  // mmap offset.
    regions_.push_back({Get64(region + 16), size});
  }

  bool Inside(uint64_t a) const {
    for (const Region& r : regions_) {
      if (a >= r.user && a - r.user + 0x1000 <= r.size) return true;
    }
    return false;
  }

  void Write(const std::vector<uint8_t>& m, size_t nfds, bool mem) {
    const uint8_t spec = static_cast<uint8_t>(nfds | (mem ? 0x10 : 0));
    const uint16_t len = static_cast<uint16_t>(m.size());
    std::fputc(spec, out_);
    std::fputc(len & 0xff, out_);
    std::fputc(len >> 8, out_);
    std::fwrite(m.data(), 1, m.size(), out_);
  }

  FILE* out_;
  std::vector<Region> regions_;
  size_t messages_ = 0;
};

bool FillAddress(const std::string& path, sockaddr_un* a) {
  if (path.size() >= sizeof(a->sun_path)) return false;
  std::memset(a, 0, sizeof(*a));
  a->sun_family = AF_UNIX;
  std::memcpy(a->sun_path, path.c_str(), path.size());
  return true;
}

// One message from `from` (read as the backend reads it: vu::ReadMessage),
// written whole with its fds to `to`, and recorded if `rec`. False when
// either side closes or breaks the framing.
bool Relay(int from, int to, Recorder* rec) {
  absl::StatusOr<vu::Message> m = vu::ReadMessage(from);
  if (!m.ok()) return false;
  if (rec != nullptr) {
    std::vector<uint8_t> bytes(kHeaderLen + m->header.size);
    std::memcpy(bytes.data(), &m->header, kHeaderLen);
    std::memcpy(bytes.data() + kHeaderLen, m->payload, m->header.size);
    std::vector<int> fds;
    for (const UniqueFd& fd : m->fds) fds.push_back(fd.get());
    rec->Add(bytes.data(), bytes.size(), fds.data(), fds.size());
  }
  return vu::WriteMessage(to, *m).ok();
}

int Fail(const char* what) {
  std::fprintf(stderr, "vu_recorder: %s: %s\n", what, std::strerror(errno));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  if (FLAGS_listen.empty() || FLAGS_backend.empty() || FLAGS_out.empty()) {
    std::fprintf(stderr, "usage: vu_recorder --listen PATH --backend PATH --out FILE\n");
    return 1;
  }
  sockaddr_un listen_addr, backend_addr;
  if (!FillAddress(FLAGS_listen, &listen_addr) || !FillAddress(FLAGS_backend, &backend_addr)) {
    std::fprintf(stderr, "vu_recorder: socket path too long\n");
    return 1;
  }
  UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  unlink(FLAGS_listen.c_str());
  if (bind(listener.get(), reinterpret_cast<sockaddr*>(&listen_addr), sizeof(listen_addr)) != 0 ||
      listen(listener.get(), 1) != 0) {
    return Fail("listen");
  }
  FILE* out = std::fopen(FLAGS_out.c_str(), "wb");
  if (out == nullptr) return Fail(FLAGS_out.c_str());
  std::fprintf(stderr, "vu_recorder: listening on %s\n", FLAGS_listen.c_str());
  UniqueFd frontend(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!frontend.valid()) return Fail("accept");
  UniqueFd backend(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (connect(backend.get(), reinterpret_cast<sockaddr*>(&backend_addr), sizeof(backend_addr)) !=
      0) {
    return Fail("connect to the backend");
  }
  Recorder rec(out);
  pollfd p[2] = {{frontend.get(), POLLIN, 0}, {backend.get(), POLLIN, 0}};
  for (;;) {
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if ((p[0].revents & (POLLIN | POLLHUP)) && !Relay(frontend.get(), backend.get(), &rec)) break;
    if ((p[1].revents & (POLLIN | POLLHUP)) && !Relay(backend.get(), frontend.get(), nullptr))
      break;
  }
  std::fclose(out);
  unlink(FLAGS_listen.c_str());
  std::fprintf(stderr, "vu_recorder: %zu messages recorded in %s\n", rec.messages(),
               FLAGS_out.c_str());
  return 0;
}
