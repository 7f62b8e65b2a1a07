#!/usr/bin/env python3
"""TCP and UDP exchanges for tap_bridge_test.sh.

  tap_bridge_check.py server ADDR PORT REPLY_FILE RECEIVED_FILE
      Accepts one connection on ADDR:PORT, reads until the peer shuts its
      side down (into RECEIVED_FILE), then sends REPLY_FILE and closes.
  tap_bridge_check.py client ADDR PORT SEND_FILE RECEIVED_FILE
      Connects, sends SEND_FILE, shuts down its side, reads the reply until
      the server closes (into RECEIVED_FILE).

  tap_bridge_check.py udp-echo ADDR PORT COUNT
      Returns COUNT datagrams to their senders, then exits.
  tap_bridge_check.py udp-client ADDR PORT COUNT
      Sends COUNT datagrams of 1 to 1400 bytes one at a time, each to be
      echoed back unchanged (retried up to 5 times: UDP may drop).

Exits 0 on success, 1 with one line on stderr otherwise. 30 s per socket
operation (1 s per UDP attempt).
"""

import socket
import sys


def read_all(conn, path):
    with open(path, "wb") as out:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                return
            out.write(data)


def udp(mode, addr, port, count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if mode == "udp-echo":
            s.bind((addr, port))
            s.settimeout(30)
            for _ in range(count):
                data, peer = s.recvfrom(65536)
                s.sendto(data, peer)
            return 0
        s.settimeout(1)
        for i in range(count):
            payload = bytes((i * 7 + j) & 0xff for j in range(1 + i * 1399 // max(count - 1, 1)))
            for _ in range(5):
                s.sendto(payload, (addr, port))
                try:
                    data, _ = s.recvfrom(65536)
                except socket.timeout:
                    continue
                if data != payload:
                    print(f"udp-client: datagram {i} came back changed", file=sys.stderr)
                    return 1
                break
            else:
                print(f"udp-client: no answer to datagram {i}", file=sys.stderr)
                return 1
    return 0


def main(argv):
    if len(argv) == 5 and argv[1] in ("udp-echo", "udp-client"):
        try:
            return udp(argv[1], argv[2], int(argv[3]), int(argv[4]))
        except OSError as e:
            print(f"{argv[1]}: {e}", file=sys.stderr)
            return 1
    if len(argv) != 6 or argv[1] not in ("server", "client"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, addr, port, send_path, received_path = argv[1], argv[2], int(argv[3]), argv[4], argv[5]
    with open(send_path, "rb") as f:
        payload = f.read()
    try:
        if mode == "server":
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((addr, port))
                listener.listen(1)
                listener.settimeout(30)
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(30)
                    read_all(conn, received_path)
                    conn.sendall(payload)
        else:
            with socket.create_connection((addr, port), timeout=30) as conn:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                read_all(conn, received_path)
    except OSError as e:
        print(f"{mode}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
