// Fuzzes the backend's reading of a frontend's byte stream: framing,
// ancillary fds and request validation. Input: see fuzz_stream.h.

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "base/unique_fd.h"
#include "vu/fuzz_stream.h"
#include "vu/message.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vunet;
  using namespace vunet::vu;
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return 0;
  UniqueFd front(pair[0]);
  UniqueFd back(pair[1]);
  if (!fuzz::SendRecords(front.get(), data, size)) return 0;

  for (;;) {
    absl::StatusOr<Message> m = ReadMessage(back.get());
    if (!m.ok()) break;
    if (m->header.size > kMaxPayloadSize || m->fds.size() > kMaxReceivedFds) __builtin_trap();
    (void)RequestName(m->header.request);
    if (!ValidateRequest(&*m, 2).ok()) continue;
    // What validation promises the device. (Unknown requests pass with their
    // fds, which close with the message.)
    const bool known = m->header.request >= 1 && m->header.request <= 43;
    if (known && m->fds.size() > kMaxFds) __builtin_trap();
    if (m->request() == Request::kSetMemTable) {
      MemoryTable table;
      std::memcpy(&table, m->payload, sizeof(table));
      if (table.nregions == 0 || table.nregions > kMaxMemTableRegions ||
          m->fds.size() != table.nregions ||
          m->header.size != 8 + sizeof(MemoryRegion) * table.nregions) {
        __builtin_trap();
      }
    }
  }
  return 0;
}
