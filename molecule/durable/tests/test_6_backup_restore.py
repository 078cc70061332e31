"""Backup and restore runbooks (playbooks/runbooks/backup.yml, restore.yml) on the greenfield node.

A known set of messages is queued (deferred: routed to loopback port 9 where nothing listens,
first retry minutes away; and hold), backed up under xfs_freeze, then destroyed and restored:
every message must come back with the same queue ID, in the same queue, with the same body
hash. A restore without confirm=yes and one from a tampered archive must change nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import json_out, node, run_playbook, task_result, wait_for

MX = "dmx-durable-mx"
RCPT = "invoices@durable-mx.test"
BACKUPS = "/var/backups/durable-mx"
COUNT, HELD = 24, 8


def queued() -> dict[str, str]:
    """queue ID -> queue name on the node, from postqueue -j."""
    lines = node(MX).check_output("postqueue -j").splitlines()
    return {m["queue_id"]: m["queue_name"] for m in map(json.loads, filter(None, lines))}


def master_pid() -> str:
    return node(MX).check_output("systemctl show -p MainPID --value postfix@-.service").strip()


def failed_msg(outcome: dict) -> str:
    """What the failed tasks of a run said (a loop's own items included)."""
    failed = [result for play in outcome["plays"] for task in play["tasks"] for result in task["hosts"].values()
              if result.get("failed")]
    return " ".join(str(r.get("msg", "")) for f in failed for r in [f] + [i for i in f.get("results", []) if i.get("failed")])


@pytest.fixture(scope="module")
def backed_up(mailcount) -> dict:
    """Queue COUNT messages (HELD of them on hold), back them up; the expected IDs and the manifest."""
    mx = node(MX)
    mc = mailcount(MX)
    # Leftovers of the earlier tests would blur "exactly these IDs": this scenario's queue is ours.
    mx.check_output("postsuper -d ALL")
    tag = f"bk{int(time.time())}"
    sent = json_out(mx, f"{mc} send --host 127.0.0.1 --count {COUNT} --rcpt {RCPT} --tag {tag} --out /root/{tag}.jsonl")
    assert sent["acked"] == COUNT, sent
    # Each message is tried once (connection refused), then waits in deferred for its first retry.
    wait_for(lambda: sorted(queued().values()) == ["deferred"] * COUNT, 120, f"{COUNT} messages in deferred", interval=1)
    acks = [json.loads(line) for line in mx.check_output(f"cat /root/{tag}.jsonl").splitlines()]
    hold = [r["queue_id"] for r in acks[:HELD]]
    mx.check_output("postsuper " + " ".join(f"-h {i}" for i in hold))
    expected = {r["queue_id"]: ("hold" if r["queue_id"] in hold else "deferred") for r in acks}
    assert queued() == expected

    dest = tempfile.mkdtemp(prefix="dmx-backup-fetch-")
    rc, outcome = run_playbook("playbooks/runbooks/backup.yml", "-l", MX, "-e", f"dest={dest}")
    assert rc == 0, failed_msg(outcome)
    manifest = task_result(outcome, "Back up each instance")["results"][0]["manifest"]
    print(f"\n[backup] {task_result(outcome, 'Show the backups')['msg']}")
    return {"tag": tag, "acks": f"/root/{tag}.jsonl", "expected": expected, "manifest": manifest, "dest": Path(dest)}


def test_backup_holds_exactly_the_queued_messages(backed_up, mailcount):
    mx, manifest, expected = node(MX), backed_up["manifest"], backed_up["expected"]
    backup_dir = f"{BACKUPS}/{manifest['backup_id']}"
    assert manifest["instance"] == "postfix" and manifest["volume"]["fstype"] == "xfs"
    assert manifest["queue"]["queue_ids"] == {
        queue: sorted(i for i, q in expected.items() if q == queue) for queue in ("deferred", "hold")}
    assert mx.check_output(f"sha256sum {backup_dir}/postfix.queue.tar.gz").split()[0] == manifest["queue"]["sha256"]
    # Every body in the archive is the one that was acknowledged.
    scratch = "/root/backup-extract"
    mx.check_output(f"rm -rf {scratch} && mkdir {scratch} && tar -C {scratch} -xzf {backup_dir}/postfix.queue.tar.gz")
    check = json_out(mx, f"{mailcount(MX)} check-postfix --acks {backed_up['acks']} --queue-dir {scratch}")
    mx.check_output(f"rm -rf {scratch}")
    config = mx.check_output(f"tar -tzf {backup_dir}/postfix.config.tar.gz").split()
    print(f"\n[backup] messages backed up={manifest['queue']['messages']} files={manifest['queue']['files']} "
          f"archive={manifest['queue']['size']} bytes freeze={manifest['freeze_seconds']} s "
          f"(tar {manifest['tar_seconds']} s) bodies present={check['present']} corrupt={check['corrupt']}")
    assert check["present"] == COUNT and check["lost"] == 0 and check["corrupt"] == 0
    assert "etc/postfix/main.cf" in config and "etc/postfix/master.cf" in config
    assert 0 < manifest["freeze_seconds"] < manifest["freeze_timeout"]
    # -e dest=DIR fetched the same files to the controller.
    fetched = backed_up["dest"] / MX / manifest["backup_id"]
    assert hashlib.sha256((fetched / "postfix.queue.tar.gz").read_bytes()).hexdigest() == manifest["queue"]["sha256"]
    assert json.loads((fetched / "postfix.manifest.json").read_text()) == manifest
    shutil.rmtree(backed_up["dest"])
    # Thawed: the volume takes writes again.
    mx.check_output("touch /var/spool/postfix/.thaw-check && rm /var/spool/postfix/.thaw-check")


def test_backup_in_check_mode_writes_nothing(backed_up):
    before = node(MX).check_output(f"ls {BACKUPS}")
    rc, outcome = run_playbook("playbooks/runbooks/backup.yml", "-l", MX, "--check")
    assert rc == 0, failed_msg(outcome)
    shown = task_result(outcome, "Show the backups")["msg"]
    print(f"\n[backup --check] {shown}")
    assert shown == [f"{MX} postfix: would back up {COUNT} message(s) (deferred {COUNT - HELD}, hold {HELD})"]
    assert node(MX).check_output(f"ls {BACKUPS}") == before


def test_restore_without_confirmation_changes_nothing(backed_up):
    pid = master_pid()
    rc, outcome = run_playbook("playbooks/runbooks/restore.yml", "-l", MX, "-e", f"backup={backed_up['manifest']['backup_id']}")
    assert rc != 0 and "Not confirmed" in failed_msg(outcome), failed_msg(outcome)
    assert queued() == backed_up["expected"] and master_pid() == pid


def test_restore_from_a_tampered_archive_is_refused_before_anything_changes(backed_up):
    mx, backup_id = node(MX), backed_up["manifest"]["backup_id"]
    tampered = f"{backup_id}-tampered"
    mx.check_output(f"rm -rf {BACKUPS}/{tampered} && cp -a {BACKUPS}/{backup_id} {BACKUPS}/{tampered}")
    archive = f"{BACKUPS}/{tampered}/postfix.queue.tar.gz"
    # One byte of the compressed stream flipped in the middle of the archive.
    mx.check_output(f"python3 -c \"import os; f=open('{archive}','r+b'); n=os.path.getsize('{archive}')//2; "
                    f"f.seek(n); b=f.read(1); f.seek(n); f.write(bytes([b[0] ^ 255]))\"")
    pid = master_pid()
    rc, outcome = run_playbook("playbooks/runbooks/restore.yml", "-l", MX, "-e", f"backup={tampered}", "-e", "confirm=yes")
    message = failed_msg(outcome)
    print(f"\n[tampered] {message[:300]}")
    assert rc != 0 and "sha256" in message and "nothing was changed" in message
    assert queued() == backed_up["expected"] and master_pid() == pid
    mx.check_output(f"rm -rf {BACKUPS}/{tampered}")


def test_restore_brings_every_message_back(backed_up, mailcount):
    mx, expected = node(MX), backed_up["expected"]
    mx.check_output("postsuper -d ALL")
    assert queued() == {}
    started = time.monotonic()
    rc, outcome = run_playbook("playbooks/runbooks/restore.yml", "-l", MX, "-e", f"backup={backed_up['manifest']['backup_id']}",
                               "-e", "confirm=yes")
    took = time.monotonic() - started
    assert rc == 0, failed_msg(outcome)
    report = task_result(outcome, "Show the queue IDs restored")["msg"]
    now = queued()
    check = json_out(mx, f"{mailcount(MX)} check-postfix --acks {backed_up['acks']}")
    restored = {i for i in expected if i in now}
    same_queue = {i for i in restored if now[i] == expected[i]}
    print(f"\n[restore] {report}\n[restore] backed up={len(expected)} restored={len(restored)} same queue={len(same_queue)} "
          f"missing={len(set(expected) - restored)} extra={len(set(now) - set(expected))} bodies intact={check['present']} "
          f"corrupt={check['corrupt']} playbook={took:.0f} s")
    assert now == expected
    assert check["present"] == COUNT and check["lost"] == 0 and check["corrupt"] == 0
    assert "missing 0" in report[0]
    assert mx.check_output("systemctl is-active postfix@-.service") == "active"
    # What was there before the restore (the queue emptied above) is kept aside on the volume.
    assert mx.run("ls -d /var/spool/postfix/durable-mx-restore-aside/*/deferred").rc == 0
