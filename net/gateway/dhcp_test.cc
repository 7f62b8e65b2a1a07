#include "net/gateway/dhcp.h"

#include <arpa/inet.h>

#include <cstdint>
#include <map>
#include <string>
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
using testing::Ip4;
using testing::Mac;
using testing::Split;

const MacAddr kGuestMac = Mac(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const MacAddr kGatewayMac = Mac(0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55);

DhcpConfig Config() {
  DhcpConfig c;
  c.gateway_mac = kGatewayMac;
  c.gateway_addr = Ip4("10.0.2.2");
  c.guest_addr = Ip4("10.0.2.15");
  c.prefix_len = 24;
  c.dns = {Ip4("10.0.2.3"), Ip4("192.0.2.53")};
  c.domain_name = "example.org";
  c.search_domains = {"example.org", "corp.example.com."};
  c.mtu = 65520;
  c.lease_seconds = 3600;
  return c;
}

// The fixed part and cookie of a BOOTREQUEST from the guest, then `options`.
std::vector<uint8_t> Message(uint32_t xid, uint16_t flags, const std::vector<uint8_t>& ciaddr,
                             const std::vector<uint8_t>& options) {
  std::vector<uint8_t> m = Bytes({1, 1, 6, 0});
  for (int shift : {24, 16, 8, 0}) m.push_back(static_cast<uint8_t>(xid >> shift));
  Append(m, Bytes({0, 0, flags >> 8, flags & 0xff}));  // secs, flags.
  Append(m, ciaddr);
  Append(m, std::vector<uint8_t>(12, 0));  // yiaddr, siaddr, giaddr.
  Append(m, std::vector<uint8_t>(kGuestMac.bytes, kGuestMac.bytes + 6));
  Append(m, std::vector<uint8_t>(10 + 64 + 128, 0));  // chaddr padding, sname, file.
  Append(m, Bytes({99, 130, 83, 99}));
  Append(m, options);
  return m;
}

// A UDP frame from the guest to port 67, as a client without an address
// sends it (0.0.0.0 to the broadcast address) unless told otherwise.
std::vector<uint8_t> Frame(const std::vector<uint8_t>& message, const char* src = "0.0.0.0",
                           const char* dst = "255.255.255.255", uint16_t dst_port = 67) {
  FrameSpec s;
  s.src_mac = kGuestMac;
  s.dst_mac = kBroadcastMac;
  s.src4 = Ip4(src);
  s.dst4 = Ip4(dst);
  s.protocol = IPPROTO_UDP;
  s.src_port = 68;
  s.dst_port = dst_port;
  return Build(s, message);
}

const std::vector<uint8_t> kUdhcpcCommon = [] {
  std::vector<uint8_t> o = Bytes({61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56});  // Client id.
  Append(o, Bytes({57, 2, 0x02, 0x40}));                                           // Max size 576.
  Append(o, Bytes({55, 7, 1, 3, 6, 12, 15, 28, 42}));
  Append(o, Bytes({60, 12, 'u', 'd', 'h', 'c', 'p', ' ', '1', '.', '3', '5', '.', '0'}));
  return o;
}();

// busybox udhcpc: a fixed-size packet, so the options end in zero padding.
std::vector<uint8_t> UdhcpcDiscover() {
  std::vector<uint8_t> o = Bytes({53, 1, 1});
  Append(o, kUdhcpcCommon);
  Append(o, Bytes({255}));
  Append(o, std::vector<uint8_t>(60, 0));
  return Frame(Message(0xdeadbeef, 0, Bytes({0, 0, 0, 0}), o));
}

std::vector<uint8_t> UdhcpcRequest(const std::vector<uint8_t>& requested = Bytes({10, 0, 2, 15}),
                                   const std::vector<uint8_t>& server = Bytes({10, 0, 2, 2})) {
  std::vector<uint8_t> o = Bytes({53, 1, 3});
  Append(o, kUdhcpcCommon);
  Append(o, Bytes({50, 4}));
  Append(o, requested);
  Append(o, Bytes({54, 4}));
  Append(o, server);
  Append(o, Bytes({255}));
  Append(o, std::vector<uint8_t>(40, 0));
  return Frame(Message(0xdeadbeef, 0, Bytes({0, 0, 0, 0}), o));
}

// systemd-networkd: a DUID-based client id, the broadcast flag here, no
// padding after END.
const std::vector<uint8_t> kNetworkdCommon = [] {
  std::vector<uint8_t> o = Bytes({61,   19,   255,  0x5a, 0x1b, 0x2c, 0x3d, 0,    2,    0,   0,
                                  0xab, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99});
  Append(o, Bytes({57, 2, 0x05, 0xdc}));
  Append(o, Bytes({55, 10, 1, 3, 6, 12, 15, 26, 28, 42, 119, 121}));
  Append(o, Bytes({12, 2, 'v', 'm'}));
  return o;
}();

std::vector<uint8_t> NetworkdDiscover() {
  std::vector<uint8_t> o = Bytes({53, 1, 1});
  Append(o, kNetworkdCommon);
  Append(o, Bytes({255}));
  return Frame(Message(0x01020304, 0x8000, Bytes({0, 0, 0, 0}), o));
}

std::vector<uint8_t> NetworkdRequest() {
  std::vector<uint8_t> o = Bytes({53, 1, 3});
  Append(o, kNetworkdCommon);
  Append(o, Bytes({50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2, 255}));
  return Frame(Message(0x01020304, 0x8000, Bytes({0, 0, 0, 0}), o));
}

struct Reply {
  size_t len = 0;
  ParsedFrame frame;
  std::vector<uint8_t> message;
  std::map<int, std::vector<uint8_t>> options;  // Instances of one code concatenated.
  std::vector<int> order;

  uint8_t type() const { return options.count(53) ? options.at(53)[0] : 0; }
  std::vector<uint8_t> Field(size_t at, size_t n) const {
    return std::vector<uint8_t>(message.begin() + static_cast<ptrdiff_t>(at),
                                message.begin() + static_cast<ptrdiff_t>(at + n));
  }
};

Reply Answer(const DhcpServer& server, std::vector<uint8_t> request, size_t piece = 7) {
  Reply r;
  std::vector<iovec> iov = Split(request, piece);
  ParsedFrame parsed;
  if (!ParseFrame(iov, &parsed).ok()) return r;
  std::vector<uint8_t> out(kDhcpMaxReplyLen, 0xee);
  absl::StatusOr<size_t> n = server.Reply(iov, parsed, absl::MakeSpan(out));
  EXPECT_TRUE(n.ok());
  if (!n.ok() || *n == 0) return r;
  r.len = *n;
  out.resize(*n);
  EXPECT_TRUE(testing::Parse(out, &r.frame).ok());
  r.message.assign(
      out.begin() + static_cast<ptrdiff_t>(r.frame.payload_offset),
      out.begin() + static_cast<ptrdiff_t>(r.frame.payload_offset + r.frame.payload_len));
  const iovec whole = {out.data(), out.size()};
  EXPECT_EQ(L4ChecksumV4(r.frame.ip.src4, r.frame.ip.dst4, IPPROTO_UDP,
                         absl::MakeConstSpan(&whole, 1), r.frame.l4_offset, r.frame.l4_len),
            0);
  for (size_t i = 240; i < r.message.size();) {
    const int code = r.message[i];
    if (code == 255) break;
    if (code == 0) {
      ++i;
      continue;
    }
    const size_t len = r.message[i + 1];
    Append(r.options[code], r.Field(i + 2, len));
    r.order.push_back(code);
    i += 2 + len;
  }
  return r;
}

DhcpServer Server(const DhcpConfig& config = Config()) {
  return DhcpServer::Create(config).value();
}

void ExpectConfigOptions(const Reply& r) {
  EXPECT_EQ(r.options.at(1), Bytes({255, 255, 255, 0}));
  EXPECT_EQ(r.options.at(3), Bytes({10, 0, 2, 2}));
  EXPECT_EQ(r.options.at(6), Bytes({10, 0, 2, 3, 192, 0, 2, 53}));
  EXPECT_EQ(r.options.at(15), Bytes({'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'o', 'r', 'g'}));
  EXPECT_EQ(r.options.at(119),
            Bytes({7,   'e', 'x', 'a', 'm', 'p', 'l', 'e', 3,   'o', 'r', 'g', 0,   4,   'c', 'o',
                   'r', 'p', 7,   'e', 'x', 'a', 'm', 'p', 'l', 'e', 3,   'c', 'o', 'm', 0}));
  EXPECT_EQ(r.options.at(26), Bytes({0xff, 0xf0}));
  EXPECT_EQ(r.options.at(54), Bytes({10, 0, 2, 2}));
}

TEST(DhcpTest, UdhcpcDiscoverGetsAnOffer) {
  Reply r = Answer(Server(), UdhcpcDiscover());
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 2);
  EXPECT_EQ(r.order.front(), 53);
  EXPECT_EQ(r.Field(0, 4), Bytes({2, 1, 6, 0}));
  EXPECT_EQ(r.Field(4, 4), Bytes({0xde, 0xad, 0xbe, 0xef}));            // xid.
  EXPECT_EQ(r.Field(12, 4), Bytes({0, 0, 0, 0}));                       // ciaddr.
  EXPECT_EQ(r.Field(16, 4), Bytes({10, 0, 2, 15}));                     // yiaddr.
  EXPECT_EQ(r.Field(28, 6), Bytes({0x52, 0x54, 0, 0x12, 0x34, 0x56}));  // chaddr.
  EXPECT_EQ(r.Field(236, 4), Bytes({99, 130, 83, 99}));
  EXPECT_GE(r.message.size(), 300u);
  ExpectConfigOptions(r);
  EXPECT_EQ(r.options.at(51), Bytes({0, 0, 0x0e, 0x10}));
  // No broadcast bit: unicast to the offered address at the client's MAC.
  EXPECT_EQ(r.frame.dst_mac, kGuestMac);
  EXPECT_EQ(r.frame.src_mac, kGatewayMac);
  EXPECT_EQ(r.frame.ip.dst4.s_addr, Ip4("10.0.2.15").s_addr);
  EXPECT_EQ(r.frame.ip.src4.s_addr, Ip4("10.0.2.2").s_addr);
  EXPECT_EQ(r.frame.src_port, 67);
  EXPECT_EQ(r.frame.dst_port, 68);
}

TEST(DhcpTest, UdhcpcRequestGetsAnAck) {
  Reply r = Answer(Server(), UdhcpcRequest());
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 5);
  EXPECT_EQ(r.Field(16, 4), Bytes({10, 0, 2, 15}));
  ExpectConfigOptions(r);
  EXPECT_EQ(r.options.count(51), 1u);
}

TEST(DhcpTest, NetworkdDiscoverAndRequestWithBroadcastFlag) {
  Reply offer = Answer(Server(), NetworkdDiscover(), 1);
  ASSERT_GT(offer.len, 0u);
  EXPECT_EQ(offer.type(), 2);
  EXPECT_EQ(offer.Field(4, 4), Bytes({1, 2, 3, 4}));
  EXPECT_EQ(offer.Field(10, 2), Bytes({0x80, 0}));
  EXPECT_TRUE(offer.frame.dst_mac.IsBroadcast());
  EXPECT_EQ(offer.frame.ip.dst4.s_addr, INADDR_BROADCAST);
  ExpectConfigOptions(offer);

  Reply ack = Answer(Server(), NetworkdRequest(), 3);
  ASSERT_GT(ack.len, 0u);
  EXPECT_EQ(ack.type(), 5);
  EXPECT_TRUE(ack.frame.dst_mac.IsBroadcast());
}

TEST(DhcpTest, RequestForAnotherAddressGetsANak) {
  Reply r = Answer(Server(), UdhcpcRequest(Bytes({10, 0, 2, 99})));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 6);
  EXPECT_EQ(r.Field(16, 4), Bytes({0, 0, 0, 0}));
  EXPECT_EQ(r.options.at(54), Bytes({10, 0, 2, 2}));
  EXPECT_EQ(r.options.count(51), 0u);
  EXPECT_EQ(r.options.count(3), 0u);
  EXPECT_TRUE(r.frame.dst_mac.IsBroadcast());
  EXPECT_EQ(r.frame.ip.dst4.s_addr, INADDR_BROADCAST);
}

TEST(DhcpTest, RequestToAnotherServerIsNotAnswered) {
  EXPECT_EQ(Answer(Server(), UdhcpcRequest(Bytes({10, 0, 2, 15}), Bytes({10, 0, 2, 4}))).len, 0u);
}

TEST(DhcpTest, RenewalIsAnsweredAtTheClientsAddress) {
  const std::vector<uint8_t> o = Bytes({53, 1, 3, 61, 7, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 255});
  Reply r =
      Answer(Server(), Frame(Message(7, 0, Bytes({10, 0, 2, 15}), o), "10.0.2.15", "10.0.2.2"));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 5);
  EXPECT_EQ(r.Field(12, 4), Bytes({10, 0, 2, 15}));  // ciaddr echoed.
  EXPECT_EQ(r.frame.ip.dst4.s_addr, Ip4("10.0.2.15").s_addr);
  EXPECT_EQ(r.frame.dst_mac, kGuestMac);
  // Renewing an address that is not the guest's: NAK.
  Reply nak = Answer(Server(), Frame(Message(7, 0, Bytes({10, 0, 2, 16}), o)));
  EXPECT_EQ(nak.type(), 6);
  // No requested address and no ciaddr: NAK.
  Reply none = Answer(Server(), Frame(Message(7, 0, Bytes({0, 0, 0, 0}), o)));
  EXPECT_EQ(none.type(), 6);
}

TEST(DhcpTest, InformGetsAnAckWithoutALease) {
  Reply r = Answer(Server(), Frame(Message(9, 0, Bytes({10, 0, 2, 15}), Bytes({53, 1, 8, 255})),
                                   "10.0.2.15", "10.0.2.2"));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.type(), 5);
  EXPECT_EQ(r.Field(16, 4), Bytes({0, 0, 0, 0}));
  EXPECT_EQ(r.options.count(51), 0u);
  EXPECT_EQ(r.options.at(3), Bytes({10, 0, 2, 2}));
}

TEST(DhcpTest, ReleaseDeclineAndOthersAreNotAnswered) {
  for (int type : {4, 7, 2, 5, 6, 200}) {
    EXPECT_EQ(
        Answer(Server(), Frame(Message(1, 0, Bytes({0, 0, 0, 0}), Bytes({53, 1, type, 255})))).len,
        0u)
        << type;
  }
}

TEST(DhcpTest, OptionParsingIsBounded) {
  const DhcpServer s = Server();
  auto answer = [&](const std::vector<uint8_t>& options) {
    return Answer(s, Frame(Message(1, 0, Bytes({0, 0, 0, 0}), options))).type();
  };
  EXPECT_EQ(answer(Bytes({53, 1, 1, 255})), 2);
  EXPECT_EQ(answer(Bytes({53, 1, 1})), 2);                      // No END.
  EXPECT_EQ(answer(Bytes({0, 0, 0, 53, 1, 1, 0, 0, 255})), 2);  // Pads.
  EXPECT_EQ(answer(Bytes({53, 1, 1, 12, 200, 'x'})), 0);        // Length past the end.
  EXPECT_EQ(answer(Bytes({53, 1, 1, 12})), 0);                  // No length byte.
  EXPECT_EQ(answer(Bytes({53, 255})), 0);
  EXPECT_EQ(answer(Bytes({53, 2, 1, 1, 255})), 0);      // Type of the wrong length.
  EXPECT_EQ(answer(Bytes({12, 0, 53, 1, 1, 255})), 2);  // Zero-length option.
  EXPECT_EQ(answer(Bytes({255, 53, 1, 1})), 0);         // END first: no type.
  EXPECT_EQ(answer(Bytes({})), 0);
  EXPECT_EQ(answer(Bytes({53, 1, 3, 50, 3, 10, 0, 2, 255})), 6);  // Bad length 50: ignored.
  std::vector<uint8_t> many = Bytes({53, 1, 1});
  for (int i = 0; i < 300; ++i) Append(many, Bytes({12, 3, 'a', 'b', 'c'}));
  EXPECT_EQ(answer(many), 0);  // Over kMaxRequestOptions.
  many.resize(kMaxRequestOptions);
  EXPECT_EQ(answer(many), 0);  // The last option cut short.
  many.resize(3);
  many.resize(kMaxRequestOptions, 0);
  EXPECT_EQ(answer(many), 2);  // Pads to the limit.
}

TEST(DhcpTest, MalformedMessagesAreNotAnswered) {
  const DhcpServer s = Server();
  std::vector<uint8_t> m = Message(1, 0, Bytes({0, 0, 0, 0}), Bytes({53, 1, 1, 255}));
  for (size_t len = 0; len < 240; len += 7) {  // Shorter than the fixed part and cookie.
    EXPECT_EQ(Answer(s, Frame(std::vector<uint8_t>(m.begin(), m.begin() + len))).len, 0u);
  }
  std::vector<uint8_t> bad = m;
  bad[236] = 98;  // Cookie.
  EXPECT_EQ(Answer(s, Frame(bad)).len, 0u);
  bad = m;
  bad[0] = 2;  // A BOOTREPLY.
  EXPECT_EQ(Answer(s, Frame(bad)).len, 0u);
  bad = m;
  bad[2] = 8;  // Hardware address length.
  EXPECT_EQ(Answer(s, Frame(bad)).len, 0u);
  EXPECT_EQ(Answer(s, Frame(m, "0.0.0.0", "255.255.255.255", 53)).len, 0u);  // Not port 67.
  // Every prefix of the frame: the parser refuses it before DHCP sees it.
  std::vector<uint8_t> f = UdhcpcDiscover();
  for (size_t len = 0; len < f.size(); ++len) {
    EXPECT_EQ(Answer(s, std::vector<uint8_t>(f.begin(), f.begin() + len)).len, 0u);
  }
}

TEST(DhcpTest, NonDhcpFramesAndShortBuffers) {
  const DhcpServer s = Server();
  ParsedFrame p;
  uint8_t out[kDhcpMaxReplyLen];
  EXPECT_EQ(*s.Reply({}, p, out), 0u);
  std::vector<uint8_t> f = UdhcpcDiscover();
  std::vector<iovec> iov = Split(f);
  ASSERT_TRUE(ParseFrame(iov, &p).ok());
  EXPECT_FALSE(s.Reply(iov, p, absl::MakeSpan(out, kDhcpMaxReplyLen - 1)).ok());
}

TEST(DhcpTest, LongSearchListIsSplitIntoInstances) {
  DhcpConfig c = Config();
  c.search_domains.clear();
  std::vector<uint8_t> want;
  for (int i = 0; i < 20; ++i) {
    const std::string d = "domain" + std::to_string(i) + ".internal.example.com";
    c.search_domains.push_back(d);
    size_t at = 0;
    while (at < d.size()) {
      size_t dot = d.find('.', at);
      if (dot == std::string::npos) dot = d.size();
      want.push_back(static_cast<uint8_t>(dot - at));
      want.insert(want.end(), d.begin() + static_cast<ptrdiff_t>(at),
                  d.begin() + static_cast<ptrdiff_t>(dot));
      at = dot + 1;
    }
    want.push_back(0);
  }
  ASSERT_GT(want.size(), 255u);
  Reply r = Answer(Server(c), UdhcpcDiscover());
  EXPECT_EQ(r.options.at(119), want);
  int instances = 0;
  for (int code : r.order) instances += code == 119;
  EXPECT_EQ(instances, static_cast<int>((want.size() + 254) / 255));
}

TEST(DhcpTest, OptionalOptionsAreLeftOut) {
  DhcpConfig c = Config();
  c.dns.clear();
  c.domain_name.clear();
  c.search_domains.clear();
  c.mtu = 0;
  c.prefix_len = 0;
  Reply r = Answer(Server(c), UdhcpcDiscover());
  EXPECT_EQ(r.options.at(1), Bytes({0, 0, 0, 0}));
  EXPECT_EQ(r.options.count(6) + r.options.count(15) + r.options.count(119) + r.options.count(26),
            0u);
}

TEST(DhcpTest, CreateRefusesBadConfigurations) {
  DhcpConfig c = Config();
  c.prefix_len = 33;
  EXPECT_FALSE(DhcpServer::Create(c).ok());
  c = Config();
  c.mtu = 67;
  EXPECT_FALSE(DhcpServer::Create(c).ok());
  c = Config();
  c.dns.assign(64, Ip4("10.0.2.3"));
  EXPECT_FALSE(DhcpServer::Create(c).ok());
  c = Config();
  c.search_domains = {"ok.example", "bad..example"};
  EXPECT_FALSE(DhcpServer::Create(c).ok());
  c.search_domains = {std::string(64, 'a') + ".example"};
  EXPECT_FALSE(DhcpServer::Create(c).ok());
  c = Config();
  c.domain_name = ".";
  EXPECT_FALSE(DhcpServer::Create(c).ok());
  c = Config();
  c.search_domains.assign(40, std::string(60, 'a') + ".example");  // Over the option budget.
  EXPECT_FALSE(DhcpServer::Create(c).ok());
}

// -H and --fqdn: option 12 as text, option 81 (RFC 4702) in every OFFER and
// ACK, as passt sends it: we update no DNS records (N), the name in wire
// format (E) unless the client asked for ASCII, O if the client asked for S.
TEST(DhcpTest, HostNameAndClientFqdn) {
  DhcpConfig c = Config();
  c.hostname = "vm1";
  c.fqdn = "vm1.example.org.";
  const DhcpServer server = Server(c);
  const std::vector<uint8_t> wire = {3,   'v', 'm', '1', 7,   'e', 'x', 'a', 'm',
                                     'p', 'l', 'e', 3,   'o', 'r', 'g', 0};
  Reply r = Answer(server, UdhcpcDiscover());
  ASSERT_EQ(r.type(), 2);
  EXPECT_EQ(r.options.at(12), Bytes({'v', 'm', '1'}));
  std::vector<uint8_t> want = Bytes({0x0c, 255, 255});  // N, E.
  Append(want, wire);
  EXPECT_EQ(r.options.at(81), want);
  ExpectConfigOptions(r);

  // A client that sent option 81 with S (please update) and E.
  std::vector<uint8_t> o = Bytes({53, 1, 3, 81, 6, 0x05, 0, 0, 2, 'v', 'm'});
  Append(o, Bytes({50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2, 255}));
  r = Answer(server, Frame(Message(7, 0, Bytes({0, 0, 0, 0}), o)));
  ASSERT_EQ(r.type(), 5);
  want = Bytes({0x0e, 255, 255});  // N, E, O.
  Append(want, wire);
  EXPECT_EQ(r.options.at(81), want);

  // The deprecated ASCII form (E clear) is answered in kind.
  o = Bytes({53, 1, 1, 81, 5, 0x00, 0, 0, 'v', 'm', 255});
  r = Answer(server, Frame(Message(8, 0, Bytes({0, 0, 0, 0}), o)));
  ASSERT_EQ(r.type(), 2);
  want = Bytes({0x08, 255, 255});  // N.
  Append(want, Bytes({'v', 'm', '1', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'o', 'r', 'g'}));
  EXPECT_EQ(r.options.at(81), want);

  // A NAK carries neither.
  r = Answer(server, UdhcpcRequest(Bytes({10, 0, 2, 99})));
  ASSERT_EQ(r.type(), 6);
  EXPECT_EQ(r.options.count(12) + r.options.count(81), 0u);
  // Neither configured: neither sent.
  r = Answer(Server(), UdhcpcDiscover());
  EXPECT_EQ(r.options.count(12) + r.options.count(81), 0u);
}

// The longest FQDN DNS allows (255 octets in wire format) does not fit one
// option with its flags: it is split as RFC 3396 allows, and the reply
// still fits its buffer.
TEST(DhcpTest, LongestFqdnIsSplitIntoInstances) {
  DhcpConfig c = Config();
  c.fqdn = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
           std::string(61, 'd');
  c.hostname = std::string(63, 'h');
  Reply r = Answer(Server(c), UdhcpcDiscover());
  ASSERT_EQ(r.type(), 2);
  ASSERT_EQ(r.options.at(81).size(), 3u + 255u);
  EXPECT_EQ(r.options.at(81)[3], 63);
  EXPECT_EQ(r.options.at(81).back(), 0);
  int instances = 0;
  for (int code : r.order) instances += code == 81;
  EXPECT_EQ(instances, 2);
  EXPECT_EQ(r.options.at(12), std::vector<uint8_t>(63, 'h'));
}

TEST(DhcpTest, CreateRefusesBadHostNames) {
  for (const std::string& bad : {std::string("a b"), std::string("-a"), std::string("a..b"),
                                 std::string(64, 'x'), std::string("a;b"), std::string(".")}) {
    DhcpConfig c = Config();
    c.hostname = bad;
    EXPECT_FALSE(DhcpServer::Create(c).ok()) << bad;
    c = Config();
    c.fqdn = bad;
    EXPECT_FALSE(DhcpServer::Create(c).ok()) << bad;
  }
  // Every option at its longest: more than one reply holds.
  DhcpConfig c = Config();
  c.search_domains.assign(12, std::string(60, 'a') + ".example");
  ASSERT_TRUE(DhcpServer::Create(c).ok());
  c.fqdn = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
           std::string(61, 'd');
  c.hostname = c.fqdn;
  EXPECT_FALSE(DhcpServer::Create(c).ok());
}

}  // namespace
}  // namespace vunet::net
