#include "net/testing/world.h"

#include <sys/epoll.h>

#include <cerrno>

#include "gtest/gtest.h"

namespace vunet::net::testing {

int64_t ManualClock::now_ns = 1'000'000'000;

EpollWatcher::EpollWatcher() : epoll_(epoll_create1(EPOLL_CLOEXEC)) {}

absl::Status EpollWatcher::Watch(int fd, uint32_t events, uint64_t tag) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return absl::ErrnoToStatus(errno, "epoll_ctl add");
  }
  fds_.insert(fd);
  ++adds;
  return absl::OkStatus();
}

absl::Status EpollWatcher::Modify(int fd, uint32_t events, uint64_t tag) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return absl::ErrnoToStatus(errno, "epoll_ctl mod");
  }
  ++modifies;
  return absl::OkStatus();
}

void EpollWatcher::Unwatch(int fd) {
  EXPECT_EQ(fds_.erase(fd), 1u) << "fd " << fd << " unwatched but not watched";
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  ++removes;
}

int EpollWatcher::Poll(Translator* t, int timeout_ms) {
  return Poll([t](uint64_t tag, uint32_t events) { t->OnSocketEvent(tag, events); }, timeout_ms);
}

int EpollWatcher::Poll(absl::FunctionRef<void(uint64_t, uint32_t)> handler, int timeout_ms) {
  epoll_event ev[64];
  const int n = epoll_wait(epoll_.get(), ev, 64, timeout_ms);
  for (int i = 0; i < n; ++i) handler(ev[i].data.u64, ev[i].events);
  return n < 0 ? 0 : n;
}

GuestConfig TestGuest() {
  GuestConfig g;
  ConfigOverrides o;
  o.addresses = {"10.0.2.15/24", "fd00::15/64"};
  o.gateways = {"10.0.2.2", "fe80::1"};
  EXPECT_TRUE(ApplyOverrides(&g, o).ok());
  g.guest_mac = kDefaultGuestMac;
  g.gateway_mac = kDefaultGatewayMac;
  g.mtu = 65520;
  return g;
}

TranslatorWorld::TranslatorWorld(const Options& options)
    : guest(options.guest), ring(options.rx), clock_(options.clock) {
  flows = FlowTable::Create({.capacity = options.flows, .seed = 1}).value();
  forward =
      std::make_unique<Forwarding>(RulesFromConfig(guest, options.resolvers), guest.guest_mac);
}

TranslatorEnv TranslatorWorld::Env(uint8_t first_kind) {
  return TranslatorEnv{.flows = flows.get(),
                       .rx = &ring.rx(),
                       .watcher = &watcher,
                       .forward = forward.get(),
                       .guest = &guest,
                       .first_kind = first_kind,
                       .clock = clock_};
}

}  // namespace vunet::net::testing
