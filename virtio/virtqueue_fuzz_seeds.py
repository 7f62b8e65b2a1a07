#!/usr/bin/env python3
"""Writes the seed corpus of //virtio:virtqueue_fuzz: rings a driver could lay out, good and bad.

Input format (see virtqueue_fuzz.cc): size exponent, feature bits (1 event_idx, 2 indirect), in and
out capacities, then guest memory from address 0 with the descriptor table first and the avail ring
after it.
"""
import os
import struct
import sys

REGION = 32 * 1024
NEXT, WRITE, INDIRECT = 1, 2, 4


def ring(qexp, features, chains, max_in=64, max_out=64, avail_idx=None, extra=None):
    qs = 1 << qexp
    mem = bytearray(2 * REGION)
    avail = 16 * qs
    buf = 8192
    heads = []
    free = 0
    for chain in chains:
        if chain and chain[0] == "indirect":
            table = buf
            buf += 16 * len(chain[1])
            for i, (length, flags) in enumerate(chain[1]):
                nxt = i + 1 if i + 1 < len(chain[1]) else 0
                f = flags | (NEXT if i + 1 < len(chain[1]) else 0)
                struct.pack_into("<QIHH", mem, table + 16 * i, buf, length, f, nxt)
                buf += length
            struct.pack_into("<QIHH", mem, 16 * free, table, 16 * len(chain[1]), INDIRECT, 0)
            heads.append(free)
            free += 1
            continue
        head = free
        for i, (length, flags) in enumerate(chain):
            last = i + 1 == len(chain)
            struct.pack_into("<QIHH", mem, 16 * free, buf, length, flags | (0 if last else NEXT),
                             0 if last else free + 1)
            buf += length
            free += 1
        heads.append(head)
    for slot, head in enumerate(heads):
        struct.pack_into("<H", mem, avail + 4 + 2 * (slot % qs), head)
    struct.pack_into("<H", mem, avail + 2, len(heads) if avail_idx is None else avail_idx)
    if extra:
        extra(mem, qs, avail)
    return bytes([qexp, features, max_in, max_out]) + bytes(mem).rstrip(b"\0")


def main(out):
    seeds = {
        "empty": ring(8, 3, []),
        "rx_one": ring(8, 0, [[(1526, WRITE)]]),
        "rx_mergeable_many": ring(4, 1, [[(1526, WRITE)]] * 16),
        "tx_header_and_frame": ring(8, 3, [[(12, 0), (1514, 0)]] * 4),
        "tx_many_small": ring(5, 0, [[(64, 0)] * 20]),
        "indirect": ring(8, 3, [["indirect", [(12, 0), (200, 0), (300, WRITE)]]] * 3),
        "cross_region": ring(2, 0, [[(REGION, WRITE)]]),
        "tight_pool": ring(8, 0, [[(100, WRITE)] * 6], max_in=3),
        "loop": ring(2, 0, [[(8, 0), (8, 0)]], extra=lambda m, qs, a: struct.pack_into("<HH", m, 16 + 12, NEXT, 0)),
        "nested_indirect": ring(8, 3, [["indirect", [(16, INDIRECT)]]]),
        "avail_jump": ring(3, 0, [[(8, WRITE)]], avail_idx=200),
        "bad_head": ring(3, 0, [[(8, WRITE)]], extra=lambda m, qs, a: struct.pack_into("<H", m, a + 4, 99)),
        "write_then_read": ring(8, 0, [[(8, WRITE), (8, 0)]]),
    }
    os.makedirs(out, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "virtqueue_fuzz_corpus"))
