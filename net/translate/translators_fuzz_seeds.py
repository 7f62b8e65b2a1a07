#!/usr/bin/env python3
"""Writes the written seeds of //net/translate:translators_fuzz (translators_fuzz_corpus/written_*): whole
conversations in the harness's operations (see translators_fuzz.cc), so the fuzzer starts from
established TCP connections, answered UDP flows, echo replies and inbound forwards rather than from
single frames. Seeds from real guests' captures (real_*) come from tools/fuzz/pcap_seeds.py."""

import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packet"))
import frame_fuzz_seeds as f  # noqa: E402  The frame builders.

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST4 = bytes([10, 0, 2, 15])
GW4 = bytes([10, 0, 2, 2])
GUEST6 = bytes.fromhex("fd0056554e4500000000000000000002")
GW6 = bytes.fromhex("fe800000000000000000000000000001")

FRAME, END, LOOP, CLOCK, PEER, CLIENT, CONSUME, TOGGLE = range(8)
ANSWER = 0x08


def tcp(sport, dport, seq, ack, flags, data=b"", opts=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(opts) // 4) << 4, flags,
                       65535, 0, 0) + opts + data


def tcp6(l4, src=GUEST6, dst=GW6):
    ph = src + dst + struct.pack("!IxxxB", len(l4), 6)
    l4 = l4[:16] + struct.pack("!H", f.csum(ph + l4)) + l4[18:]
    return f.eth(0x86DD) + struct.pack("!IHBB", 6 << 28, len(l4), 6, 64) + src + dst + l4


def udp4(sport, dport, data, dst=GW4):
    return f.ipv4(17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data, GUEST4, dst)


def frame(b, answer=False):
    return bytes([FRAME | (ANSWER if answer else 0)]) + struct.pack("<H", len(b)) + b


def op(code, *args):
    return bytes([code]) + bytes(args)


def loop():
    return op(END) + op(LOOP) + op(CONSUME) + op(LOOP)


SYN_OPTS = bytes([2, 4, 0x05, 0xB4, 1, 3, 3, 7])


def tcp_conversation(v6):
    build = (lambda l4: tcp6(l4)) if v6 else (lambda l4: f.ipv4(6, l4, GUEST4, GW4))
    s = b""
    s += frame(build(tcp(40000, 80, 1000, 0, 0x02, opts=SYN_OPTS))) + loop() + loop()
    s += frame(build(tcp(40000, 80, 1001, 0, 0x10)), answer=True)
    s += frame(build(tcp(40000, 80, 1001, 0, 0x18, b"GET / HTTP/1.0\r\n\r\n")), answer=True)
    s += loop() + op(PEER, 0, 0) + loop() + op(PEER, 0, 1) + loop()
    s += frame(build(tcp(40000, 80, 1019, 0, 0x10)), answer=True) + loop()
    s += op(PEER, 0, 2) + loop()
    s += frame(build(tcp(40000, 80, 1019, 0, 0x11)), answer=True) + loop()
    s += op(CLOCK, 0xE8, 0x03) + loop()
    return s


def tcp_reset_and_loss():
    b = lambda l4: f.ipv4(6, l4, GUEST4, GW4)
    s = frame(b(tcp(40001, 80, 5000, 0, 0x02, opts=SYN_OPTS))) + loop() + loop()
    s += frame(b(tcp(40001, 80, 5001, 0, 0x10)), answer=True) + loop()
    # Data from the host the guest never acks: the timer resends; then the host resets.
    s += op(PEER, 0, 1) + loop() + op(CLOCK, 0xE8, 0x03) + loop() + op(CLOCK, 0xD0, 0x07) + loop()
    s += op(PEER, 0, 3) + loop()
    # A SYN to a closed port, and one to a destination with no route.
    s += frame(b(tcp(40002, 9, 1, 0, 0x02, opts=SYN_OPTS))) + loop() + loop()
    s += frame(f.ipv4(6, tcp(40003, 80, 1, 0, 0x02, opts=SYN_OPTS), GUEST4,
                      bytes([192, 0, 2, 1]))) + loop()
    return s


SACK_SYN_OPTS = SYN_OPTS + bytes([1, 1, 4, 2])


def sack_blocks(*blocks):
    return bytes([1, 1, 5, 2 + 8 * len(blocks)]) + b"".join(struct.pack("!II", a, b)
                                                            for a, b in blocks)


def tcp_sack_and_holes():
    b = lambda l4: f.ipv4(6, l4, GUEST4, GW4)
    s = frame(b(tcp(40004, 80, 6000, 0, 0x02, opts=SACK_SYN_OPTS))) + loop() + loop()
    s += frame(b(tcp(40004, 80, 6001, 0, 0x10)), answer=True) + loop()
    # Guest data past two holes (held, SACKed), then the holes, out of order.
    s += frame(b(tcp(40004, 80, 7001, 0, 0x18, bytes(range(200)) * 5)), answer=True)
    s += frame(b(tcp(40004, 80, 9001, 0, 0x18, bytes(500))), answer=True) + op(END) + loop()
    s += frame(b(tcp(40004, 80, 6001, 0, 0x18, bytes(1000))), answer=True)
    s += frame(b(tcp(40004, 80, 8001, 0, 0x18, bytes(1000))), answer=True) + op(END) + loop()
    # Host data, and ACKs from the guest with SACK blocks (its own view, and
    # nonsense), so the scoreboard and its checks run.
    s += op(PEER, 0, 1) + loop()
    s += frame(b(tcp(40004, 80, 9501, 0, 0x10, opts=sack_blocks((1, 2), (0xFFFFFF00, 10)))),
               answer=True) + loop()
    s += op(CLOCK, 0xE8, 0x03) + loop()
    s += frame(b(tcp(40004, 80, 9501, 0, 0x14)), answer=True) + loop()
    return s


def udp_flows():
    s = frame(udp4(41000, 53, bytes(12) + b"\x07example\x03org\x00\x00\x01\x00\x01")) + loop()
    s += frame(udp4(41001, 7, b"echo me" * 100)) + loop()
    s += frame(udp4(41002, 9, b"nobody")) + loop() + loop()
    big = udp4(41003, 7, bytes(range(256)) * 30)
    s += frame(big) + loop() + op(CLOCK, 0x10, 0x27) + loop()
    return s


def inbound():
    s = op(CLIENT | 0 << 3) + loop() + loop()
    # The guest accepts: SYN-ACK answering our SYN (its ports, ack = our ISN + 1).
    s += frame(f.ipv4(6, tcp(80, 1, 7000, 0, 0x12, opts=SYN_OPTS), GUEST4, GW4), answer=True)
    s += loop() + op(PEER, 0, 0) + loop()
    s += frame(f.ipv4(6, tcp(80, 1, 7001, 0, 0x10, b"hello"), GUEST4, GW4), answer=True) + loop()
    s += op(CLIENT | 1 << 3) + loop() + op(CLIENT | 7 << 3) + loop()
    return s


def services():
    s = frame(f.FRAMES["arp_request"]) + frame(f.FRAMES["icmp4_echo"]) + frame(f.FRAMES["icmp6_rs"])
    for name in sorted(f.FRAMES):
        if name.startswith("dhcp") and f.FRAMES[name] is not None:
            s += frame(f.FRAMES[name])
    return s + loop() + op(TOGGLE) + loop() + op(TOGGLE) + loop()


SEEDS = {
    "written_tcp4": bytes([0x01]) + tcp_conversation(False),
    "written_tcp4_small_buffers": bytes([0x00]) + tcp_conversation(False),
    "written_tcp6_csum": bytes([0x03]) + tcp_conversation(True),
    "written_tcp_loss_reset": bytes([0x09]) + tcp_reset_and_loss(),
    "written_tcp_sack": bytes([0x21]) + tcp_sack_and_holes(),
    "written_udp": bytes([0x01]) + udp_flows(),
    "written_udp_single_buffers": bytes([0x18]) + udp_flows(),
    "written_inbound": bytes([0x01]) + inbound(),
    "written_services": bytes([0x05]) + services(),
}


def main():
    out = os.path.join(HERE, "translators_fuzz_corpus")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as fh:
            fh.write(data)


if __name__ == "__main__":
    main()
