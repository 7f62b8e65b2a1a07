// What a flow translator (TCP, UDP, ICMP echo) is to the event loop that
// hosts it, and the services the loop gives it (TranslatorEnv).
//
// A translator takes the guest's frames of its protocol from the dispatcher
// (Dispatcher routes each parsed frame to the translator of its L4 protocol,
// then signals the batch's end once to each), keeps its flows in the shared
// FlowTable, and watches its host sockets in the owner's epoll set through a
// SocketWatcher. Every epoll tag it registers has a kind (the top byte, as in
// FlowRef) in [first_kind, first_kind + kKindsPerTranslator), so the owner
// can route events back without knowing what the tag means. Its flows'
// timers are the table's: the owner runs FlowTable::Expire and hands each
// expired flow to the translator of the flow's protocol.
//
// Every frame for the guest goes through the one RxQueue (vu/rx_queue.h):
// data (TCP segments with payload, UDP datagrams) is received by the kernel
// straight into reserved buffers with headers built in front, control
// frames (SYN-ACK, ACKs, RSTs, ICMP messages) are copied in with Send. The
// owner flushes the queue once per loop iteration. When the guest has no
// receive buffers, data waits in the host sockets and resumes on
// OnRxAvailable.
//
// Where a guest flow goes on the host, and how host peers appear to the
// guest, is the Forwarding's decision (net/forward), the same for all.
//
//   TranslatorEnv env{.flows = flows, .rx = &rx_queue, .watcher = &watcher,
//                     .forward = &forwarding, .guest = &guest_config,
//                     .first_kind = 64};
//   absl::StatusOr<std::unique_ptr<TcpTranslator>> tcp = TcpTranslator::Create(env, options);
//   dispatcher.Route(L4Kind::kTcp, tcp->get());
//   ... epoll event with tag t, kind in [64, 96): (*tcp)->OnSocketEvent(t, events);
//   ... FlowTable::Expire(now, [&](FlowId id) { (*tcp)->OnTimer(id, now); });
//   ... rx kick or rx queue started: (*tcp)->OnRxAvailable();
//   ... end of the loop iteration: rx_queue.Flush();

#ifndef VUNET_NET_TRANSLATE_TRANSLATOR_H_
#define VUNET_NET_TRANSLATE_TRANSLATOR_H_

#include <time.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "net/config/config.h"
#include "net/flow/flow.h"
#include "net/forward/forward.h"
#include "net/gateway/dispatch.h"
#include "net/migrate/repair_control.h"
#include "net/migrate/state_stream.h"
#include "vu/rx_queue.h"

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

// The owner's services, valid for the translator's lifetime.
struct TranslatorEnv {
  FlowTable* flows = nullptr;
  // The guest's receive queue: every frame to the guest.
  vu::RxQueue* rx = nullptr;
  SocketWatcher* watcher = nullptr;
  // Where guest flows go, how host peers appear, who the guest is.
  Forwarding* forward = nullptr;
  // The link: the gateway's MAC (the source of every frame we send) and the
  // MTU.
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
  // The guest may have posted receive buffers (rx kick, the rx queue
  // started, or a flush freed what others held): resume data that waited.
  virtual void OnRxAvailable() = 0;
  // The guest's receive queue (re)started with flows alive: frames of theirs
  // that were in flight may have gone with the old ring (a frontend that
  // died, a driver that reset its device). Called before OnRxAvailable. The
  // default does nothing.
  virtual void OnRxStart() {}
  // Closes every flow and socket (the owner is shutting down).
  virtual void Shutdown() = 0;

  // Live migration (net/migrate/state_stream.h). The defaults move nothing.
  //
  // Source, with the guest's queues stopped: writes a record for each flow
  // that can go on at the destination (TCP sockets are frozen through
  // `repair`, null without a helper). The flows stay here, quiet, until
  // OnMigratedOut or OnMigrationAborted.
  virtual absl::Status SaveState(StateWriter& out, RepairControl* repair);
  // Destination: one record of this translator's types, checked and kept
  // aside; nothing takes effect yet. An error fails the whole load.
  virtual absl::Status StageRecord(const RecordHeader& header, StateReader& in);
  // Destination: every record of the stream was staged: the staged flows
  // start (a flow that cannot, ends and is logged; TCP ones with an RST to
  // the guest).
  virtual void ApplyStaged(RepairControl* repair);
  // Destination: the load failed: the staged flows are dropped.
  virtual void DiscardStaged() {}
  // Source: the frontend has the state (CHECK_DEVICE_STATE passed): the
  // flows saved are the destination's. With `linger` they stay frozen until
  // OnMigrationAborted, or Shutdown, which then closes them without a word
  // to their peers; without, they are closed so now.
  virtual void OnMigratedOut(bool linger);
  // Source: the guest runs here again after a save (the migration failed):
  // frozen flows resume.
  virtual void OnMigrationAborted(RepairControl* repair);
  // One line of counters for the owner's exit log.
  virtual std::string StatsLine() const = 0;
};

}  // namespace vunet::net

#endif  // VUNET_NET_TRANSLATE_TRANSLATOR_H_
