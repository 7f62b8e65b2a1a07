#!/usr/bin/env python3
"""Both ends of a bulk TCP transfer whose receiver drains slowly, then fast.

  slow_reader.py serve --port P [--slow-seconds S] [--slow-rate B] [--rcvbuf B]
      accepts one connection on 127.0.0.1:P; for S seconds reads at most B bytes a second, then
      reads as fast as it can until end of file; checks every byte against the pattern; closes.
      Prints "read slow=... fast=... total=... ok" (bytes, seconds, bytes/s per phase).
  slow_reader.py send --host H --port P --bytes N [--sndbuf B]
      connects, sends N bytes of the pattern as fast as the socket takes them, shuts down its
      side, waits for the server to close. Prints "progress T SENT" twice a second, then
      "sent N in T s".
"""

import argparse
import socket
import sys
import time

CHUNK = 1 << 16


def pattern(offset, n):
    """Bytes [offset, offset + n) of the stream: a 251-byte cycle (prime: never aligned)."""
    base = bytes((i * 7 + 3) % 256 for i in range(251))
    start = offset % 251
    reps = (start + n) // 251 + 1
    return (base * reps)[start:start + n]


def serve(args):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.rcvbuf:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(1)
    print("listening", flush=True)
    conn, _ = listener.accept()
    start = time.monotonic()
    total = 0
    slow_end = start + args.slow_seconds
    # Slow: 20 reads a second, each of a twentieth of the rate.
    per_tick = max(1, args.slow_rate // 20)
    tick = start
    while time.monotonic() < slow_end:
        data = conn.recv(min(per_tick, CHUNK))
        if not data:
            break
        if data != pattern(total, len(data)):
            sys.exit("FAIL: wrong bytes at offset %d" % total)
        total += len(data)
        tick += len(data) / args.slow_rate
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    slow = total
    slow_time = time.monotonic() - start
    fast_start = time.monotonic()
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        if data != pattern(total, len(data)):
            sys.exit("FAIL: wrong bytes at offset %d" % total)
        total += len(data)
    fast_time = max(time.monotonic() - fast_start, 1e-6)
    conn.close()
    print("read slow=%d in %.2f s (%.0f B/s) fast=%d in %.2f s (%.0f B/s) total=%d ok" %
          (slow, slow_time, slow / slow_time, total - slow, fast_time, (total - slow) / fast_time,
           total), flush=True)


def send(args):
    s = socket.create_connection((args.host, args.port), timeout=args.timeout)
    if args.sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
    start = time.monotonic()
    next_report = start + 0.5
    sent = 0
    while sent < args.bytes:
        n = min(CHUNK * 4, args.bytes - sent)
        sent += s.send(pattern(sent, n))
        now = time.monotonic()
        if now >= next_report:
            print("progress %.2f %d" % (now - start, sent), flush=True)
            next_report += 0.5
    s.shutdown(socket.SHUT_WR)
    while s.recv(CHUNK):
        pass
    print("sent %d in %.2f s" % (sent, time.monotonic() - start), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--slow-seconds", type=float, default=6)
    s.add_argument("--slow-rate", type=int, default=1 << 20)
    s.add_argument("--rcvbuf", type=int, default=0)
    c = sub.add_parser("send")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--bytes", type=int, required=True)
    c.add_argument("--sndbuf", type=int, default=0)
    c.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    serve(args) if args.command == "serve" else send(args)


if __name__ == "__main__":
    main()
