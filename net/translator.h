// What the flow translators (TCP, UDP) share with the event loop that hosts
// them: the interface a translator implements, and the services the owner
// gives it (TranslatorEnv).
//
// A translator is a ParsedFrameSink in the dispatcher's chain (frames of its
// protocol it takes, the rest it hands to `next`), keeps its flows in the
// owner's FlowTable, and watches its host sockets in the owner's epoll set
// through a SocketWatcher. Every epoll tag it registers has a kind (the top
// byte, as in FlowRef) in [first_kind, first_kind + kKindsPerTranslator),
// so the owner can route events back without knowing what the tag means.
// Its flows' timers are the table's; the owner runs FlowTable::Expire and
// hands each expired flow to the translator of the flow's protocol.
//
// Frames for the guest go two ways:
//  - data (TCP segments with payload, UDP datagrams) straight into the guest's
//    receive buffers: vu::Collect on GuestRx::queue(), the payload received
//    into the collected iovecs by the kernel, headers written in front with
//    BuildFrame, vu::FillFrame, one Flush and Notify per wake-up; every frame
//    so written is shown to GuestRx::OnFrameWritten (packet capture);
//  - control (SYN-ACK, bare ACKs, RST, ICMP errors) through the ReplySender,
//    one contiguous frame each.
// When the guest has no receive buffers, data waits in the host sockets (the
// translator stops watching them for input, or ignores readiness) and
// resumes on OnRxAvailable.
//
//   TranslatorEnv env{.flows = flows, .rx = &rx, .watcher = &watcher,
//                     .replies = &replies, .guest = &guest_config,
//                     .first_kind = 64};
//   absl::StatusOr<std::unique_ptr<TcpTranslator>> tcp = TcpTranslator::Create(env, options);
//   Dispatcher dispatch(handlers, &replies, tcp->get());
//   ... epoll event with tag t, kind in [64, 96): (*tcp)->OnSocketEvent(t, events);
//   ... FlowTable::Expire(now, [&](FlowId id) { (*tcp)->OnTimer(id, now); });
//   ... rx kick or rx queue started: (*tcp)->OnRxAvailable();

#ifndef VUNET_NET_TRANSLATOR_H_
#define VUNET_NET_TRANSLATOR_H_

#include <netinet/in.h>
#include <sys/uio.h>
#include <time.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "net/config.h"
#include "net/dispatch.h"
#include "net/flow.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"

namespace vunet::net {

// Epoll kinds each translator may use for its tags.
inline constexpr uint8_t kKindsPerTranslator = 32;

// Lets a translator watch its sockets in the owner's epoll set. `tag` is
// handed back to the translator's OnSocketEvent with the epoll events.
class SocketWatcher {
 public:
  virtual ~SocketWatcher() = default;
  // EPOLL_CTL_ADD / EPOLL_CTL_MOD / EPOLL_CTL_DEL. An error means the fd is
  // not (or no longer correctly) watched: the translator closes the flow.
  virtual absl::Status Watch(int fd, uint32_t events, uint64_t tag) = 0;
  virtual absl::Status Modify(int fd, uint32_t events, uint64_t tag) = 0;
  virtual void Unwatch(int fd) = 0;
};

// The guest's receive queue, as the translators write data into it.
class GuestRx {
 public:
  virtual ~GuestRx() = default;
  // The running receive queue, or nullptr (the guest's driver has not
  // started it, or it stopped): data then waits in the host sockets.
  virtual virtio::Virtqueue* queue() = 0;
  virtual const vu::NetConfig& config() const = 0;
  // A frame a translator wrote into collected receive buffers: its bytes are
  // [offset, offset + len) of `iov` (virtio-net header excluded). Called
  // before the frame is flushed. For packet capture; the default ignores it.
  virtual void OnFrameWritten(absl::Span<const iovec> iov, size_t offset, size_t len) {
    (void)iov, (void)offset, (void)len;
  }
  // Called when a queue broke under the translator (vq->broken()): the owner
  // reports it to the device. The default does nothing.
  virtual void OnBroken() {}
};

// A port forward from the host to the guest (-t / -u): connections or
// datagrams to host ports [host_port, host_port + count) on `bind` go to
// the guest's [guest_port, guest_port + count).
struct PortForward {
  uint16_t host_port = 0;
  uint16_t guest_port = 0;
  uint32_t count = 1;  // 1..65536, and the ranges stay within 1..65535.
  // AF_UNSPEC: every host address, IPv4 and IPv6 (one dual-stack socket
  // where the host allows, else two); AF_INET / AF_INET6: bind4 / bind6.
  int family = AF_UNSPEC;
  in_addr bind4{};
  in6_addr bind6{};
  std::string ifname;  // SO_BINDTODEVICE if not empty ("%eth0" in a spec).
  // From "all" or a spec of exclusions only (passt's meaning): a port that
  // cannot be bound (in use, or privileged) is skipped, not an error; the
  // translator fails only if it could bind none of its weak ports.
  bool weak = false;
  // IP_FREEBIND / IPV6_FREEBIND on the listening sockets (--freebind): the
  // bind address need not be configured on the host yet.
  bool freebind = false;
};

// Ports first..last, inclusive.
struct PortRange {
  uint16_t first = 0;
  uint16_t last = 0;
};

// The ephemeral ports of this network namespace (net.ipv4.ip_local_port_range),
// which "all" leaves out; Linux's default, 32768-60999, if it cannot be read.
PortRange EphemeralPorts();

// Parses a passt-style forwarding spec, the argument of -t or -u:
//   "none"                    nothing (an empty result)
//   "8080" "8000-8010"        host ports to the same guest ports
//   "8080:80" "8000-8010:9000-9010"  host ports to other guest ports
//   "8000-8010,~8005"         ranges less excluded ports or ranges ("~")
//   "all"                     every port but the ephemeral ones (weak)
//   "~22" "~22,~8000-8080"    exclusions only: "all" less those (weak)
//   "127.0.0.1/8080" "::1/8080" "[::1]/all"  bound to one host address
//   "%lo/8080" "127.0.0.1%lo/22"     bound to an interface
//   "8080,8443:443"           several, comma-separated
// The result lists maximal runs of ports (a range with exclusions becomes
// several forwards). kInvalidArgument, one line naming the spec, for a port
// outside 1..65535, an inverted range, host and guest ranges of different
// sizes, overlapping ranges, "~" without a port, "all" beside other items, a
// bad address or interface name, or a spec that forwards no port at all;
// kUnimplemented for "auto" (pasta's, which follows a namespace's bound
// ports). `ephemeral` is what "all" leaves out.
absl::StatusOr<std::vector<PortForward>> ParsePortForwards(const std::string& spec,
                                                           PortRange ephemeral);
// As above, with this network namespace's EphemeralPorts().
absl::StatusOr<std::vector<PortForward>> ParsePortForwards(const std::string& spec);

// True if `a` and `b` would listen on the same port: their host port ranges
// intersect, their bind addresses can coincide (the same address, or either
// is every address of a family both cover) and so can their interfaces
// (the same one, or either has none).
bool ForwardsOverlap(const PortForward& a, const PortForward& b);

// The owner's services, valid for the translator's lifetime.
struct TranslatorEnv {
  FlowTable* flows = nullptr;
  GuestRx* rx = nullptr;
  SocketWatcher* watcher = nullptr;
  ReplySender* replies = nullptr;
  // Frames the translator does not take; may be null.
  ParsedFrameSink* next = nullptr;
  // The guest's addressing: its MAC and addresses (destination of frames we
  // build), the gateway's MAC and addresses (their source, and destinations
  // that mean the host's loopback), the MTU.
  const GuestConfig* guest = nullptr;
  // This translator's epoll kinds: [first_kind, first_kind +
  // kKindsPerTranslator), at least 64 (lower kinds are the owner's).
  uint8_t first_kind = 64;
  // CLOCK_MONOTONIC ns by default; tests substitute their own clock.
  int64_t (*clock)() = nullptr;
};

// CLOCK_MONOTONIC in ns.
inline int64_t MonotonicNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

class Translator : public ParsedFrameSink {
 public:
  // The protocol of the flows this translator keeps in the table: the owner
  // routes their expired timers here.
  virtual FlowProto proto() const = 0;
  // An epoll event for a tag the translator registered.
  virtual void OnSocketEvent(uint64_t tag, uint32_t events) = 0;
  // Flow `id`'s timer fired (its timer is already cleared).
  virtual void OnTimer(FlowId id, int64_t now_ns) = 0;
  // The guest may have posted receive buffers (rx kick, or the rx queue
  // started): resume data that waited for room.
  virtual void OnRxAvailable() = 0;
  // Closes every flow and socket (the owner is shutting down).
  virtual void Shutdown() = 0;
  // One line of counters for the owner's exit log.
  virtual std::string StatsLine() const = 0;
};

}  // namespace vunet::net

#endif  // VUNET_NET_TRANSLATOR_H_
