#include "net/gateway/dhcpv6.h"

#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/testing/test_frames.h"

namespace vunet::net {
namespace {

using testing::Append;
using testing::Build;
using testing::Bytes;
using testing::GetBe16;
using testing::Ip6;
using testing::Mac;
using testing::Split;

const MacAddr kGuestMac = Mac(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const MacAddr kGatewayMac = Mac(0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55);
constexpr char kGuestLl[] = "fe80::5054:ff:fe12:3456";
constexpr char kGuestAddr[] = "2001:db8::15";

// Our Server ID: DUID-LL (3), Ethernet (1), the gateway's MAC.
const std::vector<uint8_t> kServerDuid = Bytes({0, 3, 0, 1, 0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55});
// systemd-networkd's default DUID-EN: type 2, its enterprise number 43793,
// eight bytes hashed from the machine id.
const std::vector<uint8_t> kDuidEn =
    Bytes({0, 2, 0, 0, 0xab, 0x11, 0xd1, 0x2c, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f});
// dhclient -6's DUID-LLT: type 1, Ethernet, seconds since 2000, the MAC.
const std::vector<uint8_t> kDuidLlt =
    Bytes({0, 1, 0, 1, 0x2a, 0x3b, 0x4c, 0x5d, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56});
const std::vector<uint8_t> kIaid = Bytes({0x23, 0x45, 0x67, 0x89});
const std::vector<uint8_t> kXid = Bytes({0x5a, 0x6b, 0x7c});

Dhcpv6Config Config() {
  Dhcpv6Config c;
  c.gateway_mac = kGatewayMac;
  c.gateway_ll = Ip6("fe80::1");
  c.guest_addr = Ip6(kGuestAddr);
  c.dns = {Ip6("2001:db8::53"), Ip6("2001:4860:4860::8888")};
  c.search_domains = {"example.org", "corp.example.com."};
  return c;
}

Dhcpv6Server Server(const Dhcpv6Config& config = Config()) {
  return Dhcpv6Server::Create(config).value();
}

std::vector<uint8_t> Be32(uint32_t v) {
  return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16),
          static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)};
}

std::vector<uint8_t> Addr(const char* a) {
  const in6_addr x = Ip6(a);
  return std::vector<uint8_t>(x.s6_addr, x.s6_addr + 16);
}

std::vector<uint8_t> Opt(uint16_t code, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> o = Bytes({code >> 8, code & 0xff, static_cast<int>(body.size() >> 8),
                                  static_cast<int>(body.size() & 0xff)});
  Append(o, body);
  return o;
}

std::vector<uint8_t> IaAddr(const char* a, uint32_t preferred = 0, uint32_t valid = 0) {
  std::vector<uint8_t> b = Addr(a);
  Append(b, Be32(preferred));
  Append(b, Be32(valid));
  return Opt(5, b);
}

// IA_NA (or IA_PD) with T1 = T2 = 0, as clients send them.
std::vector<uint8_t> Ia(uint16_t code, const std::vector<uint8_t>& iaid,
                        const std::vector<uint8_t>& options = {}) {
  std::vector<uint8_t> b = iaid;
  if (code != 4) Append(b, std::vector<uint8_t>(8, 0));
  Append(b, options);
  return Opt(code, b);
}

std::vector<uint8_t> Message(uint8_t type, const std::vector<uint8_t>& options) {
  std::vector<uint8_t> m = {type};
  Append(m, kXid);
  Append(m, options);
  return m;
}

// A UDP datagram from the guest's link-local address, port 546, to
// All_DHCP_Relay_Agents_and_Servers port 547, hop limit 1 as Linux sends it.
std::vector<uint8_t> Frame(const std::vector<uint8_t>& message, const char* src = kGuestLl,
                           uint16_t dst_port = 547) {
  FrameSpec s;
  s.ipv6 = true;
  s.src_mac = kGuestMac;
  s.dst_mac = Mac(0x33, 0x33, 0, 1, 0, 2);
  s.src6 = Ip6(src);
  s.dst6 = Ip6("ff02::1:2");
  s.ttl = 1;
  s.protocol = IPPROTO_UDP;
  s.src_port = 546;
  s.dst_port = dst_port;
  return Build(s, message);
}

// systemd-networkd's Solicit, option by option: Client ID (DUID-EN), IA_NA
// (IAID from the interface, T1 = T2 = 0, no address hint), FQDN (39) with
// its hostname, ORO asking for DNS (23), domain list (24), NTP (56) and
// SOL_MAX_RT (82), Elapsed Time 0, and Rapid Commit.
std::vector<uint8_t> NetworkdSolicitMessage(bool rapid_commit) {
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  Append(o, Ia(3, kIaid));
  Append(o, Opt(39, Bytes({0x01, 2, 'v', 'm', 0})));
  Append(o, Opt(6, Bytes({0, 23, 0, 24, 0, 56, 0, 82})));
  Append(o, Opt(8, Bytes({0, 0})));
  if (rapid_commit) Append(o, Opt(14, {}));
  return Message(1, o);
}

// The Request that follows an Advertise: the same, plus the Server ID, the
// address hint in the IA_NA, elapsed time grown, no Rapid Commit.
std::vector<uint8_t> NetworkdRequestMessage(const std::vector<uint8_t>& server_id = kServerDuid,
                                            const char* addr = kGuestAddr) {
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  Append(o, Opt(2, server_id));
  Append(o, Ia(3, kIaid, IaAddr(addr)));
  Append(o, Opt(39, Bytes({0x01, 2, 'v', 'm', 0})));
  Append(o, Opt(6, Bytes({0, 23, 0, 24, 0, 56, 0, 82})));
  Append(o, Opt(8, Bytes({0, 100})));
  return Message(3, o);
}

// dhclient -6's Solicit: Client ID (DUID-LLT), IA_NA with T1/T2 hints of
// 3600/5400, ORO for 23 and 24, Elapsed Time.
std::vector<uint8_t> DhclientSolicitMessage() {
  std::vector<uint8_t> o = Opt(1, kDuidLlt);
  std::vector<uint8_t> ia = kIaid;
  Append(ia, Be32(3600));
  Append(ia, Be32(5400));
  Append(o, Opt(3, ia));
  Append(o, Opt(6, Bytes({0, 23, 0, 24})));
  Append(o, Opt(8, Bytes({0, 0})));
  return Message(1, o);
}

using Options = std::vector<std::pair<uint16_t, std::vector<uint8_t>>>;

Options ParseOptions(const std::vector<uint8_t>& b, size_t from) {
  Options out;
  size_t i = from;
  while (i < b.size()) {
    EXPECT_GE(b.size() - i, 4u) << "option header cut";
    if (b.size() - i < 4) break;
    const uint16_t code = GetBe16(b, i);
    const size_t len = GetBe16(b, i + 2);
    EXPECT_LE(len, b.size() - i - 4) << "option " << code << " past its container";
    if (len > b.size() - i - 4) break;
    out.emplace_back(code, std::vector<uint8_t>(b.begin() + static_cast<ptrdiff_t>(i + 4),
                                                b.begin() + static_cast<ptrdiff_t>(i + 4 + len)));
    i += 4 + len;
  }
  return out;
}

std::vector<uint16_t> Codes(const Options& o) {
  std::vector<uint16_t> c;
  for (const auto& [code, body] : o) c.push_back(code);
  return c;
}

std::vector<uint8_t> Get(const Options& o, uint16_t code) {
  for (const auto& [c, body] : o) {
    if (c == code) return body;
  }
  ADD_FAILURE() << "no option " << code;
  return {};
}

uint32_t GetBe32(const std::vector<uint8_t>& b, size_t at) {
  return uint32_t{GetBe16(b, at)} << 16 | GetBe16(b, at + 2);
}

struct Reply {
  size_t len = 0;
  ParsedFrame frame;
  std::vector<uint8_t> message;
  Options options;

  uint8_t type() const { return message.empty() ? 0 : message[0]; }
};

// The server's answer to `request`, cut into iovecs of `piece` bytes, with
// the frame's addressing and checksum checked.
Reply Answer(const Dhcpv6Server& server, std::vector<uint8_t> request, size_t piece = 7,
             bool partial = false) {
  Reply r;
  std::vector<iovec> iov = Split(request, piece);
  ParsedFrame parsed;
  if (!ParseFrame(iov, &parsed).ok()) return r;
  std::vector<uint8_t> out(kDhcpv6MaxReplyLen, 0xee);
  absl::StatusOr<size_t> n = server.Reply(iov, parsed, absl::MakeSpan(out), partial);
  EXPECT_TRUE(n.ok()) << n.status();
  if (!n.ok() || *n == 0) return r;
  EXPECT_LE(*n, kDhcpv6MaxReplyLen);
  r.len = *n;
  out.resize(*n);
  EXPECT_TRUE(testing::Parse(out, &r.frame).ok());
  EXPECT_EQ(r.frame.l3, L3Kind::kIpv6);
  EXPECT_EQ(r.frame.l4, L4Kind::kUdp);
  EXPECT_EQ(r.frame.src_port, 547);
  EXPECT_EQ(r.frame.dst_port, 546);
  EXPECT_EQ(r.frame.src_mac, kGatewayMac);
  EXPECT_EQ(r.frame.dst_mac, parsed.src_mac);
  const in6_addr gateway_ll = Config().gateway_ll;
  EXPECT_EQ(std::memcmp(&r.frame.ip.src6, &gateway_ll, 16), 0);
  EXPECT_EQ(std::memcmp(&r.frame.ip.dst6, &parsed.ip.src6, 16), 0);
  const iovec whole = {out.data(), out.size()};
  EXPECT_EQ(L4ChecksumV6(r.frame.ip.src6, r.frame.ip.dst6, IPPROTO_UDP,
                         absl::MakeConstSpan(&whole, 1), r.frame.l4_offset, r.frame.l4_len),
            0);
  r.message.assign(
      out.begin() + static_cast<ptrdiff_t>(r.frame.payload_offset),
      out.begin() + static_cast<ptrdiff_t>(r.frame.payload_offset + r.frame.payload_len));
  EXPECT_GE(r.message.size(), 4u);
  if (r.message.size() >= 4) {
    EXPECT_EQ(std::vector<uint8_t>(r.message.begin() + 1, r.message.begin() + 4), kXid);
  }
  r.options = ParseOptions(r.message, 4);
  return r;
}

size_t AnswerLen(const Dhcpv6Server& server, const std::vector<uint8_t>& message) {
  return Answer(server, Frame(message)).len;
}

const std::vector<uint8_t> kDnsOption = [] {
  std::vector<uint8_t> d = Addr("2001:db8::53");
  Append(d, Addr("2001:4860:4860::8888"));
  return d;
}();
const std::vector<uint8_t> kDomainOption =
    Bytes({7,   'e', 'x', 'a', 'm', 'p', 'l', 'e', 3,   'o', 'r', 'g', 0,   4,   'c', 'o',
           'r', 'p', 7,   'e', 'x', 'a', 'm', 'p', 'l', 'e', 3,   'c', 'o', 'm', 0});

struct IaView {
  std::vector<uint8_t> iaid;
  uint32_t t1 = 0;
  uint32_t t2 = 0;
  Options options;
};

IaView ParseIaNa(const std::vector<uint8_t>& body) {
  IaView v;
  EXPECT_GE(body.size(), 12u);
  if (body.size() < 12) return v;
  v.iaid.assign(body.begin(), body.begin() + 4);
  v.t1 = GetBe32(body, 4);
  v.t2 = GetBe32(body, 8);
  v.options = ParseOptions(body, 12);
  return v;
}

// An IA_NA holding the guest's address with `preferred`/`valid` lifetimes
// and T1/T2 as given, nothing else.
void ExpectAssigned(const std::vector<uint8_t>& ia_body, uint32_t t1, uint32_t t2,
                    uint32_t preferred, uint32_t valid) {
  const IaView ia = ParseIaNa(ia_body);
  EXPECT_EQ(ia.iaid, kIaid);
  EXPECT_EQ(ia.t1, t1);
  EXPECT_EQ(ia.t2, t2);
  ASSERT_EQ(Codes(ia.options), std::vector<uint16_t>({5}));
  const std::vector<uint8_t>& a = ia.options[0].second;
  ASSERT_EQ(a.size(), 24u);
  EXPECT_EQ(std::vector<uint8_t>(a.begin(), a.begin() + 16), Addr(kGuestAddr));
  EXPECT_EQ(GetBe32(a, 16), preferred);
  EXPECT_EQ(GetBe32(a, 20), valid);
}

TEST(Dhcpv6Test, NetworkdSolicitGetsAnAdvertise) {
  const Reply r = Answer(Server(), Frame(NetworkdSolicitMessage(false)));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 2);  // Advertise.
  ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 7, 3, 23, 24}));
  EXPECT_EQ(Get(r.options, 2), kServerDuid);
  EXPECT_EQ(Get(r.options, 1), kDuidEn);
  EXPECT_EQ(Get(r.options, 7), Bytes({255}));
  ExpectAssigned(Get(r.options, 3), 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);
  EXPECT_EQ(Get(r.options, 23), kDnsOption);
  EXPECT_EQ(Get(r.options, 24), kDomainOption);
  // The reply goes to the guest's link-local address and MAC.
  const in6_addr guest_ll = Ip6(kGuestLl);
  EXPECT_EQ(std::memcmp(&r.frame.ip.dst6, &guest_ll, 16), 0);
  EXPECT_EQ(r.frame.dst_mac, kGuestMac);
}

TEST(Dhcpv6Test, SolicitWithRapidCommitGetsACommittedReply) {
  const Reply r = Answer(Server(), Frame(NetworkdSolicitMessage(true)));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 7);  // Reply.
  ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 14, 3, 23, 24}));
  EXPECT_EQ(Get(r.options, 14), std::vector<uint8_t>());
  EXPECT_EQ(Get(r.options, 1), kDuidEn);
  ExpectAssigned(Get(r.options, 3), 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);
}

TEST(Dhcpv6Test, RapidCommitCanBeTurnedOffAndPreferenceLeftOut) {
  Dhcpv6Config c = Config();
  c.rapid_commit = false;
  c.preference = -1;
  const Reply r = Answer(Server(c), Frame(NetworkdSolicitMessage(true)));
  EXPECT_EQ(r.type(), 2);
  EXPECT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 3, 23, 24}));
}

TEST(Dhcpv6Test, NetworkdSolicitThenRequest) {
  const Dhcpv6Server server = Server();
  const Reply adv = Answer(server, Frame(NetworkdSolicitMessage(false)));
  ASSERT_EQ(adv.type(), 2);
  // The client requests from the server that advertised, with what it got.
  const Reply r = Answer(server, Frame(NetworkdRequestMessage(Get(adv.options, 2))));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 7);
  ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 3, 23, 24}));
  EXPECT_EQ(Get(r.options, 2), kServerDuid);
  EXPECT_EQ(Get(r.options, 1), kDuidEn);
  ExpectAssigned(Get(r.options, 3), 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);
  EXPECT_EQ(Get(r.options, 23), kDnsOption);
  EXPECT_EQ(Get(r.options, 24), kDomainOption);
}

TEST(Dhcpv6Test, RequestHintingAnotherAddressGetsTheGuests) {
  const Reply r = Answer(Server(), Frame(NetworkdRequestMessage(kServerDuid, "2001:db8::99")));
  ASSERT_EQ(r.type(), 7);
  ExpectAssigned(Get(r.options, 3), 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);
}

TEST(Dhcpv6Test, DhclientSolicitWithDuidLlt) {
  const Reply r = Answer(Server(), Frame(DhclientSolicitMessage()), 1);
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 2);
  EXPECT_EQ(Get(r.options, 1), kDuidLlt);
  ExpectAssigned(Get(r.options, 3), 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);
}

TEST(Dhcpv6Test, FiniteLifetimesSetT1AndT2) {
  Dhcpv6Config c = Config();
  c.preferred_lifetime = 3600;
  c.valid_lifetime = 7200;
  const Reply r = Answer(Server(c), Frame(NetworkdSolicitMessage(true)));
  ExpectAssigned(Get(r.options, 3), 1800, 2880, 3600, 7200);
}

TEST(Dhcpv6Test, RequestToAnotherServerOrWithoutServerIdIsNotAnswered) {
  const Dhcpv6Server server = Server();
  std::vector<uint8_t> other = kServerDuid;
  other.back() ^= 1;
  EXPECT_EQ(AnswerLen(server, NetworkdRequestMessage(other)), 0u);
  EXPECT_EQ(AnswerLen(server, NetworkdRequestMessage(Bytes({0, 3, 0, 1}))), 0u);
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  Append(o, Ia(3, kIaid));
  EXPECT_EQ(AnswerLen(server, Message(3, o)), 0u);
}

TEST(Dhcpv6Test, InformationRequestGetsDnsOnly) {
  const Dhcpv6Server server = Server();
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  Append(o, Opt(6, Bytes({0, 23, 0, 24, 0, 32})));
  Append(o, Opt(8, Bytes({0, 0})));
  Reply r = Answer(server, Frame(Message(11, o)));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 7);
  ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 23, 24}));
  EXPECT_EQ(Get(r.options, 2), kServerDuid);
  EXPECT_EQ(Get(r.options, 1), kDuidEn);
  EXPECT_EQ(Get(r.options, 23), kDnsOption);
  EXPECT_EQ(Get(r.options, 24), kDomainOption);

  // Without a Client ID (allowed), and with our Server ID (allowed).
  r = Answer(server, Frame(Message(11, Opt(2, kServerDuid))));
  EXPECT_EQ(Codes(r.options), std::vector<uint16_t>({2, 23, 24}));

  // Another server's, or carrying an IA: no answer.
  std::vector<uint8_t> other = kServerDuid;
  other[4] ^= 0x80;
  EXPECT_EQ(AnswerLen(server, Message(11, Opt(2, other))), 0u);
  Append(o, Ia(3, kIaid));
  EXPECT_EQ(AnswerLen(server, Message(11, o)), 0u);

  // Nothing configured: just the identifiers.
  Dhcpv6Config bare = Config();
  bare.dns.clear();
  bare.search_domains.clear();
  r = Answer(Server(bare), Frame(Message(11, Opt(1, kDuidEn))));
  EXPECT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1}));
}

std::vector<uint8_t> ConfirmMessage(const std::vector<uint8_t>& ia_options) {
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  Append(o, Ia(3, kIaid, ia_options));
  Append(o, Opt(8, Bytes({0, 0})));
  return Message(4, o);
}

uint16_t StatusOf(const Reply& r) {
  const std::vector<uint8_t> s = Get(r.options, 13);
  EXPECT_EQ(s.size(), 2u);
  return s.size() >= 2 ? GetBe16(s, 0) : 0xffff;
}

TEST(Dhcpv6Test, ConfirmSaysWhetherTheAddressIsOnLink) {
  const Dhcpv6Server server = Server();
  Reply r = Answer(server, Frame(ConfirmMessage(IaAddr(kGuestAddr, 3000, 4000))));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 7);
  ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 13}));
  EXPECT_EQ(Get(r.options, 1), kDuidEn);
  EXPECT_EQ(StatusOf(r), 0);  // Success.

  r = Answer(server, Frame(ConfirmMessage(IaAddr("2001:db8:1::15"))));
  ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 13}));
  EXPECT_EQ(StatusOf(r), 4);  // NotOnLink.

  // One foreign address among ours is enough for NotOnLink.
  std::vector<uint8_t> both = IaAddr(kGuestAddr);
  Append(both, IaAddr("fd00::1"));
  r = Answer(server, Frame(ConfirmMessage(both)));
  EXPECT_EQ(StatusOf(r), 4);

  // No address at all: no reply (RFC 8415 18.3.3). A Server ID: dropped.
  EXPECT_EQ(AnswerLen(server, ConfirmMessage({})), 0u);
  std::vector<uint8_t> with_server = ConfirmMessage(IaAddr(kGuestAddr));
  Append(with_server, Opt(2, kServerDuid));
  EXPECT_EQ(AnswerLen(server, with_server), 0u);
}

std::vector<uint8_t> RenewMessage(uint8_t type, const std::vector<uint8_t>& ia_options,
                                  bool server_id = true) {
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  if (server_id) Append(o, Opt(2, kServerDuid));
  Append(o, Ia(3, kIaid, ia_options));
  Append(o, Opt(6, Bytes({0, 23, 0, 24})));
  Append(o, Opt(8, Bytes({0, 0})));
  return Message(type, o);
}

TEST(Dhcpv6Test, RenewAndRebindExtendTheAddress) {
  const Dhcpv6Server server = Server();
  Reply r = Answer(server, Frame(RenewMessage(5, IaAddr(kGuestAddr, 100, 200))));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 7);
  ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 3, 23, 24}));
  ExpectAssigned(Get(r.options, 3), 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);

  r = Answer(server, Frame(RenewMessage(6, IaAddr(kGuestAddr), false)));
  ASSERT_EQ(r.type(), 7);
  ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 3, 23, 24}));
  ExpectAssigned(Get(r.options, 3), 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);

  // Renew for another server, or without a Server ID; Rebind with one.
  std::vector<uint8_t> other = RenewMessage(5, IaAddr(kGuestAddr));
  other[4 + 4 + kDuidEn.size() + 4 + 9] ^= 1;  // Last byte of the Server ID's MAC.
  EXPECT_EQ(AnswerLen(server, other), 0u);
  EXPECT_EQ(AnswerLen(server, RenewMessage(5, IaAddr(kGuestAddr), false)), 0u);
  EXPECT_EQ(AnswerLen(server, RenewMessage(6, IaAddr(kGuestAddr), true)), 0u);
}

TEST(Dhcpv6Test, RenewReturnsOtherAddressesWithZeroLifetimes) {
  std::vector<uint8_t> addrs = IaAddr("2001:db8::99", 100, 200);
  Append(addrs, IaAddr(kGuestAddr, 100, 200));
  const Reply r = Answer(Server(), Frame(RenewMessage(5, addrs)));
  ASSERT_EQ(r.type(), 7);
  const IaView ia = ParseIaNa(Get(r.options, 3));
  EXPECT_EQ(ia.iaid, kIaid);
  ASSERT_EQ(Codes(ia.options), std::vector<uint16_t>({5, 5}));
  std::vector<uint8_t> ours = Addr(kGuestAddr);
  Append(ours, Be32(0xffffffff));
  Append(ours, Be32(0xffffffff));
  EXPECT_EQ(ia.options[0].second, ours);
  std::vector<uint8_t> stale = Addr("2001:db8::99");
  Append(stale, Be32(0));
  Append(stale, Be32(0));
  EXPECT_EQ(ia.options[1].second, stale);
}

// --fqdn: option 39 (RFC 4704) in replies that configure, as passt sends it
// whatever the client asked: N (we update nothing), O when the client asked
// for S (networkd does), the name in wire format.
TEST(Dhcpv6Test, ClientFqdn) {
  Dhcpv6Config c = Config();
  c.fqdn = "vm1.example.org";
  const Dhcpv6Server server = Server(c);
  std::vector<uint8_t> want =
      Bytes({0x06, 3, 'v', 'm', '1', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'o', 'r', 'g', 0});
  Reply r = Answer(server, Frame(NetworkdSolicitMessage(false)));
  ASSERT_EQ(r.type(), 2);
  EXPECT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 7, 3, 23, 24, 39}));
  EXPECT_EQ(Get(r.options, 39), want);
  r = Answer(server, Frame(NetworkdRequestMessage()));
  ASSERT_EQ(r.type(), 7);
  EXPECT_EQ(Get(r.options, 39), want);
  // A client without option 39 (dhclient here): N alone.
  r = Answer(server, Frame(DhclientSolicitMessage()));
  ASSERT_EQ(r.type(), 2);
  want[0] = 0x04;
  EXPECT_EQ(Get(r.options, 39), want);
  // An empty option 39 from the client is no request for S.
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  Append(o, Opt(39, {}));
  r = Answer(server, Frame(Message(11, o)));
  ASSERT_EQ(r.type(), 7);
  EXPECT_EQ(Get(r.options, 39), want);
  // Release: only its status.
  r = Answer(server, Frame(RenewMessage(8, IaAddr(kGuestAddr))));
  EXPECT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 13}));

  // The longest FQDN (255 octets) with modest DNS options: the worst-case
  // reply still fits; with the largest DNS options, Create refuses.
  c.fqdn = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
           std::string(61, 'd');
  ASSERT_TRUE(Dhcpv6Server::Create(c).ok());
  r = Answer(Server(c), Frame(NetworkdSolicitMessage(false)));
  EXPECT_EQ(Get(r.options, 39).size(), 256u);
  c.dns.assign(12, Ip6("2001:db8::53"));
  c.search_domains.assign(6, "a-rather-long-name.example.org");
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
  c = Config();
  c.fqdn = "bad name";
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
}

TEST(Dhcpv6Test, ReleaseAndDeclineGetSuccess) {
  const Dhcpv6Server server = Server();
  for (uint8_t type : {8, 9}) {
    const Reply r = Answer(server, Frame(RenewMessage(type, IaAddr(kGuestAddr))));
    ASSERT_GT(r.len, 0u) << int{type};
    EXPECT_EQ(r.type(), 7);
    ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 13}));
    EXPECT_EQ(Get(r.options, 1), kDuidEn);
    EXPECT_EQ(StatusOf(r), 0);
    std::vector<uint8_t> other = kServerDuid;
    other[9] ^= 1;
    std::vector<uint8_t> o = Opt(1, kDuidEn);
    Append(o, Opt(2, other));
    Append(o, Ia(3, kIaid, IaAddr(kGuestAddr)));
    EXPECT_EQ(AnswerLen(server, Message(type, o)), 0u);
  }
}

TEST(Dhcpv6Test, SeveralIasGetOneAddressBetweenThem) {
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  Append(o, Ia(25, Bytes({0, 0, 0, 9})));       // IA_PD.
  Append(o, Ia(3, Bytes({0, 0, 0, 1})));        // IA_NA without a hint.
  Append(o, Ia(4, Bytes({0, 0, 0, 2})));        // IA_TA.
  Append(o, Ia(3, kIaid, IaAddr(kGuestAddr)));  // IA_NA holding the address.
  const Reply r = Answer(Server(), Frame(Message(1, o)));
  ASSERT_EQ(r.type(), 2);
  ASSERT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 7, 25, 3, 4, 3, 23, 24}));
  const std::vector<uint8_t> no_prefix =
      Bytes({0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 13, 0, 2, 0, 6});
  EXPECT_EQ(r.options[3].second, no_prefix);
  const std::vector<uint8_t> no_addr =
      Bytes({0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 13, 0, 2, 0, 2});
  EXPECT_EQ(r.options[4].second, no_addr);
  EXPECT_EQ(r.options[5].second, Bytes({0, 0, 0, 2, 0, 13, 0, 2, 0, 2}));
  ExpectAssigned(r.options[6].second, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff);
}

TEST(Dhcpv6Test, NotOurs) {
  const Dhcpv6Server server = Server();
  // UDP to another port; DHCPv4's port over IPv6.
  EXPECT_EQ(Answer(server, Frame(NetworkdSolicitMessage(true), kGuestLl, 548)).len, 0u);
  // DHCPv6 port over IPv4.
  FrameSpec s;
  s.src_mac = kGuestMac;
  s.dst_mac = kBroadcastMac;
  s.dst4 = testing::Ip4("255.255.255.255");
  s.src_port = 546;
  s.dst_port = 547;
  EXPECT_EQ(Answer(server, Build(s, NetworkdSolicitMessage(true))).len, 0u);
  // Server-to-client and relay types, and unknown ones.
  for (uint8_t type : {0, 2, 7, 10, 12, 13, 14, 200, 255}) {
    std::vector<uint8_t> m = NetworkdSolicitMessage(true);
    m[0] = type;
    EXPECT_EQ(AnswerLen(server, m), 0u) << int{type};
  }
  // From the unspecified address.
  EXPECT_EQ(Answer(server, Frame(NetworkdSolicitMessage(true), "::")).len, 0u);
}

TEST(Dhcpv6Test, UdpChecksumIsCheckedUnlessPartial) {
  const Dhcpv6Server server = Server();
  std::vector<uint8_t> f = Frame(NetworkdSolicitMessage(true));
  f[14 + 40 + 6] ^= 0x55;
  EXPECT_EQ(Answer(server, f).len, 0u);
  EXPECT_GT(Answer(server, f, 7, true).len, 0u);
}

TEST(Dhcpv6Test, BytesAfterTheUdpDatagramAreNotChecksummed) {
  // A UDP length shorter than the IP payload: the checksum covers the
  // datagram as long as its UDP length says, not the trailing bytes.
  const Dhcpv6Server server = Server();
  std::vector<uint8_t> f = Frame(NetworkdSolicitMessage(true));
  const uint16_t ip_payload = GetBe16(f, 14 + 4);
  Append(f, Bytes({0xde, 0xad, 0xbe, 0xef, 0x01}));
  testing::PutBe16(f, 14 + 4, static_cast<uint16_t>(ip_payload + 5));
  ParsedFrame parsed;
  ASSERT_TRUE(testing::Parse(f, &parsed).ok());
  ASSERT_EQ(parsed.l4, L4Kind::kUdp);
  ASSERT_EQ(parsed.l4_len, parsed.payload_len + kUdpHeaderLen + 5);
  for (size_t piece : {size_t{7}, size_t{0}}) {
    const Reply r = Answer(server, f, piece);
    ASSERT_GT(r.len, 0u) << piece;
    EXPECT_EQ(r.type(), 7) << piece;  // Reply (Rapid Commit).
  }
  // The datagram's own bytes are still checksummed.
  f[14 + 40 + kUdpHeaderLen + 1] ^= 0x55;
  EXPECT_EQ(Answer(server, f).len, 0u);
}

TEST(Dhcpv6Test, ShortBufferIsAnError) {
  const Dhcpv6Server server = Server();
  std::vector<uint8_t> f = Frame(NetworkdSolicitMessage(true));
  std::vector<iovec> iov = Split(f);
  ParsedFrame parsed;
  ASSERT_TRUE(ParseFrame(iov, &parsed).ok());
  std::vector<uint8_t> out(kDhcpv6MaxReplyLen - 1);
  EXPECT_EQ(server.Reply(iov, parsed, absl::MakeSpan(out)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Dhcpv6Test, CreateChecksTheConfiguration) {
  EXPECT_TRUE(Dhcpv6Server::Create(Config()).ok());
  Dhcpv6Config c = Config();
  c.gateway_ll = Ip6("2001:db8::1");
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
  c = Config();
  c.guest_addr = Ip6("::");
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
  c = Config();
  c.guest_addr = Ip6("ff02::1");
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
  c = Config();
  c.preferred_lifetime = 10;
  c.valid_lifetime = 5;
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
  c = Config();
  c.preference = 256;
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
  c.preference = -2;
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
  c = Config();
  c.search_domains = {"bad..name"};
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
  c = Config();
  c.dns.assign(30, Ip6("2001:db8::53"));
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
  c = Config();
  c.search_domains.assign(30, "a-rather-long-name.example.org");
  EXPECT_FALSE(Dhcpv6Server::Create(c).ok());
}

// The largest reply there can be: a Client ID of 130 bytes, kDhcpv6MaxIas
// IA_NAs each holding many foreign addresses, DNS options near their limit.
TEST(Dhcpv6Test, WorstCaseReplyFits) {
  Dhcpv6Config c = Config();
  c.dns.assign(12, Ip6("2001:db8::53"));
  c.search_domains.assign(6, "a-rather-long-name.example.org");
  const Dhcpv6Server server = Server(c);
  std::vector<uint8_t> addrs;
  for (int i = 0; i < 8; ++i) {
    const std::string a = "2001:db8::" + std::to_string(100 + i);
    Append(addrs, IaAddr(a.c_str()));
  }
  std::vector<uint8_t> o = Opt(1, std::vector<uint8_t>(130, 0x11));
  Append(o, Opt(2, kServerDuid));
  for (int i = 0; i < 4; ++i) Append(o, Ia(3, Bytes({0, 0, 0, i}), addrs));
  const Reply r = Answer(server, Frame(Message(5, o)));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(Codes(r.options), std::vector<uint16_t>({2, 1, 3, 3, 3, 3, 23, 24}));
  // The first gets the address and four stale ones; the rest the stale ones
  // and NoAddrsAvail.
  EXPECT_EQ(ParseIaNa(r.options[2].second).options.size(), 5u);
  EXPECT_EQ(ParseIaNa(r.options[3].second).options.size(), 5u);
}

// Every prefix of a Solicit: answered exactly when it ends between options
// and still holds the Client ID (its first option); nothing ever crashes.
TEST(Dhcpv6Test, TruncatedAtEveryLength) {
  const Dhcpv6Server server = Server();
  const std::vector<uint8_t> m = NetworkdSolicitMessage(true);
  std::set<size_t> boundaries;
  for (size_t i = 4;; i += 4 + GetBe16(m, i + 2)) {
    boundaries.insert(i);
    if (i >= m.size()) break;
  }
  ASSERT_TRUE(boundaries.count(m.size()));
  const size_t after_client_id = 4 + 4 + kDuidEn.size();
  for (size_t len = 0; len < m.size(); ++len) {
    const std::vector<uint8_t> cut(m.begin(), m.begin() + static_cast<ptrdiff_t>(len));
    const bool answered = boundaries.count(len) && len >= after_client_id;
    EXPECT_EQ(AnswerLen(server, cut) > 0, answered) << len;
  }
}

TEST(Dhcpv6Test, IaLengthsMustMatch) {
  const Dhcpv6Server server = Server();
  // Solicit whose last option is an IA_NA holding one IA Address: every
  // value of the IA_NA length. Only 40 (the truth) and 12 (no address; the
  // IA Address then stands alone at the top level, ignored) parse.
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  Append(o, Ia(3, kIaid, IaAddr(kGuestAddr)));
  std::vector<uint8_t> m = Message(1, o);
  const size_t ia_len_at = 4 + 4 + kDuidEn.size() + 2;
  ASSERT_EQ(GetBe16(m, ia_len_at), 40);
  for (int len = 0; len < 0x200; ++len) {
    std::vector<uint8_t> bad = m;
    testing::PutBe16(bad, ia_len_at, static_cast<uint16_t>(len));
    EXPECT_EQ(AnswerLen(server, bad) > 0, len == 12 || len == 40) << len;
  }
  testing::PutBe16(m, ia_len_at, 0xffff);
  EXPECT_EQ(AnswerLen(server, m), 0u);

  // Every value of the IA Address's length: only 24 parses.
  const size_t addr_len_at = ia_len_at + 2 + 12 + 2;
  for (int len = 0; len < 0x200; ++len) {
    std::vector<uint8_t> bad = Message(1, o);
    ASSERT_EQ(GetBe16(bad, addr_len_at), 24);
    testing::PutBe16(bad, addr_len_at, static_cast<uint16_t>(len));
    EXPECT_EQ(AnswerLen(server, bad) > 0, len == 24) << len;
  }
}

TEST(Dhcpv6Test, MalformedOptionsDropTheMessage) {
  const Dhcpv6Server server = Server();
  auto solicit = [](const std::vector<uint8_t>& extra) {
    std::vector<uint8_t> o = Opt(1, kDuidEn);
    Append(o, Ia(3, kIaid));
    Append(o, extra);
    return Message(1, o);
  };
  EXPECT_GT(AnswerLen(server, solicit({})), 0u);
  // An IA_NA and IA_PD shorter than 12 bytes, an IA_TA shorter than 4.
  EXPECT_EQ(AnswerLen(server, solicit(Opt(3, Bytes({0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})))), 0u);
  EXPECT_EQ(AnswerLen(server, solicit(Opt(25, Bytes({0, 0, 0, 1})))), 0u);
  EXPECT_EQ(AnswerLen(server, solicit(Opt(4, Bytes({0, 0, 1})))), 0u);
  // An IA Address of 23 bytes; one whose own sub-option runs past it.
  std::vector<uint8_t> short_addr = Addr(kGuestAddr);
  short_addr.resize(23);
  EXPECT_EQ(AnswerLen(server, solicit(Ia(3, kIaid, Opt(5, short_addr)))), 0u);
  std::vector<uint8_t> addr_body = Addr(kGuestAddr);
  Append(addr_body, std::vector<uint8_t>(8, 0));
  Append(addr_body, Bytes({0, 13, 0, 9, 0, 0}));  // Status code claiming 9 bytes, holding 2.
  EXPECT_EQ(AnswerLen(server, solicit(Ia(3, kIaid, Opt(5, addr_body)))), 0u);
  // An IA sub-option header cut short; an IA_PD's prefix option past the IA.
  EXPECT_EQ(AnswerLen(server, solicit(Ia(3, kIaid, Bytes({0, 5, 0})))), 0u);
  EXPECT_EQ(AnswerLen(server, solicit(Ia(25, kIaid, Bytes({0, 26, 0, 25, 1})))), 0u);
  // A top-level option past the message; a header cut short.
  EXPECT_EQ(AnswerLen(server, solicit(Bytes({0, 8, 0, 3, 0, 0}))), 0u);
  EXPECT_EQ(AnswerLen(server, solicit(Bytes({0, 8, 0}))), 0u);
  // Client IDs empty, over 130 bytes, repeated; Rapid Commit with a body.
  EXPECT_EQ(AnswerLen(server, solicit(Opt(1, kDuidEn))), 0u);
  EXPECT_EQ(AnswerLen(server, Message(1, Opt(1, {}))), 0u);
  EXPECT_EQ(AnswerLen(server, Message(1, Opt(1, std::vector<uint8_t>(131, 1)))), 0u);
  EXPECT_GT(AnswerLen(server, Message(1, Opt(1, std::vector<uint8_t>(130, 1)))), 0u);
  EXPECT_EQ(AnswerLen(server, solicit(Opt(14, Bytes({1})))), 0u);
  // No Client ID; a Server ID in a Solicit; a repeated Server ID.
  EXPECT_EQ(AnswerLen(server, Message(1, Ia(3, kIaid))), 0u);
  EXPECT_EQ(AnswerLen(server, solicit(Opt(2, kServerDuid))), 0u);
  std::vector<uint8_t> twice = NetworkdRequestMessage();
  Append(twice, Opt(2, kServerDuid));
  EXPECT_EQ(AnswerLen(server, twice), 0u);
  // kDhcpv6MaxIas IAs are answered, one more is refused.
  std::vector<uint8_t> ias;
  for (int i = 0; i < 3; ++i) Append(ias, Ia(3, Bytes({0, 0, 1, i})));
  EXPECT_GT(AnswerLen(server, solicit(ias)), 0u);
  Append(ias, Ia(4, Bytes({0, 0, 2, 0})));
  EXPECT_EQ(AnswerLen(server, solicit(ias)), 0u);
  // Shorter than the header.
  EXPECT_EQ(AnswerLen(server, Bytes({1, 2, 3})), 0u);
}

TEST(Dhcpv6Test, ManyOptionsAreWalkedWithinTheLimit) {
  const Dhcpv6Server server = Server();
  std::vector<uint8_t> o = Opt(1, kDuidEn);
  Append(o, Ia(3, kIaid));
  const size_t base = 4 + o.size();
  // Empty unknown options up to exactly kDhcpv6MaxRequest bytes: answered.
  std::vector<uint8_t> m = o;
  while (base + (m.size() - o.size()) + 8 <= kDhcpv6MaxRequest) Append(m, Opt(0xff00, {}));
  Append(m,
         Opt(0xff01, std::vector<uint8_t>(kDhcpv6MaxRequest - base - (m.size() - o.size()) - 4)));
  m = Message(1, m);
  ASSERT_EQ(m.size(), kDhcpv6MaxRequest);
  EXPECT_GT(m.size() / 4, 360u);
  EXPECT_GT(AnswerLen(server, m), 0u);
  // One option more: dropped.
  Append(m, Opt(0xff00, {}));
  EXPECT_EQ(AnswerLen(server, m), 0u);
}

}  // namespace
}  // namespace vunet::net
