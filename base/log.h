// Logging for vunet: leveled lines to stderr (or syslog once daemonized, or a
// file: UseFd), and a rate-limited form for the data path, where a hostile
// guest could otherwise flood the log with one line per frame.
//
//   VUNET_LOG(kWarning, "vring %d: %s", index, status.ToString());
//   VUNET_LOG_RATELIMITED(kInfo, "dropped frame: %s", reason);
//
// Rate limiting is per call site: a burst of kBurst lines, then at most one
// per interval, with a count of what was suppressed in between.

#ifndef VUNET_BASE_LOG_H_
#define VUNET_BASE_LOG_H_

#include <atomic>
#include <cstdint>
#include <string_view>

#include "absl/strings/str_format.h"

namespace vunet::log {

enum class Level { kError = 0, kWarning = 1, kInfo = 2, kDebug = 3 };

// Lines above `level` are not written. Default kInfo.
void SetLevel(Level level);
Level GetLevel();
inline bool Enabled(Level level) { return static_cast<int>(level) <= static_cast<int>(GetLevel()); }

// Sends lines to syslog (daemon facility) instead of stderr.
void UseSyslog(std::string_view ident);

// Sends lines to `fd` (a log file, opened by the caller and kept open for as
// long as anything logs) instead of stderr or syslog, each line in one
// write(2), as to stderr. UseFd(STDERR_FILENO) returns to stderr.
//
// With `max_bytes` (a regular file opened O_APPEND; passt's --log-size), the
// file is kept at most that long: when a line would take it past the cap,
// the oldest lines go, so that about 70% of the cap is kept (whole lines,
// from the first line start in the newest 70%; none if `fd` is not
// readable), then a line saying how much was dropped, then the new line. Lines others append to the
// same file (a daemon's stderr) count too. A `max_bytes` below kMinLogFileBytes is taken as that.
inline constexpr uint64_t kMinLogFileBytes = 4096;
void UseFd(int fd, uint64_t max_bytes = 0);

// Writes one line at `level`.
void Write(Level level, std::string_view message);

// Counts lines written at each level since start (for tests).
uint64_t LinesWritten(Level level);

// A per-call-site budget: at most kBurst lines in each kIntervalNs window;
// the lines refused in between are counted and reported (as one "N similar
// lines suppressed" line) before the next line allowed.
class RateLimiter {
 public:
  static constexpr int kBurst = 10;
  static constexpr int64_t kIntervalNs = 1'000'000'000;

  // True if a line may be written now. `suppressed` receives how many were
  // refused since the last allowed line.
  bool Allow(uint64_t* suppressed);

 private:
  std::atomic<int64_t> window_start_ns_{0};
  std::atomic<int> used_in_window_{0};
  std::atomic<uint64_t> suppressed_{0};
};

}  // namespace vunet::log

#define VUNET_LOG(level, ...)                                                        \
  do {                                                                               \
    if (::vunet::log::Enabled(::vunet::log::Level::level)) {                         \
      ::vunet::log::Write(::vunet::log::Level::level, absl::StrFormat(__VA_ARGS__)); \
    }                                                                                \
  } while (0)

#define VUNET_LOG_RATELIMITED(level, ...)                                              \
  do {                                                                                 \
    if (::vunet::log::Enabled(::vunet::log::Level::level)) {                           \
      static ::vunet::log::RateLimiter vunet_log_limiter;                              \
      uint64_t vunet_log_suppressed = 0;                                               \
      if (vunet_log_limiter.Allow(&vunet_log_suppressed)) {                            \
        if (vunet_log_suppressed > 0) {                                                \
          ::vunet::log::Write(                                                         \
              ::vunet::log::Level::level,                                              \
              absl::StrFormat("(%d similar lines suppressed)", vunet_log_suppressed)); \
        }                                                                              \
        ::vunet::log::Write(::vunet::log::Level::level, absl::StrFormat(__VA_ARGS__)); \
      }                                                                                \
    }                                                                                  \
  } while (0)

#endif  // VUNET_BASE_LOG_H_
