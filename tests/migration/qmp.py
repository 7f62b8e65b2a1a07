#!/usr/bin/env python3
"""A small QMP client for the migration tests: drives a live migration between two QEMUs.

    qmp.py migrate SRC_QMP DST_QMP URI [--max-bandwidth B/s] [--downtime-limit MS]
                   [--capabilities events,return-path] [--timeout S] [--expect completed|failed]
        On both: the capabilities (return-path by default: the destination reports whether it
        loaded the state, so a source whose destination failed fails too and runs again, instead
        of completing and staying paused). On the destination (started with -incoming defer):
        migrate-incoming URI. On the source: the parameters, then migrate URI; query-migrate every
        50 ms until the migration ends.
        Prints one line,
          MIGRATE status=completed total_ms=N downtime_ms=N setup_ms=N transferred=N
                  precopy_bytes=N downtime_bytes=N dirty_syncs=N remaining=N
        then, when it completed, waits until the destination runs. Exits 0 when the outcome is the
        expected one (--expect, default completed; with failed, the source must be running again),
        1 otherwise (and prints QEMU's error).
    qmp.py status QMP          query-status and query-migrate, as JSON, one line each
    qmp.py quit QMP            quit (QEMU exits)
    qmp.py command QMP NAME [JSON_ARGUMENTS]   any command; prints its return value as JSON

QMP_PATH is the UNIX socket of -qmp unix:PATH,server=on,wait=off.
"""

import argparse
import json
import socket
import sys
import time


class QmpError(Exception):
    pass


class Qmp:
    """One QMP session: the greeting read, capabilities negotiated."""

    def __init__(self, path, timeout=10.0):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._buf = b""
        self.events = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"no QMP greeting from {path}: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self):
        while b"\n" not in self._buf:
            data = self._sock.recv(65536)
            if not data:
                raise QmpError("QEMU closed the QMP socket")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, name, **arguments):
        """Runs command NAME; returns its "return" value, raises QmpError on an "error"."""
        request = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise QmpError(f"{name}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def close(self):
        self._sock.close()


def migration_line(info):
    ram = info.get("ram", {})
    fields = [
        ("status", info.get("status", "none")),
        ("total_ms", info.get("total-time", -1)),
        ("downtime_ms", info.get("downtime", -1)),
        ("setup_ms", info.get("setup-time", -1)),
        ("transferred", ram.get("transferred", -1)),
        ("precopy_bytes", ram.get("precopy-bytes", -1)),
        ("downtime_bytes", ram.get("downtime-bytes", -1)),
        ("dirty_syncs", ram.get("dirty-sync-count", -1)),
        ("remaining", ram.get("remaining", -1)),
    ]
    return "MIGRATE " + " ".join(f"{k}={v}" for k, v in fields)


def wait_status(qmp, wanted, timeout):
    """Until query-status says one of `wanted`; returns the last status."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = qmp.execute("query-status").get("status")
        if status in wanted:
            return status
        time.sleep(0.05)
    return status


def cmd_migrate(args):
    src = Qmp(args.src)
    dst = Qmp(args.dst)
    parameters = {"downtime-limit": args.downtime_limit}
    if args.max_bandwidth:
        parameters["max-bandwidth"] = args.max_bandwidth
    capabilities = [{"capability": c, "state": True} for c in args.capabilities.split(",") if c]
    for qmp in (src, dst):
        qmp.execute("migrate-set-capabilities", capabilities=capabilities)
    src.execute("migrate-set-parameters", **parameters)
    dst.execute("migrate-incoming", uri=args.uri)
    src.execute("migrate", uri=args.uri)
    deadline = time.monotonic() + args.timeout
    info = {}
    while time.monotonic() < deadline:
        info = src.execute("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    else:
        print(migration_line(info))
        print(f"qmp.py: the migration did not end within {args.timeout} s; cancelling")
        src.execute("migrate_cancel")
        return 1
    print(migration_line(info), flush=True)
    status = info.get("status")
    if status != "completed":
        print(f"qmp.py: migration {status}: {info.get('error-desc', 'no error given')}", flush=True)
    if args.expect == "completed":
        if status != "completed":
            return 1
        got = wait_status(dst, ("running",), 30)
        if got != "running":
            print(f"qmp.py: the destination is {got}, not running")
            return 1
        return 0
    if status == "completed":
        print("qmp.py: the migration completed; a failure was expected")
        return 1
    got = wait_status(src, ("running",), 30)
    if got != "running":
        print(f"qmp.py: after the failed migration the source is {got}, not running")
        return 1
    print("qmp.py: the source runs again")
    return 0


def cmd_status(args):
    qmp = Qmp(args.qmp)
    print(json.dumps(qmp.execute("query-status")))
    print(json.dumps(qmp.execute("query-migrate")))
    return 0


def cmd_quit(args):
    qmp = Qmp(args.qmp)
    try:
        qmp.execute("quit")
    except QmpError:
        pass  # QEMU may close the socket before it answers.
    return 0


def cmd_command(args):
    qmp = Qmp(args.qmp)
    arguments = json.loads(args.arguments) if args.arguments else {}
    print(json.dumps(qmp.execute(args.name, **arguments)))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("migrate")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("uri")
    p.add_argument("--max-bandwidth", type=int, default=0, help="bytes/s; 0: QEMU's default")
    p.add_argument("--downtime-limit", type=int, default=300, help="ms")
    p.add_argument("--capabilities", default="events,return-path",
                   help="migration capabilities turned on, comma-separated")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--expect", choices=("completed", "failed"), default="completed")
    p.set_defaults(run=cmd_migrate)
    p = sub.add_parser("status")
    p.add_argument("qmp")
    p.set_defaults(run=cmd_status)
    p = sub.add_parser("quit")
    p.add_argument("qmp")
    p.set_defaults(run=cmd_quit)
    p = sub.add_parser("command")
    p.add_argument("qmp")
    p.add_argument("name")
    p.add_argument("arguments", nargs="?")
    p.set_defaults(run=cmd_command)
    args = parser.parse_args()
    try:
        return args.run(args)
    except (OSError, QmpError) as e:
        print(f"qmp.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
