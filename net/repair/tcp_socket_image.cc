#include "net/repair/tcp_socket_image.h"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/errno_status.h"

namespace vunet::net {
namespace {

// TCP_MAXSEG's bounds in the kernel (TCP_MIN_MSS, MAX_TCP_WINDOW).
constexpr uint32_t kMinMss = 88;
constexpr uint32_t kMaxUserMss = 32767;

constexpr int kMaxWindowScale = 14;  // RFC 7323.
// How often the receive queue is read again while the peer keeps adding to it.
constexpr int kReceiveQueueAttempts = 8;

absl::Status GetIntOption(int fd, int level, int name, const char* what, int* value) {
  socklen_t len = sizeof(*value);
  if (getsockopt(fd, level, name, value, &len) != 0) return ErrnoStatus(what);
  return absl::OkStatus();
}

absl::Status SetIntOption(int fd, int level, int name, const char* what, int value) {
  if (setsockopt(fd, level, name, &value, sizeof(value)) != 0) return ErrnoStatus(what);
  return absl::OkStatus();
}

// Selects the queue that TCP_QUEUE_SEQ, send() and recv(MSG_PEEK) act on. It
// is the first thing done to a socket in repair mode, so EPERM here says the
// socket is not in it.
absl::Status SelectQueue(int fd, int queue) {
  if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof(queue)) == 0) {
    return absl::OkStatus();
  }
  if (errno == EPERM) {
    return absl::FailedPreconditionError("the socket is not in repair mode (TCP_REPAIR)");
  }
  return ErrnoStatus("setsockopt(TCP_REPAIR_QUEUE)");
}

absl::StatusOr<uint32_t> QueueSeq(int fd) {
  int seq;
  if (absl::Status s =
          GetIntOption(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, "getsockopt(TCP_QUEUE_SEQ)", &seq);
      !s.ok()) {
    return s;
  }
  return static_cast<uint32_t>(seq);
}

absl::StatusOr<size_t> QueueLength(int fd, unsigned long request, const char* what) {
  int bytes;
  if (ioctl(fd, request, &bytes) != 0) return ErrnoStatus(what);
  return static_cast<size_t>(std::max(bytes, 0));
}

absl::Status CheckQueueSize(size_t bytes, const char* queue,
                            size_t limit = TcpSocketImage::kMaxQueueBytes) {
  if (bytes <= limit) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrFormat("%s of %d bytes is above the limit of %d", queue, bytes, limit));
}

// Copies the selected queue out without consuming it; `room` bytes at most.
// An empty queue reads as 0 bytes.
absl::StatusOr<size_t> PeekQueue(int fd, std::vector<uint8_t>* out, size_t room) {
  out->resize(room);
  if (room == 0) return 0;
  ssize_t n;
  do {
    n = recv(fd, out->data(), room, MSG_PEEK | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) n = 0;
  if (n < 0) return ErrnoStatus("recv(MSG_PEEK) in repair mode");
  out->resize(static_cast<size_t>(n));
  return static_cast<size_t>(n);
}

// Which of our FIN and the peer's FIN the TCP state implies; false for the
// states a connection cannot be restored from.
bool FinsOfState(uint8_t state, bool* fin_sent, bool* peer_fin) {
  switch (state) {
    case TCP_ESTABLISHED:
      *fin_sent = false, *peer_fin = false;
      return true;
    case TCP_FIN_WAIT1:
    case TCP_FIN_WAIT2:
      *fin_sent = true, *peer_fin = false;
      return true;
    case TCP_CLOSE_WAIT:
      *fin_sent = false, *peer_fin = true;
      return true;
    case TCP_CLOSING:
    case TCP_LAST_ACK:
      *fin_sent = true, *peer_fin = true;
      return true;
    default:
      return false;
  }
}

const char* StateName(uint8_t state) {
  static constexpr const char* kNames[] = {
      "none",  "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",   "TIME_WAIT",
      "CLOSE", "CLOSE_WAIT",  "LAST_ACK", "LISTEN",   "CLOSING",   "NEW_SYN_RECV"};
  return state < std::size(kNames) ? kNames[state] : "unknown";
}

absl::StatusOr<tcp_info> TcpInfo(int fd) {
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) {
    return ErrnoStatus("getsockopt(TCP_INFO)");
  }
  return info;
}

absl::StatusOr<Endpoint> SocketName(int fd, bool peer) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  const int rc = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
                      : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (rc != 0) return ErrnoStatus(peer ? "getpeername" : "getsockname");
  std::optional<Endpoint> e = Endpoint::FromSockaddr(ss, len);
  if (!e.has_value()) return absl::InvalidArgumentError("not an IPv4 or IPv6 socket address");
  return *e;
}

// The socket address of `e` for a socket of `family`: an IPv4 endpoint of an
// AF_INET6 socket is v4-mapped (InetAddr keeps IPv4 addresses that way).
socklen_t SockaddrFor(int family, const Endpoint& e, sockaddr_storage* ss) {
  *ss = {};
  if (family == AF_INET6 && e.addr.is_v4()) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = e.addr.v6();
    sin6->sin6_port = htons(e.port);
    return sizeof(*sin6);
  }
  return e.ToSockaddr(ss);
}

absl::Status ValidateImage(const TcpSocketImage& image) {
  const bool v4 = image.local.addr.is_v4() && image.remote.addr.is_v4();
  const bool v6 = image.local.addr.is_v6() && image.remote.addr.is_v6();
  if (!((image.family == AF_INET && v4) || (image.family == AF_INET6 && (v4 || v6)))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("image: family %d does not fit endpoints %s and %s", image.family,
                        image.local.ToString(), image.remote.ToString()));
  }
  if (image.local.port == 0 || image.remote.port == 0) {
    return absl::InvalidArgumentError("image: port 0");
  }
  if (image.window_scaling &&
      (image.send_window_scale > kMaxWindowScale || image.recv_window_scale > kMaxWindowScale)) {
    return absl::InvalidArgumentError(absl::StrFormat("image: window scales %d and %d (at most %d)",
                                                      image.send_window_scale,
                                                      image.recv_window_scale, kMaxWindowScale));
  }
  if (image.mss == 0 || image.mss > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat("image: MSS %d", image.mss));
  }
  if (absl::Status s =
          CheckQueueSize(image.unacked.size() + image.unsent.size(), "image: send queue");
      !s.ok()) {
    return absl::InvalidArgumentError(s.message());
  }
  if (absl::Status s = CheckQueueSize(image.received.size(), "image: receive queue"); !s.ok()) {
    return absl::InvalidArgumentError(s.message());
  }
  return absl::OkStatus();
}

// The socket's send buffer as the kernel accounts it (SO_SNDBUF reads the
// doubled value); 0 if it cannot be read.
int SendBufferBytes(int fd) {
  int bytes = 0;
  socklen_t len = sizeof(bytes);
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, &len) != 0) return 0;
  return bytes;
}

// Makes room for `remaining` more bytes in the send buffer of a socket in
// repair mode, where nothing is acknowledged to free any: asks for what it
// holds plus twice that (the kernel's bookkeeping per byte), and at least
// `source_sndbuf`. True if the buffer grew (net.core.wmem_max caps it).
bool GrowSendBuffer(int fd, size_t remaining, uint32_t source_sndbuf) {
  const int before = SendBufferBytes(fd);
  const size_t want = std::max<size_t>(source_sndbuf, static_cast<size_t>(before) + 2 * remaining);
  // The kernel doubles what it is given.
  const int ask = static_cast<int>(std::min<size_t>(want / 2 + 1, INT32_MAX / 2));
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &ask, sizeof(ask)) != 0) return false;
  return SendBufferBytes(fd) > before;
}

// Writes all of `bytes` into the selected queue of a socket in repair mode.
// The kernel takes a bounded amount per call (one buffer of at most
// MAX_SKB_FRAGS pages for the receive queue), hence the loop. A full send
// buffer is grown (setting SO_SNDBUF fixes its size for the connection's
// life, so only when it must): the bytes in flight must all be in the queue
// in repair mode, or acknowledgements of them would be taken for
// acknowledgements of data never sent, and dropped.
absl::Status WriteQueue(int fd, const std::vector<uint8_t>& bytes, const char* queue,
                        uint32_t grow_send_buffer_to = 0) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n =
        send(fd, bytes.data() + done, bytes.size() - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    const int error = n < 0 ? errno : EIO;
    if (grow_send_buffer_to > 0 && (error == EAGAIN || error == EWOULDBLOCK) &&
        GrowSendBuffer(fd, bytes.size() - done, grow_send_buffer_to)) {
      continue;
    }
    return absl::ErrnoToStatus(
        error,
        absl::StrFormat("writing the %s in repair mode: the kernel took %d of %d bytes%s", queue,
                        done, bytes.size(),
                        error == EAGAIN ? absl::StrFormat(" (the send buffer, %d bytes, is full: "
                                                          "net.core.wmem_max caps it)",
                                                          SendBufferBytes(fd))
                                        : ""));
  }
  return absl::OkStatus();
}

}  // namespace

bool operator==(const TcpSocketImage& a, const TcpSocketImage& b) {
  return a.family == b.family && a.local == b.local && a.remote == b.remote &&
         a.send_seq == b.send_seq && a.recv_seq == b.recv_seq && a.unacked == b.unacked &&
         a.unsent == b.unsent && a.received == b.received && a.fin_sent == b.fin_sent &&
         a.peer_fin == b.peer_fin && a.mss == b.mss && a.window_scaling == b.window_scaling &&
         a.send_window_scale == b.send_window_scale && a.recv_window_scale == b.recv_window_scale &&
         a.sack_permitted == b.sack_permitted && a.timestamps == b.timestamps &&
         a.timestamp == b.timestamp && a.window.snd_wl1 == b.window.snd_wl1 &&
         a.window.snd_wnd == b.window.snd_wnd && a.window.max_window == b.window.max_window &&
         a.window.rcv_wnd == b.window.rcv_wnd && a.window.rcv_wup == b.window.rcv_wup;
}

std::string TcpSocketImage::ToString() const {
  return absl::StrFormat(
      "%s -> %s%s send_seq %u (%d unacked, %d unsent%s) recv_seq %u (%d received%s) mss %d "
      "wscale %s sack %d ts %s window snd %u/%u max %u rcv %u wup %u",
      local.ToString(), remote.ToString(), family == AF_INET6 && local.addr.is_v4() ? " (v6)" : "",
      send_seq, unacked.size(), unsent.size(), fin_sent ? ", FIN" : "", recv_seq, received.size(),
      peer_fin ? ", FIN" : "", mss,
      window_scaling ? absl::StrFormat("%d/%d", send_window_scale, recv_window_scale) : "off",
      sack_permitted, timestamps ? absl::StrCat(timestamp) : "off", window.snd_wl1, window.snd_wnd,
      window.max_window, window.rcv_wnd, window.rcv_wup);
}

absl::StatusOr<TcpSocketImage> DumpTcpSocket(int fd, size_t max_queue_bytes) {
  max_queue_bytes = std::min(max_queue_bytes, TcpSocketImage::kMaxQueueBytes);
  TcpSocketImage image;
  int type = 0, protocol = 0;
  if (absl::Status s =
          GetIntOption(fd, SOL_SOCKET, SO_DOMAIN, "getsockopt(SO_DOMAIN)", &image.family);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = GetIntOption(fd, SOL_SOCKET, SO_TYPE, "getsockopt(SO_TYPE)", &type);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          GetIntOption(fd, SOL_SOCKET, SO_PROTOCOL, "getsockopt(SO_PROTOCOL)", &protocol);
      !s.ok()) {
    return s;
  }
  if ((image.family != AF_INET && image.family != AF_INET6) || type != SOCK_STREAM ||
      protocol != IPPROTO_TCP) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "not a TCP socket (domain %d, type %d, protocol %d)", image.family, type, protocol));
  }
  absl::StatusOr<tcp_info> info = TcpInfo(fd);
  if (!info.ok()) return info.status();
  if (!FinsOfState(info->tcpi_state, &image.fin_sent, &image.peer_fin)) {
    return absl::FailedPreconditionError(
        absl::StrCat("TCP state ", StateName(info->tcpi_state), ": not a connection to migrate"));
  }
  absl::StatusOr<Endpoint> local = SocketName(fd, /*peer=*/false);
  if (!local.ok()) return local.status();
  absl::StatusOr<Endpoint> remote = SocketName(fd, /*peer=*/true);
  if (!remote.ok()) return remote.status();
  image.local = *local;
  image.remote = *remote;

  // The send queue. Only we add to it, and we are not writing: its end
  // (write_seq) is fixed while the peer's ACKs may take bytes off its front,
  // so the sequence of the first byte follows from the bytes read.
  if (absl::Status s = SelectQueue(fd, TCP_SEND_QUEUE); !s.ok()) return s;
  absl::StatusOr<uint32_t> write_seq = QueueSeq(fd);
  if (!write_seq.ok()) return write_seq.status();
  absl::StatusOr<size_t> outq = QueueLength(fd, SIOCOUTQ, "ioctl(SIOCOUTQ)");
  if (!outq.ok()) return outq.status();
  absl::StatusOr<size_t> not_sent = QueueLength(fd, SIOCOUTQNSD, "ioctl(SIOCOUTQNSD)");
  if (!not_sent.ok()) return not_sent.status();
  if (absl::Status s = CheckQueueSize(*outq, "send queue", max_queue_bytes); !s.ok()) return s;
  // The kernel copies whole buffers of the send queue: room for all of it.
  std::vector<uint8_t> send_queue;
  absl::StatusOr<size_t> queued = PeekQueue(fd, &send_queue, *outq);
  if (!queued.ok()) return queued.status();
  // Back to no queue at once: with the send queue selected, data the peer's
  // window lets out would be marked sent without being sent.
  if (absl::Status s = SelectQueue(fd, TCP_NO_QUEUE); !s.ok()) return s;

  // The receive queue: the peer may still be adding to it (and may send its
  // FIN meanwhile); read it until its end did not move while it was read.
  std::vector<uint8_t> received;
  uint32_t recv_next = 0;
  if (absl::Status s = SelectQueue(fd, TCP_RECV_QUEUE); !s.ok()) return s;
  for (int attempt = 0;; ++attempt) {
    if (attempt == kReceiveQueueAttempts) {
      SelectQueue(fd, TCP_NO_QUEUE).IgnoreError();
      return absl::UnavailableError(absl::StrFormat(
          "the receive queue kept growing over %d reads: is the peer's traffic stopped?",
          kReceiveQueueAttempts));
    }
    absl::StatusOr<uint32_t> before = QueueSeq(fd);
    if (!before.ok()) return before.status();
    info = TcpInfo(fd);
    if (!info.ok()) return info.status();
    absl::StatusOr<size_t> inq = QueueLength(fd, SIOCINQ, "ioctl(SIOCINQ)");
    if (!inq.ok()) return inq.status();
    if (absl::Status s = CheckQueueSize(*inq, "receive queue", max_queue_bytes); !s.ok()) return s;
    // A byte of room more than the queue holds, so that one that grew
    // meanwhile reads longer than expected.
    absl::StatusOr<size_t> got = PeekQueue(fd, &received, *inq + 1);
    if (!got.ok()) return got.status();
    absl::StatusOr<uint32_t> after = QueueSeq(fd);
    if (!after.ok()) return after.status();
    if (*before == *after && *got <= *inq) {
      recv_next = *after;
      break;
    }
  }
  if (absl::Status s = SelectQueue(fd, TCP_NO_QUEUE); !s.ok()) return s;
  if (!FinsOfState(info->tcpi_state, &image.fin_sent, &image.peer_fin)) {
    return absl::FailedPreconditionError(
        absl::StrCat("TCP state ", StateName(info->tcpi_state), " while dumping"));
  }
  image.recv_seq = recv_next - (image.peer_fin ? 1 : 0) - static_cast<uint32_t>(received.size());
  image.received = std::move(received);

  // Our FIN, when queued and not yet sent, counts in SIOCOUTQNSD but is no
  // byte of the queue.
  size_t unsent = *not_sent;
  if (image.fin_sent && unsent > 0) --unsent;
  unsent = std::min(unsent, *queued);
  image.send_seq = *write_seq - (image.fin_sent ? 1 : 0) - static_cast<uint32_t>(*queued);
  image.unacked.assign(send_queue.begin(), send_queue.begin() + (*queued - unsent));
  image.unsent.assign(send_queue.begin() + (*queued - unsent), send_queue.begin() + *queued);

  // In repair mode TCP_MAXSEG reads the MSS the peer announced (mss_clamp).
  int mss = 0;
  if (absl::Status s = GetIntOption(fd, IPPROTO_TCP, TCP_MAXSEG, "getsockopt(TCP_MAXSEG)", &mss);
      !s.ok()) {
    return s;
  }
  image.mss = static_cast<uint32_t>(mss);
  image.window_scaling = (info->tcpi_options & TCPI_OPT_WSCALE) != 0;
  image.send_window_scale = info->tcpi_snd_wscale;
  image.recv_window_scale = info->tcpi_rcv_wscale;
  image.sack_permitted = (info->tcpi_options & TCPI_OPT_SACK) != 0;
  image.timestamps = (info->tcpi_options & TCPI_OPT_TIMESTAMPS) != 0;
  int timestamp = 0;
  if (absl::Status s =
          GetIntOption(fd, IPPROTO_TCP, TCP_TIMESTAMP, "getsockopt(TCP_TIMESTAMP)", &timestamp);
      !s.ok()) {
    return s;
  }
  image.timestamp = static_cast<uint32_t>(timestamp);
  image.send_buffer = static_cast<uint32_t>(SendBufferBytes(fd));
  socklen_t len = sizeof(image.window);
  if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &image.window, &len) != 0) {
    return ErrnoStatus("getsockopt(TCP_REPAIR_WINDOW)");
  }
  return image;
}

absl::StatusOr<UniqueFd> NewTcpSocketForRestore(const TcpSocketImage& image) {
  if (image.family != AF_INET && image.family != AF_INET6) {
    return absl::InvalidArgumentError(absl::StrFormat("image: family %d", image.family));
  }
  UniqueFd fd(socket(image.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!fd.valid()) return ErrnoStatus("socket for a restored connection");
  if (absl::Status s =
          SetIntOption(fd.get(), SOL_SOCKET, SO_REUSEADDR, "setsockopt(SO_REUSEADDR)", 1);
      !s.ok()) {
    return s;
  }
  if (image.family == AF_INET6) {
    if (absl::Status s =
            SetIntOption(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, "setsockopt(IPV6_V6ONLY)", 0);
        !s.ok()) {
      return s;
    }
  }
  return fd;
}

absl::Status RestoreTcpSocket(int fd, const TcpSocketImage& image) {
  if (absl::Status s = ValidateImage(image); !s.ok()) return s;

  // Sequence numbers first: the kernel takes them only before connect().
  // The receive queue's bytes are placed so that it ends where the peer's
  // FIN, if any, was acknowledged: their own sequence numbers matter to
  // nobody once acknowledged.
  if (absl::Status s = SelectQueue(fd, TCP_SEND_QUEUE); !s.ok()) return s;
  if (absl::Status s = SetIntOption(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, "send sequence (TCP_QUEUE_SEQ)",
                                    static_cast<int>(image.send_seq));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = SelectQueue(fd, TCP_RECV_QUEUE); !s.ok()) return s;
  if (absl::Status s =
          SetIntOption(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, "receive sequence (TCP_QUEUE_SEQ)",
                       static_cast<int>(image.recv_seq + (image.peer_fin ? 1 : 0)));
      !s.ok()) {
    return s;
  }

  // The segment size is worked out once, at connect(), from the MSS a
  // connection may use; the MSS option set after it (below) does not change
  // it, and the socket would send the 536-byte default's segments. Set
  // before, ours too is capped there (the kernel takes at most 32767).
  if (image.mss >= kMinMss) {
    if (absl::Status s = SetIntOption(fd, IPPROTO_TCP, TCP_MAXSEG, "setsockopt(TCP_MAXSEG)",
                                      static_cast<int>(std::min(image.mss, kMaxUserMss)));
        !s.ok()) {
      return s;
    }
  }

  // Bound once: a retry after kAlreadyExists finds it bound already.
  sockaddr_storage ss;
  socklen_t len = SockaddrFor(image.family, image.local, &ss);
  absl::StatusOr<Endpoint> bound = SocketName(fd, /*peer=*/false);
  if ((!bound.ok() || bound->port == 0) &&
      bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    return ErrnoStatus(absl::StrCat("bind to ", image.local.ToString()));
  }
  len = SockaddrFor(image.family, image.remote, &ss);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    if (errno == EADDRNOTAVAIL) {
      // In repair mode bind() ignores conflicts; connect() is where a live
      // socket with the same four-tuple is found.
      return absl::AlreadyExistsError(absl::StrFormat(
          "connect in repair mode to %s from %s: EADDRNOTAVAIL (another socket on this host "
          "still has this connection: close the source's first)",
          image.remote.ToString(), image.local.ToString()));
    }
    return ErrnoStatus(absl::StrCat("connect in repair mode to ", image.remote.ToString()));
  }

  tcp_repair_opt options[4];
  size_t count = 0;
  options[count++] = {TCPOPT_MAXSEG, image.mss};
  if (image.window_scaling) {
    options[count++] = {TCPOPT_WINDOW,
                        image.send_window_scale | (uint32_t{image.recv_window_scale} << 16)};
  }
  if (image.sack_permitted) options[count++] = {TCPOPT_SACK_PERMITTED, 0};
  if (image.timestamps) options[count++] = {TCPOPT_TIMESTAMP, 0};
  if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_OPTIONS, options, count * sizeof(options[0])) != 0) {
    return ErrnoStatus("setsockopt(TCP_REPAIR_OPTIONS)");
  }
  if (image.timestamps) {
    if (absl::Status s = SetIntOption(fd, IPPROTO_TCP, TCP_TIMESTAMP, "setsockopt(TCP_TIMESTAMP)",
                                      static_cast<int>(image.timestamp));
        !s.ok()) {
      return s;
    }
  }

  // Bytes written in repair mode count as sent: only the unacknowledged ones
  // go here. The peer gets them again when the retransmission timer fires.
  if (absl::Status s = SelectQueue(fd, TCP_SEND_QUEUE); !s.ok()) return s;
  if (absl::Status s =
          WriteQueue(fd, image.unacked, "send queue", std::max<uint32_t>(image.send_buffer, 1));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = SelectQueue(fd, TCP_RECV_QUEUE); !s.ok()) return s;
  if (absl::Status s = WriteQueue(fd, image.received, "receive queue"); !s.ok()) return s;
  if (absl::Status s = SelectQueue(fd, TCP_NO_QUEUE); !s.ok()) return s;

  // The kernel checks the windows against the receive queue's end, so they
  // come after it.
  if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &image.window, sizeof(image.window)) != 0) {
    return ErrnoStatus("setsockopt(TCP_REPAIR_WINDOW)");
  }
  // The peer's FIN was acknowledged by the source and will not come again:
  // a read shutdown gives the application its end of stream after the data.
  if (image.peer_fin && shutdown(fd, SHUT_RD) != 0) return ErrnoStatus("shutdown(SHUT_RD)");
  return absl::OkStatus();
}

absl::StatusOr<size_t> FinishTcpRestore(int fd, const TcpSocketImage& image, size_t offset) {
  if (offset > image.unsent.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("offset %d past the %d unsent bytes", offset, image.unsent.size()));
  }
  while (offset < image.unsent.size()) {
    const ssize_t n = send(fd, image.unsent.data() + offset, image.unsent.size() - offset,
                           MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      offset += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return offset;
    return absl::ErrnoToStatus(n < 0 ? errno : EIO,
                               absl::StrFormat("sending the %d unsent bytes of a restored "
                                               "connection (%d sent)",
                                               image.unsent.size(), offset));
  }
  if (image.fin_sent && shutdown(fd, SHUT_WR) != 0) return ErrnoStatus("shutdown(SHUT_WR)");
  return offset;
}

}  // namespace vunet::net
