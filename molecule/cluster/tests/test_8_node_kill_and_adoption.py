"""A primary dies (SIGKILL of its container) with acknowledged mail deferred on its queue volume:
the VIP moves to the peer, the peer accepts new mail, and runbook adopt delivers the dead node's
queue from the peer (its volume is attached there as /dev/vdc). Every acknowledged message reaches
the sink once: lost 0, duplicated 0. Before the kill, adopt refuses a node that still answers.

Runs last: the killed node stays down until `molecule destroy`."""

import subprocess
import time

from cluster import (PRIMARIES, SINK, VIP, acked, figures, queue_count, run_playbook, send, sh, task_result,
                     wait_delivered, wait_single_holder, watch_vip, watched_at)
from conftest import wait_for

BEFORE_KILL = 100
AFTER_KILL = 50
ADOPT = "playbooks/runbooks/adopt.yml"


def _deferred(name: str) -> int:
    return sh(name, "postqueue -j").stdout.count('"queue_name": "deferred"')


def _mounted(name: str, mountpoint: str) -> bool:
    return sh(name, f"findmnt -n {mountpoint}", check=False).returncode == 0


def test_adopt_refuses_a_node_that_still_answers():
    holder = wait_single_holder()
    peer = next(p for p in PRIMARIES if p != holder)
    rc, outcome = run_playbook(ADOPT, "-e", f"dead={holder}", "-e", f"adopter={peer}", "-e", "confirm=yes")
    refusal = task_result(outcome, "Refuse while the dead node may still run")
    print(f"\n[adopt fence] dead={holder} (alive) adopter={peer}: rc={rc} {refusal.get('msg', '')}")
    assert rc != 0 and refusal.get("failed"), "adopt ran against a node that still answers"
    assert "REFUSED" in refusal["msg"] and "SMTP answers" in refusal["msg"]
    assert not _mounted(peer, f"/var/spool/postfix-adopt-{holder}"), "the refused run mounted the volume anyway"


def test_killed_nodes_queue_is_adopted_by_its_peer():
    holder = wait_single_holder()
    peer = next(p for p in PRIMARIES if p != holder)
    stamp = int(time.time())
    tag, after_tag = f"killed{stamp}", f"afterkill{stamp}"

    # The sink stops accepting: mail acknowledged by the holder stays deferred on its queue volume.
    sh(SINK, "systemctl stop mail-sink")
    try:
        records = send(VIP, tag, BEFORE_KILL, parallel=2)
        assert len(acked(records)) == BEFORE_KILL, "the VIP holder acknowledges every message"
        wait_for(lambda: _deferred(holder) >= BEFORE_KILL, 120, f"{BEFORE_KILL} deferred messages on {holder}",
                 interval=1.0)
        queued_on_holder = queue_count(holder)

        # A crash: SIGKILL to every process of the node, no shutdown of anything.
        acquired = watch_vip(peer, present=True, timeout=60)
        killed_at = time.time()
        subprocess.run(["podman", "kill", "--signal", "KILL", holder], check=True, capture_output=True)
        vip_switch = watched_at(acquired, "the VIP to reach the peer") - killed_at

        after_records = send(VIP, after_tag, AFTER_KILL, parallel=2)
        assert len(acked(after_records)) == AFTER_KILL, f"{peer} acknowledges every message sent to the VIP"
    finally:
        sh(SINK, "systemctl start mail-sink")
    # Retry what the peer deferred once the sink listens again.
    wait_for(lambda: sh(SINK, "ss -Hltn 'sport = :25' | grep -q LISTEN", check=False).returncode == 0, 60,
             "the sink to listen again", interval=0.5)
    sh(peer, "postqueue -f")

    adopt_started = time.time()
    rc, outcome = run_playbook(ADOPT, "-e", f"dead={holder}", "-e", f"adopter={peer}", "-e", "confirm=yes")
    adoption_time = time.time() - adopt_started
    report = task_result(outcome, "Report the adoption").get("msg", {})
    print(f"\n[adopt] {task_result(outcome, 'Queue summary before').get('msg')} "
          f"{task_result(outcome, 'Queue summary after').get('msg')} "
          f"{task_result(outcome, 'Say what to do next').get('msg')}")
    assert rc == 0, f"adopt failed: {report} {task_result(outcome, 'Stop here while mail is left').get('msg')}"

    sh(peer, "postqueue -f")  # in case the first retry met the sink still starting
    counts = wait_delivered(records, tag, timeout=120)
    after_counts = wait_delivered(after_records, after_tag, timeout=120)
    result = figures(f"node kill: {holder} killed with deferred mail, adopted by {peer}", records, counts,
                     queued_on_holder=queued_on_holder, vip_switch_time=f"{vip_switch:.2f}s",
                     adoption_time=f"{adoption_time:.1f}s", messages_adopted=report.get("adopted"))
    after_result = figures(f"node kill: sent to the VIP after the kill, acked by {peer}", after_records, after_counts)

    assert result["acked"] == BEFORE_KILL and result["lost"] == 0 and result["duplicated"] == 0
    assert result["delivered"] == BEFORE_KILL
    assert int(report["adopted"]) >= BEFORE_KILL and int(report["left"]) == 0
    assert after_result["acked"] == AFTER_KILL and after_result["lost"] == 0 and after_result["duplicated"] == 0
    assert not _mounted(peer, f"/var/spool/postfix-adopt-{holder}"), "the adopted volume is still mounted"
    assert sh(peer, f"test -e /etc/postfix-adopt-{holder}", check=False).returncode != 0, "rescue config left behind"


