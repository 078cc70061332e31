"""The queue lives on its own XFS volume, mounted as the role promises, on both mail nodes."""

import json
import os
import subprocess
from pathlib import Path

from conftest import node

QUEUE = "/var/spool/postfix"
SCENARIO = Path(__file__).resolve().parents[1]


def test_queue_is_its_own_xfs_mount(group):
    for mx in group("mx"):
        fs = json.loads(mx.check_output(f"findmnt -J -o TARGET,SOURCE,FSTYPE,OPTIONS {QUEUE}"))["filesystems"][0]
        root = json.loads(mx.check_output("findmnt -J -o SOURCE --target /var/log"))["filesystems"][0]
        options = fs["options"].split(",")
        print(f"{mx.backend.hostname}: {fs}")
        assert fs["fstype"] == "xfs"
        assert fs["source"] == "/dev/vdb"
        assert fs["source"] != root["source"]
        assert "noatime" in options and "nodiratime" in options
        assert not any(o in options for o in ("nobarrier", "barrier"))
        fstab = mx.file("/etc/fstab").content_string
        assert f"/dev/vdb {QUEUE} xfs noatime,nodiratime" in fstab


def test_blank_device_was_formatted_with_our_label(group):
    for mx in group("mx"):
        assert mx.check_output("blkid -p -s TYPE -o value /dev/vdb") == "xfs"
        assert mx.check_output("blkid -p -s LABEL -o value /dev/vdb") == "dmxqueue"


def test_device_with_another_filesystem_is_refused():
    mx = node("dmx-durable-mx")
    assert mx.check_output("blkid -p -s TYPE -o value /dev/vdd") == "ext4"
    result = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "playbooks" / "queue_volume.yml")],
        capture_output=True, text=True,
    )
    print(result.stdout[-1500:])
    assert result.returncode != 0
    assert "/dev/vdd is not blank: it holds ext4 filesystem labelled notaqueue" in result.stdout
    assert mx.check_output("blkid -p -s TYPE -o value /dev/vdd") == "ext4", "the refused device was modified"
    assert not mx.mount_point("/srv/refused").exists


def test_existing_queue_was_migrated_without_loss():
    old = node("dmx-durable-old")
    before = [json.loads(line)["queue_id"] for line in old.file("/root/pre-migration-queue.jsonl").content_string.splitlines()]
    after = {json.loads(line)["queue_id"] for line in old.check_output("postqueue -j").splitlines()}
    missing = [qid for qid in before if qid not in after]
    print(f"migration: before={len(before)} after={len(after & set(before))} missing={len(missing)}")
    assert len(before) == 25
    assert not missing
    for qid in before:
        # Every message is still readable from the new volume.
        assert old.run("postcat -q %s", qid).rc == 0
    assert old.file(f"{QUEUE}.root-disk").is_directory, "the root-disk copy is kept for the operator"


def test_postfix_never_runs_on_the_bare_directory():
    """With the queue volume unmounted, starting Postfix mounts the volume first (its mount unit,
    the boot path), and the unit asserts a mountpoint: Postfix never runs on the directory beneath."""
    mx = node("dmx-durable-mx")
    assert f"AssertPathIsMountPoint={QUEUE}" in mx.check_output("systemctl cat postfix@-.service")
    mx.check_output("systemctl stop postfix")
    try:
        # Postfix's last processes may still be exiting right after the stop: retry a busy umount.
        mx.check_output(f"for i in $(seq 20); do umount {QUEUE} && exit 0; sleep 0.5; done; exit 1")
        assert mx.run(f"mountpoint -q {QUEUE}").rc != 0
        start = mx.run("systemctl start postfix@-.service")
        source = mx.run(f"findmnt -n -o SOURCE {QUEUE}").stdout.strip()
        print(f"\nqueue volume unmounted, then postfix@- started: rc={start.rc}, queue on {source or 'the bare directory'}")
        assert start.rc == 0 and source == "/dev/vdb"
    finally:
        mx.run(f"mountpoint -q {QUEUE} || systemctl start $(systemd-escape --path --suffix=mount {QUEUE})")
        mx.check_output("systemctl start postfix")
    assert mx.check_output("systemctl is-active postfix@-.service") == "active"
    assert mx.check_output(f"findmnt -n -o SOURCE {QUEUE}") == "/dev/vdb"