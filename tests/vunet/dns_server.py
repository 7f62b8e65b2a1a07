#!/usr/bin/env python3
"""A DNS server for one name: answers A queries for NAME with ADDRESS, and everything else with
NXDOMAIN. Prints "listening", then one line per query it answered.

  dns_server.py --bind 127.0.0.53 --port 53 --name example.org --address 192.0.2.7
"""

import argparse
import socket
import struct


def question(msg):
    """(name, qtype, end offset) of the first question, or None."""
    at, labels = 12, []
    while at < len(msg):
        n = msg[at]
        at += 1
        if n == 0:
            break
        if n > 63 or at + n > len(msg):
            return None
        labels.append(msg[at:at + n].decode("ascii", "replace").lower())
        at += n
    if at + 4 > len(msg):
        return None
    qtype = struct.unpack("!H", msg[at:at + 2])[0]
    return ".".join(labels), qtype, at + 4


def answer(msg, name, address):
    if len(msg) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", msg[:6])
    q = question(msg) if qdcount >= 1 else None
    if q is None or flags & 0x8000:
        return None
    qname, qtype, end = q
    rd = flags & 0x0100
    if qname == name and qtype == 1:
        header = struct.pack("!HHHHHH", qid, 0x8400 | rd | 0x0080, 1, 1, 0, 0)
        record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        return header + msg[12:end] + record
    header = struct.pack("!HHHHHH", qid, 0x8403 | rd | 0x0080, 1, 0, 0, 0)
    return header + msg[12:end]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="127.0.0.53")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", required=True)
    args = parser.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args.bind, args.port))
    print("listening", flush=True)
    while True:
        msg, peer = s.recvfrom(4096)
        reply = answer(msg, args.name.lower().rstrip("."), args.address)
        if reply is not None:
            s.sendto(reply, peer)
            q = question(msg)
            print("answered %s type %d from %s:%d" % (q[0], q[1], peer[0], peer[1]), flush=True)


if __name__ == "__main__":
    main()
