"""The VIP holder loses power (SIGKILL of its container) with acknowledged mail deferred on its
queue volume, then boots (podman start) with nobody at the keyboard and no playbook: the mount
unit mounts the queue volume, the integrity scan runs, Postfix, the exporter and keepalived start,
keepalived rejoins as BACKUP, and the node accepts mail again. Its deferred mail is delivered:
lost 0, duplicated 0. Prints the time from boot to each step and to the first 250."""

import subprocess
import time

from cluster import (ADDRESS, DOMAIN, PRIMARIES, RCPT, SENDER, SINK, VIP, acked, figures, queue_count, send, sh,
                     transition_time, vip_holders, wait_delivered, wait_single_holder)
from conftest import wait_for

COUNT = 50
QUEUE_UNIT = "var-spool-postfix.mount"

# Runs in the sender: one message to HOST:25, retried every 0.1 s until it is acknowledged; prints
# the epoch time of the 250 (node and host share the clock).
PROBE = """
import smtplib, sys, time
host, tag, deadline = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3])
message = f"From: probe@mailcount.test\\r\\nTo: {sys.argv[4]}\\r\\nMessage-ID: <{tag}-probe@mailcount.test>\\r\\nSubject: {tag} probe\\r\\n\\r\\nprobe\\r\\n"
while time.time() < deadline:
    try:
        with smtplib.SMTP(host, 25, timeout=5) as client:
            client.sendmail("probe@mailcount.test", [sys.argv[4]], message)
        print(time.time())
        sys.exit(0)
    except (OSError, smtplib.SMTPException):
        time.sleep(0.1)
sys.exit(1)
"""


def _entered(name: str, unit: str) -> float | None:
    """CLOCK_MONOTONIC (seconds) at which a unit last became active, None when it never did. The
    containers share the host's kernel clock, so it compares with the host's time.monotonic()."""
    value = sh(name, f"systemctl show -P ActiveEnterTimestampMonotonic {unit}", check=False).stdout.strip()
    return int(value) / 1e6 if value.isdigit() and int(value) else None


def _deferred(name: str) -> int:
    return sh(name, "postqueue -j").stdout.count('"queue_name": "deferred"')


def test_a_node_that_loses_power_serves_again_after_booting_without_a_playbook():
    holder = wait_single_holder()
    peer = next(p for p in PRIMARIES if p != holder)
    tag = f"reboot{int(time.time())}"

    # The sink stops accepting: what the holder acknowledges stays deferred on its queue volume.
    sh(SINK, "systemctl stop mail-sink")
    try:
        records = send(VIP, tag, COUNT, parallel=2)
        assert len(acked(records)) == COUNT, f"{holder} acknowledges every message"
        wait_for(lambda: _deferred(holder) >= COUNT, 120, f"{COUNT} deferred messages on {holder}", interval=1.0)
        queued = queue_count(holder)

        subprocess.run(["podman", "kill", "--signal", "KILL", holder], check=True, capture_output=True)
        wait_for(lambda: vip_holders() == [peer], 30, f"the VIP on {peer} alone", interval=0.2)
        booted_at, booted_mono = time.time(), time.monotonic()
        subprocess.run(["podman", "start", holder], check=True, capture_output=True)
        probe = subprocess.run(["podman", "exec", SENDER, "python3", "-c", PROBE, ADDRESS[holder], tag, "180", RCPT],
                               capture_output=True, text=True, timeout=240)
        assert probe.returncode == 0, f"{holder} did not acknowledge a message within 180 s of booting: {probe.stderr}"
        first_250 = float(probe.stdout.strip()) - booted_at
    finally:
        sh(SINK, "systemctl start mail-sink")

    wait_for(lambda: sh(holder, "systemctl is-active keepalived durable-mx-exporter durable-mx-health-guard",
                        check=False).returncode == 0, 60, f"keepalived, the exporter and the guard on {holder}", interval=0.5)
    steps = {unit: _entered(holder, unit) for unit in (QUEUE_UNIT, "postfix@-.service", "keepalived.service")}
    wait_for(lambda: transition_time(holder, "BACKUP", booted_at) is not None, 60,
             f"keepalived on {holder} to rejoin as BACKUP", interval=0.5)
    backup_at = transition_time(holder, "BACKUP", booted_at)
    integrity = sh(holder, "stat -c %Y /run/durable-mx/integrity--.json", check=False).stdout.strip()

    wait_for(lambda: sh(SINK, "ss -Hltn 'sport = :25' | grep -q LISTEN", check=False).returncode == 0, 60,
             "the sink to listen again", interval=0.5)
    for node in PRIMARIES:
        sh(node, "postqueue -f")
    probe_id = f"<{tag}-probe@mailcount.test>"
    counts = wait_delivered(records, tag, timeout=120, expect={r["message_id"] for r in acked(records)} | {probe_id})
    result = figures(
        f"reboot: {holder} killed with {queued} queued, booted, no playbook", records,
        {k: v for k, v in counts.items() if k != probe_id},
        **{f"boot_to_{unit.split('.')[0].split('@')[0]}": f"{at - booted_mono:.2f}s" if at else "never"
           for unit, at in steps.items()},
        boot_to_backup=f"{backup_at - booted_at:.2f}s" if backup_at else "never",
        boot_to_first_250=f"{first_250:.2f}s")

    assert sh(holder, "findmnt -n -o SOURCE /var/spool/postfix").stdout.strip() == "/dev/vdb"
    assert all(steps.values()), f"units that never became active after the boot: {steps}"
    assert integrity and float(integrity) >= booted_at - 1, "the pre-start integrity scan ran at boot"
    assert wait_single_holder() == peer, "the VIP stays on the peer (nopreempt)"
    assert VIP not in sh(holder, "ip -4 -o addr show").stdout
    assert probe_id in counts, f"the message {holder} acknowledged after its boot was delivered ({DOMAIN})"
    assert result["acked"] == COUNT and result["lost"] == 0 and result["duplicated"] == 0
