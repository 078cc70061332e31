"""The exporter (files/exporter/durable-mx-exporter) against real queue trees and real log lines."""

import importlib.machinery
import importlib.util
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import postfix_log
import postfix_queue as pq
from conftest import CAPTURED_AT, FIXTURES, ROOT

os.environ["DMX_LIB"] = str(ROOT / "plugins" / "module_utils")  # never a node's installed copy
_LOADER = importlib.machinery.SourceFileLoader("durable_mx_exporter", str(ROOT / "files" / "exporter" / "durable-mx-exporter"))
_SPEC = importlib.util.spec_from_loader("durable_mx_exporter", _LOADER)
exp = importlib.util.module_from_spec(_SPEC)
_LOADER.exec_module(exp)

LOGS = ROOT / "tests" / "fixtures" / "logs"
POSTQUEUE = pq.parse_postqueue_json((FIXTURES / "postqueue-j.jsonl").read_text())
# `ip -j -4 addr show` on a scratch node (podman network, eth0 10.88.0.6/16).
IP_J_4 = ('[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue",'
          '"operstate":"UNKNOWN","group":"default","txqlen":1000,"addr_info":[{"family":"inet","local":"127.0.0.1",'
          '"prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295}]},'
          '{"ifindex":2,"link_index":85,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,'
          '"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_netnsid":0,"addr_info":[{"family":'
          '"inet","local":"10.88.0.6","prefixlen":16,"broadcast":"10.88.255.255","scope":"global","label":"eth0",'
          '"valid_life_time":4294967295,"preferred_life_time":4294967295}]}]')


def _config(spool, **overrides):
    raw = {"log_source": "none", "instances": [{"name": "postfix", "mail_class": "transactional",
                                                "config_dir": "/etc/postfix", "queue_directory": str(spool)}]}
    raw.update(overrides)
    return exp.check_config(raw)


def _scrape(exporter):
    """{(name, frozenset(labels)): value} of one scrape, through the text exposition format."""
    text = generate_latest(exporter.registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, text


def _get(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def _series(samples, name):
    return {k[1]: v for k, v in samples.items() if k[0] == name}


@pytest.fixture
def exporter(spool):
    return exp.Exporter(_config(spool, vips=["10.88.0.6", "10.88.0.250/16"]), ip_json=lambda vips: IP_J_4,
                        clock=lambda: CAPTURED_AT)


# --------------------------------------------------------------------------
# Queue snapshot in the exposition


def test_queue_counts_and_bytes_match_postqueue(exporter):
    assert exporter.monitors[0].refresh()
    samples, _ = _scrape(exporter)
    count = Counter(m["queue_name"] for m in POSTQUEUE)
    size = Counter()
    for m in POSTQUEUE:
        size[m["queue_name"]] += m["message_size"]
    for queue in pq.MESSAGE_QUEUES:  # all six, zero when empty
        assert _get(samples, "durablemx_queue_messages", postfix_instance="postfix", queue=queue) == count[queue]
        assert _get(samples, "durablemx_queue_size_bytes", postfix_instance="postfix", queue=queue) == size[queue]
    assert count["deferred"] == 12 and count["active"] == 0 and size["hold"] == 1319


def test_queue_ages_as_gauge_histogram(exporter):
    exporter.monitors[0].refresh()
    samples, text = _scrape(exporter)
    assert "# TYPE durablemx_queue_message_age_seconds histogram" in text  # how text format 0.0.4 shows a gauge histogram
    for queue in pq.MESSAGE_QUEUES:
        ages = sorted(max(0, CAPTURED_AT - m["arrival_time"]) for m in POSTQUEUE if m["queue_name"] == queue)
        labels = {"postfix_instance": "postfix", "queue": queue}
        buckets = {k: v for k, v in _series(samples, "durablemx_queue_message_age_seconds_bucket").items()
                   if {("postfix_instance", "postfix"), ("queue", queue)} <= k}
        bounds = [dict(k)["le"] for k in buckets]
        assert sorted(bounds, key=float) == ["60.0", "300.0", "600.0", "1200.0", "2400.0", "4800.0", "9600.0", "19200.0",
                                             "38400.0", "76800.0", "172800.0", "432000.0", "+Inf"]
        for key, value in buckets.items():
            assert value == sum(1 for a in ages if a <= float(dict(key)["le"]))
        assert _get(samples, "durablemx_queue_message_age_seconds_gcount", **labels) == len(ages)
        assert _get(samples, "durablemx_queue_message_age_seconds_gsum", **labels) == sum(ages)
        assert _get(samples, "durablemx_queue_oldest_message_age_seconds", **labels) == (ages[-1] if ages else 0)
    # The fixture queue was 10 to 80 seconds old at capture.
    assert _get(samples, "durablemx_queue_oldest_message_age_seconds", postfix_instance="postfix", queue="deferred") == 78


def test_deferred_reasons_per_message(exporter):
    exporter.monitors[0].refresh()
    samples, _ = _scrape(exporter)
    reasons = {dict(k)["reason"]: v for k, v in _series(samples, "durablemx_deferred_messages").items()}
    # One class per message, the most common among its pending recipients (ties: dns, connect, tls,
    # 4xx, 5xx, other). The 5xx and "other" reasons of the fixture are in hold or outvoted.
    assert reasons == {"dns": 4, "connect": 5, "tls": 1, "4xx": 2, "5xx": 0, "other": 0}
    assert sum(reasons.values()) == _get(samples, "durablemx_queue_messages", postfix_instance="postfix", queue="deferred")


def test_deferred_domains_top_n_and_other(spool):
    exporter = exp.Exporter(_config(spool, top_n=2), clock=lambda: CAPTURED_AT)
    exporter.monitors[0].refresh()
    samples, _ = _scrape(exporter)
    domains = {dict(k)["domain"]: v for k, v in _series(samples, "durablemx_deferred_messages_by_domain").items()}
    # Messages with a pending recipient at the domain: conn.test 5, dns.test 4, grey.test 4, tls.test 2,
    # refused.test 1, other.test 1; ties broken by name.
    assert domains == {"conn.test": 5, "dns.test": 4, "other": 4 + 2 + 1 + 1}


def test_label_cardinality_stays_bounded(exporter):
    exporter.monitors[0].refresh()
    samples, text = _scrape(exporter)
    ids = {m["queue_id"] for m in POSTQUEUE}
    assert not any(qid in text for qid in ids)
    assert "@" not in text  # no addresses
    labels = {name for key in samples for name, _ in key[1]}
    assert labels == {"postfix_instance", "queue", "le", "reason", "domain", "status", "dsn_class", "mail_class", "stage", "vip"}


def test_every_metric_of_the_contract_is_served(exporter):
    exporter.monitors[0].refresh()
    samples, _ = _scrape(exporter)
    names = {k[0] for k in samples}
    assert names == {
        "durablemx_postfix_up", "durablemx_queue_messages", "durablemx_queue_size_bytes",
        "durablemx_queue_message_age_seconds_bucket", "durablemx_queue_message_age_seconds_gcount",
        "durablemx_queue_message_age_seconds_gsum", "durablemx_queue_oldest_message_age_seconds",
        "durablemx_deferred_messages", "durablemx_deferred_messages_by_domain", "durablemx_messages_total",
        "durablemx_smtpd_connections_total", "durablemx_smtpd_rejects_total",
        "durablemx_delivery_delay_seconds_bucket", "durablemx_delivery_delay_seconds_count",
        "durablemx_delivery_delay_seconds_sum", "durablemx_queue_volume_free_bytes", "durablemx_queue_volume_size_bytes",
        "durablemx_queue_volume_free_inodes", "durablemx_queue_volume_inodes", "durablemx_queue_volume_shutdown",
        "durablemx_queue_snapshot_age_seconds",
        "durablemx_queue_read_duration_seconds", "durablemx_queue_read_errors_total", "durablemx_scrape_errors_total",
        "durablemx_log_lines_total", "durablemx_log_parse_errors_total", "durablemx_vip_held",
    }  # the integrity and health guard metrics appear once their files exist (test_integrity_report, test_health_*)


# --------------------------------------------------------------------------
# Never blocking, never losing the last snapshot


def test_a_slow_read_still_serves_the_last_snapshot(spool):
    now = [CAPTURED_AT]
    release = threading.Event()
    reads = []

    def walker(queue_dir, cache=None):
        reads.append(queue_dir)
        if len(reads) > 1:
            release.wait(10)  # the second read hangs (a slow or stuck volume)
        return pq.walk_queue(queue_dir, cache=cache)

    exporter = exp.Exporter(_config(spool, refresh_interval=0.01), walker=walker, clock=lambda: now[0])
    stop = threading.Event()
    thread = threading.Thread(target=exporter.monitors[0].run, args=(stop, 0.01), daemon=True)
    thread.start()
    try:
        deadline = time.time() + 5
        while len(reads) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert len(reads) == 2  # the first read is done, the second hangs
        now[0] += 300
        started = time.monotonic()
        samples, _ = _scrape(exporter)
        assert time.monotonic() - started < 1
        assert _get(samples, "durablemx_queue_messages", postfix_instance="postfix", queue="deferred") == 12
        assert _get(samples, "durablemx_queue_snapshot_age_seconds", postfix_instance="postfix") == 300
        assert _get(samples, "durablemx_scrape_errors_total") == 0
    finally:
        stop.set()
        release.set()
        thread.join(5)


def test_a_failing_read_keeps_the_last_snapshot_and_counts_an_error(spool):
    calls = []

    def walker(queue_dir, cache=None):
        calls.append(1)
        if len(calls) > 1:
            raise PermissionError(13, "Permission denied", queue_dir)
        return pq.walk_queue(queue_dir, cache=cache)

    exporter = exp.Exporter(_config(spool), walker=walker, clock=lambda: CAPTURED_AT)
    mon = exporter.monitors[0]
    assert mon.refresh() and not mon.refresh()
    samples, _ = _scrape(exporter)
    assert _get(samples, "durablemx_queue_messages", postfix_instance="postfix", queue="hold") == 2
    assert _get(samples, "durablemx_queue_read_errors_total", postfix_instance="postfix") == 1


def test_unreadable_queue_files_are_counted(spool):
    exporter = exp.Exporter(_config(spool), clock=lambda: CAPTURED_AT)
    victim = next((spool / "deferred").rglob("4jcN582xB9zCycL"))
    victim.write_bytes(b"\x00garbage")  # not a queue file any more
    assert exporter.monitors[0].refresh()
    samples, _ = _scrape(exporter)
    assert _get(samples, "durablemx_queue_read_errors_total", postfix_instance="postfix") == 1
    assert _get(samples, "durablemx_queue_messages", postfix_instance="postfix", queue="deferred") == 11


def test_before_the_first_read(spool):
    now = [CAPTURED_AT]
    exporter = exp.Exporter(_config(spool), clock=lambda: now[0])
    now[0] += 42
    samples, _ = _scrape(exporter)
    assert _get(samples, "durablemx_queue_snapshot_age_seconds", postfix_instance="postfix") == 42
    assert not _series(samples, "durablemx_queue_messages")
    assert _get(samples, "durablemx_postfix_up", postfix_instance="postfix") == 0
    assert _get(samples, "durablemx_queue_volume_size_bytes", postfix_instance="postfix") > 0


def test_the_envelope_cache_is_kept_between_reads(spool):
    exporter = exp.Exporter(_config(spool), clock=lambda: CAPTURED_AT)
    mon = exporter.monitors[0]
    mon.refresh()
    cache = mon.cache
    mon.refresh()
    assert mon.cache is cache and cache._entries  # pylint: disable=protected-access


# --------------------------------------------------------------------------
# Postfix up, volume, integrity, VIPs


def _master(tmp_path, spool, comm):
    pid = 4242
    (spool / "pid").mkdir(exist_ok=True)
    (spool / "pid" / "master.pid").write_text("%32d\n" % pid)  # as master writes it: 4 * sizeof(long) columns
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "comm").write_text(comm + "\n")
    return str(proc)


@pytest.mark.parametrize("comm,up", [("master", 1), ("python3", 0)])
def test_postfix_up_follows_the_master_pid_file(tmp_path, spool, comm, up):
    cfg = _config(spool)["instances"][0]
    mon = exp.InstanceMonitor(cfg, proc_dir=_master(tmp_path, spool, comm))
    assert mon.postfix_up() is bool(up)


def test_postfix_down_without_pid_file_or_process(tmp_path, spool):
    cfg = _config(spool)["instances"][0]
    assert not exp.InstanceMonitor(cfg).postfix_up()  # no pid file
    proc = _master(tmp_path, spool, "master")
    (spool / "pid" / "master.pid").write_text("      999999\n")  # stale: no such process
    assert not exp.InstanceMonitor(cfg, proc_dir=proc).postfix_up()
    (spool / "pid" / "master.pid").write_text("garbage\n")
    assert not exp.InstanceMonitor(cfg, proc_dir=proc).postfix_up()


def test_postfix_up_on_this_machine_with_a_real_process(tmp_path, spool):
    """A live process named master (a copy of sleep), found through the real /proc."""
    import shutil
    import subprocess
    master = tmp_path / "master"
    shutil.copy(shutil.which("sleep"), master)
    proc = subprocess.Popen([str(master), "30"])
    try:
        deadline = time.time() + 5  # until the child has exec'd (before that its comm is python's)
        while Path("/proc/%d/comm" % proc.pid).read_text().strip() != "master" and time.time() < deadline:
            time.sleep(0.01)
        (spool / "pid").mkdir(exist_ok=True)
        (spool / "pid" / "master.pid").write_text("%32d\n" % proc.pid)
        assert exp.InstanceMonitor(_config(spool)["instances"][0]).postfix_up()
    finally:
        proc.kill()
        proc.wait()
    assert not exp.InstanceMonitor(_config(spool)["instances"][0]).postfix_up()


def test_volume_figures(exporter, spool):
    samples, _ = _scrape(exporter)
    st = os.statvfs(spool)
    assert _get(samples, "durablemx_queue_volume_size_bytes", postfix_instance="postfix") == st.f_blocks * st.f_frsize
    assert _get(samples, "durablemx_queue_volume_inodes", postfix_instance="postfix") == st.f_files
    assert 0 < _get(samples, "durablemx_queue_volume_free_bytes", postfix_instance="postfix") <= st.f_blocks * st.f_frsize


def test_integrity_report(tmp_path, spool):
    """A report as durable-mx-queue-integrity writes it (integrity_scan of the fixture queue, with a suspect)."""
    (spool / "deferred" / "0").mkdir(exist_ok=True)
    (spool / "deferred" / "0" / "123.456").write_bytes(b"")  # an orphaned temp file
    report = pq.integrity_scan(str(spool), dry_run=True, hash_queue_names=("deferred", "defer"), hash_queue_depth=1)
    path = tmp_path / "run" / "integrity--.json"  # postfix@-.service
    path.parent.mkdir()
    path.write_text(json.dumps(report))
    os.utime(path, (1795899000, 1795899000))
    exporter = exp.Exporter(_config(spool, integrity_report_dir=str(path.parent)), clock=lambda: CAPTURED_AT)
    samples, _ = _scrape(exporter)
    assert _get(samples, "durablemx_integrity_last_scan_timestamp_seconds", postfix_instance="postfix") == 1795899000
    assert _get(samples, "durablemx_integrity_suspect_files", postfix_instance="postfix") == len(report["suspects"]) == 1
    path.write_text(json.dumps({"error": "postconf failed", "config_dir": "/etc/postfix"}))
    samples, _ = _scrape(exporter)
    assert _series(samples, "durablemx_integrity_last_scan_timestamp_seconds")
    assert not _series(samples, "durablemx_integrity_suspect_files")
    path.write_text("{not json")
    samples, _ = _scrape(exporter)
    assert _get(samples, "durablemx_scrape_errors_total") == 1
    assert _get(samples, "durablemx_queue_volume_inodes", postfix_instance="postfix") > 0  # the rest still served


@pytest.mark.parametrize("state, writable, fenced", [
    ("status=ok\nerror=\nfenced_at=\n", 1, 0),
    ("status=failed\nerror=Input/output error\nfenced_at=1795899001.5\n", 0, 1),
    ("status=stopped\nerror=\nfenced_at=\n", None, 0),  # nothing probed while stopped
])
def test_health_guard_state(tmp_path, spool, state, writable, fenced):
    (tmp_path / "postfix.state").write_text("time=%f\n%s" % (CAPTURED_AT - 3, state))
    exporter = exp.Exporter(_config(spool, health_state_dir=str(tmp_path)), clock=lambda: CAPTURED_AT)
    samples, _ = _scrape(exporter)
    assert _get(samples, "durablemx_health_probe_age_seconds", postfix_instance="postfix") == pytest.approx(3)
    assert _get(samples, "durablemx_instance_fenced", postfix_instance="postfix") == fenced
    assert _series(samples, "durablemx_queue_volume_writable") == ({} if writable is None else {
        frozenset({("postfix_instance", "postfix")}): writable})
    assert _get(samples, "durablemx_queue_volume_shutdown", postfix_instance="postfix") == 0


def test_health_without_a_guard_state_and_a_shut_down_volume(monkeypatch, spool):
    exporter = exp.Exporter(_config(spool, health_state_dir="/nonexistent"), clock=lambda: CAPTURED_AT)
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path) == str(spool):
            raise OSError(5, "Input/output error")  # what XFS answers once it shut down
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(exp.os, "stat", stat)
    samples, _ = _scrape(exporter)
    assert _get(samples, "durablemx_queue_volume_shutdown", postfix_instance="postfix") == 1
    assert not _series(samples, "durablemx_instance_fenced") and not _series(samples, "durablemx_queue_volume_writable")


def test_integrity_report_path_is_the_one_of_the_postfix_unit_drop_in():
    """roles/postfix runs durable-mx-queue-integrity --instance %i --report /run/durable-mx/integrity-%i.json."""
    dropin = (ROOT / "roles/postfix/templates/etc/systemd/system/postfix@.service.d/durable-mx-integrity.conf.j2").read_text()
    assert "--instance %i --report /run/durable-mx/integrity-%i.json" in dropin
    assert exp.default_integrity_report("/run/durable-mx", "/etc/postfix") == "/run/durable-mx/integrity--.json"
    assert exp.default_integrity_report("/run/durable-mx", "/etc/postfix-bulk/") == "/run/durable-mx/integrity-postfix-bulk.json"


def test_vips(exporter):
    samples, _ = _scrape(exporter)
    assert _series(samples, "durablemx_vip_held") == {frozenset({("vip", "10.88.0.6")}): 1,
                                                      frozenset({("vip", "10.88.0.250")}): 0}
    assert exp.held_addresses(IP_J_4) == {"127.0.0.1", "10.88.0.6"}


def test_a_failing_ip_command_is_a_scrape_error(spool):
    def broken(vips):
        raise RuntimeError("ip addr show failed: Cannot open netlink socket")
    exporter = exp.Exporter(_config(spool, vips=["10.0.0.1"]), ip_json=broken, clock=lambda: CAPTURED_AT)
    exporter.monitors[0].refresh()
    samples, _ = _scrape(exporter)
    assert _get(samples, "durablemx_scrape_errors_total") == 1
    assert not _series(samples, "durablemx_vip_held")
    assert _get(samples, "durablemx_queue_messages", postfix_instance="postfix", queue="deferred") == 12


# --------------------------------------------------------------------------
# Log counters


def _feed(exporter, name, parse):
    for line in (LOGS / name).read_text(encoding="utf-8").splitlines():
        exporter.counters.handle(line, parse)


def test_log_counters_from_the_journal(exporter):
    _feed(exporter, "journal.jsonl", postfix_log.parse_journal_line)
    samples, _ = _scrape(exporter)
    messages = {(dict(k)["status"], dict(k)["dsn_class"]): v for k, v in _series(samples, "durablemx_messages_total").items()}
    assert len(messages) == 12  # every status x class, zero included
    assert {k: v for k, v in messages.items() if v} == {("sent", "2"): 14, ("deferred", "4"): 30, ("bounced", "5"): 2,
                                                        ("expired", "4"): 14}
    # postfix-sink is not a configured instance: its 7 connects and its reject are not counted
    assert _get(samples, "durablemx_smtpd_connections_total", postfix_instance="postfix") == 4
    assert _get(samples, "durablemx_smtpd_rejects_total", postfix_instance="postfix", dsn_class="4") == 1
    assert _get(samples, "durablemx_smtpd_rejects_total", postfix_instance="postfix", dsn_class="5") == 1
    assert _get(samples, "durablemx_log_lines_total") == 243
    assert _get(samples, "durablemx_log_parse_errors_total") == 0


def test_delivery_delay_histogram(exporter):
    _feed(exporter, "mail.log-rfc3339", postfix_log.parse_syslog_line)
    sent = [e for e in (postfix_log.parse_syslog_line(l) for l in (LOGS / "mail.log-rfc3339").read_text().splitlines())
            if e and e.status == "sent"]
    samples, _ = _scrape(exporter)
    for index, stage in enumerate(("before_qmgr", "in_qmgr", "conn_setup", "transmission", "total")):
        values = [(e.delays + (e.delay,))[index] for e in sent]
        labels = {"postfix_instance": "postfix", "mail_class": "transactional", "stage": stage}
        assert _get(samples, "durablemx_delivery_delay_seconds_count", **labels) == len(values) == 16
        assert _get(samples, "durablemx_delivery_delay_seconds_sum", **labels) == pytest.approx(sum(values))
        assert _get(samples, "durablemx_delivery_delay_seconds_bucket", le="0.1", **labels) == sum(1 for v in values if v <= 0.1)
        assert _get(samples, "durablemx_delivery_delay_seconds_bucket", le="86400.0", **labels) == 16
    # grep 'delay=' of the sent lines: 11 of the 16 took at most 0.1 s, the slowest 0.21 s.
    assert _get(samples, "durablemx_delivery_delay_seconds_bucket", postfix_instance="postfix", mail_class="transactional",
                stage="total", le="0.1") == 11
    assert _get(samples, "durablemx_delivery_delay_seconds_bucket", postfix_instance="postfix", mail_class="transactional",
                stage="total", le="0.5") == 16


def test_parse_errors_are_counted_not_raised(exporter):
    exporter.counters.handle("{broken json", postfix_log.parse_journal_line)
    exporter.counters.handle(json.dumps({"SYSLOG_IDENTIFIER": "postfix/smtp", "MESSAGE": "X1: to=<a@b>, relay=r, delay=x, "
                                         "delays=0/0/0/0, dsn=2.0.0, status=sent (ok)"}), postfix_log.parse_journal_line)
    samples, _ = _scrape(exporter)
    assert _get(samples, "durablemx_log_parse_errors_total") == 2
    assert _get(samples, "durablemx_log_lines_total") == 2


def test_file_log_source_end_to_end(tmp_path, spool):
    """The log thread following a real file: lines appended after start are counted."""
    log = tmp_path / "mail.log"
    log.write_text((LOGS / "mail.log-rfc3339").read_text())  # history: not replayed
    exporter = exp.Exporter(_config(spool, log_source="file", log_file=str(log)), clock=lambda: CAPTURED_AT)
    exporter.log_follower.retry_delay = 0.01
    thread = threading.Thread(target=exporter.log_follower.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 5
        while exporter.log_follower._follower is None and time.time() < deadline:  # pylint: disable=protected-access
            time.sleep(0.01)
        time.sleep(0.2)  # its first poll (at the end of the file)
        with open(log, "a") as handle:
            handle.write((LOGS / "mail.log-classic").read_text())
        while time.time() < deadline:
            samples, _ = _scrape(exporter)
            if _get(samples, "durablemx_log_lines_total") >= 92:
                break
            time.sleep(0.05)
        assert _get(samples, "durablemx_log_lines_total") == 92
        assert _get(samples, "durablemx_messages_total", postfix_instance="postfix", status="sent", dsn_class="2") == 2
    finally:
        exporter.log_follower.stop()
        thread.join(5)


# --------------------------------------------------------------------------
# Configuration and command line


def test_config_defaults():
    cfg = exp.check_config({"_comment": "Ansible managed"})
    assert cfg["listen_port"] == 9154 and cfg["log_source"] == "journald" and cfg["top_n"] == 10
    assert cfg["instances"] == [{"name": "postfix", "mail_class": "transactional", "config_dir": "/etc/postfix",
                                 "queue_directory": "/var/spool/postfix",
                                 "integrity_report": "/run/durable-mx/integrity--.json",
                                 "health_state": "/run/durable-mx/health/postfix.state"}]


@pytest.mark.parametrize("raw,message", [
    ({"log_source": "syslog"}, "log_source is 'syslog'; expected one of journald, file, none"),
    ({"listen_port": 70000}, "listen_port is 70000"),
    ({"refresh_interval": 0}, "refresh_interval is 0; expected a positive number"),
    ({"vips": ["10.0.0.300"]}, "vips holds '10.0.0.300'"),
    ({"instances": []}, "instances is empty"),
    ({"instances": [{"name": "postfix", "mail_class": "t", "config_dir": "etc/postfix", "queue_directory": "/q"}]},
     r"instances\[0\].config_dir is 'etc/postfix'; expected an absolute path"),
    ({"instances": [{"name": "postfix/smtp", "mail_class": "t", "config_dir": "/etc/postfix", "queue_directory": "/q"}]},
     "without a slash"),
    ({"instances": [{"name": "postfix", "config_dir": "/etc/postfix", "queue_directory": "/q"}]}, "lacks mail_class"),
    ({"instances": [{"name": "a", "mail_class": "t", "config_dir": "/etc/a", "queue_directory": "/q"}] * 2}, "repeated: a"),
    ({"listen_addres": "::"}, "unknown settings listen_addres"),
])
def test_config_errors_name_the_value(raw, message):
    with pytest.raises(exp.ConfigError, match=message):
        exp.check_config(raw)


def test_vips_are_normalized():
    assert exp.check_config({"vips": ["10.0.0.10/24", "2001:DB8::1"]})["vips"] == ["10.0.0.10", "2001:db8::1"]


def test_command_line_check_and_once(tmp_path, spool, capsys):
    cfg = tmp_path / "exporter.json"
    cfg.write_text(json.dumps({"log_source": "none", "instances": [
        {"name": "postfix", "mail_class": "transactional", "config_dir": "/etc/postfix", "queue_directory": str(spool)}]}))
    assert exp.main(["--check", str(cfg)]) == 0
    assert "1 instance(s) postfix" in capsys.readouterr().out
    assert exp.main(["--config", str(cfg), "--once"]) == 0
    out = capsys.readouterr().out
    assert 'durablemx_queue_messages{postfix_instance="postfix",queue="deferred"} 12.0' in out
    cfg.write_text("{}}")
    assert exp.main(["--check", str(cfg)]) == 2


def test_served_names_are_the_monitoring_contract(tmp_path, spool):
    """Every name of files/prometheus/metrics.txt (what the rules and the dashboard use) is served, and nothing else."""
    contract_file = ROOT / "files" / "prometheus" / "metrics.txt"
    report_dir = tmp_path / "run"
    report_dir.mkdir()
    (report_dir / "integrity--.json").write_text(json.dumps({"suspects": [], "misplaced": [], "finished_at": 1.0}))
    (report_dir / "postfix.state").write_text("time=1795899000\nstatus=ok\nerror=\nfenced_at=\n")
    exporter = exp.Exporter(_config(spool, vips=["10.88.0.6"], integrity_report_dir=str(report_dir),
                                    health_state_dir=str(report_dir)),
                            ip_json=lambda vips: IP_J_4, clock=lambda: CAPTURED_AT)
    exporter.monitors[0].refresh()
    samples, _ = _scrape(exporter)
    contract = {line.strip() for line in contract_file.read_text().splitlines() if line.strip()}
    assert {k[0] for k in samples} == contract
