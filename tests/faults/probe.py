#!/usr/bin/env python3
"""What a running vunet holds: open fds (split into flow sockets and the rest) and memory.

    probe.py PID          one line: fds=N flow_fds=N other_fds=N tcp=N udp=N rss_kb=N anon_kb=N
                          shmem_kb=N maps=N

Flow sockets are the fds of connected TCP sockets (any state but LISTEN) and connected UDP sockets
(a remote address set) in the process's own network namespace (/proc/PID/net); listening sockets of
port forwards, the vhost-user sockets, eventfds, the epoll fd and the rest are "other": their number
must not change as flows come and go. Memory: VmRSS, RssAnon (heap: what a leak grows), RssShmem
(the guest's memory as far as vunet touched it) and the number of mappings.
"""

import os
import sys


def socket_table(pid, name, is_flow):
    """Inode -> True for a flow socket, from /proc/PID/net/NAME."""
    table = {}
    try:
        with open(f"/proc/{pid}/net/{name}") as f:
            next(f)
            for line in f:
                fields = line.split()
                remote, state, inode = fields[2], fields[3], int(fields[9])
                table[inode] = is_flow(remote, state)
    except OSError:
        pass
    return table


def sample(pid):
    tcp_flow = lambda remote, state: state != "0A"  # Not LISTEN.
    udp_flow = lambda remote, state: int(remote.split(":")[1], 16) != 0  # Connected: a port set.
    tcp = {**socket_table(pid, "tcp", tcp_flow), **socket_table(pid, "tcp6", tcp_flow)}
    udp = {**socket_table(pid, "udp", udp_flow), **socket_table(pid, "udp6", udp_flow)}
    fds = n_tcp = n_udp = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # Closed meanwhile.
        fds += 1
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            if tcp.get(inode):
                n_tcp += 1
            elif udp.get(inode):
                n_udp += 1
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()[0] if value.split() else ""
    with open(f"/proc/{pid}/maps") as f:
        maps = sum(1 for _ in f)
    return {
        "fds": fds,
        "flow_fds": n_tcp + n_udp,
        "other_fds": fds - n_tcp - n_udp,
        "tcp": n_tcp,
        "udp": n_udp,
        "rss_kb": int(status.get("VmRSS", 0)),
        "anon_kb": int(status.get("RssAnon", 0)),
        "shmem_kb": int(status.get("RssShmem", 0)),
        "maps": maps,
    }


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    s = sample(sys.argv[1])
    print(" ".join(f"{k}={v}" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
