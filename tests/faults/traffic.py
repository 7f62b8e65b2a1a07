#!/usr/bin/env python3
"""Traffic for vunet's fault and soak tests: a host-side server and guest-side clients, every byte checked.

Server (on the host side, where vunet's sockets live):
    traffic.py server --port 5001 [--bind 127.0.0.1]
  TCP: a connection starts with a header (HEADER: magic b'VUNT', command, seed, up, down, param), then
    bulk  the client sends `up` bytes of pattern(seed) while we send `down` bytes of pattern(seed + 1),
          both paced to `param` bytes/s if that is not 0; when both are done we send one status byte,
          b'K' if every byte we received matched, b'X' otherwise, and close.
    hold  we echo what arrives until the client closes.
    reset we send `down` bytes of pattern(seed + 1) and reset the connection (SO_LINGER 0, close) once
          `param` bytes went out; or, with `up` not 0, once `param` bytes came in (the client uploads).
    echo  we read `up` bytes and send them back, then close.
  UDP on the same port: every datagram is echoed.

Clients (in the guest), each exits 0 when the outcome is the expected one, 1 otherwise, printing one
line that says what happened:
    traffic.py bulk  --host H --port P --up N --down N [--seed S] [--rate B/s] [--timeout S]
    traffic.py reset --host H --port P (--down N | --up N) --after N [--seed S]
    traffic.py hold  --host H --port P --count N --until FILE [--connect-timeout S]
                     (opens N connections, one byte echoed on each; once FILE exists, 64 KiB echoed
                     on each, byte-exact, then closed)
    traffic.py udp   --host H --port P [--count N] [--size N]
    traffic.py churn --host H --port P --seconds S [--tcp-workers N] [--udp-rate N] ...   (soak)
"""

import argparse
import errno
import os
import random
import select
import signal
import socket
import socketserver
import struct
import sys
import threading
import time

HEADER = struct.Struct("!4sB3xQQQQ")
MAGIC = b"VUNT"
BULK, HOLD, RESET, ECHO = 1, 2, 3, 4
CHUNK = 1 << 16


class Pattern:
    """A reproducible byte stream: what one side sends, the other checks."""

    def __init__(self, seed):
        self._rng = random.Random(seed)
        self._buf = b""
        self._cur = 0
        self.offset = 0  # Bytes taken or checked so far.

    def _ensure(self, n):
        if len(self._buf) - self._cur < n:
            self._buf = self._buf[self._cur:] + self._rng.randbytes(max(n, CHUNK))
            self._cur = 0

    def take(self, n):
        self._ensure(n)
        out = self._buf[self._cur:self._cur + n]
        self._cur += n
        self.offset += n
        return out

    def check(self, data):
        """True if `data` is the stream's next len(data) bytes."""
        n = len(data)
        self._ensure(n)
        ok = self._buf[self._cur:self._cur + n] == data
        self._cur += n
        self.offset += n
        return ok


class Pacer:
    """Sleeps so that bytes sent keep to `rate` bytes/s (0: no pacing)."""

    def __init__(self, rate):
        self._rate = rate
        self._start = time.monotonic()
        self._sent = 0

    def sent(self, n):
        self._sent += n
        if self._rate:
            ahead = self._sent / self._rate - (time.monotonic() - self._start)
            if ahead > 0:
                time.sleep(ahead)


def send_pattern(sock, pattern, n, rate, stop=None):
    pacer = Pacer(rate)
    left = n
    while left > 0 and not (stop and stop.is_set()):
        chunk = pattern.take(min(CHUNK, left))
        sock.sendall(chunk)
        left -= len(chunk)
        pacer.sent(len(chunk))


def recv_exact(sock, n):
    data = bytearray()
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            break
        data += got
    return bytes(data)


# ---------------------------------------------------------------------------
# Server.


class TcpHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(120)
        try:
            header = recv_exact(sock, HEADER.size)
            if len(header) != HEADER.size:
                return
            magic, command, seed, up, down, param = HEADER.unpack(header)
            if magic != MAGIC:
                return
            if command == BULK:
                self.bulk(sock, seed, up, down, param)
            elif command == HOLD:
                while True:
                    data = sock.recv(CHUNK)
                    if not data:
                        break
                    sock.sendall(data)
            elif command == RESET:
                self.reset(sock, seed, up, down, param)
            elif command == ECHO:
                data = recv_exact(sock, up)
                sock.sendall(data)
        except OSError:
            pass

    def bulk(self, sock, seed, up, down, rate):
        error = []

        def sender():
            try:
                send_pattern(sock, Pattern(seed + 1), down, rate)
            except OSError as e:
                error.append(e)

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        pattern = Pattern(seed)
        ok = True
        while pattern.offset < up:
            data = sock.recv(min(CHUNK, up - pattern.offset))
            if not data:
                ok = False
                break
            ok = pattern.check(data) and ok
        thread.join()
        if error:
            return
        sock.sendall(b"K" if ok else b"X")
        sock.shutdown(socket.SHUT_WR)
        # Until the client has read it all and closed: our FIN then follows its data.
        sock.recv(1)

    def reset(self, sock, seed, up, down, after):
        if up:
            pattern = Pattern(seed)
            while pattern.offset < after:
                data = sock.recv(min(CHUNK, after - pattern.offset))
                if not data:
                    return
                pattern.check(data)
        else:
            send_pattern(sock, Pattern(seed + 1), after, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class ThreadingTcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    block_on_close = False


def udp_echo(sock):
    while True:
        try:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)
        except OSError:
            pass


def serve(args):
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    ThreadingTcpServer.address_family = family
    server = ThreadingTcpServer((args.bind, args.port), TcpHandler)
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    udp.bind((args.bind, args.port))
    threading.Thread(target=udp_echo, args=(udp,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"server: listening on {args.bind} port {args.port} (TCP and UDP)", flush=True)
    server.serve_forever(poll_interval=0.2)


# ---------------------------------------------------------------------------
# Clients.


def connect(args, timeout=None):
    sock = socket.create_connection((args.host, args.port),
                                    timeout=timeout or args.connect_timeout)
    sock.settimeout(args.timeout)
    return sock


def tcp_bytes_acked(sock):
    """tcpi_bytes_acked of struct tcp_info (Linux): the bytes sent the peer has acknowledged."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("Q", info, 120)[0] if len(info) >= 128 else 0


def watch_progress(sock, path, received, done):
    """Appends a line each 50 ms in which the acknowledged or received bytes moved."""
    last = None
    with open(path, "a", buffering=1) as out:
        while not done.is_set():
            try:
                now = (tcp_bytes_acked(sock), received[0])
            except OSError:
                return
            if now != last:
                out.write(f"{time.monotonic():.3f} {now[0]} {now[1]}\n")
                last = now
            done.wait(0.05)


def client_bulk(args):
    start = time.monotonic()
    sock = connect(args)
    sock.sendall(HEADER.pack(MAGIC, BULK, args.seed, args.up, args.down, args.rate))
    error = []
    received = [0]
    done = threading.Event()
    if args.progress:
        threading.Thread(target=watch_progress, args=(sock, args.progress, received, done),
                         daemon=True).start()

    def sender():
        try:
            send_pattern(sock, Pattern(args.seed), args.up, args.rate)
        except OSError as e:
            error.append(e)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    pattern = Pattern(args.seed + 1)
    bad_at = None
    while pattern.offset < args.down:
        data = sock.recv(min(CHUNK, args.down - pattern.offset))
        if not data:
            print(f"bulk FAILED: the connection ended after {pattern.offset} of {args.down} bytes")
            return 1
        at = pattern.offset
        if not pattern.check(data) and bad_at is None:
            bad_at = at
        received[0] = pattern.offset
    thread.join()
    done.set()
    if error:
        print(f"bulk FAILED: sending: {error[0]}")
        return 1
    status = sock.recv(1)
    sock.close()
    seconds = time.monotonic() - start
    if bad_at is not None:
        print(f"bulk FAILED: the data from the host differs from byte {bad_at}")
        return 1
    if status != b"K":
        print(f"bulk FAILED: the host says the data it received differs (status {status!r})")
        return 1
    print(f"bulk ok: {args.up} bytes up, {args.down} down, byte-exact, in {seconds:.1f} s")
    return 0


def client_reset(args):
    sock = connect(args)
    sock.sendall(HEADER.pack(MAGIC, RESET, args.seed, args.up, args.down, args.after))
    pattern = Pattern(args.seed if args.up else args.seed + 1)
    try:
        if args.up:
            while True:  # Until the reset makes a send fail.
                sock.sendall(pattern.take(CHUNK))
        else:
            while True:
                data = sock.recv(CHUNK)
                if not data:
                    print(f"reset FAILED: an orderly close after {pattern.offset} bytes, no reset")
                    return 1
                if not pattern.check(data):
                    print(f"reset FAILED: the data differs before byte {pattern.offset}")
                    return 1
    except ConnectionResetError:
        pass
    except BrokenPipeError:
        pass
    except socket.timeout:
        print(f"reset FAILED: no reset within {args.timeout} s ({pattern.offset} bytes)")
        return 1
    print(f"reset ok: reset after {pattern.offset} bytes {'up' if args.up else 'down'}")
    return 0


def client_hold(args):
    socks = []
    outcomes = {}
    for i in range(args.count):
        try:
            sock = connect(args)
            sock.sendall(HEADER.pack(MAGIC, HOLD, 0, 0, 0, 0) + b"x")
            if sock.recv(1) != b"x":
                raise OSError("no echo")
            socks.append(sock)
            outcome = "ok"
        except ConnectionRefusedError:
            outcome = "refused"
        except ConnectionResetError:
            outcome = "reset"
        except socket.timeout:
            outcome = "timeout"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno, str(e))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print("hold: " + " ".join(f"{k} {v}" for k, v in sorted(outcomes.items())), flush=True)
    deadline = time.monotonic() + args.timeout
    while not os.path.exists(args.until) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Each held connection must still work before it is closed: 64 KiB echoed, byte-exact.
    broken = 0
    for i, sock in enumerate(socks):
        data = Pattern(1000 + i).take(CHUNK)
        try:
            sock.sendall(data)
            if recv_exact(sock, len(data)) != data:
                broken += 1
        except OSError:
            broken += 1
        sock.close()
    print(f"hold: closed {len(socks)}, {broken} of them broken", flush=True)
    return 0 if broken == 0 else 1


def client_udp(args):
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    got = 0
    for i in range(args.count):
        payload = struct.pack("!Q", i) + os.urandom(max(args.size - 8, 0))
        for _ in range(10):  # UDP may lose one; try again.
            sock.sendto(payload, (args.host, args.port))
            try:
                data = sock.recv(65535)
            except socket.timeout:
                continue
            if data == payload:
                got += 1
                break
    sock.close()
    print(f"udp: {got} of {args.count} echoed", flush=True)
    return 0 if got == args.count else 1


# ---------------------------------------------------------------------------
# Churn (the soak): many short TCP connections and UDP flows, some long ones, until time is up.


def churn_tcp_worker(args, seconds, counts, lock, seed):
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        size = rng.choice((1, 100, 1400, 16384))
        payload = rng.randbytes(size)
        try:
            sock = socket.create_connection((args.host, args.port), timeout=5)
            sock.settimeout(5)
            sock.sendall(HEADER.pack(MAGIC, ECHO, 0, size, 0, 0) + payload)
            data = recv_exact(sock, size)
            sock.close()
            key = "tcp_ok" if data == payload else "tcp_bad"
        except OSError as e:
            key = "tcp_error_" + (errno.errorcode.get(e.errno, "other") if e.errno else "timeout")
        with lock:
            counts[key] = counts.get(key, 0) + 1


def churn_udp_worker(args, seconds, counts, lock, seed, rate, port):
    """Short UDP flows: a new socket (a new flow in vunet) per exchange, `rate` per second."""
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    while time.monotonic() < end:
        next_at += 1.0 / rate
        payload = rng.randbytes(rng.choice((16, 512, 1400)))
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.settimeout(1)
        key = "udp_lost"
        try:
            for _ in range(3):
                sock.sendto(payload, (args.host, port))
                try:
                    if sock.recv(65535) == payload:
                        key = "udp_ok"
                        break
                except socket.timeout:
                    continue
        except OSError:
            key = "udp_error"
        sock.close()
        with lock:
            counts[key] = counts.get(key, 0) + 1
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def churn_long(args, seconds, counts, lock, seed):
    """Long flows: one TCP connection echoing all along, and one UDP socket exchanging all along."""
    end = time.monotonic() + seconds
    rng = random.Random(seed)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        tcp = socket.create_connection((args.host, args.port), timeout=5)
        tcp.settimeout(10)
        tcp.sendall(HEADER.pack(MAGIC, HOLD, 0, 0, 0, 0))
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.settimeout(1)
        while time.monotonic() < end:
            payload = rng.randbytes(rng.randint(1, 4000))
            tcp.sendall(payload)
            key = "long_tcp_ok" if recv_exact(tcp, len(payload)) == payload else "long_tcp_bad"
            udp.sendto(payload[:1400], (args.host, args.port))
            try:
                ukey = "long_udp_ok" if udp.recv(65535) == payload[:1400] else "long_udp_bad"
            except socket.timeout:
                ukey = "long_udp_lost"
            with lock:
                counts[key] = counts.get(key, 0) + 1
                counts[ukey] = counts.get(ukey, 0) + 1
            time.sleep(0.05)
        tcp.close()
        udp.close()
    except OSError as e:
        with lock:
            counts["long_error"] = counts.get("long_error", 0) + 1
        print(f"churn: a long flow failed: {e}", flush=True)


def client_churn(args):
    """Runs the workers in threads of this one process; prints cumulative counts every second."""
    counts = {}
    lock = threading.Lock()
    threads = []
    for i in range(args.tcp_workers):
        threads.append(threading.Thread(
            target=churn_tcp_worker, args=(args, args.seconds, counts, lock, args.seed * 100 + i)))
    if args.udp_rate:
        threads.append(threading.Thread(
            target=churn_udp_worker,
            args=(args, args.seconds, counts, lock, args.seed * 100 + 50, args.udp_rate, args.port)))
    if args.dns_rate:
        threads.append(threading.Thread(
            target=churn_udp_worker,
            args=(args, args.seconds, counts, lock, args.seed * 100 + 60, args.dns_rate, 53)))
    if args.long:
        threads.append(threading.Thread(
            target=churn_long, args=(args, args.seconds, counts, lock, args.seed * 100 + 70)))
    for t in threads:
        t.daemon = True
        t.start()
    start = time.monotonic()
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        with lock:
            line = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"churn {time.monotonic() - start:.0f}: {line}", flush=True)
    for t in threads:
        t.join()
    bad = sum(v for k, v in counts.items() if k.endswith("_bad"))
    return 0 if bad == 0 else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("server")
    s.add_argument("--bind", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    for name in ("bulk", "reset", "hold", "udp", "churn"):
        c = sub.add_parser(name)
        c.add_argument("--host", required=True)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--seed", type=int, default=1)
        c.add_argument("--timeout", type=float, default=30)
        c.add_argument("--connect-timeout", type=float, default=10)
        if name in ("bulk", "reset"):
            c.add_argument("--up", type=int, default=0)
            c.add_argument("--down", type=int, default=0)
        if name == "bulk":
            c.add_argument("--rate", type=int, default=0)
            c.add_argument("--progress", help="every 50 ms while bytes move: a line "
                           "'MONOTONIC_S UP_ACKED DOWN_RECEIVED' appended to this file")
        if name == "reset":
            c.add_argument("--after", type=int, required=True)
        if name == "hold":
            c.add_argument("--count", type=int, required=True)
            c.add_argument("--until", required=True)
        if name == "udp":
            c.add_argument("--count", type=int, default=1)
            c.add_argument("--size", type=int, default=100)
        if name == "churn":
            c.add_argument("--seconds", type=float, required=True)
            c.add_argument("--tcp-workers", type=int, default=2)
            c.add_argument("--udp-rate", type=float, default=0)
            c.add_argument("--dns-rate", type=float, default=0)
            c.add_argument("--long", action="store_true")
    args = parser.parse_args()
    if args.command == "server":
        return serve(args)
    return {"bulk": client_bulk, "reset": client_reset, "hold": client_hold, "udp": client_udp,
            "churn": client_churn}[args.command](args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as e:
        print(f"{sys.argv[1] if len(sys.argv) > 1 else 'traffic'} FAILED: {e}", flush=True)
        sys.exit(1)
