#!/usr/bin/env python3
"""Crash start with a big queue, cold: the bench bed's durable node holds 100,000 deferred
messages, loses power (podman kill: no shutdown, no seal), the host's page cache is dropped, and
the node boots with nobody at the keyboard (podman start, no playbook). Times the boot to the first
250 on the node's port 25 and breaks it down from systemd's own timestamps: container start to
the queue volume's mount (XFS log recovery included), the pre-start integrity scan, Postfix's
start (postfix check, postsuper, master), and the first 250.

Baseline in the same run: a cold `find` over the same queue (what reading it must cost at least).
Prints figures and ratios; asserts nothing. Target (issue 13): first 250 under 60 s. Run by `make bench`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import queue_read
from queue_read import QUEUE, count, drop_caches, fill, sh, timed_shell

MOUNT_UNIT = "var-spool-postfix.mount"
INSTANCE_UNIT = "postfix@-.service"
REPORT = "/run/durable-mx/integrity--.json"

# Runs in the node: one message to 127.0.0.1:25 for RCPT (argv[1]); exit 0 on its 250.
PROBE = """
import smtplib, sys
try:
    with smtplib.SMTP('127.0.0.1', 25, timeout=5) as client:
        client.sendmail('boot@client.test', [sys.argv[1]], 'Subject: boot probe\\r\\n\\r\\nprobe\\r\\n')
except (OSError, smtplib.SMTPException):
    sys.exit(1)
"""


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout.strip()


def unit_times(unit: str) -> tuple[float, float]:
    """When systemd began to start the unit and when it became active, as wall-clock epoch seconds.
    Read from the microsecond monotonic stamps (the unix ones have 1 s resolution): the node
    shares the host's kernel, hence its CLOCK_MONOTONIC."""
    out = sh(f"systemctl show -P InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic {unit}").split()
    offset = time.time() - time.monotonic()
    begun, active = (int(v) / 1e6 + offset for v in out)
    return begun, active


def crash_and_boot(node: str, rcpt: str, timeout: float) -> dict:
    podman("kill", "--signal", "KILL", node)
    drop_caches()  # after the kill: nothing of the queue stays cached, as after a power cut
    booted = time.time()
    podman("start", node)
    deadline = time.monotonic() + timeout
    while subprocess.run(["podman", "exec", node, "python3", "-c", PROBE, rcpt], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"{node} acknowledged nothing within {timeout:.0f} s of its boot")
        time.sleep(0.1)
    first_250 = time.time()
    mount_begun, mount_done = unit_times(MOUNT_UNIT)
    instance_begun, instance_active = unit_times(INSTANCE_UNIT)
    report = json.loads(sh(f"cat {REPORT}"))
    return {
        "boot_to_first_250": first_250 - booted,
        "boot_to_mount_begun": mount_begun - booted,
        "mount_with_log_recovery": mount_done - mount_begun,
        "integrity_scan": report["finished_at"] - instance_begun,
        "postfix_start": instance_active - report["finished_at"],
        "active_to_first_250": first_250 - instance_active,
        "scanned": report.get("scanned"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--node", default=queue_read.NODE,
                        help="the container (default: the bench bed's durable node; a lab primary works too)")
    parser.add_argument("--rcpt", default=queue_read.RCPT,
                        help="recipient of the queued mail: one the node defers (on the lab: a domain outside it, "
                             "which goes to the retry: transport and is never delivered)")
    args = parser.parse_args()
    queue_read.NODE, queue_read.RCPT = args.node, args.rcpt  # queue_read's helpers read these

    fill(args.messages)
    queued = count("deferred")
    drop_caches()
    find_cold = timed_shell(f"find {QUEUE}/deferred {QUEUE}/defer -type f")
    runs = [crash_and_boot(args.node, args.rcpt, args.timeout) for _ in range(args.repeat)]
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "scanned"}
    results = {"messages": queued, "find_cold": find_cold, "median": median, "runs": runs}

    print(f"\ncrash start, cold cache, {queued} deferred messages, median of {args.repeat} (seconds):")
    for key, seconds in median.items():
        print(f"  {key:<28} {seconds:8.2f}")
    print(f"  {'baseline: find -type f, cold':<28} {find_cold:8.2f}")
    print(f"  integrity scan / find: {median['integrity_scan'] / find_cold:.1f}; "
          f"boot to first 250: {median['boot_to_first_250']:.1f} s (target < 60 s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
