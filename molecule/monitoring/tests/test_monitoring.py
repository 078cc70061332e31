"""The exporter and Prometheus on real nodes: known queue content, Postfix down and up, a live alert.

Mail for the lab domain goes to a closed port (inventories/lab/group_vars/mx.yml), so every
message sent here is deferred with a connect reason: an unreachable destination.
"""

import json
import re

import pytest

from conftest import node, wait_for

MX = "dmx-monitoring-mx"
MON = "dmx-monitoring-mon"
DEFERRED = 30  # enough attempts for the deferral-ratio alert's floor (1 attempt a minute over 15 min)
HELD = 3

_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def http_get(host, url: str) -> str:
    """GET from inside a node (the image has python3, not curl)."""
    return host.check_output("python3 -c %s %s", "import sys, urllib.request; "
                             "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())", url)


def scrape(host=None) -> dict:
    """{(metric name, frozenset of label pairs): value} from the exporter's /metrics."""
    text = http_get(host or node(MX), "http://127.0.0.1:9154/metrics")
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(_LABEL_RE.findall(match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= ls]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def prometheus(path: str) -> dict:
    reply = json.loads(http_get(node(MON), "http://127.0.0.1:9090" + path))
    assert reply["status"] == "success", reply
    return reply["data"]


def _queue_ids(host, queue: str) -> list:
    return [json.loads(line)["queue_id"] for line in host.check_output("postqueue -j").splitlines()
            if json.loads(line)["queue_name"] == queue]


@pytest.fixture(scope="module")
def queued():
    """DEFERRED + HELD messages to the unreachable destination; HELD of them put on hold."""
    mx = node(MX)
    assert not _queue_ids(mx, "deferred") and not _queue_ids(mx, "hold"), "the scenario starts with an empty queue"
    for n in range(DEFERRED + HELD):
        mx.check_output("printf 'Subject: monitoring %s\\n\\nbody\\n' %s | sendmail -f mon@client.test "
                        "invoices@durable-mx.test", str(n), str(n))
    wait_for(lambda: len(_queue_ids(mx, "deferred")) == DEFERRED + HELD, 120, "every message deferred", 1)
    held = _queue_ids(mx, "deferred")[:HELD]
    mx.check_output("printf '%s\\n' " + " ".join(held) + " | postsuper -h -")
    return {"deferred": DEFERRED, "hold": HELD}


def test_exporter_runs_hardened_as_its_own_user():
    mx = node(MX)
    assert mx.socket("tcp://0.0.0.0:9154").is_listening
    props = dict(line.split("=", 1) for line in mx.check_output(
        "systemctl show durable-mx-exporter -p User -p NoNewPrivileges -p ProtectSystem "
        "-p CapabilityBoundingSet -p AmbientCapabilities -p PrivateTmp").splitlines())
    print(f"\nexporter unit: {props}")
    assert props["User"] == "durable-mx-exporter"
    assert props["NoNewPrivileges"] == "yes" and props["CapabilityBoundingSet"] == "cap_dac_read_search"
    pid = mx.check_output("systemctl show -p MainPID --value durable-mx-exporter")
    assert mx.check_output("ps -o user= -p %s", pid) == "durable-mx-exporter"
    # No mount namespace of its own: one would pin a dead queue filesystem across an operator's remount.
    assert props["ProtectSystem"] == "no" and props["PrivateTmp"] == "no"
    # Same mount namespace as systemd: identical mount tables (the ns links need CAP_SYS_PTRACE here).
    assert mx.run("cmp /proc/%s/mountinfo /proc/1/mountinfo", pid).rc == 0


def test_exporter_reports_the_known_queue(queued):
    def counts():
        samples = scrape()
        return {q: value(samples, "durablemx_queue_messages", queue=q) for q in ("deferred", "hold", "active")}

    wait_for(lambda: counts() == {"deferred": queued["deferred"], "hold": queued["hold"], "active": 0},
             90, f"exporter to show {queued}", 2)
    samples = scrape()
    print(f"\nexporter: deferred={value(samples, 'durablemx_queue_messages', queue='deferred')} "
          f"hold={value(samples, 'durablemx_queue_messages', queue='hold')} "
          f"connect={value(samples, 'durablemx_deferred_messages', reason='connect')}")
    assert value(samples, "durablemx_postfix_up", postfix_instance="postfix") == 1
    assert value(samples, "durablemx_deferred_messages", reason="connect") == queued["deferred"]
    assert value(samples, "durablemx_deferred_messages_by_domain", domain="durable-mx.test") == queued["deferred"]
    assert value(samples, "durablemx_queue_message_age_seconds_gcount", queue="hold") == queued["hold"]
    assert value(samples, "durablemx_queue_size_bytes", queue="deferred") > 0
    assert value(samples, "durablemx_queue_oldest_message_age_seconds", queue="deferred") > 0
    assert value(samples, "durablemx_messages_total", status="deferred", dsn_class="4") >= queued["deferred"]
    assert value(samples, "durablemx_queue_volume_free_bytes", postfix_instance="postfix") > 0
    assert value(samples, "durablemx_queue_snapshot_age_seconds", postfix_instance="postfix") < 60


def test_postfix_down_is_reported_and_the_exporter_keeps_serving(queued):
    mx = node(MX)
    mx.check_output("systemctl stop postfix@-")
    try:
        wait_for(lambda: value(scrape(), "durablemx_postfix_up", postfix_instance="postfix") == 0, 60,
                 "durablemx_postfix_up 0", 2)
        samples = scrape()  # the queue is still read from the files
        assert value(samples, "durablemx_queue_messages", queue="hold") == queued["hold"]
    finally:
        mx.check_output("systemctl start postfix@-")
    wait_for(lambda: value(scrape(), "durablemx_postfix_up", postfix_instance="postfix") == 1, 60,
             "durablemx_postfix_up 1", 2)
    # The start ran the pre-start integrity scan; the exporter shows its report.
    samples = scrape()
    assert value(samples, "durablemx_integrity_suspect_files", postfix_instance="postfix") == 0
    assert value(samples, "durablemx_integrity_last_scan_timestamp_seconds", postfix_instance="postfix") > 0


def test_prometheus_scrapes_the_exporter_with_the_rules_loaded(queued):
    def target_up():
        targets = prometheus("/api/v1/targets")["activeTargets"]
        return any(t["labels"]["job"] == "durable-mx" and t["health"] == "up" for t in targets)

    wait_for(target_up, 90, "the durable-mx target up in Prometheus", 3)
    groups = prometheus("/api/v1/rules")["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"MailDeferralRatioHigh", "PostfixInstanceDown", "DeliverySLOFastBurn"} <= names
    # A sample scraped before the messages were held may still be the newest one: wait for a
    # scrape that carries the held count, and fail if none does within the window.
    def held_in_prometheus():
        result = prometheus('/api/v1/query?query=durablemx_queue_messages%7Bqueue%3D%22hold%22%7D')["result"]
        return [float(r["value"][1]) for r in result]

    wait_for(lambda: held_in_prometheus() == [queued["hold"]], 90, "the held count in Prometheus", 3)


def test_unreachable_destination_makes_the_deferral_alert_active(queued):
    """Every attempt to the closed port defers: MailDeferralRatioHigh must become active (pending or firing)."""
    def active():
        return [a for a in prometheus("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "MailDeferralRatioHigh"]

    seconds = wait_for(active, 180, "MailDeferralRatioHigh in Prometheus", 5)
    alert = active()[0]
    print(f"\nMailDeferralRatioHigh {alert['state']} after {seconds:.0f} s of polling, value {alert['value']}")
    assert alert["state"] in ("pending", "firing")
    assert alert["labels"]["postfix_instance"] == "postfix"
    assert alert["annotations"]["runbook"].startswith("docs/runbooks.md#")
