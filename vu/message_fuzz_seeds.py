#!/usr/bin/env python3
"""Writes the seed corpora of //vu:message_fuzz and //vu:device_fuzz: message streams a frontend
sends, good and bad.

Input format (see fuzz_stream.h): records of (fd spec, u16 length, bytes); each record is one send
with its fds. Guest memory is one 1 MiB memfd. Run from anywhere: python3 vu/message_fuzz_seeds.py
"""
import os
import struct

VERSION, NEED_REPLY = 1, 8
(GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE, SET_LOG_BASE, SET_LOG_FD,
 SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_KICK, SET_VRING_CALL,
 SET_VRING_ERR, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
 SET_VRING_ENABLE) = range(1, 19)
GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG, SET_STATUS, GET_STATUS = 36, 37, 38, 39, 40

MEMFD, EVENTFD = 0x10, 0x00
MIB = 1 << 20
UVA = 0x7F0000000000
FEATURES = (1 << 32) | (1 << 30) | (1 << 29) | (1 << 28) | (1 << 26) | (1 << 15) | 3
PROTOCOL = (1 << 3) | (1 << 15) | (1 << 1) | (1 << 16)


def record(data, fds=0, kind=EVENTFD):
    return bytes([fds | kind]) + struct.pack("<H", len(data)) + data


def poke(offset, data):
    """A write of guest memory (not a send)."""
    return record(struct.pack("<I", offset) + data, 0, 0x40)


def chains():
    """One chain in each ring's avail ring: rx a writable buffer, tx a readable one."""
    out = b""
    for q in range(2):
        base = 0x10000 * (q + 1)
        flags = 2 if q == 0 else 0
        out += poke(base, struct.pack("<QIHH", 0x80000 + 0x1000 * q, 1500, flags, 0))
        out += poke(base + 0x1000, struct.pack("<HHH", 0, 1, 0))
    return out


def msg(request, payload=b"", flags=VERSION, size=None):
    return struct.pack("<III", request, flags, len(payload) if size is None else size) + payload


def u64(v):
    return struct.pack("<Q", v)


def state(index, num):
    return struct.pack("<II", index, num)


def addr(index, desc, used, avail, flags=0, log=0):
    return struct.pack("<IIQQQQ", index, flags, desc, used, avail, log)


def region(gpa, size, uva, offset):
    return struct.pack("<QQQQ", gpa, size, uva, offset)


def table(*regions):
    return struct.pack("<II", len(regions), 0) + b"".join(regions)


def send(m, fds=0, kind=EVENTFD):
    return record(m, fds, kind)


def negotiation():
    return b"".join(send(m) for m in [
        msg(GET_FEATURES), msg(GET_PROTOCOL_FEATURES), msg(SET_PROTOCOL_FEATURES, u64(PROTOCOL)),
        msg(SET_OWNER), msg(GET_QUEUE_NUM), msg(GET_MAX_MEM_SLOTS),
        msg(SET_FEATURES, u64(FEATURES), VERSION | NEED_REPLY)])


def mem_table():
    return send(msg(SET_MEM_TABLE, table(region(0, MIB, UVA, 0)), VERSION | NEED_REPLY), 1, MEMFD)


def rings(log_flag=0):
    """Both rings of 256 entries inside the 1 MiB, with a chain in each avail ring."""
    out = b""
    for q in range(2):
        base = 0x10000 * (q + 1)
        out += send(msg(SET_VRING_NUM, state(q, 256)))
        out += send(msg(SET_VRING_BASE, state(q, 0)))
        out += send(msg(SET_VRING_ADDR, addr(q, UVA + base, UVA + base + 0x2000, UVA + base + 0x1000,
                                             log_flag, base + 0x2000), VERSION | NEED_REPLY))
        out += send(msg(SET_VRING_CALL, u64(q)), 1)
        out += send(msg(SET_VRING_KICK, u64(q)), 1)
        out += send(msg(SET_VRING_ENABLE, state(q, 1), VERSION | NEED_REPLY))
    return out


SEEDS = {
    "negotiate": negotiation(),
    "mem_table": mem_table(),
    "mem_table_two": send(msg(SET_MEM_TABLE, table(region(0, MIB // 2, UVA, 0),
                                                   region(MIB // 2, MIB // 2, UVA + MIB // 2, MIB // 2))),
                          2, MEMFD),
    "session": negotiation() + mem_table() + chains() + rings()
               + send(msg(GET_VRING_BASE, state(0, 0))) + send(msg(GET_VRING_BASE, state(1, 0))),
    "session_logged": negotiation() + mem_table()
                      + send(msg(SET_LOG_BASE, struct.pack("<QQ", 64, 0)), 1, MEMFD)
                      + chains() + rings(log_flag=1) + send(msg(RESET_OWNER)),
    "loop_chain": negotiation() + mem_table() + rings()
                  + poke(0x20000, struct.pack("<QIHH", 0x80000, 64, 1, 0))
                  + poke(0x21000, struct.pack("<HHH", 0, 1, 0))
                  + send(msg(SET_VRING_KICK, u64(1)), 1),
    "add_rem_region": send(msg(ADD_MEM_REG, u64(0) + region(0, MIB, UVA, 0)), 1, MEMFD)
                      + send(msg(REM_MEM_REG, u64(0) + region(0, MIB, UVA, 0)), 1, MEMFD),
    "log_base": send(msg(SET_LOG_BASE, struct.pack("<QQ", 4096, 0)), 1, MEMFD),
    "status": send(msg(SET_STATUS, u64(0xF))) + send(msg(GET_STATUS)),
    "kick_no_fd": send(msg(SET_VRING_KICK, u64(0x100)) + msg(SET_VRING_CALL, u64(0x101))),
    "surplus_fds": send(msg(SET_VRING_CALL, u64(1)), 5) + send(msg(GET_FEATURES), 2),
    "too_many_fds": send(msg(GET_FEATURES)[:6], 15) + send(msg(GET_FEATURES)[6:], 15),
    "missing_fds": send(msg(SET_MEM_TABLE, table(region(0, 4096, UVA, 0)))),
    "split_message": b"".join(send(bytes([b])) for b in msg(SET_FEATURES, u64(FEATURES))),
    "bad_index": send(msg(SET_VRING_NUM, state(200, 256))) + send(msg(SET_VRING_KICK, u64(0x42)), 1),
    "bad_size": send(msg(SET_FEATURES, u64(1) + u64(2)) + msg(SET_VRING_ADDR, b"\0" * 8)),
    "bad_regions": send(msg(SET_MEM_TABLE, table(region(0, MIB, UVA, 0), region(4096, MIB, UVA + MIB, 0))), 2, MEMFD)
                   + send(msg(SET_MEM_TABLE, table(region(0, 2 * MIB, UVA, 0))), 1, MEMFD)
                   + send(msg(SET_MEM_TABLE, table(region(0, MIB, UVA, 0))), 1, EVENTFD),
    "rings_first": negotiation() + rings() + mem_table(),
    "oversized": send(msg(SET_MEM_TABLE, size=1 << 20)),
    "bad_version": send(msg(GET_FEATURES, flags=2)),
    "truncated_payload": send(msg(SET_VRING_ADDR, size=40) + b"\1" * 10),
    "table_count_lies": send(msg(SET_MEM_TABLE, struct.pack("<II", 7, 0) + region(0, 4096, UVA, 0)), 2, MEMFD),
    "unknown": send(msg(4711, b"hello"), 1) + send(msg(GET_FEATURES)),
}

for corpus in ("message_fuzz_corpus", "device_fuzz_corpus"):
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), corpus)
    os.makedirs(here, exist_ok=True)
    for old in os.listdir(here):
        os.remove(os.path.join(here, old))
    for name, data in SEEDS.items():
        with open(os.path.join(here, name), "wb") as f:
            f.write(data)
