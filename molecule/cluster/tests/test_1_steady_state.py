"""Steady state: DNS publishes the inventory's MX set, exactly one primary holds the VIP, and mail
from an outside sender reaches the sink through MX 10 (the VIP), every message once."""

import time

from cluster import (ADDRESS, BACKUP, DNS, DOMAIN, PRIMARIES, SENDER, VIP, acked, figures, run_playbook, send, sh,
                     sink_counts, task_result, vip_holders, wait_delivered, wait_single_holder)


def test_dns_publishes_the_inventory_mx_set():
    rc, outcome = run_playbook("playbooks/check-dns.yml")
    check = task_result(outcome, "Compare MX records")
    published = check["published"][ADDRESS[DNS]]
    print("\n[dns] published:", published)
    assert rc == 0 and check["in_sync"], check["drift"]
    assert check["changed"] is False
    assert published["mx"] == [{"preference": 10, "exchange": f"mx.{DOMAIN}"},
                               {"preference": 20, "exchange": f"{BACKUP}.lab.{DOMAIN}"}]
    assert published["addresses"][f"mx.{DOMAIN}"] == [VIP]


def test_lab_dns_is_authoritative_only():
    # Knot answers its zone with AA and refuses everything else: nothing is looked up elsewhere.
    answer = sh(DNS, f"kdig @127.0.0.1 {DOMAIN} MX +norecurse").stdout.lower()
    assert "flags: qr aa;" in answer and "status: noerror" in answer
    refused = sh(DNS, "kdig @127.0.0.1 example.com A +recurse").stdout.lower()
    assert "status: refused" in refused and " ra" not in refused.split("flags:")[1].split(";")[0]


def test_sender_postfix_resolves_only_through_the_lab_dns():
    # The Postfix service sees the lab DNS (its chroot copy too); the node's own resolver is untouched.
    service_view = sh(SENDER, "cat /var/spool/postfix/etc/resolv.conf").stdout
    assert [line for line in service_view.splitlines() if line.startswith("nameserver")] == [f"nameserver {ADDRESS[DNS]}"]
    # The service's mount namespace has its own resolv.conf (the chroot copy above was taken from it;
    # the steady-state mail test shows the sender resolving mx.<domain>, a name only the lab DNS knows).
    binds = sh(SENDER, "systemctl show -p BindReadOnlyPaths --value postfix@-").stdout
    assert "/etc/durable-mx/mail-sender-resolv.conf:/etc/resolv.conf" in binds
    assert ADDRESS[DNS] not in sh(SENDER, "cat /etc/resolv.conf").stdout
    conf = sh(SENDER, "postconf -h default_transport relay_transport").stdout.splitlines()
    assert all(line.startswith("retry:") for line in conf), conf


def test_exactly_one_primary_holds_the_vip():
    # Sample for a few seconds: never two holders (split brain), never none.
    samples = []
    for _ in range(10):
        samples.append(tuple(vip_holders()))
        time.sleep(0.3)
    print("\n[vip] holders over 3 s:", sorted(set(samples)))
    assert all(len(holders) == 1 for holders in samples), samples
    assert len(set(samples)) == 1, "the VIP moved in steady state"
    holder = samples[0][0]
    peer = next(p for p in PRIMARIES if p != holder)
    assert "MASTER" in sh(holder, "tail -n 1 /var/log/keepalived-transitions/transitions.log").stdout
    assert "BACKUP" in sh(peer, "tail -n 1 /var/log/keepalived-transitions/transitions.log").stdout


def test_keepalived_runs_with_script_security_and_a_real_smtp_check():
    for name in PRIMARIES:
        assert sh(name, "systemctl is-active keepalived").stdout.strip() == "active"
        conf = sh(name, "cat /etc/keepalived/keepalived.conf").stdout
        assert "enable_script_security" in conf and "unicast_peer" in conf
        assert not [line for line in conf.splitlines() if line.strip().startswith("auth_pass")], "password in keepalived.conf"
        assert sh(name, "stat -c '%a %U' /etc/keepalived/vrrp-auth.conf").stdout.split() == ["600", "root"]
        # The track script runs as root (master.pid is 0600), from a file only root may change...
        assert 'user root' in conf and "durable-mx-health --quiet --fence" in conf
        assert sh(name, "stat -c '%U %a' /usr/local/sbin/durable-mx-health").stdout.split() == ["root", "755"]
        # ...passes against the live Postfix...
        out = sh(name, "/usr/local/sbin/durable-mx-health --timeout 1 postfix").stdout
        assert out.startswith("postfix: ok") and "write+fsync" in out, out
        # ...and fails against an instance whose SMTP listener does not answer (a copy pointing at port 9).
        sh(name, "sed 's/^smtp_port=.*/smtp_port=9/; s/^name=.*/name=deaf/' /etc/durable-mx/health.d/postfix.conf"
                 " > /run/deaf.conf")
        bad = sh(name, "env DMX_HEALTH_CONF_DIR=/run /usr/local/sbin/durable-mx-health --timeout 1 deaf", check=False)
        assert bad.returncode == 1 and "SMTP 127.0.0.1:9" in bad.stdout, bad.stdout


def test_mail_from_outside_reaches_the_sink_through_the_vip():
    holder = wait_single_holder()
    tag = f"steady{int(time.time())}"
    records = send("127.0.0.1", tag, 40, parallel=2)
    counts = wait_delivered(records, tag, timeout=90)
    result = figures("steady state via MX 10", records, counts, vip_holder=holder)
    assert result["acked"] == result["sent"] == 40
    assert result["lost"] == 0 and result["delivered"] == 40 and result["duplicated"] == 0
    # The sender found MX 10 (the VIP) and the holder relayed to the sink; the backup saw none of it.
    log = sh(SENDER, f"journalctl -q --no-pager -u postfix@- --since '-5min' | grep 'relay=mx.{DOMAIN}\\[{VIP}\\]:25' | wc -l").stdout
    assert int(log) >= 1
    assert set(sink_counts(tag)) == {r["message_id"] for r in acked(records)}
