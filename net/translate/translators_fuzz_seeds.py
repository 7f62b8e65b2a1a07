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


# Migration state (setup bit 6): records of the stream, sealed by the harness.
STATE, RAW = 0x40, 0x80
MAC = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
LO4 = bytes([127, 0, 0, 1])


def record(rtype, body):
    return struct.pack("<HHI", rtype, 0, len(body)) + body


def addr(a):
    return bytes([4 if len(a) == 4 else 6]) + a


def key(proto, local, lport, remote, rport):
    return bytes([proto]) + addr(local) + addr(remote) + struct.pack("<HH", lport, rport)


def blob(b):
    return struct.pack("<I", len(b)) + b


def tcp_flow(lport, received=b"", unacked=b"", unsent=b"", in_flight=0):
    isn = 50000
    una = isn + 1
    # flags (SACK), guest and our window scales, MSS, then the sequence state:
    # isn, snd_una, snd_nxt, snd_high, rcv_nxt, rcv_acked, guest_wnd, wnd_sent.
    b = key(6, GUEST4, lport, GW4, 80) + MAC + bytes([0x20, 7, 7]) + struct.pack("<H", 1460)
    b += struct.pack("<8I", isn, una, una + in_flight, una + in_flight, 9001, 9001, 65535 << 7,
                     65535 << 7)
    b += struct.pack("<q", 10**9)
    # The host socket's image: 127.0.0.1:lport+1000 to the harness's listener on port 80.
    b += bytes([4]) + addr(LO4) + struct.pack("<H", lport + 1000) + addr(LO4) + struct.pack("<H", 80)
    b += struct.pack("<II", 7000, 8000) + blob(unacked) + blob(unsent) + blob(received)
    b += bytes([0, 0]) + struct.pack("<I", 65483) + bytes([1, 7, 7, 1, 0]) + struct.pack("<I", 0)
    b += struct.pack("<5I", 8000, 65535, 65535, 65535, 8000)
    return record(2, b)


def migration_state():
    s = record(1, MAC + addr(GUEST4) + addr(GUEST6) +
               addr(bytes.fromhex("fe800000000000000000000000000015")))
    s += tcp_flow(40010, received=bytes(range(256)) * 8, unacked=b"up" * 300, unsent=b"x" * 900,
                  in_flight=1000)
    s += tcp_flow(40011)
    s += record(3, key(6, GUEST4, 40012, GW4, 80) + MAC + struct.pack("<II", 1, 2))
    s += record(4, bytes([0]) + key(17, GUEST4, 41010, GW4, 53) + MAC + bytes([1, 0]) +
                struct.pack("<q", 5 * 10**9) + addr(LO4) + struct.pack("<H", 41010) + addr(LO4) +
                struct.pack("<H", 53))
    s += record(5, key(1, GUEST4, 7, GW4, 0) + MAC + struct.pack("<q", -1))
    return s


def with_state(state, setup=STATE | 0x05):
    return bytes([setup]) + struct.pack("<H", len(state)) + state


def after_migration():
    # The guest runs at the destination: the queue starts, the guest acks
    # what it was sent and sends more; the host peers act.
    b = lambda l4: f.ipv4(6, l4, GUEST4, GW4)
    s = op(TOGGLE) + loop()
    s += frame(b(tcp(40010, 80, 9001, 51001, 0x10))) + loop()
    s += frame(b(tcp(40010, 80, 9001, 51001, 0x18, b"after the move"))) + loop()
    s += op(PEER, 0, 0) + loop() + op(CLOCK, 0xE8, 0x03) + loop()
    s += frame(udp4(41010, 53, bytes(12) + b"\x07example\x03org\x00\x00\x01\x00\x01")) + loop()
    s += frame(f.FRAMES["icmp4_echo"]) + loop()
    return s


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
    "written_state": with_state(migration_state()) + after_migration(),
    "written_state_raw": with_state(b"VUNETMIG\x01\x00" + bytes(6) + migration_state(),
                                    STATE | RAW | 0x05) + after_migration(),
}


def main():
    out = os.path.join(HERE, "translators_fuzz_corpus")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as fh:
            fh.write(data)


if __name__ == "__main__":
    main()
