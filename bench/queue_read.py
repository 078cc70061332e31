#!/usr/bin/env python3
"""Reading a big queue: our queue facts and integrity scan against qshape, postqueue -j and find,
on the same 100,000-message deferred queue of the `bench` durable node, warm and cold cache.

Prints absolute times and ratios; asserts nothing. Run by `make bench`.
Targets from issue 4: facts <= 0.2 x qshape; integrity walk-and-header pass <= 3 x find.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

NODE = "dmx-bench-durable"
QUEUE = "/var/spool/postfix"
RCPT = "load@durable-mx.test"

# The same code the postfix_queue_facts module and the integrity command run (module_utils).
# CACHED=1 / FULL=0 are the modules' defaults: what an operator gets from the second run on.
FACTS = f"""
import sys, time
sys.path.insert(0, '/usr/local/lib/durable-mx')
import postfix_queue as q
CACHE = '/tmp/bench-facts.cache'
start = time.monotonic()
if {{cached}}:
    cache = q.EnvelopeCache.load(CACHE)
    messages, errors = q.walk_queue('{QUEUE}', cache=cache)
else:
    messages, errors = q.walk_queue('{QUEUE}')
summary = q.summarize(messages, time.time())
if {{cached}} and cache.changed:
    cache.save(CACHE)  # as the module does, before it answers
print(time.monotonic() - start, summary['queues'].get('deferred', {{{{}}}}).get('count', 0))
"""
# Not a dry run, or the record of sound files is not written; on a clean queue it moves nothing.
# seal=1 is the ExecStopPost scan that seals a clean queue; a scan with a fresh seal is the
# start-up after a clean stop, one without is the start-up after a crash (assert: which it was).
INTEGRITY = f"""
import sys, time, pwd, grp
sys.path.insert(0, '/usr/local/lib/durable-mx')
import postfix_queue as q
s = q.instance_settings('/etc/postfix')
start = time.monotonic()
report = q.integrity_scan('{QUEUE}', full={{full}}, hash_queue_names=s['hash_queue_names'],
                          hash_queue_depth=s['hash_queue_depth'], owner_uid=pwd.getpwnam(s['mail_owner']).pw_uid,
                          postdrop_gid=grp.getgrnam(s['setgid_group']).gr_gid,
                          seal_dir='/tmp/bench-seals', seal={{seal}})
assert report['clean'], report['suspects'][:3]
assert report['seal'] == '{{expect}}', report['seal']
print(time.monotonic() - start, report['scanned'])
"""


def sh(command: str) -> str:
    return subprocess.run(["podman", "exec", NODE, "bash", "-c", command],
                          check=True, capture_output=True, text=True).stdout.strip()


def count(queue: str) -> int:
    return int(sh(f"find {QUEUE}/{queue} -type f | wc -l"))


def fill(target: int) -> None:
    """Top the deferred queue up to `target` messages, sent over SMTP on the node itself."""
    missing = target - sum(count(q) for q in ("incoming", "active", "deferred"))  # all of it ends up deferred
    if missing > 0:
        print(f"queueing {missing} messages (smtp-source to 127.0.0.1) ...", flush=True)
        start = time.monotonic()
        sh(f"smtp-source -s 8 -m {missing} -l 1024 -f bench@client.test -t {RCPT} 127.0.0.1:25")
        print(f"  accepted in {time.monotonic() - start:.0f} s", flush=True)
    deadline = time.monotonic() + 1800
    while count("incoming") + count("active") > 0 and time.monotonic() < deadline:
        time.sleep(5)
    print(f"deferred queue: {count('deferred')} messages, {count('defer')} defer logs", flush=True)


def timed_shell(command: str) -> float:
    # bash's `time` keyword; the command's own failure fails the run (no timing of an error).
    return float(sh(f"set -o pipefail; TIMEFORMAT=%R; {{ time {command} > /dev/null; }} 2>&1 | tail -1"))


def timed_python(code: str) -> float:
    return float(subprocess.run(["podman", "exec", NODE, "python3", "-c", code],
                                check=True, capture_output=True, text=True).stdout.split()[0])


def drop_caches() -> None:
    # The page cache is the host's: dropping it there makes the next read a cold one.
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def integrity(full: int = 0, seal: int = 0, expect: str = "absent") -> float:
    return timed_python(INTEGRITY.format(full=full, seal=seal, expect=expect))


# name: (untimed set-up, timed run). qshape and postqueue -j need the running Postfix.
READERS = {
    "qshape deferred": (None, lambda: timed_shell("qshape deferred")),
    "postqueue -j": (None, lambda: timed_shell("postqueue -j")),
    "find -type f": (None, lambda: timed_shell(f"find {QUEUE}/deferred {QUEUE}/defer -type f")),
    "facts, first run": (None, lambda: timed_python(FACTS.format(cached=0))),
    "facts, cached": (None, lambda: timed_python(FACTS.format(cached=1))),
}
# The integrity scan runs with Postfix stopped (ExecStartPre / ExecStopPost): a running qmgr
# would also move deferred files while it reads them.
SCANS = {
    "integrity, full": (None, lambda: integrity(full=1)),
    "integrity, start-up after a crash": (None, integrity),
    "integrity, start-up after a clean stop": (lambda: integrity(seal=1, expect="written"),
                                               lambda: integrity(expect="matched")),
}


def measure(tools: dict, cold: bool, repeat: int) -> dict:
    figures = {}
    for name, (setup, run) in tools.items():
        runs = []
        for _ in range(repeat):
            if setup:
                setup()
            if cold:
                drop_caches()
            runs.append(run())
        figures[name] = statistics.median(runs)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    fill(args.messages)
    results = {"messages": count("deferred")}
    for label, cold in (("warm", False), ("cold", True)):
        figures = measure(READERS, cold, args.repeat)
        sh("systemctl stop postfix")
        try:
            figures.update(measure(SCANS, cold, args.repeat))
        finally:
            sh("systemctl start postfix")
        results[label] = figures
        print(f"\n{label} cache, median of {args.repeat} (seconds):")
        for name, seconds in figures.items():
            print(f"  {name:<40} {seconds:8.2f}")
        ratios = {
            "facts_first_over_qshape": figures["facts, first run"] / figures["qshape deferred"],
            "facts_cached_over_qshape": figures["facts, cached"] / figures["qshape deferred"],
            "integrity_full_over_find": figures["integrity, full"] / figures["find -type f"],
            "integrity_crash_startup_over_find": figures["integrity, start-up after a crash"] / figures["find -type f"],
            "integrity_clean_startup_over_find":
                figures["integrity, start-up after a clean stop"] / figures["find -type f"],
        }
        print("  facts / qshape: first run {facts_first_over_qshape:.2f}, cached {facts_cached_over_qshape:.2f}"
              " (target <= 0.2)".format(**ratios))
        print("  integrity / find: full {integrity_full_over_find:.1f}, start-up after a crash"
              " {integrity_crash_startup_over_find:.1f}, after a clean stop {integrity_clean_startup_over_find:.1f}"
              " (target <= 3)".format(**ratios))
        results[label]["ratios"] = ratios
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
