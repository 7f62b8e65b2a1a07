#include "net/migrate/flow_fields.h"

#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"

namespace vunet::net {

void WriteAddr(StateWriter& w, const InetAddr& addr) {
  if (addr.is_v4()) {
    w.U8(4);
    const in_addr a = addr.v4();
    w.Bytes({reinterpret_cast<const uint8_t*>(&a), 4});
  } else if (addr.is_v6()) {
    w.U8(6);
    w.Bytes({reinterpret_cast<const uint8_t*>(&addr.v6()), 16});
  } else {
    w.U8(0);
  }
}

InetAddr ReadAddr(StateReader& r) {
  const uint8_t version = r.U8();
  if (version == 4) {
    absl::Span<const uint8_t> b = r.Bytes(4);
    if (b.empty()) return {};
    in_addr a;
    std::memcpy(&a, b.data(), 4);
    return InetAddr::V4(a);
  }
  if (version == 6) {
    absl::Span<const uint8_t> b = r.Bytes(16);
    if (b.empty()) return {};
    in6_addr a;
    std::memcpy(&a, b.data(), 16);
    return InetAddr::V6(a);
  }
  if (version != 0) r.Fail(absl::StrFormat("an address of IP version %d", version));
  return {};
}

void WriteEndpoint(StateWriter& w, const Endpoint& e) {
  WriteAddr(w, e.addr);
  w.U16(e.port);
}

Endpoint ReadEndpoint(StateReader& r) {
  Endpoint e;
  e.addr = ReadAddr(r);
  e.port = r.U16();
  return e;
}

void WriteKey(StateWriter& w, const FlowKey& key) {
  w.U8(static_cast<uint8_t>(key.proto));
  WriteAddr(w, key.local());
  WriteAddr(w, key.remote());
  w.U16(key.local_port);
  w.U16(key.remote_port);
}

FlowKey ReadKey(StateReader& r) {
  const uint8_t proto = r.U8();
  const InetAddr local = ReadAddr(r);
  const InetAddr remote = ReadAddr(r);
  const uint16_t local_port = r.U16();
  const uint16_t remote_port = r.U16();
  FlowKey key = FlowKey::V4(FlowProto::kTcp, {}, 0, {}, 0);
  if (!r.ok()) return key;
  if (proto != static_cast<uint8_t>(FlowProto::kTcp) &&
      proto != static_cast<uint8_t>(FlowProto::kUdp) &&
      proto != static_cast<uint8_t>(FlowProto::kIcmp)) {
    r.Fail(absl::StrFormat("a flow of protocol %d", proto));
    return key;
  }
  if (local.empty() || local.family() != remote.family()) {
    r.Fail("a flow key whose addresses are missing or of two IP versions");
    return key;
  }
  return FlowKey::Of(static_cast<FlowProto>(proto), local, local_port, remote, remote_port);
}

void WriteMac(StateWriter& w, const MacAddr& mac) { w.Bytes(mac.bytes); }

MacAddr ReadMac(StateReader& r) {
  MacAddr mac;
  absl::Span<const uint8_t> b = r.Bytes(6);
  if (b.empty()) return mac;
  std::memcpy(mac.bytes, b.data(), 6);
  if (mac.IsMulticast()) r.Fail("a multicast MAC for the guest");
  return mac;
}

void WriteTimeLeft(StateWriter& w, int64_t deadline, int64_t now) {
  w.I64(deadline == 0 ? -1 : std::max<int64_t>(deadline - now, 0));
}

int64_t ReadTimeLeft(StateReader& r, int64_t now, int64_t max_ns) {
  const int64_t left = r.I64();
  if (left == -1) return 0;
  if (left < 0) {
    r.Fail(absl::StrFormat("a timer %d ns in the past", left));
    return 0;
  }
  return now + std::min(left, max_ns);
}

}  // namespace vunet::net
