#!/usr/bin/env python3
"""Byte-exact TCP transfers for the end-to-end tests, as two servers on one address:

  --sink-port P     reads --size bytes from each connection, answers with their SHA-256 (hex, one
                    line) and closes;
  --source-port Q   sends --size bytes (a pseudo-random stream from --seed) to each connection and
                    closes.

Each serves --connections connections, then the process exits 0 (1 if a sink connection ended
early). Logs "source sha256 HEX" at start and one line per connection."""

import argparse
import hashlib
import random
import socket
import sys
import threading


def listen(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(4)
    return s


def sink(server, size, connections, failures):
    for _ in range(connections):
        c, peer = server.accept()
        with c:
            h = hashlib.sha256()
            got = 0
            while got < size:
                data = c.recv(min(1 << 20, size - got))
                if not data:
                    break
                h.update(data)
                got += len(data)
            digest = h.hexdigest()
            print("sink %s: %d bytes, sha256 %s" % (peer[0], got, digest), flush=True)
            if got < size:
                failures.append(peer)
            c.sendall((digest + "\n").encode())


def source(server, data, connections):
    for _ in range(connections):
        c, peer = server.accept()
        with c:
            c.sendall(data)
            print("source %s: %d bytes sent" % (peer[0], len(data)), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bind", required=True)
    p.add_argument("--sink-port", type=int, required=True)
    p.add_argument("--source-port", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--connections", type=int, default=1)
    a = p.parse_args()
    data = random.Random(a.seed).randbytes(a.size)
    print("source sha256 %s" % hashlib.sha256(data).hexdigest(), flush=True)
    failures = []
    threads = [
        threading.Thread(target=sink, args=(listen(a.bind, a.sink_port), a.size, a.connections,
                                            failures)),
        threading.Thread(target=source, args=(listen(a.bind, a.source_port), data, a.connections)),
    ]
    print("listening on %s ports %d and %d" % (a.bind, a.sink_port, a.source_port), flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
