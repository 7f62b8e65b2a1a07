#include "net/gateway/dhcpv6.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "base/log.h"
#include "net/gateway/dns_name.h"
#include "net/packet/checksum.h"

namespace vunet::net {
namespace {

enum MessageType : uint8_t {
  kSolicit = 1,
  kAdvertise = 2,
  kRequest = 3,
  kConfirm = 4,
  kRenew = 5,
  kRebind = 6,
  kReply = 7,
  kRelease = 8,
  kDecline = 9,
  kInformationRequest = 11,
};

enum Option : uint16_t {
  kClientId = 1,
  kServerId = 2,
  kIaNa = 3,
  kIaTa = 4,
  kIaAddr = 5,
  kPreference = 7,
  kStatusCode = 13,
  kRapidCommit = 14,
  kDnsServers = 23,
  kDomainList = 24,
  kIaPd = 25,
  kClientFqdn = 39,
};

// Option 39's flags (RFC 4704 4.1).
constexpr uint8_t kFqdnS = 0x01;  // The server should update the AAAA record.
constexpr uint8_t kFqdnO = 0x02;  // The server overrode the client's S.
constexpr uint8_t kFqdnN = 0x04;  // The server updates no records.

enum StatusCode : uint16_t {
  kSuccess = 0,
  kNoAddrsAvail = 2,
  kNotOnLink = 4,
  kNoPrefixAvail = 6,
};

constexpr size_t kHeaderLen = 4;           // msg-type, transaction-id.
constexpr size_t kOptionHeaderLen = 4;     // option-code, option-len.
constexpr size_t kMaxDuidOptionLen = 130;  // DUID type and at most 128 bytes (RFC 8415 11.1).
constexpr size_t kIaNaFixedLen = 12;       // IAID, T1, T2 (IA_PD alike).
constexpr size_t kIaTaFixedLen = 4;        // IAID.
constexpr size_t kIaAddrFixedLen = 24;     // Address, preferred and valid lifetimes.
// Addresses of one IA remembered for returning with lifetimes 0; more are
// still checked, just not returned.
constexpr size_t kMaxIaAddrs = 4;
constexpr uint32_t kInfinity = 0xffffffff;

// The longest reply without the configured options: header, Server ID,
// Client ID, Preference, Rapid Commit, a status, and every IA with its own
// address, the remembered foreign ones, and a status.
constexpr size_t kIaAddrOptionLen = kOptionHeaderLen + kIaAddrFixedLen;
constexpr size_t kStatusOptionLen = kOptionHeaderLen + 2;
constexpr size_t kWorstReplyWithoutConfig =
    kHeaderLen + (kOptionHeaderLen + 10) + (kOptionHeaderLen + kMaxDuidOptionLen) +
    (kOptionHeaderLen + 1) + kOptionHeaderLen + kStatusOptionLen +
    kDhcpv6MaxIas * (kOptionHeaderLen + kIaNaFixedLen + (kMaxIaAddrs + 1) * kIaAddrOptionLen +
                     kStatusOptionLen);
constexpr size_t kMaxReplyMessage =
    kDhcpv6MaxReplyLen - kEthHeaderLen - kIpv6HeaderLen - kUdpHeaderLen;
static_assert(kWorstReplyWithoutConfig < kMaxReplyMessage);

size_t DropMessage(const char* reason) {
  VUNET_LOG_RATELIMITED(kInfo, "dropped DHCPv6 message: %s", reason);
  return 0;
}

uint16_t GetBe16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

// Appends options to a fixed buffer; `ok` turns false on overflow and stays
// so. Nested options: Begin() writes the header, End() its length.
class OptionWriter {
 public:
  OptionWriter(uint8_t* buf, size_t cap) : buf_(buf), cap_(cap) {}

  void Raw(const void* data, size_t len) {
    if (cap_ - len_ < len) {
      ok_ = false;
      return;
    }
    if (len > 0) std::memcpy(buf_ + len_, data, len);
    len_ += len;
  }
  void Be16(uint16_t v) {
    const uint8_t b[2] = {static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)};
    Raw(b, 2);
  }
  void Be32(uint32_t v) {
    Be16(static_cast<uint16_t>(v >> 16));
    Be16(static_cast<uint16_t>(v));
  }
  void Add(uint16_t code, const void* data, size_t len) {
    Be16(code);
    Be16(static_cast<uint16_t>(len));  // Callers keep len far below 64 KiB.
    Raw(data, len);
  }
  void Status(uint16_t code) {
    Be16(kStatusCode);
    Be16(2);
    Be16(code);  // No message: it is optional.
  }
  size_t Begin(uint16_t code) {
    const size_t at = len_;
    Be16(code);
    Be16(0);
    return at;
  }
  void End(size_t at) {
    if (!ok_) return;
    const size_t len = len_ - at - kOptionHeaderLen;
    buf_[at + 2] = static_cast<uint8_t>(len >> 8);
    buf_[at + 3] = static_cast<uint8_t>(len);
  }

  size_t len() const { return len_; }
  bool ok() const { return ok_; }

 private:
  uint8_t* buf_;
  size_t cap_;
  size_t len_ = 0;
  bool ok_ = true;
};

// One IA option of a request.
struct Ia {
  uint16_t code = 0;  // kIaNa, kIaTa or kIaPd.
  uint8_t iaid[4] = {};
  bool has_ours = false;               // Holds the guest's address.
  in6_addr foreign[kMaxIaAddrs] = {};  // Other addresses, the first kMaxIaAddrs.
  size_t foreign_count = 0;
};

// What Reply needs of a request. Pointers are into the caller's copy of the
// message.
struct Request {
  uint8_t type = 0;
  const uint8_t* client_id = nullptr;
  size_t client_id_len = 0;
  const uint8_t* server_id = nullptr;
  size_t server_id_len = 0;
  bool rapid_commit = false;
  Ia ias[kDhcpv6MaxIas];
  size_t ia_count = 0;
  size_t addresses = 0;          // IA Address options in IA_NA and IA_TA.
  size_t foreign_addresses = 0;  // Those that are not the guest's.
  uint8_t fqdn_flags = 0;        // The client's option 39, if it sent one.
};

// Checks that options [0, len) of `o` are well framed: each header and body
// within `len`. The bodies are the caller's business.
bool WellFramed(const uint8_t* o, size_t len) {
  size_t i = 0;
  while (i < len) {  // Every step advances i by at least four.
    if (len - i < kOptionHeaderLen) return false;
    const size_t olen = GetBe16(o + i + 2);
    if (olen > len - i - kOptionHeaderLen) return false;
    i += kOptionHeaderLen + olen;
  }
  return true;
}

// Parses the body of an IA_NA/IA_TA/IA_PD option into `ia`. Null on
// success, else why it is malformed.
const char* ParseIa(uint16_t code, const uint8_t* v, size_t len, const in6_addr& guest, Ia* ia,
                    Request* req) {
  const size_t fixed = code == kIaTa ? kIaTaFixedLen : kIaNaFixedLen;
  if (len < fixed) return "IA shorter than its fixed part";
  ia->code = code;
  std::memcpy(ia->iaid, v, sizeof(ia->iaid));
  const uint8_t* o = v + fixed;
  const size_t olen = len - fixed;
  if (!WellFramed(o, olen)) return "IA sub-option past the IA";
  for (size_t i = 0; i < olen;) {  // Framing checked above.
    const uint16_t sub = GetBe16(o + i);
    const size_t slen = GetBe16(o + i + 2);
    const uint8_t* s = o + i + kOptionHeaderLen;
    i += kOptionHeaderLen + slen;
    if (sub != kIaAddr || code == kIaPd) continue;  // IA Prefix and status codes: not ours to read.
    if (slen < kIaAddrFixedLen) return "IA Address shorter than 24 bytes";
    if (!WellFramed(s + kIaAddrFixedLen, slen - kIaAddrFixedLen)) {
      return "IA Address sub-option past the IA Address";
    }
    in6_addr addr;
    std::memcpy(&addr, s, sizeof(addr));
    ++req->addresses;
    if (IN6_ARE_ADDR_EQUAL(&addr, &guest)) {
      ia->has_ours = true;
    } else {
      ++req->foreign_addresses;
      if (ia->foreign_count < kMaxIaAddrs) ia->foreign[ia->foreign_count++] = addr;
    }
  }
  return nullptr;
}

// Walks the options of a message (after its header). Null on success, else
// why the message is malformed.
const char* ParseOptions(const uint8_t* o, size_t len, const in6_addr& guest, Request* out) {
  if (!WellFramed(o, len)) return "option past the end";
  for (size_t i = 0; i < len;) {  // Framing checked above.
    const uint16_t code = GetBe16(o + i);
    const size_t olen = GetBe16(o + i + 2);
    const uint8_t* v = o + i + kOptionHeaderLen;
    i += kOptionHeaderLen + olen;
    switch (code) {
      case kClientId:
        if (out->client_id != nullptr) return "repeated Client ID";
        if (olen == 0 || olen > kMaxDuidOptionLen) return "Client ID of bad length";
        out->client_id = v;
        out->client_id_len = olen;
        break;
      case kServerId:
        if (out->server_id != nullptr) return "repeated Server ID";
        if (olen == 0 || olen > kMaxDuidOptionLen) return "Server ID of bad length";
        out->server_id = v;
        out->server_id_len = olen;
        break;
      case kRapidCommit:
        if (olen != 0) return "Rapid Commit with a body";
        out->rapid_commit = true;
        break;
      case kIaNa:
      case kIaTa:
      case kIaPd: {
        if (out->ia_count == kDhcpv6MaxIas) return "too many IA options";
        Ia* ia = &out->ias[out->ia_count++];
        if (const char* bad = ParseIa(code, v, olen, guest, ia, out)) return bad;
        break;
      }
      case kClientFqdn:
        if (olen >= 1) out->fqdn_flags = v[0];
        break;
      default:
        break;  // Elapsed Time, ORO, vendor options...: nothing we need.
    }
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<Dhcpv6Server> Dhcpv6Server::Create(const Dhcpv6Config& config) {
  if (!IN6_IS_ADDR_LINKLOCAL(&config.gateway_ll)) {
    return absl::InvalidArgumentError("DHCPv6: gateway_ll is not link-local");
  }
  if (IN6_IS_ADDR_UNSPECIFIED(&config.guest_addr) || IN6_IS_ADDR_MULTICAST(&config.guest_addr)) {
    return absl::InvalidArgumentError("DHCPv6: guest address unspecified or multicast");
  }
  if (config.preferred_lifetime > config.valid_lifetime) {
    return absl::InvalidArgumentError("DHCPv6: preferred lifetime above the valid lifetime");
  }
  if (config.preference < -1 || config.preference > 255) {
    return absl::InvalidArgumentError("DHCPv6: preference outside -1..255");
  }
  Dhcpv6Server s;
  s.gateway_mac_ = config.gateway_mac;
  s.gateway_ll_ = config.gateway_ll;
  s.guest_addr_ = config.guest_addr;
  s.preferred_lifetime_ = config.preferred_lifetime;
  s.valid_lifetime_ = config.valid_lifetime;
  if (config.preferred_lifetime == kInfinity) {
    s.t1_ = s.t2_ = kInfinity;
  } else {  // RFC 8415 21.4 recommends 0.5 and 0.8 of the shortest preferred lifetime.
    s.t1_ = config.preferred_lifetime / 2;
    s.t2_ = static_cast<uint32_t>(uint64_t{config.preferred_lifetime} * 4 / 5);
  }
  s.preference_ = config.preference;
  s.rapid_commit_ = config.rapid_commit;
  const uint8_t duid_head[4] = {0, 3, 0, 1};  // DUID-LL, Ethernet.
  std::memcpy(s.duid_, duid_head, sizeof(duid_head));
  std::memcpy(s.duid_ + 4, config.gateway_mac.bytes, 6);

  size_t fqdn_option_len = 0;
  if (!config.fqdn.empty()) {
    std::vector<uint8_t> wire;
    if (!IsHostName(config.fqdn) || !AppendDnsName(config.fqdn, &wire) ||
        wire.size() > sizeof(s.fqdn_wire_)) {
      return absl::InvalidArgumentError("DHCPv6: FQDN is not a valid host name");
    }
    std::memcpy(s.fqdn_wire_, wire.data(), wire.size());
    s.fqdn_wire_len_ = wire.size();
    fqdn_option_len = kOptionHeaderLen + 1 + wire.size();
  }
  const size_t budget = std::min(sizeof(s.config_options_),
                                 kMaxReplyMessage - kWorstReplyWithoutConfig - fqdn_option_len);
  OptionWriter w(s.config_options_, budget);
  if (!config.dns.empty()) {
    if (config.dns.size() * 16 > budget)
      return absl::InvalidArgumentError("DHCPv6: too many DNS servers");
    w.Add(kDnsServers, config.dns.data(), 16 * config.dns.size());
  }
  if (!config.search_domains.empty()) {
    std::vector<uint8_t> wire;
    for (const std::string& d : config.search_domains) {
      if (!AppendDnsName(d, &wire)) {
        return absl::InvalidArgumentError("DHCPv6: search domain is not a DNS name");
      }
    }
    if (wire.size() > budget) return absl::InvalidArgumentError("DHCPv6: search list too long");
    w.Add(kDomainList, wire.data(), wire.size());
  }
  if (!w.ok()) return absl::InvalidArgumentError("DHCPv6: DNS options too long for one reply");
  s.config_options_len_ = w.len();
  return s;
}

absl::StatusOr<size_t> Dhcpv6Server::Reply(absl::Span<const iovec> frame, const ParsedFrame& parsed,
                                           absl::Span<uint8_t> out, bool partial_checksum) const {
  if (out.size() < kDhcpv6MaxReplyLen) {
    return absl::InvalidArgumentError("DHCPv6 reply buffer too short");
  }
  if (parsed.l3 != L3Kind::kIpv6 || parsed.l4 != L4Kind::kUdp ||
      parsed.dst_port != kDhcpv6ServerPort) {
    return 0;
  }
  const size_t len = parsed.payload_len;
  if (len < kHeaderLen) return DropMessage("shorter than a DHCPv6 header");
  if (len > kDhcpv6MaxRequest) return DropMessage("too long");
  if (IN6_IS_ADDR_UNSPECIFIED(&parsed.ip.src6) || IN6_IS_ADDR_MULTICAST(&parsed.ip.src6)) {
    return DropMessage("source address unspecified or multicast");
  }
  // One copy of the datagram (UDP header and message, as long as the UDP
  // length says), read once: what is checksummed is what is parsed.
  uint8_t udp[kUdpHeaderLen + kDhcpv6MaxRequest];
  const size_t udp_len = kUdpHeaderLen + len;
  if (!FrameReader(frame).Read(parsed.l4_offset, udp, udp_len)) {
    return DropMessage("message past the frame");  // ParseFrame's bounds make this unreachable.
  }
  if (!partial_checksum &&
      L4ChecksumV6(parsed.ip.src6, parsed.ip.dst6, IPPROTO_UDP, udp, udp_len) != 0) {
    return DropMessage("bad UDP checksum");
  }
  const uint8_t* msg = udp + kUdpHeaderLen;
  Request req;
  req.type = msg[0];
  switch (req.type) {
    case kSolicit:
    case kRequest:
    case kConfirm:
    case kRenew:
    case kRebind:
    case kRelease:
    case kDecline:
    case kInformationRequest:
      break;
    default:
      return 0;  // Server-to-client, relay and unknown types: not ours to answer.
  }
  if (const char* bad = ParseOptions(msg + kHeaderLen, len - kHeaderLen, guest_addr_, &req)) {
    return DropMessage(bad);
  }

  // RFC 8415 16: which identifiers each type must, may or must not carry.
  const bool server_id_ours = req.server_id != nullptr && req.server_id_len == sizeof(duid_) &&
                              std::memcmp(req.server_id, duid_, sizeof(duid_)) == 0;
  switch (req.type) {
    case kSolicit:
    case kConfirm:
    case kRebind:
      if (req.server_id != nullptr) return DropMessage("Server ID where none belongs");
      break;
    case kRequest:
    case kRenew:
    case kRelease:
    case kDecline:
      if (req.server_id == nullptr) return DropMessage("no Server ID");
      if (!server_id_ours) return 0;  // For another server.
      break;
    case kInformationRequest:
      if (req.server_id != nullptr && !server_id_ours) return 0;
      if (req.ia_count > 0) return DropMessage("IA option in Information-request");
      break;
  }
  if (req.client_id == nullptr && req.type != kInformationRequest) {
    return DropMessage("no Client ID");
  }
  if (req.type == kConfirm && req.addresses == 0) return 0;  // RFC 8415 18.3.3: no reply.

  const bool rapid = req.type == kSolicit && req.rapid_commit && rapid_commit_;
  const uint8_t type = req.type == kSolicit && !rapid ? kAdvertise : kReply;
  const bool assigns =
      req.type == kSolicit || req.type == kRequest || req.type == kRenew || req.type == kRebind;
  const bool returns_foreign = req.type == kRenew || req.type == kRebind;

  FrameSpec spec;
  spec.ipv6 = true;
  spec.src_mac = gateway_mac_;
  spec.dst_mac = parsed.src_mac;
  spec.src6 = gateway_ll_;
  spec.dst6 = parsed.ip.src6;
  spec.protocol = IPPROTO_UDP;
  spec.src_port = kDhcpv6ServerPort;
  spec.dst_port = kDhcpv6ClientPort;
  const size_t hlen = FrameHeadersLen(spec);

  OptionWriter w(out.data() + hlen, kDhcpv6MaxReplyLen - hlen);
  const uint8_t header[kHeaderLen] = {type, msg[1], msg[2], msg[3]};
  w.Raw(header, sizeof(header));
  w.Add(kServerId, duid_, sizeof(duid_));
  if (req.client_id != nullptr) w.Add(kClientId, req.client_id, req.client_id_len);
  if (type == kAdvertise && preference_ >= 0) {
    const uint8_t pref = static_cast<uint8_t>(preference_);
    w.Add(kPreference, &pref, 1);
  }
  if (rapid) w.Add(kRapidCommit, nullptr, 0);

  if (assigns) {
    // The IA_NA that holds the address keeps it; else the first gets it.
    size_t chosen = req.ia_count;
    for (size_t i = 0; i < req.ia_count && chosen == req.ia_count; ++i) {
      if (req.ias[i].code == kIaNa && req.ias[i].has_ours) chosen = i;
    }
    for (size_t i = 0; i < req.ia_count && chosen == req.ia_count; ++i) {
      if (req.ias[i].code == kIaNa) chosen = i;
    }
    for (size_t i = 0; i < req.ia_count; ++i) {
      const Ia& ia = req.ias[i];
      const size_t at = w.Begin(ia.code);
      w.Raw(ia.iaid, sizeof(ia.iaid));
      if (ia.code != kIaTa) {
        w.Be32(i == chosen ? t1_ : 0);
        w.Be32(i == chosen ? t2_ : 0);
      }
      if (i == chosen) {
        const size_t addr = w.Begin(kIaAddr);
        w.Raw(&guest_addr_, sizeof(guest_addr_));
        w.Be32(preferred_lifetime_);
        w.Be32(valid_lifetime_);
        w.End(addr);
      }
      if (returns_foreign) {
        for (size_t j = 0; j < ia.foreign_count; ++j) {
          const size_t addr = w.Begin(kIaAddr);
          w.Raw(&ia.foreign[j], sizeof(ia.foreign[j]));
          w.Be32(0);
          w.Be32(0);
          w.End(addr);
        }
      }
      if (i != chosen) w.Status(ia.code == kIaPd ? kNoPrefixAvail : kNoAddrsAvail);
      w.End(at);
    }
  }
  switch (req.type) {
    case kConfirm:
      w.Status(req.foreign_addresses == 0 ? kSuccess : kNotOnLink);
      break;
    case kRelease:
    case kDecline:
      w.Status(kSuccess);
      break;
    default:
      w.Raw(config_options_, config_options_len_);
      if (fqdn_wire_len_ > 0) {
        const size_t at = w.Begin(kClientFqdn);
        const uint8_t flags = kFqdnN | (req.fqdn_flags & kFqdnS ? kFqdnO : 0);
        w.Raw(&flags, 1);
        w.Raw(fqdn_wire_, fqdn_wire_len_);
        w.End(at);
      }
      break;
  }
  if (!w.ok()) return absl::InternalError("DHCPv6 reply longer than its buffer");
  return BuildFrame(spec, out, w.len());
}

}  // namespace vunet::net
