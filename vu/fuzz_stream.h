// The input format of //vu:message_fuzz and //vu:device_fuzz: a frontend's
// byte stream cut into sends, each with its own fds, so a fuzzer can place
// fds on any message and split messages anywhere.
//
// Records, until the input ends:
//   u8  fds: count in the low 4 bits, sent with this record's first byte;
//       bit 4 set: dups of a 1 MiB memfd (mappable as guest memory or a
//       dirty log), else eventfds; bit 5 set: alternate, the other kind first;
//       bit 6 set: not a send at all, but a write of guest memory (the bytes
//       are a u32 offset into the memfd and the data to write there), so a
//       fuzzer can lay out rings and descriptor chains
//   u16 length, little-endian (cut to what the input has left)
//   the bytes to send
// message_fuzz_seeds.py writes seeds in this format.

#ifndef VUNET_VU_FUZZ_STREAM_H_
#define VUNET_VU_FUZZ_STREAM_H_

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/unique_fd.h"

namespace vunet::vu::fuzz {

inline constexpr size_t kMaxInput = 64 * 1024;
// Sends per input: with 64 KiB of data they stay well inside a socket
// buffer of the kernel's default size (212992 bytes, each send costing about
// a kilobyte of overhead), so which records arrive does not depend on the
// machine. Records past it are not sent.
inline constexpr size_t kMaxRecords = 128;
inline constexpr size_t kMemfdSize = 1 << 20;
inline constexpr size_t kMaxRecordFds = 15;

// Sends the records of `data` into `socket` and shuts its sending side, so
// the reader sees EOF after them. False if the input is unusable. The reader
// runs after this returns, in the same thread: at most kMaxRecords sends are
// made, and should the socket's buffer fill anyway (a smaller default) the
// rest is not sent rather than block forever.
inline bool SendRecords(int socket, const uint8_t* data, size_t size) {
  if (size > kMaxInput) return false;
  // Fresh for each input: a frontend's memfd sent as a call fd gets written.
  UniqueFd memfd(memfd_create("fuzz-guest", MFD_CLOEXEC));
  if (!memfd.valid() || ftruncate(memfd.get(), kMemfdSize) != 0) return false;
  size_t pos = 0;
  size_t sends = 0;
  while (pos < size && sends < kMaxRecords) {
    const uint8_t spec = data[pos++];
    const size_t fd_count = spec & 0x0f;
    size_t len = 0;
    if (pos < size) len = data[pos++];
    if (pos < size) len |= static_cast<size_t>(data[pos++]) << 8;
    if (len > size - pos) len = size - pos;
    if (spec & 0x40) {
      if (len >= 4) {
        uint32_t offset;
        std::memcpy(&offset, data + pos, 4);
        offset %= kMemfdSize;
        const size_t n = len - 4 < kMemfdSize - offset ? len - 4 : kMemfdSize - offset;
        if (pwrite(memfd.get(), data + pos + 4, n, offset) != static_cast<ssize_t>(n)) return false;
      }
      pos += len;
      continue;
    }
    std::vector<UniqueFd> fds;
    int raw[kMaxRecordFds];
    for (size_t i = 0; i < fd_count; ++i) {
      const bool mem = ((spec & 0x10) != 0) != ((spec & 0x20) != 0 && i % 2 == 1);
      fds.emplace_back(mem ? fcntl(memfd.get(), F_DUPFD_CLOEXEC, 0)
                           : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      raw[i] = fds.back().get();
    }
    // A record with fds but no bytes still sends one byte: fds need data.
    uint8_t zero = 0;
    iovec iov{len > 0 ? const_cast<uint8_t*>(data + pos) : &zero, len > 0 ? len : 1};
    if (len == 0 && fd_count == 0) continue;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxRecordFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd_count > 0) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
      std::memcpy(CMSG_DATA(c), raw, sizeof(int) * fd_count);
    }
    const ssize_t sent = sendmsg(socket, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;  // The buffer is full.
    if (sent < 0) return false;
    if (static_cast<size_t>(sent) != iov.iov_len) break;  // Cut short: the rest is not sent.
    pos += len;
    ++sends;
  }
  shutdown(socket, SHUT_WR);
  return true;
}

}  // namespace vunet::vu::fuzz

#endif  // VUNET_VU_FUZZ_STREAM_H_
