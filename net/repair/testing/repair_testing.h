// Test helpers for TCP repair: a private network namespace with loopback up,
// TCP connections over it, repair mode set directly (the test has
// CAP_NET_ADMIN), a capture of what crosses loopback, and byte streams whose
// every byte says where in the stream it belongs.

#ifndef VUNET_NET_REPAIR_TESTING_REPAIR_TESTING_H_
#define VUNET_NET_REPAIR_TESTING_REPAIR_TESTING_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace vunet::net::testing {

// Once per process: moves it into a network namespace of its own with `lo`
// up, and checks that TCP_REPAIR can be set there. Empty when all is well,
// else why not (not root, no CAP_NET_ADMIN, no namespaces): the reason to
// skip with.
const std::string& RepairUnavailableReason();

// The first line of a test that needs repair mode: skips it, saying why,
// where repair mode is not to be had.
#define VUNET_SKIP_WITHOUT_REPAIR()                                                  \
  do {                                                                               \
    const std::string& vunet_repair_unavailable =                                    \
        ::vunet::net::testing::RepairUnavailableReason();                            \
    if (!vunet_repair_unavailable.empty()) GTEST_SKIP() << vunet_repair_unavailable; \
  } while (0)

// Sets TCP_REPAIR on `fd` directly (mode 1, 0 or -1).
absl::Status SetRepairMode(int fd, int mode);
// TCP_REPAIR as getsockopt reads it (0 or 1).
absl::StatusOr<int> RepairModeOf(int fd);

struct LoopbackPairOptions {
  int family = 0;  // AF_INET (127.0.0.1) or AF_INET6 (::1).
  // Socket buffer sizes forced before connecting (SO_*BUFFORCE); 0 leaves
  // the kernel's.
  int ours_rcvbuf = 0;
  int ours_sndbuf = 0;
  int peer_rcvbuf = 0;
};

// A TCP connection over loopback: `ours` (connected, the side a test
// migrates) and `peer` (accepted), both non-blocking.
struct LoopbackPair {
  UniqueFd ours;
  UniqueFd peer;
};
absl::StatusOr<LoopbackPair> ConnectOverLoopback(const LoopbackPairOptions& options);

// Makes `fd` drop every segment that reaches it (a socket filter returning
// 0), so that what is sent to it stays unacknowledged; Unfreeze undoes it.
absl::Status FreezeReceiver(int fd);
absl::Status UnfreezeReceiver(int fd);

// `count` TCP sockets, not connected: enough for a helper to set repair mode
// on, or for a channel to pass on. `fds` lists what `sockets` own.
struct SocketSet {
  std::vector<UniqueFd> sockets;
  std::vector<int> fds;
};
SocketSet UnconnectedTcpSockets(int count);

// How many fds this process has open (to see that nothing leaked).
size_t OpenFdCount();

// Byte `offset` of the test stream `stream`: not periodic in any small
// power of two, so a byte lost, repeated or moved shows.
uint8_t StreamByte(uint32_t stream, uint64_t offset);
std::vector<uint8_t> StreamBytes(uint32_t stream, uint64_t offset, size_t count);
// Where `bytes`, expected at `offset` of `stream`, first differ from it; -1
// if they do not.
int64_t FirstMismatch(uint32_t stream, uint64_t offset, const uint8_t* bytes, size_t count);

// Everything on `lo` from the moment of creation (a packet socket).
class LoopbackCapture {
 public:
  static absl::StatusOr<LoopbackCapture> Open();
  // Reads what has been captured so far; true if a TCP segment from local
  // port `port` carried FIN or RST.
  bool SawFinOrRstFrom(uint16_t port);

 private:
  explicit LoopbackCapture(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace vunet::net::testing

#endif  // VUNET_NET_REPAIR_TESTING_REPAIR_TESTING_H_
