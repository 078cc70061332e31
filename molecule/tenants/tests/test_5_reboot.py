"""The tenant node loses power (podman kill) with transactional mail deferred (its sink stopped),
then boots with nobody at the keyboard (podman start, no playbook): every queue volume that was
mounted is mounted again by its own mount unit, every instance that ran runs again, and the mail
acknowledged before the cut is delivered once its sink is back. Runs last (after the removal of
the bulk instance, whose volume must stay unmounted)."""

import json
import subprocess
import time

from conftest import wait_for
from tenant_lab import ARRIVALS, MX, delivered_all, latency, mx, send, start_sinks, stop_sink

COUNT = 30
RECORDS = "/root/reboot.jsonl"  # not /tmp: the records must outlive the boot


def _running_instances() -> set[str]:
    out = mx().run("systemctl list-units --plain --no-legend --state=active 'postfix@*.service'").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _xfs_mounts() -> set[tuple[str, str]]:
    out = mx().run("findmnt -rn -t xfs -o TARGET,SOURCE").stdout
    return {tuple(line.split()) for line in out.splitlines() if line.strip()}


def _deferred(config_dir: str) -> int:
    return mx().run(f"postqueue -c {config_dir} -j").stdout.count('"queue_name": "deferred"')


def test_tenant_node_serves_again_after_a_boot_without_a_playbook():
    host = mx()
    start_sinks()
    stop_sink("transactional")
    out = send("transactional", "reboot", COUNT, interval=0.02)
    host.check_output(f"cp {out} {RECORDS}")
    wait_for(lambda: _deferred("/etc/postfix-transactional") >= COUNT, 120, f"{COUNT} deferred transactional messages", 1)
    instances, mounts = _running_instances(), _xfs_mounts()
    assert "postfix@postfix-transactional.service" in instances and ("/var/spool/postfix", "/dev/vdb") in mounts

    subprocess.run(["podman", "kill", "--signal", "KILL", MX], check=True, capture_output=True)
    booted_at = time.monotonic()
    subprocess.run(["podman", "start", MX], check=True, capture_output=True)
    wait_for(lambda: _running_instances() >= instances, 180, f"{sorted(instances)} running again", 0.5)
    all_running = time.monotonic() - booted_at
    after_mounts = _xfs_mounts()
    print(f"\n[tenant reboot] {COUNT} deferred, killed, booted: {len(instances)} instances running after "
          f"{all_running:.1f} s; xfs mounts before {sorted(mounts)}, after {sorted(after_mounts)}")
    assert after_mounts == mounts, "the boot mounts exactly the queue volumes that were mounted"

    start_sinks()  # transient units: gone with the boot
    host.check_output("postqueue -c /etc/postfix-transactional -f")
    wait_for(lambda: delivered_all("transactional", RECORDS), 120, "the deferred transactional mail delivered", 1)
    figures = latency("transactional", RECORDS)
    arrivals = [json.loads(line).get("message_id", "") for line in
                host.check_output(f"cat {ARRIVALS.format(name='transactional')}").splitlines() if line.strip()]
    copies = [m for m in arrivals if m.startswith("<reboot-")]
    duplicated = len(copies) - len(set(copies))
    print(f"[tenant reboot] transactional: sent={figures['sent']} acked={figures['acked']} "
          f"delivered={figures['delivered']} lost={figures['missing']} duplicated={duplicated}")
    assert figures["acked"] == COUNT and figures["missing"] == 0 and duplicated == 0
