// Ethernet frames over iovecs: a parser that reads each header out of guest
// memory into a local copy and checks every length against the bytes that
// exist, and builders that write Ethernet/IPv4/IPv6/TCP/UDP headers in front
// of a payload already in place.
//
// A frame in guest memory may span several buffers and any header may
// straddle them, so nothing here keeps a pointer into the frame: FrameReader
// copies fixed-size headers out by offset (guest memory may change under us;
// a value is checked and used from the same local copy).
//
// Policy for what the parser refuses (each with absl::InvalidArgumentError and
// one rate-limited log line, never a crash):
//   - frames of 0 bytes or longer than kMaxFrameLen;
//   - 802.1Q/802.1ad tagged frames: our link is untagged and we do not offer
//     VLAN filtering (VIRTIO_NET_F_CTRL_VLAN), so a tag is a guest
//     misconfiguration and is refused rather than silently stripped;
//   - ARP other than Ethernet/IPv4; IPv4 with a version other than 4, a header
//     length below 20, a total length below the header or past the frame, a
//     bad header checksum, or any fragment (MF set or an offset): we translate
//     flows to sockets and never reassemble;
//   - IPv6 with a payload length past the frame, a fragment header, more than
//     kMaxIpv6ExtHeaders extension headers, or one running past the payload;
//   - TCP with a data offset below 5 or past the segment, or an option whose
//     length is below 2 or runs past the options (a known option with the
//     wrong length is ignored, not refused); UDP whose length is below 8 or
//     past the IP payload; ICMP shorter than 8 bytes, ICMPv6 shorter than 4.
// Bytes after the IP packet (Ethernet padding) are ignored. Unknown
// EtherTypes and IP protocols parse successfully with L3Kind::kNone /
// L4Kind::kOther: dropping those is the dispatcher's call. L4 checksums are
// not verified here (a guest with VIRTIO_NET_F_CSUM leaves them partial).

#ifndef VUNET_NET_FRAME_H_
#define VUNET_NET_FRAME_H_

#include <netinet/in.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vunet::net {

struct MacAddr {
  uint8_t bytes[6] = {};

  bool IsBroadcast() const;
  bool IsMulticast() const { return bytes[0] & 1; }
  friend bool operator==(const MacAddr& a, const MacAddr& b) {
    return std::memcmp(a.bytes, b.bytes, sizeof(a.bytes)) == 0;
  }
};
inline constexpr MacAddr kBroadcastMac = {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}};

inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeArp = 0x0806;
inline constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
inline constexpr uint16_t kEtherTypeVlan = 0x8100;
inline constexpr uint16_t kEtherTypeQinQ = 0x88a8;

inline constexpr size_t kEthHeaderLen = 14;
inline constexpr size_t kArpLen = 28;
inline constexpr size_t kIpv4MinHeaderLen = 20;
inline constexpr size_t kIpv4MaxHeaderLen = 60;
inline constexpr size_t kIpv6HeaderLen = 40;
inline constexpr size_t kTcpMinHeaderLen = 20;
inline constexpr size_t kTcpMaxHeaderLen = 60;
inline constexpr size_t kUdpHeaderLen = 8;
// The longest frame accepted: Ethernet header and the largest IPv6 packet
// without a jumbogram (a 64 KiB segment from a guest using TSO fits).
inline constexpr size_t kMaxFrameLen = kEthHeaderLen + kIpv6HeaderLen + 65535;
inline constexpr int kMaxIpv6ExtHeaders = 8;

inline constexpr uint8_t kTcpFin = 0x01;
inline constexpr uint8_t kTcpSyn = 0x02;
inline constexpr uint8_t kTcpRst = 0x04;
inline constexpr uint8_t kTcpPsh = 0x08;
inline constexpr uint8_t kTcpAck = 0x10;
inline constexpr uint8_t kTcpUrg = 0x20;

// Wire layouts, fields in network byte order. They are only ever copies:
// read out of a frame with FrameReader, or built locally and copied in.
struct EthHeader {
  uint8_t dst[6];
  uint8_t src[6];
  uint16_t ether_type;
};
static_assert(sizeof(EthHeader) == kEthHeaderLen);

struct ArpPacket {
  uint16_t htype;
  uint16_t ptype;
  uint8_t hlen;
  uint8_t plen;
  uint16_t op;
  uint8_t sha[6];
  uint8_t spa[4];
  uint8_t tha[6];
  uint8_t tpa[4];
};
static_assert(sizeof(ArpPacket) == kArpLen);

struct Ipv4Header {
  uint8_t version_ihl;
  uint8_t tos;
  uint16_t total_len;
  uint16_t id;
  uint16_t frag_off;
  uint8_t ttl;
  uint8_t protocol;
  uint16_t check;
  in_addr src;
  in_addr dst;
};
static_assert(sizeof(Ipv4Header) == kIpv4MinHeaderLen);

struct Ipv6Header {
  uint32_t version_class_flow;
  uint16_t payload_len;
  uint8_t next_header;
  uint8_t hop_limit;
  in6_addr src;
  in6_addr dst;
};
static_assert(sizeof(Ipv6Header) == kIpv6HeaderLen);

struct TcpHeader {
  uint16_t src_port;
  uint16_t dst_port;
  uint32_t seq;
  uint32_t ack;
  uint8_t data_off;  // Header length in 32-bit words, in the high nibble.
  uint8_t flags;
  uint16_t window;
  uint16_t check;
  uint16_t urgent;
};
static_assert(sizeof(TcpHeader) == kTcpMinHeaderLen);

struct UdpHeader {
  uint16_t src_port;
  uint16_t dst_port;
  uint16_t len;
  uint16_t check;
};
static_assert(sizeof(UdpHeader) == kUdpHeaderLen);

// Reads byte ranges of a frame given as iovecs, by offset from its start.
// Holds the span, not the bytes: valid while the iovecs are.
class FrameReader {
 public:
  explicit FrameReader(absl::Span<const iovec> iov);

  // Bytes in the frame (saturated at SIZE_MAX, so absurd entries make a
  // frame that is simply too long).
  size_t size() const { return size_; }
  absl::Span<const iovec> iov() const { return iov_; }

  // Copies [offset, offset + n) to `out`. False, copying nothing, unless the
  // whole range lies within the frame.
  bool Read(size_t offset, void* out, size_t n) const;
  template <typename T>
  bool Read(size_t offset, T* out) const {
    return Read(offset, out, sizeof(T));
  }

 private:
  absl::Span<const iovec> iov_;
  size_t size_ = 0;
};

enum class L3Kind : uint8_t { kNone, kArp, kIpv4, kIpv6 };
enum class L4Kind : uint8_t { kNone, kTcp, kUdp, kIcmp, kIcmpv6, kOther };

struct TcpOptions {
  bool has_mss = false;
  uint16_t mss = 0;
  bool has_window_scale = false;
  uint8_t window_scale = 0;  // Capped at 14 (RFC 7323 2.3).
  bool sack_permitted = false;
  bool has_timestamps = false;
  uint32_t ts_val = 0;
  uint32_t ts_ecr = 0;
  // SACK blocks (RFC 2018), as the option lists them: [left, right) each.
  // An option of a length that is not 2 + 8n (n = 1..4) is ignored.
  uint8_t sack_count = 0;
  struct SackBlock {
    uint32_t left = 0;
    uint32_t right = 0;
  } sack[4];
};

// What ParseFrame found; every value host order, every offset from the
// frame's first byte and within it.
struct ParsedFrame {
  size_t frame_len = 0;  // Bytes in the iovecs, padding included.

  MacAddr dst_mac;
  MacAddr src_mac;
  uint16_t ether_type = 0;

  L3Kind l3 = L3Kind::kNone;
  size_t l3_offset = 0;
  size_t l3_len = 0;  // As the IP header says (padding excluded); 28 for ARP.

  struct Arp {
    uint16_t op = 0;
    MacAddr sha;
    in_addr spa{};
    MacAddr tha;
    in_addr tpa{};
  } arp;

  // IPv4 or IPv6 (which is l3). For IPv6, protocol is the last next-header
  // after the extension headers.
  struct Ip {
    in_addr src4{};
    in_addr dst4{};
    in6_addr src6{};
    in6_addr dst6{};
    uint8_t protocol = 0;
    uint8_t ttl = 0;  // Hop limit for IPv6.
  } ip;

  L4Kind l4 = L4Kind::kNone;
  size_t l4_offset = 0;
  size_t l4_len = 0;  // The IP payload (after extension headers).

  uint16_t src_port = 0;  // TCP and UDP.
  uint16_t dst_port = 0;

  struct Tcp {
    uint32_t seq = 0;
    uint32_t ack = 0;
    uint8_t flags = 0;
    uint16_t window = 0;
    size_t header_len = 0;
    TcpOptions options;
  } tcp;

  struct Icmp {
    uint8_t type = 0;
    uint8_t code = 0;
    uint16_t id = 0;   // The next four bytes, as an echo carries them;
    uint16_t seq = 0;  // zero for ICMPv6 messages shorter than 8 bytes.
  } icmp;

  // The bytes after the last header parsed: the TCP segment's data, the UDP
  // datagram's data (as long as its length field says), the ICMP message
  // after type/code/checksum, the IP payload of other protocols, or the
  // Ethernet payload of other EtherTypes.
  size_t payload_offset = 0;
  size_t payload_len = 0;
};

// Parses the frame's headers into `out`; see the file comment for what is
// refused. On failure `out` holds what was parsed before the fault, the
// status says what was wrong, and one rate-limited line has been logged.
absl::Status ParseFrame(absl::Span<const iovec> frame, ParsedFrame* out);

// Parses TCP options (the bytes after the fixed header). False if an option
// length is below 2 or runs past `len`.
bool ParseTcpOptions(const uint8_t* options, size_t len, TcpOptions* out);

// What BuildFrame writes in front of a payload.
struct FrameSpec {
  MacAddr src_mac;
  MacAddr dst_mac;
  bool ipv6 = false;
  in_addr src4{};
  in_addr dst4{};
  in6_addr src6{};
  in6_addr dst6{};
  uint8_t ttl = 64;  // Hop limit for IPv6.
  uint16_t ipv4_id = 0;
  bool dont_fragment = true;
  uint32_t flow_label = 0;

  // IPPROTO_TCP or IPPROTO_UDP: the header is written here. IPPROTO_ICMP or
  // IPPROTO_ICMPV6: the message (type, code, checksum, body) is the payload
  // and only its checksum field is filled in. Anything else: IP payload as is.
  uint8_t protocol = IPPROTO_UDP;
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
  uint32_t tcp_seq = 0;
  uint32_t tcp_ack = 0;
  uint8_t tcp_flags = 0;
  uint16_t tcp_window = 0;
  absl::Span<const uint8_t> tcp_options;  // Already padded to a multiple of 4, at most 40.

  // Compute the L4 checksum. False when the guest negotiated
  // VIRTIO_NET_F_GUEST_CSUM: the caller sends the frame with
  // kVirtioNetHdrFDataValid in its virtio-net header and the field is left
  // zero, except for UDP over IPv6, where zero is refused whatever the flag
  // says (RFC 8200 8.1; Linux drops it): 0xffff there. (The IPv4 header
  // checksum and ICMP/ICMPv6 checksums are always written.)
  bool l4_checksum = true;
  // Leave the TCP or UDP checksum for the guest to finish: the field gets
  // the pseudo-header's sum (folded, not complemented; over the whole L4
  // length), as a frame sent with VIRTIO_NET_HDR_F_NEEDS_CSUM carries it
  // (csum_start at the L4 header, csum_offset at its checksum field).
  // Overrides l4_checksum; costs the same whatever the payload's length.
  bool l4_partial = false;
};

// Bytes of headers BuildFrame writes for `spec` (Ethernet, IP, and the TCP or
// UDP header).
size_t FrameHeadersLen(const FrameSpec& spec);

// Writes the headers for `spec` at [offset, offset + FrameHeadersLen(spec))
// of the iovecs, in front of the `payload_len` bytes already at the offset
// that follows, with lengths and checksums. Returns the frame's length
// (headers and payload). kInvalidArgument if the iovecs do not hold headers
// and payload, the payload is too long for the IP version, or the TCP
// options are malformed.
absl::StatusOr<size_t> BuildFrame(const FrameSpec& spec, absl::Span<const iovec> iov, size_t offset,
                                  size_t payload_len);

// BuildFrame over one buffer: the headers at the start of `out`, the
// `payload_len` bytes of payload already in place after them.
absl::StatusOr<size_t> BuildFrame(const FrameSpec& spec, absl::Span<uint8_t> out,
                                  size_t payload_len);

}  // namespace vunet::net

#endif  // VUNET_NET_FRAME_H_
