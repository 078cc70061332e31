"""The VIP holder's queue disk fails while Postfix keeps running (xfs_io shutdown: EIO from then on,
no process killed), under light numbered traffic to the VIP. keepalived's check fences the instance
and fails: the VIP leaves within 3 s, no client session hangs (the client's patience is a sending
MTA's 600 s, so a hang would show), the exporter reports the dead volume, and runbook
recover-volume brings the node back. Every acknowledged message reaches the sink: lost 0."""

import subprocess
import time

from cluster import (ADDRESS, PRIMARIES, SENDER, VIP, acked, figures, finish_send, run_playbook, sh, start_send, task_result,
                     wait_delivered, wait_single_holder, watch_vip, watched_at)
from conftest import wait_for

QUEUE = "/var/spool/postfix"
RECOVER = "playbooks/runbooks/recover-volume.yml"


def _metric(name: str, metric: str) -> str:
    """The samples of one metric from the node's exporter (python3 in the node: there is no curl)."""
    get = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9154/metrics', timeout=5).read().decode())"
    lines = sh(name, f'python3 -c "{get}"').stdout.splitlines()
    return " ".join(line for line in lines if line.startswith(metric + "{"))


def test_failed_queue_disk_fences_the_node_and_moves_the_vip():
    holder = wait_single_holder()
    peer = next(p for p in PRIMARIES if p != holder)
    tag = f"diskfail{int(time.time())}"
    records: list[dict] = []
    try:
        # 2 sessions, one message each per ~0.5 s: a few sessions in flight when the disk goes.
        sending = start_send(VIP, tag, 60, delay=0.5, parallel=2, timeout=600)
        time.sleep(4)
        left = watch_vip(holder, present=False, timeout=30)
        failed_at = float(sh(holder, f"date +%s.%N; xfs_io -x -c shutdown {QUEUE}").stdout.split()[0])
        vip_left = watched_at(left, f"the VIP to leave {holder}") - failed_at

        # Detection by the exporter (within its scrape, long before QueueVolumeFailed's 60 s).
        wait_for(lambda: _metric(holder, "durablemx_queue_volume_writable").endswith(" 0.0"), 60,
                 f"{holder}'s exporter to report the queue volume not writable", interval=1.0)
        state = dict(line.split("=", 1) for line in sh(holder, "cat /run/durable-mx/health/postfix.state").stdout.splitlines()
                     if "=" in line)
        refused = subprocess.run(["podman", "exec", SENDER, "python3", "-c",
                                  f"import socket; socket.create_connection(('{ADDRESS[holder]}', 25), timeout=5)"],
                                 capture_output=True, text=True)
        records = finish_send(sending, tag, timeout=700)
    finally:
        rc, outcome = run_playbook(RECOVER, "-e", f"nodes={holder}", "-e", "confirm=yes")
    health = task_result(outcome, "Show the health").get("msg")
    assert rc == 0, f"recover-volume failed: {task_result(outcome, 'Show what is wrong').get('msg')} {health}"

    for node in PRIMARIES:
        sh(node, "postqueue -f")
    counts = wait_delivered(records, tag, timeout=120)
    fenced_after = float(state["fenced_at"]) - failed_at if state.get("fenced_at") else None
    longest = max(r["seconds"] for r in records)
    result = figures(f"disk failure: {holder}'s queue filesystem shut down under light traffic, {peer} took the VIP",
                     records, counts, fenced_after=f"{fenced_after:.2f}s" if fenced_after is not None else "never",
                     vip_left_after=f"{vip_left:.2f}s", longest_session=f"{longest:.2f}s",
                     guard_error=state.get("error", ""))

    assert fenced_after is not None and fenced_after < 3, "the guard or keepalived's check fenced the instance"
    assert vip_left < 3, f"the VIP left {holder} {vip_left:.2f} s after the disk failed"
    assert longest < 10, f"a client session lasted {longest:.1f} s: it hung on the dead node"
    assert refused.returncode != 0, "the fenced node still accepts connections on port 25"
    after = [r for r in acked(records) if r["acked_at"] > failed_at + vip_left]
    assert after, f"{peer} acknowledged the traffic after the failover"
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert sh(holder, "systemctl is-active postfix@-.service").stdout.strip() == "active"
    assert sh(holder, f"findmnt -n -o SOURCE {QUEUE}").stdout.strip() == "/dev/vdb"

