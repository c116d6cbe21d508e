#!/usr/bin/env python3
"""Markdown tables for BENCHMARKS.md from a loadtest/bench/run-all.sh result directory.

    python3 loadtest/bench/summarize.py bench-results/20261122T101500Z
"""
import glob
import json
import os
import statistics
import sys


def us(v):
    if v is None:
        return "-"
    if v < 1000:
        return f"{v} µs"
    if v < 1_000_000:
        return f"{v / 1000:.2f} ms"
    return f"{v / 1e6:.2f} s"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"<!-- {path}: {e} -->")
        return None


def main(d):
    print(f"## Results from `{d}`\n")
    machine = os.path.join(d, "machine.txt")
    if os.path.exists(machine):
        print("Machine:\n")
        for line in open(machine):
            print(f"- {line.strip()}")
        print()

    table = os.path.join(d, "instructions", "table.md")
    if os.path.exists(table):
        print("Cost per request (callgrind, loadtest/bench/instructions.sh):\n")
        print(open(table).read())

    c = load(os.path.join(d, "compare.json")) if os.path.exists(os.path.join(d, "compare.json")) else None
    if c:
        print(f"Command: `{c['command']}`\n")
        print("| method | connections | target | tool | req/s | p50 | p99 | errors |")
        print("|---|---:|---|---|---:|---:|---:|---:|")
        for m in c["summary"]:
            print(f"| {m['method']} | {m['connections']} | {m['target']} | {m['tool']} | "
                  f"{m['requests_per_s']:.0f} | {us(m['p50_us'])} | {us(m['p99_us'])} | {m['errors']} |")
        print()
        print("| method | connections | tool | rw-proxy/nginx req/s | rw-proxy/nginx p99 | p50 added over direct |")
        print("|---|---:|---|---:|---:|---:|")
        for r in c["ratios"]:
            added = r.get("added_p50_us_over_direct")
            print(f"| {r['method']} | {r['connections']} | {r['tool']} | {r['rps_ratio']:.2f}x | "
                  f"{r['p99_ratio']:.2f}x | {'-' if added is None else f'{added} µs'} |")
        print()

    idle = load(os.path.join(d, "idle.json")) if os.path.exists(os.path.join(d, "idle.json")) else None
    if idle and idle.get("idle"):
        print("| proxy | idle connections | RSS before | RSS with connections | per connection |")
        print("|---|---:|---:|---:|---:|")
        for i in idle["idle"]:
            print(f"| {i['target']} | {i['connections_open']} | {i['rss_before_kib']} KiB | "
                  f"{i['rss_with_idle_kib']} KiB | {i['bytes_per_connection']:.0f} B |")
        print()

    faults = {}
    for path in sorted(glob.glob(os.path.join(d, "failover-*.json"))):
        r = load(path)
        if r:
            faults.setdefault(r["scenario"], []).append(r)
    if faults:
        print("| fault | runs | passed | client-seen failover (median / max) | election published (median) "
              "| failed writes (max) | in flight at fault (max) | held writes (max) | max hold | lost acked | epochs on two nodes |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for fault in ["kill", "hang", "unready", "switchover"]:
            runs = faults.get(fault)
            if not runs:
                continue
            fo = [r["analysis"]["client_failover_ms"] for r in runs if r["analysis"]["client_failover_ms"] is not None]
            pub = [r["election_publish_ms"] for r in runs if r["election_publish_ms"] is not None]
            w = [r["analysis"]["writes"] for r in runs]
            med = lambda v: f"{statistics.median(v):.0f} ms" if v else "-"
            mx = lambda v: f"{max(v):.0f} ms" if v else "-"
            print(f"| {fault} | {len(runs)} | {sum(1 for r in runs if r['passed'])} | {med(fo)} / {mx(fo)} | {med(pub)} "
                  f"| {max(x['failed'] for x in w)} | {max(x['in_flight_at_fault'] for x in w)} "
                  f"| {max(x['held'] for x in w)} | {max(x['max_held_ms'] for x in w):.0f} ms "
                  f"| {sum(r['analysis']['lost_acked_writes'] for r in runs)} "
                  f"| {sum(len(r['analysis']['log']['epochs_on_two_nodes']) for r in runs)} |")
        print()
        for fault, runs in faults.items():
            for r in runs:
                if not r["passed"]:
                    print(f"- {fault}: FAIL: " + "; ".join(r["failures"]))
        print()

    e = load(os.path.join(d, "election.json")) if os.path.exists(os.path.join(d, "election.json")) else None
    if e:
        print("| nodes | probe interval | CPU (% of a core) | RSS | peak RSS | mean probe |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in e:
            mp = "-" if r.get("mean_probe_ms") is None else f"{r['mean_probe_ms']:.3f} ms"
            print(f"| {r['nodes']} | {r['probe_interval_ms']} ms | {r['cpu_percent']:.1f} | {r['rss_kib']} KiB "
                  f"| {r['peak_rss_kib']} KiB | {mp} |")
        print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
