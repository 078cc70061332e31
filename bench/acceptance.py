#!/usr/bin/env python3
"""SMTP acceptance rate of a durable-mx node against stock Debian Postfix, and against the raw
fsync rate of the queue volume, all measured in the same run on the `bench` Molecule nodes.

Prints a table and the ratios; asserts nothing (figures, not verdicts). Run by `make bench`.
Target from issue 3: durable >= 0.95 x stock at every client count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

DURABLE = "dmx-bench-durable"
STOCK = "dmx-bench-stock"
CLIENT = "dmx-bench-client"
RCPT = "load@durable-mx.test"

# Runs inside a node: N x (write SIZE bytes, fsync, rename) per thread, as a queue file costs.
FSYNC_PROBE = r"""
import os, sys, threading, time
directory, count, size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs(directory, exist_ok=True)
payload = os.urandom(size)
def work(t):
    for i in range(count // threads):
        tmp = f"{directory}/{t}.{i}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, payload); os.fsync(fd); os.close(fd)
        os.rename(tmp, f"{directory}/{t}.{i}")
start = time.monotonic()
workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
[w.start() for w in workers]; [w.join() for w in workers]
print(count / (time.monotonic() - start))
"""


def sh(node: str, command: str) -> str:
    return subprocess.run(["podman", "exec", node, "sh", "-c", command],
                          check=True, capture_output=True, text=True).stdout.strip()


def cpu_seconds(node: str) -> float:
    return int(sh(node, "cat /sys/fs/cgroup/cpuacct/cpuacct.usage")) / 1e9


def accept_rate(target: str, parallel: int, count: int, size: int) -> tuple[float, float]:
    """Messages/s accepted by target over SMTP, and CPU cores the target used meanwhile."""
    cpu_before = cpu_seconds(target)
    out = sh(CLIENT, f"s=$(date +%s.%N); smtp-source -s {parallel} -m {count} -l {size} "
                     f"-f bench@client.test -t {RCPT} {target}:25 && e=$(date +%s.%N); echo $s $e")
    start, end = map(float, out.split()[-2:])
    seconds = end - start
    return count / seconds, (cpu_seconds(target) - cpu_before) / seconds


def fsync_rate(node: str, threads: int, count: int, size: int) -> float:
    directory = "/var/spool/postfix/durable-mx-bench-fsync"
    try:
        return float(subprocess.run(
            ["podman", "exec", node, "python3", "-c", FSYNC_PROBE, directory, str(count), str(size), str(threads)],
            check=True, capture_output=True, text=True).stdout)
    finally:
        sh(node, f"rm -rf {directory}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--repeat", type=int, default=2, help="runs per cell (median is shown)")
    parser.add_argument("--clients", default="1,4,16", help="parallel SMTP sessions")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    figures: dict = {"messages": args.messages, "size": args.size, "accept": {}, "fsync": {}}
    print(f"acceptance over SMTP: {args.messages} messages of {args.size} bytes, median of {args.repeat}")
    print(f"{'clients':>7} {'stock msg/s':>12} {'cpu':>5} {'durable msg/s':>14} {'cpu':>5} {'ratio':>6}")
    for parallel in (int(c) for c in args.clients.split(",")):
        cell = {}
        for name, node in (("stock", STOCK), ("durable", DURABLE)):
            runs = [accept_rate(node, parallel, args.messages, args.size) for _ in range(args.repeat)]
            cell[name] = {"rate": statistics.median(r[0] for r in runs), "cpu": statistics.median(r[1] for r in runs)}
        cell["ratio"] = cell["durable"]["rate"] / cell["stock"]["rate"]
        figures["accept"][parallel] = cell
        print(f"{parallel:>7} {cell['stock']['rate']:>12.0f} {cell['stock']['cpu']:>5.2f} "
              f"{cell['durable']['rate']:>14.0f} {cell['durable']['cpu']:>5.2f} {cell['ratio']:>6.2f}")

    print("\nraw fsync rate of the durable node's queue volume (write 2 KiB + fsync + rename):")
    for threads in (1, 4):
        rate = fsync_rate(DURABLE, threads, args.messages, args.size)
        figures["fsync"][threads] = rate
        best = max(cell["durable"]["rate"] for cell in figures["accept"].values())
        print(f"  {threads} writer(s): {rate:.0f} fsync/s; best durable acceptance = {best / rate:.2f} x this rate")

    worst = min(cell["ratio"] for cell in figures["accept"].values())
    print(f"\ndurable / stock acceptance, worst case: {worst:.2f} (target >= 0.95)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
