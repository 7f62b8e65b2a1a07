#include "base/log.h"

#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

namespace vunet::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<bool> g_syslog{false};
std::atomic<int> g_fd{STDERR_FILENO};
std::atomic<uint64_t> g_lines[4];

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

void UseFd(int fd) {
  g_fd = fd;
  g_syslog = false;
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
  (void)!::write(g_fd, line, len);
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
