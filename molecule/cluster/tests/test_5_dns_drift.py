"""The DNS check reports drift when the zone is changed behind Ansible's back, and is quiet again
once the zone matches the inventory."""

import time

from cluster import ADDRESS, BACKUP, DNS, DOMAIN, run_playbook, sh, task_result

ZONE = f"/etc/knot/zones/{DOMAIN}.zone"


def _check(*extra):
    rc, outcome = run_playbook("playbooks/check-dns.yml", *extra)
    return rc, task_result(outcome, "Compare MX records")


def test_dns_check_reports_drift_made_behind_its_back():
    original = sh(DNS, f"cat {ZONE}").stdout
    backup_name = f"{BACKUP}.lab"
    try:
        # Someone edits the live zone by hand: the backup MX moves to preference 5 and its A record
        # to an address no node has.
        sh(DNS, f"sed -i -e 's/^@  IN MX 20 /@  IN MX 5 /' -e 's/^{backup_name}  IN A .*/{backup_name}  IN A 10.89.201.99/' {ZONE}"
                f" && knotc zone-reload {DOMAIN}")
        time.sleep(1)
        rc, report = _check("-e", "durable_mx_dns_fail_on_drift=false")
        kinds = sorted(d["kind"] for d in report["drift"])
        print("\n[dns drift] reported:", [d["message"] for d in report["drift"]])
        assert rc == 0 and report["in_sync"] is False and report["changed"] is False
        assert kinds == ["address", "mx_preference", "vip"], kinds
        address = next(d for d in report["drift"] if d["kind"] == "address")
        assert address["found"] == ["10.89.201.99"] and address["expected"] == [ADDRESS[BACKUP]]

        # With fail_on_drift (the default of the playbook) the run fails and names the drift.
        rc, failed = _check()
        assert rc != 0 and failed.get("failed") and "mx_preference" not in failed["msg"]
        assert "has preference 5, expected 20" in failed["msg"]
    finally:
        sh(DNS, f"cat > {ZONE} <<'EOF'\n{original}EOF\nknotc zone-reload {DOMAIN}")
    time.sleep(1)
    rc, report = _check()
    assert rc == 0 and report["in_sync"], report["drift"]
