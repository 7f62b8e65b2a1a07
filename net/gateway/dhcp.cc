#include "net/gateway/dhcp.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

#include "base/log.h"
#include "net/gateway/dns_name.h"

namespace vunet::net {
namespace {

// The fixed part of a DHCP message (RFC 2131 2), network order.
struct DhcpFixed {
  uint8_t op;
  uint8_t htype;
  uint8_t hlen;
  uint8_t hops;
  uint32_t xid;
  uint16_t secs;
  uint16_t flags;
  in_addr ciaddr;
  in_addr yiaddr;
  in_addr siaddr;
  in_addr giaddr;
  uint8_t chaddr[16];
  uint8_t sname[64];
  uint8_t file[128];
};
static_assert(sizeof(DhcpFixed) == 236);

constexpr uint8_t kMagicCookie[4] = {99, 130, 83, 99};
constexpr size_t kOptionsStart = sizeof(DhcpFixed) + sizeof(kMagicCookie);
constexpr uint16_t kBroadcastFlag = 0x8000;
// BOOTP relays and old clients expect at least this much message (RFC 1542).
constexpr size_t kMinMessageLen = 300;
// Option 81's flags (RFC 4702 2.1).
constexpr uint8_t kFqdnS = 0x01;  // The server should update the A record.
constexpr uint8_t kFqdnO = 0x02;  // The server overrode the client's S.
constexpr uint8_t kFqdnE = 0x04;  // The name is in DNS wire format.
constexpr uint8_t kFqdnN = 0x08;  // The server updates no records.
// The options area of a reply past what Create accounts for: message type,
// server identifier, lease time, end.
constexpr size_t kReplyFixedOptions = 3 + 6 + 6 + 1;

enum MessageType : uint8_t {
  kDiscover = 1,
  kOffer = 2,
  kRequest = 3,
  kDecline = 4,
  kAck = 5,
  kNak = 6,
  kRelease = 7,
  kInform = 8,
};

enum Option : uint8_t {
  kPad = 0,
  kSubnetMask = 1,
  kRouter = 3,
  kDns = 6,
  kHostName = 12,
  kDomainName = 15,
  kMtu = 26,
  kRequestedAddress = 50,
  kLeaseTime = 51,
  kMessageType = 53,
  kServerId = 54,
  kClientFqdn = 81,
  kDomainSearch = 119,
  kEnd = 255,
};

size_t DropRequest(const char* reason) {
  VUNET_LOG_RATELIMITED(kInfo, "dropped DHCP request: %s", reason);
  return 0;
}

// Appends options to a fixed buffer; `ok` turns false on overflow and stays so.
class OptionWriter {
 public:
  OptionWriter(uint8_t* buf, size_t cap) : buf_(buf), cap_(cap) {}

  // One option; values over 255 bytes become consecutive instances of the
  // same code (RFC 3396).
  void Add(uint8_t code, const void* data, size_t len) {
    const auto* p = static_cast<const uint8_t*>(data);
    do {
      const size_t chunk = std::min<size_t>(len, 255);
      if (cap_ - len_ < 2 + chunk) {
        ok_ = false;
        return;
      }
      buf_[len_++] = code;
      buf_[len_++] = static_cast<uint8_t>(chunk);
      if (chunk > 0) std::memcpy(buf_ + len_, p, chunk);
      len_ += chunk;
      p += chunk;
      len -= chunk;
    } while (len > 0);
  }
  void AddU8(uint8_t code, uint8_t v) { Add(code, &v, 1); }
  void AddBe16(uint8_t code, uint16_t v) {
    const uint16_t be = htons(v);
    Add(code, &be, 2);
  }
  void AddBe32(uint8_t code, uint32_t v) {
    const uint32_t be = htonl(v);
    Add(code, &be, 4);
  }
  void AddRaw(const uint8_t* data, size_t len) {
    if (cap_ - len_ < len) {
      ok_ = false;
      return;
    }
    std::memcpy(buf_ + len_, data, len);
    len_ += len;
  }

  size_t len() const { return len_; }
  bool ok() const { return ok_; }

 private:
  uint8_t* buf_;
  size_t cap_;
  size_t len_ = 0;
  bool ok_ = true;
};

// What Reply needs of a request's options.
struct RequestOptions {
  uint8_t type = 0;
  bool has_requested = false;
  in_addr requested{};
  bool has_server_id = false;
  in_addr server_id{};
  bool has_fqdn = false;  // Option 81, with at least its flags and RCODEs.
  uint8_t fqdn_flags = 0;
};

// Walks the options area; false if an option runs past the end.
bool ParseOptions(const uint8_t* o, size_t len, RequestOptions* out) {
  size_t i = 0;
  while (i < len) {  // Every step advances i by at least one.
    const uint8_t code = o[i];
    if (code == kEnd) break;
    if (code == kPad) {
      ++i;
      continue;
    }
    if (len - i < 2 || o[i + 1] > len - i - 2) return false;
    const size_t olen = o[i + 1];
    const uint8_t* v = o + i + 2;
    if (code == kMessageType && olen == 1) out->type = v[0];
    if (code == kRequestedAddress && olen == 4) {
      out->has_requested = true;
      std::memcpy(&out->requested, v, 4);
    }
    if (code == kServerId && olen == 4) {
      out->has_server_id = true;
      std::memcpy(&out->server_id, v, 4);
    }
    if (code == kClientFqdn && olen >= 3) {
      out->has_fqdn = true;
      out->fqdn_flags = v[0];
    }
    i += 2 + olen;
  }
  return true;
}

}  // namespace

absl::StatusOr<DhcpServer> DhcpServer::Create(const DhcpConfig& config) {
  if (config.prefix_len < 0 || config.prefix_len > 32) {
    return absl::InvalidArgumentError("DHCP: prefix length over 32");
  }
  if (config.mtu != 0 && config.mtu < 68) return absl::InvalidArgumentError("DHCP: MTU below 68");
  if (config.dns.size() > 63) return absl::InvalidArgumentError("DHCP: more than 63 DNS servers");
  DhcpServer s;
  s.gateway_mac_ = config.gateway_mac;
  s.gateway_addr_ = config.gateway_addr;
  s.guest_addr_ = config.guest_addr;
  s.lease_seconds_ = config.lease_seconds;

  OptionWriter w(s.config_options_, sizeof(s.config_options_));
  const uint32_t mask = config.prefix_len == 0 ? 0 : ~uint32_t{0} << (32 - config.prefix_len);
  w.AddBe32(kSubnetMask, mask);
  w.Add(kRouter, &config.gateway_addr, 4);
  if (!config.dns.empty()) w.Add(kDns, config.dns.data(), 4 * config.dns.size());
  if (!config.hostname.empty()) {
    if (!IsHostName(config.hostname)) {
      return absl::InvalidArgumentError("DHCP: host name is not a valid host name");
    }
    w.Add(kHostName, config.hostname.data(), config.hostname.size());
  }
  if (!config.domain_name.empty()) {
    std::vector<uint8_t> check;
    if (!AppendDnsName(config.domain_name, &check)) {
      return absl::InvalidArgumentError("DHCP: domain name is not a DNS name");
    }
    w.Add(kDomainName, config.domain_name.data(), config.domain_name.size());
  }
  if (!config.search_domains.empty()) {
    std::vector<uint8_t> wire;
    for (const std::string& d : config.search_domains) {
      if (!AppendDnsName(d, &wire)) {
        return absl::InvalidArgumentError("DHCP: search domain is not a DNS name");
      }
    }
    w.Add(kDomainSearch, wire.data(), wire.size());
  }
  if (config.mtu != 0) w.AddBe16(kMtu, config.mtu);
  if (!w.ok()) return absl::InvalidArgumentError("DHCP: options too long for one reply");
  s.config_options_len_ = w.len();

  size_t fqdn_option_len = 0;
  if (!config.fqdn.empty()) {
    std::vector<uint8_t> wire;
    if (!IsHostName(config.fqdn) || !AppendDnsName(config.fqdn, &wire) ||
        wire.size() > sizeof(s.fqdn_wire_)) {
      return absl::InvalidArgumentError("DHCP: FQDN is not a valid host name");
    }
    std::memcpy(s.fqdn_wire_, wire.data(), wire.size());
    s.fqdn_wire_len_ = wire.size();
    std::string_view text = config.fqdn;
    if (text.back() == '.') text.remove_suffix(1);
    std::memcpy(s.fqdn_text_, text.data(), text.size());
    s.fqdn_text_len_ = text.size();
    // Flags, RCODEs and the name, in instances of at most 255 bytes.
    const size_t data = 3 + std::max(s.fqdn_wire_len_, s.fqdn_text_len_);
    fqdn_option_len = data + 2 * ((data + 254) / 255);
  }
  const size_t room = kDhcpMaxReplyLen - kEthHeaderLen - kIpv4MinHeaderLen - kUdpHeaderLen -
                      kOptionsStart - kReplyFixedOptions;
  if (s.config_options_len_ + fqdn_option_len > room) {
    return absl::InvalidArgumentError("DHCP: options too long for one reply");
  }
  return s;
}

absl::StatusOr<size_t> DhcpServer::Reply(absl::Span<const iovec> frame, const ParsedFrame& parsed,
                                         absl::Span<uint8_t> out) const {
  if (out.size() < kDhcpMaxReplyLen) {
    return absl::InvalidArgumentError("DHCP reply buffer too short");
  }
  if (parsed.l3 != L3Kind::kIpv4 || parsed.l4 != L4Kind::kUdp ||
      parsed.dst_port != kDhcpServerPort) {
    return 0;
  }
  const FrameReader r(frame);
  if (parsed.payload_len < kOptionsStart) return DropRequest("shorter than a DHCP message");
  const size_t options_len = parsed.payload_len - kOptionsStart;
  if (options_len > kMaxRequestOptions) return DropRequest("options too long");
  DhcpFixed req;
  uint8_t cookie[4];
  uint8_t options[kMaxRequestOptions];
  if (!r.Read(parsed.payload_offset, &req) ||
      !r.Read(parsed.payload_offset + sizeof(req), cookie, sizeof(cookie)) ||
      !r.Read(parsed.payload_offset + kOptionsStart, options, options_len)) {
    return DropRequest("message past the frame");  // ParseFrame's bounds make this unreachable.
  }
  if (req.op != 1 || req.htype != 1 || req.hlen != 6) {
    return DropRequest("not an Ethernet BOOTREQUEST");
  }
  if (std::memcmp(cookie, kMagicCookie, sizeof(cookie)) != 0) return DropRequest("no magic cookie");
  RequestOptions ro;
  if (!ParseOptions(options, options_len, &ro)) return DropRequest("option past the end");

  uint8_t type;
  switch (ro.type) {
    case kDiscover:
      type = kOffer;
      break;
    case kRequest: {
      // A client that chose another server's offer: not ours to answer.
      if (ro.has_server_id && ro.server_id.s_addr != gateway_addr_.s_addr) return 0;
      const in_addr wanted = ro.has_requested ? ro.requested : req.ciaddr;
      type = wanted.s_addr == guest_addr_.s_addr ? kAck : kNak;
      break;
    }
    case kInform:
      type = kAck;
      break;
    case 0:
      return DropRequest("no message type (BOOTP is not served)");
    default:
      return 0;  // DECLINE, RELEASE, or something we don't serve.
  }
  const bool inform = ro.type == kInform;

  DhcpFixed rep = {};
  rep.op = 2;
  rep.htype = 1;
  rep.hlen = 6;
  rep.xid = req.xid;
  rep.flags = req.flags;
  std::memcpy(rep.chaddr, req.chaddr, sizeof(rep.chaddr));
  rep.giaddr = req.giaddr;
  if (type != kNak) {
    if (type == kAck) rep.ciaddr = req.ciaddr;
    if (!inform) rep.yiaddr = guest_addr_;
  }

  // The message goes right after the Ethernet, IPv4 and UDP headers.
  FrameSpec spec;
  spec.src_mac = gateway_mac_;
  spec.src4 = gateway_addr_;
  spec.protocol = IPPROTO_UDP;
  spec.src_port = kDhcpServerPort;
  spec.dst_port = kDhcpClientPort;
  spec.dont_fragment = false;
  // RFC 2131 4.1 with giaddr zero: a NAK, or a client that asked for it
  // or has no address yet and set the broadcast bit, gets a broadcast; a
  // client with an address gets it there; otherwise unicast to the offered
  // address at the client's hardware address.
  MacAddr client_mac;
  std::memcpy(client_mac.bytes, req.chaddr, 6);
  if (type == kNak || (req.ciaddr.s_addr == INADDR_ANY && (ntohs(req.flags) & kBroadcastFlag))) {
    spec.dst_mac = kBroadcastMac;
    spec.dst4.s_addr = INADDR_BROADCAST;
  } else {
    spec.dst_mac = client_mac;
    spec.dst4 = req.ciaddr.s_addr != INADDR_ANY ? req.ciaddr : guest_addr_;
  }
  const size_t hlen = FrameHeadersLen(spec);

  uint8_t* msg = out.data() + hlen;
  std::memcpy(msg, &rep, sizeof(rep));
  std::memcpy(msg + sizeof(rep), kMagicCookie, sizeof(kMagicCookie));
  OptionWriter w(msg + kOptionsStart, out.size() - hlen - kOptionsStart);
  w.AddU8(kMessageType, type);
  w.Add(kServerId, &gateway_addr_, 4);
  if (type != kNak) {
    if (!inform) w.AddBe32(kLeaseTime, lease_seconds_);
    w.AddRaw(config_options_, config_options_len_);
    if (fqdn_wire_len_ > 0) {
      // In the client's encoding if it sent the option, else wire format.
      const bool ascii = ro.has_fqdn && !(ro.fqdn_flags & kFqdnE);
      uint8_t fqdn[3 + sizeof(fqdn_wire_)];
      fqdn[0] = static_cast<uint8_t>(kFqdnN | (ascii ? 0 : kFqdnE) |
                                     (ro.has_fqdn && (ro.fqdn_flags & kFqdnS) ? kFqdnO : 0));
      fqdn[1] = fqdn[2] = 255;  // RCODE1, RCODE2 (RFC 4702 2.2).
      const size_t name_len = ascii ? fqdn_text_len_ : fqdn_wire_len_;
      std::memcpy(fqdn + 3, ascii ? static_cast<const void*>(fqdn_text_) : fqdn_wire_, name_len);
      w.Add(kClientFqdn, fqdn, 3 + name_len);
    }
  }
  const uint8_t end = kEnd;
  w.AddRaw(&end, 1);
  if (!w.ok()) return absl::InternalError("DHCP reply longer than its buffer");
  size_t msg_len = kOptionsStart + w.len();
  if (msg_len < kMinMessageLen) {
    std::memset(msg + msg_len, 0, kMinMessageLen - msg_len);  // Pad options.
    msg_len = kMinMessageLen;
  }
  return BuildFrame(spec, out, msg_len);
}

}  // namespace vunet::net
