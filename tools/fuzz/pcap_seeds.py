#!/usr/bin/env python3
"""Turns a vunet --pcap capture of a real guest into fuzz seeds:

  net/packet/frame_fuzz_corpus/real_NAME_N       every distinct frame, both ways (frame_fuzz's format,
                                          net/packet/fuzz_input.h: a piece-size byte, every
                                          offload negotiated, a header asking for none, the frame)
  net/gateway/dispatch_fuzz_corpus/real_NAME_N    every distinct frame from the guest
  net/translate/translators_fuzz_corpus/real_NAME   the guest's frames in order, as translators_fuzz
                                          operations, its addresses and ports moved to the
                                          harness's (10.0.2.15 -> 10.0.2.2, TCP to the gateway's
                                          port 80, UDP to 53 or the echo port 7), checksums
                                          recomputed, TCP segments answering the harness's last
                                          one, the event loop run after each

Usage: pcap_seeds.py NAME CAPTURE.pcap [GATEWAY_MAC]   (run from anywhere; writes into the tree)
"""

import hashlib
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "net", "packet"))
from frame_fuzz_seeds import OFF_ALL, csum, prefix  # noqa: E402  Checksum, fuzz input prefix.
GATEWAY_MAC = bytes.fromhex("9a559a559a55")
HARNESS_GUEST4 = bytes([10, 0, 2, 15])
HARNESS_GW4 = bytes([10, 0, 2, 2])
HARNESS_GUEST6 = bytes.fromhex("fd0056554e4500000000000000000002")
MAX_PER_KIND = 6  # Distinct frames kept per (direction, protocol, size class).


def frames(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        sys.exit("pcap_seeds: %s is not a little-endian pcap file" % path)
    at = 24
    while at + 16 <= len(data):
        _, _, incl, _ = struct.unpack("<IIII", data[at:at + 16])
        yield data[at + 16:at + 16 + incl]
        at += 16 + incl


def kind(frame):
    """(protocol name, guest port hint) of a frame, for grouping."""
    if len(frame) < 14:
        return "short"
    t = struct.unpack("!H", frame[12:14])[0]
    if t == 0x0806:
        return "arp"
    if t == 0x0800 and len(frame) >= 34:
        return {1: "icmp4", 6: "tcp4", 17: "udp4"}.get(frame[23], "ip4")
    if t == 0x86DD and len(frame) >= 54:
        return {58: "icmp6", 6: "tcp6", 17: "udp6"}.get(frame[20], "ip6")
    return "other"


def l4_checksum(src, dst, proto, l4, at):
    l4 = bytearray(l4)
    l4[at:at + 2] = b"\0\0"
    if len(src) == 4:
        ph = src + dst + struct.pack("!BBH", 0, proto, len(l4))
    else:
        ph = src + dst + struct.pack("!IxxxB", len(l4), proto)
    c = csum(ph + bytes(l4))
    if proto == 17 and c == 0:
        c = 0xFFFF
    l4[at:at + 2] = struct.pack("!H", c)
    return bytes(l4)


def retarget(frame, guest4, gw4, guest6):
    """The frame with the guest's addresses and the gateway's moved to the harness's."""
    t = struct.unpack("!H", frame[12:14])[0]
    checksum_at = {6: 16, 17: 6, 58: 2}
    if t == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 15) * 4
        ip = bytearray(frame[14:14 + ihl])
        proto = ip[9]
        src, dst = bytes(ip[12:16]), bytes(ip[16:20])
        if src == guest4:
            src = HARNESS_GUEST4
        if dst == gw4:
            dst = HARNESS_GW4
        ip[12:16], ip[16:20] = src, dst
        ip[10:12] = b"\0\0"
        ip[10:12] = struct.pack("!H", csum(bytes(ip)))
        total = struct.unpack("!H", ip[2:4])[0]
        l4 = frame[14 + ihl:14 + total]
        if proto in (6, 17) and len(l4) >= 8:
            l4 = retarget_port(proto, l4, dst == HARNESS_GW4)
            l4 = l4_checksum(src, dst, proto, l4, checksum_at[proto])
        return frame[:14] + bytes(ip) + l4 + frame[14 + total:]
    if t == 0x86DD and len(frame) >= 54:
        nh = frame[20]
        src, dst = frame[22:38], frame[38:54]
        if src == guest6:
            src = HARNESS_GUEST6
        l4 = frame[54:]
        if nh in (6, 17, 58) and len(l4) >= 8:
            if nh != 58:
                l4 = retarget_port(nh, l4, dst[:2] == b"\xfe\x80" or False)
            l4 = l4_checksum(src, dst, nh, l4, checksum_at[nh])
        return frame[:22] + src + dst + l4
    return frame


def retarget_port(proto, l4, to_gateway):
    if not to_gateway:
        return l4
    dport = struct.unpack("!H", l4[2:4])[0]
    if proto == 6:
        dport = 80
    elif dport != 53:
        dport = 7
    return l4[:2] + struct.pack("!H", dport) + l4[4:]


def first_addresses(captured, gw_mac):
    """The guest's IPv4 and IPv6 addresses and the gateway's IPv4, from its frames."""
    guest4 = gw4 = guest6 = None
    for f in captured:
        if f[6:12] == gw_mac or len(f) < 34:
            continue
        t = struct.unpack("!H", f[12:14])[0]
        if t == 0x0800 and f[23] in (1, 6, 17) and f[26:30] != bytes(4):
            guest4 = guest4 or f[26:30]
            if f[23] in (1, 6):
                gw4 = gw4 or f[30:34]
        if t == 0x86DD and len(f) >= 54 and f[22:24] not in (b"\xfe\x80", b"\0\0"):
            guest6 = guest6 or f[22:38]
    return guest4, gw4, guest6


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    name, capture = sys.argv[1], sys.argv[2]
    gw_mac = bytes.fromhex(sys.argv[3].replace(":", "")) if len(sys.argv) > 3 else GATEWAY_MAC
    captured = list(frames(capture))
    guest4, gw4, guest6 = first_addresses(captured, gw_mac)

    kept = {}
    seen = set()
    for f in captured:
        to_guest = f[6:12] == gw_mac
        group = (to_guest, kind(f), min(len(f) // 512, 4))
        digest = hashlib.sha256(f).digest()
        if digest in seen or len(kept.setdefault(group, [])) >= MAX_PER_KIND:
            continue
        seen.add(digest)
        kept[group].append(f)
    n = 0
    for (to_guest, _, _), group in sorted(kept.items()):
        for f in group:
            piece = prefix(0 if n % 3 else 7, OFF_ALL)
            write(os.path.join(ROOT, "net/packet/frame_fuzz_corpus", "real_%s_%d" % (name, n)), piece + f)
            if not to_guest:
                write(os.path.join(ROOT, "net/gateway/dispatch_fuzz_corpus", "real_%s_%d" % (name, n)),
                      piece + f)
            n += 1

    # translators_fuzz: the conversation.
    FRAME, END, LOOP, PEER, CONSUME, ANSWER = 0, 1, 2, 4, 6, 0x08
    ops = bytearray([0x01])  # Mergeable receive buffers, as real guests negotiate.
    count = 0
    for f in captured:
        if f[6:12] == gw_mac or count >= 400:
            continue
        g = retarget(f, guest4, gw4, guest6)
        k = kind(g)
        flags = 0
        tcp_at = None
        if k == "tcp4":
            tcp_at = 14 + (g[14] & 15) * 4
        elif k == "tcp6":
            tcp_at = 54
        if tcp_at is not None and not g[tcp_at + 13] & 0x02:
            flags |= ANSWER  # Not a SYN: it answers the harness's latest segment.
        ops += bytes([FRAME | flags]) + struct.pack("<H", len(g)) + g
        ops += bytes([END, LOOP, CONSUME, LOOP])
        if tcp_at is not None:
            data_off = (g[tcp_at + 12] >> 4) * 4
            if len(g) > tcp_at + data_off:
                ops += bytes([PEER, 0, 1, LOOP, CONSUME])  # The host answers a request.
            if g[tcp_at + 13] & 0x01:
                ops += bytes([PEER, 0, 2, LOOP, CONSUME])  # And closes after the guest.
        count += 1
    write(os.path.join(ROOT, "net/translate/translators_fuzz_corpus", "real_%s" % name), bytes(ops))
    print("pcap_seeds: %d frames read; %d distinct seeds; %d guest frames in the conversation" %
          (len(captured), n, count))


if __name__ == "__main__":
    main()
