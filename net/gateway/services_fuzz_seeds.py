#!/usr/bin/env python3
"""Writes the seed corpus of //net/gateway:services_fuzz (services_fuzz_corpus/): the
messages a guest's DHCP, DHCPv6 and NDP clients send, with the options they
carry, each whole and cut into 3-byte iovecs. The first byte of an input is
the selector services_fuzz.cc describes; the harness builds the headers."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "services_fuzz_corpus")
GUEST = bytes.fromhex("525400123456")
DUID = bytes.fromhex("00030001") + GUEST  # DUID-LL.


def dhcp(msg_type, options=b"", ciaddr=b"\0" * 4, flags=0x8000):
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x12345678, 0, flags, ciaddr,
                        b"\0" * 4, b"\0" * 4, b"\0" * 4, GUEST + b"\0" * 10, b"", b"")
    opts = bytes([53, 1, msg_type]) + options + bytes([255])
    return fixed + bytes([99, 130, 83, 99]) + opts


def opt6(code, value):
    return struct.pack("!HH", code, len(value)) + value


def dhcpv6(msg_type, options):
    return bytes([msg_type, 0xAB, 0xCD, 0xEF]) + b"".join(options)


def ia_na(iaid=1, addrs=()):
    inner = b"".join(opt6(5, bytes.fromhex(a) + struct.pack("!II", 3600, 7200)) for a in addrs)
    return opt6(3, struct.pack("!III", iaid, 0, 0) + inner)


GUEST6 = "fd000000000000000000000000000015"
SERVER_DUID = opt6(2, bytes.fromhex("00030001") + bytes.fromhex("9a559a559a55"))

SEEDS = {
    # DHCPv4 (selector 0).
    "dhcp_discover": (0, dhcp(1, bytes([55, 4, 1, 3, 6, 15]) + bytes([57, 2, 2, 64]) +
                              bytes([61, 7, 1]) + GUEST + bytes([12, 5]) + b"guest")),
    "dhcp_request": (0, dhcp(3, bytes([50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2]) +
                             bytes([55, 3, 1, 3, 6]))),
    "dhcp_request_other_server": (0, dhcp(3, bytes([50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 9]))),
    "dhcp_renew": (0, dhcp(3, b"", ciaddr=bytes([10, 0, 2, 15]), flags=0)),
    "dhcp_inform": (0, dhcp(8, bytes([55, 2, 6, 119]), ciaddr=bytes([10, 0, 2, 15]))),
    "dhcp_release": (0, dhcp(7, bytes([54, 4, 10, 0, 2, 2]))),
    "dhcp_padded": (0, dhcp(1, bytes([0, 0, 0, 55, 1, 3, 0]))),
    # DHCPv6 (selector 1).
    "dhcpv6_solicit": (1, dhcpv6(1, [opt6(1, DUID), opt6(8, b"\0\0"), opt6(6, b"\0\x17\0\x18"),
                                     ia_na()])),
    "dhcpv6_solicit_rapid": (1, dhcpv6(1, [opt6(1, DUID), opt6(14, b""), ia_na(7)])),
    "dhcpv6_request": (1, dhcpv6(3, [opt6(1, DUID), SERVER_DUID, ia_na(1, [GUEST6]),
                                     opt6(6, b"\0\x17")])),
    "dhcpv6_renew": (1, dhcpv6(5, [opt6(1, DUID), SERVER_DUID, ia_na(1, [GUEST6])])),
    "dhcpv6_rebind": (1, dhcpv6(6, [opt6(1, DUID), ia_na(1, [GUEST6])])),
    "dhcpv6_confirm": (1, dhcpv6(4, [opt6(1, DUID), ia_na(1, [GUEST6])])),
    "dhcpv6_release": (1, dhcpv6(8, [opt6(1, DUID), SERVER_DUID, ia_na(1, [GUEST6])])),
    "dhcpv6_information_request": (1, dhcpv6(11, [opt6(1, DUID), opt6(6, b"\0\x17\0\x18")])),
    "dhcpv6_ia_ta_pd": (1, dhcpv6(1, [opt6(1, DUID), opt6(4, struct.pack("!I", 2)),
                                      opt6(25, struct.pack("!III", 3, 0, 0))])),
    # NDP: router solicitation (selector 2), with and without a source
    # link-layer address option; from :: (bit 2) without.
    "ndp_rs": (2, b"\0\0\0\0" + bytes([1, 1]) + GUEST),
    "ndp_rs_bare": (2, b"\0\0\0\0"),
    "ndp_rs_unspecified": (2 | 4, b"\0\0\0\0"),
    # Neighbour solicitation for the gateway (selector 3), multicast and
    # unicast (bit 3), and duplicate address detection from :: (bit 2).
    "ndp_ns": (3, b"\0\0\0\0" + bytes.fromhex("fe800000000000000000000000000001") +
               bytes([1, 1]) + GUEST),
    "ndp_ns_unicast": (3 | 8, b"\0\0\0\0" + bytes.fromhex("fe800000000000000000000000000001") +
                       bytes([1, 1]) + GUEST),
    "ndp_ns_dad": (3 | 4, b"\0\0\0\0" + bytes.fromhex("fe800000000000000000000000000001")),
    "ndp_ns_other_target": (3, b"\0\0\0\0" + bytes.fromhex("fd000000000000000000000000000015") +
                            bytes([1, 1]) + GUEST + bytes([14, 1, 1, 2, 3, 4, 5, 6])),
}


def main():
    os.makedirs(CORPUS, exist_ok=True)
    for name, (selector, message) in SEEDS.items():
        for piece in (0, 3):
            with open(os.path.join(CORPUS, "%s_%d" % (name, piece)), "wb") as f:
                f.write(bytes([selector | piece << 4]) + message)


if __name__ == "__main__":
    main()
