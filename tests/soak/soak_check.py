#!/usr/bin/env python3
"""The soak's verdict: reads vunet's samples and the churn clients' logs, prints a summary, and exits 1
if vunet's memory or fds grew beyond their bounds after the warm-up, or a byte came back wrong.

    soak_check.py --samples FILE --warmup S --seconds S --flow-ceiling N [--rss-bound-kb N]
                  CHURN_LOG...

A sample line is "t=SECONDS fds=N flow_fds=N other_fds=N tcp=N udp=N rss_kb=N anon_kb=N shmem_kb=N
maps=N" (probe.py's, with the time since the churn started). The bounds, after the warm-up, against
the warm-up's maxima:
  - fds other than flow sockets, and mappings: none more (they do not depend on the traffic);
  - flow sockets: at most --flow-ceiling (what the workload can keep open at once);
  - heap (RssAnon) and VmRSS less the guest memory's share (RssShmem): at most --rss-bound-kb more;
  - VmRSS: at most --rss-bound-kb more than the warm-up's maximum plus the guest memory vunet had not
    touched yet (RssShmem's growth, bounded by the guest's memory size).
"""

import argparse
import re
import sys


def parse_samples(path):
    samples = []
    with open(path) as f:
        for line in f:
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "t" not in fields or "fds" not in fields:
                continue
            samples.append({k: float(v) if k == "t" else int(v) for k, v in fields.items()})
    return samples


def parse_churn(paths):
    """Sums the last cumulative line of each churn log."""
    totals = {}
    for path in paths:
        last = None
        with open(path) as f:
            for line in f:
                if line.startswith("churn "):
                    last = line
        if last is None:
            continue
        for key, value in re.findall(r"(\w+)=(\d+)", last):
            totals[key] = totals.get(key, 0) + int(value)
    return totals


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", required=True)
    p.add_argument("--warmup", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--flow-ceiling", type=int, required=True)
    p.add_argument("--rss-bound-kb", type=int, default=4096)
    p.add_argument("logs", nargs="*")
    a = p.parse_args()

    samples = parse_samples(a.samples)
    warm = [s for s in samples if s["t"] < a.warmup]
    steady = [s for s in samples if s["t"] >= a.warmup]
    if not warm or not steady:
        print(f"soak: FAILED: too few samples ({len(warm)} in the warm-up, {len(steady)} after)")
        return 1
    counts = parse_churn(a.logs)
    failures = []

    def rng(key, rows=samples):
        values = [s[key] for s in rows]
        return min(values), max(values)

    def private(s):
        return s["rss_kb"] - s["shmem_kb"]

    # The bounds.
    for key in ("other_fds", "maps"):
        if rng(key, steady)[1] > rng(key, warm)[1]:
            failures.append(f"{key} grew after the warm-up: {rng(key, warm)[1]} -> {rng(key, steady)[1]}")
    if rng("flow_fds", steady)[1] > a.flow_ceiling:
        failures.append(f"flow sockets reached {rng('flow_fds', steady)[1]}, above the workload's "
                        f"{a.flow_ceiling}")
    for name, value in (("heap (RssAnon)", lambda s: s["anon_kb"]),
                        ("VmRSS less guest memory", private)):
        before = max(value(s) for s in warm)
        after = max(value(s) for s in steady)
        if after > before + a.rss_bound_kb:
            failures.append(f"{name} grew after the warm-up: {before} -> {after} kB "
                            f"(bound {a.rss_bound_kb} kB)")
    shmem_growth = max(0, rng("shmem_kb", steady)[1] - rng("shmem_kb", warm)[1])
    if rng("rss_kb", steady)[1] > rng("rss_kb", warm)[1] + a.rss_bound_kb + shmem_growth:
        failures.append(f"VmRSS grew after the warm-up: {rng('rss_kb', warm)[1]} -> "
                        f"{rng('rss_kb', steady)[1]} kB")
    bad = {k: v for k, v in counts.items() if k.endswith("_bad")}
    if bad:
        failures.append(f"data came back wrong: {bad}")

    # The summary.
    seconds = a.seconds
    tcp_ok = counts.get("tcp_ok", 0)
    udp_ok = counts.get("udp_ok", 0)
    tcp_errors = {k: v for k, v in counts.items() if k.startswith("tcp_error")}
    print(f"soak: {seconds:.0f} s ({a.warmup:.0f} s warm-up), {len(samples)} samples")
    print(f"  TCP: {tcp_ok} short connections ({tcp_ok / seconds:.0f}/s), errors "
          f"{sum(tcp_errors.values())} {tcp_errors if tcp_errors else ''}")
    print(f"  UDP: {udp_ok} short flows ({udp_ok / seconds:.1f}/s; to port 53 and others), "
          f"{counts.get('udp_lost', 0)} lost, {counts.get('udp_error', 0)} errors")
    print(f"  long flows: {counts.get('long_tcp_ok', 0)} TCP exchanges, "
          f"{counts.get('long_udp_ok', 0)} UDP exchanges ({counts.get('long_udp_lost', 0)} lost), "
          f"{counts.get('long_error', 0)} failures")
    for key, label in (("rss_kb", "VmRSS kB"), ("anon_kb", "RssAnon kB"), ("shmem_kb", "RssShmem kB"),
                       ("fds", "fds"), ("flow_fds", "flow sockets"), ("other_fds", "other fds"),
                       ("maps", "mappings")):
        w, s = rng(key, warm), rng(key, steady)
        print(f"  {label:13s} warm-up {w[0]}..{w[1]}, after {s[0]}..{s[1]}")
    if counts.get("long_error", 0):
        failures.append("a long flow failed")
    # The churn must have happened at the scale the soak is for: thousands of connections and
    # hundreds of flows (the workers make some 20 TCP connections and 20 UDP flows a second even on
    # a loaded 2-core machine), and errors must stay rare.
    if tcp_ok < 10 * seconds:
        failures.append(f"only {tcp_ok} TCP connections worked in {seconds:.0f} s (at least "
                        f"{10 * seconds:.0f} expected)")
    if sum(tcp_errors.values()) > max(10, tcp_ok // 100):
        failures.append(f"{sum(tcp_errors.values())} TCP connections failed: {tcp_errors}")
    if udp_ok < seconds:
        failures.append(f"only {udp_ok} UDP flows worked in {seconds:.0f} s")
    for f in failures:
        print(f"soak: FAILED: {f}")
    if not failures:
        print("soak: PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
