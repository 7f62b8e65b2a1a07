#!/usr/bin/env python3
"""What a running vunet holds: open fds (split into flow sockets and the rest) and memory.

    probe.py PID          one line: fds=N flow_fds=N other_fds=N tcp=N udp=N rss_kb=N anon_kb=N
                          shmem_kb=N maps=N

Flow sockets are TCP sockets in any state but LISTEN and connected UDP sockets. Everything else is
"other" and must not change as flows come and go: fds that are not sockets (eventfds, the epoll fd,
timerfds...), listening TCP sockets (-t forwards), unconnected UDP sockets (-u forwards), UNIX
sockets (vhost-user) and ping sockets. Each socket is asked itself, through a duplicate of the fd
(pidfd_getfd, which root may use on any process): /proc/PID/net cannot tell, since the vhost-user
connection belongs to the frontend's network namespace and a socket being made or closed is in no
table. Where pidfd_getfd is refused, /proc/PID/net's tables are used instead, and a socket in none
of them is counted as a flow. Memory: VmRSS, RssAnon (heap: what a leak grows), RssShmem (the
guest's memory as far as vunet touched it) and the number of mappings.
"""

import ctypes
import os
import socket
import sys

SYS_PIDFD_GETFD = 438
TCP_LISTEN = 10
_libc = ctypes.CDLL(None, use_errno=True)


def classify_fd(pidfd, fd):
    """'tcp', 'udp' (flow sockets) or 'other', asking the socket; None if it cannot be asked."""
    dup = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if dup < 0:
        return None
    try:
        s = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return "other"  # Closed and reused meanwhile as something else.
    try:
        if s.family not in (socket.AF_INET, socket.AF_INET6):
            return "other"
        proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        if s.type == socket.SOCK_STREAM and proto == socket.IPPROTO_TCP:
            state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            return "other" if state == TCP_LISTEN else "tcp"
        if s.type == socket.SOCK_DGRAM and proto == socket.IPPROTO_UDP:
            try:
                s.getpeername()
                return "udp"
            except OSError:
                return "other"  # Unconnected: a -u forward.
        return "other"  # Ping sockets and the like.
    except OSError:
        return "other"
    finally:
        s.detach()
        os.close(dup)


def inodes(pid, name, column, keep=lambda fields: True):
    """The socket inodes /proc/PID/net/NAME lists (column `column`) whose line passes `keep`."""
    found = set()
    try:
        with open(f"/proc/{pid}/net/{name}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > column and keep(fields):
                    found.add(int(fields[column]))
    except OSError:
        pass
    return found


def classify_by_tables(pid, targets):
    lasting = set()
    for name in ("tcp", "tcp6"):
        lasting |= inodes(pid, name, 9, lambda f: f[3] == "0A")  # LISTEN.
    for name in ("udp", "udp6"):
        lasting |= inodes(pid, name, 9, lambda f: int(f[2].split(":")[1], 16) == 0)  # No peer.
    for name in ("icmp", "icmp6", "raw", "raw6"):
        lasting |= inodes(pid, name, 9)
    lasting |= inodes(pid, "unix", 6)
    udp = inodes(pid, "udp", 9) | inodes(pid, "udp6", 9)
    kinds = {}
    for fd, target in targets.items():
        if not target.startswith("socket:["):
            kinds[fd] = "other"
            continue
        inode = int(target[8:-1])
        kinds[fd] = "other" if inode in lasting else "udp" if inode in udp else "tcp"
    return kinds


def sample(pid):
    targets = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass  # Closed meanwhile.
    kinds = None
    try:
        pidfd = os.pidfd_open(int(pid))
    except OSError:
        pidfd = None
    if pidfd is not None:
        kinds = {}
        for fd, target in targets.items():
            if not target.startswith("socket:["):
                kinds[fd] = "other"
                continue
            kind = classify_fd(pidfd, fd)
            if kind is None:
                if ctypes.get_errno() == 9:  # EBADF: closed meanwhile.
                    kinds[fd] = "tcp"
                    continue
                kinds = None  # Refused: fall back on the tables.
                break
            kinds[fd] = kind
        os.close(pidfd)
    if kinds is None:
        kinds = classify_by_tables(pid, targets)
    fds = len(targets)
    n_tcp = sum(1 for k in kinds.values() if k == "tcp")
    n_udp = sum(1 for k in kinds.values() if k == "udp")
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
