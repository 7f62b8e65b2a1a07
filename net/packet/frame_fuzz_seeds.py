#!/usr/bin/env python3
"""Writes the seed corpora of //net/packet:frame_fuzz and //net/gateway:dispatch_fuzz
(frame_fuzz_corpus/, dispatch_fuzz_corpus/) in their input format (net/packet/fuzz_input.h: the
piece size, the offloads negotiated, the virtio-net header, the frame): one valid frame of each
kind the parser and the handlers know, each whole and cut into small pieces, without offloads;
then segmentation requests (gso_*): well-formed ones of each type, and one for each way a
guest's header can be wrong (checked by CheckGuestOffload, net/packet/offload.h)."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST = bytes.fromhex("525400123456")
GW = bytes.fromhex("9a559a559a55")


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(t, dst=GW):
    return dst + GUEST + struct.pack("!H", t)


def ipv4(proto, l4, src=bytes([10, 0, 2, 15]), dst=bytes([10, 0, 2, 2])):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0, src, dst)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    ph = src + dst + struct.pack("!BBH", 0, proto, len(l4))
    if proto in (6, 17):
        at = 16 if proto == 6 else 6
        c = csum(ph + l4)
        l4 = l4[:at] + struct.pack("!H", c) + l4[at + 2:]
    return eth(0x0800) + h + l4


def ipv6(nh, l4, src=bytes.fromhex("fd000000000000000000000000000015"),
         dst=bytes.fromhex("fd000000000000000000000000000002"), hop_limit=64):
    if nh == 58:
        ph = src + dst + struct.pack("!IxxxB", len(l4), nh)
        l4 = l4[:2] + struct.pack("!H", csum(ph + l4)) + l4[4:]
    return eth(0x86DD) + struct.pack("!IHBB", 6 << 28, len(l4), nh, hop_limit) + src + dst + l4


def tcp(flags, opts=b"", data=b""):
    return struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, (5 + len(opts) // 4) << 4, flags, 64240, 0,
                       0) + opts + data


SYN_OPTS = bytes([2, 4, 5, 0xB4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7])

FRAMES = {
    "tcp4_syn": ipv4(6, tcp(0x02, SYN_OPTS)),
    "tcp4_data": ipv4(6, tcp(0x18, b"", b"GET / HTTP/1.0\r\n\r\n")),
    "udp4_dns": ipv4(17, struct.pack("!HHHH", 40000, 53, 8 + 12, 0) + bytes(12)),
    "icmp4_echo": ipv4(1, bytes([8, 0, 0xF7, 0xFE, 0, 1, 0, 0])),
    "ipv4_options": None,
    "tcp6_syn": ipv6(6, tcp(0x02, SYN_OPTS)),
    "udp6_ext": ipv6(0, bytes([60, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0]) +
                     struct.pack("!HHHH", 546, 547, 12, 0) + b"abcd"),
    "icmp6_rs": ipv6(58, bytes([133, 0, 0, 0, 0, 0, 0, 0])),
    "arp_request": b"\xff" * 6 + GUEST + struct.pack("!HHHBBH", 0x0806, 1, 0x0800, 6, 4, 1) +
                   GUEST + bytes([10, 0, 2, 15]) + bytes(6) + bytes([10, 0, 2, 2]),
    "vlan": GW + GUEST + bytes([0x81, 0, 0, 5, 0x08, 0x06]) + bytes(28),
}
opt_hdr = struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + 8, 1, 0, 64, 17, 0, bytes(4), bytes(4)) + bytes(
    [1, 1, 1, 0])
opt_hdr = opt_hdr[:10] + struct.pack("!H", csum(opt_hdr)) + opt_hdr[12:]
FRAMES["ipv4_options"] = eth(0x0800) + opt_hdr + struct.pack("!HHHH", 1, 2, 8, 0)

GUEST_LL = bytes.fromhex("fe80000000000000505400fffe123456")
GW_LL = bytes.fromhex("fe800000000000000000000000000001")


def dhcp(msg_type, extra=b""):
    m = struct.pack("!BBBBIHH", 1, 1, 6, 0, 0x01020304, 0, 0) + bytes(16) + GUEST + bytes(10 + 192)
    m += bytes([99, 130, 83, 99, 53, 1, msg_type]) + extra + bytes([255])
    udp = struct.pack("!HHHH", 68, 67, 8 + len(m), 0) + m
    return ipv4(17, udp, src=bytes(4), dst=b"\xff" * 4)


FRAMES["dhcp_discover"] = dhcp(1, bytes([61, 7, 1]) + GUEST + bytes([55, 4, 1, 3, 6, 15]))
FRAMES["dhcp_request"] = dhcp(3, bytes([50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2]))
FRAMES["ndp_rs"] = ipv6(58, bytes([133, 0, 0, 0, 0, 0, 0, 0, 1, 1]) + GUEST, src=GUEST_LL,
                        dst=bytes.fromhex("ff020000000000000000000000000002"), hop_limit=255)
FRAMES["ndp_ns"] = ipv6(58, bytes([135, 0, 0, 0, 0, 0, 0, 0]) + GW_LL + bytes([1, 1]) + GUEST,
                        src=GUEST_LL, dst=bytes.fromhex("ff0200000000000000000001ff000001"),
                        hop_limit=255)



# The input prefix (net/packet/fuzz_input.h).
NEEDS_CSUM = 1
GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 1, 3, 4, 5, 0x80
OFF_CSUM, OFF_TSO4, OFF_TSO6, OFF_ECN, OFF_USO = 1, 2, 4, 8, 16
OFF_ALL = OFF_CSUM | OFF_TSO4 | OFF_TSO6 | OFF_ECN | OFF_USO


def vnet_hdr(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def prefix(piece, offloads=0, hdr=None):
    return bytes([piece, offloads]) + (hdr if hdr is not None else vnet_hdr())


def gso(proto, v6, payload, gso_size, **changes):
    """A segmentation request as a Linux guest's driver sends one: (header fields, frame)."""
    data = bytes(i & 0xFF for i in range(payload))
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 5 << 4, 0x18, 64240, 0, 0) + data
    else:
        l4 = struct.pack("!HHHH", 40000, 5201, 8 + len(data), 0) + data
    frame = ipv6(proto, l4) if v6 else ipv4(proto, l4)
    l4_at = 14 + (40 if v6 else 20)
    fields = dict(flags=NEEDS_CSUM,
                  gso_type=(GSO_UDP_L4 if proto == 17 else GSO_TCPV6 if v6 else GSO_TCPV4),
                  hdr_len=l4_at + (20 if proto == 6 else 8), gso_size=gso_size, csum_start=l4_at,
                  csum_offset=16 if proto == 6 else 6)
    fields.update(changes)
    return fields, frame


def gso_seeds():
    """(name, offloads, header fields, frame) of each segmentation seed."""
    seeds = []
    for name, proto, v6 in (("tcp4", 6, False), ("tcp6", 6, True), ("udp4", 17, False),
                            ("udp6", 17, True)):
        fields, frame = gso(proto, v6, 8000, 1448 if proto == 6 else 1400)
        seeds.append(("gso_%s" % name, OFF_ALL, fields, frame))
    fields, frame = gso(6, False, 65535 - 40, 1448)
    seeds.append(("gso_tcp4_64k", OFF_ALL, fields, frame))
    fields, frame = gso(6, False, 8000, 1448, gso_type=GSO_TCPV4 | GSO_ECN)
    seeds.append(("gso_tcp4_ecn", OFF_ALL, fields, frame))
    # Each way a header can be wrong.
    fields, frame = gso(6, False, 8000, 0)
    seeds.append(("gso_bad_size_zero", OFF_ALL, fields, frame))
    fields, frame = gso(6, True, 8000, 8001)
    seeds.append(("gso_bad_size_past_payload", OFF_ALL, fields, frame))
    fields, frame = gso(17, False, 8000, 1400, gso_type=GSO_UDP)
    seeds.append(("gso_bad_type_ufo", OFF_ALL, fields, frame))
    fields, frame = gso(6, False, 8000, 1448, gso_type=0x42)
    seeds.append(("gso_bad_type_unknown", OFF_ALL, fields, frame))
    fields, frame = gso(17, False, 8000, 1400, gso_type=GSO_UDP_L4 | GSO_ECN)
    seeds.append(("gso_bad_type_ecn_on_udp", OFF_ALL, fields, frame))
    fields, frame = gso(6, True, 8000, 1448, gso_type=GSO_TCPV4)
    seeds.append(("gso_bad_type_not_the_protocol", OFF_ALL, fields, frame))
    fields, frame = gso(17, True, 8000, 1400, gso_type=GSO_TCPV6)
    seeds.append(("gso_bad_type_tcp_on_udp", OFF_ALL, fields, frame))
    fields, frame = gso(6, False, 8000, 1448)
    seeds.append(("gso_bad_not_negotiated", OFF_CSUM | OFF_TSO6, fields, frame))
    fields, frame = gso(6, False, 8000, 1448, gso_type=GSO_TCPV4 | GSO_ECN)
    seeds.append(("gso_bad_ecn_not_negotiated", OFF_CSUM | OFF_TSO4, fields, frame))
    fields, frame = gso(6, False, 8000, 1448)
    seeds.append(("gso_bad_csum_not_negotiated", 0, fields, frame))
    fields, frame = gso(6, False, 8000, 1448, hdr_len=9000)
    seeds.append(("gso_bad_hdr_len_past_frame", OFF_ALL, fields, frame))
    fields, frame = gso(6, False, 8000, 1448, csum_start=8050)
    seeds.append(("gso_bad_csum_out_of_range", OFF_ALL, fields, frame))
    fields, frame = gso(6, False, 8000, 1448, csum_offset=6)
    seeds.append(("gso_bad_csum_field", OFF_ALL, fields, frame))
    fields, frame = gso(6, False, 8000, 1448, flags=0)
    seeds.append(("gso_bad_no_csum", OFF_ALL, fields, frame))
    fields, frame = gso(6, False, 8000, 1448)
    seeds.append(("gso_bad_ip_length", OFF_ALL, fields, frame + bytes(64)))
    fields, frame = gso(17, False, 8000, 1400)
    frame = frame[:38] + struct.pack("!H", 8 + 4000) + frame[40:]  # UDP length short of the IP's.
    seeds.append(("gso_bad_udp_length", OFF_ALL, fields, frame))
    fields, frame = gso(6, False, 100, 0, gso_type=0, csum_start=200)
    seeds.append(("csum_bad_out_of_range", OFF_ALL, fields, frame))
    return seeds


def main():
    for corpus in ("frame_fuzz_corpus", "../gateway/dispatch_fuzz_corpus"):
        out = os.path.normpath(os.path.join(HERE, corpus))
        os.makedirs(out, exist_ok=True)
        for name, frame in FRAMES.items():
            for piece in (0, 3):
                with open(os.path.join(out, "%s_%d" % (name, piece)), "wb") as f:
                    f.write(prefix(piece) + frame)
        for name, offloads, fields, frame in gso_seeds():
            for piece in (0, 251):
                with open(os.path.join(out, "%s_%d" % (name, piece)), "wb") as f:
                    f.write(prefix(piece, offloads, vnet_hdr(**fields)) + frame)


# Imported by translators_fuzz_seeds.py and tools/fuzz/pcap_seeds.py for its builders: writes only
# when run.
if __name__ == "__main__":
    main()
