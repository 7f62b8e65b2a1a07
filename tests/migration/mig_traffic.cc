// mig_traffic: the traffic of the migration tests, on both sides of the
// guest's NIC. The host runs the server; the guest (a busybox initramfs with
// this binary and its libraries added) runs the clients. Every byte is a
// function of its stream's seed and offset, so either side checks what it
// gets without a copy of what was sent, and a page of guest memory that
// migration left stale shows up as a mismatch at a known offset.
//
// Host:
//   mig_traffic server --port P [--bind 127.0.0.1] [--phase-file FILE]
//     TCP: each connection starts with a request (Request below):
//       stream  the client sends `up` bytes of pattern(seed) while we send
//               `down` bytes of pattern(seed + 1) at `rate` bytes/s, reading
//               at `read_rate` bytes/s (0: unpaced); `down` of kInfinite: until
//               the client's end of stream. One line per connection at its
//               end: what came (checked), what went, the longest gap between
//               arrivals and when it was (wall clock).
//       echo    what arrives goes back, until the client closes.
//       phase   we send the number in FILE (0 if absent) and close: how the
//               test tells the guest that a migration happened.
//     UDP on the same port: a "MIGU" request starts a stream of datagrams to
//     its sender (count, rate, size; each "MIGD", sequence number, pattern);
//     anything else is echoed.
//
// Guest (each prints one line saying what happened, exits 0 when that is the
// outcome asked for, 1 otherwise):
//   mig_traffic stream --host H --port P --seed S --up N|inf --down N|inf
//       [--rate B/s] [--read-rate B/s] [--send-rate B/s] [--recv-rate B/s]
//       [--out FILE] [--stop-file F] [--stall-timeout S] [--name NAME]
//       [--expect complete|intact]
//     `inf` sends until F exists (up), or has the server send until our end
//     of stream (down). complete: every byte both ways, checked, and an
//     orderly end; intact: what arrived is right, however it ended.
//   mig_traffic verify --seed S --file FILE      (the server's stream seed + 1)
//   mig_traffic hold --host H --port P --count N --until F [--expect ok|reset]
//       [--within MS] [--bytes N]
//     N echo connections, one byte echoed on each; once F exists, --bytes on
//     each: ok, all echoed within MS; reset, each ended by the peer (RST or
//     FIN) within MS, none silent.
//   mig_traffic udp-recv --host H --port P --seed S --count N --rate PPS
//       --size B [--stop-file F] [--stall-timeout S] [--name NAME]
//   mig_traffic udp-echo --host H --port P --interval MS --size B --stop-file F
//       [--name NAME]
//   mig_traffic phase --host H --port P --at-least N [--timeout S]

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr uint64_t kInfinite = UINT64_MAX;
constexpr size_t kChunk = 65536;
constexpr uint32_t kMagic = 0x5447494d;     // "MIGT"
constexpr uint32_t kUdpMagic = 0x5547494d;  // "MIGU": a request for a UDP stream.
constexpr uint32_t kUdpData = 0x4447494d;   // "MIGD": a datagram of one.
constexpr uint32_t kUdpEcho = 0x4547494d;   // "MIGE": echoed back.
enum Command : uint32_t { kStream = 1, kEcho = 2, kPhase = 3 };

struct Request {
  uint32_t magic = kMagic;
  uint32_t command = 0;
  uint64_t seed = 0;
  uint64_t up = 0;         // Bytes the client sends.
  uint64_t down = 0;       // Bytes the server sends (kInfinite: until the client's end).
  uint64_t rate = 0;       // The server's sending pace, bytes/s (0: unpaced).
  uint64_t read_rate = 0;  // The server's reading pace, bytes/s.
};
static_assert(sizeof(Request) == 48);

struct UdpRequest {
  uint32_t magic = kUdpMagic;
  uint32_t size = 0;
  uint64_t seed = 0;
  uint64_t count = 0;
  uint64_t rate = 0;  // Datagrams a second.
};
struct UdpHeader {
  uint32_t magic = kUdpData;
  uint32_t pad = 0;
  uint64_t seq = 0;
};

std::mutex out_mu;

void Say(const char* format, ...) {
  std::lock_guard<std::mutex> lock(out_mu);
  va_list ap;
  va_start(ap, format);
  std::vfprintf(stdout, format, ap);
  va_end(ap);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

[[noreturn]] void Die(const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  std::fputs("mig_traffic: ", stderr);
  std::vfprintf(stderr, format, ap);
  va_end(ap);
  std::fputc('\n', stderr);
  std::exit(2);
}

// --- The pattern ---------------------------------------------------------------------------------

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Word(uint64_t seed, uint64_t index) { return Mix(Mix(seed) ^ index); }

// Bytes [offset, offset + n) of stream `seed`: byte i is byte i % 8 of the
// little-endian Word(seed, i / 8).
void Fill(uint64_t seed, uint64_t offset, uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint64_t at = offset + i;
    const uint64_t w = Word(seed, at / 8);
    const size_t skip = at % 8;
    const size_t take = std::min<size_t>(8 - skip, n - i);
    std::memcpy(p + i, reinterpret_cast<const uint8_t*>(&w) + skip, take);
    i += take;
  }
}

// The index of the first byte of p[0, n) that is not stream `seed` at
// `offset`, or n.
size_t Check(uint64_t seed, uint64_t offset, const uint8_t* p, size_t n) {
  uint8_t expected[kChunk];
  for (size_t done = 0; done < n;) {
    const size_t len = std::min(n - done, sizeof(expected));
    Fill(seed, offset + done, expected, len);
    if (std::memcmp(expected, p + done, len) != 0) {
      for (size_t i = 0; i < len; ++i) {
        if (expected[i] != p[done + i]) return done + i;
      }
    }
    done += len;
  }
  return n;
}

// --- Time, pacing, gaps
// ---------------------------------------------------------------------------

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

double WallNow() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

void SleepNs(int64_t ns) {
  if (ns <= 0) return;
  timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Keeps `bytes` done to `rate` bytes a second since the start (0: no pace).
class Pacer {
 public:
  explicit Pacer(uint64_t rate) : rate_(rate), start_(NowNs()) {}
  void Wait(uint64_t bytes) const {
    if (rate_ == 0) return;
    const int64_t due = start_ + static_cast<int64_t>(static_cast<double>(bytes) * 1e9 / rate_);
    SleepNs(due - NowNs());
  }
  // How many bytes at a time keep the pace smooth: 10 ms worth.
  size_t Chunk() const {
    if (rate_ == 0) return kChunk;
    return std::clamp<size_t>(rate_ / 100, 1024, kChunk);
  }

 private:
  uint64_t rate_;
  int64_t start_;
};

// The gaps between arrivals of data.
class Gaps {
 public:
  void Arrived() {
    const int64_t now = NowNs();
    if (last_ != 0) {
      const int64_t gap = now - last_;
      gaps_us_.push_back(static_cast<uint32_t>(std::min<int64_t>(gap / 1000, UINT32_MAX)));
      if (gap > max_) {
        max_ = gap;
        max_mono_ = last_ / 1e9;
        max_wall_ = WallNow() - gap / 1e9;
      }
    }
    last_ = now;
  }
  // " max_gap_ms=... gap_at=... gap_at_wall=... p50_gap_ms=... p99_gap_ms=..."
  std::string Describe() {
    char buf[200];
    std::vector<uint32_t> sorted = gaps_us_;
    std::sort(sorted.begin(), sorted.end());
    auto pct = [&](double p) {
      return sorted.empty() ? 0.0 : sorted[static_cast<size_t>(p * (sorted.size() - 1))] / 1000.0;
    };
    std::snprintf(buf, sizeof(buf),
                  " max_gap_ms=%.1f gap_at=%.3f gap_at_wall=%.3f p50_gap_ms=%.1f p99_gap_ms=%.1f",
                  max_ / 1e6, max_mono_, max_wall_, pct(0.5), pct(0.99));
    return buf;
  }

 private:
  int64_t last_ = 0;
  int64_t max_ = 0;
  double max_mono_ = 0;  // When the longest gap began: CLOCK_MONOTONIC (the guest's uptime).
  double max_wall_ = 0;  // And by the wall clock (the host's).
  std::vector<uint32_t> gaps_us_;
};

// --- Arguments
// ------------------------------------------------------------------------------------

class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 2; i < argc; ++i) {
      std::string key = argv[i];
      if (key.rfind("--", 0) != 0 || i + 1 >= argc) Die("bad argument %s", argv[i]);
      values_[key.substr(2)] = argv[++i];
    }
  }
  std::string Str(const char* name, const char* fallback = nullptr) const {
    auto it = values_.find(name);
    if (it != values_.end()) return it->second;
    if (fallback == nullptr) Die("--%s is needed", name);
    return fallback;
  }
  // A count with an optional K, M or G (powers of 1024) suffix; "inf" is kInfinite.
  uint64_t U64(const char* name, const char* fallback = nullptr) const {
    const std::string s = Str(name, fallback);
    if (s == "inf") return kInfinite;
    char* end = nullptr;
    uint64_t v = std::strtoull(s.c_str(), &end, 10);
    if (end == s.c_str()) Die("--%s %s is not a number", name, s.c_str());
    switch (*end) {
      case 'K':
        v <<= 10;
        break;
      case 'M':
        v <<= 20;
        break;
      case 'G':
        v <<= 30;
        break;
      case '\0':
        break;
      default:
        Die("--%s %s is not a number", name, s.c_str());
    }
    return v;
  }
  double Double(const char* name, const char* fallback) const {
    return std::strtod(Str(name, fallback).c_str(), nullptr);
  }

 private:
  std::map<std::string, std::string> values_;
};

// --- Sockets
// --------------------------------------------------------------------------------------

sockaddr_in Address(const std::string& host, uint64_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) Die("bad address %s", host.c_str());
  return a;
}

// A connected TCP socket (blocking), or -1 with errno set, within `timeout_ms`.
int Connect(const sockaddr_in& a, int timeout_ms) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0 && errno != EINPROGRESS) {
    const int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  pollfd p{fd, POLLOUT, 0};
  int err = 0;
  socklen_t len = sizeof(err);
  if (poll(&p, 1, timeout_ms) != 1) {
    err = ETIMEDOUT;
  } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
    err = errno;
  }
  if (err != 0) {
    close(fd);
    errno = err;
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

bool WriteAll(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, void* data, size_t n) {
  auto* p = static_cast<uint8_t*>(data);
  while (n > 0) {
    const ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// How a read side ended: "eof", "reset" or "error:..." (errno e; 0 for eof).
std::string EndName(int e) {
  if (e == 0) return "eof";
  if (e == ECONNRESET) return "reset";
  if (e == ETIMEDOUT) return "timedout";
  return std::string("error:") + std::strerror(e);
}

bool Exists(const std::string& path) { return !path.empty() && access(path.c_str(), F_OK) == 0; }

void RaiseFdLimit() {
  rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

// --- The server
// -----------------------------------------------------------------------------------

std::atomic<uint64_t> next_connection{1};

// Reads a stream's upload, checks it, keeps to `rate`. Returns the line's part.
std::string ReceiveChecked(int fd, uint64_t seed, uint64_t expected, uint64_t rate,
                           uint64_t* received, bool* ok) {
  std::vector<uint8_t> buf(kChunk);
  Pacer pacer(rate);
  Gaps gaps;
  uint64_t mismatch = kInfinite;
  int end = 0;
  for (;;) {
    const size_t want = rate ? std::min(pacer.Chunk(), buf.size()) : buf.size();
    const ssize_t r = read(fd, buf.data(), want);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      end = r == 0 ? 0 : errno;
      break;
    }
    gaps.Arrived();
    if (mismatch == kInfinite) {
      const size_t bad = Check(seed, *received, buf.data(), static_cast<size_t>(r));
      if (bad < static_cast<size_t>(r)) mismatch = *received + bad;
    }
    *received += static_cast<uint64_t>(r);
    pacer.Wait(*received);
  }
  *ok = mismatch == kInfinite && (expected == kInfinite || *received == expected);
  char line[160];
  std::snprintf(line, sizeof(line), " rx=%" PRIu64 " rx_ok=%s", *received,
                mismatch == kInfinite ? "yes" : "no");
  std::string s = line;
  if (mismatch != kInfinite) s += " mismatch_at=" + std::to_string(mismatch);
  return s + " rx_end=" + EndName(end) + gaps.Describe();
}

void ServeStream(int fd, uint64_t id, const Request& req) {
  std::atomic<bool> upload_done{false};
  uint64_t sent = 0;
  std::string tx_end = "done";
  std::thread sender([&] {
    std::vector<uint8_t> buf(kChunk);
    Pacer pacer(req.rate);
    const size_t chunk = pacer.Chunk();
    while (sent < req.down) {
      if (req.down == kInfinite && upload_done) break;
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, req.down - sent));
      Fill(req.seed + 1, sent, buf.data(), n);
      if (!WriteAll(fd, buf.data(), n)) {
        tx_end = EndName(errno);
        break;
      }
      sent += n;
      pacer.Wait(sent);
    }
    shutdown(fd, SHUT_WR);
  });
  uint64_t received = 0;
  bool ok = false;
  const std::string rx = ReceiveChecked(fd, req.seed, req.up, req.read_rate, &received, &ok);
  upload_done = true;
  sender.join();
  Say("conn %" PRIu64 " stream seed=%" PRIu64 "%s tx=%" PRIu64 " tx_end=%s result=%s", id, req.seed,
      rx.c_str(), sent, tx_end.c_str(), ok ? "ok" : "bad");
}

void ServeEcho(int fd, uint64_t id) {
  uint8_t buf[kChunk];
  uint64_t total = 0;
  int end = 0;
  for (;;) {
    const ssize_t r = read(fd, buf, sizeof(buf));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      end = r == 0 ? 0 : errno;
      break;
    }
    if (!WriteAll(fd, buf, static_cast<size_t>(r))) {
      end = errno;
      break;
    }
    total += static_cast<uint64_t>(r);
  }
  Say("conn %" PRIu64 " echo bytes=%" PRIu64 " end=%s", id, total, EndName(end).c_str());
}

void ServeConnection(int fd, const std::string& phase_file) {
  const uint64_t id = next_connection++;
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  Request req;
  const bool got = ReadAll(fd, &req, sizeof(req));
  tv = {0, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (!got || req.magic != kMagic) {
    Say("conn %" PRIu64 " bad request", id);
  } else if (req.command == kStream) {
    ServeStream(fd, id, req);
  } else if (req.command == kEcho) {
    ServeEcho(fd, id);
  } else if (req.command == kPhase) {
    char buf[32] = "0";
    if (FILE* f = std::fopen(phase_file.c_str(), "r")) {
      if (std::fgets(buf, sizeof(buf), f) == nullptr) std::strcpy(buf, "0");
      std::fclose(f);
    }
    const std::string reply = std::to_string(std::strtoull(buf, nullptr, 10)) + "\n";
    WriteAll(fd, reply.data(), reply.size());
  }
  close(fd);
}

void SendUdpStream(int fd, sockaddr_in to, UdpRequest req) {
  std::vector<uint8_t> buf(sizeof(UdpHeader) + req.size);
  const int64_t start = NowNs();
  uint64_t sent = 0;
  for (uint64_t seq = 0; seq < req.count; ++seq) {
    UdpHeader h;
    h.seq = seq;
    std::memcpy(buf.data(), &h, sizeof(h));
    Fill(req.seed, seq * req.size, buf.data() + sizeof(h), req.size);
    if (sendto(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)) > 0) {
      ++sent;
    }
    // Paced by the millisecond: a burst, then a sleep (a sleep per datagram
    // would not keep up with tens of thousands a second).
    if (req.rate > 0 && (seq + 1) % std::max<uint64_t>(1, req.rate / 1000) == 0) {
      SleepNs(start + static_cast<int64_t>((seq + 1) * 1e9 / req.rate) - NowNs());
    }
  }
  char name[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &to.sin_addr, name, sizeof(name));
  Say("udp stream to %s:%d seed=%" PRIu64 " sent=%" PRIu64 " of %" PRIu64, name, ntohs(to.sin_port),
      req.seed, sent, req.count);
}

void ServeUdp(int fd) {
  std::vector<uint8_t> buf(65536);
  for (;;) {
    sockaddr_in from{};
    socklen_t len = sizeof(from);
    const ssize_t n =
        recvfrom(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("udp recvfrom: %s", std::strerror(errno));
    }
    UdpRequest req;
    if (static_cast<size_t>(n) == sizeof(req)) std::memcpy(&req, buf.data(), sizeof(req));
    if (static_cast<size_t>(n) == sizeof(req) && req.magic == kUdpMagic && req.size <= 60000) {
      std::thread(SendUdpStream, fd, from, req).detach();
    } else {
      sendto(fd, buf.data(), static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&from), len);
    }
  }
}

int Server(const Args& args) {
  RaiseFdLimit();
  const sockaddr_in a = Address(args.Str("bind", "127.0.0.1"), args.U64("port"));
  const std::string phase_file = args.Str("phase-file", "");
  const int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(tcp, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0 || listen(tcp, 4096) != 0) {
    Die("tcp bind: %s", std::strerror(errno));
  }
  const int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (bind(udp, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0) {
    Die("udp bind: %s", std::strerror(errno));
  }
  std::thread(ServeUdp, udp).detach();
  Say("listening on port %d", ntohs(a.sin_port));
  for (;;) {
    const int fd = accept4(tcp, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      Say("accept: %s", std::strerror(errno));
      SleepNs(100000000);
      continue;
    }
    std::thread(ServeConnection, fd, phase_file).detach();
  }
}

// --- Guest clients
// --------------------------------------------------------------------------------

int ConnectWith(const Args& args, const Request& req) {
  const sockaddr_in a = Address(args.Str("host"), args.U64("port"));
  const int fd = Connect(a, static_cast<int>(args.Double("connect-timeout", "10") * 1000));
  if (fd < 0) return -1;
  if (!WriteAll(fd, &req, sizeof(req))) {
    close(fd);
    return -1;
  }
  return fd;
}

int Stream(const Args& args) {
  const std::string name = args.Str("name", "stream");
  const std::string stop_file = args.Str("stop-file", "");
  const std::string out_path = args.Str("out", "");
  const int64_t stall_ns = static_cast<int64_t>(args.Double("stall-timeout", "5") * 1e9);
  const std::string expect = args.Str("expect", "complete");
  Request req;
  req.command = kStream;
  req.seed = args.U64("seed");
  req.up = args.U64("up", "0");
  req.down = args.U64("down", "0");
  req.rate = args.U64("rate", "0");
  req.read_rate = args.U64("read-rate", "0");
  const uint64_t send_rate = args.U64("send-rate", "0");
  const uint64_t recv_rate = args.U64("recv-rate", "0");
  if ((req.up == kInfinite || req.down == kInfinite) && stop_file.empty()) {
    Die("an endless stream needs --stop-file");
  }
  const int fd = ConnectWith(args, req);
  if (fd < 0) {
    Say("STREAM name=%s connect=%s", name.c_str(), std::strerror(errno));
    return 1;
  }
  FILE* out = out_path.empty() ? nullptr : std::fopen(out_path.c_str(), "w");
  if (!out_path.empty() && out == nullptr) Die("%s: %s", out_path.c_str(), std::strerror(errno));
  // Both directions wake up at least every 100 ms to look for the stop file.
  timeval tv{0, 100000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

  std::atomic<bool> receiving{true};
  uint64_t sent = 0;
  std::string tx_end = "done";
  std::thread sender([&] {
    std::vector<uint8_t> buf(kChunk);
    Pacer pacer(send_rate);
    const size_t chunk = pacer.Chunk();
    int64_t last_progress = NowNs();
    bool stopping = false;
    while (sent < req.up && !stopping) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, req.up - sent));
      Fill(req.seed, sent, buf.data(), n);
      size_t off = 0;
      while (off < n) {
        const ssize_t w = send(fd, buf.data() + off, n - off, MSG_NOSIGNAL);
        if (w > 0) {
          off += static_cast<size_t>(w);
          last_progress = NowNs();
          continue;
        }
        if (w < 0 && (errno == EINTR)) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          // An endless upload ends at the stop file; any upload gives up once
          // the stop file exists and the socket has taken nothing for a while.
          if (Exists(stop_file) && (req.up == kInfinite || NowNs() - last_progress > stall_ns)) {
            tx_end = req.up == kInfinite ? "stopped" : "stalled";
            stopping = true;
            break;
          }
          continue;
        }
        tx_end = EndName(w == 0 ? EPIPE : errno);
        stopping = true;
        break;
      }
      sent += off;
      if (req.up == kInfinite && Exists(stop_file)) {
        tx_end = "stopped";
        break;
      }
      pacer.Wait(sent);
    }
    // The server sends an endless download until our end of stream.
    while (req.down == kInfinite && receiving && !Exists(stop_file)) SleepNs(50000000);
    shutdown(fd, SHUT_WR);
  });

  std::vector<uint8_t> buf(kChunk);
  Pacer pacer(recv_rate);
  Gaps gaps;
  uint64_t received = 0;
  uint64_t mismatch = kInfinite;
  std::string end;
  int64_t last_data = NowNs();
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, 100);
    if (ready == 0) {
      if (Exists(stop_file) && NowNs() - last_data > stall_ns) {
        end = "stalled";
        break;
      }
      continue;
    }
    const size_t want = recv_rate ? pacer.Chunk() : buf.size();
    const ssize_t r = read(fd, buf.data(), want);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) {
      end = EndName(r == 0 ? 0 : errno);
      break;
    }
    last_data = NowNs();
    gaps.Arrived();
    if (mismatch == kInfinite) {
      const size_t bad = Check(req.seed + 1, received, buf.data(), static_cast<size_t>(r));
      if (bad < static_cast<size_t>(r)) mismatch = received + bad;
    }
    if (out != nullptr) std::fwrite(buf.data(), 1, static_cast<size_t>(r), out);
    received += static_cast<uint64_t>(r);
    pacer.Wait(received);
  }
  receiving = false;
  sender.join();
  close(fd);
  if (out != nullptr) std::fclose(out);
  const bool intact = mismatch == kInfinite;
  const bool complete = intact && end == "eof" && (req.down == kInfinite || received == req.down) &&
                        (req.up == kInfinite ? tx_end == "stopped" : sent == req.up);
  std::string line = "STREAM name=" + name + " up=" + std::to_string(sent) +
                     " down=" + std::to_string(received) + " rx_ok=" + (intact ? "yes" : "no");
  if (!intact) line += " mismatch_at=" + std::to_string(mismatch);
  line += " end=" + end + " tx_end=" + tx_end + gaps.Describe();
  line += std::string(" result=") +
          (expect == "intact" ? (intact ? "ok" : "bad") : (complete ? "ok" : "bad"));
  Say("%s", line.c_str());
  return (expect == "intact" ? intact : complete) ? 0 : 1;
}

int Verify(const Args& args) {
  const std::string path = args.Str("file");
  const uint64_t seed = args.U64("seed");
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) Die("%s: %s", path.c_str(), std::strerror(errno));
  std::vector<uint8_t> buf(kChunk);
  uint64_t offset = 0;
  uint64_t mismatch = kInfinite;
  for (;;) {
    const size_t n = std::fread(buf.data(), 1, buf.size(), f);
    if (n == 0) break;
    const size_t bad = Check(seed, offset, buf.data(), n);
    if (bad < n && mismatch == kInfinite) mismatch = offset + bad;
    offset += n;
  }
  std::fclose(f);
  if (mismatch == kInfinite) {
    Say("VERIFY file=%s bytes=%" PRIu64 " ok", path.c_str(), offset);
    return 0;
  }
  Say("VERIFY file=%s bytes=%" PRIu64 " mismatch_at=%" PRIu64, path.c_str(), offset, mismatch);
  return 1;
}

int Hold(const Args& args) {
  RaiseFdLimit();
  const uint64_t count = args.U64("count");
  const std::string until = args.Str("until");
  const std::string expect = args.Str("expect", "ok");
  const int within_ms = static_cast<int>(args.U64("within", expect == "ok" ? "20000" : "3000"));
  const size_t bytes = static_cast<size_t>(args.U64("bytes", "64"));
  Request req;
  req.command = kEcho;
  std::vector<int> fds;
  for (uint64_t i = 0; i < count; ++i) {
    const int fd = ConnectWith(args, req);
    uint8_t b = static_cast<uint8_t>(i);
    uint8_t back = 0;
    if (fd < 0 || !WriteAll(fd, &b, 1) || !ReadAll(fd, &back, 1) || back != b) {
      Say("HOLD opened=%zu of %" PRIu64 " failed: %s", fds.size(), count, std::strerror(errno));
      return 1;
    }
    fds.push_back(fd);
  }
  Say("HOLD opened=%zu", fds.size());
  while (!Exists(until)) SleepNs(100000000);

  std::vector<uint8_t> data(bytes);
  const int64_t start = NowNs();
  size_t sent_ok = 0;
  for (size_t i = 0; i < fds.size(); ++i) {
    Fill(i, 0, data.data(), bytes);
    fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    if (send(fds[i], data.data(), bytes, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes)) ++sent_ok;
  }
  // Each connection: echoed (all bytes back, right), ended (RST or FIN), or
  // still silent at the deadline.
  std::vector<size_t> got(fds.size(), 0);
  std::vector<int> state(fds.size(), 0);  // 0 silent, 1 echoed, 2 ended, 3 wrong.
  size_t pending = fds.size();
  int64_t last_ns = 0;
  std::vector<uint8_t> buf(bytes + 1);
  while (pending > 0) {
    const int64_t left_ms = within_ms - (NowNs() - start) / 1000000;
    if (left_ms <= 0) break;
    std::vector<pollfd> p;
    std::vector<size_t> which;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (state[i] == 0) {
        p.push_back({fds[i], POLLIN, 0});
        which.push_back(i);
      }
    }
    if (poll(p.data(), p.size(), static_cast<int>(std::min<int64_t>(left_ms, 100))) <= 0) continue;
    for (size_t k = 0; k < p.size(); ++k) {
      if (p[k].revents == 0) continue;
      const size_t i = which[k];
      const ssize_t r = read(fds[i], buf.data(), bytes - got[i]);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) {
        state[i] = 2;
      } else {
        Fill(i, 0, data.data(), bytes);
        if (std::memcmp(buf.data(), data.data() + got[i], static_cast<size_t>(r)) != 0) {
          state[i] = 3;
        }
        got[i] += static_cast<size_t>(r);
        if (state[i] == 0 && got[i] == bytes) state[i] = 1;
      }
      if (state[i] != 0) {
        --pending;
        last_ns = NowNs() - start;
      }
    }
  }
  size_t n[4] = {0, 0, 0, 0};
  for (int s : state) ++n[s];
  for (int fd : fds) close(fd);
  const bool ok = expect == "ok" ? n[1] == fds.size() : n[2] == fds.size();
  Say("HOLD expect=%s count=%zu sent=%zu echoed=%zu ended=%zu wrong=%zu silent=%zu last_ms=%.1f "
      "result=%s",
      expect.c_str(), fds.size(), sent_ok, n[1], n[2], n[3], n[0], last_ns / 1e6,
      ok ? "ok" : "bad");
  return ok ? 0 : 1;
}

int UdpSocket(const Args& args) {
  const sockaddr_in a = Address(args.Str("host"), args.U64("port"));
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0) {
    Die("udp: %s", std::strerror(errno));
  }
  int size = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  return fd;
}

int UdpRecv(const Args& args) {
  const std::string name = args.Str("name", "udp");
  const std::string stop_file = args.Str("stop-file", "");
  const int64_t stall_ns = static_cast<int64_t>(args.Double("stall-timeout", "3") * 1e9);
  UdpRequest req;
  req.seed = args.U64("seed");
  req.count = args.U64("count");
  req.rate = args.U64("rate");
  req.size = static_cast<uint32_t>(args.U64("size"));
  const int fd = UdpSocket(args);
  send(fd, &req, sizeof(req), 0);
  std::vector<uint8_t> buf(sizeof(UdpHeader) + req.size + 1);
  std::vector<uint8_t> expected(req.size);
  std::vector<bool> seen(req.count, false);
  uint64_t received = 0, corrupt = 0, duplicate = 0, first_corrupt = kInfinite;
  Gaps gaps;
  int64_t last = NowNs();
  while (received < req.count) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) == 0) {
      // Nothing yet at all after 10 s, or quiet for a while once told to stop.
      if ((received == 0 && NowNs() - last > 10 * 1000000000ll) ||
          (Exists(stop_file) && NowNs() - last > stall_ns)) {
        break;
      }
      continue;
    }
    const ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n < 0) continue;
    last = NowNs();
    gaps.Arrived();
    UdpHeader h;
    if (static_cast<size_t>(n) != sizeof(h) + req.size) {
      ++corrupt;
      continue;
    }
    std::memcpy(&h, buf.data(), sizeof(h));
    if (h.magic != kUdpData || h.seq >= req.count ||
        Check(req.seed, h.seq * req.size, buf.data() + sizeof(h), req.size) != req.size) {
      if (first_corrupt == kInfinite) first_corrupt = h.seq;
      ++corrupt;
      continue;
    }
    if (seen[h.seq]) {
      ++duplicate;
      continue;
    }
    seen[h.seq] = true;
    ++received;
  }
  close(fd);
  std::string line = "UDP name=" + name + " received=" + std::to_string(received) + " of " +
                     std::to_string(req.count) + " corrupt=" + std::to_string(corrupt) +
                     " duplicate=" + std::to_string(duplicate);
  if (first_corrupt != kInfinite) line += " first_corrupt_seq=" + std::to_string(first_corrupt);
  const bool ok = corrupt == 0 && received > 0;
  Say("%s%s result=%s", line.c_str(), gaps.Describe().c_str(), ok ? "ok" : "bad");
  return ok ? 0 : 1;
}

int UdpEcho(const Args& args) {
  const std::string name = args.Str("name", "udp-echo");
  const std::string stop_file = args.Str("stop-file");
  const int64_t interval_ns = static_cast<int64_t>(args.Double("interval", "20") * 1e6);
  const size_t size = static_cast<size_t>(args.U64("size", "200"));
  const int fd = UdpSocket(args);
  std::vector<uint8_t> buf(sizeof(UdpHeader) + size + 1);
  std::vector<bool> answered;
  uint64_t sent = 0, received = 0, corrupt = 0;
  Gaps gaps;
  int64_t next = NowNs();
  int64_t stop_at = 0;
  for (;;) {
    const int64_t now = NowNs();
    if (stop_at == 0 && Exists(stop_file)) stop_at = now + 1000000000ll;  // A second for the last.
    if (stop_at != 0 && now > stop_at) break;
    if (stop_at == 0 && now >= next) {
      UdpHeader h;
      h.magic = kUdpEcho;
      h.seq = sent;
      std::memcpy(buf.data(), &h, sizeof(h));
      Fill(h.seq, 0, buf.data() + sizeof(h), size);
      send(fd, buf.data(), sizeof(h) + size, 0);
      answered.push_back(false);
      ++sent;
      next += interval_ns;
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(1, (next - NowNs()) / 1000000))) <= 0) {
      continue;
    }
    const ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n < 0) continue;
    UdpHeader h;
    std::memcpy(&h, buf.data(), sizeof(h));
    if (static_cast<size_t>(n) != sizeof(h) + size || h.magic != kUdpEcho || h.seq >= sent ||
        Check(h.seq, 0, buf.data() + sizeof(h), size) != size) {
      ++corrupt;
      continue;
    }
    if (!answered[h.seq]) {
      answered[h.seq] = true;
      ++received;
      gaps.Arrived();
    }
  }
  close(fd);
  const bool ok = corrupt == 0 && received > 0;
  Say("UDPECHO name=%s sent=%" PRIu64 " received=%" PRIu64 " lost=%" PRIu64 " corrupt=%" PRIu64
      "%s result=%s",
      name.c_str(), sent, received, sent - received, corrupt, gaps.Describe().c_str(),
      ok ? "ok" : "bad");
  return ok ? 0 : 1;
}

int Phase(const Args& args) {
  const uint64_t wanted = args.U64("at-least");
  const int64_t deadline = NowNs() + static_cast<int64_t>(args.Double("timeout", "300") * 1e9);
  Request req;
  req.command = kPhase;
  while (NowNs() < deadline) {
    const int fd = ConnectWith(args, req);
    if (fd >= 0) {
      timeval tv{2, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      char buf[32] = {};
      const ssize_t n = read(fd, buf, sizeof(buf) - 1);
      close(fd);
      if (n > 0 && std::strtoull(buf, nullptr, 10) >= wanted) return 0;
    }
    SleepNs(200000000);
  }
  Say("PHASE %" PRIu64 " did not come", wanted);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) Die("usage: mig_traffic server|stream|verify|hold|udp-recv|udp-echo|phase ...");
  const std::string command = argv[1];
  const Args args(argc, argv);
  if (command == "server") return Server(args);
  if (command == "stream") return Stream(args);
  if (command == "verify") return Verify(args);
  if (command == "hold") return Hold(args);
  if (command == "udp-recv") return UdpRecv(args);
  if (command == "udp-echo") return UdpEcho(args);
  if (command == "phase") return Phase(args);
  Die("unknown command %s", command.c_str());
}
