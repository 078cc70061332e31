#!/usr/bin/env python3
"""The exporter on a 100,000-message queue: scrape duration and memory, first scrape and steady state.

On the `bench` durable node (site.yml installs the exporter there): restart the exporter, then
scrape it for a while from inside the node, timing every scrape and reading its RSS. Anchors
measured in the same run on the same queue: `postqueue -j` (what showq-based exporters run per
scrape) and `find`. Prints figures and ratios; asserts nothing. Run by `make bench`.
Target from issue 5: steady-state scrape < 1 s, never blocking on a slow queue read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import queue_read  # noqa: E402  (same bed, same fill)

NODE = queue_read.NODE

# Runs on the node: restart the exporter, scrape it for `seconds`, report every scrape.
PROBE = r"""
import json, re, subprocess, sys, time, urllib.request
seconds = float(sys.argv[1])
def rss_kib(pid):
    for line in open('/proc/%s/status' % pid):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
def metric(text, name, labels=''):
    m = re.search(r'^%s\{[^}]*%s[^}]*\} (\S+)$' % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else None
subprocess.run(['systemctl', 'restart', 'durable-mx-exporter'], check=True)
pid = subprocess.run(['systemctl', 'show', '-p', 'MainPID', '--value', 'durable-mx-exporter'],
                     capture_output=True, text=True, check=True).stdout.strip()
start = time.monotonic()
scrapes = []
while time.monotonic() - start < seconds:
    t0 = time.monotonic()
    try:
        text = urllib.request.urlopen('http://127.0.0.1:9154/metrics', timeout=30).read().decode()
    except OSError:
        time.sleep(0.1)
        continue
    took = time.monotonic() - t0
    scrapes.append({'at': t0 - start, 'seconds': took, 'rss_kib': rss_kib(pid),
                    'deferred': metric(text, 'durablemx_queue_messages', 'queue="deferred"'),
                    'snapshot_age': metric(text, 'durablemx_queue_snapshot_age_seconds'),
                    'read_duration': metric(text, 'durablemx_queue_read_duration_seconds')})
    time.sleep(0.5)
print(json.dumps(scrapes))
"""


def percentile(values: list, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--seconds", type=float, default=120, help="how long to scrape after the restart")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    queue_read.fill(args.messages)
    postqueue = queue_read.timed_shell("postqueue -j")
    find = queue_read.timed_shell(f"find {queue_read.QUEUE}/deferred {queue_read.QUEUE}/defer -type f")
    out = subprocess.run(["podman", "exec", NODE, "python3", "-c", PROBE, str(args.seconds)],
                         check=True, capture_output=True, text=True).stdout
    scrapes = json.loads(out)
    if not scrapes:
        print("the exporter never answered", file=sys.stderr)
        return 1
    messages = queue_read.count("deferred")
    complete = [s for s in scrapes if s["deferred"] is not None and s["deferred"] >= messages * 0.99]
    if not complete:
        print("no scrape showed the whole queue: first snapshot not finished", file=sys.stderr)
        return 1
    first_complete = complete[0]
    steady = complete[1:] or complete
    durations = [s["seconds"] for s in steady]
    figures = {
        "messages": messages,
        "postqueue_j_seconds": postqueue,
        "find_seconds": find,
        "first_scrape_seconds": scrapes[0]["seconds"],
        "first_scrape_at": scrapes[0]["at"],
        "first_complete_snapshot_at": first_complete["at"],
        "first_read_duration_seconds": first_complete["read_duration"],
        "steady_scrapes": len(steady),
        "steady_scrape_p50_seconds": percentile(durations, 0.5),
        "steady_scrape_p99_seconds": percentile(durations, 0.99),
        "steady_scrape_max_seconds": max(durations),
        "steady_read_duration_seconds": steady[-1]["read_duration"],
        "max_snapshot_age_seconds": max(s["snapshot_age"] or 0 for s in steady),
        "rss_first_scrape_mib": scrapes[0]["rss_kib"] / 1024,
        "rss_after_first_snapshot_mib": first_complete["rss_kib"] / 1024,
        "rss_steady_max_mib": max(s["rss_kib"] for s in steady) / 1024,
    }
    print(f"queue: {messages} deferred messages; {len(scrapes)} scrapes over {args.seconds:.0f} s")
    for key, val in figures.items():
        print(f"  {key:<32} {val:10.3f}" if isinstance(val, float) else f"  {key:<32} {val:10d}")
    print(f"  steady scrape p99 / postqueue -j = {figures['steady_scrape_p99_seconds'] / postqueue:.3f}"
          f"; steady scrape max = {figures['steady_scrape_max_seconds']:.3f} s (target < 1 s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
