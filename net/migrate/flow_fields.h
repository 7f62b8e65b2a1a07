// The fields flow records share, written and read the same way by every
// translator: addresses, endpoints, flow keys, MACs, and timers as the time
// left (a monotonic clock's deadlines mean nothing on another host).
//
// Readers check what they read: an address's family byte must be 0, 4 or 6;
// a key's protocol and family must be known and agree with its addresses; a
// MAC must be unicast. A failed check fails the reader (StateReader::Fail).

#ifndef VUNET_NET_MIGRATE_FLOW_FIELDS_H_
#define VUNET_NET_MIGRATE_FLOW_FIELDS_H_

#include <cstdint>

#include "net/flow/flow.h"
#include "net/migrate/state_stream.h"
#include "net/packet/frame.h"
#include "net/packet/inet.h"

namespace vunet::net {

// u8 version (0 none, 4, 6) and 0, 4 or 16 bytes.
void WriteAddr(StateWriter& w, const InetAddr& addr);
InetAddr ReadAddr(StateReader& r);
// The address and a u16 port.
void WriteEndpoint(StateWriter& w, const Endpoint& e);
Endpoint ReadEndpoint(StateReader& r);
// u8 protocol, u8 version (4, 6), local and remote addresses (4 or 16 bytes
// each), local and remote ports.
void WriteKey(StateWriter& w, const FlowKey& key);
FlowKey ReadKey(StateReader& r);
void WriteMac(StateWriter& w, const MacAddr& mac);
MacAddr ReadMac(StateReader& r);
// A deadline as the time left after `now` (0 if passed; -1 for none, as
// `deadline` 0 means), and back to a deadline on the reader's clock. The
// time left read is capped at `max_ns` (a hostile stream's timers cannot
// outlive the flows' own limits).
void WriteTimeLeft(StateWriter& w, int64_t deadline, int64_t now);
int64_t ReadTimeLeft(StateReader& r, int64_t now, int64_t max_ns);

}  // namespace vunet::net

#endif  // VUNET_NET_MIGRATE_FLOW_FIELDS_H_
