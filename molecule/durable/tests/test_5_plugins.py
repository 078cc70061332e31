"""Our queue plugins on a live node: facts, selective actions, and the integrity scan.

The old node holds 25+ messages for durable-mx.test that Postfix retries every few minutes, so
a message may be in `deferred` or briefly in `active`: the tests compare message IDs over the
queues a message can move between, not one queue's count at one instant.
"""

import json

from conftest import node, run_module

OLD = "dmx-durable-old"


def _queue_ids(host) -> dict:
    """queue_id -> queue name, from postqueue -j."""
    return {json.loads(line)["queue_id"]: json.loads(line)["queue_name"]
            for line in host.check_output("postqueue -j").splitlines()}


def _ok(outcome: dict) -> dict:
    assert not outcome.get("failed"), outcome.get("msg", outcome)
    return outcome


def test_queue_facts_match_postqueue():
    host = node(OLD)
    ids = _queue_ids(host)
    facts = _ok(run_module(OLD, "postfix_queue_facts", {}))["queue"]
    print(f"\nfacts: total={facts['total']} classes={facts['reason_classes']} oldest={facts['oldest_age']}s")
    assert len(ids) >= 25
    assert facts["total"]["count"] == len(ids)
    in_flight = sum(facts["queues"].get(q, {}).get("count", 0) for q in ("deferred", "active", "incoming"))
    assert in_flight == len(ids)
    assert facts["queues"]["deferred"]["bytes"] > 0
    assert facts["top_domains"][0]["domain"] == "durable-mx.test"
    assert sum(facts["reason_classes"].values()) >= 1
    assert not facts["errors"]


def test_cached_facts_agree_with_a_fresh_read():
    """The facts cache (default on) gives the same summary as reading every file."""
    for _ in range(2):  # the first run fills the cache, the second reuses it
        cached = _ok(run_module(OLD, "postfix_queue_facts", {}))["queue"]
        fresh = _ok(run_module(OLD, "postfix_queue_facts", {"cache": "false"}))["queue"]
        # Reasons are left out: a retry between the two reads may remove or rewrite a defer log.
        for key in ("total", "top_domains"):
            assert cached[key] == fresh[key], key
    assert node(OLD).file("/var/cache/durable-mx").mode == 0o700


BULK_VS_LSTAT = """
import os, sys
sys.path.insert(0, '/usr/local/lib/durable-mx')
import postfix_queue as q
def lstats():
    out = {}
    for root, dirs, files in os.walk('/var/spool/postfix'):
        for name in dirs + files:
            st = q.file_stat(os.lstat(os.path.join(root, name)))
            out[st[0]] = st
    return out
before = lstats(); bulk = q.bulk_stat('/var/spool/postfix'); keys = q.bulk_keys('/var/spool/postfix'); after = lstats()
steady = [ino for ino in before if before[ino] == after.get(ino)]
print(len(steady), sum(bulk.get(ino) != before[ino] or q.verified_key(before[ino]) not in keys for ino in steady))
"""


def test_xfs_bulk_stat_agrees_with_lstat():
    """The one-ioctl stats of the queue volume read the same mode, owner, size and ctime as lstat()."""
    steady, mismatched = map(int, node(OLD).check_output("python3 -c %s", BULK_VS_LSTAT).split())
    print(f"\nbulk stat vs lstat: {steady} steady inodes, {mismatched} mismatched")
    assert steady > 50 and mismatched == 0


def test_hold_and_release_by_domain_report_exactly_the_changed_ids():
    host = node(OLD)
    pending = set(_queue_ids(host))
    preview = _ok(run_module(OLD, "postfix_queue", {"action": "hold", "domain": "durable-mx.test"}, check=True))
    assert preview["changed"] and set(preview["selected_ids"]) == pending
    assert "hold" not in _queue_ids(host).values(), "check mode changed the queue"

    held = _ok(run_module(OLD, "postfix_queue", {"action": "hold", "domain": "durable-mx.test"}))
    assert set(held["changed_ids"]) == pending
    assert set(_queue_ids(host).values()) == {"hold"}
    facts = _ok(run_module(OLD, "postfix_queue_facts", {}))["queue"]
    assert facts["queues"]["hold"]["count"] == len(pending)

    again = _ok(run_module(OLD, "postfix_queue", {"action": "hold", "domain": "durable-mx.test"}))
    assert not again["changed"], "holding held mail again changes nothing"

    released = _ok(run_module(OLD, "postfix_queue", {"action": "release", "queue": ["hold"]}))
    assert set(released["changed_ids"]) == pending
    assert "hold" not in _queue_ids(host).values()


def test_unselective_delete_is_refused():
    host = node(OLD)
    before = set(_queue_ids(host))
    result = run_module(OLD, "postfix_queue", {"action": "delete"})
    assert result.get("failed")
    assert "confirm" in result["msg"]
    assert set(_queue_ids(host)) == before


def _stop_postfix(host):
    """Stop Postfix and wait for its instance's ExecStopPost scan: stopping postfix.service alone
    returns while postfix@- is still stopping (the instance stops after the wrapper)."""
    host.check_output("rm -f /run/durable-mx/integrity-stop--.json && systemctl stop postfix.service postfix@-.service")


def test_truncated_queue_file_is_quarantined_before_postfix_starts():
    host = node(OLD)
    _stop_postfix(host)
    path = host.check_output("find /var/spool/postfix/deferred /var/spool/postfix/active -type f | head -1")
    victim = path.rsplit("/", 1)[1]
    # Cut the file in the middle of its records, as a crash during a write could.
    host.check_output(f"truncate -s 200 {path}")

    preview = _ok(run_module(OLD, "postfix_queue_integrity", {}, check=True))
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


def test_clean_stop_seals_the_queue_and_the_next_start_skips_the_walk():
    host = node(OLD)
    _stop_postfix(host)
    # ExecStopPost scanned (moving nothing) and sealed the clean queue; the seal is off the volume.
    stop = json.loads(host.file("/run/durable-mx/integrity-stop--.json").content_string)
    assert stop["seal"] == "written" and stop["clean"], stop
    assert host.check_output("ls /var/lib/durable-mx/integrity-seals") == "var_spool_postfix.seal.json"
    host.check_output("systemctl start postfix")
    start = json.loads(host.file("/run/durable-mx/integrity--.json").content_string)
    print(f"\nstop: scanned {stop['scanned']}, seal {stop['seal']}; start: seal {start['seal']}, scanned {start['scanned']}")
    assert start["seal"] == "matched" and start["scanned"] == stop["scanned"] and start["clean"]
    assert host.service("postfix@-").is_running
    # The seal is used once: Postfix writes to its volume as soon as it runs, so after a crash
    # (no clean stop) the next start walks the queue again, as the truncated-file test above shows.
    assert host.check_output("ls /var/lib/durable-mx/integrity-seals") == ""
