#!/usr/bin/env python3
"""Bulk TCP transfers each way, every byte checked, timed: for linux_guest_loss_test.sh.

  loss_transfer.py serve --port P [--bind ADDR]
      serves transfers one connection at a time until killed. A connection starts with a request
      (magic b"VULT", direction b"U" or b"D", the byte count, the seed). Up: reads that many bytes,
      checks them, answers one status byte (b"K" every byte right, b"X" otherwise) and closes.
      Down: sends that many bytes and closes. Connections are served each on a thread of its
      own. Prints "listening" once it listens.
  loss_transfer.py run --host H --port P --bytes N [--seed S] [--direction up|down|both]
                       [--timeout SECONDS]
      one transfer per direction; prints one line each:
          "up 16777216 bytes in 1.234 s: 108.77 Mbit/s, byte-exact"
      Exits 1 (with a FAIL line) when the data differs or the connection ends short; 3 when a
      transfer did not finish within --timeout (default 120 s), its line then saying how far it
      got: "up 1245380 of 16777216 bytes in 120.000 s: 0.08 Mbit/s, byte-exact so far,
      INCOMPLETE" (up: what the host acknowledged, from TCP_INFO; down: what arrived).

The stream is a pseudo-random block of 1048573 bytes (a prime: no power-of-two shift lines up
with it) chosen by the seed, repeated; a chunk received out of place differs from the stream.
"""

import argparse
import random
import socket
import struct
import sys
import threading
import time

REQUEST = struct.Struct("!4s1s3xQQ")
MAGIC = b"VULT"
PERIOD = 1048573
CHUNK = 1 << 19  # Below PERIOD.
STALL = 600  # The server's per-operation timeout.


class Stream:
    """The bytes of the stream for `seed`, from offset 0 on."""

    def __init__(self, seed):
        block = random.Random(seed).randbytes(PERIOD)
        self._double = memoryview(block + block)
        self.offset = 0

    def next(self, n):
        """The next min(n, PERIOD) bytes, as a memoryview."""
        n = min(n, PERIOD)
        start = self.offset % PERIOD
        self.offset += n
        return self._double[start:start + n]


def receive_checked(sock, count, seed, deadline):
    """Reads `count` bytes (or until EOF) and checks them; returns (received, first bad offset)."""
    stream = Stream(seed)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    received = 0
    bad = None
    while received < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{received} of {count} bytes by the deadline")
        n = sock.recv_into(view, min(CHUNK, count - received))
        if n == 0:
            break
        if bad is None and view[:n] != stream.next(n):
            bad = received
        received += n
    return received, bad


def send_stream(sock, count, seed, deadline):
    stream = Stream(seed)
    sent = 0
    while sent < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sent} of {count} bytes by the deadline")
        chunk = stream.next(min(CHUNK, count - sent))
        sock.sendall(chunk)
        sent += len(chunk)


def handle(conn):
    with conn:
        conn.settimeout(STALL)
        try:
            request = b""
            while len(request) < REQUEST.size:
                data = conn.recv(REQUEST.size - len(request))
                if not data:
                    return
                request += data
            magic, direction, count, seed = REQUEST.unpack(request)
            if magic != MAGIC:
                return
            deadline = time.monotonic() + 3600
            if direction == b"U":
                received, bad = receive_checked(conn, count, seed, deadline)
                conn.sendall(b"K" if received == count and bad is None else b"X")
                if received != count or bad is not None:
                    print(f"up: {received} of {count} bytes, first difference at {bad}",
                          flush=True)
            elif direction == b"D":
                send_stream(conn, count, seed, deadline)
        except (OSError, TimeoutError) as e:
            print(f"serve: {e}", flush=True)


def serve(args):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.bind, args.port))
    listener.listen(4)
    print("listening", flush=True)
    while True:
        conn, _ = listener.accept()
        # A thread each: a transfer given up on may linger while the next one runs.
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def bytes_acked(sock):
    """What the peer acknowledged on `sock` (tcp_info's tcpi_bytes_acked, Linux 4.1 on)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
    return struct.unpack_from("=Q", info, 120)[0] if len(info) >= 128 else 0


def run_one(args, direction):
    """One transfer: (exit status, line)."""
    start = time.monotonic()
    deadline = start + args.timeout
    done = 0  # Bytes the peer has (up: acknowledged; down: received and checked).

    def line(count, complete):
        seconds = max(time.monotonic() - start, 1e-9)
        rate = f"{count * 8 / seconds / 1e6:.2f} Mbit/s"
        if complete:
            return 0, f"{direction} {count} bytes in {seconds:.3f} s: {rate}, byte-exact"
        # Reset rather than leave the rest to drain behind us.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return 3, (f"{direction} {count} of {args.bytes} bytes in {seconds:.3f} s: {rate}, "
                   f"byte-exact so far, INCOMPLETE")

    sock = socket.create_connection((args.host, args.port), timeout=30)
    with sock:
        sock.sendall(REQUEST.pack(MAGIC, b"U" if direction == "up" else b"D", args.bytes,
                                  args.seed))
        # Short timeouts: the deadline is checked between them.
        sock.settimeout(0.5)
        if direction == "up":
            stream = Stream(args.seed)
            sent = 0
            pending = memoryview(b"")
            status = None
            while status is None:
                if time.monotonic() > deadline:
                    return line(max(bytes_acked(sock) - REQUEST.size, 0), False)
                try:
                    if sent < args.bytes or pending:
                        if not pending:
                            pending = stream.next(min(CHUNK, args.bytes - sent))
                            sent += len(pending)
                        pending = pending[sock.send(pending):]
                        if sent == args.bytes and not pending:
                            sock.shutdown(socket.SHUT_WR)
                    else:
                        status = sock.recv(1)
                except socket.timeout:
                    continue
            if status != b"K":
                return 1, f"FAIL: up: the receiver says the data differs or is short ({status!r})"
            return line(args.bytes, True)
        stream = Stream(args.seed)
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while done < args.bytes:
            if time.monotonic() > deadline:
                return line(done, False)
            try:
                n = sock.recv_into(view, min(CHUNK, args.bytes - done))
            except socket.timeout:
                continue
            if n == 0:
                return 1, f"FAIL: down: the connection ended after {done} of {args.bytes} bytes"
            if view[:n] != stream.next(n):
                return 1, f"FAIL: down: the data differs within bytes {done} to {done + n}"
            done += n
        return line(done, True)


def run(args):
    directions = ["up", "down"] if args.direction == "both" else [args.direction]
    worst = 0
    for direction in directions:
        try:
            status, text = run_one(args, direction)
        except OSError as e:
            status, text = 1, f"FAIL: {direction}: {e}"
        print(text, flush=True)
        if status == 1:
            return 1
        worst = max(worst, status)
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bind", default="127.0.0.1")
    r = sub.add_parser("run")
    r.add_argument("--host", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--bytes", type=int, required=True)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--direction", choices=["up", "down", "both"], default="both")
    r.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
