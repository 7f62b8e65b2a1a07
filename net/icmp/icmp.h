// ICMP and ICMPv6 echo for the guest, translated to the host's unprivileged
// ping sockets (socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP) and its IPv6 twin):
// a translator like TCP and UDP, its flows in the shared FlowTable.
//
// An echo request from the guest opens a flow keyed by the guest's address,
// its echo identifier and the destination as the guest addressed it
// (FlowKey::FromFrame), with a ping socket to where the forwarding policy
// sends it (net/forward: the gateway's addresses mean the host's loopback;
// refused destinations are dropped and counted). The kernel gives each
// socket an identifier of its own and rewrites the request's, so the guest's
// is restored in the reply. The reply comes back from the destination the
// guest addressed, to the guest's address and the MAC of its latest request,
// with the IPv4 header checksum and the ICMP/ICMPv6 checksum computed, into
// the RxQueue.
//
// Flows are bounded: at most max_sockets at once (the least recently used
// is closed for a new one, through a list linked in the flows' data), new
// sockets at most new_sockets_per_second (a burst of as many, then that
// rate: a guest cycling identifiers or destinations cannot make every frame
// cost a socket, an eviction and epoll changes), and a flow ends when idle
// for idle_timeout_ns (the table's timer). Nothing is allocated per frame.
//
// Dropped (counted, and logged rate-limited where it is the guest's fault):
// echo requests with a code other than 0, shorter than 8 bytes, with a bad
// checksum (unless the guest left it partial), or to a refused destination.
// Other ICMP messages are ignored.
//
// Ping sockets need the process's group in net.ipv4.ping_group_range (one
// setting for both IP versions). Where it is "1 0" (the kernel default: no
// one), Create fails with kFailedPrecondition saying so; as root,
//   sysctl -w net.ipv4.ping_group_range="0 2147483647"
// permits every group.
//
//   absl::StatusOr<std::unique_ptr<IcmpEcho>> icmp = IcmpEcho::Create(env, {});
//   dispatcher.Route(L4Kind::kIcmp, icmp->get());

#ifndef VUNET_NET_ICMP_ICMP_H_
#define VUNET_NET_ICMP_ICMP_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "net/flow/flow.h"
#include "net/forward/outbound.h"
#include "net/packet/frame.h"
#include "net/translate/translator.h"

namespace vunet::net {

inline constexpr size_t kMaxIcmpSockets = 4096;

struct IcmpEchoOptions {
  size_t max_sockets = 128;  // 1..kMaxIcmpSockets.
  uint32_t new_sockets_per_second = 64;
  int64_t idle_timeout_ns = 60'000'000'000;
  // Source address and interface of echo requests to other hosts (-o,
  // --outbound-if4, --outbound-if6).
  OutboundBinding outbound = {};
};

class IcmpEcho : public Translator {
 public:
  struct Stats {
    uint64_t requests = 0;   // Echo requests sent to the host.
    uint64_t replies = 0;    // Echo replies sent to the guest.
    uint64_t malformed = 0;  // Requests dropped: code, length, checksum.
    uint64_t bad_destination = 0;
    uint64_t ignored = 0;        // ICMP but not an echo request (or a family not served).
    uint64_t socket_errors = 0;  // Ping sockets that could not be opened or watched.
    uint64_t send_errors = 0;
    uint64_t recv_errors = 0;    // Errors the host's sockets reported (unreachable...).
    uint64_t reply_dropped = 0;  // Replies not built or not taken by the guest.
    uint64_t evicted = 0;        // Flows closed for a newer one (max_sockets).
    uint64_t expired = 0;        // Flows closed idle.
    uint64_t rate_limited = 0;   // Requests dropped: new sockets came too fast.
    uint64_t table_full = 0;     // Requests dropped: the flow table refused.
  };

  // Epoll kind of the ping sockets, relative to env.first_kind.
  static constexpr uint8_t kSocketKind = 0;
  // Replies read per readable event.
  static constexpr int kReadBatch = 32;

  // OK if this process may open ping sockets of `family` (AF_INET or
  // AF_INET6); kFailedPrecondition naming net.ipv4.ping_group_range if not,
  // kUnavailable if the family is not supported.
  static absl::Status ProbePingSockets(int family);

  // Probes ping sockets for the families the forwarding rules serve; IPv6 is
  // turned off (logged) where the host has none. kInvalidArgument for
  // missing services or options out of range.
  static absl::StatusOr<std::unique_ptr<IcmpEcho>> Create(const TranslatorEnv& env,
                                                          const IcmpEchoOptions& options);

  ~IcmpEcho() override;
  IcmpEcho(const IcmpEcho&) = delete;
  IcmpEcho& operator=(const IcmpEcho&) = delete;

  // ParsedFrameSink: the guest's ICMP and ICMPv6 frames.
  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
               const ParsedFrame& parsed) override;

  // Translator.
  FlowProto proto() const override { return FlowProto::kIcmp; }
  void OnSocketEvent(uint64_t tag, uint32_t events) override;
  void OnTimer(FlowId id, int64_t now_ns) override;
  void OnRxAvailable() override {}  // A reply without room is dropped, as on a wire.
  void Shutdown() override;
  std::string StatsLine() const override;
  // Migration: each flow travels as its key (the guest's identifier in
  // it), the guest's MAC and its idle time left; the destination opens a
  // ping socket of its own for it (outside the new-socket rate).
  absl::Status SaveState(StateWriter& out, RepairControl* repair) override;
  absl::Status StageRecord(const RecordHeader& header, StateReader& in) override;
  void ApplyStaged(RepairControl* repair) override;
  void DiscardStaged() override { staged_.clear(); }
  // Without linger the flows' sockets are closed: the guest echoes at the
  // destination now.
  void OnMigratedOut(bool linger) override;

  const Stats& stats() const { return stats_; }
  bool ipv6_enabled() const { return ipv6_; }
  size_t socket_count() const { return count_; }

 private:
  struct Echo;

  IcmpEcho(const TranslatorEnv& env, const IcmpEchoOptions& options);
  int64_t Now() const { return env_.clock(); }
  // Spends one new-socket token; false when none is left.
  bool TakeSocketToken();
  // With `rate_limited`, spends a new-socket token (none left: no flow).
  FlowId Open(const FlowKey& key, const Endpoint& to, bool rate_limited = true);
  // Reads up to kReadBatch replies of flow `id` into the guest.
  void ReadReplies(FlowId id, Echo* e);
  // The least recently used list, oldest first.
  void Touch(FlowId id, Echo* e);
  void Unlink(Echo* e);
  void Close(FlowId id, Echo* e);

  TranslatorEnv env_;
  IcmpEchoOptions options_;
  bool ipv4_ = true;
  bool ipv6_ = true;
  bool shut_down_ = false;  // No new flows after Shutdown.
  Stats stats_;
  size_t count_ = 0;
  FlowId lru_head_;
  FlowId lru_tail_;
  // The new-socket budget: tokens, and when they were last refilled.
  double socket_tokens_ = 0;
  int64_t tokens_at_ns_ = 0;
  bool tokens_started_ = false;
  // The request as sent, and the reply frame being built: the largest ICMP
  // message an IP packet holds, behind the frame's headers.
  std::unique_ptr<uint8_t[]> request_;
  std::unique_ptr<uint8_t[]> reply_;
  // Flows read from a migration stream, not yet opened.
  struct Staged {
    FlowKey key;
    MacAddr guest_mac;
    int64_t idle_left_ns;
  };
  std::vector<Staged> staged_;
};

}  // namespace vunet::net

#endif  // VUNET_NET_ICMP_ICMP_H_
