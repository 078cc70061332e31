"""Helpers of the cluster scenario's tests: the topology from the inventory, VIP holders, sending
numbered mail and counting it at the sink by Message-ID.

Every figure a test prints comes from here: sent (messages the client tried), acked (250 with a
queue ID), delivered (distinct Message-IDs stored by the sink), lost (acked but never delivered)
and duplicated (extra copies of a Message-ID at the sink).
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from pathlib import Path

import yaml

# run_playbook and task_result live in molecule/conftest.py (shared by every scenario); the tests import them from here.
from conftest import REPO, run_playbook, task_result, wait_for  # noqa: F401

SCENARIO = Path(__file__).resolve().parents[1]
DOMAIN = "durable-mx.test"
RCPT = f"test@{DOMAIN}"
MAILCOUNT = "python3 /usr/local/bin/mailcount"


def _host_vars(name: str) -> dict:
    return yaml.safe_load((SCENARIO / "host_vars" / f"{name}.yml").read_text()) or {}


def _groups() -> dict[str, list[str]]:
    molecule = yaml.safe_load((SCENARIO / "molecule.yml").read_text())
    groups: dict[str, list[str]] = {}
    for platform in molecule["platforms"]:
        for group in platform.get("groups", []):
            groups.setdefault(group, []).append(platform["name"])
    return groups


GROUPS = _groups()
PRIMARIES = GROUPS["mx_primary"]
BACKUP = GROUPS["mx_backup"][0]
DNS = GROUPS["dns"][0]
SINK = GROUPS["mail_sink"][0]
SENDER = GROUPS["mail_sender"][0]
VIP = _host_vars("localhost")["lab_mx_vip"]
ADDRESS = {name: _host_vars(name)["lab_node_spec"]["ip"] for names in GROUPS.values() for name in names}
SINK_DIR = "/var/lib/mail-sink"


def sh(name: str, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a shell command in a node (podman exec; faster than testinfra for polling)."""
    result = subprocess.run(["podman", "exec", name, "sh", "-c", command], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{name}: {command!r} exited {result.returncode}: {result.stdout[-600:]} {result.stderr[-600:]}")
    return result


def vip_holders() -> list[str]:
    """The primaries that have the VIP on an interface right now."""
    return [name for name in PRIMARIES
            if f" {VIP}/" in sh(name, "ip -4 -o addr show", check=False).stdout]


def wait_single_holder(timeout: float = 30) -> str:
    """Wait until exactly one primary holds the VIP, and stays so for a second; its name."""
    def one() -> bool:
        return len(vip_holders()) == 1

    wait_for(one, timeout, "exactly one VIP holder")
    time.sleep(1)
    holders = vip_holders()
    assert len(holders) == 1, f"VIP holders: {holders}"
    return holders[0]


@functools.cache  # once per node and run: sink_counts polls
def install_mailcount(name: str) -> None:
    subprocess.run(["podman", "cp", str(REPO / "tests" / "tools" / "mailcount.py"), f"{name}:/usr/local/bin/mailcount"],
                   check=True)


def start_send(host: str, tag: str, count: int, delay: float = 0.0, parallel: int = 1,
               timeout: float = 20) -> subprocess.Popen:
    """Start sending `count` numbered messages from the sender node to host:25 in the background
    (`timeout`: the client's patience per SMTP step)."""
    install_mailcount(SENDER)
    command = (f"{MAILCOUNT} send --host {host} --count {count} --rcpt {RCPT} --tag {tag} --delay {delay} "
               f"--parallel {parallel} --timeout {timeout} --reconnect-delay 0.1 --out /root/{tag}.jsonl")
    return subprocess.Popen(["podman", "exec", SENDER, "sh", "-c", command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_send(process: subprocess.Popen, tag: str, timeout: float = 300) -> list[dict]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"mailcount send failed: {out} {err}"
    records = sh(SENDER, f"cat /root/{tag}.jsonl").stdout.splitlines()
    return [json.loads(line) for line in records if line.strip()]


def send(host: str, tag: str, count: int, **kwargs) -> list[dict]:
    return finish_send(start_send(host, tag, count, **kwargs), tag)


def acked(records: list[dict]) -> list[dict]:
    return [r for r in records if r["code"] == 250 and r["queue_id"]]


def sink_counts(tag: str) -> dict[str, int]:
    """Copies stored at the sink per Message-ID of this tag."""
    install_mailcount(SINK)
    return json.loads(sh(SINK, f"{MAILCOUNT} count --dir {SINK_DIR} --tag {tag}").stdout)


def wait_delivered(records: list[dict], tag: str, timeout: float, expect: set[str] | None = None) -> dict[str, int]:
    """Wait until every acknowledged message (or every Message-ID in `expect`) is at the sink."""
    wanted = expect if expect is not None else {r["message_id"] for r in acked(records)}
    state: dict[str, dict[str, int]] = {"counts": {}}

    def arrived() -> bool:
        state["counts"] = sink_counts(tag)
        return wanted <= set(state["counts"])

    try:
        wait_for(arrived, timeout, f"{len(wanted)} messages of {tag} at the sink", interval=1.0)
    except AssertionError:
        pass  # the figures below show what is missing
    return state["counts"]


def figures(title: str, records: list[dict], counts: dict[str, int], **extra) -> dict:
    """Print and return sent / acked / delivered / lost / duplicated (+ extra figures)."""
    acked_ids = {r["message_id"] for r in acked(records)}
    result = {
        "sent": len(records),
        "acked": len(acked_ids),
        "refused": len(records) - len(acked_ids),
        "delivered": len(set(counts)),
        "lost": len(acked_ids - set(counts)),
        "duplicated": sum(n - 1 for n in counts.values()),
        **extra,
    }
    print(f"\n[{title}] " + "  ".join(f"{k}={v}" for k, v in result.items()))
    return result


def postfix(name: str, action: str) -> None:
    sh(name, f"systemctl {action} postfix")


def queue_count(name: str) -> int:
    return len([line for line in sh(name, "postqueue -j").stdout.splitlines() if line.strip()])


def watch_vip(name: str, present: bool, timeout: float = 30) -> subprocess.Popen:
    """Start a poller inside a node that prints the epoch time (from the shared host clock) at
    which the VIP appears on it (present=True) or is gone from it (present=False). It checks every
    50 ms in the node itself, so podman exec latency does not blur the figure."""
    test = "" if present else "!"
    script = (f"echo ready; end=$(( $(date +%s) + {int(timeout)} )); "
              f"while [ $(date +%s) -lt $end ]; do "
              f"if {test} ip -4 -o addr show | grep -q ' {VIP}/'; then date +%s.%N; exit 0; fi; sleep 0.05; done; exit 1")
    process = subprocess.Popen(["podman", "exec", name, "sh", "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready", f"the VIP poller did not start on {name}"
    return process


def watched_at(process: subprocess.Popen, what: str) -> float:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, f"timed out waiting for {what}"
    return float(out.strip())


def stop_postfix_at(name: str) -> float:
    """Stop Postfix on a node; the epoch time at which the stop began (node clock = host clock)."""
    return float(sh(name, "date +%s.%N; systemctl stop postfix").stdout.split()[0])


def transition_time(name: str, state: str, after: float) -> float | None:
    """Epoch time of the first `state` transition logged by keepalived's notify script after `after`."""
    for line in sh(name, "cat /var/log/keepalived-transitions/transitions.log").stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == state and float(fields[0]) >= after:
            return float(fields[0])
    return None
