#include "base/log.h"

#include <errno.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <string>

namespace vunet::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<bool> g_syslog{false};
std::atomic<int> g_fd{STDERR_FILENO};
std::atomic<uint64_t> g_lines[4];
// The log file's cap (0: none), and the lock trimming takes.
std::atomic<uint64_t> g_max_bytes{0};
std::mutex g_trim_mu;

// Drops the oldest lines of the capped log file `fd` if `incoming` more bytes
// would take it past the cap.
void TrimIfFull(int fd, size_t incoming) {
  const uint64_t cap = g_max_bytes.load(std::memory_order_relaxed);
  if (cap == 0) return;
  std::lock_guard<std::mutex> lock(g_trim_mu);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size + incoming <= cap) return;
  uint64_t keep = std::min<uint64_t>(size, cap * 7 / 10);
  std::string tail(keep, '\0');
  ssize_t n;
  do {
    n = pread(fd, tail.data(), keep, static_cast<off_t>(size - keep));
  } while (n < 0 && errno == EINTR);
  // A file we cannot read back (opened write-only) starts over empty.
  tail.resize(n < 0 ? 0 : static_cast<size_t>(n));
  // From the first whole line on.
  const size_t newline = tail.find('\n');
  tail.erase(0, newline == std::string::npos ? tail.size() : newline + 1);
  char note[128];
  const int m = std::snprintf(
      note, sizeof(note), "(log file over %llu bytes: the oldest %llu bytes were dropped)\n",
      static_cast<unsigned long long>(cap), static_cast<unsigned long long>(size - tail.size()));
  if (ftruncate(fd, 0) != 0) return;
  // O_APPEND: both land at the (new) end.
  if (m > 0) (void)!::write(fd, note, std::min<size_t>(m, sizeof(note) - 1));
  (void)!::write(fd, tail.data(), tail.size());
}

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

constexpr const char* kNames[] = {"error", "warning", "info", "debug"};
constexpr int kSyslogPriorities[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};

}  // namespace

void SetLevel(Level level) { g_level = static_cast<int>(level); }
Level GetLevel() { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }

void UseSyslog(std::string_view ident) {
  // openlog keeps the pointer: the string must live for the process.
  static std::string* stored = new std::string(ident);
  openlog(stored->c_str(), LOG_PID | LOG_NDELAY, LOG_DAEMON);
  g_syslog = true;
}

void UseFd(int fd, uint64_t max_bytes) {
  g_max_bytes = max_bytes == 0 ? 0 : std::max(max_bytes, kMinLogFileBytes);
  g_fd = fd;
  g_syslog = false;
  TrimIfFull(fd, 0);
}

void Write(Level level, std::string_view message) {
  const int i = static_cast<int>(level);
  g_lines[i].fetch_add(1, std::memory_order_relaxed);
  if (g_syslog) {
    syslog(kSyslogPriorities[i], "%.*s", static_cast<int>(message.size()), message.data());
    return;
  }
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm local;
  localtime_r(&ts.tv_sec, &local);
  char line[4096];
  const int n = std::snprintf(line, sizeof(line), "%02d:%02d:%02d.%03ld vunet %s: %.*s\n",
                              local.tm_hour, local.tm_min, local.tm_sec, ts.tv_nsec / 1000000,
                              kNames[i], static_cast<int>(message.size()), message.data());
  if (n <= 0) return;
  const size_t len = std::min<size_t>(n, sizeof(line) - 1);
  line[len - 1] = '\n';  // A line cut short still ends.
  // One write per line, so lines from several threads do not interleave (and
  // a file opened O_APPEND gets whole lines).
  const int fd = g_fd;
  TrimIfFull(fd, len);
  (void)!::write(fd, line, len);
}

uint64_t LinesWritten(Level level) { return g_lines[static_cast<int>(level)].load(); }

bool RateLimiter::Allow(uint64_t* suppressed) {
  const int64_t now = MonotonicNs();
  int64_t start = window_start_ns_.load(std::memory_order_relaxed);
  if (now - start >= kIntervalNs &&
      window_start_ns_.compare_exchange_strong(start, now, std::memory_order_relaxed)) {
    used_in_window_.store(0, std::memory_order_relaxed);
  }
  if (used_in_window_.fetch_add(1, std::memory_order_relaxed) < kBurst) {
    *suppressed = suppressed_.exchange(0, std::memory_order_relaxed);
    return true;
  }
  suppressed_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

}  // namespace vunet::log
