// state_tamper: a vhost-user proxy for the migration tests. It sits between a
// frontend (QEMU) and a backend (vunet), relays every message and fd, and can
// trace the conversation, count the device state that goes through
// SET_DEVICE_STATE_FD, or spoil the state a destination loads.
//
//   state_tamper --listen /tmp/x/proxy.sock --backend /tmp/x/vunet.sock
//       --mode truncate --trace /tmp/x/trace.log
//
// It listens on --listen; for the one frontend that connects there it connects
// to --backend and relays both ways until either side closes. Modes:
//   relay     messages and fds go through unchanged (the default).
//   count     the device state's fd is replaced by a pipe of ours each way:
//             the bytes are copied unchanged and counted.
//   truncate  as count, but the state a backend loads (direction 1) is cut to
//             --keep of its length.
//   flip      as count, but one bit of the loaded state is flipped, at byte
//             --flip-at (default: the middle).
// SET_DEVICE_STATE_FD (payload: u32 direction, 0 save / 1 load; u32 phase;
// one fd) is answered with a u64 whose bit 8 says the backend returned no fd;
// when it returns one, that fd is the one the frontend will use, so ours
// replaces it in the reply too. CHECK_DEVICE_STATE is held until the copies
// are done (at most 2 s), so the backend judges the state we meant to give it.
//
// --fake_state_bytes N plays, in front of a backend without device state, one
// that has it: GET_PROTOCOL_FEATURES replies gain DEVICE_STATE (bit 19), which
// SET_PROTOCOL_FEATURES loses on its way to the backend; SET_DEVICE_STATE_FD
// and CHECK_DEVICE_STATE are answered here: a source saves N bytes of a
// checksummed pattern, a destination checks what it loads (after the mode's
// truncation or flip) and CHECK_DEVICE_STATE fails if it is not that. It shows
// what a frontend does with a backend that carries state, and tries the
// tests' side of it before the backend has any.
//
// --trace writes one line per message: milliseconds since the frontend came,
// the direction (F>B or B>F), the request, its size and fds, and the fields
// that tell the migration story (vring index and number, features, log and
// device-state parameters, reply values). Each copy writes a line
//   state: load 1234 bytes copied, 617 given (truncate)
// to stderr and the trace.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "base/unique_fd.h"
#include "vu/message.h"

ABSL_FLAG(std::string, listen, "", "the socket the frontend connects to");
ABSL_FLAG(std::string, backend, "", "the backend's socket");
ABSL_FLAG(std::string, mode, "relay", "relay, count, truncate or flip");
ABSL_FLAG(std::string, trace, "", "a file for one line per message");
ABSL_FLAG(double, keep, 0.5, "truncate: the share of the loaded state given to the backend");
ABSL_FLAG(int64_t, flip_at, -1, "flip: the byte whose lowest bit flips (-1: the middle)");
ABSL_FLAG(
    int64_t, fake_state_bytes, 0,
    "if above 0, play a backend with a device state of this many bytes (see the file comment)");

namespace vunet::migration {
namespace {

namespace vu = vunet::vu;

constexpr uint32_t kDirectionLoad = 1;
constexpr uint64_t kNoFdReturned = 1u << 8;

enum class Mode { kRelay, kCount, kTruncate, kFlip };

class Trace {
 public:
  explicit Trace(FILE* out) : out_(out), start_(std::chrono::steady_clock::now()) {}

  void Line(const std::string& text) {
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_)
            .count();
    std::lock_guard<std::mutex> lock(mu_);
    if (out_ == nullptr) return;
    std::fprintf(out_, "%10.3f %s\n", ms, text.c_str());
    std::fflush(out_);
  }

 private:
  std::mutex mu_;
  FILE* out_;
  std::chrono::steady_clock::time_point start_;
};

uint64_t U64(const vu::Message& m, size_t offset = 0) {
  uint64_t v = 0;
  if (m.header.size >= offset + 8) std::memcpy(&v, m.payload + offset, 8);
  return v;
}
uint32_t U32(const vu::Message& m, size_t offset) {
  uint32_t v = 0;
  if (m.header.size >= offset + 4) std::memcpy(&v, m.payload + offset, 4);
  return v;
}

// The fields worth seeing of one message.
std::string Describe(const vu::Message& m, bool from_frontend) {
  using vu::Request;
  std::string s = absl::StrFormat("%s %s%s size=%d fds=%d", from_frontend ? "F>B" : "B>F",
                                  from_frontend ? "" : "reply ", vu::RequestName(m.header.request),
                                  m.header.size, m.fds.size());
  if (from_frontend && m.need_reply()) s += " need_reply";
  const auto request = static_cast<Request>(m.header.request);
  if (!from_frontend) {
    if (request == Request::kGetVringBase) {
      s += absl::StrFormat(" index=%d num=%d", U32(m, 0), U32(m, 4));
    } else if (m.header.size == 8) {
      s += absl::StrFormat(" u64=%#x", U64(m));
    }
    return s;
  }
  switch (request) {
    case Request::kSetVringNum:
    case Request::kSetVringBase:
    case Request::kGetVringBase:
    case Request::kSetVringEnable:
      s += absl::StrFormat(" index=%d num=%d", U32(m, 0), U32(m, 4));
      break;
    case Request::kSetVringAddr:
      s += absl::StrFormat(" index=%d flags=%#x", U32(m, 0), U32(m, 4));
      break;
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
      s += absl::StrFormat(" index=%d%s", U64(m) & vu::kVringIndexMask,
                           (U64(m) & vu::kVringNoFdMask) ? " nofd" : "");
      break;
    case Request::kSetFeatures:
    case Request::kSetProtocolFeatures:
    case Request::kSetStatus:
      s += absl::StrFormat(" u64=%#x", U64(m));
      break;
    case Request::kSetLogBase:
      s += absl::StrFormat(" mmap_size=%d offset=%d", U64(m, 0), U64(m, 8));
      break;
    case Request::kSetMemTable:
      s += absl::StrFormat(" regions=%d", U32(m, 0));
      break;
    case Request::kSetDeviceStateFd:
      s += absl::StrFormat(" direction=%d phase=%d", U32(m, 0), U32(m, 4));
      break;
    default:
      break;
  }
  return s;
}

// The state --fake_state_bytes saves: a magic, the length, the pattern, the
// sum of the pattern's bytes.
constexpr char kFakeMagic[8] = {'F', 'A', 'K', 'E', 'S', 'T', 'A', 'T'};

std::vector<uint8_t> FakeState(size_t n) {
  std::vector<uint8_t> d(sizeof(kFakeMagic) + 8 + n + 8);
  std::memcpy(d.data(), kFakeMagic, sizeof(kFakeMagic));
  const uint64_t len = n;
  std::memcpy(d.data() + 8, &len, 8);
  uint64_t sum = 0;
  for (size_t i = 0; i < n; ++i) {
    d[16 + i] = static_cast<uint8_t>(i * 31 + 7);
    sum += d[16 + i];
  }
  std::memcpy(d.data() + 16 + n, &sum, 8);
  return d;
}

bool FakeStateValid(const std::vector<uint8_t>& d) {
  if (d.size() < 24 || std::memcmp(d.data(), kFakeMagic, sizeof(kFakeMagic)) != 0) return false;
  uint64_t len, sum;
  std::memcpy(&len, d.data() + 8, 8);
  if (len != d.size() - 24) return false;
  std::memcpy(&sum, d.data() + 16 + len, 8);
  return d == FakeState(len) && sum != 0;
}

// Copies everything from `from` to `to` until `from` ends, changing it as
// `mode` says when `tamper`, on a thread of its own (detached: a copy blocked
// on a pipe its peer holds open must not hold up the proxy's exit); reports
// the bytes and closes both. The flag returned turns true when it is done.
class Pump {
 public:
  // Without `to` (the fake backend's load), what would have been written is
  // checked instead: `valid` says whether it was the fake state.
  static std::shared_ptr<std::atomic<bool>> Start(
      Trace* trace, Mode mode, bool tamper, const char* what, UniqueFd from, UniqueFd to,
      const std::shared_ptr<std::atomic<bool>>& valid = nullptr) {
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::thread([trace, mode = tamper ? mode : Mode::kCount, what, from = std::move(from),
                 to = std::move(to), done, valid]() mutable {
      std::vector<uint8_t> given = Run(trace, mode, what, from.get(), to.get());
      if (valid != nullptr) {
        *valid = FakeStateValid(given);
        trace->Line(absl::StrFormat("state: the fake backend loaded %d bytes: %s", given.size(),
                                    *valid ? "valid" : "INVALID"));
      }
      from.reset();
      to.reset();
      *done = true;
    }).detach();
    return done;
  }

 private:
  // Returns what was given (or would have been, without `to`).
  static std::vector<uint8_t> Run(Trace* trace, Mode mode, const char* what, int from, int to) {
    std::vector<uint8_t> data;
    uint8_t buf[65536];
    size_t given = 0;
    for (;;) {
      const ssize_t n = read(from, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      data.insert(data.end(), buf, buf + n);
      if (mode == Mode::kCount && to >= 0 && !WriteAll(to, buf, n)) break;
    }
    const size_t total = data.size();
    if (mode == Mode::kTruncate) {
      given = static_cast<size_t>(static_cast<double>(total) * absl::GetFlag(FLAGS_keep));
      if (given > total) given = total;
      data.resize(given);
      if (to >= 0) WriteAll(to, data.data(), given);
    } else if (mode == Mode::kFlip) {
      const int64_t at = absl::GetFlag(FLAGS_flip_at);
      const size_t i = at >= 0 ? static_cast<size_t>(at) : total / 2;
      if (i < total) data[i] ^= 1;
      given = total;
      if (to >= 0) WriteAll(to, data.data(), given);
    } else {
      given = total;
    }
    static constexpr const char* kNames[] = {"relay", "count", "truncate", "flip"};
    const std::string line = absl::StrFormat("state: %s %d bytes copied, %d given (%s)", what,
                                             total, given, kNames[static_cast<int>(mode)]);
    std::fprintf(stderr, "state_tamper: %s\n", line.c_str());
    trace->Line(line);
    return data;
  }

  static bool WriteAll(int fd, const uint8_t* p, size_t n) {
    while (n > 0) {
      const ssize_t w = write(fd, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
};

struct Pipe {
  UniqueFd read;
  UniqueFd write;
};

bool MakePipe(Pipe* p) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return false;
  p->read.reset(fds[0]);
  p->write.reset(fds[1]);
  return true;
}

class Proxy {
 public:
  Proxy(Trace* trace, Mode mode, size_t fake_bytes)
      : trace_(trace), mode_(mode), fake_bytes_(fake_bytes) {}

  // Relays one message from the frontend; false when either side is gone.
  bool FromFrontend(int frontend, int backend) {
    absl::StatusOr<vu::Message> m = vu::ReadMessage(frontend);
    if (!m.ok()) return false;
    trace_->Line(Describe(*m, true));
    const auto request = static_cast<vu::Request>(m->header.request);
    if (fake_bytes_ > 0) {
      if (request == vu::Request::kSetDeviceStateFd) return FakeSetFd(&*m, frontend);
      if (request == vu::Request::kCheckDeviceState) return FakeCheck(*m, frontend);
      if (request == vu::Request::kSetProtocolFeatures) {
        const uint64_t features = U64(*m) & ~(1ull << vu::kProtocolFDeviceState);
        std::memcpy(m->payload, &features, 8);
      }
    }
    if (request == vu::Request::kSetDeviceStateFd) {
      direction_ = U32(*m, 0);
      if (mode_ != Mode::kRelay && m->fds.size() == 1) SubstituteRequestFd(&*m);
    } else if (request == vu::Request::kCheckDeviceState &&
               (mode_ == Mode::kTruncate || mode_ == Mode::kFlip)) {
      WaitForPumps();
    }
    return vu::WriteMessage(backend, *m).ok();
  }

  // Relays one message from the backend; false when either side is gone.
  bool FromBackend(int backend, int frontend) {
    absl::StatusOr<vu::Message> m = vu::ReadMessage(backend);
    if (!m.ok()) return false;
    trace_->Line(Describe(*m, false));
    if (fake_bytes_ > 0 &&
        static_cast<vu::Request>(m->header.request) == vu::Request::kGetProtocolFeatures) {
      const uint64_t features = U64(*m) | (1ull << vu::kProtocolFDeviceState);
      std::memcpy(m->payload, &features, 8);
    }
    if (mode_ != Mode::kRelay &&
        static_cast<vu::Request>(m->header.request) == vu::Request::kSetDeviceStateFd &&
        !(U64(*m) & kNoFdReturned) && m->fds.size() == 1) {
      SubstituteReplyFd(&*m);
    }
    return vu::WriteMessage(frontend, *m).ok();
  }

 private:
  bool load() const { return direction_ == kDirectionLoad; }

  bool Reply(int frontend, const vu::Header& request, uint64_t value) {
    trace_->Line(absl::StrFormat("P>F reply %s u64=%#x (the fake backend's)",
                                 vu::RequestName(request.request), value));
    return vu::WriteReply(frontend, request, value).ok();
  }

  // SET_DEVICE_STATE_FD for the fake backend: save writes the fake state into
  // the fd, load reads it (through the mode) and checks it.
  bool FakeSetFd(vu::Message* m, int frontend) {
    direction_ = U32(*m, 0);
    if (m->fds.size() != 1) return Reply(frontend, m->header, 0xff | kNoFdReturned);
    UniqueFd fd = std::move(m->fds[0]);
    if (load()) {
      fake_valid_ = std::make_shared<std::atomic<bool>>(false);
      pumps_.push_back(Pump::Start(trace_, mode_, true, "load (fake backend)", std::move(fd),
                                   UniqueFd(), fake_valid_));
    } else {
      fake_valid_ = std::make_shared<std::atomic<bool>>(true);
      auto done = std::make_shared<std::atomic<bool>>(false);
      std::thread([this, fd = std::move(fd), done]() mutable {
        const std::vector<uint8_t> state = FakeState(fake_bytes_);
        size_t off = 0;
        while (off < state.size()) {
          const ssize_t w = write(fd.get(), state.data() + off, state.size() - off);
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) break;
          off += static_cast<size_t>(w);
        }
        fd.reset();
        trace_->Line(absl::StrFormat("state: the fake backend saved %d bytes", off));
        *done = true;
      }).detach();
      pumps_.push_back(done);
    }
    return Reply(frontend, m->header, kNoFdReturned);
  }

  bool FakeCheck(const vu::Message& m, int frontend) {
    WaitForPumps(std::chrono::seconds(10));
    const bool ok = fake_valid_ != nullptr && *fake_valid_;
    return Reply(frontend, m.header, ok ? 0 : 1);
  }

  // The frontend's fd stays with us; the backend gets one end of our pipe.
  // Load: the frontend writes, the backend reads: frontend fd -> pipe -> backend.
  // Save: the backend writes, the frontend reads: backend -> pipe -> frontend fd.
  void SubstituteRequestFd(vu::Message* m) {
    Pipe p;
    if (!MakePipe(&p)) return;
    UniqueFd theirs = std::move(m->fds[0]);
    if (load()) {
      m->fds[0] = std::move(p.read);
      pumps_.push_back(
          Pump::Start(trace_, mode_, true, "load", std::move(theirs), std::move(p.write)));
    } else {
      m->fds[0] = std::move(p.write);
      pumps_.push_back(
          Pump::Start(trace_, mode_, false, "save", std::move(p.read), std::move(theirs)));
    }
  }

  // The backend returned an fd of its own for the frontend to use instead:
  // the frontend gets one end of another pipe of ours.
  void SubstituteReplyFd(vu::Message* m) {
    Pipe p;
    if (!MakePipe(&p)) return;
    UniqueFd theirs = std::move(m->fds[0]);
    if (load()) {
      m->fds[0] = std::move(p.write);
      pumps_.push_back(Pump::Start(trace_, mode_, true, "load (backend's fd)", std::move(p.read),
                                   std::move(theirs)));
    } else {
      m->fds[0] = std::move(p.read);
      pumps_.push_back(Pump::Start(trace_, mode_, false, "save (backend's fd)", std::move(theirs),
                                   std::move(p.write)));
    }
  }

  void WaitForPumps(std::chrono::seconds limit = std::chrono::seconds(2)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      bool all = true;
      for (const auto& done : pumps_) all = all && *done;
      if (all || std::chrono::steady_clock::now() > deadline) return;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  Trace* trace_;
  Mode mode_;
  size_t fake_bytes_;
  std::shared_ptr<std::atomic<bool>> fake_valid_;
  uint32_t direction_ = 0;
  std::vector<std::shared_ptr<std::atomic<bool>>> pumps_;
};

// A UNIX stream socket listening on `path` (`listen` true; a stale file there
// is removed) or connected to it; invalid on error, with errno set.
UniqueFd UnixSocket(const std::string& path, bool listening) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path)) {
    errno = ENAMETOOLONG;
    return UniqueFd();
  }
  path.copy(a.sun_path, path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const auto* addr = reinterpret_cast<const sockaddr*>(&a);
  if (listening) {
    unlink(path.c_str());
    if (bind(fd.get(), addr, sizeof(a)) != 0 || listen(fd.get(), 1) != 0) return UniqueFd();
  } else if (connect(fd.get(), addr, sizeof(a)) != 0) {
    return UniqueFd();
  }
  return fd;
}

int Fail(const char* what) {
  std::fprintf(stderr, "state_tamper: %s: %s\n", what, std::strerror(errno));
  return 1;
}

int Main() {
  const std::string listen_path = absl::GetFlag(FLAGS_listen);
  const std::string backend_path = absl::GetFlag(FLAGS_backend);
  const std::string mode_name = absl::GetFlag(FLAGS_mode);
  Mode mode;
  if (mode_name == "relay") {
    mode = Mode::kRelay;
  } else if (mode_name == "count") {
    mode = Mode::kCount;
  } else if (mode_name == "truncate") {
    mode = Mode::kTruncate;
  } else if (mode_name == "flip") {
    mode = Mode::kFlip;
  } else {
    std::fprintf(stderr, "state_tamper: --mode %s: relay, count, truncate or flip\n",
                 mode_name.c_str());
    return 1;
  }
  if (listen_path.empty() || backend_path.empty()) {
    std::fprintf(stderr, "usage: state_tamper --listen PATH --backend PATH [--mode M]\n");
    return 1;
  }
  FILE* trace_file = nullptr;
  if (!absl::GetFlag(FLAGS_trace).empty()) {
    trace_file = std::fopen(absl::GetFlag(FLAGS_trace).c_str(), "w");
    if (trace_file == nullptr) return Fail("--trace");
  }
  UniqueFd listener = UnixSocket(listen_path, true);
  if (!listener.valid()) return Fail("listen");
  std::fprintf(stderr, "state_tamper: listening on %s (mode %s)\n", listen_path.c_str(),
               mode_name.c_str());
  UniqueFd frontend(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!frontend.valid()) return Fail("accept");
  UniqueFd backend = UnixSocket(backend_path, false);
  if (!backend.valid()) return Fail("connect to the backend");
  // Never freed: detached copies may still report through it.
  Trace& trace = *new Trace(trace_file);
  trace.Line("frontend connected");
  {
    Proxy proxy(&trace, mode,
                static_cast<size_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_fake_state_bytes))));
    pollfd p[2] = {{frontend.get(), POLLIN, 0}, {backend.get(), POLLIN, 0}};
    for (;;) {
      if (poll(p, 2, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) &&
          !proxy.FromFrontend(frontend.get(), backend.get())) {
        trace.Line("frontend closed");
        break;
      }
      if ((p[1].revents & (POLLIN | POLLHUP | POLLERR)) &&
          !proxy.FromBackend(backend.get(), frontend.get())) {
        trace.Line("backend closed");
        break;
      }
    }
  }
  unlink(listen_path.c_str());
  std::fprintf(stderr, "state_tamper: done\n");
  return 0;
}

}  // namespace
}  // namespace vunet::migration

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  signal(SIGPIPE, SIG_IGN);  // A peer that closed its pipe is an error of write(), not a death.
  return vunet::migration::Main();
}
