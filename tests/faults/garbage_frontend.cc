// garbage_frontend: a vhost-user frontend that first holds a valid session
// with the backend (negotiation, an ARP request for the gateway answered
// through the rings), then misbehaves in one of several ways, and reports
// what the backend did about it: whether it dropped the connection, and how
// soon.
//
//   garbage_frontend --socket /tmp/vunet.sock --mode random --expect dropped
//
// Modes:
//   random       4 KiB of random bytes on the socket (a nonsense header).
//   bad_version  a GET_FEATURES header with version bits 2.
//   oversized    a header announcing a 256 MiB payload.
//   truncated    a SET_VRING_NUM header and half its payload, then silence:
//                the backend's receive timeout must end the wait.
//   unknown      request 999 with NEED_REPLY (no reply we could wait for).
//   fd_flood     GET_FEATURES carrying 250 fds (surplus fds must be closed).
//   bad_table    SET_MEM_TABLE claiming 200 regions and carrying no fds.
//   ring         the transmit ring's avail index pushed 1000 entries ahead,
//                then a kick: the queue must break (DEVICE_NEEDS_RESET),
//                not the backend.
//   send         ARP requests and receives, without end: a frontend busy on
//                both rings, for a test to kill.
// --expect dropped|kept|any: what the backend must do within --wait; exit
// status 0 if it did, 1 otherwise (2 if the valid session failed).

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "tools/vu_frontend/frontend.h"
#include "vu/message.h"

ABSL_FLAG(std::string, socket, "", "the backend's vhost-user socket");
ABSL_FLAG(std::string, mode, "random", "how to misbehave (see the file comment)");
ABSL_FLAG(std::string, expect, "any", "dropped, kept or any");
ABSL_FLAG(absl::Duration, wait, absl::Seconds(5), "how long to watch for the drop");
ABSL_FLAG(uint32_t, seed, 1, "random bytes' seed");

namespace vunet::faults {
namespace {

using vu_frontend::Frontend;

constexpr uint8_t kGatewayIp[4] = {10, 0, 2, 2};
constexpr uint8_t kGuestIp[4] = {10, 0, 2, 15};
constexpr uint8_t kGuestMac[6] = {0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x56};

// An ARP request from the guest for the gateway's MAC, padded to 60 bytes.
std::vector<uint8_t> ArpRequest() {
  std::vector<uint8_t> f(60, 0);
  std::memset(f.data(), 0xff, 6);
  std::memcpy(f.data() + 6, kGuestMac, 6);
  f[12] = 0x08, f[13] = 0x06;                  // ARP.
  f[14] = 0, f[15] = 1;                        // Ethernet.
  f[16] = 0x08, f[17] = 0;                     // IPv4.
  f[18] = 6, f[19] = 4, f[20] = 0, f[21] = 1;  // Request.
  std::memcpy(f.data() + 22, kGuestMac, 6);
  std::memcpy(f.data() + 28, kGuestIp, 4);
  std::memcpy(f.data() + 38, kGatewayIp, 4);
  return f;
}

// The valid part: negotiation, and an ARP request answered.
absl::Status ValidSession(Frontend* frontend) {
  if (absl::Status s = frontend->Negotiate(); !s.ok()) return s;
  const std::vector<uint8_t> arp = ArpRequest();
  const absl::Span<const uint8_t> frames[] = {arp};
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline) {
    absl::StatusOr<size_t> sent = frontend->SendFrames(frames);
    if (!sent.ok()) return sent.status();
    // Skip router advertisements and the like until the ARP reply.
    for (int i = 0; i < 8; ++i) {
      absl::StatusOr<std::vector<uint8_t>> reply = frontend->ReceiveFrame(absl::Milliseconds(200));
      if (!reply.ok()) break;
      if (reply->size() >= 42 && (*reply)[12] == 0x08 && (*reply)[13] == 0x06 &&
          (*reply)[21] == 2 && std::memcmp(reply->data() + 28, kGatewayIp, 4) == 0) {
        return absl::OkStatus();
      }
    }
  }
  return absl::DeadlineExceededError("no ARP reply for the gateway");
}

absl::Status WriteAll(int fd, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    const ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "send");
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// A header (and payload) with `fds` attached, by hand: vu::WriteMessage
// refuses more than a message may carry.
absl::Status SendWithFds(int sock, const vu::Header& header, absl::Span<const uint8_t> payload,
                         const std::vector<int>& fds) {
  std::vector<uint8_t> bytes(sizeof(header) + payload.size());
  std::memcpy(bytes.data(), &header, sizeof(header));
  if (!payload.empty()) std::memcpy(bytes.data() + sizeof(header), payload.data(), payload.size());
  iovec iov{bytes.data(), bytes.size()};
  std::vector<uint8_t> control(CMSG_SPACE(sizeof(int) * fds.size()), 0);
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  if (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0) return absl::ErrnoToStatus(errno, "sendmsg");
  return absl::OkStatus();
}

absl::Status Misbehave(Frontend* frontend, const std::string& mode) {
  const int sock = frontend->socket_fd();
  if (mode == "random") {
    std::mt19937 rng(absl::GetFlag(FLAGS_seed));
    std::vector<uint8_t> junk(4096);
    for (uint8_t& b : junk) b = static_cast<uint8_t>(rng());
    return WriteAll(sock, junk.data(), junk.size());
  }
  if (mode == "bad_version") {
    const vu::Header h{.request = static_cast<uint32_t>(vu::Request::kGetFeatures), .flags = 2};
    return WriteAll(sock, &h, sizeof(h));
  }
  if (mode == "oversized") {
    const vu::Header h{.request = static_cast<uint32_t>(vu::Request::kSetMemTable),
                       .flags = vu::kVersion,
                       .size = 256u << 20};
    return WriteAll(sock, &h, sizeof(h));
  }
  if (mode == "truncated") {
    const vu::Header h{.request = static_cast<uint32_t>(vu::Request::kSetVringNum),
                       .flags = vu::kVersion,
                       .size = sizeof(vu::VringState)};
    uint8_t bytes[sizeof(h) + 4];
    std::memcpy(bytes, &h, sizeof(h));
    std::memset(bytes + sizeof(h), 0, 4);
    return WriteAll(sock, bytes, sizeof(bytes));
  }
  if (mode == "unknown") {
    const vu::Header h{.request = 999, .flags = vu::kVersion | vu::kFlagNeedReply};
    return WriteAll(sock, &h, sizeof(h));
  }
  if (mode == "fd_flood") {
    UniqueFd event(eventfd(0, EFD_CLOEXEC));
    if (!event.valid()) return absl::ErrnoToStatus(errno, "eventfd");
    const std::vector<int> fds(250, event.get());
    const vu::Header h{.request = static_cast<uint32_t>(vu::Request::kGetFeatures),
                       .flags = vu::kVersion};
    if (absl::Status s = SendWithFds(sock, h, {}, fds); !s.ok()) return s;
    // GET_FEATURES has a reply of its own: read it, so that the connection
    // is known to have got past the message.
    absl::StatusOr<vu::Message> reply = frontend->ReadReply();
    if (!reply.ok()) return absl::OkStatus();  // Dropped: the watch below says so.
    return absl::OkStatus();
  }
  if (mode == "bad_table") {
    uint8_t payload[8 + 32] = {};
    const uint32_t regions = 200;
    std::memcpy(payload, &regions, sizeof(regions));
    const vu::Header h{.request = static_cast<uint32_t>(vu::Request::kSetMemTable),
                       .flags = vu::kVersion | vu::kFlagNeedReply,
                       .size = sizeof(payload)};
    uint8_t bytes[sizeof(h) + sizeof(payload)];
    std::memcpy(bytes, &h, sizeof(h));
    std::memcpy(bytes + sizeof(h), payload, sizeof(payload));
    return WriteAll(sock, bytes, sizeof(bytes));
  }
  if (mode == "send") {
    const std::vector<uint8_t> arp = ArpRequest();
    std::vector<absl::Span<const uint8_t>> frames(32, absl::MakeConstSpan(arp));
    std::printf("garbage_frontend: sending\n");
    std::fflush(stdout);
    for (;;) {
      absl::StatusOr<size_t> sent = frontend->SendFrames(frames);
      if (!sent.ok()) return sent.status();
      absl::StatusOr<size_t> received =
          frontend->ReceiveFrames(64, absl::ZeroDuration(), [](const auto&) {});
      if (!received.ok()) return received.status();
      if (*sent == 0) (void)frontend->WaitTx(absl::Milliseconds(10));
    }
  }
  if (mode == "ring") {
    virtio::testing::DriverQueue* tx = frontend->queue(vu_frontend::kTxQueue);
    tx->SetAvailIdx(static_cast<uint16_t>(tx->avail_idx() + 1000));
    const uint64_t one = 1;
    if (write(frontend->kick_fd(vu_frontend::kTxQueue), &one, sizeof(one)) != sizeof(one)) {
      return absl::ErrnoToStatus(errno, "kick");
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError("unknown --mode " + mode);
}

// Whether the backend closed the connection within `wait`; whatever it
// sends meanwhile (replies, acks) is read and ignored.
bool WaitDropped(int sock, absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  uint8_t buf[4096];
  while (absl::Now() < deadline) {
    timeval tv{.tv_sec = 0, .tv_usec = 100'000};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const ssize_t n = recv(sock, buf, sizeof(buf), 0);
    if (n == 0) return true;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
  }
  return false;
}

int Main() {
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const std::string expect = absl::GetFlag(FLAGS_expect);
  absl::StatusOr<std::unique_ptr<Frontend>> frontend = Frontend::Create({});
  if (!frontend.ok()) {
    std::fprintf(stderr, "garbage_frontend: %s\n", frontend.status().ToString().c_str());
    return 2;
  }
  if (absl::Status s = (*frontend)->Connect(absl::GetFlag(FLAGS_socket), absl::Seconds(5));
      !s.ok()) {
    std::fprintf(stderr, "garbage_frontend: %s\n", s.ToString().c_str());
    return 2;
  }
  if (absl::Status s = ValidSession(frontend->get()); !s.ok()) {
    std::fprintf(stderr, "garbage_frontend: the valid session failed: %s\n", s.ToString().c_str());
    return 2;
  }
  const absl::Time start = absl::Now();
  if (absl::Status s = Misbehave(frontend->get(), mode); !s.ok()) {
    // EPIPE and the like: the backend dropped us already.
    std::fprintf(stderr, "garbage_frontend: %s: %s\n", mode.c_str(), s.ToString().c_str());
  }
  const bool dropped = WaitDropped((*frontend)->socket_fd(), absl::GetFlag(FLAGS_wait));
  std::printf(
      "garbage_frontend: %s: %s%s\n", mode.c_str(), dropped ? "dropped" : "kept",
      dropped
          ? absl::StrFormat(" after %d ms", absl::ToInt64Milliseconds(absl::Now() - start)).c_str()
          : "");
  std::fflush(stdout);
  if (expect == "dropped" && !dropped) return 1;
  if (expect == "kept" && dropped) return 1;
  return 0;
}

}  // namespace
}  // namespace vunet::faults

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return vunet::faults::Main();
}
