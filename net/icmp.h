// ICMP and ICMPv6 echo for the guest, translated to the host's unprivileged
// ping sockets (socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP) and its IPv6 twin).
//
// An echo request from the guest, to any destination, goes out through a
// ping socket kept for (destination, guest identifier): the kernel gives each
// socket an identifier of its own and rewrites the request's, so the guest's
// is remembered and restored in the reply. The gateway's addresses stand for
// the host itself and are sent to its loopback (127.0.0.1, ::1). The reply
// comes back from the destination the guest addressed, to the guest's
// address and MAC as its latest request had them, with the IPv4 header
// checksum and the ICMP/ICMPv6 checksum computed.
//
// Sockets live in a fixed table (no allocation per frame): when it is full
// the least recently used socket is closed for a new one, and Sweep closes
// those idle for longer than the timeout. The owner polls the sockets (see
// SocketObserver and SocketFds) and calls OnReadable when one is readable.
//
//   IcmpEchoConfig config{.gateway_mac = ..., .gateway4 = ..., ...};
//   absl::StatusOr<std::unique_ptr<IcmpEcho>> icmp = IcmpEcho::Create(config, &replies, &udp,
//                                                                      &epoll_registrar);
//   Dispatcher dispatch(handlers, &replies, icmp->get());
//   ... on EPOLLIN of a socket fd: (*icmp)->OnReadable(fd);
//   ... every few seconds: (*icmp)->Sweep(IcmpEcho::NowNs());
//
// Ping sockets need the process's group in net.ipv4.ping_group_range (one
// setting for both IP versions). Where it is "1 0" (the kernel default: no
// one), Create fails with kFailedPrecondition saying so; as root,
//   sysctl -w net.ipv4.ping_group_range="0 2147483647"
// permits every group.
//
// Dropped (counted, and logged rate-limited where it is the guest's fault):
// echo requests with a code other than 0, shorter than 8 bytes, with a bad
// checksum (unless the guest left it partial), or to a destination the host
// cannot stand in for (unspecified, multicast or broadcast, the guest's own
// loopback, an IPv6 link-local address other than the gateway's). Other ICMP
// messages are ignored; frames that are not ICMP go to `next`.

#ifndef VUNET_NET_ICMP_H_
#define VUNET_NET_ICMP_H_

#include <netinet/in.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "net/dispatch.h"
#include "net/frame.h"
#include "net/outbound.h"
#include "vu/common.h"

namespace vunet::net {

struct IcmpEchoConfig {
  MacAddr gateway_mac;  // The source of replies.
  // Destinations that mean the host itself (sent to its loopback); zero
  // ones are not mapped.
  in_addr gateway4{};
  in6_addr gateway6{};     // A global address of the gateway, or ::.
  in6_addr gateway_ll6{};  // Its link-local address, or ::.
  bool ipv4 = true;        // Families answered; the other's requests are ignored.
  bool ipv6 = true;
  // Source address and interface of echo requests to other hosts (-o,
  // --outbound-if4, --outbound-if6).
  OutboundBinding outbound;
  size_t max_sockets = 128;  // 1..kMaxIcmpSockets.
  // New sockets opened per second (a burst of as many, then this rate): a
  // guest cycling identifiers or destinations cannot make every frame cost a
  // socket, an eviction and epoll changes. Requests beyond it are dropped.
  uint32_t new_sockets_per_second = 64;
  int64_t idle_timeout_ns = 60'000'000'000;
  // The clock for idle times, CLOCK_MONOTONIC by default; tests substitute one.
  int64_t (*clock)() = nullptr;
};

inline constexpr size_t kMaxIcmpSockets = 4096;

class IcmpEcho : public ParsedFrameSink {
 public:
  // Told when a socket is opened and before it is closed, so that an epoll
  // loop can watch it.
  class SocketObserver {
   public:
    virtual ~SocketObserver() = default;
    // False if the socket cannot be watched: it is closed again at once,
    // since replies nobody reads would only pile up.
    virtual bool OnSocketOpened(int fd) = 0;
    virtual void OnSocketClosing(int fd) = 0;
  };

  struct Stats {
    uint64_t requests = 0;   // Echo requests sent to the host.
    uint64_t replies = 0;    // Echo replies sent to the guest.
    uint64_t malformed = 0;  // Requests dropped: code, length, checksum.
    uint64_t bad_destination = 0;
    uint64_t ignored = 0;        // ICMP but not an echo request (or a family not served).
    uint64_t passed_on = 0;      // Not ICMP: given to `next`.
    uint64_t socket_errors = 0;  // Ping sockets that could not be opened.
    uint64_t send_errors = 0;
    uint64_t recv_errors = 0;    // Errors the host's sockets reported (unreachable...).
    uint64_t reply_dropped = 0;  // Replies not built or not taken by the guest.
    uint64_t evicted = 0;        // Sockets closed for a newer one (table full).
    uint64_t expired = 0;        // Sockets closed by Sweep.
    uint64_t rate_limited = 0;   // Requests dropped: new sockets came too fast.
  };

  // OK if this process may open ping sockets of `family` (AF_INET or
  // AF_INET6); kFailedPrecondition naming net.ipv4.ping_group_range if not,
  // kUnavailable if the family is not supported.
  static absl::Status ProbePingSockets(int family);

  // Probes ping sockets for the families configured; IPv6 is turned off
  // (logged) where the host has none. `replies` (and `next`, `observer` if
  // given) must outlive the result. kInvalidArgument for max_sockets outside
  // 1..kMaxIcmpSockets.
  static absl::StatusOr<std::unique_ptr<IcmpEcho>> Create(const IcmpEchoConfig& config,
                                                          ReplySender* replies,
                                                          ParsedFrameSink* next = nullptr,
                                                          SocketObserver* observer = nullptr);

  ~IcmpEcho() override;
  IcmpEcho(const IcmpEcho&) = delete;
  IcmpEcho& operator=(const IcmpEcho&) = delete;

  // A frame the dispatcher did not answer.
  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
               const ParsedFrame& parsed) override;
  void OnBatchEnd() override;

  // Reads up to kReadBatch replies from socket `fd` and sends each to the
  // guest. Returns how many were sent; 0 for an fd not in the table.
  size_t OnReadable(int fd);
  static constexpr int kReadBatch = 32;

  // Closes sockets unused (no request sent, no reply received) for at least
  // the idle timeout before `now_ns` (the config's clock). Returns how many.
  size_t Sweep(int64_t now_ns);

  // The open sockets' fds.
  std::vector<int> SocketFds() const;
  size_t socket_count() const;

  const Stats& stats() const { return stats_; }
  bool ipv6_enabled() const { return config_.ipv6; }

  static int64_t NowNs();

 private:
  struct Entry {
    UniqueFd fd;
    bool v6 = false;
    uint16_t guest_id = 0;
    in_addr dst4{};  // As the guest addressed it.
    in6_addr dst6{};
    in_addr guest4{};  // Where replies go.
    in6_addr guest6{};
    MacAddr guest_mac;
    int64_t last_used_ns = 0;
    uint64_t use_order = 0;  // For LRU eviction.
  };

  IcmpEcho(const IcmpEchoConfig& config, ReplySender* replies, ParsedFrameSink* next,
           SocketObserver* observer);

  int64_t Now() const { return config_.clock(); }
  // Spends one new-socket token; false when none is left.
  bool TakeSocketToken();
  Entry* Find(bool v6, const in_addr& dst4, const in6_addr& dst6, uint16_t id);
  // A free slot, or the least recently used one emptied.
  Entry* Slot();
  void Close(Entry* e);
  void Touch(Entry* e);

  IcmpEchoConfig config_;
  ReplySender* replies_;
  ParsedFrameSink* next_;
  SocketObserver* observer_;
  Stats stats_;
  // The new-socket budget: tokens, and when they were last refilled.
  double socket_tokens_ = 0;
  int64_t tokens_at_ns_ = 0;
  bool tokens_started_ = false;
  std::vector<Entry> table_;  // max_sockets entries, sized once.
  uint64_t use_counter_ = 0;

  // The request as sent, and the reply frame being built: the largest ICMP
  // message an IP packet holds, behind the frame's headers.
  uint8_t request_[65535];
  uint8_t reply_[kMaxFrameLen];
};

}  // namespace vunet::net

#endif  // VUNET_NET_ICMP_H_
