#include "tools/vunet/fd_budget.h"

#include <sys/resource.h>

#include <algorithm>

#include "absl/strings/str_format.h"

namespace vunet::tools {

ListenerCount CountListeners(absl::Span<const net::PortForward> tcp,
                             absl::Span<const net::PortForward> udp, bool ipv4_only,
                             bool ipv6_only) {
  ListenerCount n;
  for (const net::PortForward& f : tcp) n.tcp += f.count;
  const uint64_t versions = ipv4_only || ipv6_only ? 1 : 2;
  for (const net::PortForward& f : udp) n.udp += f.count * (f.family == AF_UNSPEC ? versions : 1);
  return n;
}

uint64_t SoftFdLimit() {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  return limit.rlim_cur == RLIM_INFINITY ? UINT64_MAX : limit.rlim_cur;
}

uint64_t FdReserve(uint64_t fd_limit) { return std::min(kFdReserve, fd_limit / 2); }

absl::Status CheckFdBudget(const ListenerCount& listeners, uint64_t fd_limit) {
  const uint64_t reserve = FdReserve(fd_limit);
  const uint64_t needed = listeners.total() + reserve;
  if (needed <= fd_limit) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "-t/-u: %d listening sockets (TCP %d, UDP %d) and %d more for flows do not fit the "
      "open-file limit (RLIMIT_NOFILE %d): raise it to at least %d (ulimit -n, prlimit "
      "--nofile, LimitNOFILE=), or forward ranges of ports rather than all",
      listeners.total(), listeners.tcp, listeners.udp, reserve, fd_limit,
      listeners.total() + kFdReserve));
}

}  // namespace vunet::tools
