// Whether the -t/-u forwards fit in the open-file limit. Each forwarded port
// is a listening socket (a file descriptor) for as long as vunet runs: "all"
// is every non-ephemeral port, about 37000 of them, and UDP listens per IP
// version. Rather than fail halfway with "Too many open files" (as passt
// does), vunet counts them first and, when they would leave too little for
// the flows themselves, refuses to start with one line naming the limit and
// the way out.
//
//   ListenerCount n = CountListeners(options.tcp_ports, options.udp_ports, v4only, v6only);
//   if (absl::Status s = CheckFdBudget(n, SoftFdLimit()); !s.ok()) ...fail with s.message()...

#ifndef VUNET_TOOLS_VUNET_FD_BUDGET_H_
#define VUNET_TOOLS_VUNET_FD_BUDGET_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "net/config/port_forward.h"

namespace vunet::tools {

// File descriptors kept for everything but the listeners (the vhost-user
// connection, guest memory, eventfds, ping sockets, and flows): this many,
// or half the limit where that is less (a small limit is someone's choice,
// as tests/faults makes it, not a reason to refuse a few forwards).
inline constexpr uint64_t kFdReserve = 1024;
uint64_t FdReserve(uint64_t fd_limit);

struct ListenerCount {
  uint64_t tcp = 0;
  uint64_t udp = 0;
  uint64_t total() const { return tcp + udp; }
};

// The listening sockets the forwards open (net/tcp/tcp.cc, net/udp/udp.cc): TCP one
// per port (one dual-stack socket for an unbound forward); UDP one per port
// and IP version in use.
ListenerCount CountListeners(absl::Span<const net::PortForward> tcp,
                             absl::Span<const net::PortForward> udp, bool ipv4_only,
                             bool ipv6_only);

// The soft RLIMIT_NOFILE (vunet raises it to the hard one at start).
uint64_t SoftFdLimit();

// OK if `listeners` plus FdReserve(fd_limit) fit in `fd_limit`; otherwise
// kResourceExhausted, one line: how many sockets, the limit, the least that
// would do, and how to get there (raise the limit, or forward ranges).
absl::Status CheckFdBudget(const ListenerCount& listeners, uint64_t fd_limit);

}  // namespace vunet::tools

#endif  // VUNET_TOOLS_VUNET_FD_BUDGET_H_
