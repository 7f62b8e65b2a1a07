#!/usr/bin/env python3
"""Checks a vunet --pcap capture of the guest run in vunet_test.sh.

Usage: pcap_check.py FILE GUEST_MAC [--icmp]

Parses the classic libpcap format itself (no tcpdump needed): the global header (magic, version 2.4,
snaplen 65535, Ethernet), every record (lengths within the snaplen and the original length, nanosecond
fractions below 1e9, timestamps in order, the file ending at a record boundary), then classifies the
frames by direction (source MAC GUEST_MAC: from the guest) and requires the DHCP exchange (DISCOVER and
REQUEST from the guest, OFFER and ACK to it), the router advertisement to the guest, ICMP and ICMPv6
echo requests from the guest, and, with --icmp (vunet's ICMP echo ran), the echo replies to it.
Prints one summary line and the frame count ("frames N"); exits 1 with the reasons on failure.
"""

import struct
import sys

MAGICS = {0xA1B2C3D4: 1_000_000, 0xA1B23C4D: 1_000_000_000}
DHCP_TYPES = {1: "discover", 2: "offer", 3: "request", 5: "ack", 6: "nak"}


def dhcp_type(udp_payload):
    """The DHCP message type (option 53) of a BOOTP payload, or None."""
    if len(udp_payload) < 240 or udp_payload[236:240] != b"\x63\x82\x53\x63":
        return None
    i = 240
    while i < len(udp_payload):
        code = udp_payload[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(udp_payload):
            break
        length = udp_payload[i + 1]
        if code == 53 and length == 1 and i + 2 < len(udp_payload):
            return udp_payload[i + 2]
        i += 2 + length
    return None


def classify(frame):
    """A short name for the frames the checks care about, or None."""
    if len(frame) < 14:
        return None
    ether_type = struct.unpack("!H", frame[12:14])[0]
    if ether_type == 0x0806:
        return "arp"
    if ether_type == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        l4 = frame[14 + ihl :]
        if proto == 1 and l4:
            return {8: "icmp-echo-request", 0: "icmp-echo-reply"}.get(l4[0])
        if proto == 17 and len(l4) >= 8:
            sport, dport = struct.unpack("!HH", l4[0:4])
            if {sport, dport} == {67, 68}:
                t = dhcp_type(l4[8:])
                return "dhcp-" + DHCP_TYPES.get(t, str(t))
            return "udp"
        if proto == 6:
            return "tcp"
    if ether_type == 0x86DD and len(frame) >= 55 and frame[20] == 58:
        return {
            128: "icmp6-echo-request",
            129: "icmp6-echo-reply",
            133: "router-solicitation",
            134: "router-advertisement",
            135: "neighbor-solicitation",
            136: "neighbor-advertisement",
        }.get(frame[54])
    return None


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    path, guest_mac = argv[1], bytes.fromhex(argv[2].replace(":", ""))
    icmp = "--icmp" in argv[3:]
    errors = []
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        print(f"FAIL: {path}: {len(data)} bytes, no global header")
        return 1
    for endian in ("<", ">"):
        magic = struct.unpack(endian + "I", data[0:4])[0]
        if magic in MAGICS:
            break
    else:
        print(f"FAIL: bad magic {data[0:4].hex()}")
        return 1
    frac_limit = MAGICS[magic]
    major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(endian + "HHiIII", data[4:24])
    if (major, minor) != (2, 4):
        errors.append(f"version {major}.{minor}, not 2.4")
    if snaplen != 65535:
        errors.append(f"snaplen {snaplen}, not 65535")
    if linktype != 1:
        errors.append(f"link type {linktype}, not 1 (Ethernet)")

    counts = {}
    frames = 0
    last_ts = 0
    pos = 24
    while pos < len(data):
        if pos + 16 > len(data):
            errors.append(f"a partial record header at byte {pos}")
            break
        sec, frac, incl, orig = struct.unpack(endian + "IIII", data[pos : pos + 16])
        pos += 16
        if incl > snaplen or incl > orig:
            errors.append(f"record {frames}: incl_len {incl}, orig_len {orig}")
        if frac >= frac_limit:
            errors.append(f"record {frames}: timestamp fraction {frac}")
        ts = sec * frac_limit + frac
        if ts < last_ts:
            errors.append(f"record {frames}: timestamp goes back")
        last_ts = ts
        if pos + incl > len(data):
            errors.append(f"record {frames}: {incl} bytes, the file ends first")
            break
        frame = data[pos : pos + incl]
        pos += incl
        frames += 1
        kind = classify(frame)
        if kind is not None:
            direction = "from-guest" if frame[6:12] == guest_mac else "to-guest"
            key = f"{kind}:{direction}"
            counts[key] = counts.get(key, 0) + 1

    required = [
        "dhcp-discover:from-guest",
        "dhcp-offer:to-guest",
        "dhcp-request:from-guest",
        "dhcp-ack:to-guest",
        "router-advertisement:to-guest",
        "icmp-echo-request:from-guest",
        "icmp6-echo-request:from-guest",
        "tcp:from-guest",
        "udp:from-guest",
    ]
    if icmp:
        required += ["icmp-echo-reply:to-guest", "icmp6-echo-reply:to-guest"]
    for key in required:
        if counts.get(key, 0) == 0:
            errors.append(f"no {key.replace(':', ' ')}")
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"pcap: magic 0x{magic:08x} {'big' if endian == '>' else 'little'}-endian, {summary}")
    print(f"frames {frames}")
    for e in errors:
        print(f"FAIL: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
