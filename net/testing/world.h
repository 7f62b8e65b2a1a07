// Shared test fakes for the net layer: the world a translator lives in,
// with real parts where they matter (a FlowTable, the guest's receive ring
// with its RxQueue, the forwarding policy) and a test-owned epoll set.
//
//   TranslatorWorld world({.guest = MyGuest()});
//   world.ring.Post(64);
//   auto tcp = TcpTranslator::Create(world.Env(), {}).value();
//   ...send frames: tcp->OnFrame(...); tcp->OnBatchEnd();...
//   world.watcher.Poll(tcp.get(), 10);          // host sockets' events
//   for (auto& f : world.ring.Take()) { ... }    // what reached the guest

#ifndef VUNET_NET_TESTING_WORLD_H_
#define VUNET_NET_TESTING_WORLD_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "base/unique_fd.h"
#include "net/config/config.h"
#include "net/flow/flow.h"
#include "net/forward/forward.h"
#include "net/translate/translator.h"
#include "vu/testing/guest_rx.h"

namespace vunet::net::testing {

// An epoll set of the test's own, as the translators' SocketWatcher.
class EpollWatcher : public SocketWatcher {
 public:
  EpollWatcher();
  absl::Status Watch(int fd, uint32_t events, uint64_t tag) override;
  absl::Status Modify(int fd, uint32_t events, uint64_t tag) override;
  // Unwatching an fd that is not watched is a test failure.
  void Unwatch(int fd) override;

  // Delivers the events ready within `timeout_ms` to `t`; returns how many.
  int Poll(Translator* t, int timeout_ms = 0);
  // The same to any handler of (tag, events), such as a FramePath.
  int Poll(absl::FunctionRef<void(uint64_t tag, uint32_t events)> handler, int timeout_ms = 0);
  // Fds watched now.
  size_t watching() const { return fds_.size(); }
  int adds = 0;
  int modifies = 0;
  int removes = 0;

 private:
  UniqueFd epoll_;
  std::set<int> fds_;
};

// A clock tests move by hand: timers fire only when a test moves it and
// expires them.
struct ManualClock {
  static int64_t now_ns;
  static int64_t Now() { return now_ns; }
};

// The guest of these tests unless one says otherwise: 10.0.2.15/24 behind
// 10.0.2.2, fd00::15/64 behind fe80::1 (ours), MTU 65520.
GuestConfig TestGuest();

class TranslatorWorld {
 public:
  struct Options {
    GuestConfig guest = TestGuest();
    vu::testing::GuestRxRing::Options rx = {};
    size_t flows = 64;
    // The host's resolvers, for DNS forwarding rules.
    config_internal::Resolver resolvers = {};
    int64_t (*clock)() = nullptr;  // CLOCK_MONOTONIC unless set.
  };

  TranslatorWorld() : TranslatorWorld(Options()) {}
  explicit TranslatorWorld(const Options& options);

  // The services, for a translator with epoll kinds from `first_kind`.
  TranslatorEnv Env(uint8_t first_kind = 64);

  GuestConfig guest;
  std::unique_ptr<FlowTable> flows;
  vu::testing::GuestRxRing ring;
  EpollWatcher watcher;
  std::unique_ptr<Forwarding> forward;

 private:
  int64_t (*clock_)() = nullptr;
};

}  // namespace vunet::net::testing

#endif  // VUNET_NET_TESTING_WORLD_H_
