"""Our queue plugins on a live node: facts, selective actions, and the integrity scan."""

import json

from conftest import node, run_module

OLD = "dmx-durable-old"


def _postqueue_counts(host) -> dict:
    counts: dict = {}
    for line in host.check_output("postqueue -j").splitlines():
        queue = json.loads(line)["queue_name"]
        counts[queue] = counts.get(queue, 0) + 1
    return counts


def test_queue_facts_match_postqueue():
    host = node(OLD)
    facts = run_module(OLD, "postfix_queue_facts", {})["queue"]
    counts = _postqueue_counts(host)
    print(f"\nfacts: total={facts['total']} classes={facts['reason_classes']} oldest={facts['oldest_age']}s")
    assert counts.get("deferred", 0) >= 25
    for queue, count in counts.items():
        assert facts["queues"][queue]["count"] == count, queue
    assert facts["queues"]["deferred"]["bytes"] > 0
    assert facts["top_domains"][0]["domain"] == "durable-mx.test"
    assert sum(facts["reason_classes"].values()) >= 25
    assert not facts["errors"]


def test_hold_and_release_by_domain_report_exactly_the_changed_ids():
    host = node(OLD)
    deferred = {json.loads(line)["queue_id"] for line in host.check_output("postqueue -j").splitlines()
                if json.loads(line)["queue_name"] == "deferred"}
    preview = run_module(OLD, "postfix_queue", {"action": "hold", "domain": "durable-mx.test"}, check=True)
    assert preview["changed"] and set(preview["selected_ids"]) == deferred
    assert _postqueue_counts(host).get("hold", 0) == 0, "check mode changed the queue"

    held = run_module(OLD, "postfix_queue", {"action": "hold", "domain": "durable-mx.test"})
    assert set(held["changed_ids"]) == deferred
    assert _postqueue_counts(host).get("hold") == len(deferred)
    facts = run_module(OLD, "postfix_queue_facts", {})["queue"]
    assert facts["queues"]["hold"]["count"] == len(deferred)

    again = run_module(OLD, "postfix_queue", {"action": "hold", "domain": "durable-mx.test"})
    assert not again["changed"], "holding held mail again changes nothing"

    released = run_module(OLD, "postfix_queue", {"action": "release", "queue": ["hold"]})
    assert set(released["changed_ids"]) == deferred
    assert _postqueue_counts(host).get("hold", 0) == 0


def test_unselective_delete_is_refused():
    result = run_module(OLD, "postfix_queue", {"action": "delete"})
    assert result.get("failed")
    assert "confirm" in result["msg"]
    assert _postqueue_counts(node(OLD)).get("deferred", 0) >= 25


def test_truncated_queue_file_is_quarantined_before_postfix_starts():
    host = node(OLD)
    victim = json.loads(host.check_output("postqueue -j").splitlines()[0])["queue_id"]
    path = host.check_output(f"find /var/spool/postfix/deferred -name {victim}")
    host.check_output("systemctl stop postfix")
    # Cut the file in the middle of its records, as a crash during a write could.
    host.check_output(f"truncate -s 200 {path}")

    preview = run_module(OLD, "postfix_queue_integrity", {}, check=True)
    suspects = preview["report"]["suspects"]
    assert [s["queue_id"] for s in suspects] == [victim] and suspects[0]["reason"] == "truncated"
    assert host.file(path).exists, "check mode moved a file"

    # Starting Postfix runs the scan (ExecStartPre): the file goes to quarantine with a label.
    host.check_output("systemctl start postfix")
    assert host.service("postfix@-").is_running
    assert not host.file(path).exists
    # The quarantine is beside the queue directory when on the same filesystem, else inside it.
    quarantined = host.run(f"find /var/spool/durable-mx-quarantine /var/spool/postfix/durable-mx-quarantine "
                           f"-name '{victim}*'").stdout.split()
    print(f"\nquarantined: {quarantined}")
    label = [p for p in quarantined if p.endswith(".label.json")]
    assert label and json.loads(host.file(label[0]).content_string)["reason"] == "truncated"
    journal = host.check_output("journalctl -q --no-pager -u postfix@-.service -o cat | grep '\"quarantined\": 1'")
    assert victim in journal

    clean = run_module(OLD, "postfix_queue_integrity", {}, check=True)
    assert clean["report"]["clean"] and not clean["changed"]
